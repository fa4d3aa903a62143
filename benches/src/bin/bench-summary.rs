//! Prints the figures behind the product targets, measured once each on this machine:
//! replay throughput against a bare serde_json parse of the same generated dump, and the
//! replay's peak memory on a small and a large input (it must be bounded by configuration,
//! not by input size). `just bench` runs it after the criterion benches.
//!
//! Usage: `bench-summary [--namespaces N] [--only-kafka | --only-webhook]` (`--only-kafka`: only the Kafka
//! produce row, against a real Apache Kafka the bench starts); internally re-invokes itself as
//! `bench-summary replay-only FILE` so each memory measurement has a fresh process.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use kubetrail_benches::{bare_parse, decode, pipeline, pipeline_encoded, volume};

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn best_of<T>(n: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut last = None;
    for _ in 0..n {
        let t = Instant::now();
        let v = f();
        best = best.min(t.elapsed());
        last = Some(v);
    }
    (best, last.expect("n > 0"))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("replay-only") {
        // Child: stream a file through the pipeline and report the peak RSS.
        let file = args.get(2).context("replay-only FILE")?;
        let spans = kubetrail_benches::pipeline_file(file)?;
        println!("{spans} {}", peak_rss_kib());
        return Ok(());
    }
    let only_kafka = args.iter().any(|a| a == "--only-kafka");
    let namespaces: u32 = args
        .iter()
        .position(|a| a == "--namespaces")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let input = volume(namespaces);
    let mb = input.len() as f64 / 1e6;
    let lines = input.iter().filter(|b| **b == b'\n').count() as f64;
    println!(
        "kubetrail bench summary: generated dump of {lines} events, {mb:.1} MB ({namespaces} namespaces)"
    );
    if args.iter().any(|a| a == "--only-webhook") {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        return webhook_rows(&input, &rt);
    }
    if only_kafka {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        kafka_row(&input, &rt);
        return Ok(());
    }
    let (t_bare, _) = best_of(3, || bare_parse(&input));
    let (t_decode, _) = best_of(3, || decode(&input));
    let (t_pipe, spans) = best_of(3, || pipeline(&input));
    let (t_enc, bytes) = best_of(3, || pipeline_encoded(&input));
    let row = |name: &str, t: Duration| {
        println!(
            "  {name:<38} {:>8.1} ms  {:>7.1} MB/s  {:>9.0} events/s  {:>5.2}× bare parse",
            t.as_secs_f64() * 1e3,
            mb / t.as_secs_f64(),
            lines / t.as_secs_f64(),
            t.as_secs_f64() / t_bare.as_secs_f64()
        );
    };
    row("bare serde_json::Value parse", t_bare);
    row("decode into AuditEvent", t_decode);
    row("decode + pipeline", t_pipe);
    row("decode + pipeline + OTLP encode", t_enc);
    println!(
        "  ({spans} spans, {:.1} MB of OTLP protobuf)",
        bytes as f64 / 1e6
    );

    // The product itself: `kubetrail replay` (release build) on the dump, wall clock: reading,
    // the pipeline and the exporter run on separate threads.
    let dir = std::env::temp_dir().join("kubetrail-bench");
    std::fs::create_dir_all(&dir)?;
    let dump = dir.join(format!("volume-{namespaces}.jsonl"));
    std::fs::write(&dump, &input)?;
    let exe = std::env::current_exe()?.with_file_name("kubetrail");
    if exe.exists() {
        let out_file = dir.join("replay.otlp.jsonl");
        let (t_replay, status) = best_of(3, || {
            Command::new(&exe)
                .args(["replay", "--no-progress", "--otlp-json"])
                .arg(&out_file)
                .arg(&dump)
                .output()
                .map(|o| {
                    (
                        o.status.success(),
                        String::from_utf8_lossy(&o.stderr).into_owned(),
                    )
                })
        });
        match status {
            Ok((true, _)) => row("kubetrail replay --otlp-json FILE (process)", t_replay),
            Ok((false, err)) => println!("  kubetrail replay failed: {err}"),
            Err(e) => println!("  kubetrail replay could not run: {e}"),
        }
    } else {
        println!(
            "  (build the binary first for the end-to-end row: cargo build --release -p kubetrail)"
        );
    }

    // Memory: the same pipeline over a small and a 4× larger dump, each in a fresh process.
    for ns in [namespaces / 4, namespaces] {
        let path = dir.join(format!("volume-{ns}.jsonl"));
        std::fs::write(&path, volume(ns.max(1)))?;
        let out = Command::new(std::env::current_exe()?)
            .arg("replay-only")
            .arg(&path)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let v: Vec<u64> = text
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if let [spans, peak] = v[..] {
            let size = std::fs::metadata(&path)?.len() as f64 / 1e6;
            println!(
                "  memory: streaming a {size:>6.1} MB dump through the pipeline ({spans} spans): peak RSS {:.1} MiB",
                peak as f64 / 1024.0
            );
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    webhook_rows(&input, &rt)?;
    kafka_row(&input, &rt);
    Ok(())
}

/// Kafka: kubetrail's producer against the broker's own produce limit (bare rdkafka), on the
/// first 20,000 events of `input`.
fn kafka_row(input: &[u8], rt: &tokio::runtime::Runtime) {
    let events: Vec<kubetrail_model::AuditEvent> = input
        .split(|b| *b == b'\n')
        .filter_map(|l| serde_json::from_slice(l).ok())
        .take(20_000)
        .collect();
    match rt.block_on(kubetrail_benches::kafka::run(events)) {
        Ok(k) => println!(
            "  kafka (Apache Kafka 4.1, acks=all, idempotent): bare rdkafka {:>8.0} events/s, KafkaProducer 400-event batches {:>8.0} events/s = {:.0}% of the broker's limit",
            k.raw_events_per_sec,
            k.kubetrail_events_per_sec,
            100.0 * k.kubetrail_events_per_sec / k.raw_events_per_sec
        ),
        Err(e) => {
            println!(
                "  kafka: not measured ({e:#}); needs Java 17 + Maven (scripts/install-kafka.sh)"
            )
        }
    }
}

/// The webhook: in memory and through the durable log (`--only-webhook` runs only these).
fn webhook_rows(input: &[u8], rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    // The webhook: 400-event EventLists from 4 concurrent clients on loopback.
    let bodies = kubetrail_benches::event_list_bodies(input, 400);
    for (label, full) in [
        ("receiver + embedded queue", false),
        ("serve: receiver + pipeline + OTLP encode", true),
    ] {
        let f = rt.block_on(kubetrail_benches::webhook::run(
            bodies.clone(),
            400,
            4,
            full,
        ))?;
        println!(
            "  webhook, {label:<40} {:>8.0} events/s  p50 {:>6.1} ms  p99 {:>6.1} ms  max {:>6.1} ms  ({} bodies, {} answered 503 and were retried)",
            f.events_per_sec,
            f.p50.as_secs_f64() * 1e3,
            f.p99.as_secs_f64() * 1e3,
            f.max.as_secs_f64() * 1e3,
            bodies.len(),
            f.non_200
        );
    }
    // The same through `serve`'s durable log (issue 16), fsync per batch and relaxed.
    for (label, fsync) in [
        (
            "durable log, fsync per batch",
            kubetrail_log::FsyncPolicy::Batch,
        ),
        (
            "durable log, fsync every 1 s",
            kubetrail_log::FsyncPolicy::Interval,
        ),
    ] {
        for full in [false, true] {
            let dir = tempfile::tempdir_in(
                std::env::var_os("KUBETRAIL_BENCH_DIR").unwrap_or_else(|| ".".into()),
            )?;
            let f = rt.block_on(kubetrail_benches::webhook::run_on(
                bodies.clone(),
                400,
                4,
                full,
                kubetrail_benches::webhook::BenchQueue::Durable {
                    dir: dir.path().to_owned(),
                    fsync,
                },
            ))?;
            let what = if full {
                "+ pipeline + OTLP encode"
            } else {
                "(acked when queued)"
            };
            println!(
                "  webhook, {label} {what:<26} {:>8.0} events/s  p50 {:>6.1} ms  p99 {:>6.1} ms  max {:>6.1} ms  ({} bodies, {} answered 503 and were retried)",
                f.events_per_sec,
                f.p50.as_secs_f64() * 1e3,
                f.p99.as_secs_f64() * 1e3,
                f.max.as_secs_f64() * 1e3,
                bodies.len(),
                f.non_200
            );
        }
    }
    Ok(())
}
