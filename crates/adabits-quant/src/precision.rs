//! A precision: the bit-width of a layer's weights and that of its input activations, written
//! `B` when they agree and `wWaA` (e.g. `w4a8`) when they do not, as the official `bits` is an
//! integer or a `(bitw, bita)` pair.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{BitPolicy, BitWidth, LayerBits, QuantError};

/// A weight bit-width and an activation bit-width.
///
/// ```text
/// "8".parse::<Precision>()    -> weights and activations at 8 bits (written "8")
/// "w4a8".parse::<Precision>() -> weights at 4 bits, activations at 8 (written "w4a8")
/// "w8a8"                      -> the same as "8" (written "8")
/// "w4a", "4a8", "w4a40"       -> Err(QuantError::InvalidPrecision)
/// ```
///
/// In JSON a uniform precision is a number (`8`, as bit-width lists have always been written)
/// and any other a string (`"w4a8"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Precision {
    /// The weights' bit-width.
    pub weight: BitWidth,
    /// The input activations' bit-width.
    pub activation: BitWidth,
}

impl Precision {
    /// Weights and activations at `bits`.
    pub fn uniform(bits: BitWidth) -> Self {
        Self {
            weight: bits,
            activation: bits,
        }
    }

    /// Weights at `weight` bits and activations at `activation` bits.
    pub fn new(weight: BitWidth, activation: BitWidth) -> Self {
        Self { weight, activation }
    }

    /// The common bit-width when weights and activations agree.
    pub fn as_uniform(self) -> Option<BitWidth> {
        (self.weight == self.activation).then_some(self.weight)
    }

    /// How messages and tables name it: `8 bits` when uniform, else `w4a8`.
    pub fn describe(self) -> String {
        match self.as_uniform() {
            Some(b) => format!("{b} bits"),
            None => self.to_string(),
        }
    }

    /// The bits a layer with `policy` uses at this precision ([`BitPolicy::resolve_pair`]).
    pub fn resolve(self, policy: &BitPolicy) -> LayerBits {
        policy.resolve_pair(self.weight, self.activation)
    }
}

/// What a layer runs at in one forward pass: the entry of the model's list (which selects the
/// layer's clipping level and BatchNorm, as the official code indexes `bits_list` by the active
/// `bits`) and that entry's precision (docs/decisions/0002-precisions-and-plans.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct At {
    /// The entry's position in the model's list.
    pub entry: usize,
    /// The entry's precision.
    pub precision: Precision,
}

impl At {
    /// Entry `entry`, at `precision`.
    pub fn new(entry: usize, precision: impl Into<Precision>) -> Self {
        Self {
            entry,
            precision: precision.into(),
        }
    }
}

impl From<BitWidth> for Precision {
    fn from(bits: BitWidth) -> Self {
        Self::uniform(bits)
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_uniform() {
            Some(b) => write!(f, "{b}"),
            None => write!(f, "w{}a{}", self.weight, self.activation),
        }
    }
}

impl FromStr for Precision {
    type Err = QuantError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let invalid = |reason: String| QuantError::InvalidPrecision {
            found: format!("{s:?}"),
            reason,
        };
        let bits = |part: &str, what: &str| {
            part.parse::<BitWidth>().map_err(|_| {
                invalid(format!(
                    "the {what} bit-width {part:?} is not 1 to 16 or 32"
                ))
            })
        };
        let Some(rest) = text.strip_prefix('w') else {
            return text.parse::<BitWidth>().map(Self::uniform).map_err(|_| {
                invalid("expected a bit-width (1 to 16, or 32) or wWaA such as w4a8".into())
            });
        };
        let Some((w, a)) = rest.split_once('a') else {
            return Err(invalid(
                "expected wWaA such as w4a8: no `a` and activation bit-width".into(),
            ));
        };
        if w.is_empty() || a.is_empty() {
            return Err(invalid(format!(
                "expected wWaA such as w4a8: the {} bit-width is missing",
                if w.is_empty() { "weight" } else { "activation" }
            )));
        }
        Ok(Self::new(bits(w, "weight")?, bits(a, "activation")?))
    }
}

impl Serialize for Precision {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.as_uniform() {
            Some(b) => s.serialize_u8(b.get()),
            None => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for Precision {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Number(u8),
            Text(String),
        }
        match Written::deserialize(d)? {
            Written::Number(b) => BitWidth::new(b)
                .map(Self::uniform)
                .map_err(D::Error::custom),
            Written::Text(t) => t.parse().map_err(D::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bw(b: u8) -> BitWidth {
        BitWidth::new(b).unwrap()
    }

    #[test]
    fn both_forms_parse_and_print_the_shorter_way() {
        let p: Precision = "w4a8".parse().unwrap();
        assert_eq!((p.weight, p.activation), (bw(4), bw(8)));
        assert_eq!(p.to_string(), "w4a8");
        assert_eq!(p.as_uniform(), None);
        let q: Precision = " 6 ".parse().unwrap();
        assert_eq!(q, Precision::uniform(bw(6)));
        assert_eq!(q.to_string(), "6");
        assert_eq!("w8a8".parse::<Precision>().unwrap().to_string(), "8");
        assert_eq!("w32a4".parse::<Precision>().unwrap().to_string(), "w32a4");
        assert_eq!(Precision::from(bw(5)), "5".parse().unwrap());
        assert_eq!(q.describe(), "6 bits");
        assert_eq!(p.describe(), "w4a8");
    }

    #[test]
    fn malformed_entries_are_named() {
        let cases = [
            ("w4a", "the activation bit-width is missing"),
            ("wa8", "the weight bit-width is missing"),
            ("w4", "no `a` and activation bit-width"),
            ("4a8", "expected a bit-width (1 to 16, or 32) or wWaA"),
            (
                "w4a40",
                "the activation bit-width \"40\" is not 1 to 16 or 32",
            ),
            ("w0a8", "the weight bit-width \"0\""),
            ("", "expected a bit-width"),
            ("W4A8", "expected a bit-width"),
        ];
        for (text, expected) in cases {
            let msg = text.parse::<Precision>().unwrap_err().to_string();
            assert!(msg.contains(expected), "{text:?} gave {msg:?}");
            assert!(msg.contains(&format!("{text:?}")), "{text:?} gave {msg:?}");
        }
    }

    #[test]
    fn json_keeps_numbers_for_uniform_precisions() {
        let list: Vec<Precision> = serde_json::from_str(r#"[8, "w4a8", "4"]"#).unwrap();
        assert_eq!(serde_json::to_string(&list).unwrap(), r#"[8,"w4a8",4]"#);
        assert!(serde_json::from_str::<Precision>("0").is_err());
        assert!(serde_json::from_str::<Precision>(r#""w4a""#).is_err());
    }

    #[test]
    fn a_layer_resolves_a_pair_through_its_policy() {
        let classifier = BitPolicy {
            bitw_min: Some(bw(8)),
            ..BitPolicy::BODY
        };
        let p: Precision = "w2a8".parse().unwrap();
        let r = p.resolve(&classifier);
        assert_eq!((r.bitw, r.bita), (bw(8), bw(8)));
        let r = "w8a2"
            .parse::<Precision>()
            .unwrap()
            .resolve(&BitPolicy::BODY);
        assert_eq!((r.bitw, r.bita), (bw(8), bw(2)));
    }
}
