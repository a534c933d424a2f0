//! Choosing the bit-width that fits a budget from an artifact's table.

use adabits_runtime::BitRow;

/// What [`select`] may not exceed or fall below.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Budget {
    /// Largest model size in bytes.
    pub max_bytes: Option<u64>,
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
            && row.model_bytes > max as f64
        {
            why.push(format!("{:.0} bytes > {max}", row.model_bytes));
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
            reasons.push(format!("{}: fits", row.bits.describe()));
            fits.push(row.clone());
        } else {
            reasons.push(format!("{}: {}", row.bits.describe(), why.join(", ")));
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
    fn selection_respects_every_limit_and_says_why() {
        let row = |bits: &str, top1, gbitops, bytes| BitRow {
            bits: bits.parse().unwrap(),
            top1: Some(top1),
            gbitops,
            model_bytes: bytes,
        };
        let table = [
            row("8", 70.0, 38.5, 4200.0),
            row("6", 70.2, 22.9, 3400.0),
            row("5", 69.0, 16.8, 3000.0),
            row("w4a8", 69.5, 19.3, 2600.0),
            row("4", 66.0, 11.8, 2600.0),
        ];
        let pick = |b: Budget| select(&table, &b).chosen.map(|r| r.bits.to_string());
        let some = |s: &str| Some(s.to_string());
        assert_eq!(pick(Budget::default()), some("6"));
        let by_size = Budget {
            max_bytes: Some(3100),
            ..Budget::default()
        };
        // A pair entry is a row like any other: 4-bit weights, so 4's size, and more accurate
        // than 5 bits.
        assert_eq!(pick(by_size), some("w4a8"));
        let s = select(&table, &by_size);
        assert_eq!(s.reasons[0], "8 bits: 4200 bytes > 3100");
        assert_eq!(s.reasons[2], "5 bits: fits");
        let floor = Budget {
            min_top1: Some(68.5),
            ..Budget::default()
        };
        assert_eq!(pick(floor), some("5"));
        let by_bitops = Budget {
            max_gbitops: Some(20.0),
            ..Budget::default()
        };
        assert_eq!(pick(by_bitops), some("w4a8"));
        assert_eq!(select(&table, &by_bitops).reasons[3], "w4a8: fits");
        let impossible = Budget {
            max_gbitops: Some(10.0),
            ..Budget::default()
        };
        assert_eq!(pick(impossible), None);
    }
}
