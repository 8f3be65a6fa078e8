//! Billing arithmetic: money in integer micro-units, billed seconds and task cost.
//! Pure functions only: no store, no HTTP, no clock.

/// Money in millionths of the currency unit.
pub type Micros = i64;

/// Micro-units in one currency unit.
pub const MICROS_PER_UNIT: i64 = 1_000_000;
/// Total cap on billed reference-video input, in ms.
pub const INPUT_CAP_MS: u64 = 5000;

/// Parses a non-negative decimal amount with at most 6 decimals ("0.05", "500", "12.345678").
pub fn parse_money(text: &str) -> Result<Micros, String> {
    let text = text.trim();
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !(frac.is_empty() || digits(frac)) || (text.contains('.') && frac.is_empty()) {
        return Err(format!("{text:?} is not a decimal amount like \"0.05\""));
    }
    if frac.len() > 6 {
        return Err(format!("{text:?} has more than 6 decimals"));
    }
    let whole: i64 = whole.parse().map_err(|_| format!("{text:?} is too large"))?;
    let frac_micros: i64 = format!("{frac:0<6}")
        .parse()
        .map_err(|_| format!("{text:?} is malformed"))?;
    whole
        .checked_mul(MICROS_PER_UNIT)
        .and_then(|w| w.checked_add(frac_micros))
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Formats micro-units as a decimal string with exactly 6 decimals ("0.415000").
pub fn format_money(micros: Micros) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let abs = micros.unsigned_abs();
    format!(
        "{sign}{}.{:06}",
        abs / MICROS_PER_UNIT as u64,
        abs % MICROS_PER_UNIT as u64
    )
}

/// Per-video truncation in ms for `count` reference videos (1: 5 s, 2: 2.5 s, 3: 1.65 s).
pub fn per_video_cap_ms(count: usize) -> u64 {
    match count {
        0 | 1 => INPUT_CAP_MS,
        2 => 2500,
        _ => 1650,
    }
}

/// Billed input ms: each reference video truncated to its per-video cap, summed.
pub fn billed_input_ms(durations_ms: &[u64]) -> u64 {
    let cap = per_video_cap_ms(durations_ms.len());
    durations_ms.iter().map(|d| (*d).min(cap)).sum()
}

/// `round_half_up(duration × 1000 / timescale)`: a media duration in integer ms.
pub fn media_duration_ms(duration: u64, timescale: u32) -> Option<u64> {
    if timescale == 0 {
        return None;
    }
    let ts = u128::from(timescale);
    let ms = (u128::from(duration) * 1000 + ts / 2) / ts;
    u64::try_from(ms).ok()
}

/// `round_half_up(price_per_second × (input_ms + output_ms) / 1000)`, computed once per task.
pub fn cost_micros(price_per_second: Micros, input_ms: u64, output_ms: u64) -> Micros {
    let total_ms = i128::from(input_ms) + i128::from(output_ms);
    let scaled = i128::from(price_per_second) * total_ms;
    i64::try_from((scaled + 500) / 1000).unwrap_or(i64::MAX)
}

/// What a task costs when it generates `output_ms` of video.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    pub billed_input_ms: u64,
    pub billed_output_ms: u64,
    pub amount: Micros,
}

/// The charge for a task: reference durations (ms), output ms, per-second price.
pub fn charge(reference_durations_ms: &[u64], output_ms: u64, price_per_second: Micros) -> Charge {
    let billed_input_ms = billed_input_ms(reference_durations_ms);
    Charge {
        billed_input_ms,
        billed_output_ms: output_ms,
        amount: cost_micros(price_per_second, billed_input_ms, output_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_parses_and_formats_exactly() {
        assert_eq!(parse_money("0.05"), Ok(50_000));
        assert_eq!(parse_money("500"), Ok(500_000_000));
        assert_eq!(parse_money("0.0375"), Ok(37_500));
        assert_eq!(parse_money("12.345678"), Ok(12_345_678));
        assert!(parse_money("0.1234567").is_err());
        assert!(parse_money("-1").is_err());
        assert!(parse_money("1.").is_err());
        assert!(parse_money("abc").is_err());
        assert!(parse_money("").is_err());
        assert_eq!(format_money(415_000), "0.415000");
        assert_eq!(format_money(500_000_000), "500.000000");
        assert_eq!(format_money(-5), "-0.000005");
    }

    #[test]
    fn input_truncation_follows_the_upstream_rules() {
        assert_eq!(billed_input_ms(&[3300]), 3300);
        assert_eq!(billed_input_ms(&[30_000]), 5000);
        assert_eq!(billed_input_ms(&[2000, 4000]), 4500);
        assert_eq!(billed_input_ms(&[2000, 2000, 2000]), 4950);
    }

    #[test]
    fn list_prices_give_the_documented_costs() {
        // 720p with audio, one 3.3 s reference, 5 s requested: 8.3 s × 0.05 = 0.415.
        assert_eq!(charge(&[3300], 5000, 50_000).amount, 415_000);
        // Generated 4.8 s instead: 8.1 s × 0.05 = 0.405.
        assert_eq!(charge(&[3300], 4800, 50_000).amount, 405_000);
        // 1080p silent, three long references, 10 s: 14.95 s × 0.0375 = 0.560625.
        assert_eq!(charge(&[9000, 9000, 9000], 10_000, 37_500).amount, 560_625);
    }

    #[test]
    fn rounding_is_half_up_once() {
        assert_eq!(cost_micros(1, 0, 500), 1);
        assert_eq!(cost_micros(1, 0, 499), 0);
        assert_eq!(media_duration_ms(3, 2), Some(1500));
        assert_eq!(media_duration_ms(1, 3), Some(333));
        assert_eq!(media_duration_ms(2, 3), Some(667));
        assert_eq!(media_duration_ms(5, 0), None);
    }

    /// The upstream's billing rules and list prices (`upstream-api.md`), one row per case:
    /// (reference durations ms, output ms, price per second in micros, billed input ms, amount).
    #[test]
    fn the_upstreams_worked_examples_and_list_prices() {
        const P720_AUDIO: Micros = 50_000;
        const P720_SILENT: Micros = 25_000;
        const P1080_AUDIO: Micros = 75_000;
        const P1080_SILENT: Micros = 37_500;
        let table: &[(&[u64], u64, Micros, u64, Micros)] = &[
            // 1 video: min(d, 5 s).
            (&[3300], 5000, P720_AUDIO, 3300, 415_000),
            (&[8000], 5000, P720_AUDIO, 5000, 500_000),
            (&[5000], 10_000, P720_SILENT, 5000, 375_000),
            // 2 videos: min(d, 2.5 s) each.
            (&[2000, 4000], 5000, P1080_AUDIO, 4500, 712_500),
            (&[3000, 3000], 2000, P1080_SILENT, 5000, 262_500),
            // 3 videos: min(d, 1.65 s) each; every video is at least 2 s, so always 4.95 s.
            (&[2000, 2000, 2000], 5000, P720_AUDIO, 4950, 497_500),
            (&[9000, 9000, 9000], 10_000, P1080_SILENT, 4950, 560_625),
            (&[2000, 3000, 60_000], 10_000, P1080_AUDIO, 4950, 1_121_250),
            // Half a micro-unit rounds up, once per task: 0.0375 × 2.013 s = 0.0754875.
            (&[13], 2000, P1080_SILENT, 13, 75_488),
        ];
        for &(durations, output_ms, price, input_ms, amount) in table {
            let charge = charge(durations, output_ms, price);
            assert_eq!(
                (charge.billed_input_ms, charge.billed_output_ms, charge.amount),
                (input_ms, output_ms, amount),
                "{durations:?} + {output_ms} ms at {price}"
            );
        }
        // List prices (USD per second) as the config's decimal strings give them.
        let list = [
            ("0.05", P720_AUDIO),
            ("0.025", P720_SILENT),
            ("0.075", P1080_AUDIO),
            ("0.0375", P1080_SILENT),
        ];
        for (text, micros) in list {
            assert_eq!(parse_money(text), Ok(micros));
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        /// 1 to 3 reference videos of 0 to 120 s.
        fn references() -> impl Strategy<Value = Vec<u64>> {
            proptest::collection::vec(0u64..120_000, 1..=3)
        }

        proptest! {
            #[test]
            fn the_input_total_never_exceeds_five_seconds(durations in references()) {
                prop_assert!(billed_input_ms(&durations) <= INPUT_CAP_MS);
            }

            #[test]
            fn the_input_is_monotone_in_each_duration(durations in references(), which in 0usize..3, extra in 0u64..60_000) {
                let which = which % durations.len();
                let mut longer = durations.clone();
                longer[which] += extra;
                prop_assert!(billed_input_ms(&longer) >= billed_input_ms(&durations));
            }

            #[test]
            fn the_cost_is_monotone_in_output_and_price(
                durations in references(),
                output_ms in 0u64..20_000,
                extra_ms in 0u64..20_000,
                price in 0i64..10_000_000,
                extra_price in 0i64..1_000_000,
            ) {
                let base = charge(&durations, output_ms, price).amount;
                prop_assert!(base >= 0);
                prop_assert!(charge(&durations, output_ms + extra_ms, price).amount >= base);
                prop_assert!(charge(&durations, output_ms, price + extra_price).amount >= base);
            }

            #[test]
            fn generating_exactly_the_requested_length_settles_at_the_hold(
                durations in references(),
                seconds in 2u64..=10,
                price in 0i64..10_000_000,
            ) {
                let requested_ms = seconds * 1000;
                let hold = charge(&durations, requested_ms, price);
                let settlement = charge(&durations, requested_ms, price);
                prop_assert_eq!(hold, settlement);
            }

            #[test]
            fn rounding_happens_once_and_half_up(price in 0i64..100_000_000, input_ms in 0u64..5001, output_ms in 0u64..20_000) {
                let exact = i128::from(price) * i128::from(input_ms + output_ms);
                let amount = i128::from(cost_micros(price, input_ms, output_ms));
                // amount × 1000 is within half a micro-unit of the exact cost, ties rounding up.
                prop_assert!(amount * 1000 - exact <= 500 && exact - amount * 1000 < 500);
            }

            #[test]
            fn media_durations_round_half_up(duration in 0u64..1_000_000_000, timescale in 1u32..1_000_000) {
                let ms = i128::from(media_duration_ms(duration, timescale).unwrap_or(u64::MAX));
                let exact = i128::from(duration) * 1000;
                let ts = i128::from(timescale);
                prop_assert!(ms * ts - exact <= ts / 2 && exact - ms * ts <= (ts - 1) / 2);
            }

            #[test]
            fn money_formats_and_parses_back(micros in 0i64..1_000_000_000_000_000) {
                prop_assert_eq!(parse_money(&format_money(micros)), Ok(micros));
            }
        }
    }
}
