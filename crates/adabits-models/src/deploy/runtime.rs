//! The Burn runtime: an artifact's model at any of its bit-widths, switched from the codes in
//! memory, in `f32` on any Burn device (the integer runtime is `adabits-runtime`'s).

use std::path::Path;

use adabits_quant::{
    At, BitWidth, Precision, QuantMode, QuantScheme, QuantizedWeight, codes_to_unit,
};
use adabits_runtime::{Artifact, ArtifactError, LayerPayload, QuantPayload};
use burn::module::Param;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::layout::{LayerMut, OfficialLayout};
use crate::plan::ResolvedPlan;
use crate::zoo::{Model, ModelConfig};

/// The model configuration an artifact's header holds.
///
/// # Errors
///
/// [`ArtifactError::Header`] naming `path` when the header's `model` is not a model
/// configuration this build reads.
pub fn artifact_model(artifact: &Artifact, path: &Path) -> Result<ModelConfig, ArtifactError> {
    serde_json::from_value(artifact.header.model.clone()).map_err(|e| ArtifactError::Header {
        path: path.to_path_buf(),
        field: "adabits.model".into(),
        expected: "a model configuration of adabits-models".into(),
        found: e.to_string(),
    })
}

/// Runs an artifact at any entry of its list (bit-widths and `wWaA` pairs).
#[derive(Debug)]
pub struct Runtime {
    artifact: Artifact,
    config: ModelConfig,
    template: Model,
    model: Model,
    /// The active entry (after [`Runtime::set_plan`], the last one set).
    at: At,
    device: Device,
}

impl Runtime {
    /// Builds the model the artifact describes on `device` and loads its highest entry.
    ///
    /// # Errors
    ///
    /// [`ArtifactError::Header`] when the header holds no model configuration of this build, or
    /// one whose list is not the graph's; [`ArtifactError::Layout`] when the artifact's layers
    /// are not the model's.
    pub fn new(artifact: Artifact, device: &Device) -> Result<Self, ArtifactError> {
        let path = Path::new("the artifact");
        let config = artifact_model(&artifact, path)?;
        let graph_list: Vec<Precision> = artifact
            .bits()
            .iter()
            .map(|&e| super::entry_precision(e))
            .collect();
        if graph_list != config.bits.as_slice() {
            return Err(ArtifactError::Header {
                path: path.to_path_buf(),
                field: "adabits.model.bits".into(),
                expected: format!("the graph's list {}", artifact.header.graph.list()),
                found: config.bits.to_string(),
            });
        }
        let top = config.bits.max();
        let template = config.init(device);
        let model = template.clone();
        let mut runtime = Self {
            artifact,
            at: config.bits.find(top).expect("the list holds its maximum"),
            config,
            template,
            model,
            device: device.clone(),
        };
        runtime.set_bits(top)?;
        Ok(runtime)
    }

    /// The artifact.
    pub fn artifact(&self) -> &Artifact {
        &self.artifact
    }

    /// The model configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The active entry's precision.
    pub fn bits(&self) -> Precision {
        self.at.precision
    }

    /// Switches to the entry `bits` of the artifact's list (a bit-width, or a `wWaA` pair):
    /// decodes the weights each layer resolves it to from the codes in memory (a right shift
    /// and a scale per weight) and loads its clipping levels and folded BatchNorms. A pair entry
    /// runs every layer at the pair, as [`Model::forward_at`] does.
    ///
    /// # Errors
    ///
    /// [`ArtifactError::UnknownBits`] for an entry the artifact does not hold;
    /// [`ArtifactError::Layout`] when the artifact's layers are not the model's.
    pub fn set_bits(&mut self, bits: impl Into<Precision>) -> Result<(), ArtifactError> {
        let bits = bits.into();
        let config = &self.config;
        let Some(at) = config.bits.find(bits) else {
            return Err(ArtifactError::UnknownBits {
                entry: bits.describe(),
                list: config.bits.to_string(),
            });
        };
        let pair = at.precision.as_uniform().is_none();
        self.model = self.build(&|_| Some(at), pair)?;
        self.at = at;
        Ok(())
    }

    /// Switches to a precision plan (resolved against this artifact's model): each layer's
    /// weights decoded at its entry's weight bit-width, its clipping level and the BatchNorm
    /// after it at its entry, as [`crate::with_plan`] runs the trained model.
    /// [`bits`](Self::bits) keeps the last entry set.
    ///
    /// # Errors
    ///
    /// [`ArtifactError::Layout`] naming a layer of the model the plan does not cover, or
    /// when the artifact's layers are not the model's.
    pub fn set_plan(&mut self, plan: &ResolvedPlan) -> Result<(), ArtifactError> {
        self.model = self.build(&|name| plan.at(name), true)?;
        Ok(())
    }

    /// The model with every layer loaded at what `at` gives its name (and, with `planned`,
    /// set to run it whatever bit-width `forward` is given).
    fn build(
        &self,
        at: &dyn Fn(&str) -> Option<At>,
        planned: bool,
    ) -> Result<Model, ArtifactError> {
        let config = &self.config;
        let linear_eval = config.quant.linear_eval;
        let scheme = config.quant.weight_scheme;
        let graph = &self.artifact.header.graph;
        let parts = self.artifact.layers();
        let mut parts = graph.layer_names().zip(parts);
        let mut model = self.template.clone();
        let device = &self.device;
        let mut failure = None;
        // The entry of the convolution before a BatchNorm.
        let mut last = None;
        model.visit_official(&mut |name, layer| {
            if failure.is_some() {
                return;
            }
            let here = match &layer {
                LayerMut::Norm(_) => last,
                _ => at(name),
            };
            let Some(here) = here else {
                failure = Some(ArtifactError::Layout(format!(
                    "layer `{name}`: the plan gives it no precision"
                )));
                return;
            };
            last = Some(here);
            let result = match parts.next() {
                Some((stored, part)) if stored == name => {
                    load(layer, part, here, planned, scheme, linear_eval, device)
                }
                Some((stored, _)) => Err(format!("the artifact's layer here is `{stored}`")),
                None => Err("the artifact has no more layers".into()),
            };
            if let Err(e) = result {
                failure = Some(ArtifactError::Layout(format!(
                    "layer `{name}`: {e}: the artifact was exported from another model than its header describes"
                )));
            }
        });
        if let Some(e) = failure {
            return Err(e);
        }
        if let Some((stored, _)) = parts.next() {
            return Err(ArtifactError::Layout(format!(
                "the artifact's layer `{stored}` is not in the model its header describes"
            )));
        }
        Ok(model)
    }

    /// The logits of `images` at the active entry (the model's input transform applies).
    ///
    /// # Shapes
    ///
    /// `images`: `[batch, 3, h, w]`; output `[batch, classes]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        // A pair entry (and a plan) is set on every layer; the bit-width given is then unused.
        self.model.forward(images, self.at.precision.weight)
    }
}

/// Loads one layer's part of the artifact at `at` into the model's layer (and, with
/// `planned`, sets the layer to run `at` whatever bit-width it is given).
fn load(
    layer: LayerMut<'_>,
    part: LayerPayload<'_>,
    at: At,
    planned: bool,
    scheme: QuantScheme,
    linear_eval: adabits_quant::LinearEval,
    device: &Device,
) -> Result<(), String> {
    match (layer, part) {
        (LayerMut::Conv(c), LayerPayload::Quant(p)) => {
            let bitw = at.precision.resolve(&c.policy()).bitw;
            let q = decode(
                &p,
                c.weight.dims(),
                bitw,
                scheme,
                c.weight_quant().rescale,
                device,
            )?;
            c.deploy(q.effective(), p.bias.map(|b| tensor1(b, device)));
            c.alpha.alpha = Param::from_tensor(tensor1(p.alphas, device));
            c.set_planned(planned.then_some(at));
            Ok(())
        }
        (LayerMut::Linear(l), LayerPayload::Quant(p)) => {
            let bitw = at.precision.resolve(&l.policy()).bitw;
            let q = decode(
                &p,
                l.weight.dims(),
                bitw,
                scheme,
                l.weight_quant().rescale,
                device,
            )?;
            let bias = p.bias.map(|b| tensor1(b, device));
            let (w, b) = q.linear_params(bias, QuantMode::Eval, linear_eval);
            l.deploy(w, b);
            l.alpha.alpha = Param::from_tensor(tensor1(p.alphas, device));
            l.set_planned(planned.then_some(at));
            Ok(())
        }
        (LayerMut::Norm(n), LayerPayload::Norm(p)) if p.channels == n.num_features() => {
            let entries = p.values.len() / (2 * p.channels);
            if entries != n.entry_count() {
                return Err(format!(
                    "{entries} BatchNorm entries, the model has {}",
                    n.entry_count()
                ));
            }
            let folded = (0..entries)
                .map(|i| {
                    let (scale, bias) = p.entry(i);
                    (tensor1(scale, device), tensor1(bias, device))
                })
                .collect();
            n.deploy(folded);
            n.set_planned(planned.then_some(at.entry));
            Ok(())
        }
        _ => Err("a layer of another kind or size".into()),
    }
}

fn tensor1(values: &[f32], device: &Device) -> Tensor<1> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
}

/// A quantized layer's weight at `bitw` (with its scale if the layer rescales): `ŵ = 2·Q − 1`
/// from the codes, the same operations as the fake quantizer.
fn decode<const D: usize>(
    part: &QuantPayload<'_>,
    dims: [usize; D],
    bitw: BitWidth,
    scheme: QuantScheme,
    rescale: bool,
    device: &Device,
) -> Result<QuantizedWeight<D>, String> {
    let count: usize = dims.iter().product();
    if count != part.plan.count {
        return Err(format!(
            "{} weights, the model's layer has {count}",
            part.plan.count
        ));
    }
    let missing = || format!("no codes for {} bits", bitw.get());
    let k = part.codes(bitw.get()).ok_or_else(missing)?;
    let scale = part.scale(bitw.get()).ok_or_else(missing)?;
    let k: Vec<i64> = k.into_iter().map(i64::from).collect();
    let codes = Tensor::<1, Int>::from_data(TensorData::new(k, [count]), device);
    let w_hat = codes_to_unit(codes, bitw, scheme)
        .mul_scalar(2.0)
        .sub_scalar(1.0);
    Ok(QuantizedWeight {
        w_hat: w_hat.reshape(dims),
        scale: rescale.then(|| tensor1(&[scale], device)),
    })
}
