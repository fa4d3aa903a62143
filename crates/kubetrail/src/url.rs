//! `kubetrail url`: the Jaeger address of an object's trace, computed from the deterministic
//! ids alone — no call to Jaeger.

use std::process::ExitCode;

use anyhow::Context;
use kubetrail_model::ids::{object_trace_url, window_start};
use kubetrail_model::{ObjectRef, UnixNanos, format_rfc3339, parse_rfc3339_nanos};

use crate::cli::UrlArgs;
use crate::replay::effective_config;

/// The Jaeger search URL that finds an object's spans by tag in a time range, whatever family
/// it belongs to.
pub(crate) fn search_url(
    jaeger: &str,
    object: &ObjectRef,
    service: &str,
    start: UnixNanos,
    end: UnixNanos,
) -> String {
    let tags = format!("{{\"kubetrail.object.ref\":\"{object}\"}}");
    let enc: String = tags
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!(
        "{}/search?service={service}&tags={enc}&start={}&end={}",
        jaeger.trim_end_matches('/'),
        start / 1000,
        end / 1000
    )
}

/// Windows `kubetrail url --since` lists at most.
const MAX_WINDOWS: i64 = 10_000;

fn parse_time(flag: &str, t: &str) -> anyhow::Result<UnixNanos> {
    parse_rfc3339_nanos(t).with_context(|| format!("{flag} {t:?}: expected an RFC 3339 time"))
}

/// The starts of the windows that overlap `[since, until]`, oldest first.
pub(crate) fn windows(
    since: UnixNanos,
    until: UnixNanos,
    window: i64,
) -> anyhow::Result<Vec<UnixNanos>> {
    if until < since {
        anyhow::bail!("--until is before --since");
    }
    let first = window_start(since, window);
    let last = window_start(until, window);
    let count = (last - first) / window.max(1) + 1;
    if count > MAX_WINDOWS {
        anyhow::bail!(
            "--since … --until covers {count} windows of the configured length; at most {MAX_WINDOWS} are listed: narrow the range"
        );
    }
    Ok((0..count).map(|i| first + i * window).collect())
}

pub async fn run(args: UrlArgs) -> anyhow::Result<ExitCode> {
    let (cfg, cluster) = effective_config(&args.pipeline)?;
    let object: ObjectRef = args.object.parse()?;
    let window = i64::try_from(cfg.aggregate.window.as_nanos()).unwrap_or(i64::MAX);
    if let Some(since) = args.since.as_deref() {
        // The object's history: one trace per window, computed from the ids. A family cut into
        // parts is reached from this trace (the owner's span links to its parts).
        let since = parse_time("--since", since)?;
        let until = match args.until.as_deref() {
            Some(t) => parse_time("--until", t)?,
            None => kubetrail_model::now_unix_nanos(),
        };
        for start in windows(since, until, window)? {
            println!(
                "{}  {}",
                format_rfc3339(start),
                object_trace_url(&args.jaeger_url, &cluster, &object, start, window)
            );
        }
        if args.search {
            println!(
                "{}",
                search_url(
                    &args.jaeger_url,
                    &object,
                    &cfg.aggregate.object_service,
                    window_start(since, window),
                    window_start(until, window).saturating_add(window)
                )
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let at = match args.time.as_deref() {
        Some(t) => parse_time("--time", t)?,
        None => kubetrail_model::now_unix_nanos(),
    };
    let start = window_start(at, window);
    println!(
        "{}",
        object_trace_url(&args.jaeger_url, &cluster, &object, at, window)
    );
    if args.search {
        println!(
            "{}",
            search_url(
                &args.jaeger_url,
                &object,
                &cfg.aggregate.object_service,
                start,
                start.saturating_add(window)
            )
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_the_range() {
        let w = 1_800 * 1_000_000_000i64;
        let t = 1_714_557_600 * 1_000_000_000i64; // a window start
        assert_eq!(windows(t + 5, t + 10, w).unwrap(), vec![t]);
        assert_eq!(
            windows(t - 1, t + w, w).unwrap(),
            vec![t - w, t, t + w],
            "partial windows at both ends count"
        );
        assert!(windows(t + 10, t, w).is_err());
        assert!(windows(0, t, w).is_err(), "too many windows");
    }
}
