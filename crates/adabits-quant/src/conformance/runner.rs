//! Runs each case's operation on a device and compares its outputs and gradients.

use std::collections::BTreeMap;

use burn::tensor::{Device, Int, Tensor, TensorData};
use serde_json::Value;

use super::{Case, CaseReport, Check, TensorSpec, TestVectors, Tolerance};
use crate::{
    ActQuantConfig, BitPolicy, BitWidth, BitWidths, ClippingLevelsConfig, LinearEval, QuantError,
    QuantMode, QuantScheme, RescaleType, WeightQuantConfig, conv_fan_out, input_pixels,
    linear_fan_out, pact, quantize_weight, quantize_weight_traced, shift_codes, unit_codes,
    unit_quantize, weight_codes,
};

/// Runs one case on `device` (gradients are computed on `device.autodiff()`).
pub fn run_case(case: &Case, device: &Device) -> CaseReport {
    let mut runner = Runner {
        case,
        device: device.clone().autodiff(),
        checks: Vec::new(),
    };
    let error = runner.run().err();
    CaseReport {
        name: case.name.clone(),
        checks: runner.checks,
        error,
    }
}

/// Runs every case on `device`.
pub fn run_all(vectors: &TestVectors, device: &Device) -> Vec<CaseReport> {
    vectors.cases.iter().map(|c| run_case(c, device)).collect()
}

struct Runner<'a> {
    case: &'a Case,
    device: Device,
    checks: Vec<Check>,
}

type RunResult = Result<(), String>;

impl Runner<'_> {
    fn run(&mut self) -> RunResult {
        match self.case.op.as_str() {
            "q_k" => self.q_k(),
            "weight_quant" => self.weight_quant(),
            "pact" => self.pact(),
            "qlinear" => self.qlinear(),
            "input_pixels" => self.input_pixels(),
            "bit_codes" => self.bit_codes(),
            "joint_step_qlinear" => self.joint_step_qlinear(),
            other => Err(format!("unknown op {other:?}")),
        }
    }

    // ----- configuration and tensor access -------------------------------------------------

    fn config_value(&self, key: &str) -> Option<&Value> {
        self.case.config.get(key).filter(|v| !v.is_null())
    }

    fn config_bits(&self, key: &str) -> Result<BitWidth, String> {
        let value = self
            .config_value(key)
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("config field `{key}`: expected a bit-width"))?;
        u8::try_from(value)
            .map_err(|_| format!("config field `{key}`: {value} is out of range"))
            .and_then(|b| BitWidth::new(b).map_err(|e| e.to_string()))
    }

    fn config_opt_bits(&self, key: &str) -> Result<Option<BitWidth>, String> {
        match self.config_value(key) {
            None => Ok(None),
            Some(_) => self.config_bits(key).map(Some),
        }
    }

    fn config_bool(&self, key: &str, default: bool) -> Result<bool, String> {
        match self.config_value(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| format!("config field `{key}`: expected a boolean, found {v}")),
        }
    }

    fn config_scheme(&self, key: &str, default: QuantScheme) -> Result<QuantScheme, String> {
        match self.config_value(key) {
            None => Ok(default),
            Some(v) => v
                .as_str()
                .ok_or_else(|| format!("config field `{key}`: expected a string, found {v}"))?
                .parse()
                .map_err(|e: QuantError| format!("config field `{key}`: {e}")),
        }
    }

    fn weight_config(&self) -> Result<WeightQuantConfig, String> {
        let rescale_type = match self.config_value("rescale_type").and_then(Value::as_str) {
            None | Some("constant") => RescaleType::Constant,
            Some("stddev") => RescaleType::Stddev,
            Some(other) => return Err(format!("config field `rescale_type`: unknown {other:?}")),
        };
        Ok(WeightQuantConfig::new()
            .with_scheme(self.config_scheme("weight_quant_scheme", QuantScheme::Modified)?)
            .with_clamp(self.config_bool("clamp", true)?)
            .with_rescale(self.config_bool("rescale", true)?)
            .with_rescale_type(rescale_type)
            .with_linear_eval(LinearEval::Official))
    }

    fn act_config(&self) -> Result<ActQuantConfig, String> {
        Ok(ActQuantConfig::new()
            .with_scheme(self.config_scheme("act_quant_scheme", QuantScheme::Original)?)
            .with_double_sided(self.config_bool("double_side", false)?)
            .with_pact_fp(self.config_bool("pact_fp", false)?))
    }

    fn spec<'s>(
        map: &'s BTreeMap<String, TensorSpec>,
        kind: &str,
        name: &str,
    ) -> Result<&'s TensorSpec, String> {
        map.get(name)
            .ok_or_else(|| format!("missing {kind} tensor `{name}`"))
    }

    fn input<const D: usize>(&self, name: &str) -> Result<Tensor<D>, String> {
        let spec = Self::spec(&self.case.inputs, "input", name)?;
        self.tensor(spec, name)
    }

    fn upstream<const D: usize>(&self, name: &str) -> Result<Option<Tensor<D>>, String> {
        match self.case.upstream_gradients.get(name) {
            None => Ok(None),
            Some(spec) => self.tensor(spec, name).map(Some),
        }
    }

    /// Builds a rank-`D` tensor; a scalar (`shape: []`) becomes `[1]`.
    fn tensor<const D: usize>(&self, spec: &TensorSpec, name: &str) -> Result<Tensor<D>, String> {
        let shape: Vec<usize> = if spec.shape.is_empty() {
            vec![1]
        } else {
            spec.shape.clone()
        };
        if shape.len() != D {
            return Err(format!(
                "tensor `{name}`: expected rank {D}, found shape {:?}",
                spec.shape
            ));
        }
        let data: Vec<f32> = spec.data.iter().map(|&v| v as f32).collect();
        Ok(Tensor::from_data(
            TensorData::new(data, shape),
            &self.device,
        ))
    }

    // ----- comparisons ---------------------------------------------------------------------

    fn expect_output<const D: usize>(&mut self, name: &str, actual: Tensor<D>) -> RunResult {
        let spec = Self::spec(&self.case.expected_outputs, "expected output", name)?;
        self.compare(format!("output {name}"), spec, actual.into_data())
    }

    fn expect_output_if_present<const D: usize>(
        &mut self,
        name: &str,
        actual: Option<Tensor<D>>,
    ) -> RunResult {
        match (self.case.expected_outputs.get(name), actual) {
            (None, _) => Ok(()),
            (Some(_), Some(actual)) => self.expect_output(name, actual),
            (Some(_), None) => Err(format!("expected output `{name}` was not computed")),
        }
    }

    fn expect_int_output<const D: usize>(
        &mut self,
        name: &str,
        actual: Tensor<D, Int>,
    ) -> RunResult {
        let spec = Self::spec(&self.case.expected_outputs, "expected output", name)?;
        self.compare(format!("output {name}"), spec, actual.into_data())
    }

    fn expect_gradient<const D: usize>(
        &mut self,
        name: &str,
        actual: Option<Tensor<D>>,
    ) -> RunResult {
        let spec = Self::spec(&self.case.expected_gradients, "expected gradient", name)?;
        let actual = actual.ok_or_else(|| format!("no gradient reached `{name}`"))?;
        self.compare(format!("gradient {name}"), spec, actual.into_data())
    }

    fn compare(&mut self, what: String, expected: &TensorSpec, actual: TensorData) -> RunResult {
        let actual_shape = actual.shape().to_vec();
        let expected_shape: Vec<usize> = if expected.shape.is_empty() {
            vec![1]
        } else {
            expected.shape.clone()
        };
        if actual_shape != expected_shape {
            self.checks.push(Check {
                what,
                max_abs_error: f64::INFINITY,
                failure: Some(format!(
                    "shape {actual_shape:?}, expected {:?}",
                    expected.shape
                )),
            });
            return Ok(());
        }
        let values: Vec<f64> = actual.iter::<f64>().collect();
        let exact = expected.dtype == "int";
        let Tolerance { abs, rel } = self.case.tolerance;
        let mut max_abs_error: f64 = 0.0;
        let mut failure = None;
        for (i, (&a, &e)) in values.iter().zip(&expected.data).enumerate() {
            let err = (a - e).abs();
            max_abs_error = max_abs_error.max(if err.is_nan() { f64::INFINITY } else { err });
            let ok = if exact {
                a == e
            } else {
                err <= abs.max(rel * e.abs())
            };
            if !ok && failure.is_none() {
                failure = Some(format!(
                    "element {i}: got {a}, expected {e} (|error| {err:.3e}, allowed {:.1e})",
                    if exact { 0.0 } else { abs.max(rel * e.abs()) }
                ));
            }
        }
        self.checks.push(Check {
            what,
            max_abs_error,
            failure,
        });
        Ok(())
    }

    // ----- ops -----------------------------------------------------------------------------

    fn q_k(&mut self) -> RunResult {
        let bits = self.config_bits("bits")?;
        let scheme = self.config_scheme("scheme", QuantScheme::Modified)?;
        let u = self.input::<1>("u")?.require_grad();
        let q = unit_quantize(u.clone(), bits, scheme);
        self.expect_output("q", q.clone())?;
        if let Some(g) = self.upstream::<1>("q")? {
            let grads = (q * g).sum().backward();
            self.expect_gradient("u", u.grad(&grads))?;
        }
        Ok(())
    }

    fn weight_quant(&mut self) -> RunResult {
        let layer = self
            .config_value("layer")
            .and_then(Value::as_str)
            .unwrap_or("conv2d");
        match layer {
            "conv2d" => self
                .weight_quant_rank::<4>(|dims| conv_fan_out([dims[0], dims[1], dims[2], dims[3]])),
            "linear" => self.weight_quant_rank::<2>(|dims| linear_fan_out([dims[0], dims[1]])),
            other => Err(format!("config field `layer`: unknown {other:?}")),
        }
    }

    fn weight_quant_rank<const D: usize>(
        &mut self,
        fan_out_rule: fn(&[usize]) -> usize,
    ) -> RunResult {
        let bitw = self.config_bits("bitw")?;
        let config = self.weight_config()?;
        let w = self.input::<D>("W")?.require_grad();
        let fan_out = fan_out_rule(&w.dims());
        if let Some(stated) = self.config_value("fan_out").and_then(Value::as_u64)
            && stated != fan_out as u64
        {
            return Err(format!(
                "fan-out rule gives {fan_out} for shape {:?}, the case states {stated}",
                w.dims()
            ));
        }
        let trace = quantize_weight_traced(w.clone(), bitw, fan_out, &config);
        let w_eff = crate::QuantizedWeight {
            w_hat: trace.w_hat.clone(),
            scale: trace.scale.clone(),
        }
        .effective();
        self.expect_output_if_present("tanh_W", trace.tanh)?;
        self.expect_output_if_present("M", trace.max_abs)?;
        self.expect_output_if_present("u", trace.unit)?;
        self.expect_output_if_present("q", trace.q)?;
        self.expect_output_if_present("w_hat", Some(trace.w_hat))?;
        self.expect_output_if_present("scale", trace.scale)?;
        self.expect_output("W_eff", w_eff.clone())?;
        if let Some(g) = self.upstream::<D>("W_eff")? {
            let grads = (w_eff * g).sum().backward();
            self.expect_gradient("W", w.grad(&grads))?;
        }
        Ok(())
    }

    fn pact(&mut self) -> RunResult {
        let bita = self.config_bits("bita")?;
        let config = self.act_config()?;
        let x = self.input::<1>("x")?.require_grad();
        let alpha = self.input::<1>("alpha_param")?.require_grad();
        let y = pact(x.clone(), alpha.clone(), bita, &config);
        self.expect_output("y", y.clone())?;
        if let Some(g) = self.upstream::<1>("y")? {
            let grads = (y * g).sum().backward();
            self.expect_gradient("x", x.grad(&grads))?;
            self.expect_gradient("alpha_param", alpha.grad(&grads))?;
        }
        Ok(())
    }

    /// The policy and bits of a linear layer case: `bits` resolved through `bitw_min` etc.
    fn linear_policy(&self) -> Result<BitPolicy, String> {
        Ok(BitPolicy {
            bitw_min: self.config_opt_bits("bitw_min")?,
            bita_min: self.config_opt_bits("bita_min")?,
            weight_only: self.config_bool("weight_only", false)?,
        })
    }

    fn qlinear(&mut self) -> RunResult {
        let bits = self.config_bits("bits")?;
        let resolved = self.linear_policy()?.resolve(bits);
        for (key, got) in [
            ("resolved_bitw", resolved.bitw),
            ("resolved_bita", resolved.bita),
        ] {
            if let Some(expected) = self.config_value(key).and_then(Value::as_u64)
                && expected != u64::from(got.get())
            {
                return Err(format!("{key}: resolved {got}, the case states {expected}"));
            }
        }
        let weight_config = self.weight_config()?;
        let act_config = self.act_config()?;
        let w = self.input::<2>("W")?;
        let b = self.input::<1>("b")?;
        let x = self.input::<2>("x")?;
        let alpha = self.input::<1>("alpha_param")?;
        let fan_out = linear_fan_out(w.dims());
        let quantized = quantize_weight(w.clone(), resolved.bitw, fan_out, &weight_config);
        let x_q = pact(x, alpha, resolved.bita, &act_config);

        self.expect_output("w_hat", quantized.w_hat.clone())?;
        if self.case.expected_outputs.contains_key("weight_codes") {
            let codes = weight_codes(w, resolved.bitw, weight_config.scheme);
            self.expect_int_output("weight_codes", codes)?;
        }
        if self.case.expected_outputs.contains_key("std_w_hat") {
            let std = quantized.w_hat.clone().reshape([-1]).var(0).sqrt();
            self.expect_output("std_w_hat", std)?;
        }
        self.expect_output_if_present("scale", quantized.scale.clone())?;
        self.expect_output_if_present("x_q", Some(x_q.clone()))?;
        for (mode, name) in [(QuantMode::Train, "y_train"), (QuantMode::Eval, "y_eval")] {
            let (weight, bias) =
                quantized
                    .clone()
                    .linear_params(Some(b.clone()), mode, weight_config.linear_eval);
            let y = linear(x_q.clone(), weight, bias);
            self.expect_output(name, y)?;
        }
        Ok(())
    }

    fn input_pixels(&mut self) -> RunResult {
        let x = self.input::<1>("x")?;
        self.expect_output("pixels", input_pixels(x))
    }

    fn bit_codes(&mut self) -> RunResult {
        let high = self.config_bits("high_bits")?;
        let low = self.config_bits("low_bits")?;
        let u = self.input::<1>("u")?;
        for scheme in [QuantScheme::Modified, QuantScheme::Original] {
            let name = scheme.name();
            let codes_high = unit_codes(u.clone(), high, scheme);
            let codes_low = unit_codes(u.clone(), low, scheme);
            // What a right shift gives, whether or not the scheme makes it exact.
            let shifted = codes_high
                .clone()
                .bitwise_right_shift_scalar(i64::from(high.get() - low.get()));
            match (
                scheme.has_shift_property(),
                shift_codes(codes_high.clone(), scheme, high, low),
            ) {
                (true, Ok(derived)) => {
                    self.expect_int_output(
                        &format!("{name}_codes_b{high}_shr{}", high.get() - low.get()),
                        derived,
                    )?;
                }
                (false, Err(QuantError::NoShiftProperty { .. })) => {
                    self.expect_int_output(
                        &format!("{name}_codes_b{high}_shr{}", high.get() - low.get()),
                        shifted,
                    )?;
                }
                (_, other) => {
                    return Err(format!(
                        "shift_codes for the {name} scheme returned {:?}",
                        other.map(|_| "codes")
                    ));
                }
            }
            self.expect_int_output(&format!("{name}_codes_b{high}"), codes_high)?;
            self.expect_int_output(&format!("{name}_codes_b{low}"), codes_low)?;
        }
        Ok(())
    }

    fn joint_step_qlinear(&mut self) -> RunResult {
        let bits_list: Vec<BitWidth> = self
            .config_value("bits_list")
            .and_then(Value::as_array)
            .ok_or("config field `bits_list`: expected a list of bit-widths")?
            .iter()
            .map(|v| {
                v.as_u64()
                    .and_then(|b| u8::try_from(b).ok())
                    .ok_or_else(|| format!("config field `bits_list`: bad entry {v}"))
                    .and_then(|b| BitWidth::new(b).map_err(|e| e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        let list: Vec<BitWidth> = bits_list;
        let bits_list = BitWidths::new(list.clone()).map_err(|e| e.to_string())?;
        let policy = self.linear_policy()?;
        let weight_config = self.weight_config()?;
        let act_config = self.act_config()?;
        let switchable = self.config_bool("switch_alpha", true)?;
        let mode = match self.config_value("mode").and_then(Value::as_str) {
            None | Some("train") => QuantMode::Train,
            Some("eval") => QuantMode::Eval,
            Some(other) => return Err(format!("config field `mode`: unknown {other:?}")),
        };

        let w = self.input::<2>("W")?.require_grad();
        let b = self.input::<1>("b")?.require_grad();
        let x = self.input::<2>("x")?.require_grad();
        let mut clip = ClippingLevelsConfig::new(bits_list.clone(), 0.0)
            .with_switchable(switchable)
            .init(&self.device);
        let alpha_init = self.input::<1>("alpha_param")?;
        if alpha_init.dims() != clip.alpha.dims() {
            return Err(format!(
                "alpha_param has shape {:?}, the clipping levels {:?}",
                alpha_init.dims(),
                clip.alpha.dims()
            ));
        }
        clip.alpha = burn::module::Param::from_tensor(alpha_init);
        let alpha = clip.alpha.val();

        // One forward and one backward per bit-width, gradients summed: the joint step.
        let mut sums: [Option<Tensor<2>>; 2] = [None, None];
        let mut sum_b: Option<Tensor<1>> = None;
        let mut sum_alpha: Option<Tensor<1>> = None;
        for &bits in &list {
            let resolved = policy.resolve(bits);
            let quantized = quantize_weight(
                w.clone(),
                resolved.bitw,
                linear_fan_out(w.dims()),
                &weight_config,
            );
            let x_q = pact(
                x.clone(),
                clip.select(resolved.bita),
                resolved.bita,
                &act_config,
            );
            let (weight, bias) =
                quantized.linear_params(Some(b.clone()), mode, weight_config.linear_eval);
            let y = linear(x_q.clone(), weight, bias);
            self.expect_output(&format!("x_q_bits{bits}"), x_q)?;
            self.expect_output(&format!("y_bits{bits}"), y.clone())?;
            let upstream = self
                .upstream::<2>(&format!("y_bits{bits}"))?
                .ok_or_else(|| format!("missing upstream gradient y_bits{bits}"))?;
            let grads = (y * upstream).sum().backward();
            accumulate(&mut sums[0], w.grad(&grads));
            accumulate(&mut sums[1], x.grad(&grads));
            accumulate(&mut sum_b, b.grad(&grads));
            accumulate(&mut sum_alpha, alpha.grad(&grads));
        }
        let [grad_w, grad_x] = sums;
        self.expect_gradient("W", grad_w)?;
        self.expect_gradient("b", sum_b)?;
        self.expect_gradient("alpha_param", sum_alpha)?;
        self.expect_gradient("x", grad_x)?;
        Ok(())
    }
}

/// `y = x·Wᵀ + b` with a PyTorch-layout weight `[out, in]`.
fn linear(x: Tensor<2>, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<2> {
    let y = x.matmul(weight.transpose());
    match bias {
        Some(b) => y + b.unsqueeze::<2>(),
        None => y,
    }
}

fn accumulate<const D: usize>(sum: &mut Option<Tensor<D>>, grad: Option<Tensor<D>>) {
    if let Some(g) = grad {
        *sum = Some(match sum.take() {
            Some(s) => s + g,
            None => g,
        });
    }
}
