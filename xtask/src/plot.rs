//! Line charts as standalone SVG files: accuracy against bit-width or BitOPs, loss curves.
//!
//! A few lines of SVG do what the report needs (lines, markers, axes with round ticks, a
//! legend, a dashed reference line), so xtask keeps its single dependency.

use std::fmt::Write as _;

/// One line of a chart.
pub(crate) struct Series {
    /// Legend entry.
    pub(crate) label: String,
    /// Points in drawing order; non-finite points are skipped.
    pub(crate) points: Vec<(f64, f64)>,
}

/// A horizontal reference line (for example chance level). The y axis fits the data and the
/// references that ask for it; a reference outside it is named in the legend with where it
/// lies.
pub(crate) struct Reference {
    /// Legend entry.
    pub(crate) label: String,
    /// Its y value.
    pub(crate) y: f64,
    /// Whether the y axis reaches it (a full-precision reference, not a distant chance level).
    pub(crate) fit: bool,
}

/// What to draw.
pub(crate) struct Chart<'a> {
    pub(crate) title: &'a str,
    pub(crate) x_label: &'a str,
    pub(crate) y_label: &'a str,
    pub(crate) series: &'a [Series],
    pub(crate) references: Vec<Reference>,
    /// Tick positions and labels for x; round ticks when `None`.
    pub(crate) x_ticks: Option<Vec<(f64, String)>>,
    /// Draw markers on the points (for short series).
    pub(crate) markers: bool,
}

/// Colours of the series, in order (the colour-blind-safe Tableau 10).
const COLOURS: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
];

const WIDTH: f64 = 820.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 300.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 55.0;

/// A training-loss chart against optimiser steps, with `ln 10` (chance with 10 classes) as
/// the reference line.
pub(crate) fn loss_chart(title: &str, series: &[Series]) -> String {
    // The first steps can sit far above chance; clip them so the rest stays readable.
    let top = 2.0 * 10f64.ln();
    let clipped: Vec<Series> = series
        .iter()
        .map(|s| Series {
            label: s.label.clone(),
            points: s.points.iter().map(|&(x, y)| (x, y.min(top))).collect(),
        })
        .collect();
    svg(&Chart {
        title,
        x_label: "optimiser step",
        y_label: "training cross-entropy (mean of 10 steps, clipped at 2 ln 10)",
        series: &clipped,
        references: vec![Reference {
            label: "ln 10 (chance)".into(),
            y: 10f64.ln(),
            fit: true,
        }],
        x_ticks: None,
        markers: false,
    })
}

/// Round tick values covering `[lo, hi]`: steps of 1, 2 or 5 times a power of ten.
pub(crate) fn ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return vec![lo];
    }
    let raw = (hi - lo) / target.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    // The round step whose tick count comes closest to the target.
    let count = |step: f64| ((hi / step).floor() - (lo / step).ceil() + 1.0).max(0.0);
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .min_by(|a, b| {
            let off = |s: f64| (count(s) - target as f64).abs();
            off(*a).total_cmp(&off(*b))
        })
        .unwrap_or(magnitude);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

fn label(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.into() }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Renders `chart` as an SVG document.
pub(crate) fn svg(chart: &Chart<'_>) -> String {
    let points = || {
        chart
            .series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
    };
    let (mut x0, mut x1) = points().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
        (a.min(p.0), b.max(p.0))
    });
    let (mut y0, mut y1) = points().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
        (a.min(p.1), b.max(p.1))
    });
    for r in chart.references.iter().filter(|r| r.fit && r.y.is_finite()) {
        y0 = y0.min(r.y);
        y1 = y1.max(r.y);
    }
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 <= x0 {
        (x0, x1) = (x0 - 0.5, x1 + 0.5);
    }
    if y1 <= y0 {
        (y0, y1) = (y0 - 0.5, y1 + 0.5);
    }
    // A margin of 5 % around the data, then out to the enclosing round ticks for y. A
    // reference inside the margin is drawn (never on the frame); one outside is only named.
    let pad = (x1 - x0) * 0.05;
    let (x0, x1) = (x0 - pad, x1 + pad);
    let pad = (y1 - y0) * 0.05;
    let (y0, y1) = (y0 - pad, y1 + pad);
    let inside = |y: f64| (y0..=y1).contains(&y);
    let y_step = {
        let t = ticks(y0, y1, 6);
        if t.len() > 1 { t[1] - t[0] } else { 1.0 }
    };
    let (y0, y1) = (
        (y0 / y_step).floor() * y_step,
        (y1 / y_step).ceil() * y_step,
    );
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * plot_w;
    let sy = |y: f64| TOP + (1.0 - (y - y0) / (y1 - y0)) * plot_h;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="Helvetica, Arial, sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r##"<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        escape(chart.title)
    );
    // Grid and ticks.
    for y in ticks(y0, y1, 6) {
        let py = sy(y);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            py + 4.0,
            label(y)
        );
    }
    let x_ticks = chart.x_ticks.clone().unwrap_or_else(|| {
        ticks(x0, x1, 6)
            .into_iter()
            .map(|x| (x, label(x)))
            .collect()
    });
    for (x, text) in x_ticks {
        let px = sx(x);
        let _ = writeln!(
            s,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#e5e5e5"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 18.0,
            escape(&text)
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333333"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 14.0,
        escape(chart.x_label)
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        TOP + plot_h / 2.0,
        escape(chart.y_label)
    );
    // Legend entries: (colour, dashed, label).
    let mut legend: Vec<(&str, bool, String)> = Vec::new();
    for r in &chart.references {
        if inside(r.y) {
            let py = sy(r.y);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#777777" stroke-dasharray="6 4"/>"##,
                LEFT + plot_w
            );
            legend.push(("#777777", true, r.label.clone()));
        } else {
            let side = if r.y < y0 { "below" } else { "above" };
            legend.push((
                "#777777",
                true,
                format!("{} at {}, {side} the axis", r.label, label(r.y)),
            ));
        }
    }
    for (i, series) in chart.series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let path: Vec<String> = series
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        if path.len() > 1 {
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
                path.join(" ")
            );
        }
        if chart.markers || path.len() == 1 {
            for p in &path {
                let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
                let _ = writeln!(s, r#"<circle cx="{x}" cy="{y}" r="3.5" fill="{colour}"/>"#);
            }
        }
        legend.push((colour, false, series.label.clone()));
    }
    for (i, (colour, dashed, text)) in legend.iter().enumerate() {
        let y = TOP + 10.0 + i as f64 * 20.0;
        let x = WIDTH - RIGHT + 16.0;
        let dash = if *dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = writeln!(
            s,
            r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{colour}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
            x + 22.0,
            x + 28.0,
            y + 4.0,
            escape(text)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 10.0, 5), [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(
            ticks(12.0, 47.0, 6),
            [15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 45.0]
        );
        let small = ticks(0.006, 0.048, 6);
        assert_eq!(small.len(), 8, "{small:?}");
        assert!((small[0] - 0.01).abs() < 1e-12 && (small[1] - 0.015).abs() < 1e-12);
    }

    #[test]
    fn a_chart_places_every_point_and_names_every_series() {
        let series = [
            Series {
                label: "joint, S-CL <AdaBits>".into(),
                points: vec![(4.0, 40.0), (5.0, 42.0), (8.0, 45.0)],
            },
            Series {
                label: "individual".into(),
                points: vec![(4.0, 30.0), (8.0, f64::NAN)],
            },
        ];
        let doc = svg(&Chart {
            title: "top-1 vs bits",
            x_label: "bits",
            y_label: "top-1 (%)",
            series: &series,
            references: vec![
                Reference {
                    label: "chance".into(),
                    y: 29.5,
                    fit: false,
                },
                Reference {
                    label: "far".into(),
                    y: 10.0,
                    fit: false,
                },
                Reference {
                    label: "reached".into(),
                    y: 48.0,
                    fit: true,
                },
            ],
            x_ticks: Some(vec![(4.0, "4".into()), (8.0, "8".into())]),
            markers: true,
        });
        assert!(doc.starts_with("<svg") && doc.trim_end().ends_with("</svg>"));
        // Three markers for the first series, one for the second (its NaN is skipped).
        assert_eq!(doc.matches("<circle").count(), 4);
        assert_eq!(doc.matches("<polyline").count(), 1);
        assert!(doc.contains("joint, S-CL &lt;AdaBits&gt;"));
        // The y axis fits the data and the reference that asks for it (30 to 48): the
        // reference at 29.5 lies in its margin and is drawn inside the frame; the one at 10
        // is named in the legend with where it lies.
        assert!(
            doc.contains(">chance<") && doc.contains(">reached<"),
            "{doc}"
        );
        assert!(doc.contains(">50<") || doc.contains(">48<"), "{doc}");
        assert_eq!(doc.matches("stroke-dasharray").count(), 5, "{doc}");
        assert!(doc.contains(">far at 10, below the axis<"), "{doc}");
        assert!(!doc.contains(">10<"), "{doc}");
        let frame_bottom = format!(r#"y1="{:.1}""#, HEIGHT - BOTTOM);
        let chance_line = doc
            .lines()
            .find(|l| {
                l.contains(r##"stroke="#777777" stroke-dasharray"##)
                    && l.starts_with("<line x1=\"70\"")
            })
            .unwrap();
        assert!(!chance_line.contains(&frame_bottom), "{chance_line}");
    }
}
