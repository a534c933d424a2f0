//! Deployment: one low-bit artifact (`.abq`) for every bit-width of a model, and the runtime
//! that runs it at any of them, switching without reading the file again.
//!
//! The artifact is a SafeTensors file with two tensors and a JSON header in its metadata
//! (docs/artifact.md has the byte layout):
//!
//! - `codes` (`U8`): the integer weight codes of every quantized layer, packed at the layer's
//!   highest weight bit-width. For the modified and centered schemes every lower bit-width's
//!   codes are these shifted right (the bit-shift property, METHOD.md §2), so one set serves
//!   all; for the original scheme, where the shift is not exact, each weight bit-width's codes
//!   are stored.
//! - `scalars` (`F32`): per layer, the SAT scale of each weight bit-width, the bias, the
//!   clipping levels of every bit-width; per BatchNorm, every bit-width's statistics and affine
//!   folded into a per-channel scale and bias.
//! - metadata `adabits`: an [`ArtifactHeader`] (format, version, model configuration, a table
//!   per bit-width, sizes and the CRC-32 of the payload).
//!
//! [`Runtime`] rebuilds the model from the header, decodes the codes of the chosen bit-width
//! into its layers (a shift and a scale per weight) and runs it: the same arithmetic as the
//! fake-quantized model's evaluation, so both give the same logits.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use adabits_quant::{
    BitWidth, QuantMode, QuantScheme, QuantizedWeight, codes_to_unit, conv_fan_out, linear_fan_out,
    quantize_weight, weight_codes,
};
use burn::module::Param;
use burn::tensor::{Device, Int, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::checkpoint::write_atomically;
use crate::import::{LayerMut, OfficialLayout};
use crate::profile::{Accounting, cost};
use crate::zoo::{Model, ModelConfig};

/// The `format` of every artifact's header.
pub const ARTIFACT_FORMAT: &str = "adabits-abq";
/// The artifact format version this build writes and reads.
pub const ARTIFACT_VERSION: u32 = 1;
/// The metadata key that holds the header.
const HEADER_KEY: &str = "adabits";

/// One bit-width's row of the artifact's table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BitRow {
    /// The bit-width.
    pub bits: u8,
    /// Validation top-1 (%) where known (from the run's last evaluation).
    pub top1: Option<f64>,
    /// GBitOPs per image (official accounting).
    pub gbitops: f64,
    /// Model size in bytes at this bit-width (official accounting).
    pub model_bytes: f64,
}

/// The artifact's header (the SafeTensors metadata `adabits`, as JSON).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ArtifactHeader {
    /// Always [`ARTIFACT_FORMAT`].
    pub format: String,
    /// The format version ([`ARTIFACT_VERSION`] when written by this build).
    pub version: u32,
    /// The model, as it was trained.
    pub model: ModelConfig,
    /// One row per bit-width, in the model's order.
    pub table: Vec<BitRow>,
    /// Bytes of packed codes.
    pub code_bytes: u64,
    /// Number of `f32` scalars.
    pub scalar_count: u64,
    /// The number of quantized weights.
    pub weights: u64,
    /// CRC-32 (IEEE) of the packed codes followed by the scalars' little-endian bytes.
    pub crc32: u32,
    /// Where the weights came from (a run directory or checkpoint), if known.
    pub source: Option<String>,
}

impl ArtifactHeader {
    /// The ideal size: the codes at their bit-widths (`weights × bits / 8`) plus 4 bytes per
    /// scalar.
    pub fn ideal_bytes(&self) -> u64 {
        self.code_bytes + 4 * self.scalar_count
    }
}

/// What can go wrong with an artifact.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Not a SafeTensors file, or a damaged or truncated one.
    #[error("{path}: not a readable artifact: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A SafeTensors file without an adabits header, or with another format.
    #[error("{path}: the metadata field `{field}`: expected {expected}, found {found}")]
    Header {
        /// The file.
        path: PathBuf,
        /// The field.
        field: String,
        /// What was expected.
        expected: String,
        /// What was found.
        found: String,
    },
    /// A version this build cannot read.
    #[error(
        "{path}: artifact format version {found}, this build reads version {expected}; re-export the artifact with this version of adabits"
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// The version this build reads.
        expected: u32,
        /// The file's version.
        found: u32,
    },
    /// A tensor the format requires is missing, or has the wrong type or size.
    #[error("{path}: tensor `{name}`: expected {expected}, found {found}")]
    Tensor {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// What was expected.
        expected: String,
        /// What was found.
        found: String,
    },
    /// The payload does not match its checksum: the file is corrupted.
    #[error(
        "{path}: checksum mismatch: the header says CRC-32 {expected:08x}, the payload has {found:08x}; the file is corrupted"
    )]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The header's CRC-32.
        expected: u32,
        /// The payload's CRC-32.
        found: u32,
    },
    /// The model cannot be exported, or the payload does not fit the model.
    #[error("{0}")]
    Layout(String),
    /// A bit-width the artifact does not hold.
    #[error("{bits} bits is not one of the artifact's bit-widths ({list})")]
    UnknownBits {
        /// The bit-width asked for.
        bits: u8,
        /// The artifact's bit-widths.
        list: String,
    },
}

/// A deployment artifact in memory.
#[derive(Clone, Debug)]
pub struct Artifact {
    /// The header.
    pub header: ArtifactHeader,
    codes: Vec<u8>,
    scalars: Vec<f32>,
}

/// How one quantized layer's weights are stored.
#[derive(Clone, Debug)]
struct WeightPlan {
    /// The distinct weight bit-widths the layer resolves to over the model's list, highest first.
    stored: Vec<BitWidth>,
    /// Whether lower bit-widths are derived by a shift (else each has its own codes).
    shift: bool,
    /// Number of weights.
    count: usize,
}

impl WeightPlan {
    fn new(model: &ModelConfig, policy: adabits_quant::BitPolicy, count: usize) -> Self {
        let mut stored: Vec<BitWidth> = model.bits.iter().map(|b| policy.resolve(b).bitw).collect();
        stored.sort_unstable_by(|a, b| b.cmp(a));
        stored.dedup();
        Self {
            stored,
            shift: model.quant.weight_scheme.has_shift_property(),
            count,
        }
    }

    /// The bit-widths whose codes are in the file.
    fn code_sets(&self) -> &[BitWidth] {
        if self.shift {
            &self.stored[..1]
        } else {
            &self.stored
        }
    }
}

fn packed_len(count: usize, bits: u8) -> usize {
    (count * usize::from(bits)).div_ceil(8)
}

/// Packs `codes` (each below `2^bits`) least-significant bit first.
fn pack(codes: &[u32], bits: u8, out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + packed_len(codes.len(), bits), 0);
    let bytes = &mut out[start..];
    let mut bit = 0usize;
    for &code in codes {
        for j in 0..usize::from(bits) {
            if code >> j & 1 == 1 {
                bytes[(bit + j) / 8] |= 1 << ((bit + j) % 8);
            }
        }
        bit += usize::from(bits);
    }
}

/// The inverse of [`pack`].
fn unpack(bytes: &[u8], count: usize, bits: u8) -> Vec<u32> {
    let mut out = Vec::with_capacity(count);
    let mut bit = 0usize;
    for _ in 0..count {
        let mut code = 0u32;
        for j in 0..usize::from(bits) {
            if bytes[(bit + j) / 8] >> ((bit + j) % 8) & 1 == 1 {
                code |= 1 << j;
            }
        }
        out.push(code);
        bit += usize::from(bits);
    }
    out
}

/// CRC-32 (IEEE 802.3, reflected, as zlib and PNG compute it).
fn crc32(chunks: &[&[u8]]) -> u32 {
    let mut table = [0u32; 256];
    for (i, slot) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 == 1 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *slot = c;
    }
    let mut crc = !0u32;
    for chunk in chunks {
        for &b in *chunk {
            crc = table[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
        }
    }
    !crc
}

fn floats<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

fn scalar_bytes(scalars: &[f32]) -> Vec<u8> {
    scalars.iter().flat_map(|v| v.to_le_bytes()).collect()
}

impl Artifact {
    /// Exports `model` (built from `config`, on any device): its codes at each layer's highest
    /// weight bit-width, its scales, biases, clipping levels and folded BatchNorms, with a table
    /// of the cost of every bit-width for `input`×`input` images and the accuracies in `top1`
    /// (by bit-width) where known.
    ///
    /// # Errors
    ///
    /// [`ArtifactError::Layout`] when the model's list holds 32 bits (a full-precision model is
    /// not a low-bit artifact).
    pub fn from_model(
        model: &Model,
        config: &ModelConfig,
        input: usize,
        top1: &HashMap<u8, f64>,
        source: Option<String>,
    ) -> Result<Self, ArtifactError> {
        if config.bits.iter().any(BitWidth::is_full_precision) {
            return Err(ArtifactError::Layout(format!(
                "the model's bit-widths {} include 32: an artifact holds low-bit codes only; train without 32 or keep the checkpoint",
                config.bits
            )));
        }
        let mut codes = Vec::new();
        let mut scalars = Vec::new();
        let mut weights = 0u64;
        let mut model = model.clone();
        let mut layer_out = Exported {
            config,
            codes: &mut codes,
            scalars: &mut scalars,
            weights: &mut weights,
        };
        model.visit_official(&mut |_, layer| match layer {
            LayerMut::Conv(c) => {
                let w = c.weight.val();
                let fan_out = conv_fan_out(w.dims());
                layer_out.layer(
                    w,
                    fan_out,
                    c.policy(),
                    c.weight_quant(),
                    c.bias.as_ref().map(Param::val),
                    c.alpha.alpha.val(),
                );
            }
            LayerMut::Linear(l) => {
                let w = l.weight.val();
                let fan_out = linear_fan_out(w.dims());
                layer_out.layer(
                    w,
                    fan_out,
                    l.policy(),
                    l.weight_quant(),
                    l.bias.as_ref().map(Param::val),
                    l.alpha.alpha.val(),
                );
            }
            LayerMut::Norm(n) => {
                for i in 0..n.entry_count() {
                    let (scale, bias) = n.folded_entry(i);
                    layer_out.scalars.extend(floats(scale));
                    layer_out.scalars.extend(floats(bias));
                }
            }
        });
        let shapes = model.layer_shapes([input, input]);
        let table = config
            .bits
            .iter()
            .map(|b| {
                let c = cost(&shapes, b, Accounting::Official);
                BitRow {
                    bits: b.get(),
                    top1: top1.get(&b.get()).copied(),
                    gbitops: c.gbitops,
                    model_bytes: c.size_mb * 1e6,
                }
            })
            .collect();
        let crc = crc32(&[&codes, &scalar_bytes(&scalars)]);
        Ok(Self {
            header: ArtifactHeader {
                format: ARTIFACT_FORMAT.into(),
                version: ARTIFACT_VERSION,
                model: config.clone(),
                table,
                code_bytes: codes.len() as u64,
                scalar_count: scalars.len() as u64,
                weights,
                crc32: crc,
                source,
            },
            codes,
            scalars,
        })
    }

    /// The artifact as SafeTensors bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let scalar_bytes = scalar_bytes(&self.scalars);
        let header = serde_json::to_string(&self.header).expect("the header serialises");
        let metadata = HashMap::from([(HEADER_KEY.to_string(), header)]);
        let views = [
            (
                "codes",
                safetensors::tensor::TensorView::new(
                    Dtype::U8,
                    vec![self.codes.len()],
                    &self.codes,
                )
                .expect("the codes tensor is consistent"),
            ),
            (
                "scalars",
                safetensors::tensor::TensorView::new(
                    Dtype::F32,
                    vec![self.scalars.len()],
                    &scalar_bytes,
                )
                .expect("the scalars tensor is consistent"),
            ),
        ];
        safetensors::serialize(views, Some(metadata)).expect("serialising two tensors succeeds")
    }

    /// Writes the artifact to `path` atomically (a temporary file, then a rename) and returns
    /// its size in bytes.
    ///
    /// # Errors
    ///
    /// [`ArtifactError::Io`]; an existing file at `path` is then left as it was.
    pub fn write(&self, path: &Path) -> Result<u64, ArtifactError> {
        let bytes = self.to_bytes();
        write_atomically(path, &bytes).map_err(|source| ArtifactError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(bytes.len() as u64)
    }

    /// Reads and checks an artifact file.
    ///
    /// # Errors
    ///
    /// Every [`ArtifactError`] but `Layout` and `UnknownBits`, naming the file.
    pub fn read(path: &Path) -> Result<Self, ArtifactError> {
        let bytes = std::fs::read(path).map_err(|source| ArtifactError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses and checks artifact bytes; `path` names them in errors.
    ///
    /// # Errors
    ///
    /// As [`read`](Self::read).
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, ArtifactError> {
        let path = path.to_path_buf();
        let format = |reason: String| ArtifactError::Format {
            path: path.clone(),
            reason,
        };
        let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| format(e.to_string()))?;
        let tensors = SafeTensors::deserialize(bytes).map_err(|e| format(e.to_string()))?;
        let header_field = |expected: &str, found: &str| ArtifactError::Header {
            path: path.clone(),
            field: HEADER_KEY.into(),
            expected: expected.into(),
            found: found.into(),
        };
        let text = metadata
            .metadata()
            .as_ref()
            .and_then(|m| m.get(HEADER_KEY))
            .ok_or_else(|| {
                header_field(
                    "the adabits header (a SafeTensors file written by `adabits export`)",
                    "no such field",
                )
            })?;
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| header_field("a JSON object", &format!("unreadable JSON ({e})")))?;
        let found_format = value["format"].as_str().unwrap_or("nothing");
        if found_format != ARTIFACT_FORMAT {
            return Err(ArtifactError::Header {
                path: path.clone(),
                field: "adabits.format".into(),
                expected: format!("{ARTIFACT_FORMAT:?}"),
                found: format!("{found_format:?}"),
            });
        }
        let version = value["version"].as_u64().unwrap_or(0);
        if version != u64::from(ARTIFACT_VERSION) {
            return Err(ArtifactError::Version {
                path: path.clone(),
                expected: ARTIFACT_VERSION,
                found: u32::try_from(version).unwrap_or(u32::MAX),
            });
        }
        let header: ArtifactHeader = serde_json::from_value(value)
            .map_err(|e| header_field("a version-1 header", &e.to_string()))?;
        let tensor = |name: &str, dtype: Dtype, len: u64| -> Result<Vec<u8>, ArtifactError> {
            let bad = |found: String| ArtifactError::Tensor {
                path: path.clone(),
                name: name.into(),
                expected: format!("{dtype:?} of {len} elements"),
                found,
            };
            let view = tensors
                .tensor(name)
                .map_err(|_| bad("no such tensor".into()))?;
            let elements: usize = view.shape().iter().product();
            if view.dtype() != dtype || elements as u64 != len {
                return Err(bad(format!("{:?} of {elements} elements", view.dtype())));
            }
            Ok(view.data().to_vec())
        };
        let codes = tensor("codes", Dtype::U8, header.code_bytes)?;
        let scalar_bytes = tensor("scalars", Dtype::F32, header.scalar_count)?;
        let found = crc32(&[&codes, &scalar_bytes]);
        if found != header.crc32 {
            return Err(ArtifactError::Checksum {
                path,
                expected: header.crc32,
                found,
            });
        }
        let scalars = scalar_bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Self {
            header,
            codes,
            scalars,
        })
    }

    /// The bit-widths of the artifact, in the model's order.
    pub fn bits(&self) -> Vec<u8> {
        self.header.table.iter().map(|r| r.bits).collect()
    }
}

/// Where [`Artifact::from_model`] appends each layer.
struct Exported<'a> {
    config: &'a ModelConfig,
    codes: &'a mut Vec<u8>,
    scalars: &'a mut Vec<f32>,
    weights: &'a mut u64,
}

impl Exported<'_> {
    /// Appends one quantized layer: its codes, the scale of each of its weight bit-widths, its
    /// bias and its clipping levels.
    fn layer<const D: usize>(
        &mut self,
        w: Tensor<D>,
        fan_out: usize,
        policy: adabits_quant::BitPolicy,
        quant: &adabits_quant::WeightQuantConfig,
        bias: Option<Tensor<1>>,
        alpha: Tensor<1>,
    ) {
        let plan = WeightPlan::new(self.config, policy, w.dims().iter().product());
        *self.weights += plan.count as u64;
        for &bits in plan.code_sets() {
            let k: Vec<u32> = weight_codes(w.clone(), bits, self.config.quant.weight_scheme)
                .into_data()
                .iter::<i64>()
                .map(|k| k as u32)
                .collect();
            pack(&k, bits.get(), self.codes);
        }
        for &bits in &plan.stored {
            let q = quantize_weight(w.clone(), bits, fan_out, quant);
            self.scalars.push(q.scale.map_or(1.0, |s| floats(s)[0]));
        }
        if let Some(b) = bias {
            self.scalars.extend(floats(b));
        }
        self.scalars.extend(floats(alpha));
    }
}

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

/// A copy of `model` (built from `config`) whose bit-width list gains `bits` at its end: every
/// BatchNorm entry and clipping level of the new bit-width is copied from the nearest trained
/// bit-width (the higher one on a tie), ready for BatchNorm calibration. Returns the model and
/// its configuration.
///
/// # Errors
///
/// A message when `bits` is already in the list or the list cannot hold it.
pub fn with_added_bits(
    model: &Model,
    config: &ModelConfig,
    bits: BitWidth,
    device: &Device,
) -> Result<(Model, ModelConfig), String> {
    let list: Vec<BitWidth> = config.bits.iter().collect();
    if list.contains(&bits) {
        return Err(format!("{bits} bits is already one of {}", config.bits));
    }
    let nearest = (0..list.len())
        .min_by_key(|&i| {
            let d = i32::from(list[i].get()) - i32::from(bits.get());
            (d.abs(), -d)
        })
        .unwrap_or(0);
    let n = list.len();
    let mut dict = crate::import::export_official(model);
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
    let bits_list = adabits_quant::BitWidths::new(extended).map_err(|e| e.to_string())?;
    let mut new_config = config.clone();
    new_config.bits = bits_list;
    let (model, _) = crate::import::import_official(
        new_config.init(device),
        &dict,
        crate::import::ImportMode::Adaptive,
    )
    .map_err(|e| e.to_string())?;
    Ok((model, new_config))
}

/// What [`select`] may not exceed or fall below.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Budget {
    /// Largest model size in bytes.
    pub max_bytes: Option<f64>,
    /// Largest GBitOPs per image.
    pub max_gbitops: Option<f64>,
    /// Lowest top-1 (%).
    pub min_top1: Option<f64>,
}

/// The answer of [`select`].
#[derive(Clone, Debug, PartialEq)]
pub struct Selection {
    /// The chosen row, if any bit-width fits.
    pub chosen: Option<BitRow>,
    /// Why, in a sentence per bit-width.
    pub reasons: Vec<String>,
}

/// Picks the bit-width of `table` that fits `budget`: among the rows within every limit, the
/// most accurate one (where accuracies are known), else the cheapest one that meets an
/// accuracy floor, else the highest bit-width.
pub fn select(table: &[BitRow], budget: &Budget) -> Selection {
    let mut reasons = Vec::new();
    let mut fits = Vec::new();
    for row in table {
        let mut why = Vec::new();
        if let Some(max) = budget.max_bytes
            && row.model_bytes > max
        {
            why.push(format!("{:.0} bytes > {max:.0}", row.model_bytes));
        }
        if let Some(max) = budget.max_gbitops
            && row.gbitops > max
        {
            why.push(format!("{:.4} GBitOPs > {max}", row.gbitops));
        }
        if let Some(min) = budget.min_top1 {
            match row.top1 {
                Some(t) if t < min => why.push(format!("top-1 {t:.1} % < {min} %")),
                None => why.push("no known accuracy".into()),
                _ => {}
            }
        }
        if why.is_empty() {
            reasons.push(format!("{} bits: fits", row.bits));
            fits.push(row.clone());
        } else {
            reasons.push(format!("{} bits: {}", row.bits, why.join(", ")));
        }
    }
    // With an accuracy floor and no size limit: the cheapest that meets it. Otherwise the most
    // accurate within the limits (ties and unknown accuracies: the higher bit-width).
    let chosen = if budget.min_top1.is_some()
        && budget.max_bytes.is_none()
        && budget.max_gbitops.is_none()
    {
        fits.into_iter()
            .min_by(|a, b| a.gbitops.total_cmp(&b.gbitops))
    } else {
        fits.into_iter().max_by(|a, b| {
            let key = |r: &BitRow| (r.top1.unwrap_or(f64::NEG_INFINITY), r.bits);
            let (ka, kb) = (key(a), key(b));
            ka.0.total_cmp(&kb.0).then(ka.1.cmp(&kb.1))
        })
    };
    Selection { chosen, reasons }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_pack_and_unpack_at_every_width() {
        for bits in 1..=8u8 {
            let codes: Vec<u32> = (0..37).map(|i| (i * 5 + 3) % (1 << bits)).collect();
            let mut bytes = vec![0xAA];
            pack(&codes, bits, &mut bytes);
            assert_eq!(bytes.len(), 1 + (37 * bits as usize).div_ceil(8));
            assert_eq!(unpack(&bytes[1..], 37, bits), codes, "{bits} bits");
        }
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        // The CRC-32 check value of "123456789".
        assert_eq!(crc32(&[b"1234", b"56789"]), 0xCBF4_3926);
    }

    #[test]
    fn selection_respects_every_limit_and_says_why() {
        let row = |bits, top1, gbitops, bytes| BitRow {
            bits,
            top1: Some(top1),
            gbitops,
            model_bytes: bytes,
        };
        let table = [
            row(8, 70.0, 38.5, 4200.0),
            row(6, 70.2, 22.9, 3400.0),
            row(5, 69.0, 16.8, 3000.0),
            row(4, 66.0, 11.8, 2600.0),
        ];
        let pick = |b: Budget| select(&table, &b).chosen.map(|r| r.bits);
        assert_eq!(pick(Budget::default()), Some(6));
        let by_size = Budget {
            max_bytes: Some(3100.0),
            ..Budget::default()
        };
        assert_eq!(pick(by_size), Some(5));
        let s = select(&table, &by_size);
        assert_eq!(s.reasons[0], "8 bits: 4200 bytes > 3100");
        assert_eq!(s.reasons[2], "5 bits: fits");
        let floor = Budget {
            min_top1: Some(68.5),
            ..Budget::default()
        };
        assert_eq!(pick(floor), Some(5));
        let impossible = Budget {
            max_gbitops: Some(10.0),
            ..Budget::default()
        };
        assert_eq!(pick(impossible), None);
    }
}
