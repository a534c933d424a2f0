//! The key rows of a grid (individual, joint S-CL) with further seeds (`reproduce --seeds N`),
//! each seed from its own full-precision stage, and what they cost.

use std::path::Path;

use serde_json::Value;

use crate::findings::{Row, Seeds};
use crate::grid::{Entry, Job, Scale, cell, entries, train_stem_into};

/// The cost in passes of one further seed of the key rows over `lists`: its full-precision
/// stage, then each key run once (a run two lists share counts once).
pub(crate) fn seed_cost(lists: &[&[u8]], scale: &Scale) -> f64 {
    let mut seen: Vec<Vec<String>> = Vec::new();
    let mut cost = scale.stem_cost();
    for list in lists {
        for e in entries(list, scale) {
            if (e.name.starts_with("individual-") || e.name == "joint-scl")
                && !seen.contains(&e.flags)
            {
                cost += e.cost;
                seen.push(e.flags);
            }
        }
    }
    cost
}

/// The key rows (individual, joint S-CL) again with each further seed of the job, each from
/// that seed's own full-precision stage (`dir/seed-S/`), and their spread over the seeds with
/// `rows` (seed 0); `None` with one seed.
pub(crate) fn seed_runs(
    job: &mut Job<'_>,
    list: &[u8],
    dir: &Path,
    rows: &[Row],
) -> Result<Option<Seeds>, String> {
    if job.seeds <= 1 {
        return Ok(None);
    }
    let key = |e: &Entry| e.name.starts_with("individual-") || e.name == "joint-scl";
    let grid: Vec<Entry> = entries(list, job.scale).into_iter().filter(key).collect();
    let seed0 = |prefix: &str| {
        rows.iter()
            .find(|r| r.label.starts_with(prefix))
            .map(|r| r.top1.clone())
            .unwrap_or_else(|| vec![None; list.len()])
    };
    // Per seed, the individual and the joint S-CL top-1 at each bit-width.
    let mut individual = vec![seed0("individual")];
    let mut joint = vec![seed0("joint, S-CL")];
    for seed in 1..job.seeds {
        let stem = match job.seed_stems.iter().find(|(s, _)| *s == seed) {
            Some((_, stem)) => stem.clone(),
            None => {
                let stem = job
                    .stem
                    .with_file_name(format!("full-precision-stage-seed-{seed}"));
                train_stem_into(job, list, seed, &stem)?;
                job.seed_stems.push((seed, stem.clone()));
                stem
            }
        };
        let extra = ["--seed".to_string(), seed.to_string()];
        let mut found: Vec<(String, Value)> = Vec::new();
        for (k, entry) in grid.iter().enumerate() {
            let out = dir.join(format!("seed-{seed}")).join(&entry.name);
            let place = format!("seed {seed}, {}/{}", k + 1, grid.len());
            if let Some(v) = cell(job, &place, entry, &extra, &stem, &out)? {
                found.push((entry.name.clone(), v));
            }
        }
        let top1 = |name: &str, b: u8| {
            found
                .iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, v)| v["bits"][b.to_string()]["top1"].as_f64())
        };
        individual.push(
            list.iter()
                .map(|&b| top1(&format!("individual-{b}"), b))
                .collect(),
        );
        joint.push(list.iter().map(|&b| top1("joint-scl", b)).collect());
    }
    Ok(Some(Seeds { individual, joint }))
}
