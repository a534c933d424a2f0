//! The fused quantizers on Flex: [`super::cpu`]'s kernels over the tensors' `f32` storage, and
//! the storage helpers the fused convolution shares.

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::{Shape, TensorData};

use super::cpu::{self, Isa, WeightStats};
use super::{
    FusedQuantOps, PactSpec, QuantKernels, STAT_MAX, STAT_SCALE, STAT_TIED, WEIGHT_STATS,
    WeightSpec,
};

/// The `f32` elements of `tensor` in row-major order (copied only if it is not contiguous).
pub(crate) fn with_f32<R>(tensor: &FlexTensor, f: impl FnOnce(&[f32]) -> R) -> R {
    match tensor.as_slice::<f32>() {
        Some(values) => f(values),
        None => {
            let contiguous = tensor.to_contiguous();
            f(contiguous
                .as_slice::<f32>()
                .expect("a contiguous f32 tensor has an f32 slice"))
        }
    }
}

/// The scalar of a one-element tensor.
fn scalar(tensor: &FlexTensor) -> f32 {
    with_f32(tensor, |v| v[0])
}

pub(crate) fn tensor(values: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

impl QuantKernels for Flex {
    fn pact_forward(x: FlexTensor, alpha_param: FlexTensor, spec: PactSpec) -> FlexTensor {
        let alpha = scalar(&alpha_param);
        let shape = x.layout().shape().clone();
        let y = with_f32(&x, |x| cpu::pact_forward(x, alpha, spec, Isa::Detected));
        tensor(y, shape)
    }

    fn pact_backward(
        x: FlexTensor,
        alpha_param: FlexTensor,
        grad: FlexTensor,
        spec: PactSpec,
    ) -> (FlexTensor, FlexTensor) {
        let alpha = scalar(&alpha_param);
        let shape = x.layout().shape().clone();
        let (grad_x, grad_alpha) = with_f32(&x, |x| {
            with_f32(&grad, |g| {
                cpu::pact_backward(x, g, alpha, spec, Isa::Detected)
            })
        });
        (
            tensor(grad_x, shape),
            tensor(vec![grad_alpha as f32], Shape::new([1])),
        )
    }

    fn weight_forward(
        weight: FlexTensor,
        spec: WeightSpec,
    ) -> (FlexTensor, FlexTensor, FlexTensor, FlexTensor) {
        let shape = weight.layout().shape().clone();
        let (w_hat, t, stats) = with_f32(&weight, |w| cpu::weight_forward(w, spec));
        (
            tensor(w_hat, shape.clone()),
            scale_tensor(stats),
            tensor(t, shape),
            tensor(stats_values(stats), Shape::new([WEIGHT_STATS])),
        )
    }

    fn weight_backward(tanh: FlexTensor, stats: FlexTensor, grad: FlexTensor) -> FlexTensor {
        let shape = tanh.layout().shape().clone();
        let stats = with_f32(&stats, |s| WeightStats {
            max_abs: s[STAT_MAX],
            tied: s[STAT_TIED],
            scale: Some(s[STAT_SCALE]),
        });
        let g = with_f32(&tanh, |t| {
            with_f32(&grad, |g| cpu::weight_backward(t, g, stats))
        });
        tensor(g, shape)
    }
}

/// The SAT scale `s` as a `[1]` tensor, 1 without a rescale.
fn scale_tensor(stats: WeightStats) -> FlexTensor {
    tensor(vec![stats.scale.unwrap_or(1.0)], Shape::new([1]))
}

/// The statistics tensor's slots from the kernel's statistics.
fn stats_values(stats: WeightStats) -> Vec<f32> {
    let mut values = vec![0.0; WEIGHT_STATS];
    values[STAT_MAX] = stats.max_abs;
    values[STAT_TIED] = stats.tied;
    values[STAT_SCALE] = stats.scale.unwrap_or(1.0);
    values
}

impl FusedQuantOps for Flex {
    fn fused_pact(x: FlexTensor, alpha_param: FlexTensor, spec: PactSpec) -> FlexTensor {
        Self::pact_forward(x, alpha_param, spec)
    }

    fn fused_weight(weight: FlexTensor, spec: WeightSpec) -> (FlexTensor, FlexTensor) {
        let shape = weight.layout().shape().clone();
        let (w_hat, _, stats) = with_f32(&weight, |w| cpu::weight_forward(w, spec));
        (tensor(w_hat, shape), scale_tensor(stats))
    }
}
