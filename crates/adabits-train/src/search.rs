//! The per-layer precision search: from one trained model, the plan (an entry per quantized
//! layer) with the best measured accuracy within a cost budget
//! (docs/decisions/0002-precisions-and-plans.md, "The search").
//!
//! A greedy descent: every layer starts at the model's highest entry; at each step every layer
//! that can go one entry lower is tried, each candidate plan measured with its BatchNorm
//! re-estimated under it, and the move that costs the least loss per unit of cost saved is
//! taken, until every layer is at its lowest entry. The plans on the way are the search's
//! accuracy–cost path; the uniform entries are measured the same way beside it, and the answer
//! for a budget is the most accurate of either that fits.

use std::collections::{BTreeMap, HashMap};

use adabits_models::{
    Accounting, LayerShape, Model, Plan, ResolvedPlan, UNDER_PLAN, cost_plan, quantized_layers,
    with_plan,
};
use adabits_quant::{At, BitWidths, Precision};
use burn::tensor::Device;

use crate::data::Loader;
use crate::error::TrainError;
use crate::metrics::Scores;
use crate::step::{calibrate, evaluate};

/// The cost a budget bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CostKind {
    /// BitOPs per image (MACs · weight bits · activation bits, per layer).
    BitOps,
    /// Model bytes (the official accounting).
    Bytes,
}

/// What a candidate plan is measured on.
#[derive(Clone, Copy, Debug)]
pub struct SearchData<'a> {
    /// The batches BatchNorm is re-estimated on (training images, augmented as in training).
    pub calibration: &'a Loader,
    /// How many of them.
    pub calibration_batches: usize,
    /// The images the accuracy and loss are measured on.
    pub eval: &'a Loader,
}

/// One measured plan.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchPoint {
    /// Each quantized layer's entry (a position in the model's list), in module order.
    pub entries: Vec<usize>,
    /// BitOPs per image, in units of 10^9.
    pub gbitops: f64,
    /// Model bytes.
    pub bytes: u64,
    /// The measured scores, BatchNorm re-estimated under the plan.
    pub scores: Scores,
}

impl SearchPoint {
    /// The cost of kind `kind`.
    pub fn cost(&self, kind: CostKind) -> f64 {
        match kind {
            CostKind::BitOps => self.gbitops,
            CostKind::Bytes => self.bytes as f64,
        }
    }
}

/// What the search found.
#[derive(Clone, Debug)]
pub struct SearchResult {
    /// The quantized layers' official names, in module order.
    pub layers: Vec<String>,
    /// The model's entries.
    pub entries: BitWidths,
    /// The plans of the descent, from every layer at the highest entry to every layer at its
    /// lowest, costs falling.
    pub path: Vec<SearchPoint>,
    /// Each entry as a uniform plan, measured the same way, in the model's order.
    pub uniform: Vec<(Precision, SearchPoint)>,
    /// How many distinct plans were measured.
    pub measured: usize,
}

impl SearchResult {
    /// The plan of the path, or the uniform entry, with the best measured top-1 within `max`
    /// of cost `kind` (the lower loss on a tie, then the lower cost), if any fits.
    pub fn best_within(&self, kind: CostKind, max: f64) -> Option<&SearchPoint> {
        self.path
            .iter()
            .chain(self.uniform.iter().map(|(_, p)| p))
            .filter(|p| p.cost(kind) <= max)
            .min_by(|a, b| {
                b.scores
                    .top1
                    .total_cmp(&a.scores.top1)
                    .then(a.scores.loss.total_cmp(&b.scores.loss))
                    .then(a.cost(kind).total_cmp(&b.cost(kind)))
            })
    }

    /// Up to `count` plans of the path and the uniform entries within `max` of cost `kind`,
    /// the best measured first (as [`best_within`](Self::best_within) orders them), each
    /// once: the candidates a second measurement chooses among.
    pub fn candidates_within(&self, kind: CostKind, max: f64, count: usize) -> Vec<&SearchPoint> {
        let mut fitting: Vec<&SearchPoint> = Vec::new();
        for p in self
            .path
            .iter()
            .chain(self.uniform.iter().map(|(_, p)| p))
            .filter(|p| p.cost(kind) <= max)
        {
            if !fitting.iter().any(|q| q.entries == p.entries) {
                fitting.push(p);
            }
        }
        fitting.sort_by(|a, b| {
            b.scores
                .top1
                .total_cmp(&a.scores.top1)
                .then(a.scores.loss.total_cmp(&b.scores.loss))
                .then(a.cost(kind).total_cmp(&b.cost(kind)))
        });
        fitting.truncate(count);
        fitting
    }

    /// `point` as a resolved plan of the model.
    pub fn resolved(&self, point: &SearchPoint) -> ResolvedPlan {
        ResolvedPlan {
            layers: self
                .layers
                .iter()
                .zip(&point.entries)
                .map(|(name, &e)| (name.clone(), at(&self.entries, e)))
                .collect(),
        }
    }

    /// `point` as a plan file: the most common precision as the default, every other layer
    /// by name.
    pub fn plan(&self, point: &SearchPoint) -> Plan {
        let resolved = self.resolved(point);
        let mut counts: BTreeMap<Precision, usize> = BTreeMap::new();
        for (_, at) in &resolved.layers {
            *counts.entry(at.precision).or_default() += 1;
        }
        // The most common, the higher precision on a tie.
        let default = counts
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(b.0)))
            .map(|(&p, _)| p);
        Plan {
            default,
            layers: resolved
                .layers
                .into_iter()
                .filter(|(_, at)| Some(at.precision) != default)
                .map(|(name, at)| (name, at.precision))
                .collect(),
        }
    }
}

/// What the search reports as it goes.
#[derive(Clone, Copy, Debug)]
pub struct SearchProgress {
    /// Moves taken so far.
    pub step: usize,
    /// Moves in the whole descent.
    pub steps: usize,
    /// Plans measured so far.
    pub measured: usize,
}

/// An entry of `entries` as what a layer runs.
fn at(entries: &BitWidths, entry: usize) -> At {
    let bits = entries.iter().nth(entry).expect("an entry of the list");
    At::new(entry, bits)
}

/// Searches `model` (on `device`'s autodiff device, trained at `entries`, with `shapes` its
/// layers at the data's image size) for per-layer plans, measuring each on `data`; `report`
/// is called after each move.
///
/// The descent takes one move per layer and entry below the highest, so it ends with every
/// layer at the lowest entry.
///
/// # Errors
///
/// [`TrainError::Data`] when a batch cannot be read.
pub fn search_per_layer(
    model: &Model,
    entries: &BitWidths,
    shapes: &[LayerShape],
    data: SearchData<'_>,
    kind: CostKind,
    device: &Device,
    report: &mut dyn FnMut(SearchProgress),
) -> Result<SearchResult, TrainError> {
    let layers = quantized_layers(model);
    // The entries from the highest bit-width down (a stable order on equal bit-widths).
    let mut descending: Vec<usize> = (0..entries.len()).collect();
    descending.sort_by_key(|&e| std::cmp::Reverse(entries.iter().nth(e)));
    let result = SearchResult {
        layers,
        entries: entries.clone(),
        path: Vec::new(),
        uniform: Vec::new(),
        measured: 0,
    };
    let mut search = Search {
        model,
        shapes,
        data,
        device,
        result,
        seen: HashMap::new(),
    };
    let mut rank = vec![0usize; search.result.layers.len()];
    let point = |rank: &[usize]| -> Vec<usize> { rank.iter().map(|&r| descending[r]).collect() };
    let cost = |search: &Search<'_>, rank: &[usize]| search.cost(&point(rank), kind);
    let steps = rank.len() * (descending.len() - 1);
    let mut current = search.measure(&point(&rank))?;
    search.result.path.push(current.clone());
    for step in 0..steps {
        report(SearchProgress {
            step,
            steps,
            measured: search.result.measured,
        });
        let here = current.cost(kind);
        let mut best: Option<((u8, f64), usize, SearchPoint)> = None;
        for i in 0..rank.len() {
            if rank[i] + 1 >= descending.len() {
                continue;
            }
            let mut lower = rank.clone();
            lower[i] += 1;
            let saved = here - cost(&search, &lower);
            let candidate = search.measure(&point(&lower))?;
            let worse = candidate.scores.loss - current.scores.loss;
            // Moves that save cost rank by the loss they add per cost saved. A move that saves
            // nothing (a layer a policy minimum holds, whose entry still selects its clipping
            // level and BatchNorm) goes first if it lowers the loss, else last.
            let key = match (saved > 0.0, worse < 0.0) {
                (true, _) => (1, worse / saved),
                (false, true) => (0, worse),
                (false, false) => (2, worse),
            };
            if best.as_ref().is_none_or(|(b, _, _)| key < *b) {
                best = Some((key, i, candidate));
            }
        }
        let (_, i, candidate) = best.expect("a layer above its lowest entry while steps remain");
        rank[i] += 1;
        current = candidate;
        search.result.path.push(current.clone());
    }
    report(SearchProgress {
        step: steps,
        steps,
        measured: search.result.measured,
    });
    for e in 0..entries.len() {
        let uniform = search.measure(&vec![e; rank.len()])?;
        search
            .result
            .uniform
            .push((entries.iter().nth(e).expect("an entry"), uniform));
    }
    Ok(search.result)
}

/// The search's fixed inputs and what it has found so far.
struct Search<'a> {
    model: &'a Model,
    shapes: &'a [LayerShape],
    data: SearchData<'a>,
    device: &'a Device,
    result: SearchResult,
    /// Every plan measured, by its entries.
    seen: HashMap<Vec<usize>, SearchPoint>,
}

impl Search<'_> {
    /// The cost of a plan given as an entry per layer.
    fn cost(&self, entries: &[usize], kind: CostKind) -> f64 {
        let (gbitops, bytes) = self.costs(entries);
        match kind {
            CostKind::BitOps => gbitops,
            CostKind::Bytes => bytes as f64,
        }
    }

    fn costs(&self, entries: &[usize]) -> (f64, u64) {
        let precisions: Vec<Precision> = entries
            .iter()
            .map(|&e| at(&self.result.entries, e).precision)
            .collect();
        let c = cost_plan(self.shapes, &precisions, Accounting::Official);
        (c.gbitops, c.size_bytes)
    }

    /// The plan's scores with BatchNorm re-estimated under it (each plan measured once).
    fn measure(&mut self, entries: &[usize]) -> Result<SearchPoint, TrainError> {
        if let Some(seen) = self.seen.get(entries) {
            return Ok(seen.clone());
        }
        let point = SearchPoint {
            entries: entries.to_vec(),
            gbitops: 0.0,
            bytes: 0,
            scores: Scores {
                loss: 0.0,
                top1: 0.0,
                top5: 0.0,
            },
        };
        let plan = self.result.resolved(&point);
        let scores = measure_plan(self.model, &plan, self.data, self.device)?;
        self.result.measured += 1;
        let (gbitops, bytes) = self.costs(entries);
        let point = SearchPoint {
            gbitops,
            bytes,
            scores,
            ..point
        };
        self.seen.insert(entries.to_vec(), point.clone());
        Ok(point)
    }
}

/// The scores of `model` (on `device`'s autodiff device) running
/// `plan`, its BatchNorm re-estimated under the plan on `data` (as `adabits eval --plan
/// --calibrate` measures it).
///
/// # Errors
///
/// [`TrainError::Plan`] when the plan does not cover the model's layers;
/// [`TrainError::Data`] when a batch cannot be read.
pub fn measure_plan(
    model: &Model,
    plan: &ResolvedPlan,
    data: SearchData<'_>,
    device: &Device,
) -> Result<Scores, TrainError> {
    let planned = with_plan(model, plan)?;
    let any = UNDER_PLAN;
    let calibrated = calibrate(
        &planned,
        any,
        data.calibration,
        data.calibration_batches,
        &device.clone().autodiff(),
    )?;
    Ok(evaluate(&calibrated, &[any], data.eval, device)?
        .into_values()
        .next()
        .expect("the one bit-width evaluated"))
}
