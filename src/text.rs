//! Durations and byte strings as settings and messages write them.

use std::time::{Duration, SystemTime};

/// Reads `\xNN` escapes (and `\\`); everything else is taken as UTF-8 bytes.
pub fn unescape(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1)) {
            (b'\\', Some(b'x')) => {
                let hex = std::str::from_utf8(bytes.get(i + 2..i + 4)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 4;
            }
            (b'\\', Some(b'\\')) => {
                out.push(b'\\');
                i += 2;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

/// Byte strings as sentences quote them: `"a", "\x06\x16"`.
pub fn quoted<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> String {
    items
        .into_iter()
        .map(|b| format!("\"{}\"", escape(b)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Bytes as `config` shows them: printable ASCII as is, others as `\xNN`.
pub fn escape(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if (0x20..0x7f).contains(&b) && b != b'\\' {
                (b as char).to_string()
            } else {
                format!("\\x{b:02x}")
            }
        })
        .collect()
}

/// Parses `250us`, `500ms`, `1.5s`, `2m`, `1h`. A bare number has no unit and is refused.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "us" | "µs" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    };
    if !seconds.is_finite() || seconds > 1e9 {
        return None;
    }
    Some(Duration::from_secs_f64(seconds))
}

/// A duration the way a person writes it: `500ms`, `5s`, `1.5s`.
pub fn show(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// `45.2s`, `6m12s`, `2h05m`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{:.1}s", d.as_secs_f64()),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// Seconds since the Unix epoch of an ISO 8601 time as Python's `isoformat()` writes it
/// (`2026-11-27T11:11:59.019151+00:00`, or with `Z`, or with no offset for UTC).
pub fn parse_iso8601(text: &str) -> Option<f64> {
    let text = text.trim();
    let (local, offset) = if let Some(t) = text.strip_suffix('Z') {
        (t, 0.0)
    } else if text.len() > 6
        && text.is_char_boundary(text.len() - 6)
        && matches!(text.as_bytes()[text.len() - 6], b'+' | b'-')
        && text.as_bytes()[text.len() - 3] == b':'
    {
        let (t, off) = text.split_at(text.len() - 6);
        let hours: f64 = off[1..3].parse().ok()?;
        let minutes: f64 = off[4..6].parse().ok()?;
        let sign = if off.starts_with('-') { -1.0 } else { 1.0 };
        (t, sign * (hours * 3600.0 + minutes * 60.0))
    } else {
        (text, 0.0)
    };
    let t = humantime::parse_rfc3339_weak(local).ok()?;
    let secs = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs_f64();
    Some(secs - offset)
}

/// `s` cut to at most `max` bytes, at a character boundary.
pub fn cut_at(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Seconds since the Unix epoch of `t` (0 before it).
pub fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> f64 {
    unix_secs(SystemTime::now())
}

/// `2026-11-27T10:00:00.123Z`: UTC with milliseconds, as `/healthz` and the JSON logs write
/// times.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn iso_times_as_python_writes_them() {
        let utc = 1_795_777_919.019151;
        for text in [
            "2026-11-27T11:11:59.019151+00:00",
            "2026-11-27T11:11:59.019151Z",
            "2026-11-27T11:11:59.019151",
            "2026-11-27T16:41:59.019151+05:30",
            "2026-11-27T06:11:59.019151-05:00",
        ] {
            let got = parse_iso8601(text).unwrap_or_else(|| panic!("{text}"));
            assert!((got - utc).abs() < 1e-5, "{text}: {got}");
        }
        for bad in [
            "",
            "tomorrow",
            "2026-11-27T11:11:59+0x:00",
            "+00:00",
            "2026-13-01T00:00:00Z",
        ] {
            assert_eq!(parse_iso8601(bad), None, "{bad}");
        }
    }

    #[test]
    fn cuts_at_a_character_boundary() {
        assert_eq!(cut_at("héllo", 2), "h");
        assert_eq!(cut_at("héllo", 3), "hé");
        assert_eq!(cut_at("hi", 10), "hi");
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_millis(45_200)), "45.2s");
        assert_eq!(human(Duration::from_secs(372)), "6m12s");
        assert_eq!(human(Duration::from_secs(7500)), "2h05m");
    }

    #[test]
    fn rfc3339_dates() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_777_764_473);
        assert_eq!(rfc3339(t), "2026-11-27T11:09:24.473Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
