//! Period tokens as reports name them (`2026-11`, `2026-W48`, `2026-11-25`, `total`), parsed
//! strictly and mapped to the usage buckets they cover.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Days, NaiveDate, Utc, Weekday};

use crate::config::PeriodKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// First day of the month.
    Month(NaiveDate),
    /// Monday of the ISO week.
    Week(NaiveDate),
    Day(NaiveDate),
    Total,
}

impl Period {
    /// The period of `kind` that contains `now`.
    pub fn current(kind: PeriodKind, now: DateTime<Utc>) -> Self {
        let today = now.date_naive();
        match kind {
            PeriodKind::Month => Self::Month(today.with_day(1).unwrap_or(today)),
            PeriodKind::Week => Self::Week(today.week(Weekday::Mon).first_day()),
            PeriodKind::Day => Self::Day(today),
            PeriodKind::Total => Self::Total,
        }
    }

    pub fn kind(&self) -> PeriodKind {
        match self {
            Self::Month(_) => PeriodKind::Month,
            Self::Week(_) => PeriodKind::Week,
            Self::Day(_) => PeriodKind::Day,
            Self::Total => PeriodKind::Total,
        }
    }

    /// The usage bucket (and budget period key) this period is stored under.
    pub fn token(&self) -> String {
        self.to_string()
    }

    /// When the period ends (unix ms, exclusive); `None` for `total`.
    pub fn end_ms(&self) -> Option<i64> {
        let end = match *self {
            Self::Month(first) => first.checked_add_months(chrono::Months::new(1))?,
            Self::Week(monday) => monday.checked_add_days(Days::new(7))?,
            Self::Day(day) => day.checked_add_days(Days::new(1))?,
            Self::Total => return None,
        };
        Some(end.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis())
    }

    /// The end of the period named by a store key (`2026-11`, `2026-W48`, ...).
    pub fn end_of(key: &str) -> Option<i64> {
        key.parse::<Self>().ok()?.end_ms()
    }

    /// The days of the period, in order; `None` for `total` (unbounded).
    pub fn days(&self) -> Option<Vec<String>> {
        let (first, count) = match *self {
            Self::Month(first) => {
                let next = first.checked_add_months(chrono::Months::new(1))?;
                (first, (next - first).num_days())
            }
            Self::Week(monday) => (monday, 7),
            Self::Day(day) => (day, 1),
            Self::Total => return None,
        };
        Some(
            (0..count)
                .filter_map(|i| first.checked_add_days(Days::new(u64::try_from(i).ok()?)))
                .map(|day| day.format("%Y-%m-%d").to_string())
                .collect(),
        )
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Month(first) => write!(f, "{}", first.format("%Y-%m")),
            Self::Week(monday) => {
                let week = monday.iso_week();
                write!(f, "{}-W{:02}", week.year(), week.week())
            }
            Self::Day(day) => write!(f, "{}", day.format("%Y-%m-%d")),
            Self::Total => f.write_str("total"),
        }
    }
}

impl FromStr for Period {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a period: use 2026-11, 2026-W48, 2026-11-25 or total");
        if text == "total" {
            return Ok(Self::Total);
        }
        let parsed = if let Some((year, week)) = text.split_once("-W") {
            let (year, week) = (digits(year, 4), digits(week, 2));
            year.zip(week)
                .and_then(|(y, w)| NaiveDate::from_isoywd_opt(y as i32, w, Weekday::Mon))
                .map(Self::Week)
        } else {
            match text.len() {
                7 => NaiveDate::parse_from_str(&format!("{text}-01"), "%Y-%m-%d")
                    .ok()
                    .map(Self::Month),
                10 => NaiveDate::parse_from_str(text, "%Y-%m-%d").ok().map(Self::Day),
                _ => None,
            }
        };
        // Round-trip so that only the canonical spelling is accepted (no "2026-1-5").
        parsed.filter(|p| p.to_string() == text).ok_or_else(bad)
    }
}

fn digits(text: &str, len: usize) -> Option<u32> {
    (text.len() == len && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::store::PeriodKeys;

    #[test]
    fn tokens_parse_and_print_back() {
        for token in ["2026-11", "2026-W48", "2026-11-25", "total", "2020-W53", "2024-02-29"] {
            assert_eq!(token.parse::<Period>().map(|p| p.to_string()), Ok(token.to_string()));
        }
        for bad in [
            "2026-13",
            "2026-W54",
            "2021-W53",
            "2026-11-31",
            "2026-1",
            "26-11",
            "x",
            "",
            "2026-W4",
            "2023-02-29",
        ] {
            assert!(bad.parse::<Period>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_current_period_matches_the_store_keys() {
        for (y, m, d) in [(2026, 11, 25), (2026, 12, 31), (2027, 1, 1), (2026, 2, 28)] {
            let now = Utc.with_ymd_and_hms(y, m, d, 23, 59, 59).unwrap();
            let keys = PeriodKeys::at(now);
            for kind in [PeriodKind::Month, PeriodKind::Week, PeriodKind::Day, PeriodKind::Total] {
                assert_eq!(Period::current(kind, now).token(), keys.for_kind(kind));
            }
        }
    }

    #[test]
    fn a_period_ends_at_midnight_after_its_last_day() {
        let at = |text: &str| chrono::DateTime::parse_from_rfc3339(text).unwrap().timestamp_millis();
        assert_eq!(Period::end_of("2026-11"), Some(at("2026-12-01T00:00:00Z")));
        assert_eq!(Period::end_of("2026-12"), Some(at("2027-01-01T00:00:00Z")));
        assert_eq!(Period::end_of("2026-W49"), Some(at("2026-12-07T00:00:00Z")));
        assert_eq!(Period::end_of("2026-11-25"), Some(at("2026-11-26T00:00:00Z")));
        assert_eq!(Period::end_of("total"), None);
        assert_eq!(Period::end_of("nonsense"), None);
    }

    #[test]
    fn a_period_lists_its_days() {
        let days = |t: &str| t.parse::<Period>().unwrap().days().unwrap();
        assert_eq!(days("2026-02").len(), 28);
        assert_eq!(days("2026-11").last().map(String::as_str), Some("2026-11-30"));
        assert_eq!(days("2026-W53").first().map(String::as_str), Some("2026-12-28"));
        assert_eq!(days("2026-W01").first().map(String::as_str), Some("2025-12-29"));
        assert_eq!(days("2026-11-25"), vec!["2026-11-25".to_string()]);
        assert_eq!(Period::Total.days(), None);
    }
}
