//! An exponential moving average (EMA) of a model's weights, as timm's `ModelEmaV3` keeps:
//! every float tensor of the model (weights, BatchNorm affine and running statistics, clipping
//! levels of every bit-width) averaged after each optimiser step.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;

/// The decay of the `updates`-th update (from 0) of an average whose decay is `decay`: warmed
/// up as `min(decay, (1 + n) / (10 + n))`, so that the first steps, far from the trained
/// weights, do not linger in it (timm's and TensorFlow's warm-up).
pub fn ema_decay(decay: f64, updates: u64) -> f64 {
    let n = updates as f64;
    decay.min((1.0 + n) / (10.0 + n))
}

/// A moving average that starts at `model`'s values, held in `fresh`, a newly built model of
/// the same architecture. Not a clone of `model`: a clone shares its BatchNorm running
/// statistics (Burn's `RunningState` is shared between clones and mapped in place), so that
/// the average's statistics would be the model's own.
pub fn start_ema<M: Module>(fresh: M, model: &M) -> M {
    update_ema(fresh, model, 0.0)
}

/// `average · decay + model · (1 − decay)` for every float tensor of the two models (the same
/// architecture), without gradients: the average is a model that only evaluates. The two must
/// not be clones of each other ([`start_ema`] says why).
///
/// # Panics
///
/// Panics if a tensor of `average` has no tensor of the same path and size in `model`.
pub fn update_ema<M: Module>(average: M, model: &M, decay: f64) -> M {
    let mut current = Current::default();
    model.visit(&mut current);
    average.map(&mut Blend {
        current: current.tensors,
        path: Vec::new(),
        decay,
    })
}

/// The model's float tensors, flattened, by path.
#[derive(Default)]
struct Current {
    path: Vec<String>,
    tensors: BTreeMap<String, Tensor<1>>,
}

impl ModuleVisitor for Current {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val().inner();
        let n = value.dims().iter().product::<usize>();
        self.tensors.insert(self.path.join("."), value.reshape([n]));
    }
}

struct Blend {
    current: BTreeMap<String, Tensor<1>>,
    path: Vec<String>,
    decay: f64,
}

impl ModuleMapper for Blend {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let key = self.path.join(".");
        let (id, tensor, mapper) = param.consume();
        let average = tensor.inner();
        let shape = average.dims();
        let n: usize = shape.iter().product();
        let current = self
            .current
            .remove(&key)
            .unwrap_or_else(|| panic!("the model has no tensor `{key}` to average"));
        assert_eq!(current.dims(), [n], "the size of `{key}`");
        let blended = average
            .reshape([n])
            .mul_scalar(self.decay)
            .add(current.mul_scalar(1.0 - self.decay))
            .reshape(shape);
        Param::from_mapped_value(id, Tensor::from_inner(blended), mapper)
    }
}

#[cfg(test)]
mod tests {
    use adabits_models::{Architecture, ModelConfig};
    use burn::tensor::Device;

    use super::*;

    /// Every float tensor of a model, by path, as plain values.
    fn values<M: Module>(model: &M) -> BTreeMap<String, Vec<f32>> {
        let mut current = Current::default();
        model.visit(&mut current);
        current
            .tensors
            .into_iter()
            .map(|(k, t)| (k, t.into_data().iter::<f32>().collect()))
            .collect()
    }

    /// A forward pass in training form at 4 bits: it moves the 4-bit running statistics.
    fn train_at_4_bits(model: &adabits_models::Model, device: &Device) {
        let images = Tensor::<4>::random(
            [4, 3, 16, 16],
            burn::tensor::Distribution::Uniform(0.0, 1.0),
            device,
        );
        let _ = model.forward(images, adabits_quant::BitWidth::new(4).unwrap());
    }

    #[test]
    fn the_average_blends_every_tensor_running_statistics_included() {
        let device = Device::flex().autodiff();
        let config = ModelConfig::new(Architecture::CifarResNet(20), "4,2".parse().unwrap())
            .with_width_mult(0.25);
        let a = config.init_seeded(1, &device).unwrap();
        let b = config.init_seeded(2, &device).unwrap();
        // Running statistics that differ from the initial ones, so that they are tested too.
        train_at_4_bits(&b, &device);
        let (va, vb) = (values(&a), values(&b));
        let averaged = values(&update_ema(a, &b, 0.75));
        assert_eq!(averaged.len(), va.len());
        assert!(
            averaged.keys().any(|k| k.contains("running_var")),
            "{:?}",
            averaged.keys()
        );
        let mut moved = Vec::new();
        for (key, got) in &averaged {
            for ((g, x), y) in got.iter().zip(&va[key]).zip(&vb[key]) {
                let want = 0.75 * x + 0.25 * y;
                assert!(
                    (g - want).abs() <= 1e-6 * (1.0 + want.abs()),
                    "{key}: {g} vs {want}"
                );
            }
            if va[key] != vb[key] {
                moved.push(key.as_str());
            }
        }
        // Tensors that differ between the two, so that the blend is seen: weights (seeded
        // differently) and the running statistics the forward pass moved.
        assert!(moved.iter().any(|k| k.contains("running_var")), "{moved:?}");
        assert!(moved.iter().any(|k| k.ends_with("weight")), "{moved:?}");
    }

    #[test]
    fn a_started_average_holds_the_model_and_shares_nothing_with_it() {
        let device = Device::flex().autodiff();
        let config = ModelConfig::new(Architecture::CifarResNet(20), "4,2".parse().unwrap())
            .with_width_mult(0.25);
        let model = config.init_seeded(1, &device).unwrap();
        let average = start_ema(config.init(&device), &model);
        assert_eq!(values(&average), values(&model));
        // Training moves the model's running statistics, and not the average's.
        let before = values(&average);
        train_at_4_bits(&model, &device);
        assert_eq!(values(&average), before);
        assert_ne!(values(&model), before);
    }

    #[test]
    fn the_decay_warms_up() {
        assert_eq!(ema_decay(0.999, 0), 0.1);
        assert_eq!(ema_decay(0.999, 10), 11.0 / 20.0);
        assert_eq!(ema_decay(0.999, 1_000_000), 0.999);
    }
}
