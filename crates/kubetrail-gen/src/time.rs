//! Time arithmetic and RFC 3339 formatting, in microseconds since the Unix epoch.
//!
//! The API server writes `requestReceivedTimestamp`/`stageTimestamp` with microsecond precision
//! (`2024-05-01T10:00:00.123456Z`) and object timestamps (`creationTimestamp`, condition
//! transition times) with second precision (`2024-05-01T10:00:00Z`). The generator keeps every
//! instant in whole microseconds so both forms are exact.

/// Microseconds since the Unix epoch (UTC).
pub(crate) type Micros = i64;

/// One millisecond in [`Micros`].
pub(crate) const MS: Micros = 1_000;
/// One second in [`Micros`].
pub(crate) const SEC: Micros = 1_000_000;

/// Formats an instant as the API server's audit timestamp: `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub(crate) fn rfc3339_micros(t: Micros) -> String {
    let (date, secs_of_day) = split(t);
    let frac = t.rem_euclid(SEC);
    format!(
        "{date}T{:02}:{:02}:{:02}.{frac:06}Z",
        secs_of_day / 3600,
        secs_of_day / 60 % 60,
        secs_of_day % 60
    )
}

/// Formats an instant truncated to whole seconds: `YYYY-MM-DDTHH:MM:SSZ` (object metadata times).
pub(crate) fn rfc3339_secs(t: Micros) -> String {
    let (date, secs_of_day) = split(t);
    format!(
        "{date}T{:02}:{:02}:{:02}Z",
        secs_of_day / 3600,
        secs_of_day / 60 % 60,
        secs_of_day % 60
    )
}

fn split(t: Micros) -> (String, i64) {
    let secs = t.div_euclid(SEC);
    let days = secs.div_euclid(86_400);
    let secs_of_day = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    (format!("{y:04}-{m:02}-{d:02}"), secs_of_day)
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Formats a duration the way Go's `time.Duration.String` does for millisecond-truncated
/// values, as the kubelet writes them in `Pulled` events: `850ms`, `2.3s`, `1m4.5s`.
pub(crate) fn go_duration_ms(ms: i64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let minutes = ms / 60_000;
    let rest = ms % 60_000;
    let secs = rest / 1000;
    let frac = rest % 1000;
    let mut s = String::new();
    if minutes > 0 {
        s.push_str(&format!("{minutes}m"));
    }
    if frac == 0 {
        s.push_str(&format!("{secs}s"));
    } else {
        let f = format!("{frac:03}");
        s.push_str(&format!("{secs}.{}s", f.trim_end_matches('0')));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        // 2024-05-01T10:00:00Z
        let t = 1_714_557_600 * SEC + 123_456;
        assert_eq!(rfc3339_micros(t), "2024-05-01T10:00:00.123456Z");
        assert_eq!(rfc3339_secs(t), "2024-05-01T10:00:00Z");
        assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        // leap day
        assert_eq!(rfc3339_secs(951_782_400 * SEC), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_secs(-SEC), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration_ms(850), "850ms");
        assert_eq!(go_duration_ms(2300), "2.3s");
        assert_eq!(go_duration_ms(2345), "2.345s");
        assert_eq!(go_duration_ms(3000), "3s");
        assert_eq!(go_duration_ms(64_500), "1m4.5s");
    }
}
