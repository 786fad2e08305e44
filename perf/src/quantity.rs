//! Human quantities on the command line and in SLO files: byte sizes
//! ("4KiB", "1m", "4096") and durations ("10s", "500ms", "2m").

use crate::error::{Error, Result};

const KIB_BYTES: u64 = 1024;

/// Parses a byte size. Suffixes are binary (k = KiB) because block sizes are.
pub fn parse_bytes(text: &str) -> Result<u64> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, suffix) = trimmed.split_at(split);
    let number: u64 = digits.parse().map_err(|_| {
        Error::invalid(
            "size",
            text,
            "expected a number with an optional unit, e.g. 4KiB",
        )
    })?;
    let unit = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => KIB_BYTES,
        "m" | "mb" | "mib" => KIB_BYTES.pow(2),
        "g" | "gb" | "gib" => KIB_BYTES.pow(3),
        "t" | "tb" | "tib" => KIB_BYTES.pow(4),
        _ => {
            return Err(Error::invalid(
                "size",
                text,
                "unknown unit (use B, KiB, MiB, GiB, TiB)",
            ))
        }
    };
    number
        .checked_mul(unit)
        .ok_or_else(|| Error::invalid("size", text, "too large"))
}

/// Parses a duration into milliseconds; a bare number is seconds.
pub fn parse_duration_ms(text: &str) -> Result<u64> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (digits, suffix) = trimmed.split_at(split);
    let number: f64 = digits
        .parse()
        .map_err(|_| Error::invalid("duration", text, "expected a number with a unit, e.g. 10s"))?;
    let unit_ms = match suffix.trim() {
        "ms" => 1.0,
        "" | "s" => 1000.0,
        "m" | "min" => 60_000.0,
        "h" => 3_600_000.0,
        _ => {
            return Err(Error::invalid(
                "duration",
                text,
                "unknown unit (use ms, s, m, h)",
            ))
        }
    };
    let ms = number * unit_ms;
    if !ms.is_finite() || ms < 0.0 || ms > u64::MAX as f64 {
        return Err(Error::invalid("duration", text, "out of range"));
    }
    Ok(ms.round() as u64)
}

/// "4 KiB", "1 MiB": the largest binary unit that divides the size.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes;
    let mut unit = 0;
    while unit + 1 < UNITS.len() && value >= KIB_BYTES && value % KIB_BYTES == 0 {
        value /= KIB_BYTES;
        unit += 1;
    }
    format!("{value} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::{format_bytes, parse_bytes, parse_duration_ms};

    fn check_bytes(text: &str, expected: Option<u64>) {
        assert_eq!(parse_bytes(text).ok(), expected, "{text}");
    }

    #[test]
    fn sizes() {
        check_bytes("4096", Some(4096));
        check_bytes("4KiB", Some(4096));
        check_bytes("4k", Some(4096));
        check_bytes("1 MiB", Some(1 << 20));
        check_bytes("2G", Some(2 << 30));
        check_bytes("4x", None);
        check_bytes("KiB", None);
        check_bytes("99999999999T", None);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("10s").ok(), Some(10_000));
        assert_eq!(parse_duration_ms("500ms").ok(), Some(500));
        assert_eq!(parse_duration_ms("0.2s").ok(), Some(200));
        assert_eq!(parse_duration_ms("2m").ok(), Some(120_000));
        assert_eq!(parse_duration_ms("3").ok(), Some(3000));
        assert!(parse_duration_ms("fast").is_err());
    }

    #[test]
    fn formats() {
        assert_eq!(format_bytes(4096), "4 KiB");
        assert_eq!(format_bytes(1 << 20), "1 MiB");
        assert_eq!(format_bytes(1000), "1000 B");
    }
}
