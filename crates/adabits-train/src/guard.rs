//! The divergence guards: a loss that blows up, a loss stuck at chance level, a parameter
//! that is no longer finite.

use adabits_models::{LayerMut, Model, OfficialLayout};
use burn::module::Module;

/// The loss past which a run counts as diverged: 10 times the larger of the bit-width's first
/// loss and `ln(classes)` (chance level).
pub(crate) fn diverged_limit(first: f64, classes: usize) -> f64 {
    10.0 * first.max((classes.max(2) as f64).ln())
}

/// How much the smoothed loss must come down over the guard's window for a run at chance to
/// count as a slow start rather than a dead model.
pub(crate) const STUCK_TREND: f64 = 0.05;

/// One step of the divergence guard for one bit-width. `ema` is the smoothed loss and the
/// length of the current stretch at chance, `start` the smoothed loss when that stretch
/// began; `floor` is `ln(classes)` less the tolerance. True when the loss has stayed above
/// `floor` for `steps` steps without coming down by more than [`STUCK_TREND`] (a loss still
/// coming down, from a high start towards chance, is a slow start: the stretch starts again).
pub(crate) fn stuck(
    ema: &mut (f64, usize),
    start: &mut f64,
    loss: f64,
    floor: f64,
    steps: usize,
) -> bool {
    ema.0 = 0.9 * ema.0 + 0.1 * loss;
    // At chance, or above it: a model that predicts one class with confidence does worse
    // than ln(classes).
    if ema.0 <= floor {
        ema.1 = 0;
        return false;
    }
    if ema.1 == 0 {
        *start = ema.0;
    }
    ema.1 += 1;
    if ema.1 < steps {
        return false;
    }
    if *start - ema.0 > STUCK_TREND {
        ema.1 = 0;
        return false;
    }
    true
}
/// The path of the first parameter of `model` holding a NaN or an infinity, if one does. One
/// value is read back when every parameter is finite.
pub fn non_finite_parameter<M: Module>(model: &M) -> Option<String> {
    use burn::module::{ModuleVisitor, Param};
    use burn::tensor::Tensor;
    /// Sums every parameter (a NaN or infinity anywhere makes the total non-finite).
    struct Total(Option<Tensor<1>>);
    impl ModuleVisitor for Total {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            crate::optim::accumulate(&mut self.0, param.val().sum());
        }
    }
    /// Finds the first parameter that is not finite, by path.
    struct Find {
        path: Vec<String>,
        found: Option<String>,
    }
    impl ModuleVisitor for Find {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if self.found.is_none() && !param.val().sum().into_scalar::<f64>().is_finite() {
                self.found = Some(self.path.join("."));
            }
        }
    }
    let mut total = Total(None);
    model.visit(&mut total);
    if total.0?.into_scalar::<f64>().is_finite() {
        return None;
    }
    let mut find = Find {
        path: Vec::new(),
        found: None,
    };
    model.visit(&mut find);
    Some(find.found.unwrap_or_else(|| "(unnamed)".into()))
}

/// Describes the classifier's latent weights: their largest magnitude and how many sit where
/// `tanh` is saturated (docs/method.md §17).
pub(crate) fn classifier_diagnosis(model: &Model) -> String {
    let mut model = model.clone();
    let mut found = None;
    model.visit_official(&mut |name, layer| {
        if let LayerMut::Linear(linear) = layer {
            let values: Vec<f32> = linear.weight.val().into_data().iter::<f32>().collect();
            let max = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let saturated = values.iter().filter(|v| v.tanh().abs() > 0.99).count();
            let share = 100.0 * saturated as f64 / values.len().max(1) as f64;
            found = Some((name.to_string(), max, share));
        }
    });
    match found {
        Some((name, max, share)) if share >= 10.0 => format!(
            "Likely cause: the classifier `{name}` has saturated: its largest weight is {max:.1} and {share:.0}% of its weights have |tanh(w)| > 0.99, so its features no longer pass gradient."
        ),
        Some((name, max, share)) => format!(
            "The classifier `{name}` is not saturated (largest weight {max:.2}, {share:.0}% with |tanh(w)| > 0.99); look at the learning rate and the weight scheme."
        ),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The step at which the guard fires on `losses`, if it does.
    fn fires(losses: impl IntoIterator<Item = f64>, steps: usize) -> Option<usize> {
        let floor = 10f64.ln() - 0.05;
        let (mut ema, mut start) = ((f64::NAN, 0), 0.0);
        for (i, loss) in losses.into_iter().enumerate() {
            if i == 0 {
                ema.0 = loss;
            }
            if stuck(&mut ema, &mut start, loss, floor, steps) {
                return Some(i);
            }
        }
        None
    }

    #[test]
    fn a_loss_flat_at_chance_stops_the_run_after_the_window() {
        // ±0.02 of noise around ln 10.
        let flat = (0..300).map(|i| 10f64.ln() + 0.02 * ((i * 7 % 5) as f64 - 2.0) / 2.0);
        assert_eq!(fires(flat, 100), Some(99));
        // Far above chance counts too (a confident wrong class).
        assert_eq!(fires(std::iter::repeat_n(4.0, 300), 100), Some(99));
    }

    #[test]
    fn a_collapse_from_a_high_start_is_caught_after_it_settles() {
        // 10 → ln 10 over 30 steps, then flat: the first window is a descent, the second not.
        let losses = (0..300).map(|i| {
            if i < 30 {
                10.0 - (10.0 - 10f64.ln()) * i as f64 / 30.0
            } else {
                10f64.ln()
            }
        });
        let step = fires(losses, 50).expect("fires");
        // The smoothed loss lags the descent: at most two windows after it ends.
        assert!((60..160).contains(&step), "{step}");
    }

    #[test]
    fn a_slow_start_is_not_stopped() {
        // From 2.6 down to 2.2 over 400 steps: above the floor for about 300 of them, but
        // coming down by about 0.1 every 100 steps.
        let slow = (0..400).map(|i| 2.6 - 0.4 * i as f64 / 400.0);
        assert_eq!(fires(slow, 100), None);
        // A learning run, below chance after 20 steps.
        let healthy = (0..400).map(|i| if i < 20 { 2.5 } else { 1.5 });
        assert_eq!(fires(healthy, 100), None);
    }
}
