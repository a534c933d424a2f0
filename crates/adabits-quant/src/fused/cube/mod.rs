//! The fused quantizers on Burn's CubeCL backend: [`kernels`]'s CubeCL kernels over the
//! tensors' device buffers, for every CubeCL runtime (feature `cube`, enabled through `wgpu`).
//!
//! [`QuantKernels`] is implemented for the unfused `CubeBackend`; the `#[backend_extension]`
//! macro derives its implementation for Burn's `Fusion` wrapper, which records each kernel as
//! one opaque operation of its lazy stream. [`FusedQuantOps`] on the dispatched CubeCL backend
//! (`Fusion<CubeBackend>`) is the forward pass of those kernels; under `Autodiff` the generic
//! implementation of [`super::autodiff`] records their backward.

mod kernels;

use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::fusion::Fusion;
use burn::tensor::{DType, Shape};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::*;

use super::{FusedQuantOps, PactSpec, QuantKernels, Rescale, WEIGHT_STATS, WeightSpec};
use crate::QuantScheme;
use kernels::BLOCK;

/// The most cubes a reduction pass launches: enough to fill a large GPU, few enough that the
/// one-cube pass over their partials is short.
const MAX_CUBES: usize = 1024;

/// The cubes of a reduction pass over `n` elements: a function of `n` only, so the order of
/// every sum is too. Each unit takes about eight elements, up to [`MAX_CUBES`] cubes.
fn reduction_cubes(n: usize) -> u32 {
    n.div_ceil(BLOCK as usize * 8).clamp(1, MAX_CUBES) as u32
}

/// A new contiguous `f32` tensor on `like`'s device (its contents are written by a kernel).
fn empty(like: &CubeTensor, shape: Shape) -> CubeTensor {
    empty_device_contiguous_dtype(like.client.clone(), like.device.clone(), shape, DType::F32)
}

/// The kernels' comptime scheme code.
fn scheme_code(scheme: QuantScheme) -> u32 {
    match scheme {
        QuantScheme::Original => kernels::ORIGINAL,
        QuantScheme::Modified => kernels::MODIFIED,
        QuantScheme::Centered => kernels::CENTERED,
    }
}

/// `2^bits` as the kernels' `levels`.
fn levels(bits: u8) -> f32 {
    (1u32 << bits) as f32
}

fn storage() -> ElemType {
    dtype_to_storage_type(DType::F32)
}

impl QuantKernels for CubeBackend {
    fn pact_forward(x: CubeTensor, alpha_param: CubeTensor, spec: PactSpec) -> CubeTensor {
        let x = into_contiguous(x);
        let alpha_param = into_contiguous(alpha_param);
        let y = empty(&x, x.meta.shape().clone());
        let n = x.meta.num_elements();
        let client = x.client.clone();
        let cube_dim = CubeDim::new_1d(BLOCK);
        kernels::pact_forward::launch(
            &client,
            calculate_cube_count_elemwise(&client, n, cube_dim),
            cube_dim,
            x.into_tensor_arg(),
            alpha_param.into_tensor_arg(),
            y.clone().into_tensor_arg(),
            levels(spec.bits),
            scheme_code(spec.scheme),
            spec.double_sided,
            storage(),
        );
        y
    }

    fn pact_backward(
        x: CubeTensor,
        alpha_param: CubeTensor,
        grad: CubeTensor,
        spec: PactSpec,
    ) -> (CubeTensor, CubeTensor) {
        let x = into_contiguous(x);
        let grad = into_contiguous(grad);
        let alpha_param = into_contiguous(alpha_param);
        let n = x.meta.num_elements();
        let cubes = reduction_cubes(n);
        let grad_x = empty(&x, x.meta.shape().clone());
        let partials = empty(&x, Shape::new([cubes as usize]));
        let grad_alpha = empty(&x, Shape::new([1]));
        let client = x.client.clone();
        kernels::pact_backward::launch(
            &client,
            CubeCount::Static(cubes, 1, 1),
            CubeDim::new_1d(BLOCK),
            x.into_tensor_arg(),
            grad.into_tensor_arg(),
            alpha_param.clone().into_tensor_arg(),
            grad_x.clone().into_tensor_arg(),
            partials.clone().into_tensor_arg(),
            levels(spec.bits),
            scheme_code(spec.scheme),
            spec.double_sided,
            storage(),
        );
        kernels::pact_alpha_grad::launch(
            &client,
            CubeCount::Static(1, 1, 1),
            CubeDim::new_1d(BLOCK),
            partials.into_tensor_arg(),
            alpha_param.into_tensor_arg(),
            grad_alpha.clone().into_tensor_arg(),
            storage(),
        );
        (grad_x, grad_alpha)
    }

    fn weight_forward(
        weight: CubeTensor,
        spec: WeightSpec,
    ) -> (CubeTensor, CubeTensor, CubeTensor, CubeTensor) {
        let w = into_contiguous(weight);
        let shape = w.meta.shape().clone();
        let n = w.meta.num_elements();
        let cubes = reduction_cubes(n);
        let client = w.client.clone();
        let grid = CubeCount::Static(cubes, 1, 1);
        let one_cube = || CubeCount::Static(1, 1, 1);
        let cube_dim = CubeDim::new_1d(BLOCK);
        let partial = || empty(&w, Shape::new([cubes as usize]));
        let t = empty(&w, shape.clone());
        let w_hat = empty(&w, shape);
        let stats = empty(&w, Shape::new([WEIGHT_STATS]));
        let scale = empty(&w, Shape::new([1]));

        let (part_a, part_b) = (partial(), partial());
        kernels::weight_tanh::launch(
            &client,
            grid.clone(),
            cube_dim,
            w.clone().into_tensor_arg(),
            t.clone().into_tensor_arg(),
            part_a.clone().into_tensor_arg(),
            part_b.clone().into_tensor_arg(),
            storage(),
        );
        kernels::weight_max::launch(
            &client,
            one_cube(),
            cube_dim,
            part_a.into_tensor_arg(),
            part_b.into_tensor_arg(),
            stats.clone().into_tensor_arg(),
            storage(),
        );
        let (part_a, part_b) = (partial(), partial());
        kernels::weight_normalize::launch(
            &client,
            grid.clone(),
            cube_dim,
            t.clone().into_tensor_arg(),
            stats.clone().into_tensor_arg(),
            w_hat.clone().into_tensor_arg(),
            part_a.clone().into_tensor_arg(),
            part_b.clone().into_tensor_arg(),
            levels(spec.bits.unwrap_or(1)),
            spec.bits.is_some(),
            scheme_code(spec.scheme),
            storage(),
        );
        kernels::weight_ties::launch(
            &client,
            one_cube(),
            cube_dim,
            part_a.into_tensor_arg(),
            part_b.into_tensor_arg(),
            stats.clone().into_tensor_arg(),
            scale.clone().into_tensor_arg(),
            storage(),
        );
        if let Some(rescale) = spec.rescale {
            assert!(
                n > 1,
                "rescaling needs at least two weight elements for an unbiased std, got {n}"
            );
            let (part_a, part_b) = (partial(), partial());
            kernels::weight_deviations::launch(
                &client,
                grid,
                cube_dim,
                w_hat.clone().into_tensor_arg(),
                w.into_tensor_arg(),
                stats.clone().into_tensor_arg(),
                part_a.clone().into_tensor_arg(),
                part_b.clone().into_tensor_arg(),
                storage(),
            );
            let (constant, latent) = match rescale {
                Rescale::Constant(c) => (c as f32, false),
                Rescale::LatentStd => (1.0, true),
            };
            kernels::weight_scale::launch(
                &client,
                one_cube(),
                cube_dim,
                part_a.into_tensor_arg(),
                part_b.into_tensor_arg(),
                stats.clone().into_tensor_arg(),
                scale.clone().into_tensor_arg(),
                u32::try_from(n).expect("a weight of fewer than 2^32 elements"),
                constant,
                latent,
                storage(),
            );
        }
        (w_hat, scale, t, stats)
    }

    fn weight_backward(tanh: CubeTensor, stats: CubeTensor, grad: CubeTensor) -> CubeTensor {
        let t = into_contiguous(tanh);
        let grad = into_contiguous(grad);
        let stats = into_contiguous(stats);
        let n = t.meta.num_elements();
        let cubes = reduction_cubes(n);
        let client = t.client.clone();
        let cube_dim = CubeDim::new_1d(BLOCK);
        let partials = empty(&t, Shape::new([cubes as usize]));
        let per_tied = empty(&t, Shape::new([1]));
        let out = empty(&t, t.meta.shape().clone());
        kernels::weight_grad_sum::launch(
            &client,
            CubeCount::Static(cubes, 1, 1),
            cube_dim,
            t.clone().into_tensor_arg(),
            grad.clone().into_tensor_arg(),
            partials.clone().into_tensor_arg(),
            storage(),
        );
        kernels::weight_grad_max::launch(
            &client,
            CubeCount::Static(1, 1, 1),
            cube_dim,
            partials.into_tensor_arg(),
            stats.clone().into_tensor_arg(),
            per_tied.clone().into_tensor_arg(),
            storage(),
        );
        kernels::weight_grad::launch(
            &client,
            calculate_cube_count_elemwise(&client, n, cube_dim),
            cube_dim,
            t.into_tensor_arg(),
            grad.into_tensor_arg(),
            stats.into_tensor_arg(),
            per_tied.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            storage(),
        );
        out
    }
}

/// The dispatched CubeCL backend: the kernels' forward passes, through Fusion's stream.
impl FusedQuantOps for Fusion<CubeBackend> {
    fn fused_pact(
        x: burn::backend::tensor::FloatTensor<Self>,
        alpha_param: burn::backend::tensor::FloatTensor<Self>,
        spec: PactSpec,
    ) -> burn::backend::tensor::FloatTensor<Self> {
        <Self as QuantKernels>::pact_forward(x, alpha_param, spec)
    }

    fn fused_weight(
        weight: burn::backend::tensor::FloatTensor<Self>,
        spec: WeightSpec,
    ) -> (
        burn::backend::tensor::FloatTensor<Self>,
        burn::backend::tensor::FloatTensor<Self>,
    ) {
        let (w_hat, scale, _, _) = <Self as QuantKernels>::weight_forward(weight, spec);
        (w_hat, scale)
    }
}
