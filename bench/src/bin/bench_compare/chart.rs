//! `chart.svg`: the comparison drawn as bars side by side, which read more
//! readily than the table (BENCHMARKS.md shows one, kept as
//! `docs/bench-compare.svg`).
//!
//! Plain SVG written by hand, so the bench needs no plotting library.

use crate::report::{Figures, Report};

/// Three bar panels (throughput, p50, fib(30) p50), one bar per worker.
pub fn chart(report: &Report) -> String {
    use std::fmt::Write as _;
    let colours = [
        ("echo", "#9aa5b1"),
        ("python-seed", "#e0a030"),
        ("warren", "#2f7ed8"),
    ];
    type Pick = fn(&Figures) -> Option<f64>;
    let panels: [(&str, &str, Pick, f64); 3] = [
        (
            "fib(1), 64 in flight",
            "requests/s (higher is better)",
            |f| f.throughput_per_s,
            1.0,
        ),
        (
            "fib(1), one at a time",
            "p50 µs (lower is better)",
            |f| f.p50_us,
            1.0,
        ),
        (
            "fib(30), one at a time",
            "p50 ms (lower is better)",
            |f| f.fib30_p50_us,
            0.001,
        ),
    ];
    let (panel_w, panel_h, top, left) = (260.0, 220.0, 60.0, 30.0);
    let width = left + panels.len() as f64 * (panel_w + 30.0);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="330" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        svg,
        r#"<text x="{left}" y="22" font-size="15" font-weight="bold">Warren beside the broker's ceiling and the seed's Python server</text>"#
    );
    for (i, (title, unit, pick, scale)) in panels.iter().enumerate() {
        let x0 = left + i as f64 * (panel_w + 30.0);
        let bars: Vec<(&str, &str, f64)> = colours
            .iter()
            .filter_map(|(name, colour)| {
                let value = report.workers.get(*name).and_then(pick)? * scale;
                Some((*name, *colour, value))
            })
            .collect();
        let max = bars
            .iter()
            .map(|b| b.2)
            .fold(0.0, f64::max)
            .max(f64::EPSILON);
        let _ = write!(
            svg,
            r##"<text x="{x0}" y="{}" font-weight="bold">{title}</text><text x="{x0}" y="{}" fill="#555">{unit}</text>"##,
            top - 16.0,
            top - 2.0
        );
        let bar_w = panel_w / (bars.len().max(1) as f64) - 14.0;
        for (j, (name, colour, value)) in bars.iter().enumerate() {
            let h = value / max * (panel_h - 30.0);
            let x = x0 + j as f64 * (bar_w + 14.0);
            let y = top + panel_h - h;
            let label = if *value >= 100.0 {
                format!("{value:.0}")
            } else {
                format!("{value:.2}")
            };
            let _ = write!(
                svg,
                r##"<rect x="{x:.1}" y="{y:.1}" width="{bar_w:.1}" height="{h:.1}" fill="{colour}"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{label}</text><text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#333">{name}</text>"##,
                x + bar_w / 2.0,
                y - 4.0,
                x + bar_w / 2.0,
                top + panel_h + 16.0
            );
        }
    }
    let _ = write!(
        svg,
        r##"<text x="{left}" y="318" fill="#555">{}</text></svg>"##,
        xml_escape(&report.machine)
    );
    svg
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
