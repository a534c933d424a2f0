//! The runtime: an artifact's model at any of its bit-widths, switched from the codes in memory.

use adabits_quant::{BitWidth, QuantMode, QuantScheme, QuantizedWeight, codes_to_unit};
use burn::module::Param;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::format::{Artifact, ArtifactError, WeightPlan, packed_len, unpack};
use crate::layout::{LayerMut, OfficialLayout};
use crate::zoo::{Model, ModelConfig};

/// Reads a layer's scalars and codes in file order.
struct Cursor<'a> {
    codes: &'a [u8],
    scalars: &'a [f32],
}

impl Cursor<'_> {
    fn take_codes(&mut self, count: usize, bits: BitWidth) -> Result<Vec<u32>, ArtifactError> {
        let len = packed_len(count, bits.get());
        if self.codes.len() < len {
            return Err(short("codes"));
        }
        let (head, rest) = self.codes.split_at(len);
        self.codes = rest;
        Ok(unpack(head, count, bits.get()))
    }

    fn take(&mut self, count: usize) -> Result<Vec<f32>, ArtifactError> {
        if self.scalars.len() < count {
            return Err(short("scalars"));
        }
        let (head, rest) = self.scalars.split_at(count);
        self.scalars = rest;
        Ok(head.to_vec())
    }
}

fn short(what: &str) -> ArtifactError {
    ArtifactError::Layout(format!(
        "the artifact's {what} end before the model's layers do: it was exported from another model than its header describes"
    ))
}

/// Runs an artifact at any of its bit-widths.
#[derive(Debug)]
pub struct Runtime {
    artifact: Artifact,
    template: Model,
    model: Model,
    bits: BitWidth,
    device: Device,
}

impl Runtime {
    /// Builds the model the artifact describes on `device` and loads its highest bit-width.
    ///
    /// # Errors
    ///
    /// [`ArtifactError::Layout`] when the payload does not fit the model.
    pub fn new(artifact: Artifact, device: &Device) -> Result<Self, ArtifactError> {
        let template = artifact.header.model.init(device);
        let top = artifact.header.model.bits.max();
        let model = template.clone();
        let mut runtime = Self {
            artifact,
            template,
            model,
            bits: top,
            device: device.clone(),
        };
        runtime.set_bits(top)?;
        Ok(runtime)
    }

    /// The artifact.
    pub fn artifact(&self) -> &Artifact {
        &self.artifact
    }

    /// The active bit-width.
    pub fn bits(&self) -> BitWidth {
        self.bits
    }

    /// Switches to `bits`: decodes that bit-width's weights from the codes in memory (a right
    /// shift and a scale per weight) and loads its clipping levels and folded BatchNorms.
    ///
    /// # Errors
    ///
    /// [`ArtifactError::UnknownBits`] for a bit-width the artifact does not hold;
    /// [`ArtifactError::Layout`] when the payload does not fit the model.
    pub fn set_bits(&mut self, bits: BitWidth) -> Result<(), ArtifactError> {
        let config = &self.artifact.header.model;
        if config.bits.position(bits).is_none() {
            return Err(ArtifactError::UnknownBits {
                bits: bits.get(),
                list: config.bits.to_string(),
            });
        }
        let linear_eval = config.quant.linear_eval;
        let mut cursor = Cursor {
            codes: &self.artifact.codes,
            scalars: &self.artifact.scalars,
        };
        let mut model = self.template.clone();
        let device = &self.device;
        let mut failure = None;
        model.visit_official(&mut |name, layer| {
            if failure.is_some() {
                return;
            }
            let result = match layer {
                LayerMut::Conv(c) => {
                    let spec = LayerSpec {
                        policy: c.policy(),
                        rescale: c.weight_quant().rescale,
                        bias: c.bias.is_some(),
                        alpha: c.alpha.alpha.dims()[0],
                    };
                    decode_layer(&mut cursor, config, &spec, c.weight.dims(), bits, device).map(
                        |(q, bias, alpha)| {
                            c.deploy(q.effective(), bias);
                            c.alpha.alpha = Param::from_tensor(alpha);
                        },
                    )
                }
                LayerMut::Linear(l) => {
                    let spec = LayerSpec {
                        policy: l.policy(),
                        rescale: l.weight_quant().rescale,
                        bias: l.bias.is_some(),
                        alpha: l.alpha.alpha.dims()[0],
                    };
                    decode_layer(&mut cursor, config, &spec, l.weight.dims(), bits, device).map(
                        |(q, bias, alpha)| {
                            let (w, b) = q.linear_params(bias, QuantMode::Eval, linear_eval);
                            l.deploy(w, b);
                            l.alpha.alpha = Param::from_tensor(alpha);
                        },
                    )
                }
                LayerMut::Norm(n) => {
                    let c = n.num_features();
                    (0..n.entry_count())
                        .map(|_| {
                            let scale = cursor.take(c)?;
                            let bias = cursor.take(c)?;
                            Ok((tensor1(&scale, device), tensor1(&bias, device)))
                        })
                        .collect::<Result<Vec<_>, ArtifactError>>()
                        .map(|folded| n.deploy(folded))
                }
            };
            if let Err(e) = result {
                failure = Some(ArtifactError::Layout(format!("layer `{name}`: {e}")));
            }
        });
        if let Some(e) = failure {
            return Err(e);
        }
        if !cursor.codes.is_empty() || !cursor.scalars.is_empty() {
            return Err(ArtifactError::Layout(format!(
                "{} bytes of codes and {} scalars are left over after the model's last layer: the payload was exported from another model than its header describes",
                cursor.codes.len(),
                cursor.scalars.len()
            )));
        }
        self.model = model;
        self.bits = bits;
        Ok(())
    }

    /// The logits of `images` at the active bit-width (the model's input transform applies).
    ///
    /// # Shapes
    ///
    /// `images`: `[batch, 3, h, w]`; output `[batch, classes]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.model.forward(images, self.bits)
    }
}

fn tensor1(values: &[f32], device: &Device) -> Tensor<1> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
}

/// What the decoder needs to know of a quantized layer.
struct LayerSpec {
    policy: adabits_quant::BitPolicy,
    rescale: bool,
    bias: bool,
    alpha: usize,
}

/// A quantized layer's weight at `bits` (with its scale if the layer rescales), bias and
/// clipping levels, read from the cursor.
#[allow(clippy::type_complexity)]
fn decode_layer<const D: usize>(
    cursor: &mut Cursor<'_>,
    config: &ModelConfig,
    spec: &LayerSpec,
    dims: [usize; D],
    bits: BitWidth,
    device: &Device,
) -> Result<(QuantizedWeight<D>, Option<Tensor<1>>, Tensor<1>), ArtifactError> {
    let plan = WeightPlan::new(config, spec.policy, dims.iter().product());
    let bitw = spec.policy.resolve(bits).bitw;
    let (w_hat, scale) = decode_weight(cursor, &plan, bitw, config.quant.weight_scheme, device)?;
    let bias = if spec.bias {
        Some(tensor1(&cursor.take(dims[0])?, device))
    } else {
        None
    };
    let alpha = tensor1(&cursor.take(spec.alpha)?, device);
    let q = QuantizedWeight {
        w_hat: w_hat.reshape(dims),
        scale: spec.rescale.then(|| tensor1(&[scale], device)),
    };
    Ok((q, bias, alpha))
}

/// Reads a layer's codes and scales and returns `ŵ` (flat) and the scale of weight bit-width
/// `bitw`.
fn decode_weight(
    cursor: &mut Cursor<'_>,
    plan: &WeightPlan,
    bitw: BitWidth,
    scheme: QuantScheme,
    device: &Device,
) -> Result<(Tensor<1>, f32), ArtifactError> {
    let mut chosen = None;
    for &stored in plan.code_sets() {
        let k = cursor.take_codes(plan.count, stored)?;
        if plan.shift && stored != bitw {
            let shift = stored.get() - bitw.get();
            chosen = Some(k.into_iter().map(|k| k >> shift).collect::<Vec<_>>());
        } else if stored == bitw {
            chosen = Some(k);
        }
    }
    let scales = cursor.take(plan.stored.len())?;
    let position = plan
        .stored
        .iter()
        .position(|&b| b == bitw)
        .ok_or_else(|| ArtifactError::Layout(format!("no codes for {} bits", bitw.get())))?;
    let k =
        chosen.ok_or_else(|| ArtifactError::Layout(format!("no codes for {} bits", bitw.get())))?;
    let k: Vec<i64> = k.into_iter().map(i64::from).collect();
    let codes = Tensor::<1, Int>::from_data(TensorData::new(k, [plan.count]), device);
    // The same operations as the fake quantizer: ŵ = 2·Q_b − 1.
    let w_hat = codes_to_unit(codes, bitw, scheme)
        .mul_scalar(2.0)
        .sub_scalar(1.0);
    Ok((w_hat, scales[position]))
}
