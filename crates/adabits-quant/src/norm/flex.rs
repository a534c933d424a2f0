//! The fused BatchNorm on Flex: [`super::cpu`]'s kernels over the tensors' `f32` storage.

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::Shape;

use super::cpu::{self, Layout};
use super::{BatchNormKernels, FusedBatchNormOps};
use crate::fused::flex::{tensor, with_f32};

fn layout(x: &FlexTensor) -> Layout {
    let [batch, channels, h, w] = x.layout().shape().dims::<4>();
    Layout {
        batch,
        channels,
        plane: h * w,
    }
}

impl BatchNormKernels for Flex {
    fn batch_norm_forward(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let l = layout(&x);
        let (y, mean, variance) = with_f32(&x, |x| {
            with_f32(&gamma, |g| {
                with_f32(&beta, |b| cpu::forward(x, g, b, epsilon as f32, l))
            })
        });
        let per_channel = Shape::new([l.channels]);
        (
            tensor(y, x.layout().shape().clone()),
            tensor(mean, per_channel.clone()),
            tensor(variance, per_channel),
        )
    }

    fn batch_norm_backward(
        x: FlexTensor,
        gamma: FlexTensor,
        mean: FlexTensor,
        variance: FlexTensor,
        epsilon: f64,
        grad: FlexTensor,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let l = layout(&x);
        let stats = with_f32(&mean, |m| {
            with_f32(&variance, |v| {
                with_f32(&gamma, |g| cpu::Channels::new(m, v, g, epsilon as f32))
            })
        });
        let (dx, dgamma, dbeta) =
            with_f32(&x, |x| with_f32(&grad, |d| cpu::backward(x, d, &stats, l)));
        let per_channel = Shape::new([l.channels]);
        (
            tensor(dx, x.layout().shape().clone()),
            tensor(dgamma, per_channel.clone()),
            tensor(dbeta, per_channel),
        )
    }
}

impl FusedBatchNormOps for Flex {
    fn fused_batch_norm_train(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        Self::batch_norm_forward(x, gamma, beta, epsilon)
    }
}
