//! The reproduction report's judgements: a grid's rows, the noise of a difference, the
//! verdict on each of the paper's findings, and the spread of the key rows over seeds.

use std::fmt::Write as _;

/// One row of a grid's table: per bit-width of the list, the validation top-1 and the cost
/// of the row's own model.
pub(crate) struct Row {
    /// The row's label in the table.
    pub(crate) label: String,
    /// Validation top-1 (%) per bit-width of the list; `None` where the run failed.
    pub(crate) top1: Vec<Option<f64>>,
    /// GBitOPs per image of the row's own model, per bit-width of the list.
    pub(crate) gbitops: Vec<Option<f64>>,
}

/// The key rows' top-1 (%) per seed (seed 0 first) and per bit-width of the list.
pub(crate) struct Seeds {
    /// The individual models.
    pub(crate) individual: Vec<Vec<Option<f64>>>,
    /// The joint S-CL (AdaBits) model.
    pub(crate) joint: Vec<Vec<Option<f64>>>,
}

impl Seeds {
    /// Joint minus individual, mean over the bit-widths, per seed (`None` where a run failed).
    pub(crate) fn gaps(&self) -> Vec<Option<f64>> {
        self.individual
            .iter()
            .zip(&self.joint)
            .map(|(i, j)| Some(mean_of(j)? - mean_of(i)?))
            .collect()
    }
}

/// The mean of the cells that are there.
fn mean_of(v: &[Option<f64>]) -> Option<f64> {
    let vals: Vec<f64> = v.iter().flatten().copied().collect();
    (!vals.is_empty()).then(|| vals.iter().sum::<f64>() / vals.len() as f64)
}

/// The two-sided 95 % quantile of Student's t with `dof` degrees of freedom (1.96 beyond 30).
fn t95(dof: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    T.get(dof.wrapping_sub(1)).copied().unwrap_or(1.96)
}

/// The verdict on a finding that says a difference is positive, from its value on each seed
/// (`diffs`, in points, two or more) and the noise of one difference on the validation images
/// (`val_noise`): called only beyond the larger of that noise and the half-width of a 95 %
/// interval of the seeds' mean (Student's t), so that neither the images nor the seeds decide
/// it alone.
fn seed_verdict(diffs: &[f64], val_noise: f64, near_chance: bool) -> String {
    let n = diffs.len() as f64;
    let mean = diffs.iter().sum::<f64>() / n;
    let var = diffs.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    let interval = t95(diffs.len() - 1) * (var / n).sqrt();
    let noise = interval.max(val_noise);
    let call = if near_chance {
        "inconclusive (near chance)"
    } else if mean.abs() <= noise {
        "inconclusive at this scale (within noise)"
    } else if mean > 0.0 {
        "reproduced"
    } else {
        "not reproduced at this scale"
    };
    let each: Vec<String> = diffs.iter().map(|d| format!("{d:+.1}")).collect();
    format!(
        "{call}; over {} seeds a mean difference of {mean:+.1} points (per seed {}) against noise of {noise:.1} (the larger of the seeds' 95 % interval, {interval:.1}, and the validation images' {val_noise:.1})",
        diffs.len(),
        each.join(", ")
    )
}

/// Two standard errors (in points) of the difference of two accuracies `a` and `b` (in %)
/// each measured on `n` images: what a difference must exceed to be more than noise.
pub(crate) fn noise(a: f64, b: f64, n: usize) -> f64 {
    let p = ((a + b) / 200.0).clamp(0.0, 1.0);
    200.0 * (2.0 * p * (1.0 - p) / n.max(1) as f64).sqrt()
}

/// The verdict on a finding that says `a` exceeds `b` (top-1 in %, each on `val` images):
/// "reproduced" or "not reproduced" only when the difference is beyond noise ([`noise`]) and
/// either figure is clearly above chance (10 % with 10 classes); otherwise inconclusive.
fn verdict(a: f64, b: f64, val: usize) -> String {
    let noise = noise(a, b, val);
    let call = if a.max(b) < 20.0 {
        "inconclusive (near chance)"
    } else if (a - b).abs() <= noise {
        "inconclusive at this scale (within noise)"
    } else if a > b {
        "reproduced"
    } else {
        "not reproduced at this scale"
    };
    format!(
        "{call}; a difference of {:+.1} points against noise of {noise:.1}",
        a - b
    )
}

/// The paper's findings, checked against the measured rows: each is a difference between two
/// measured figures, judged against its noise ([`verdict`]).
/// With `seeds` (two or more), the finding on the key rows (joint against individual) is
/// judged over the seeds ([`seed_verdict`]); the others, whose rows ran with seed 0 only, say so.
pub(crate) fn findings(
    list: &[u8],
    rows: &[Row],
    progressive: Option<(f64, f64)>,
    val: usize,
    seeds: Option<&Seeds>,
) -> String {
    let row = |prefix: &str| {
        rows.iter()
            .find(|r| r.label.starts_with(prefix))
            .map(|r| r.top1.clone())
    };
    let mean = |v: &[Option<f64>]| {
        let vals: Vec<f64> = v.iter().flatten().copied().collect();
        (!vals.is_empty()).then(|| vals.iter().sum::<f64>() / vals.len() as f64)
    };
    let last = list.len() - 1;
    let lowest = list[last];
    let gaps: Vec<f64> = seeds
        .map(|s| s.gaps().into_iter().flatten().collect())
        .unwrap_or_default();
    let by_seeds = gaps.len() >= 2;
    let mut out = format!(
        "Findings of the paper, checked on these numbers (the paper's figures are second-hand, \
         docs/method.md §9–10, and for ImageNet at full scale). Each is a difference between \
         two measured figures; it is called only when it exceeds the noise, two standard errors \
         of a difference of two accuracies on {val} images, and is inconclusive otherwise{}:\n\n",
        if by_seeds {
            format!(
                ". The first is judged over the {} seeds of the key rows, beyond the seeds' \
                 spread as well; the others ran with seed 0 only, and one seed can overstate \
                 a difference (docs/reproduction.md)",
                gaps.len()
            )
        } else {
            String::new()
        }
    );
    if let (Some(ind), Some(joint)) = (row("individual"), row("joint, S-CL"))
        && let (Some(a), Some(b)) = (mean(&ind), mean(&joint))
    {
        // Joint at least as good: a clear deficit contradicts it, a clear lead supports it.
        let judged = if by_seeds {
            seed_verdict(&gaps, noise(a, b, val), a.max(b) < 20.0)
        } else {
            verdict(b, a, val)
        };
        let _ = writeln!(
            out,
            "- Joint training as good as individual models: mean top-1 {b:.1} % (AdaBits) vs {a:.1} % (individual){}: {judged}. Paper: AdaBits MobileNet-V1 {{8,6,5,4}} on ImageNet within 0.3 points of the individual models at every bit-width (72.4 / 72.1 / 72.1 / 71.1 %).",
            if by_seeds { " with seed 0" } else { "" },
        );
    }
    if let (Some(scl), Some(shared)) = (row("joint, S-CL"), row("joint, shared"))
        && let (Some(a), Some(b)) = (scl[last], shared[last])
    {
        let _ = writeln!(
            out,
            "- S-CL better than a shared α at the lowest bit-width ({lowest} bits): {a:.1} % vs {b:.1} %: {}. Paper: +0.3 points at 4 bits for MobileNet-V1 on ImageNet.",
            verdict(a, b, val)
        );
    }
    if let (Some(ind), Some(plain), Some(calibrated)) =
        (row("individual"), row("direct, no"), row("direct + BN"))
        && let (Some(i), Some(d), Some(c)) = (ind[last], plain[last], calibrated[last])
    {
        let _ = writeln!(
            out,
            "- Direct adaptation collapsing at the lowest bit-width ({lowest} bits): the model trained at {} bits reaches {d:.1} % there, the individual {lowest}-bit model {i:.1} %: {}. BatchNorm calibration recovers part of it, {c:.1} % vs {d:.1} %: {}; and stays below the individual model, {c:.1} % vs {i:.1} %: {}. Paper: a model trained at 4 bits falls from 76.3 % to 41.1 % when run at 2 bits; calibration helps but stays below individual models.",
            list[0],
            verdict(i, d, val),
            verdict(c, d, val),
            verdict(i, c, val)
        );
    }
    if let Some(scl) = row("joint, S-CL") {
        // The largest lead of a lower bit-width over a higher one, against the noise.
        let mut worst: Option<(f64, u8, u8)> = None;
        for i in 0..list.len() {
            for j in i + 1..list.len() {
                if let (Some(high), Some(low)) = (scl[i], scl[j]) {
                    let lead = low - high;
                    if worst.is_none_or(|(w, _, _)| lead > w) {
                        worst = Some((lead, list[j], list[i]));
                    }
                }
            }
        }
        if let (Some((lead, low, high)), Some(m)) = (worst, mean(&scl)) {
            let noise = noise(m, m, val);
            let _ = writeln!(
                out,
                "- Sanity check, not a finding of the paper: no lower bit-width of the AdaBits model beats a higher one beyond noise. The largest lead is {lead:+.1} points ({low} over {high} bits), noise {noise:.1} points: {}.",
                if lead <= noise {
                    "holds"
                } else {
                    "does not hold"
                }
            );
        }
    }
    if let Some((first, last)) = progressive {
        let _ = writeln!(
            out,
            "- Progressive training losing the bit-width it trained first ({} bits): {first:.1} % after its own stage, {last:.1} % after the last stage: {}. Paper: progressive training ruins the bit-widths trained earlier, with 29.5 % at the lowest (2-bit) setting.",
            list[0],
            verdict(first, last, val)
        );
    }
    out
}

/// The report's section on the seeds: mean (min–max) of each key row at each bit-width, and
/// the joint-minus-individual difference of each seed.
pub(crate) fn spread_section(list: &[u8], seeds: &Seeds) -> String {
    let (individual, joint) = (&seeds.individual, &seeds.joint);
    let n = individual.len();
    let cell = |per_seed: &[Vec<Option<f64>>], i: usize| {
        let v: Vec<f64> = per_seed.iter().filter_map(|s| s[i]).collect();
        if v.is_empty() {
            return "–".to_string();
        }
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let (lo, hi) = v
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                (a.min(x), b.max(x))
            });
        format!("{mean:.1} ({lo:.1}–{hi:.1})")
    };
    let header: Vec<String> = list.iter().map(|b| format!("{b} bits")).collect();
    let mut md = format!(
        "\nThe key rows with {n} seeds (seed 0 above; each further seed with its own \
         full-precision stage, in `seed-S/`), mean (min–max) top-1 (%):\n\n\
         | row | {} |\n|---|{}\n",
        header.join(" | "),
        "---|".repeat(list.len())
    );
    for (label, per_seed) in [("individual", individual), ("joint, S-CL (AdaBits)", joint)] {
        let cells: Vec<String> = (0..list.len()).map(|i| cell(per_seed, i)).collect();
        let _ = writeln!(md, "| {label} | {} |", cells.join(" | "));
    }
    let gaps: Vec<String> = seeds
        .gaps()
        .iter()
        .enumerate()
        .map(|(s, gap)| match gap {
            Some(g) => format!("seed {s}: {g:+.1}"),
            None => format!("seed {s}: –"),
        })
        .collect();
    let _ = writeln!(
        md,
        "\nJoint minus individual, mean over the bit-widths, per seed: {} points.\n",
        gaps.join(", ")
    );
    md
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn rows() -> Vec<Row> {
        let row = |label: &str, v: [f64; 3]| Row {
            label: label.to_string(),
            top1: v.map(Some).to_vec(),
            gbitops: vec![Some(0.0139), Some(0.0095), Some(0.0063)],
        };
        vec![
            row("individual (one model per bit-width)", [60.0, 58.0, 50.0]),
            row("direct, no BN calibration", [60.0, 30.0, 11.0]),
            row("direct + BN calibration", [60.0, 45.0, 25.0]),
            row("progressive (high to low)", [57.0, 56.0, 48.0]),
            row("joint, shared α (Vanilla AdaBits)", [59.0, 57.0, 40.0]),
            row("joint, S-CL (AdaBits)", [59.5, 58.0, 49.0]),
        ]
    }

    #[test]
    fn the_seed_section_gives_each_key_rows_mean_and_range_and_each_seeds_gap() {
        let individual = vec![
            vec![Some(46.0), Some(44.0)],
            vec![Some(48.0), Some(40.0)],
            vec![Some(47.0), None],
        ];
        let joint = vec![
            vec![Some(50.0), Some(49.0)],
            vec![Some(49.0), Some(47.0)],
            vec![Some(51.0), Some(48.0)],
        ];
        let md = spread_section(&[4, 2], &Seeds { individual, joint });
        assert!(md.contains("The key rows with 3 seeds"), "{md}");
        assert!(md.contains("| 4 bits | 2 bits |"), "{md}");
        // 46, 48, 47: mean 47.0, range 46–48; a seed without a cell is left out.
        assert!(
            md.contains("| individual | 47.0 (46.0–48.0) | 42.0 (40.0–44.0) |"),
            "{md}"
        );
        assert!(
            md.contains("| joint, S-CL (AdaBits) | 50.0 (49.0–51.0) | 48.0 (47.0–49.0) |"),
            "{md}"
        );
        // Joint minus individual, mean over the bit-widths: 49.5 − 45, 48 − 44, 49.5 − 47.
        assert!(
            md.contains("seed 0: +4.5, seed 1: +4.0, seed 2: +2.5 points"),
            "{md}"
        );
    }

    #[test]
    fn with_seeds_the_key_finding_is_judged_over_them() {
        // Each seed's joint-minus-individual gap (seed 0's row figures come from `rows()`).
        let seeds = |gaps: [f64; 3]| Seeds {
            individual: vec![vec![Some(50.0); 3]; 3],
            joint: gaps.iter().map(|g| vec![Some(50.0 + g); 3]).collect(),
        };
        let line = |s: &Seeds| {
            let text = findings(&[4, 3, 2], &rows(), None, 1000, Some(s));
            assert!(text.contains("judged over the 3 seeds"), "{text}");
            text.lines()
                .find(|l| l.starts_with("- Joint training"))
                .unwrap()
                .to_string()
        };
        // Gaps −0.5, +4.0, −2.7 (like those docs/reproduction.md measured): mean +0.3, sd
        // 3.41, the 95 % interval 4.303·3.41/√3 = 8.5: inconclusive.
        let text = line(&seeds([-0.5, 4.0, -2.7]));
        assert!(
            text.contains(
                "with seed 0: inconclusive at this scale (within noise); over 3 seeds a mean difference of +0.3 points (per seed -0.5, +4.0, -2.7) against noise of 8.5 (the larger of the seeds' 95 % interval, 8.5, and the validation images' 4.4)"
            ),
            "{text}"
        );
        // Consistent gaps of about +6: the interval (1.2) is narrow, the images' noise (4.4)
        // decides.
        let text = line(&seeds([5.5, 6.5, 6.0]));
        assert!(
            text.contains(": reproduced; over 3 seeds a mean difference of +6.0 points (per seed +5.5, +6.5, +6.0) against noise of 4.4 (the larger of the seeds' 95 % interval, 1.2,"),
            "{text}"
        );
        let text = line(&seeds([-5.5, -6.5, -6.0]));
        assert!(
            text.contains(": not reproduced at this scale; over 3 seeds"),
            "{text}"
        );
        // One seed: judged on seed 0 as before.
        let one = Seeds {
            individual: vec![vec![Some(60.0); 3]],
            joint: vec![vec![Some(50.0); 3]],
        };
        let text = findings(&[4, 3, 2], &rows(), None, 1000, Some(&one));
        assert!(!text.contains("seeds"), "{text}");
    }

    #[test]
    fn noise_is_two_standard_errors_of_a_difference() {
        // 200·sqrt(2·0.5·0.5/1000) = 4.47 points at 50 %; less near 0 or 100 %.
        assert!((noise(50.0, 50.0, 1000) - 4.472).abs() < 1e-3);
        assert!(noise(95.0, 95.0, 1000) < noise(50.0, 50.0, 1000));
        assert!((noise(50.0, 50.0, 4000) - 2.236).abs() < 1e-3);
    }

    #[test]
    fn every_finding_is_checked_on_the_numbers_against_its_noise() {
        let text = findings(&[4, 3, 2], &rows(), Some((60.0, 52.0)), 1000, None);
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("- ")).collect();
        assert_eq!(lines.len(), 5, "{text}");
        // Joint mean 55.5 vs individual 56.0: -0.5 points, inside the noise of 4.4.
        assert!(
            lines[0].contains(
                "55.5 % (AdaBits) vs 56.0 % (individual): inconclusive at this scale (within noise); a difference of -0.5 points against noise of 4.4."
            ),
            "{}",
            lines[0]
        );
        // S-CL 49.0 vs shared 40.0 at 2 bits: +9.0 beyond 4.4.
        assert!(
            lines[1].contains("(2 bits): 49.0 % vs 40.0 %: reproduced; a difference of +9.0"),
            "{}",
            lines[1]
        );
        // The collapse itself (direct at 2 bits against the individual 2-bit model), then
        // what calibration recovers, then that it stays below the individual model.
        assert!(
            lines[2].contains("reaches 11.0 % there, the individual 2-bit model 50.0 %: reproduced; a difference of +39.0"),
            "{}",
            lines[2]
        );
        assert!(lines[2].contains("25.0 % vs 11.0 %: reproduced; a difference of +14.0"));
        assert!(lines[2].contains("25.0 % vs 50.0 %: reproduced; a difference of +25.0"));
        // S-CL 59.5 / 58.0 / 49.0: no lower bit-width leads; the smallest deficit is -1.5.
        assert!(
            lines[3]
                .contains("largest lead is -1.5 points (3 over 4 bits), noise 4.4 points: holds."),
            "{}",
            lines[3]
        );
        assert!(
            lines[4].contains("60.0 % after its own stage, 52.0 % after the last stage: reproduced; a difference of +8.0"),
            "{}",
            lines[4]
        );
        // Each finding of the paper quotes the paper's figure.
        assert_eq!(
            lines.iter().filter(|l| l.contains("Paper:")).count(),
            4,
            "{text}"
        );
    }

    #[test]
    fn findings_the_numbers_contradict_or_cannot_decide_are_reported_as_such() {
        let mut r = rows();
        r[5].top1 = vec![Some(40.0), Some(62.0), Some(30.0)];
        let text = findings(&[4, 3, 2], &r, Some((12.0, 11.0)), 1000, None);
        assert!(
            text.contains("largest lead is +22.0 points (3 over 4 bits)"),
            "{text}"
        );
        assert!(text.contains("does not hold."), "{text}");
        // Joint mean 44.0 against 56.0: a deficit beyond noise.
        assert!(
            text.contains("44.0 % (AdaBits) vs 56.0 % (individual): not reproduced at this scale; a difference of -12.0"),
            "{text}"
        );
        // S-CL 30.0 vs shared 40.0 at 2 bits.
        assert!(
            text.contains("30.0 % vs 40.0 %: not reproduced at this scale"),
            "{text}"
        );
        assert!(
            text.contains("after the last stage: inconclusive (near chance)"),
            "{text}"
        );
    }
}
