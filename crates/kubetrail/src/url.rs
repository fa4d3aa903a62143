//! `kubetrail url`: the Jaeger address of an object's trace, computed from the deterministic
//! ids alone — no call to Jaeger.

use std::process::ExitCode;

use anyhow::Context;
use kubetrail_model::ids::{jaeger_trace_url, trace_id, window_start};
use kubetrail_model::{ObjectRef, UnixNanos, parse_rfc3339_nanos};

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

pub async fn run(args: UrlArgs) -> anyhow::Result<ExitCode> {
    let (cfg, cluster) = effective_config(&args.pipeline)?;
    let object: ObjectRef = args.object.parse().map_err(anyhow::Error::msg)?;
    let at = match args.time.as_deref() {
        Some(t) => parse_rfc3339_nanos(t)
            .with_context(|| format!("--time {t:?}: expected an RFC 3339 time"))?,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or(0),
    };
    let window = i64::try_from(cfg.aggregate.window.as_nanos()).unwrap_or(i64::MAX);
    let start = window_start(at, window);
    let trace = trace_id(&cluster, &object, start);
    println!("{}", jaeger_trace_url(&args.jaeger_url, trace));
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
