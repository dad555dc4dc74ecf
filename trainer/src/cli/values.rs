//! Parsers of the numeric flag values. Each rejects what the setting cannot take with a message
//! naming the valid range; clap adds the flag's name and exits with its usage-error code.
//!
//! Numeric flags also set `allow_negative_numbers` (integers) or `allow_hyphen_values` (floats,
//! so that `-inf` is a value too): without it clap reads `--epochs -3` as an unknown flag `-3`.

use clap::builder::RangedI64ValueParser;

/// The largest count a flag takes (epochs, images, steps, ...): far beyond any real run.
const MAX_COUNT: i64 = u32::MAX as i64;

/// A count of at least 1 (epochs, images per batch, steps, a run number).
pub fn count<T>() -> RangedI64ValueParser<T>
where
    T: TryFrom<i64> + Clone + Send + Sync + 'static,
    <T as TryFrom<i64>>::Error: Send + Sync + 'static + std::error::Error + ToString,
{
    RangedI64ValueParser::new().range(1..=MAX_COUNT)
}

/// A count that may be 0 (`--keep-last-n 0`: keep everything).
pub fn at_least_zero<T>() -> RangedI64ValueParser<T>
where
    T: TryFrom<i64> + Clone + Send + Sync + 'static,
    <T as TryFrom<i64>>::Error: Send + Sync + 'static + std::error::Error + ToString,
{
    RangedI64ValueParser::new().range(0..=MAX_COUNT)
}

/// A seed: any whole number in `0..=u64::MAX`.
pub fn seed(text: &str) -> Result<u64, String> {
    text.parse::<u64>()
        .map_err(|_| format!("expected a whole number in 0..={}", u64::MAX))
}

/// A finite number greater than 0 (a learning rate).
pub fn positive(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err("expected a finite number > 0".into()),
    }
}

/// A number in `[0, 1]` (DDIM's η).
pub fn unit_interval(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
        _ => Err("expected a number in [0, 1]".into()),
    }
}

/// Any finite number (a guidance scale).
pub fn finite(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(x),
        _ => Err("expected a finite number".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_must_be_finite_and_in_range() {
        assert_eq!(positive("1e-4"), Ok(1e-4));
        for bad in ["0", "-1", "nan", "inf", "-inf", "x", ""] {
            assert!(positive(bad).is_err(), "{bad}");
        }
        assert_eq!(unit_interval("0"), Ok(0.0));
        assert_eq!(unit_interval("1"), Ok(1.0));
        for bad in ["-0.1", "1.5", "nan", "x"] {
            assert!(unit_interval(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn seeds_take_the_whole_u64_range() {
        assert_eq!(seed("0"), Ok(0));
        assert_eq!(seed(&u64::MAX.to_string()), Ok(u64::MAX));
        let err = seed("-3").unwrap_err();
        assert!(err.contains("0..=18446744073709551615"), "{err}");
    }
}
