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

/// A count with thousands separated: `10,000`.
pub fn count(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
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

    #[test]
    fn counts_have_thousands_separators() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1234567), "1,234,567");
    }
}
