//! Model surgery: a model changed into another one of the same architecture, through its
//! tensors in the official layout. Starting an adaptive model from a single-bit-width one,
//! spreading the first bit-width's BatchNorm and clipping levels to the others, adding a
//! bit-width, scaling one bit-width's clipping levels.

use adabits_quant::{BitWidth, BitWidths, Precision, QuantError};
use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};

use crate::import::{ImportError, ImportMode, ImportReport, import_official};
use crate::layout::{OfficialLayout, export_official};
use crate::state_dict::StateTensor;
use crate::zoo::{Model, ModelConfig};

/// Why a model could not be changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SurgeryError {
    /// The bit-width to add is one the model already has.
    #[error("{bits} is already one of {list}")]
    AlreadyTrained {
        /// The entry asked for (`8 bits`, `w4a8`).
        bits: String,
        /// The model's bit-widths.
        list: String,
    },
    /// The new bit-width list is not valid.
    #[error(transparent)]
    List(#[from] QuantError),
    /// The changed tensors do not fit the model (a bug).
    #[error(transparent)]
    Import(#[from] ImportError),
}

/// Starts an adaptive model from a trained model of the same architecture: the weights are
/// copied, and the source's first BatchNorm entry and first clipping level go to every
/// bit-width of `adaptive`, as [`ImportMode::FullPrecision`] does. The source may be a
/// single-bit-width model (for example one trained at full precision, bit list `[32]`) or a
/// model of any bit-width list and sharing that ran at full precision on its first entries (a
/// run's full-precision stage, see [`spread_first`]); `adaptive` may have any list and sharing.
///
/// # Errors
///
/// [`ImportError::Mismatch`] if the architectures differ.
pub fn adapt_from<M: OfficialLayout>(
    source: &M,
    adaptive: M,
) -> Result<(M, ImportReport), ImportError> {
    let mut dict = export_official(source);
    let keys: Vec<String> = dict.keys().map(str::to_string).collect();
    for key in keys {
        if let Some(tensor) = dict.get(&key)
            && key.ends_with(".alpha")
            && tensor.values.len() > 1
        {
            let first = StateTensor::new(vec![1], vec![tensor.values[0]]);
            dict.insert(key, first);
        }
    }
    import_official(adaptive, &dict, ImportMode::FullPrecision)
}

/// Copies the first bit-width's BatchNorm entries and clipping levels to every other bit-width
/// of `model`: what a model trained at full precision (which runs on the first entry, see
/// [`BitWidths::index_or_first`](adabits_quant::BitWidths::index_or_first)) hands to the
/// adaptive stage that follows, as the official `fp_pretrained` loading does (docs/method.md §7).
/// Weights, shared BatchNorm and shared clipping levels are unchanged.
///
/// # Errors
///
/// [`ImportError::Mismatch`] only if the model's own layout is inconsistent (a bug).
pub fn spread_first<M: OfficialLayout>(model: M) -> Result<M, ImportError> {
    let mut dict = export_official(&model);
    let keys: Vec<String> = dict.keys().map(str::to_string).collect();
    for key in keys {
        let Some(tensor) = dict.get(&key).cloned() else {
            continue;
        };
        if let Some((head, rest)) = key.rsplit_once(".bn.")
            && let Some((index, field)) = rest.split_once('.')
            && index.parse::<usize>().is_ok_and(|i| i > 0)
        {
            if let Some(first) = dict.get(&format!("{head}.bn.0.{field}")).cloned() {
                dict.insert(key, first);
            }
        } else if key.ends_with(".alpha") && tensor.shape.len() == 1 {
            let mut spread = tensor.clone();
            spread.values.fill(tensor.values[0]);
            dict.insert(key, spread);
        }
    }
    import_official(model, &dict, ImportMode::Adaptive).map(|(model, _)| model)
}

/// A copy of `model` (built from `config`) whose list gains the entry `bits` (a bit-width or a
/// `wWaA` precision) at its end: every BatchNorm entry and clipping level of the new entry is
/// copied from the nearest trained entry (the least total distance in weight and activation
/// bits, the higher one on a tie), ready for BatchNorm calibration. Returns the model and its
/// configuration.
///
/// # Errors
///
/// [`SurgeryError::AlreadyTrained`] when `bits` is already in the list,
/// [`SurgeryError::List`] when the list cannot hold it.
pub fn with_added_bits(
    model: &Model,
    config: &ModelConfig,
    bits: impl Into<Precision>,
    device: &Device,
) -> Result<(Model, ModelConfig), SurgeryError> {
    let bits = bits.into();
    let list: Vec<Precision> = config.bits.iter().collect();
    if list.contains(&bits) {
        return Err(SurgeryError::AlreadyTrained {
            bits: bits.describe(),
            list: config.bits.to_string(),
        });
    }
    let signed = |b: BitWidth| i32::from(b.get());
    let nearest = (0..list.len())
        .min_by_key(|&i| {
            let dw = signed(list[i].weight) - signed(bits.weight);
            let da = signed(list[i].activation) - signed(bits.activation);
            (dw.abs() + da.abs(), -(dw + da))
        })
        .unwrap_or(0);
    let n = list.len();
    let mut dict = export_official(model);
    let keys: Vec<String> = dict.keys().map(str::to_string).collect();
    let from = format!(".bn.{nearest}.");
    let to = format!(".bn.{n}.");
    let shared_bn = config.quant.bn == crate::layers::BnSharing::Shared;
    for key in keys {
        let Some(tensor) = dict.get(&key).cloned() else {
            continue;
        };
        if !shared_bn && key.contains(&from) {
            dict.insert(key.replace(&from, &to), tensor);
        } else if key.ends_with("alpha") && tensor.shape == [n] {
            let mut grown = tensor.clone();
            grown.values.push(tensor.values[nearest]);
            grown.shape = vec![n + 1];
            dict.insert(key, grown);
        }
    }
    let mut extended = list;
    extended.push(bits);
    let bits_list = BitWidths::new(extended)?;
    let mut new_config = config.clone();
    new_config.bits = bits_list;
    let (model, _) = import_official(new_config.init(device), &dict, ImportMode::Adaptive)?;
    Ok((model, new_config))
}

/// A copy of `model` whose clipping levels at position `position` of the bit-width list are
/// multiplied by `factor`, in every quantized layer with switchable clipping levels (layers with
/// one shared level, or fewer entries, are unchanged).
pub fn scale_alpha(model: &Model, position: usize, factor: f64) -> Model {
    let mut model = model.clone();
    model.visit_official(&mut |_, mut layer| {
        let Some(levels) = layer.alpha_mut() else {
            return;
        };
        let alpha = &mut levels.alpha;
        let values = alpha.val();
        let [len] = values.dims();
        if position < len {
            let device = values.device();
            let mut v: Vec<f32> = values.into_data().iter::<f32>().collect();
            v[position] *= factor as f32;
            let t = Tensor::<1>::from_data(TensorData::new(v, [len]), &device);
            *alpha = Param::from_tensor(t);
        }
    });
    model
}
