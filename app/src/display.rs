//! How values are written in the page: times, metrics, sizes.

/// `2025-01-15T10:30:00` → `2025-01-15 10:30`; other spellings are shown as they are.
pub fn time(stamp: &str) -> String {
    match stamp.split_once('T') {
        Some((date, clock)) if clock.len() >= 5 => format!("{date} {}", &clock[..5]),
        _ => stamp.to_string(),
    }
}

/// A metric value with enough digits to compare losses; `NaN`, `∞`, `−∞` for a diverged run;
/// `—` when absent.
pub fn metric(value: Option<f64>) -> String {
    match value {
        Some(v) if v.is_nan() => "NaN".to_string(),
        Some(v) if v == f64::INFINITY => "∞".to_string(),
        Some(v) if v == f64::NEG_INFINITY => "−∞".to_string(),
        Some(v) if v != 0.0 && v.abs() < 1e-3 => format!("{v:.3e}"),
        Some(v) => format!("{v:.4}"),
        None => "—".to_string(),
    }
}

/// A byte count in KiB/MiB.
pub fn bytes(n: u64) -> String {
    const KIB: f64 = 1024.0;
    let n = n as f64;
    if n < KIB {
        format!("{n} B")
    } else if n < KIB * KIB {
        format!("{:.1} KiB", n / KIB)
    } else {
        format!("{:.1} MiB", n / KIB / KIB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(time("2025-01-15T10:30:00"), "2025-01-15 10:30");
        assert_eq!(time("yesterday"), "yesterday");
        assert_eq!(metric(Some(0.23456)), "0.2346");
        assert_eq!(metric(Some(0.00012)), "1.200e-4");
        assert_eq!(metric(None), "—");
        assert_eq!(metric(Some(f64::NAN)), "NaN");
        assert_eq!(metric(Some(f64::INFINITY)), "∞");
        assert_eq!(metric(Some(f64::NEG_INFINITY)), "−∞");
        assert_eq!(bytes(2048), "2.0 KiB");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
