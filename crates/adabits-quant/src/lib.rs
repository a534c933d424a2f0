//! Fake-quantization operators of AdaBits and SAT, on Burn.
//!
//! This crate is the numeric core of `adabits`: everything that turns a full-precision weight or
//! activation into its quantized value at some bit-width, with the straight-through gradients
//! used in training. It follows the specification (docs/method.md §2–§5) exactly, including the
//! official code's quirks (its parity defaults), and is checked against the specification's test
//! vectors ([`conformance`]) and against a plain-`f64` scalar reference ([`mod@reference`]).
//!
//! - [`BitWidth`], [`BitWidths`]: validated bit-widths and the ordered list a model trains for.
//! - [`QuantScheme`] and [`unit_quantize`]: the unit quantizers `Q_b` (original, modified,
//!   centered), [`unit_codes`] and [`shift_codes`] for integer codes and the bit-shift property.
//! - [`quantize_weight`]: tanh normalisation, `Q_b`, and SAT's constant rescale.
//! - [`pact`] and [`ClippingLevels`]: PACT with one clipping level per bit-width (S-CL).
//! - [`BitPolicy`]: per-layer resolution of weight and activation bits.
//! - [`fused`]: the quantizers as one backend operation each (Flex), with the composed ops
//!   ([`pact_composed`], [`quantize_weight_composed`]) as the reference and the fallback.
//! - [`conv2d`] ([`mod@conv`]): the convolution the quantized layers run, one backend operation
//!   with a hand-written backward on Flex, Burn's `conv2d` elsewhere; [`batch_norm_train`]
//!   ([`mod@norm`]) likewise for BatchNorm in training mode.
//!
//! The crate enables no Burn backend: pass any [`burn::tensor::Device`].
//!
//! # Example
//!
//! ```
//! use adabits_quant::{BitWidth, BitWidths, QuantScheme, reference};
//!
//! // The list a model trains for, in training order; 32 is full precision.
//! let bits: BitWidths = "8,6,5,4".parse()?;
//! assert_eq!(bits.max(), BitWidth::new(8)?.into());
//! assert!("8,8".parse::<BitWidths>().is_err());
//! // Q_b of the centered scheme at 2 bits has its levels at (k + ½)/4.
//! let two = BitWidth::new(2)?;
//! assert_eq!(reference::unit_quantize(0.3, two, QuantScheme::Centered), 0.375);
//! assert_eq!(reference::unit_quantize(0.3, two, QuantScheme::Original), 1.0 / 3.0);
//! # Ok::<(), adabits_quant::QuantError>(())
//! ```

// Libraries print nothing: they return typed errors and report through their callers.
#![deny(clippy::print_stdout, clippy::print_stderr)]

mod activation;
mod bits;
mod clip;
pub mod conformance;
pub mod conv;
mod error;
pub mod fused;
mod input;
pub mod norm;
mod precision;
mod quantize;
pub mod reference;
mod resolve;
mod scheme;
mod unit;
mod weight;

pub use activation::{ActQuantConfig, pact_composed};
pub use bits::{BitWidth, BitWidths};
pub use clip::{CONV_ALPHA_INIT, ClippingLevels, ClippingLevelsConfig, LINEAR_ALPHA_INIT};
pub use conv::conv2d;
pub use error::QuantError;
pub use fused::{Kernels, kernels, set_kernels};
pub use input::input_pixels;
pub use norm::batch_norm_train;
pub use precision::{At, Precision};
pub use quantize::{pact, quantize_weight};
pub use resolve::{BitPolicy, LayerBits};
pub use scheme::QuantScheme;
pub use unit::{codes_to_unit, shift_codes, unit_codes, unit_quantize, unit_quantize_value};
pub use weight::{
    LinearEval, QuantMode, QuantizedWeight, RescaleType, WeightQuantConfig, WeightQuantTrace,
    conv_fan_out, linear_fan_out, quantize_weight_composed, quantize_weight_traced, weight_codes,
};
