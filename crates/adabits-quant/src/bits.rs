//! Bit-widths: the validated [`BitWidth`] scalar and the ordered [`BitWidths`] list of a
//! model's entries.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{At, Precision, QuantError};

/// A number of bits: 1 to 16 for a quantized tensor, or 32 for full precision.
///
/// Anything from 17 to 31 is rejected, as is 0: the official code's "skip this layer" meaning of
/// zero bits has no use in any model and is not supported.
///
/// ```text
/// "8".parse::<BitWidth>()  -> Ok(8)
/// "32".parse::<BitWidth>() -> Ok(full precision)
/// "0", "17", "33", "abc"   -> Err(QuantError::InvalidBitWidth)
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct BitWidth(u8);

impl BitWidth {
    /// Full precision (32 bits): nothing is quantized.
    pub const FULL: BitWidth = BitWidth(32);
    /// The largest quantized bit-width.
    pub const MAX_QUANTIZED: u8 = 16;

    /// Validates `bits`.
    ///
    /// # Errors
    ///
    /// [`QuantError::InvalidBitWidth`] unless `bits` is in `1..=16` or equals 32.
    pub fn new(bits: u8) -> Result<Self, QuantError> {
        if (1..=Self::MAX_QUANTIZED).contains(&bits) || bits == 32 {
            Ok(Self(bits))
        } else {
            Err(QuantError::InvalidBitWidth {
                found: bits.to_string(),
            })
        }
    }

    /// The number of bits (32 for full precision).
    pub fn get(self) -> u8 {
        self.0
    }

    /// Whether this is full precision (32 bits), where quantizers pass values through.
    pub fn is_full_precision(self) -> bool {
        self.0 == 32
    }

    /// `2^b`, the number of levels of a quantized bit-width.
    ///
    /// # Panics
    ///
    /// Panics at full precision, which has no level count.
    pub fn levels(self) -> u32 {
        assert!(
            !self.is_full_precision(),
            "full precision (32 bits) has no level count"
        );
        1u32 << self.0
    }

    /// The larger of two bit-widths (used for `bitw_min`/`bita_min`, docs/method.md §5).
    pub fn at_least(self, min: BitWidth) -> BitWidth {
        self.max(min)
    }
}

impl TryFrom<u8> for BitWidth {
    type Error = QuantError;

    fn try_from(bits: u8) -> Result<Self, Self::Error> {
        Self::new(bits)
    }
}

impl From<BitWidth> for u8 {
    fn from(bits: BitWidth) -> u8 {
        bits.0
    }
}

impl fmt::Display for BitWidth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for BitWidth {
    type Err = QuantError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let trimmed = s.trim();
        let invalid = || QuantError::InvalidBitWidth {
            found: format!("{s:?}"),
        };
        let value: u8 = trimmed.parse().map_err(|_| invalid())?;
        Self::new(value).map_err(|_| invalid())
    }
}

/// The entries a switchable model is trained for, in the order given (e.g. `8,6,5,4` or
/// `8,w4a8,4`): each a [`Precision`], a bit-width for weights and activations alike or a
/// `wWaA` pair.
///
/// The order matters: a joint training step visits the entries in this order, and the
/// per-entry BatchNorm and clipping level of a layer are indexed by position in this list
/// (docs/method.md §4, §6; the official code indexes `bits_list` by the active `bits`, an
/// integer or a `(bitw, bita)` pair). The list is never empty and has no duplicates (`w8a8`
/// is `8`). In JSON it is an array of numbers and `"wWaA"` strings ([`Precision`]'s form).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Vec<Precision>", into = "Vec<Precision>")]
pub struct BitWidths(Vec<Precision>);

impl BitWidths {
    /// Validates a list of entries (bit-widths or precisions).
    ///
    /// # Errors
    ///
    /// [`QuantError::InvalidBitWidthList`] if the list is empty or has a duplicate.
    pub fn new<P: Into<Precision>>(
        entries: impl IntoIterator<Item = P>,
    ) -> Result<Self, QuantError> {
        let entries: Vec<Precision> = entries.into_iter().map(Into::into).collect();
        let input = || {
            entries
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        if entries.is_empty() {
            return Err(QuantError::InvalidBitWidthList {
                input: input(),
                reason: "expected at least one bit-width, found none".into(),
            });
        }
        for (i, p) in entries.iter().enumerate() {
            if entries[..i].contains(p) {
                return Err(QuantError::InvalidBitWidthList {
                    input: input(),
                    reason: match p.as_uniform() {
                        Some(b) => format!("bit-width {b} appears more than once"),
                        None => format!("entry {p} appears more than once (w8a8 is 8)"),
                    },
                });
            }
        }
        Ok(Self(entries))
    }

    /// The entries, in the order given.
    pub fn as_slice(&self) -> &[Precision] {
        &self.0
    }

    /// Iterates over the entries in the order given.
    pub fn iter(&self) -> impl Iterator<Item = Precision> + '_ {
        self.0.iter().copied()
    }

    /// Each entry with its position, as a layer runs it ([`At`]), in the order given.
    pub fn entries(&self) -> impl Iterator<Item = At> + '_ {
        self.0.iter().enumerate().map(|(i, &p)| At::new(i, p))
    }

    /// Entry `entry` with its position, if the list has it.
    pub fn at(&self, entry: usize) -> Option<At> {
        self.0.get(entry).map(|&p| At::new(entry, p))
    }

    /// The entry of `precision` with its position, if the list has it.
    pub fn find(&self, precision: impl Into<Precision>) -> Option<At> {
        let precision = precision.into();
        self.position(precision).map(|i| At::new(i, precision))
    }

    /// The number of entries (never zero).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always `false`: a `BitWidths` list is never empty. Provided for API completeness.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether every entry is uniform (weights and activations at the same bit-width), as
    /// every list was before `wWaA` entries.
    pub fn is_uniform(&self) -> bool {
        self.0.iter().all(|p| p.as_uniform().is_some())
    }

    /// The entries as bit-widths, when every entry is uniform.
    pub fn as_bit_widths(&self) -> Option<Vec<BitWidth>> {
        self.0.iter().map(|p| p.as_uniform()).collect()
    }

    /// The highest entry: the largest weight bit-width, then the largest activation one.
    pub fn max(&self) -> Precision {
        *self.0.iter().max().expect("BitWidths is never empty")
    }

    /// The lowest entry: the smallest weight bit-width, then the smallest activation one.
    pub fn min(&self) -> Precision {
        *self.0.iter().min().expect("BitWidths is never empty")
    }

    /// The position of `precision` (a bit-width is its uniform precision) in the list, if
    /// present.
    pub fn position(&self, precision: impl Into<Precision>) -> Option<usize> {
        let precision = precision.into();
        self.0.iter().position(|&p| p == precision)
    }

    /// The position used to select a switchable parameter (clipping level, BatchNorm) for a
    /// layer running uniform `bits`: the position of that entry in the list, or 0 when it is
    /// absent (the official `bits_list.index` fallback, docs/method.md §4 and §6).
    pub fn index_or_first(&self, bits: BitWidth) -> usize {
        self.position(bits).unwrap_or(0)
    }
}

impl TryFrom<Vec<Precision>> for BitWidths {
    type Error = QuantError;

    fn try_from(entries: Vec<Precision>) -> Result<Self, Self::Error> {
        Self::new(entries)
    }
}

impl From<BitWidths> for Vec<Precision> {
    fn from(entries: BitWidths) -> Self {
        entries.0
    }
}

impl fmt::Display for BitWidths {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl FromStr for BitWidths {
    type Err = QuantError;

    /// Parses a comma-separated list such as `8,6,5,4` or `8,w4a8,4` (spaces around items are
    /// allowed).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |reason: String| QuantError::InvalidBitWidthList {
            input: s.to_string(),
            reason,
        };
        if s.trim().is_empty() {
            return Err(fail(
                "expected a comma-separated list such as 8,6,5,4, found an empty string".into(),
            ));
        }
        let mut entries = Vec::new();
        for (i, item) in s.split(',').enumerate() {
            if item.trim().is_empty() {
                return Err(fail(format!("item {} is empty: {EXPECTED_ENTRY}", i + 1)));
            }
            let p = item.parse::<Precision>().map_err(|e| {
                let why = match e {
                    QuantError::InvalidPrecision { reason, .. } if item.trim().starts_with('w') => {
                        reason
                    }
                    _ => EXPECTED_ENTRY.to_string(),
                };
                fail(format!("item {} is {:?}: {why}", i + 1, item.trim()))
            })?;
            entries.push(p);
        }
        Self::new(entries).map_err(|e| match e {
            QuantError::InvalidBitWidthList { reason, .. } => fail(reason),
            other => other,
        })
    }
}

/// What an item of a bit-width list may be, for its errors.
const EXPECTED_ENTRY: &str = "expected a bit-width (1 to 16, or 32) or wWaA such as w4a8";

#[cfg(test)]
mod tests {
    use super::*;

    fn bw(b: u8) -> BitWidth {
        BitWidth::new(b).unwrap()
    }

    #[test]
    fn accepts_quantized_range_and_full_precision() {
        for b in 1..=16 {
            assert_eq!(bw(b).get(), b);
        }
        assert!(bw(32).is_full_precision());
        assert!(!bw(16).is_full_precision());
    }

    #[test]
    fn rejects_out_of_range_values_with_a_named_error() {
        for text in ["0", "17", "31", "33", "abc", "", "-1", "4.5"] {
            let err = text.parse::<BitWidth>().unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("expected an integer from 1 to 16")
                    && msg.contains("or 32 (full precision)"),
                "{text:?} gave {msg}"
            );
            assert!(msg.contains(&format!("{text:?}")), "{text:?} gave {msg}");
        }
        assert!(BitWidth::new(0).is_err());
        assert!(BitWidth::new(33).is_err());
    }

    #[test]
    fn list_keeps_the_given_order() {
        let list: BitWidths = "8,6,5,4".parse().unwrap();
        assert_eq!(
            list.iter().map(|p| p.weight.get()).collect::<Vec<_>>(),
            [8, 6, 5, 4]
        );
        assert_eq!(list.to_string(), "8,6,5,4");
        let list: BitWidths = " 4, 8 ,32".parse().unwrap();
        assert_eq!(
            list.iter().map(|p| p.weight.get()).collect::<Vec<_>>(),
            [4, 8, 32]
        );
        assert_eq!(list.max(), bw(32).into());
        assert_eq!(list.min(), bw(4).into());
    }

    #[test]
    fn list_rejects_bad_input_and_says_what_was_expected() {
        let cases = [
            ("", "found an empty string"),
            ("  ", "found an empty string"),
            ("8,,4", "item 2 is empty"),
            ("8,4,", "item 3 is empty"),
            (
                "abc",
                "item 1 is \"abc\": expected a bit-width (1 to 16, or 32)",
            ),
            ("8,0", "item 2 is \"0\""),
            ("8,33", "item 2 is \"33\""),
            ("8,6,8", "bit-width 8 appears more than once"),
            ("8,w8a8", "bit-width 8 appears more than once"),
            ("w4a8,6,w4a8", "entry w4a8 appears more than once"),
            (
                "8,w4a",
                "item 2 is \"w4a\": expected wWaA such as w4a8: the activation",
            ),
            (
                "8,4a8",
                "item 2 is \"4a8\": expected a bit-width (1 to 16, or 32) or wWaA",
            ),
        ];
        for (text, expected) in cases {
            let msg = text.parse::<BitWidths>().unwrap_err().to_string();
            assert!(msg.contains(expected), "{text:?} gave {msg:?}");
            assert!(msg.contains(&format!("{text:?}")), "{text:?} gave {msg:?}");
        }
    }

    #[test]
    fn a_list_may_hold_weight_and_activation_pairs() {
        let list: BitWidths = "8, w4a8 ,4".parse().unwrap();
        assert_eq!(list.to_string(), "8,w4a8,4");
        assert!(!list.is_uniform());
        let pair = Precision::new(bw(4), bw(8));
        assert_eq!(list.as_slice()[1], pair);
        assert_eq!(list.find(pair), Some(At::new(1, pair)));
        assert_eq!(list.at(2), Some(At::new(2, bw(4))));
        assert_eq!(list.at(3), None);
        assert_eq!(list.position(bw(4)), Some(2));
        assert_eq!(list.max(), Precision::uniform(bw(8)));
        assert_eq!(list.min(), Precision::uniform(bw(4)));
        assert_eq!(
            list.entries().map(|a| a.entry).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        let json = serde_json::to_string(&list).unwrap();
        assert_eq!(json, r#"[8,"w4a8",4]"#);
        assert_eq!(serde_json::from_str::<BitWidths>(&json).unwrap(), list);
        assert!(serde_json::from_str::<BitWidths>(r#"[8,"w8a8"]"#).is_err());
        assert_eq!(list.as_bit_widths(), None);
        let uniform: BitWidths = "8,6,5,4".parse().unwrap();
        assert!(uniform.is_uniform());
        assert_eq!(uniform.as_bit_widths(), Some([8, 6, 5, 4].map(bw).to_vec()));
    }

    #[test]
    fn index_falls_back_to_the_first_entry() {
        let list: BitWidths = "8,6,5,4".parse().unwrap();
        assert_eq!(list.position(bw(5)), Some(2));
        assert_eq!(list.index_or_first(bw(4)), 3);
        assert_eq!(list.index_or_first(bw(32)), 0);
        assert_eq!(list.position(bw(3)), None);
    }

    #[test]
    fn serde_round_trip_validates() {
        let list: BitWidths = "5,4,3".parse().unwrap();
        let json = serde_json::to_string(&list).unwrap();
        assert_eq!(json, "[5,4,3]");
        assert_eq!(serde_json::from_str::<BitWidths>(&json).unwrap(), list);
        assert!(serde_json::from_str::<BitWidths>("[5,5]").is_err());
        assert!(serde_json::from_str::<BitWidths>("[]").is_err());
        assert!(serde_json::from_str::<BitWidth>("0").is_err());
        assert_eq!(
            serde_json::from_str::<BitWidth>("32").unwrap(),
            BitWidth::FULL
        );
    }

    #[test]
    fn levels_are_powers_of_two() {
        assert_eq!(bw(1).levels(), 2);
        assert_eq!(bw(8).levels(), 256);
        assert_eq!(bw(16).levels(), 65536);
    }

    #[test]
    #[should_panic = "full precision (32 bits) has no level count"]
    fn full_precision_has_no_levels() {
        let _ = BitWidth::FULL.levels();
    }
}
