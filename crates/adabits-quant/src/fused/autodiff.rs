//! The fused quantizers under `Autodiff`: each forward is one node whose backward is the
//! backend's backward kernel.

use burn::backend::AutodiffBackend;
use burn::backend::Backend;
use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;

use super::{FusedQuantOps, PactSpec, QuantKernels, WeightSpec};

impl<B, C> FusedQuantOps for Autodiff<B, C>
where
    B: Backend + QuantKernels,
    C: CheckpointStrategy,
{
    fn fused_pact(
        x: FloatTensor<Self>,
        alpha_param: FloatTensor<Self>,
        spec: PactSpec,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Pact;

        impl<B: Backend + QuantKernels> Backward<B, 2> for Pact {
            type State = (FloatTensor<B>, FloatTensor<B>, PactSpec);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let (x, alpha_param, spec) = ops.state;
                let grad = grads.consume::<B>(&ops.node);
                let (grad_x, grad_alpha) = B::pact_backward(x, alpha_param, grad, spec);
                let [node_x, node_alpha] = ops.parents;
                if let Some(node) = node_x {
                    grads.register::<B>(node.id, grad_x);
                }
                if let Some(node) = node_alpha {
                    grads.register::<B>(node.id, grad_alpha);
                }
            }
        }

        let guards = [x.node(), alpha_param.node()];
        let x = x.into_primitive();
        let alpha_param = alpha_param.into_primitive();
        let y = B::pact_forward(x.clone(), alpha_param.clone(), spec);
        match Pact.prepare::<C>(guards).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((x, alpha_param, spec), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    fn fused_weight(
        weight: FloatTensor<Self>,
        spec: WeightSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        #[derive(Debug)]
        struct Weight;

        impl<B: Backend + QuantKernels> Backward<B, 1> for Weight {
            /// `t = tanh(W)` and the forward statistics.
            type State = (FloatTensor<B>, FloatTensor<B>);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let grad = grads.consume::<B>(&ops.node);
                let [node] = ops.parents;
                if let Some(node) = node {
                    let (tanh, stats) = ops.state;
                    grads.register::<B>(node.id, B::weight_backward(tanh, stats, grad));
                }
            }
        }

        let guards = [weight.node()];
        let (w_hat, scale, tanh, stats) = B::weight_forward(weight.into_primitive(), spec);
        let w_hat = match Weight.prepare::<C>(guards).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((tanh, stats), w_hat),
            OpsKind::UnTracked(prep) => prep.finish(w_hat),
        };
        // The scale is detached: a constant of the graph.
        (w_hat, Self::from_inner(scale))
    }
}
