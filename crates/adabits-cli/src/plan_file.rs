//! Reading a precision plan file for a model (`--plan FILE` of `eval` and `profile`).

use std::path::Path;

use adabits_models::{OfficialLayout, Plan, ResolvedPlan, quantized_layers};
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
