//! Parsers of the numeric flags: a bad value is refused by the flag's parser, so the error
//! names the flag, what it expects and what it was given (clap prints
//! `invalid value 'NaN' for '--lr <LR>': expected a finite number above 0`).

/// A count of at least 1.
pub(crate) fn count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        Ok(_) => Err("expected at least 1".into()),
        Err(_) => Err("expected a whole number of at least 1".into()),
    }
}

/// A finite number above 0.
pub(crate) fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err("expected a finite number above 0".into()),
    }
}

/// A finite number of at least 0.
pub(crate) fn non_negative(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err("expected a finite number of at least 0".into()),
    }
}

/// The largest input side the cost model takes (pixels).
pub(crate) const MAX_INPUT: usize = 16_384;

/// An image side in pixels, from 8 to [`MAX_INPUT`].
pub(crate) fn input_side(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (8..=MAX_INPUT).contains(&n) => Ok(n),
        _ => Err(format!("expected a side in pixels from 8 to {MAX_INPUT}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_parser_takes_its_range_and_refuses_the_rest() {
        assert_eq!(count("3"), Ok(3));
        for bad in ["0", "-1", "1.5", "x"] {
            assert!(count(bad).is_err(), "{bad}");
        }
        assert_eq!(positive("0.5"), Ok(0.5));
        for bad in ["0", "-1", "NaN", "inf", "-inf", "x"] {
            assert!(positive(bad).is_err(), "{bad}");
        }
        assert_eq!(non_negative("0"), Ok(0.0));
        for bad in ["-0.1", "NaN", "inf"] {
            assert!(non_negative(bad).is_err(), "{bad}");
        }
        assert_eq!(input_side("224"), Ok(224));
        for bad in ["0", "7", "100000000"] {
            assert!(input_side(bad).is_err(), "{bad}");
        }
    }
}
