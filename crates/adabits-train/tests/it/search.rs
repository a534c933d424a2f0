//! The per-layer precision search.

use std::sync::Arc;

use adabits_models::{Accounting, Architecture, Model, ModelConfig, cost_plan, with_plan};
use adabits_quant::{BitWidths, Precision};
use adabits_train::data::{Dataset, Loader, SyntheticConfig, synthetic};
use adabits_train::{
    CostKind, SearchData, SearchPoint, SearchResult, calibrate, evaluate, search_per_layer,
};

/// An untrained ResNet-8 at {8, 4} (what the search does does not need a trained model) and
/// small synthetic sets to calibrate and measure on.
fn setup() -> (Model, BitWidths, Loader, Loader, usize) {
    let entries: BitWidths = "8,4".parse().unwrap();
    let config =
        ModelConfig::new(Architecture::CifarResNet(8), entries.clone()).with_width_mult(0.25);
    let ad = crate::device().autodiff();
    let model = config.init(&ad);
    let (train, val) = synthetic(&SyntheticConfig {
        train: 32,
        val: 32,
        side: 8,
        ..SyntheticConfig::default()
    });
    let side = val.image_size();
    let train: Arc<dyn Dataset> = Arc::new(train);
    let val: Arc<dyn Dataset> = Arc::new(val);
    (
        model,
        entries,
        Loader::new(train, 16, true, 7),
        Loader::new(val, 32, false, 7),
        side,
    )
}

fn search(kind: CostKind) -> (Model, Loader, Loader, SearchResult) {
    let (model, entries, calib, eval, side) = setup();
    let shapes = model.layer_shapes([side, side]);
    let data = SearchData {
        calibration: &calib,
        calibration_batches: 1,
        eval: &eval,
    };
    let mut reports = Vec::new();
    let result = search_per_layer(
        &model,
        &entries,
        &shapes,
        data,
        kind,
        &crate::device(),
        &mut |p| reports.push(p),
    )
    .unwrap();
    let last = reports.last().unwrap();
    assert_eq!(last.step, last.steps);
    // The uniform entries at the ends are the path's own: measured once.
    assert_eq!(last.measured, result.measured);
    (model, calib, eval, result)
}

/// `point` measured as `adabits eval --plan --calibrate` measures a plan.
fn measured_as_eval_does(
    model: &Model,
    result: &SearchResult,
    point: &SearchPoint,
    calib: &Loader,
    eval: &Loader,
) -> adabits_train::Scores {
    let planned = with_plan(model, &result.resolved(point)).unwrap();
    let any = adabits_models::UNDER_PLAN;
    let ad = crate::device().autodiff();
    let calibrated = calibrate(&planned, any, calib, 1, &ad).unwrap();
    evaluate(&calibrated, &[any], eval, &crate::device())
        .unwrap()
        .into_values()
        .next()
        .unwrap()
}

#[test]
fn the_descent_lowers_one_layer_a_step_at_the_least_loss_per_bitop_and_measures_as_eval_does() {
    let (model, calib, eval, result) = search(CostKind::BitOps);
    let layers = result.layers.len();
    // ResNet-8: the first convolution, 2 + 2 + 2 block convolutions, 2 shortcuts, the
    // classifier.
    assert_eq!(layers, 10, "{:?}", result.layers);
    let path = &result.path;
    // It starts at every layer at 8 bits and ends at every layer at 4: the uniform plans,
    // the same figures.
    assert_eq!(path.len(), layers + 1);
    assert!(path[0].entries.iter().all(|&e| e == 0));
    assert_eq!(path[0], result.uniform[0].1);
    assert!(path[layers].entries.iter().all(|&e| e == 1));
    assert_eq!(path[layers], result.uniform[1].1);
    // Each step lowers exactly one layer by one entry, and costs do not rise; only the first
    // convolution (8-bit pixels and weights at any entry) saves nothing.
    for pair in path.windows(2) {
        let moved: Vec<usize> = (0..layers)
            .filter(|&i| pair[0].entries[i] != pair[1].entries[i])
            .collect();
        assert_eq!(moved.len(), 1, "{pair:?}");
        assert_eq!(pair[1].entries[moved[0]], pair[0].entries[moved[0]] + 1);
        if moved[0] == 0 {
            assert_eq!(pair[1].gbitops, pair[0].gbitops);
        } else {
            assert!(pair[1].gbitops < pair[0].gbitops, "{pair:?}");
        }
    }
    // A plan of the path measured as `eval --plan --calibrate` does gives the same figures.
    let mid = &path[path.len() / 2];
    assert_eq!(
        measured_as_eval_does(&model, &result, mid, &calib, &eval),
        mid.scores
    );
    // The first move is the candidate with the least loss added per BitOP saved (a move
    // saving nothing first if it lowers the loss, else last).
    let key = |i: usize| {
        let mut entries = path[0].entries.clone();
        entries[i] = 1;
        let point = SearchPoint {
            entries,
            ..path[0].clone()
        };
        let scores = measured_as_eval_does(&model, &result, &point, &calib, &eval);
        let saved = path[0].gbitops - gbitops(&model, &result, &point.entries);
        let worse = scores.loss - path[0].scores.loss;
        match (saved > 0.0, worse < 0.0) {
            (true, _) => (1, worse / saved),
            (false, true) => (0, worse),
            (false, false) => (2, worse),
        }
    };
    let first = (0..layers)
        .find(|&i| path[1].entries[i] == 1)
        .expect("a moved layer");
    let chosen = key(first);
    for i in (0..layers).filter(|&i| i != first) {
        let other = key(i);
        assert!(
            chosen <= other,
            "layer {i}'s move ranks {other:?}, before the chosen layer {first}'s {chosen:?}"
        );
    }
}

/// The GBitOPs of `model` (on the test's 8x8 images) with each layer at `entries`.
fn gbitops(model: &Model, result: &SearchResult, entries: &[usize]) -> f64 {
    let precisions: Vec<Precision> = entries
        .iter()
        .map(|&e| result.entries.as_slice()[e])
        .collect();
    cost_plan(
        &model.layer_shapes([8, 8]),
        &precisions,
        Accounting::Official,
    )
    .gbitops
}

#[test]
fn the_best_plan_within_a_budget_is_the_most_accurate_that_fits_and_reads_back_as_a_plan_file() {
    let (model, _, _, result) = search(CostKind::Bytes);
    let sizes: Vec<u64> = result.path.iter().map(|p| p.bytes).collect();
    assert!(sizes.windows(2).all(|w| w[1] <= w[0]), "{sizes:?}");
    let budget = (sizes[0] + sizes[sizes.len() - 1]) as f64 / 2.0;
    let best = result.best_within(CostKind::Bytes, budget).unwrap();
    assert!(best.bytes as f64 <= budget);
    let fitting = result
        .path
        .iter()
        .chain(result.uniform.iter().map(|(_, p)| p));
    for p in fitting.filter(|p| p.bytes as f64 <= budget) {
        assert!(p.scores.top1 <= best.scores.top1, "{p:?} beats {best:?}");
    }
    assert!(
        result
            .best_within(CostKind::Bytes, sizes[sizes.len() - 1] as f64 - 1.0)
            .is_none()
    );
    // The candidates for a second measurement: the best first, each plan once, all fitting.
    let candidates = result.candidates_within(CostKind::Bytes, budget, 3);
    assert_eq!(candidates.len(), 3);
    assert_eq!(candidates[0], best);
    for pair in candidates.windows(2) {
        assert_ne!(pair[0].entries, pair[1].entries);
        assert!(pair[0].scores.top1 >= pair[1].scores.top1);
    }
    assert!(candidates.iter().all(|p| p.bytes as f64 <= budget));
    // The plan file of the best plan resolves, against the model, to the same entries.
    let plan = result.plan(best);
    let json = serde_json::to_string(&plan).unwrap();
    let back: adabits_models::Plan = serde_json::from_str(&json).unwrap();
    let resolved = back
        .resolve(&adabits_models::quantized_layers(&model), &result.entries)
        .unwrap();
    assert_eq!(resolved, result.resolved(best));
    assert!(plan.default.is_some() && plan.layers.len() < result.layers.len());
}
