//! Export: a model's codes, scales, biases, clipping levels and folded BatchNorms into an
//! [`Artifact`].

use std::collections::HashMap;

use adabits_quant::{BitWidth, conv_fan_out, linear_fan_out, quantize_weight, weight_codes};
use burn::module::Param;
use burn::tensor::Tensor;

use super::format::{
    ARTIFACT_FORMAT, ARTIFACT_VERSION, Artifact, ArtifactError, ArtifactHeader, BitRow, WeightPlan,
    pack, scalar_bytes,
};
use crate::layout::{LayerMut, OfficialLayout};
use crate::profile::{Accounting, cost};
use crate::zoo::{Model, ModelConfig};

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
        let mut header = ArtifactHeader {
            format: ARTIFACT_FORMAT.into(),
            version: ARTIFACT_VERSION,
            model: config.clone(),
            table,
            code_bytes: codes.len() as u64,
            scalar_count: scalars.len() as u64,
            weights,
            crc32: 0,
            source,
        };
        header.crc32 = header.checksum(&codes, &scalar_bytes(&scalars));
        Ok(Self {
            header,
            codes,
            scalars,
        })
    }
}

pub(super) fn floats<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
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
