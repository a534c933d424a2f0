//! The fused quantizers on Flex: [`super::cpu`]'s kernels over the tensors' `f32` storage, and
//! the storage helpers the fused convolution shares.

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::{Shape, TensorData};

use super::cpu::{self, Isa, WeightStats};
use super::{FusedQuantOps, PactSpec, QuantKernels, WeightSpec};

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

/// The weight quantizer's backward state on Flex: `t = tanh(W)` and the forward statistics.
#[derive(Clone, Debug)]
pub struct FlexWeightState {
    tanh: FlexTensor,
    stats: WeightStats,
}

impl QuantKernels for Flex {
    type WeightState = FlexWeightState;

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
    ) -> (FlexTensor, FlexTensor, FlexWeightState) {
        let shape = weight.layout().shape().clone();
        let (w_hat, t, stats) = with_f32(&weight, |w| cpu::weight_forward(w, spec));
        let scale = tensor(vec![stats.scale.unwrap_or(1.0)], Shape::new([1]));
        let state = FlexWeightState {
            tanh: tensor(t, shape.clone()),
            stats,
        };
        (tensor(w_hat, shape), scale, state)
    }

    fn weight_backward(state: FlexWeightState, grad: FlexTensor) -> FlexTensor {
        let shape = state.tanh.layout().shape().clone();
        let g = with_f32(&state.tanh, |t| {
            with_f32(&grad, |g| cpu::weight_backward(t, g, state.stats))
        });
        tensor(g, shape)
    }
}

impl FusedQuantOps for Flex {
    fn fused_pact(x: FlexTensor, alpha_param: FlexTensor, spec: PactSpec) -> FlexTensor {
        Self::pact_forward(x, alpha_param, spec)
    }

    fn fused_weight(weight: FlexTensor, spec: WeightSpec) -> (FlexTensor, FlexTensor) {
        let (w_hat, scale, _) = Self::weight_forward(weight, spec);
        (w_hat, scale)
    }
}
