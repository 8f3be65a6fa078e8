//! HTML building blocks: escaping, the page frame, tables, the budget bar and the day chart.
//! Every value from a user or the store passes through `esc` (or `attr`) before it lands
//! in a page.

use std::fmt::Write as _;

/// Text made safe for HTML element content and double-quoted attributes.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A query-string value, percent-encoded (then escaped where it lands in an attribute).
pub fn q(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// The navigation a signed-in viewer sees.
pub struct Nav<'a> {
    pub user: &'a str,
    pub tenant: Option<&'a str>,
    pub finance: bool,
    pub csrf: Option<&'a str>,
}

/// A whole page: the frame, the navigation and `body`.
pub fn page(title: &str, nav: Option<&Nav<'_>>, body: &str) -> String {
    let mut links = String::new();
    let mut who = String::new();
    let mut csrf = String::new();
    if let Some(nav) = nav {
        if nav.finance {
            links.push_str(r#"<a href="/console/">Overview</a><a href="/console/ledger">Ledger</a>"#);
        }
        if nav.tenant.is_some() {
            links.push_str(r#"<a href="/console/team">My team</a>"#);
        }
        let tenant = nav.tenant.map(|t| format!(" · {}", esc(t))).unwrap_or_default();
        who = format!(
            r#"<span class="who">{}{tenant}</span><form method="post" action="/console/logout" class="logout" data-js-logout><button type="submit">Sign out</button></form>"#,
            esc(nav.user)
        );
        if let Some(token) = nav.csrf {
            csrf = format!(r#"<meta name="csrf-token" content="{}">"#, esc(token));
        }
    }
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
{csrf}<title>{title} · vidgate console</title>
<link rel="stylesheet" href="/console/assets/console.css">
<script src="/console/assets/console.js" defer></script>
</head>
<body>
<header><a class="brand" href="/console/">vidgate</a><nav aria-label="Console">{links}</nav>{who}</header>
<main id="main">
<h1>{title}</h1>
{body}
</main>
</body>
</html>
"#,
        title = esc(title)
    )
}

/// A table with a caption, header cells and rows of already-escaped HTML cells; numeric
/// columns (by index) are right-aligned.
pub fn table(caption: &str, headers: &[&str], numeric: &[usize], rows: &[Vec<String>]) -> String {
    let mut out = format!(
        r#"<div class="scroll"><table><caption>{}</caption><thead><tr>"#,
        esc(caption)
    );
    for (i, header) in headers.iter().enumerate() {
        let class = if numeric.contains(&i) { r#" class="num""# } else { "" };
        let _ = write!(out, r#"<th scope="col"{class}>{}</th>"#, esc(header));
    }
    out.push_str("</tr></thead><tbody>");
    if rows.is_empty() {
        let _ = write!(
            out,
            r#"<tr><td colspan="{}">Nothing in this view.</td></tr>"#,
            headers.len()
        );
    }
    for row in rows {
        out.push_str("<tr>");
        for (i, cell) in row.iter().enumerate() {
            let class = if numeric.contains(&i) { r#" class="num""# } else { "" };
            let _ = write!(out, "<td{class}>{cell}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>");
    out
}

/// How far a budget is used, for the bar's colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    /// At or past the first alert threshold.
    Warn,
    /// At or past 100 %.
    Over,
}

impl Level {
    pub fn of(used_ppm: u64, first_threshold_ppm: u64) -> Self {
        if used_ppm >= 1_000_000 {
            Self::Over
        } else if used_ppm >= first_threshold_ppm {
            Self::Warn
        } else {
            Self::Ok
        }
    }

    fn class(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Over => "over",
        }
    }
}

/// A budget bar: a `<meter>`-like bar with the percentage as text (never colour alone).
pub fn bar(used_ppm: u64, level: Level) -> String {
    let percent = used_ppm as f64 / 10_000.0;
    let width = percent.min(100.0);
    format!(
        r#"<span class="bar {class}" role="img" aria-label="{percent:.1} % of the budget used"><span style="width:{width:.1}%"></span></span> <span class="pct">{percent:.1} %</span>"#,
        class = level.class()
    )
}

/// A bar chart of money by day as inline SVG (no script needed), with a text title per bar.
pub fn day_chart(days: &[(String, i64, String)]) -> String {
    if days.is_empty() {
        return "<p>No spend by day in this period.</p>".into();
    }
    let max = days.iter().map(|(_, micros, _)| *micros).max().unwrap_or(0).max(1);
    let (width, height, gap) = (24_i64, 160_i64, 6_i64);
    // At least a month of slots, so a few days do not stretch into one wide block.
    let total_width = (width + gap) * (days.len() as i64).max(31);
    let mut out = format!(
        r#"<figure class="chart"><svg viewBox="0 0 {total_width} {}" role="img" aria-label="Spend by day" preserveAspectRatio="xMinYMax meet">"#,
        height + 20
    );
    for (i, (day, micros, money)) in days.iter().enumerate() {
        let h = ((*micros as f64 / max as f64) * height as f64).round() as i64;
        let x = i as i64 * (width + gap);
        let _ = write!(
            out,
            r#"<rect x="{x}" y="{}" width="{width}" height="{h}"><title>{}: {}</title></rect>"#,
            height - h,
            esc(day),
            esc(money)
        );
    }
    let first = days.first().map(|(day, _, _)| day.as_str()).unwrap_or("");
    let last = days.last().map(|(day, _, _)| day.as_str()).unwrap_or("");
    let _ = write!(
        out,
        "</svg><figcaption>Spend by day, {} to {} (hover a bar for its figure; the table below lists them)</figcaption></figure>",
        esc(first),
        esc(last)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_values_is_escaped() {
        assert_eq!(esc(r#"<script>"a"&'b'"#), "&lt;script&gt;&quot;a&quot;&amp;&#39;b&#39;");
        assert_eq!(q("a b&c"), "a+b%26c");
    }

    #[test]
    fn the_bar_turns_amber_at_the_first_threshold_and_red_at_the_budget() {
        assert_eq!(Level::of(799_999, 800_000), Level::Ok);
        assert_eq!(Level::of(800_000, 800_000), Level::Warn);
        assert_eq!(Level::of(1_000_000, 800_000), Level::Over);
        assert!(bar(1_500_000, Level::Over).contains("width:100.0%"));
    }
}
