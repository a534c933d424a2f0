//! The label of one entry of an artifact's list: the bit-width of the weights and that of the
//! activations, written `8` when they agree and `w4a8` when they do not.
//!
//! `adabits-quant`'s `Precision` is the training side's form of the same label (bit-widths up
//! to 16 and 32); this crate is Burn-free, so it has its own, limited to what an artifact holds:
//! each side from 1 to 8 bits.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One entry of an artifact's list: weights at `weight` bits and activations at `activation`
/// bits, each from 1 to 8.
///
/// In the header a uniform entry is a number (`8`, as artifacts of bit-widths have always been
/// written) and any other a string (`"w4a8"`).
///
/// ```
/// use adabits_runtime::EntryBits;
///
/// let pair: EntryBits = "w4a8".parse().unwrap();
/// assert_eq!((pair.weight(), pair.activation()), (4, 8));
/// assert_eq!(pair.to_string(), "w4a8");
/// assert_eq!("w8a8".parse::<EntryBits>().unwrap(), EntryBits::uniform(8).unwrap());
/// assert!("w4a".parse::<EntryBits>().is_err());
/// assert!("w4a16".parse::<EntryBits>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryBits {
    weight: u8,
    activation: u8,
}

/// The sides an entry may have.
const RANGE: std::ops::RangeInclusive<u8> = 1..=8;

impl EntryBits {
    /// Weights at `weight` bits and activations at `activation` bits, or `None` unless both are
    /// 1 to 8.
    pub fn new(weight: u8, activation: u8) -> Option<Self> {
        (RANGE.contains(&weight) && RANGE.contains(&activation))
            .then_some(Self { weight, activation })
    }

    /// Weights and activations at `bits`, or `None` unless it is 1 to 8.
    pub fn uniform(bits: u8) -> Option<Self> {
        Self::new(bits, bits)
    }

    /// The weights' bit-width.
    pub fn weight(self) -> u8 {
        self.weight
    }

    /// The activations' bit-width.
    pub fn activation(self) -> u8 {
        self.activation
    }

    /// The common bit-width when weights and activations agree.
    pub fn as_uniform(self) -> Option<u8> {
        (self.weight == self.activation).then_some(self.weight)
    }

    /// How messages name it: `8 bits` when uniform, else `w4a8`.
    pub fn describe(self) -> String {
        match self.as_uniform() {
            Some(b) => format!("{b} bits"),
            None => self.to_string(),
        }
    }
}

impl fmt::Display for EntryBits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Padded, so that tables can align it as they align numbers.
        match self.as_uniform() {
            Some(b) => f.pad(&b.to_string()),
            None => f.pad(&format!("w{}a{}", self.weight, self.activation)),
        }
    }
}

/// Why a text is not an entry: a sentence.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{found:?}: expected a bit-width of 1 to 8 or wWaA such as w4a8, each side 1 to 8")]
pub struct EntryBitsError {
    /// The text.
    pub found: String,
}

impl FromStr for EntryBits {
    type Err = EntryBitsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let side = |t: &str| t.parse::<u8>().ok();
        let parsed = match text.strip_prefix('w') {
            Some(rest) => rest
                .split_once('a')
                .and_then(|(w, a)| Self::new(side(w)?, side(a)?)),
            None => side(text).and_then(Self::uniform),
        };
        parsed.ok_or_else(|| EntryBitsError { found: s.into() })
    }
}

impl Serialize for EntryBits {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.as_uniform() {
            Some(b) => s.serialize_u8(b),
            None => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for EntryBits {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Number(u64),
            Text(String),
        }
        let text = match Written::deserialize(d)? {
            Written::Number(n) => n.to_string(),
            Written::Text(t) if t.starts_with('w') => t,
            // A number written as a string is not how entries are written.
            Written::Text(t) => format!("{t:?}"),
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_entries_are_numbers_and_pairs_strings_in_json() {
        let list: Vec<EntryBits> = ["8", "w4a8", "4", "w2a4"]
            .iter()
            .map(|t| t.parse().unwrap())
            .collect();
        let json = serde_json::to_string(&list).unwrap();
        assert_eq!(json, r#"[8,"w4a8",4,"w2a4"]"#);
        assert_eq!(serde_json::from_str::<Vec<EntryBits>>(&json).unwrap(), list);
    }

    #[test]
    fn malformed_or_out_of_range_entries_are_refused() {
        for bad in [
            "0", "9", "32", "w4a", "wa8", "w0a8", "w4a9", "4a8", "w4b8", "", "\"8\"",
        ] {
            assert!(bad.parse::<EntryBits>().is_err(), "{bad}");
        }
        for bad in [r#""8""#, "0", "9", r#""w4a""#, "-1", "4.5", "null"] {
            assert!(
                serde_json::from_str::<EntryBits>(bad).is_err(),
                "{bad} deserialised"
            );
        }
        let err = "w4a".parse::<EntryBits>().unwrap_err().to_string();
        assert!(err.starts_with(r#""w4a": expected"#), "{err}");
    }

    #[test]
    fn a_pair_of_equal_sides_is_the_uniform_entry() {
        assert_eq!(
            "w8a8".parse::<EntryBits>().unwrap(),
            EntryBits::uniform(8).unwrap()
        );
        assert_eq!(EntryBits::new(8, 8).unwrap().to_string(), "8");
        assert_eq!(EntryBits::new(4, 8).unwrap().describe(), "w4a8");
        assert_eq!(EntryBits::uniform(4).unwrap().describe(), "4 bits");
    }
}
