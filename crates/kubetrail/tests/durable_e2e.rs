//! `serve` keeps what it acknowledged (issue 16): the real binary, a real disk, `kill -9`.
//!
//! * A 20,000-event live run is killed with SIGKILL at seeded points (right after a 200, and
//!   with a request in flight), restarted on the same `--queue-dir`, and fed on as the API
//!   server would (a batch not answered 200 is sent again). At the end every span equals
//!   `replay` of the same events (ids, parents), every object span is there exactly once, and
//!   no request span is an orphan. Without `--queue-dir` the same run loses spans (the
//!   negative control: the test can fail).
//! * A segment cut in the middle of its last record (a power loss mid-write): the damage is
//!   cut, counted (`kubetrail_log_damaged_total`) and reported; every other batch is used.
//! * A full disk budget (the exporter down, nothing can be deleted): 503 + Retry-After naming
//!   the budget; once the exporter is back, batches are accepted again and nothing is lost.
//!
//! Synchronisation is on HTTP answers, files and the process's output only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

mod common;

use common::{id_set, spawn_serve, terminate};
use kubetrail_testkit::{ApiServerClient, OtlpReceiver, ReceivedSpan};
use serde_json::Value;
use tokio::process::Child;

const OBJECT_KIND: i32 = 1;
const EVENTS: usize = 20_000;
const BATCH: usize = 400;

/// `n` events of the volume generator, their times mapped linearly into 150 s starting at
/// `common::live_start()` (live: within one window, all in the past).
fn live_events(n: usize) -> Vec<Value> {
    let stream = kubetrail_gen::VolumeScenario::default().generate();
    assert!(stream.events.len() >= n, "{}", stream.events.len());
    let mut events: Vec<Value> = stream.events.into_iter().take(n).collect();
    let time = |e: &Value, k: &str| e[k].as_str().and_then(kubetrail_model::parse_rfc3339_nanos);
    let all: Vec<i64> = events
        .iter()
        .flat_map(|e| {
            [
                time(e, "requestReceivedTimestamp"),
                time(e, "stageTimestamp"),
            ]
        })
        .flatten()
        .collect();
    let (t0, t1) = (*all.iter().min().unwrap(), *all.iter().max().unwrap());
    let start = common::live_start();
    let span = 150_000_000_000i128;
    for e in &mut events {
        for k in ["requestReceivedTimestamp", "stageTimestamp"] {
            if let Some(t) = time(e, k) {
                let mapped = start
                    + i64::try_from(i128::from(t - t0) * span / i128::from((t1 - t0).max(1)))
                        .unwrap();
                e[k] = Value::String(kubetrail_model::format_rfc3339(mapped));
            }
        }
    }
    events
}

fn json_lines(events: &[Value]) -> String {
    let mut s = String::new();
    for e in events {
        s.push_str(&serde_json::to_string(e).unwrap());
        s.push('\n');
    }
    s
}

/// What `replay` exports for these events with the same settings as the `serve` runs.
async fn replay_spans(events: &[Value], dir: &Path, extra: &[&str]) -> Vec<ReceivedSpan> {
    let log = dir.join("replay-input.log");
    std::fs::write(&log, json_lines(events)).unwrap();
    let out = dir.join("replay.jsonl");
    let _ = std::fs::remove_file(&out);
    let args = extra.iter().copied().chain([log.to_str().unwrap()]);
    common::replay_json("e2e", args, &out).await.0
}

struct Serve {
    child: Child,
    addr: String,
    stderr: tokio::task::JoinHandle<String>,
}

async fn serve(args: &[&str]) -> Serve {
    let (child, addr, stderr) = spawn_serve(args).await;
    Serve {
        child,
        addr,
        stderr,
    }
}

async fn kill9(mut s: Serve) -> String {
    s.child.start_kill().unwrap();
    let status = s.child.wait().await.unwrap();
    assert!(!status.success());
    s.stderr.await.unwrap()
}

fn client(addr: &str) -> ApiServerClient {
    ApiServerClient::new(&format!("http://{addr}/audit/e2e"))
        .with_batch_size(BATCH)
        .with_retries(0, Duration::from_millis(10))
}

async fn metric(addr: &str, name: &str) -> f64 {
    let url = format!("http://{addr}/metrics");
    let text = common::get_text(&reqwest::Client::new(), &url).await;
    kubetrail_testkit::prometheus_sum(&text, name, &[])
}

/// Object span ids seen more than once, and request span ids seen more than once.
fn duplicates(spans: &[ReceivedSpan]) -> (Vec<String>, usize) {
    let mut by_id: BTreeMap<(&str, i32), usize> = BTreeMap::new();
    for s in spans {
        *by_id.entry((&s.span_id, s.kind)).or_default() += 1;
    }
    let objects = by_id
        .iter()
        .filter(|((_, k), n)| *k == OBJECT_KIND && **n > 1)
        .map(|((id, _), _)| (*id).to_owned())
        .collect();
    let requests = by_id
        .iter()
        .filter(|((_, k), n)| *k != OBJECT_KIND && **n > 1)
        .count();
    (objects, requests)
}

fn orphans(spans: &[ReceivedSpan]) -> usize {
    let ids: BTreeSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    spans
        .iter()
        .filter(|s| {
            s.parent_span_id
                .as_deref()
                .is_some_and(|p| !ids.contains(p))
        })
        .count()
}

/// A tiny deterministic generator for the kill points.
fn lcg(seed: u64) -> impl FnMut(u64) -> u64 {
    let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    move |n| {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (x >> 33) % n
    }
}

/// With a durable log, a restart finds what was accepted before.
async fn restarted(s: &Serve, args: &[&str]) {
    if args.contains(&"--queue-dir") {
        assert!(metric(&s.addr, "kubetrail_log_recovered_batches_total").await > 0.0);
    }
}

/// Feeds `events` batch by batch into `serve` ARGS, SIGKILLing it before the batches listed
/// in `kills` (`true`: with that batch in flight; `false`: right after the previous 200) and
/// restarting it; SIGTERM at the end. Returns every span written to `out` and the logs.
async fn run_with_kills(
    events: &[Value],
    args: &[&str],
    kills: &BTreeMap<usize, bool>,
) -> Vec<String> {
    let mut logs = Vec::new();
    let mut s = serve(args).await;
    for (i, chunk) in events.chunks(BATCH).enumerate() {
        let mut acknowledged = false;
        match kills.get(&i) {
            Some(true) => {
                // In flight: the answer may or may not come before the kill.
                let c = client(&s.addr);
                let chunk = chunk.to_vec();
                let send = tokio::spawn(async move { c.send_events(&chunk).await.unwrap() });
                logs.push(kill9(s).await);
                acknowledged = send.await.unwrap().all_delivered();
                s = serve(args).await;
                restarted(&s, args).await;
            }
            Some(false) => {
                logs.push(kill9(s).await);
                s = serve(args).await;
                restarted(&s, args).await;
            }
            None => {}
        }
        // The API server sends a batch until it is answered 200.
        let mut attempts = 0;
        while !acknowledged {
            attempts += 1;
            assert!(attempts < 100, "batch {i} never accepted");
            let r = client(&s.addr).send_events(chunk).await.unwrap();
            acknowledged = r.all_delivered();
        }
    }
    let status = terminate(&mut s.child).await;
    let log = s.stderr.await.unwrap();
    assert!(status.success(), "{log}");
    logs.push(log);
    logs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_20000_event_run_loses_nothing_acknowledged() {
    let events = live_events(EVENTS);
    let dir = tempfile::tempdir().unwrap();
    let settings = ["--linger", "1h", "--lateness", "30s"];
    let shutdown = ["--shutdown-timeout", "10m"];
    let want = replay_spans(&events, dir.path(), &settings).await;
    let want_ids = id_set(&want);
    let objects = want.iter().filter(|s| s.kind == OBJECT_KIND).count();
    assert!(objects > 100, "{objects} objects");
    assert_eq!(orphans(&want), 0);
    let batches = events.len().div_ceil(BATCH) as u64;

    for seed in [1u64, 2, 3] {
        let queue = dir.path().join(format!("queue-{seed}"));
        let out = dir.path().join(format!("serve-{seed}.jsonl"));
        let mut args = vec![
            "--otlp-json",
            out.to_str().unwrap(),
            "--queue-dir",
            queue.to_str().unwrap(),
        ];
        args.extend(settings);
        args.extend(shutdown);
        // Three kills at seeded batches: one with a request in flight, two after a 200.
        let mut next = lcg(seed);
        let mut kills = BTreeMap::new();
        while kills.len() < 3 {
            let at = 1 + next(batches - 1) as usize;
            let in_flight = kills.is_empty();
            kills.entry(at).or_insert(in_flight);
        }
        let logs = run_with_kills(&events, &args, &kills).await;
        let got = common::read_spans(&out);
        let got_ids = id_set(&got);
        let missing: Vec<_> = want_ids.difference(&got_ids).take(5).collect();
        let extra: Vec<_> = got_ids.difference(&want_ids).take(5).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "seed {seed}, kills {kills:?}: {} of {} spans missing (e.g. {missing:?}), {} not in the replay (e.g. {extra:?})\n{}",
            want_ids.difference(&got_ids).count(),
            want_ids.len(),
            got_ids.difference(&want_ids).count(),
            logs.join("\n---\n")
        );
        let (twice, requests_twice) = duplicates(&got);
        assert!(
            twice.is_empty(),
            "seed {seed}: object spans exported twice: {twice:?}"
        );
        assert_eq!(orphans(&got), 0, "seed {seed}");
        eprintln!(
            "seed {seed}: kills {kills:?}: {} spans, {} objects once each, {requests_twice} request spans exported twice",
            got_ids.len(),
            objects
        );
    }

    // The negative control: in memory only, one kill right after a 200 loses spans.
    let out = dir.path().join("memory.jsonl");
    let args = [
        "--otlp-json",
        out.to_str().unwrap(),
        "--linger",
        "1h",
        "--lateness",
        "30s",
        "--shutdown-timeout",
        "10m",
    ];
    let kills = BTreeMap::from([(batches as usize / 2, false)]);
    run_with_kills(&events, &args, &kills).await;
    let got = common::read_spans(&out);
    let got_ids = id_set(&got);
    assert!(
        want_ids.difference(&got_ids).count() > 0,
        "in memory, a kill -9 loses what was acknowledged but not exported"
    );
}

fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_cut_mid_record_is_cut_counted_and_the_rest_is_used() {
    let events = live_events(2_000);
    let dir = tempfile::tempdir().unwrap();
    let queue = dir.path().join("queue");
    let out = dir.path().join("serve.jsonl");
    let args = [
        "--otlp-json",
        out.to_str().unwrap(),
        "--queue-dir",
        queue.to_str().unwrap(),
        "--linger",
        "1h",
        "--lateness",
        "30s",
    ];
    let s = serve(&args).await;
    for chunk in events.chunks(BATCH) {
        let r = client(&s.addr).send_events(chunk).await.unwrap();
        assert!(r.all_delivered(), "{:?}", r.statuses());
    }
    kill9(s).await;
    // A power loss in the middle of writing the last batch: its record is cut short (and
    // whatever the log wrote after it — delivered-span records — never reached the disk).
    // The cut is placed by reading the segment, not by a byte count from the end: the tail
    // may hold a delivered-span record longer than any fixed count.
    let (last, batch) = segments(&queue)
        .into_iter()
        .rev()
        .find_map(|p| {
            let scanned = kubetrail_log::format::scan(&p).unwrap();
            scanned.batches.last().cloned().map(|b| (p, b))
        })
        .expect("a segment with a batch record");
    let cut_at = batch.offset + batch.len as u64 / 2;
    let f = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
    f.set_len(cut_at).unwrap();
    drop(f);

    let (mut child, addr, stderr) = spawn_serve(&args).await;
    assert_eq!(metric(&addr, "kubetrail_log_damaged_total").await, 1.0);
    assert!(metric(&addr, "kubetrail_log_damaged_bytes_total").await > 0.0);
    assert_eq!(
        metric(&addr, "kubetrail_log_recovered_batches_total").await,
        (events.len().div_ceil(BATCH) - 1) as f64,
        "every batch but the cut one"
    );
    assert!(
        std::fs::metadata(&last).unwrap().len() < cut_at,
        "the damaged tail was cut from the file"
    );
    let status = terminate(&mut child).await;
    let log = stderr.await.unwrap();
    assert!(status.success(), "{log}");
    // Exactly the spans of the events before the cut batch.
    let kept = &events[..(events.len().div_ceil(BATCH) - 1) * BATCH];
    let want = replay_spans(kept, dir.path(), &["--linger", "1h", "--lateness", "30s"]).await;
    let got = common::read_spans(&out);
    // Request spans of the cut batch may have been exported before the kill; the rest equals
    // the replay of the kept events.
    let got_ids = id_set(&got);
    let want_ids = id_set(&want);
    assert!(
        want_ids.is_subset(&got_ids),
        "{} of {} missing\n{log}",
        want_ids.difference(&got_ids).count(),
        want_ids.len()
    );
    let objects: BTreeSet<_> = got
        .iter()
        .filter(|s| s.kind == OBJECT_KIND)
        .map(|s| s.span_id.clone())
        .collect();
    let want_objects: BTreeSet<_> = want
        .iter()
        .filter(|s| s.kind == OBJECT_KIND)
        .map(|s| s.span_id.clone())
        .collect();
    assert_eq!(objects, want_objects);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_budget_answers_503_until_the_exporter_is_back() {
    let events = live_events(3_000);
    let dir = tempfile::tempdir().unwrap();
    let queue = dir.path().join("queue");
    let config = dir.path().join("kubetrail.yaml");
    // 2 MiB of disk; the export-failure readiness out of the way, so that the 503 seen is
    // the disk budget's.
    std::fs::write(
        &config,
        "queue:\n  durable:\n    disk_bytes: 2097152\nserver:\n  export_failure_threshold: 1h\nexport:\n  retry:\n    max_backoff: 500ms\n",
    )
    .unwrap();
    let otlp = OtlpReceiver::start().await.unwrap();
    otlp.fail_next(usize::MAX);
    let endpoint = otlp.grpc_endpoint();
    let (mut child, addr, stderr) = spawn_serve(&[
        "--config",
        config.to_str().unwrap(),
        "--otlp-endpoint",
        &endpoint,
        "--queue-dir",
        queue.to_str().unwrap(),
        "--linger",
        "1h",
        "--lateness",
        "0s",
    ])
    .await;
    let c = ApiServerClient::new(&format!("http://{addr}/audit/e2e"))
        .with_retries(0, Duration::from_millis(10));
    // Batches of 50 until one is refused.
    let chunks: Vec<&[Value]> = events.chunks(50).collect();
    let mut sent = 0;
    let refused = loop {
        assert!(sent < chunks.len(), "the budget never filled");
        let body = serde_json::to_vec(&kubetrail_testkit::event_list(chunks[sent])).unwrap();
        let r = c
            .post_raw("", body, &[("content-type", "application/json")])
            .await
            .unwrap();
        if r.status == 200 {
            sent += 1;
        } else {
            break r;
        }
    };
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(refused.text().contains("disk budget"), "{}", refused.text());
    assert!(refused.header("retry-after").is_some());
    assert!(sent > 0);
    assert!(metric(&addr, "kubetrail_log_full_total").await >= 1.0);
    let on_disk: u64 = segments(&queue)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(on_disk <= 2 << 20, "{on_disk} bytes on disk");

    // The exporter is back: acknowledgements free the budget, the rest is accepted.
    otlp.fail_next(0);
    let retrying = ApiServerClient::new(&format!("http://{addr}/audit/e2e"))
        .with_batch_size(50)
        .with_retries(60, Duration::from_millis(50));
    let rest: Vec<Value> = chunks[sent..]
        .iter()
        .flat_map(|c| c.iter().cloned())
        .collect();
    let r = retrying.send_events(&rest).await.unwrap();
    assert!(r.all_delivered(), "{:?}", r.statuses());
    let status = terminate(&mut child).await;
    let log = stderr.await.unwrap();
    assert!(status.success(), "{log}");
    let want = replay_spans(&events, dir.path(), &["--linger", "1h", "--lateness", "0s"]).await;
    let got = otlp.spans();
    assert_eq!(id_set(&got), id_set(&want), "{log}");
}
