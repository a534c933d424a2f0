//! `adabits verify`: an artifact, on the f32 runtime and the integer runtime, against the
//! checkpoint it was exported from.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use adabits_models::adabits_quant::{At, BitWidth};
use adabits_models::{Artifact, Runtime};
use adabits_runtime::IntRuntime;
use adabits_train::data::Loader;
use burn::module::Module;
use clap::Args;
use serde_json::json;

use crate::output::print_json;
use crate::run_args::RunArgs;

/// The flags of `adabits verify`.
#[derive(Debug, Args)]
pub(crate) struct Verify {
    /// The artifact.
    #[arg(long, value_name = "FILE")]
    artifact: PathBuf,
    #[command(flatten)]
    run: RunArgs,
    /// Largest relative logit difference allowed for the f32 runtime (relative to each image's
    /// largest logit).
    #[arg(long, default_value_t = 1e-4, value_parser = crate::values::non_negative)]
    tolerance: f64,
    /// The share of images (percent) on which the integer runtime may differ from the
    /// checkpoint by more than --tolerance. Its integer sums are exact and the model's float
    /// sums are not, so a value on a quantization boundary can take the next level (a flip),
    /// which moves that image's logits by up to tens of percent and may change its class; a
    /// fault (a wrong scale, bias or layer) moves nearly every image. Trained ResNet-20s flip
    /// 0 to 2 % of their images (docs/artifact.md).
    #[arg(long, default_value_t = 5.0, value_name = "PERCENT", value_parser = crate::values::non_negative)]
    int_max_flipped: f64,
    /// Also require every integer-runtime image within this relative logit difference and
    /// every prediction to agree (no flip allowed beyond it) [default: no such bound].
    #[arg(long, value_parser = crate::values::non_negative)]
    int_tolerance: Option<f64>,
    /// Verify under a precision plan (JSON: a default and bit-widths by official layer name or
    /// `*` pattern) instead of at each bit-width: both runtimes and the checkpoint run each
    /// layer at its plan entry.
    #[arg(long, value_name = "FILE")]
    plan: Option<std::path::PathBuf>,
    /// Evaluation batch size.
    #[arg(long, default_value_t = 256, value_parser = crate::values::count)]
    batch_size: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// `adabits verify`.
pub(crate) fn run(args: Verify) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    let device = args.run.device.device();
    let artifact = Artifact::read(&args.artifact)?;
    let run = args.run.open(&device)?;
    let ours = serde_json::to_value(&artifact.header.model)?;
    let theirs = serde_json::to_value(&run.config.model)?;
    anyhow::ensure!(
        ours == theirs,
        "{}: the artifact's model configuration differs from the run's ({})\nhint: verify against the run the artifact was exported from",
        args.artifact.display(),
        args.run.checkpoint.join("config.json").display()
    );
    let model = run.model.valid();
    let data = args.run.data_of(&run)?;
    let (_, val_set) = data.open()?;
    let val = Loader::new(Arc::from(val_set), args.batch_size, false, run.config.seed);
    // The integer runtime where it can run the artifact; where it cannot, say why.
    let (mut integer, int_note) = match IntRuntime::new(artifact.clone()) {
        Ok(int) => (Some(int), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let mut runtime = Runtime::new(artifact, &device)?;
    let mut rows = Vec::new();
    let mut ok = true;
    // What is verified: each entry of the list (a bit-width or a wWaA pair, run by the model
    // as training runs it), or the plan (run by every layer whatever bit-width `forward` is
    // given).
    let settings: Vec<(String, Option<At>, adabits_models::Model)> = match &args.plan {
        Some(path) => {
            let entries = &run.config.model.bits;
            let resolved = crate::plan_file::read_plan(path, &model, entries)?;
            runtime.set_plan(&resolved)?;
            if let Some(int) = &mut integer {
                let positions: Vec<usize> =
                    resolved.layers.iter().map(|(_, at)| at.entry).collect();
                int.set_plan(&positions)?;
            }
            let planned = adabits_models::with_plan(&model, &resolved)?;
            vec![("plan".to_string(), None, planned)]
        }
        None => run
            .config
            .model
            .bits
            .entries()
            .map(|at| (at.precision.to_string(), Some(at), model.for_entry(at)))
            .collect(),
    };
    for (label, at, model) in settings {
        // The bit-width `forward` is given: the entry's weights (a pair entry and a plan are
        // set on every layer, which then run them whatever it is).
        let b = at.map_or(BitWidth::FULL, |at| at.precision.weight);
        if let Some(at) = at {
            runtime.set_bits(at.precision)?;
            if let Some(int) = &mut integer {
                let entry = adabits_models::file_entry(at.precision)
                    .expect("the artifact's list is the run's, of entries of 1 to 8 bits");
                int.set_entry(entry)?;
            }
        }
        let mut f32_check = Agreement::default();
        let mut int_check = Agreement::default();
        for batch in val.epoch(0, 0, &device) {
            let batch = batch?;
            let expected = model.forward(batch.images.clone(), b);
            let [n, _, h, w] = batch.images.dims();
            let pixels: Vec<f32> = batch.images.clone().into_data().iter::<f32>().collect();
            let found = runtime.forward(batch.images);
            let classes = expected.dims()[1];
            let e: Vec<f64> = expected.into_data().iter::<f64>().collect();
            let f: Vec<f64> = found.into_data().iter::<f64>().collect();
            f32_check.add(&e, &f, classes, args.tolerance);
            if let Some(int) = &integer {
                let logits = int.forward(&pixels, n, [h, w])?;
                let f: Vec<f64> = logits.iter().map(|&v| f64::from(v)).collect();
                int_check.add(&e, &f, classes, args.tolerance);
            }
        }
        let engines = [
            ("f32", Some(&f32_check), Criterion::Exact(args.tolerance)),
            (
                "int",
                integer.as_ref().map(|_| &int_check),
                match args.int_tolerance {
                    Some(t) => Criterion::Exact(t),
                    None => Criterion::Flips(args.int_max_flipped),
                },
            ),
        ];
        for (engine, check, criterion) in engines {
            let Some(check) = check else { continue };
            let pass = criterion.passes(check);
            ok &= pass;
            rows.push(json!({
                // A bit-width stays a number, as before plans; a pair is "w4a8", a plan "plan".
                "bits": label.parse::<u8>().map_or_else(|_| json!(label), |b| json!(b)),
                "engine": engine, "images": check.images,
                "same_prediction": check.agree, "max_relative_difference": check.worst,
                "beyond_tolerance": check.beyond, "criterion": criterion.to_string(),
                "pass": pass,
            }));
        }
    }
    if args.json {
        print_json(&json!({"pass": ok, "bits": rows, "int_not_run": int_note}))?;
    } else {
        println!(
            "{:>6} {:>6} {:>8} {:>16} {:>14} {:>10}  result",
            "bits",
            "engine",
            "images",
            "same prediction",
            "max rel. diff",
            format!("> {:e}", args.tolerance)
        );
        for r in &rows {
            println!(
                "{:>6} {:>6} {:>8} {:>16} {:>14.2e} {:>10}  {} ({})",
                r["bits"].to_string().trim_matches('"'),
                r["engine"].as_str().unwrap_or(""),
                r["images"].as_u64().unwrap_or(0),
                r["same_prediction"].as_u64().unwrap_or(0),
                r["max_relative_difference"].as_f64().unwrap_or(f64::NAN),
                r["beyond_tolerance"].as_u64().unwrap_or(0),
                if r["pass"] == true { "ok" } else { "FAILED" },
                r["criterion"].as_str().unwrap_or("")
            );
        }
        if let Some(note) = &int_note {
            println!("integer runtime not checked: {note}");
        }
        println!(
            "{}",
            if ok {
                format!(
                    "the artifact reproduces the checkpoint {} (f32 runtime within {:e}; integer runtime {})",
                    if args.plan.is_some() {
                        "under the plan"
                    } else {
                        "at every entry of its list"
                    },
                    args.tolerance,
                    match args.int_tolerance {
                        Some(t) => format!("within {t:e}"),
                        None => format!(
                            "within {:e} but for level flips on at most {}% of the images",
                            args.tolerance, args.int_max_flipped
                        ),
                    }
                )
            } else {
                "the artifact does NOT reproduce the checkpoint".into()
            }
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// When an engine passes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Criterion {
    /// Every prediction agrees and every image is within this relative difference.
    Exact(f64),
    /// At most this percentage of the images differ beyond the tolerance (level flips).
    Flips(f64),
}

impl Criterion {
    fn passes(self, check: &Agreement) -> bool {
        match self {
            Self::Exact(t) => check.agree == check.images && check.worst <= t,
            Self::Flips(percent) => check.beyond as f64 <= percent / 100.0 * check.images as f64,
        }
    }
}

impl std::fmt::Display for Criterion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(t) => write!(f, "all within {t:e}"),
            Self::Flips(p) => write!(f, "at most {p}% flipped"),
        }
    }
}

/// How an engine's logits compare with the checkpoint's.
#[derive(Debug, Default)]
struct Agreement {
    /// Images compared.
    images: usize,
    /// Images with the same predicted class.
    agree: usize,
    /// The largest difference relative to the image's largest logit.
    worst: f64,
    /// Images whose relative difference exceeds `--tolerance` (for the integer runtime: where
    /// a quantization level flipped).
    beyond: usize,
}

impl Agreement {
    /// Adds a batch: `expected` and `found` are `[n][classes]`.
    fn add(&mut self, expected: &[f64], found: &[f64], classes: usize, tolerance: f64) {
        let argmax = |r: &[f64]| {
            (0..r.len())
                .max_by(|&x, &y| r[x].total_cmp(&r[y]))
                .unwrap_or(0)
        };
        for (re, rf) in expected.chunks(classes).zip(found.chunks(classes)) {
            self.images += 1;
            if argmax(re) == argmax(rf) {
                self.agree += 1;
            }
            let scale = re.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
            let diff = re
                .iter()
                .zip(rf)
                .fold(0f64, |m, (x, y)| m.max((x - y).abs() / scale));
            self.worst = self.worst.max(diff);
            if diff > tolerance {
                self.beyond += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 100 images of 4 classes: logits `[4, 1, 0, -1]`, the found ones moved by `moved` (a
    /// relative difference) on the first `n` images.
    fn check(n: usize, moved: f64) -> Agreement {
        let expected: Vec<f64> = (0..100).flat_map(|_| [4.0, 1.0, 0.0, -1.0]).collect();
        let mut found = expected.clone();
        for image in 0..n {
            found[image * 4 + 1] += moved * 4.0;
        }
        let mut check = Agreement::default();
        check.add(&expected, &found, 4, 1e-4);
        check
    }

    #[test]
    fn the_integer_runtime_may_flip_a_few_images_and_not_many() {
        // Two images flipped by 3 %, one of them far enough to change its class.
        let mut few = check(2, 0.03);
        few.add(&[4.0, 3.9, 0.0, 0.0], &[4.0, 4.1, 0.0, 0.0], 4, 1e-4);
        assert_eq!((few.images, few.agree, few.beyond), (101, 100, 3));
        assert!(Criterion::Flips(5.0).passes(&few));
        assert!(!Criterion::Exact(1e-3).passes(&few));
        // A fault moves nearly every image, even by little.
        let broken = check(90, 0.001);
        assert!(!Criterion::Flips(5.0).passes(&broken));
        // Exactly at the limit passes; one more does not.
        assert!(Criterion::Flips(5.0).passes(&check(5, 0.03)));
        assert!(!Criterion::Flips(5.0).passes(&check(6, 0.03)));
        // The f32 runtime: every image within the tolerance.
        assert!(Criterion::Exact(1e-4).passes(&check(100, 1e-5)));
        assert!(!Criterion::Exact(1e-4).passes(&check(1, 2e-4)));
    }
}
