//! The error type of `adabits-quant`.

/// Everything that can go wrong in `adabits-quant` that is not a programming error.
///
/// Programming errors (a bit-width that is not in a layer's list, mismatched shapes) panic with
/// the offending values instead; see the `# Panics` sections of the functions.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuantError {
    /// A bit-width was outside the supported range.
    #[error(
        "invalid bit-width {found}: expected an integer from 1 to 16 (quantized) or 32 (full precision)"
    )]
    InvalidBitWidth {
        /// The rejected value, as written.
        found: String,
    },

    /// A list of bit-widths could not be parsed.
    #[error("invalid bit-width list {input:?}: {reason}")]
    InvalidBitWidthList {
        /// The rejected text.
        input: String,
        /// What was wrong with it.
        reason: String,
    },

    /// A precision (`B` or `wWaA`) could not be parsed.
    #[error("invalid precision {found}: {reason}")]
    InvalidPrecision {
        /// The rejected text, quoted.
        found: String,
        /// What was wrong with it.
        reason: String,
    },

    /// A quantization scheme name was not recognised.
    #[error("unknown quantization scheme {found:?}: expected one of original, modified, centered")]
    UnknownScheme {
        /// The rejected name.
        found: String,
    },

    /// Lower-bit codes were requested by right shift from a scheme where that is not exact.
    #[error(
        "the {scheme} scheme has no bit-shift property: {from}-bit codes cannot be shifted to {to} \
         bits (use the modified or centered scheme, or store each bit-width's codes)"
    )]
    NoShiftProperty {
        /// The scheme of the codes.
        scheme: crate::QuantScheme,
        /// The bit-width of the stored codes.
        from: u8,
        /// The requested bit-width.
        to: u8,
    },

    /// A bit shift was asked to go up instead of down, or to or from full precision.
    #[error("cannot derive {to}-bit codes from {from}-bit codes: expected {to} < {from} <= 16")]
    InvalidShift {
        /// The bit-width of the stored codes.
        from: u8,
        /// The requested bit-width.
        to: u8,
    },
}
