//! The three unit quantizers `Q_b` on `[0, 1]` (docs/method.md §2).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::QuantError;

/// Which unit quantizer `Q_b : [0, 1] -> [0, 1]` to use.
///
/// With `k` the integer code of `u`:
///
/// | scheme | `Q_b(u)` | levels |
/// |---|---|---|
/// | [`Original`](Self::Original) (DoReFa) | `round((2^b − 1)·u) / (2^b − 1)` | `k/(2^b−1)`, includes 0 and 1 |
/// | [`Modified`](Self::Modified) (AdaBits) | `min(⌊2^b·u⌋, 2^b − 1) / 2^b` | `k/2^b`, includes 0, max `1 − 2^−b` |
/// | [`Centered`](Self::Centered) | `(min(⌊2^b·u⌋, 2^b − 1) + ½) / 2^b` | `(k+½)/2^b` |
///
/// `round` is round-half-to-even (`torch.round`). The modified and centered schemes have the
/// bit-shift property `k_{b−1} = k_b >> 1`; the original scheme does not.
///
/// The official default is `Modified` for weights (parity default P11) and `Original` for
/// activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum QuantScheme {
    /// DoReFa's quantizer: `round((2^b − 1)·u) / (2^b − 1)`.
    Original,
    /// AdaBits' quantizer: `min(⌊2^b·u⌋, 2^b − 1) / 2^b`.
    Modified,
    /// The author's later recommendation for weights: `(min(⌊2^b·u⌋, 2^b − 1) + ½) / 2^b`.
    Centered,
}

impl QuantScheme {
    /// Every scheme, in a fixed order.
    pub const ALL: [QuantScheme; 3] = [Self::Original, Self::Modified, Self::Centered];

    /// The scheme's name as used in configs (`original`, `modified`, `centered`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Original => "original",
            Self::Modified => "modified",
            Self::Centered => "centered",
        }
    }

    /// Whether a code at `b` bits equals the code at `b + 1` bits shifted right by one, for every
    /// input (true for modified and centered, docs/method.md §2).
    pub fn has_shift_property(self) -> bool {
        !matches!(self, Self::Original)
    }
}

impl fmt::Display for QuantScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for QuantScheme {
    type Err = QuantError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|scheme| scheme.name() == s.trim())
            .ok_or_else(|| QuantError::UnknownScheme {
                found: s.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays_every_scheme() {
        for scheme in QuantScheme::ALL {
            assert_eq!(scheme.to_string().parse::<QuantScheme>().unwrap(), scheme);
        }
        let msg = "dorefa".parse::<QuantScheme>().unwrap_err().to_string();
        assert!(
            msg.contains("\"dorefa\"") && msg.contains("original, modified, centered"),
            "{msg}"
        );
    }
}
