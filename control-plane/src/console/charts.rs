//! Usage charts drawn on the server as SVG, from the usage API's buckets: a sparkline of a key's
//! requests (one bar per bucket) and stacked bars by outcome with axis labels and a legend. The SVG
//! holds only numbers and fixed words; colours come from the console's stylesheet (CSS classes), so
//! the page's Content-Security-Policy needs no inline style.

use std::fmt::Write;

use crate::usage::{Outcomes, UsageBucket};

/// The outcomes in stacking order (bottom first): CSS class and legend text.
pub const OUTCOMES: [(&str, &str); 4] =
    [("admitted", "admitted"), ("forbidden", "forbidden"), ("rate_limited", "rate limited"), ("refused", "refused")];

fn counts(outcomes: &Outcomes) -> [i64; 4] {
    [outcomes.admitted, outcomes.forbidden, outcomes.rate_limited, outcomes.refused]
}

/// Every request of a bucket, whatever its outcome.
pub fn total(outcomes: &Outcomes) -> i64 {
    counts(outcomes).iter().sum()
}

/// `value / max` of `span` pixels, rounded, at least 1 for a non-zero value.
fn scaled(value: i64, max: i64, span: f64) -> f64 {
    if value <= 0 || max <= 0 {
        return 0.0;
    }
    (value as f64 / max as f64 * span).round().max(1.0)
}

/// A 24-bar sparkline of requests per bucket; `label` says what it shows (for screen readers).
pub fn sparkline(buckets: &[UsageBucket], label: &str) -> String {
    const BAR: f64 = 5.0;
    const HEIGHT: f64 = 24.0;
    let totals: Vec<i64> = buckets.iter().map(|b| total(&b.counts)).collect();
    let max = totals.iter().copied().max().unwrap_or(0);
    let sum: i64 = totals.iter().sum();
    let width = BAR * totals.len().max(1) as f64;
    let mut svg = format!(
        r#"<svg class="sparkline" role="img" width="{width}" height="{HEIGHT}" viewBox="0 0 {width} {HEIGHT}"><title>{} — {sum} requests</title>"#,
        escape(label)
    );
    svg.push_str(&format!(r#"<line class="baseline" x1="0" y1="{HEIGHT}" x2="{width}" y2="{HEIGHT}"/>"#));
    for (i, value) in totals.iter().enumerate() {
        let h = scaled(*value, max, HEIGHT);
        if h > 0.0 {
            let _ = write!(
                svg,
                r#"<rect class="bar" x="{}" y="{}" width="{}" height="{h}" data-value="{value}"/>"#,
                i as f64 * BAR,
                HEIGHT - h,
                BAR - 1.0
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// Stacked bars by outcome, one per bucket, with the largest total on the y axis, `label(start)` under
/// the first, middle and last bars, and a legend.
pub fn stacked_bars(buckets: &[UsageBucket], title: &str, label: impl Fn(i64) -> String) -> String {
    const LEFT: f64 = 48.0;
    const TOP: f64 = 24.0;
    const PLOT_W: f64 = 576.0;
    const PLOT_H: f64 = 160.0;
    const BOTTOM: f64 = 24.0;
    let width = LEFT + PLOT_W + 8.0;
    let height = TOP + PLOT_H + BOTTOM;
    let max = buckets.iter().map(|b| total(&b.counts)).max().unwrap_or(0);
    let slot = PLOT_W / buckets.len().max(1) as f64;
    let mut svg = format!(
        r#"<svg class="chart" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}"><title>{}</title>"#,
        escape(title)
    );
    // The legend, across the top.
    for (i, (class, text)) in OUTCOMES.iter().enumerate() {
        let x = LEFT + i as f64 * 120.0;
        let _ = write!(
            svg,
            r#"<rect class="{class}" x="{x}" y="4" width="10" height="10"/><text class="legend" x="{}" y="13">{text}</text>"#,
            x + 14.0
        );
    }
    // The axes and their labels.
    let base = TOP + PLOT_H;
    let _ = write!(
        svg,
        r#"<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{base}"/><line class="axis" x1="{LEFT}" y1="{base}" x2="{}" y2="{base}"/>"#,
        LEFT + PLOT_W
    );
    let _ = write!(
        svg,
        r#"<text class="tick" x="{}" y="{}" text-anchor="end">{max}</text><text class="tick" x="{}" y="{base}" text-anchor="end">0</text>"#,
        LEFT - 4.0,
        TOP + 10.0,
        LEFT - 4.0
    );
    let last = buckets.len().saturating_sub(1);
    let mut ticks = vec![0, last / 2, last];
    ticks.dedup();
    for i in ticks {
        if let Some(bucket) = buckets.get(i) {
            let _ = write!(
                svg,
                r#"<text class="tick" x="{}" y="{}" text-anchor="middle">{}</text>"#,
                LEFT + (i as f64 + 0.5) * slot,
                base + 16.0,
                escape(&label(bucket.start))
            );
        }
    }
    for (i, bucket) in buckets.iter().enumerate() {
        let mut y = base;
        let x = LEFT + i as f64 * slot + slot * 0.1;
        for ((class, _), value) in OUTCOMES.iter().zip(counts(&bucket.counts)) {
            let h = scaled(value, max, PLOT_H);
            if h > 0.0 {
                y -= h;
                let _ = write!(
                    svg,
                    r#"<rect class="{class}" x="{x:.1}" y="{y}" width="{:.1}" height="{h}" data-value="{value}"/>"#,
                    slot * 0.8
                );
            }
        }
    }
    if max == 0 {
        let _ = write!(
            svg,
            r#"<text class="empty" x="{}" y="{}" text-anchor="middle">no requests in this range</text>"#,
            LEFT + PLOT_W / 2.0,
            TOP + PLOT_H / 2.0
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Text made safe inside SVG/HTML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(start: i64, admitted: i64, refused: i64) -> UsageBucket {
        UsageBucket { start, counts: Outcomes { admitted, refused, ..Outcomes::default() } }
    }

    /// The `height` of each `<rect>` whose class is `class`.
    fn heights(svg: &str, class: &str) -> Vec<f64> {
        let marker = format!(r#"<rect class="{class}""#);
        svg.match_indices(&marker)
            .map(|(at, _)| {
                let rest = &svg[at..];
                let h = rest.find(" height=\"").unwrap() + 9;
                rest[h..h + rest[h..].find('"').unwrap()].parse().unwrap()
            })
            .collect()
    }

    #[test]
    fn sparkline_bars_are_proportional() {
        let buckets = [bucket(0, 10, 0), bucket(3_600, 5, 0), bucket(7_200, 0, 0), bucket(10_800, 20, 4)];
        let svg = sparkline(&buckets, "usage <24 h>");
        assert_eq!(heights(&svg, "bar"), vec![10.0, 5.0, 24.0], "{svg}");
        assert!(svg.contains("<title>usage &lt;24 h&gt; — 39 requests</title>"), "{svg}");
    }

    #[test]
    fn stacked_bars_stack_outcomes_against_the_largest_total() {
        let buckets = [bucket(0, 30, 10), bucket(86_400, 20, 0), bucket(172_800, 0, 0)];
        let svg = stacked_bars(&buckets, "7 days", |start| format!("d{}", start / 86_400));
        // 40 requests fill the 160 px plot: 30 → 120, 10 → 40, 20 → 80.
        assert_eq!(heights(&svg, "admitted")[1..], [120.0, 80.0], "{svg}");
        assert_eq!(heights(&svg, "refused")[1..], [40.0], "{svg}");
        assert!(svg.contains(">40</text>") && svg.contains(">d0</text>") && svg.contains(">d2</text>"), "{svg}");
        assert!(svg.contains("<title>7 days</title>") && svg.contains(">rate limited</text>"));
        assert!(!svg.contains("no requests"));
    }

    #[test]
    fn empty_data_draws_no_bars() {
        let zero = [bucket(0, 0, 0), bucket(3_600, 0, 0)];
        let svg = stacked_bars(&zero, "24 hours", |_| String::new());
        assert!(heights(&svg, "admitted").len() == 1, "only the legend's swatch: {svg}");
        assert!(svg.contains("no requests in this range"));
        let none = stacked_bars(&[], "24 hours", |_| String::new());
        assert!(none.contains("no requests in this range") && none.ends_with("</svg>"));
        assert!(heights(&sparkline(&[], "x"), "bar").is_empty());
        assert!(heights(&sparkline(&zero, "x"), "bar").is_empty());
    }
}
