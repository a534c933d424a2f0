//! `adabits select --per-layer`: the precision plan of a run's model with the best measured
//! accuracy within a BitOPs or byte budget, from the greedy per-layer search.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use adabits_models::Accounting;
use adabits_train::data::{Dataset, Loader, hold_out};
use adabits_train::{
    BitResult, CostKind, Scores, SearchData, SearchPoint, SearchProgress, SearchResult,
    measure_plan, search_per_layer,
};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use super::Select;
use crate::output::print_json;
use crate::run_args::RunArgs;

/// Mixed into the run's seed for the calibration batches of the second measurement.
const CONFIRMATION_SEED: u64 = 0x636f_6e66_6972_6d00;

/// `adabits select --per-layer`.
pub(super) fn run(args: &Select) -> anyhow::Result<ExitCode> {
    let (kind, max) = match (args.max_bitops, args.max_bytes) {
        (Some(g), None) => (CostKind::BitOps, g),
        (None, Some(b)) => (CostKind::Bytes, b as f64),
        (Some(_), Some(_)) => anyhow::bail!(
            "--per-layer searches within one budget: give --max-bitops or --max-bytes, not both"
        ),
        (None, None) => {
            anyhow::bail!("--per-layer needs a budget\nhint: give --max-bitops or --max-bytes")
        }
    };
    anyhow::ensure!(
        args.min_accuracy.is_none(),
        "--min-accuracy selects among an artifact's bit-widths, not with --per-layer (the search returns the most accurate plan within the budget)"
    );
    let Some(checkpoint) = args.checkpoint.clone() else {
        anyhow::bail!(
            "--per-layer searches a run, not an artifact: each plan's BatchNorm is re-estimated, and the artifact keeps it folded\nhint: give --checkpoint RUN, the run the artifact was exported from"
        );
    };
    let run_args = RunArgs {
        checkpoint,
        which: args.which,
        data_dir: args.data_dir.clone(),
        device: args.device,
    };
    let device = run_args.device.device();
    let run = run_args.open(&device)?;
    let entries = run.config.model.bits.clone();
    let (train_set, val_set) = run_args.data_of(&run)?.open()?;
    let side = val_set.image_size();
    let train_set: Arc<dyn Dataset> = Arc::from(train_set);
    let images = args.images.unwrap_or((train_set.len() / 2).clamp(1, 2048));
    anyhow::ensure!(
        images < train_set.len(),
        "--images {images}: the run's training set has {} images; give fewer",
        train_set.len()
    );
    let calibration = Loader::new(
        train_set.clone(),
        run.config.batch_size,
        true,
        run.config.seed,
    );
    let (rest, subset) = hold_out(train_set.clone(), images);
    let subset: Arc<dyn Dataset> = Arc::new(subset);
    let subset = Loader::new(subset, 256, false, run.config.seed);
    let shapes = run.model.layer_shapes([side, side]);
    let data = SearchData {
        calibration: &calibration,
        calibration_batches: args.calibrate,
        eval: &subset,
    };
    let started = Instant::now();
    let mut bar = Bar::new();
    let result = search_per_layer(
        &run.model,
        &entries,
        &shapes,
        data,
        kind,
        &device,
        &mut |p| bar.report(p, started),
    )?;
    bar.finish();
    let seconds = started.elapsed().as_secs_f64();

    // The best plans within the budget, measured again on other training images with other
    // calibration batches; the best of that second measurement is the answer (the best of
    // many noisy measurements is, on average, luckier than it is good).
    let candidates = result.candidates_within(kind, max, args.confirm);
    let again = images.min(rest.len().saturating_sub(1));
    let confirmations: Vec<Scores> = if candidates.len() > 1 && again > 0 {
        let other: Arc<dyn Dataset> = Arc::new(hold_out(Arc::new(rest), again).1);
        let other = Loader::new(other, 256, false, run.config.seed);
        let recalibration = Loader::new(
            train_set.clone(),
            run.config.batch_size,
            true,
            run.config.seed ^ CONFIRMATION_SEED,
        );
        let data = SearchData {
            calibration: &recalibration,
            calibration_batches: args.calibrate,
            eval: &other,
        };
        candidates
            .iter()
            .map(|p| measure_plan(&run.model, &result.resolved(p), data, &device))
            .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    let chosen = (0..candidates.len()).min_by(|&a, &b| match confirmations.as_slice() {
        [] => a.cmp(&b),
        c => c[b]
            .top1
            .total_cmp(&c[a].top1)
            .then(c[a].loss.total_cmp(&c[b].loss))
            .then(a.cmp(&b)),
    });
    let best = chosen.map(|i| candidates[i]);

    // The chosen plan and the uniform entries on the validation set, which the search did
    // not see, BatchNorm re-estimated the same way.
    let val = Loader::new(Arc::from(val_set), 256, false, run.config.seed);
    let on_val = |point: &SearchPoint| -> anyhow::Result<BitResult> {
        let data = SearchData {
            calibration: &calibration,
            calibration_batches: args.calibrate,
            eval: &val,
        };
        let s = measure_plan(&run.model, &result.resolved(point), data, &device)?;
        Ok(BitResult {
            top1: s.top1,
            top5: s.top5,
            loss: s.loss,
            gbitops: point.gbitops,
            bytes: point.bytes,
        })
    };
    let best_val = best.map(&on_val).transpose()?;
    let uniform_val = result
        .uniform
        .iter()
        .map(|(b, p)| Ok((*b, on_val(p)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let (Some(path), Some(best)) = (&args.out, best) {
        write_plan(path, &result, best)?;
    }

    let budget = match kind {
        CostKind::BitOps => format!("{max} GBitOPs"),
        CostKind::Bytes => format!("{max} bytes"),
    };
    if args.json {
        let point = |p: &SearchPoint| {
            json!({"gbitops": p.gbitops, "bytes": p.bytes, "top1": p.scores.top1,
                   "top5": p.scores.top5, "loss": p.scores.loss,
                   "plan": result.plan(p)})
        };
        let out = json!({
            "run": run_args.checkpoint.display().to_string(),
            "checkpoint": run.checkpoint.display().to_string(),
            "entries": entries,
            "budget": {"kind": match kind { CostKind::BitOps => "gbitops", CostKind::Bytes => "bytes" }, "max": max},
            "search": {"images": images, "calibration_batches": args.calibrate,
                       "plans_measured": result.measured, "seconds": seconds},
            "path": result.path.iter().map(point).collect::<Vec<_>>(),
            "uniform": result.uniform.iter().map(|(b, p)| {
                let mut v = point(p);
                v["bits"] = json!(b);
                v
            }).collect::<Vec<_>>(),
            "candidates": candidates.iter().enumerate().map(|(i, p)| {
                let mut v = point(p);
                v["confirmation"] = json!(confirmations.get(i));
                v
            }).collect::<Vec<_>>(),
            "confirmation_images": (!confirmations.is_empty()).then_some(again),
            "selected": best.map(|p| {
                let mut v = point(p);
                v["confirmation"] = json!(chosen.and_then(|i| confirmations.get(i)));
                v["layers"] = layer_rows(&result, p, &shapes);
                v["validation"] = json!(best_val);
                v
            }),
            "uniform_validation": uniform_val.iter().map(|(b, r)| {
                let mut v = json!(r);
                v["bits"] = json!(b);
                v
            }).collect::<Vec<_>>(),
            "out": args.out.as_ref().filter(|_| best.is_some()).map(|p| p.display().to_string()),
        });
        print_json(&out)?;
    } else {
        println!("{}", crate::run_args::title(&run));
        println!(
            "searched per layer within {budget}: {} plans measured on {} training images, BatchNorm re-estimated on {} batches each, in {seconds:.0} s",
            result.measured, images, args.calibrate
        );
        print_frontier(&result, kind, best);
        if !confirmations.is_empty() {
            println!();
            println!(
                "the {} best within the budget, measured again on {again} other training images with other calibration batches:",
                candidates.len()
            );
            println!(
                "  {:>11} {:>8} {:>17} {:>17}",
                "GBitOPs", "bytes", "top-1 % (search)", "top-1 % (again)"
            );
            for (i, (p, c)) in candidates.iter().zip(&confirmations).enumerate() {
                let mark = if chosen == Some(i) {
                    "  <- selected"
                } else {
                    ""
                };
                println!(
                    "  {:>11.4} {:>8} {:>17.2} {:>17.2}{mark}",
                    p.gbitops, p.bytes, p.scores.top1, c.top1
                );
            }
        }
        match (best, &best_val) {
            (Some(p), Some(v)) => {
                println!();
                print_layers(&result, p, &shapes);
                println!();
                println!(
                    "on the validation set (not seen by the search), BatchNorm re-estimated the same way:"
                );
                println!(
                    "  {:<10} {:>7} {:>8} {:>11} {:>8}",
                    "", "top-1 %", "loss", "GBitOPs", "bytes"
                );
                let row = |label: String, r: &BitResult| {
                    println!(
                        "  {label:<10} {:>7.2} {:>8.4} {:>11.4} {:>8}",
                        r.top1, r.loss, r.gbitops, r.bytes
                    );
                };
                row("plan".into(), v);
                for (b, r) in &uniform_val {
                    row(format!("uniform {b}"), r);
                }
                if let Some(path) = &args.out {
                    println!("wrote the plan to {}", path.display());
                }
            }
            _ => {
                let lowest = result.path.last().map(|p| p.cost(kind)).unwrap_or(f64::NAN);
                println!(
                    "no plan fits within {budget}: the cheapest the search reached costs {lowest}"
                );
            }
        }
    }
    Ok(if best.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Writes the plan of `point` to `path` (atomically: a temporary file, then a rename).
fn write_plan(path: &Path, result: &SearchResult, point: &SearchPoint) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(&result.plan(point))? + "\n";
    adabits_models::write_atomically(path, text.as_bytes())
        .map_err(|e| anyhow::anyhow!("{}: cannot write the plan: {e}", path.display()))
}

/// The search's path and the uniform entries, costs falling, the selected plan marked.
fn print_frontier(result: &SearchResult, kind: CostKind, best: Option<&SearchPoint>) {
    println!();
    println!(
        "{:<14} {:>11} {:>8} {:>7} {:>8}   (accuracy and loss on the search's images)",
        "plan", "GBitOPs", "bytes", "top-1 %", "loss"
    );
    let mut rows: Vec<(String, &SearchPoint)> = result
        .path
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("step {i}"), p))
        .chain(
            result
                .uniform
                .iter()
                .map(|(b, p)| (format!("uniform {b}"), p)),
        )
        .collect();
    rows.sort_by(|a, b| b.1.cost(kind).total_cmp(&a.1.cost(kind)));
    for (label, p) in rows {
        let mark = if best.is_some_and(|b| std::ptr::eq(b, p)) {
            "  <- selected"
        } else {
            ""
        };
        println!(
            "{label:<14} {:>11.4} {:>8} {:>7.2} {:>8.4}{mark}",
            p.gbitops, p.bytes, p.scores.top1, p.scores.loss
        );
    }
}

/// Each quantized layer of the plan of `point` with the bits it runs and its BitOPs, as JSON
/// rows.
fn layer_rows(
    result: &SearchResult,
    point: &SearchPoint,
    shapes: &[adabits_models::LayerShape],
) -> Value {
    let plan = result.resolved(point);
    let cost = plan.cost(shapes, Accounting::Official);
    Value::Array(crate::plan_file::layer_rows(&plan, &cost))
}

/// The selected plan, layer by layer.
fn print_layers(result: &SearchResult, point: &SearchPoint, shapes: &[adabits_models::LayerShape]) {
    println!(
        "{:<28} {:>9} {:>5} {:>5} {:>10} {:>12}",
        "layer", "precision", "W", "A", "MACs", "BitOPs"
    );
    if let Value::Array(rows) = layer_rows(result, point, shapes) {
        for r in rows {
            let text = |k: &str| r[k].to_string().trim_matches('"').to_string();
            println!(
                "{:<28} {:>9} {:>5} {:>5} {:>10} {:>12}",
                text("layer"),
                text("precision"),
                text("bitw"),
                text("bita"),
                text("macs"),
                text("bitops")
            );
        }
    }
}

/// The search's progress: a bar with an ETA on a terminal, a line per tenth elsewhere.
struct Bar {
    bar: Option<ProgressBar>,
    printed: usize,
}

impl Bar {
    fn new() -> Self {
        Self {
            bar: None,
            printed: 0,
        }
    }

    fn report(&mut self, p: SearchProgress, started: Instant) {
        if std::io::stderr().is_terminal() {
            let bar = self.bar.get_or_insert_with(|| {
                let bar = ProgressBar::new(p.steps as u64);
                bar.set_style(
                    ProgressStyle::with_template(
                        "searching {bar:30} step {pos}/{len} ({msg}) {elapsed_precise}, ETA {eta}",
                    )
                    .expect("a valid template"),
                );
                bar
            });
            bar.set_position(p.step as u64);
            bar.set_message(format!("{} plans measured", p.measured));
        } else if p.steps > 0 && p.step * 10 / p.steps >= self.printed {
            // At most every step's early finish shows an estimate from the pace so far (the
            // later steps have fewer candidates, so it errs long).
            let elapsed = started.elapsed().as_secs_f64();
            let eta = if p.step > 0 {
                format!(
                    ", at most {:.0} s left",
                    elapsed / p.step as f64 * (p.steps - p.step) as f64
                )
            } else {
                String::new()
            };
            eprintln!(
                "searching: step {}/{}, {} plans measured, {elapsed:.0} s{eta}",
                p.step, p.steps, p.measured
            );
            self.printed = p.step * 10 / p.steps + 1;
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
