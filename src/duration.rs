//! Durations as users write them: `500ms`, `30s`, `5m`, `1h`, a sum such as `1m30s`, decimals
//! (`1.5s`, `0.25h`), or a bare number of seconds (`10`, `2.5`), as `flock -w 10` takes it.

use std::time::Duration;

/// How durations are written, for help texts and errors.
pub const FORMS: &str = "10 (seconds), 1.5s, 250ms, 5m, 1h or 1m30s";

/// The largest duration accepted: far beyond any wait, and safe to add to an `Instant`.
const MAX: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Parses a duration; the error is a short phrase for a usage message.
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let bad = || format!("invalid duration '{text}': write it like {FORMS}");
    if let Some(rest) = t.strip_prefix('-') {
        return Err(if rest.starts_with(|c: char| c.is_ascii_digit()) {
            format!("invalid duration '{text}': a duration cannot be negative")
        } else {
            // `-w --shared`: the value was left out and the next option taken for it.
            format!("expected a duration such as {FORMS}, found '{text}'")
        });
    }
    if t.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let (part, tail) = term(rest, rest.len() == t.len()).ok_or_else(bad)?;
        total = total
            .checked_add(part)
            .filter(|d| *d <= MAX)
            .ok_or_else(bad)?;
        rest = tail;
    }
    Ok(total)
}

/// One `NUMBER[UNIT]` at the start of `s`, and what follows it. A number without a unit is
/// seconds, and only as the whole text (`1m30` is a slip, not 1m30s).
fn term(s: &str, whole: bool) -> Option<(Duration, &str)> {
    let num_len = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, rest) = s.split_at(num_len);
    let unit_len = rest
        .find(|c: char| c.is_ascii_digit() || c == '.')
        .unwrap_or(rest.len());
    let (unit, rest) = rest.split_at(unit_len);
    let unit_ns: u128 = match unit {
        "" if whole && rest.is_empty() => 1_000_000_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" | "min" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return None,
    };
    let ns = scaled(num, unit_ns)?;
    let ns = u64::try_from(ns).ok()?;
    Some((Duration::from_nanos(ns), rest))
}

/// `num` (digits, at most one `.` with digits on at least one side) times `unit_ns`, in whole
/// nanoseconds (a finer fraction is dropped).
fn scaled(num: &str, unit_ns: u128) -> Option<u128> {
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') || int.len() > 20 {
        return None;
    }
    let whole: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut ns = whole.checked_mul(unit_ns)?;
    let mut scale = unit_ns;
    for d in frac.bytes().take(18) {
        scale /= 10;
        ns += u128::from(d - b'0') * scale;
    }
    Some(ns)
}

/// Formats a duration the way [`parse`] reads it (whole milliseconds).
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".into()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let ms = Duration::from_millis;
        for (text, want) in [
            ("500ms", ms(500)),
            ("250ms", ms(250)),
            ("30s", ms(30_000)),
            ("5m", ms(300_000)),
            ("1h", ms(3_600_000)),
            ("1m30s", ms(90_000)),
            ("0", ms(0)),
            ("0.0", ms(0)),
            ("10", ms(10_000)),
            ("2.5", ms(2500)),
            (" 10 ", ms(10_000)),
            ("1.5s", ms(1500)),
            (".5s", ms(500)),
            ("5.s", ms(5000)),
            ("1.5m", ms(90_000)),
            ("0.25h", ms(900_000)),
            ("1.5ms", Duration::from_micros(1500)),
            ("1h0.5m", ms(3_630_000)),
        ] {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
        for bad in [
            "",
            "s",
            ".",
            "1..5s",
            "1.2.3s",
            "-1s",
            "3d",
            "1 s",
            "1m30",
            "10 s",
            "99999999999h",
            "1e3",
            "ten",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(parse("-1s").unwrap_err().contains("cannot be negative"));
        assert!(parse("-1").unwrap_err().contains("cannot be negative"));
        assert!(parse("--shared")
            .unwrap_err()
            .contains("expected a duration"));
        assert!(parse("3d").unwrap_err().contains("10 (seconds)"));
    }

    #[test]
    fn formats() {
        assert_eq!(format(Duration::from_secs(90)), "90s");
        assert_eq!(format(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format(Duration::from_secs(600)), "10m");
    }
}
