//! The fused BatchNorm under `Autodiff`: one node whose backward is the backend's backward
//! kernel; the batch statistics it returns are detached.

use burn::backend::AutodiffBackend;
use burn::backend::Backend;
use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;

use super::{BatchNormKernels, FusedBatchNormOps};

impl<B, C> FusedBatchNormOps for Autodiff<B, C>
where
    B: Backend + BatchNormKernels,
    C: CheckpointStrategy,
{
    fn fused_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        #[derive(Debug)]
        struct BatchNorm;

        impl<B: Backend + BatchNormKernels> Backward<B, 3> for BatchNorm {
            type State = (
                FloatTensor<B>,
                FloatTensor<B>,
                FloatTensor<B>,
                FloatTensor<B>,
                f64,
            );

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let (x, gamma, mean, variance, epsilon) = ops.state;
                let grad = grads.consume::<B>(&ops.node);
                let (grad_x, grad_gamma, grad_beta) =
                    B::batch_norm_backward(x, gamma, mean, variance, epsilon, grad);
                let [node_x, node_gamma, node_beta] = ops.parents;
                for (node, grad) in [
                    (node_x, grad_x),
                    (node_gamma, grad_gamma),
                    (node_beta, grad_beta),
                ] {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, grad);
                    }
                }
            }
        }

        let guards = [x.node(), gamma.node(), beta.node()];
        let x = x.into_primitive();
        let gamma = gamma.into_primitive();
        let (y, mean, variance) =
            B::batch_norm_forward(x.clone(), gamma.clone(), beta.into_primitive(), epsilon);
        let y = match BatchNorm.prepare::<C>(guards).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                prep.finish((x, gamma, mean.clone(), variance.clone(), epsilon), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        (y, Self::from_inner(mean), Self::from_inner(variance))
    }
}
