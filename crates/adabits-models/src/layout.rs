//! The layer-naming contract every model implements: where each layer sits in the official
//! code's state-dict layout ([`OfficialLayout`]), and the export of a model to that layout.
//!
//! The official models name their tensors `<layer>.weight`, `<layer>.bias` and `<layer>.alpha`
//! for quantized convs and linears (`alpha` has one entry per bit-width with S-CL, and is a
//! scalar otherwise), and `<layer>.bn.<i>.{weight,bias,running_mean,running_var,
//! num_batches_tracked}` for the BatchNorm of the `i`-th bit-width (docs/method.md §6).

use burn::module::{Module, Param};
use burn::tensor::Tensor;

use crate::state_dict::{StateDict, StateTensor};
use adabits_quant::ClippingLevels;

use crate::{LayerQuant, QConv2d, QLinear, SwitchBatchNorm2d};

/// A layer of a model, as [`OfficialLayout::visit_official`] hands it out.
#[derive(Debug)]
pub enum LayerMut<'a> {
    /// A quantized convolution: `weight`, `bias` (if any), `alpha`.
    Conv(&'a mut QConv2d),
    /// A switchable BatchNorm: `bn.<i>.*` (and `weight`, `bias` when the affine is shared).
    Norm(&'a mut SwitchBatchNorm2d),
    /// A quantized linear layer: `weight`, `bias` (if any), `alpha`.
    Linear(&'a mut QLinear),
}

impl LayerMut<'_> {
    /// The input clipping levels of a quantized layer (`None` for a BatchNorm).
    pub fn alpha_mut(&mut self) -> Option<&mut ClippingLevels> {
        match self {
            Self::Conv(c) => Some(&mut c.alpha),
            Self::Linear(l) => Some(&mut l.alpha),
            Self::Norm(_) => None,
        }
    }

    /// The bias of a quantized layer, if it has one (`None` for a BatchNorm).
    pub fn bias_mut(&mut self) -> Option<&mut Param<Tensor<1>>> {
        match self {
            Self::Conv(c) => c.bias.as_mut(),
            Self::Linear(l) => l.bias.as_mut(),
            Self::Norm(_) => None,
        }
    }

    /// How a quantized layer quantizes (`None` for a BatchNorm).
    pub fn quant(&self) -> Option<&LayerQuant> {
        match self {
            Self::Conv(c) => Some(c.quant()),
            Self::Linear(l) => Some(l.quant()),
            Self::Norm(_) => None,
        }
    }
}

/// A model whose layers have names in the official PyTorch code's state dicts.
pub trait OfficialLayout: Module + Clone {
    /// Calls `visit` with the official key prefix of every layer that holds tensors (for example
    /// `stage_0_layer_1.body.3` for the second conv of a CIFAR ResNet block), in module order.
    fn visit_official(&mut self, visit: &mut dyn FnMut(&str, LayerMut<'_>));
}

/// The model's tensors in the official layout (what the official code's `state_dict()` holds,
/// `num_batches_tracked` included, as 0: Adabits does not count batches, and PyTorch uses the
/// count only when `momentum` is `None`).
///
/// A `wWaA` entry's clipping levels are written at its position, but the official code does not
/// read them: it clips the pair with the level of its activation bit-width
/// ([`crate::adabits_quant::ClippingLevels::official_index`]), so a pair-trained model runs
/// its pairs differently there; [`crate::import_official`] reads such a checkpoint as the
/// official code ran it.
pub fn export_official<M: OfficialLayout>(model: &M) -> StateDict {
    let mut model = model.clone();
    let mut dict = StateDict::new();
    model.visit_official(&mut |prefix, mut layer| {
        if let Some(levels) = layer.alpha_mut() {
            export_alpha(
                &mut dict,
                prefix,
                levels.alpha.val(),
                levels.is_switchable(),
            );
        }
        match layer {
            LayerMut::Conv(conv) => {
                export_weights(&mut dict, prefix, conv.weight.val(), conv.bias.as_ref());
            }
            LayerMut::Linear(linear) => {
                export_weights(&mut dict, prefix, linear.weight.val(), linear.bias.as_ref());
            }
            LayerMut::Norm(bn) => export_norm(&mut dict, prefix, bn),
        }
    });
    dict
}

/// The `bn.<i>.*` entries of one switchable BatchNorm.
fn export_norm(dict: &mut StateDict, prefix: &str, bn: &mut SwitchBatchNorm2d) {
    let bits = bn.bit_count();
    for i in 0..bits {
        // The shared-BN ablation keeps one BatchNorm; the official code has one per
        // bit-width and uses the first, so every copy gets the same values.
        let entry = &bn.entries[i.min(bn.entries.len() - 1)];
        let at = |field: &str| format!("{prefix}.bn.{i}.{field}");
        if let (Some(g), Some(b)) = (&entry.gamma, &entry.beta) {
            dict.insert(at("weight"), StateTensor::from_tensor(g.val()));
            dict.insert(at("bias"), StateTensor::from_tensor(b.val()));
        }
        let mean = entry.running_mean.value_sync();
        let var = entry.running_var.value_sync();
        dict.insert(at("running_mean"), StateTensor::from_tensor(mean));
        dict.insert(at("running_var"), StateTensor::from_tensor(var));
        dict.insert(
            at("num_batches_tracked"),
            StateTensor {
                shape: vec![],
                values: vec![0.0],
                integer: true,
            },
        );
    }
    if let (Some(g), Some(b)) = (&bn.shared_gamma, &bn.shared_beta) {
        dict.insert(
            format!("{prefix}.weight"),
            StateTensor::from_tensor(g.val()),
        );
        dict.insert(format!("{prefix}.bias"), StateTensor::from_tensor(b.val()));
    }
}

fn export_weights<const D: usize>(
    dict: &mut StateDict,
    prefix: &str,
    weight: Tensor<D>,
    bias: Option<&Param<Tensor<1>>>,
) {
    dict.insert(format!("{prefix}.weight"), StateTensor::from_tensor(weight));
    if let Some(bias) = bias {
        dict.insert(
            format!("{prefix}.bias"),
            StateTensor::from_tensor(bias.val()),
        );
    }
}

fn export_alpha(dict: &mut StateDict, prefix: &str, alpha: Tensor<1>, switchable: bool) {
    let mut tensor = StateTensor::from_tensor(alpha);
    if !switchable {
        // The official shared `alpha` is a 0-d tensor.
        tensor.shape.clear();
    }
    dict.insert(format!("{prefix}.alpha"), tensor);
}

/// The official block names `stage_<s>_layer_<i>` of stages with `counts` blocks each, in order.
pub(crate) fn stage_layer_names(counts: impl IntoIterator<Item = usize>) -> Vec<String> {
    counts
        .into_iter()
        .enumerate()
        .flat_map(|(s, n)| (0..n).map(move |i| format!("stage_{s}_layer_{i}")))
        .collect()
}
