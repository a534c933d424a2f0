//! The fused convolution under `Autodiff`: one node whose backward runs the backend's gradient
//! kernels for the inputs that need them.

use burn::backend::Backend;
use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;

use super::{ConvKernels, ConvSpec, FusedConvOps};

impl<B, C> FusedConvOps for Autodiff<B, C>
where
    B: Backend + ConvKernels,
    C: CheckpointStrategy,
{
    fn fused_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        spec: ConvSpec,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Conv;

        impl<B: Backend + ConvKernels> Backward<B, 2> for Conv {
            type State = (FloatTensor<B>, FloatTensor<B>, ConvSpec);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let (x, weight, spec) = ops.state;
                let grad = grads.consume::<B>(&ops.node);
                let [node_x, node_weight] = ops.parents;
                if let Some(node) = node_x {
                    let grad_x = B::conv_backward_x(x.clone(), weight.clone(), grad.clone(), spec);
                    grads.register::<B>(node.id, grad_x);
                }
                if let Some(node) = node_weight {
                    grads.register::<B>(node.id, B::conv_backward_weight(x, weight, grad, spec));
                }
            }
        }

        let guards = [x.node(), weight.node()];
        let x = x.into_primitive();
        let weight = weight.into_primitive();
        let y = B::conv_forward(x.clone(), weight.clone(), spec);
        match Conv.prepare::<C>(guards).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((x, weight, spec), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }
}
