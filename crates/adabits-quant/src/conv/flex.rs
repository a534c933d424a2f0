//! The fused convolution on Flex: [`super::cpu`]'s kernels over the tensors' `f32` storage.

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::Shape;

use super::cpu::{self, Geometry};
use super::{ConvKernels, ConvSpec, FusedConvOps};
use crate::fused::flex::{tensor, with_f32};

fn dims4(tensor: &FlexTensor) -> [usize; 4] {
    tensor.layout().shape().dims::<4>()
}

fn geometry(x: &FlexTensor, weight: &FlexTensor, spec: ConvSpec) -> Geometry {
    Geometry::new(dims4(x), dims4(weight), spec.stride, spec.padding)
        .expect("conv2d: the kernel does not fit the padded input")
}

impl ConvKernels for Flex {
    fn conv_forward(x: FlexTensor, weight: FlexTensor, spec: ConvSpec) -> FlexTensor {
        let g = geometry(&x, &weight, spec);
        let y = with_f32(&x, |x| with_f32(&weight, |w| cpu::forward(x, w, &g)));
        tensor(y, Shape::new([g.batch, g.c_out, g.h_out, g.w_out]))
    }

    fn conv_backward_x(
        x: FlexTensor,
        weight: FlexTensor,
        grad: FlexTensor,
        spec: ConvSpec,
    ) -> FlexTensor {
        let g = geometry(&x, &weight, spec);
        let dx = with_f32(&weight, |w| with_f32(&grad, |d| cpu::backward_x(w, d, &g)));
        tensor(dx, x.layout().shape().clone())
    }

    fn conv_backward_weight(
        x: FlexTensor,
        weight: FlexTensor,
        grad: FlexTensor,
        spec: ConvSpec,
    ) -> FlexTensor {
        let g = geometry(&x, &weight, spec);
        let dw = with_f32(&x, |x| with_f32(&grad, |d| cpu::backward_weight(x, d, &g)));
        tensor(dw, weight.layout().shape().clone())
    }
}

impl FusedConvOps for Flex {
    fn fused_conv2d(x: FlexTensor, weight: FlexTensor, spec: ConvSpec) -> FlexTensor {
        Self::conv_forward(x, weight, spec)
    }
}
