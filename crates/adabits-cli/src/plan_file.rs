//! Reading a precision plan file for a model (`--plan FILE` of `eval`, `profile`, `calibrate`
//! and `verify`), and a plan's layers as JSON rows.

use std::path::Path;

use adabits_models::{CostReport, OfficialLayout, OpKind, Plan, ResolvedPlan, quantized_layers};
use adabits_quant::BitWidths;

/// The plan in `path`, resolved against `model`'s quantized layers and its `entries`; every
/// error is one line naming the file.
pub(crate) fn read_plan<M: OfficialLayout>(
    path: &Path,
    model: &M,
    entries: &BitWidths,
) -> anyhow::Result<ResolvedPlan> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("{}: cannot read the plan: {e}", path.display()))?;
    let plan: Plan = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: not a precision plan: {e}", path.display()))?;
    plan.resolve(&quantized_layers(model), entries)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Each quantized layer of `plan` with its entry, precision, the bits it runs, its MACs and
/// BitOPs (from `cost`, the plan's cost), as JSON rows.
pub(crate) fn layer_rows(plan: &ResolvedPlan, cost: &CostReport) -> Vec<serde_json::Value> {
    let quantized = cost.layers.iter().filter(|l| l.kind != OpKind::AvgPool);
    plan.layers
        .iter()
        .zip(quantized)
        .map(|((name, at), c)| {
            serde_json::json!({"layer": name, "entry": at.entry, "precision": at.precision,
                               "bitw": c.bitw, "bita": c.bita, "macs": c.macs,
                               "bitops": c.bitops})
        })
        .collect()
}
