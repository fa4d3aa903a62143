//! RFC 3339 timestamps as the API server writes them (`2023-06-12T13:20:01.123456Z`).
//!
//! Parsed by hand because it runs once or twice per audit event on the replay hot path; the
//! parser accepts any RFC 3339 date-time (fraction of any length, `Z` or a numeric offset).

use serde::{Deserialize, Deserializer};

/// Nanoseconds since the Unix epoch, UTC. Negative before 1970.
pub type UnixNanos = i64;

/// `t` in Unix nanoseconds: 0 for a time before the epoch, [`UnixNanos::MAX`] past 2262.
pub fn unix_nanos(t: std::time::SystemTime) -> UnixNanos {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Now, by the wall clock, in Unix nanoseconds (see [`unix_nanos`]). Live sources tick the
/// pipeline's event-time clock with it; nothing that replays history may use it.
pub fn now_unix_nanos() -> UnixNanos {
    unix_nanos(std::time::SystemTime::now())
}

/// Parses an RFC 3339 date-time into nanoseconds since the Unix epoch.
///
/// Returns `None` for anything that is not a valid date-time. Valid times outside what
/// nanoseconds in an `i64` can hold (before 1677, after 2262; RFC 3339 allows years
/// 0000–9999) are clamped to [`UnixNanos::MIN`] / [`UnixNanos::MAX`].
pub fn parse_rfc3339_nanos(s: &str) -> Option<UnixNanos> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let mut v: i64 = 0;
        for &c in b.get(r)? {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + i64::from(c - b'0');
        }
        Some(v)
    };
    let year = num(0..4)?;
    let month = num(5..7)?;
    let day = num(8..10)?;
    let hour = num(11..13)?;
    let minute = num(14..16)?;
    let second = num(17..19)?;
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut nanos: i64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        let mut scale: i64 = 100_000_000;
        while let Some(&c) = b.get(i) {
            if !c.is_ascii_digit() {
                break;
            }
            nanos += i64::from(c - b'0') * scale;
            scale /= 10;
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    let offset_secs = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if *sign == b'+' { off } else { -off }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    // Nanoseconds in an i64 cover 1677-09-21 to 2262-04-11; RFC 3339 goes from year 0000 to
    // 9999. A valid time outside the range is clamped to its end (order is kept up to it)
    // rather than refused.
    Some(
        secs.checked_mul(1_000_000_000)
            .and_then(|n| n.checked_add(nanos))
            .unwrap_or(if secs > 0 {
                UnixNanos::MAX
            } else {
                UnixNanos::MIN
            }),
    )
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Formats nanoseconds since the epoch as RFC 3339 UTC with microseconds, as Kubernetes does.
pub fn format_rfc3339(nanos: UnixNanos) -> String {
    let secs = nanos.div_euclid(1_000_000_000);
    let sub = nanos.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60,
        sub / 1000
    )
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Serde helper: an optional RFC 3339 string field deserialized straight to [`UnixNanos`].
pub(crate) fn de_opt_time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<UnixNanos>, D::Error> {
    let s: Option<std::borrow::Cow<'de, str>> = Option::deserialize(d)?;
    match s {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => parse_rfc3339_nanos(&s)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid RFC 3339 timestamp {s:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_kubernetes_timestamps() {
        assert_eq!(parse_rfc3339_nanos("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_nanos("2023-06-12T13:20:01.123456Z"),
            Some(1_686_576_001_123_456_000)
        );
        assert_eq!(
            parse_rfc3339_nanos("2023-06-12T15:20:01+02:00"),
            Some(1_686_576_001_000_000_000)
        );
        assert_eq!(
            parse_rfc3339_nanos("2023-06-12T13:20:01.5-00:30"),
            Some(1_686_577_801_500_000_000)
        );
    }

    #[test]
    fn the_whole_rfc3339_range_parses() {
        assert_eq!(
            parse_rfc3339_nanos("9999-12-31T23:59:59.999999999Z"),
            Some(UnixNanos::MAX)
        );
        assert_eq!(
            parse_rfc3339_nanos("0000-01-01T00:00:00Z"),
            Some(UnixNanos::MIN)
        );
        assert_eq!(
            parse_rfc3339_nanos("2262-04-11T23:47:16.854775807Z"),
            Some(UnixNanos::MAX)
        );
        assert_eq!(
            parse_rfc3339_nanos("1970-01-01T00:00:01Z"),
            Some(1_000_000_000)
        );
        assert!(parse_rfc3339_nanos("2261-01-01T00:00:00Z").unwrap() < UnixNanos::MAX);
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            "2023-06-12",
            "2023-13-12T13:20:01Z",
            "2023-02-30T00:00:00Z",
            "2023-06-12T13:20:01",
            "2023-06-12T13:20:01.Z",
            "2023-06-12T13:20:01Zx",
            "abcd-06-12T13:20:01Z",
        ] {
            assert_eq!(parse_rfc3339_nanos(s), None, "{s}");
        }
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(micros in -2_000_000_000_000_000i64..8_000_000_000_000_000i64) {
            let nanos = micros * 1000;
            prop_assert_eq!(parse_rfc3339_nanos(&format_rfc3339(nanos)), Some(nanos));
        }
    }
}
