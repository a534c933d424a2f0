//! Per-layer resolution of the active bit-width into weight and activation bits (docs/method.md §5).

use serde::{Deserialize, Serialize};

use crate::BitWidth;

/// A layer's precision policy: the official `bitw_min`, `bita_min` and `weight_only` flags.
///
/// The models use it for the first convolution and the classifier (docs/method.md §5): for example
/// the ImageNet first conv is `{ bitw_min: 8, bita_min: 8, weight_only: true }` and the
/// classifier `{ bitw_min: 8 }`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BitPolicy {
    /// Weights use at least this many bits.
    pub bitw_min: Option<BitWidth>,
    /// Activations use at least this many bits.
    pub bita_min: Option<BitWidth>,
    /// The layer's input is never quantized (activation bits forced to 32).
    pub weight_only: bool,
}

impl BitPolicy {
    /// The policy of an ordinary body layer: weights and activations at the active bit-width.
    pub const BODY: BitPolicy = BitPolicy {
        bitw_min: None,
        bita_min: None,
        weight_only: false,
    };

    /// Resolves the active bit-width into the bits this layer uses.
    ///
    /// `bitw = max(bits, bitw_min)`, `bita = max(bits, bita_min)`, then `bita = 32` if
    /// `weight_only`.
    pub fn resolve(&self, bits: BitWidth) -> LayerBits {
        self.resolve_pair(bits, bits)
    }

    /// As [`resolve`](Self::resolve), for separate weight and activation bit-widths (the
    /// official two-element `bits`).
    pub fn resolve_pair(&self, weight: BitWidth, activation: BitWidth) -> LayerBits {
        let bitw = self.bitw_min.map_or(weight, |min| weight.at_least(min));
        let bita = if self.weight_only {
            BitWidth::FULL
        } else {
            self.bita_min
                .map_or(activation, |min| activation.at_least(min))
        };
        LayerBits { bitw, bita }
    }
}

/// The resolved bits of one layer for one forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LayerBits {
    /// Weight bits (32: the full-precision weight path).
    pub bitw: BitWidth,
    /// Activation bits (32: the input passes through unless `pact_fp`).
    pub bita: BitWidth,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bw(b: u8) -> BitWidth {
        BitWidth::new(b).unwrap()
    }

    #[test]
    fn body_layers_use_the_active_bits() {
        let bits = BitPolicy::BODY.resolve(bw(4));
        assert_eq!((bits.bitw, bits.bita), (bw(4), bw(4)));
    }

    #[test]
    fn imagenet_first_conv_is_weight_only_with_eight_bit_weights() {
        let policy = BitPolicy {
            bitw_min: Some(bw(8)),
            bita_min: Some(bw(8)),
            weight_only: true,
        };
        assert_eq!(
            policy.resolve(bw(4)),
            LayerBits {
                bitw: bw(8),
                bita: BitWidth::FULL
            }
        );
        assert_eq!(
            policy.resolve(BitWidth::FULL),
            LayerBits {
                bitw: BitWidth::FULL,
                bita: BitWidth::FULL
            }
        );
    }

    #[test]
    fn classifier_keeps_weights_at_the_minimum_and_quantizes_inputs_at_the_active_bits() {
        let policy = BitPolicy {
            bitw_min: Some(bw(8)),
            ..BitPolicy::BODY
        };
        // TV4: bits = 4 with bitw_min = 8 resolves to 8-bit weights and 4-bit activations.
        assert_eq!(
            policy.resolve(bw(4)),
            LayerBits {
                bitw: bw(8),
                bita: bw(4)
            }
        );
        assert_eq!(
            policy.resolve(bw(16)),
            LayerBits {
                bitw: bw(16),
                bita: bw(16)
            }
        );
    }

    #[test]
    fn pairs_resolve_separately() {
        let policy = BitPolicy {
            bita_min: Some(bw(6)),
            ..BitPolicy::BODY
        };
        assert_eq!(
            policy.resolve_pair(bw(2), bw(4)),
            LayerBits {
                bitw: bw(2),
                bita: bw(6)
            }
        );
    }
}
