//! `kubetrail follow` as an operator runs it next to kube-apiserver's `--audit-log-path`:
//! the binary follows a log that is appended to (a line half-written at times), rotated by
//! rename + new file as lumberjack does, its backup gzip-compressed, truncated in place
//! (copytruncate); it is killed with SIGKILL and restarted from its state file, stopped with
//! SIGTERM and restarted. What it exports equals `replay` of the same events: nothing lost,
//! re-reads after a crash only identical duplicates, and none at all after a clean stop.
//!
//! Synchronisation is on observable facts only: the state file's committed positions (which
//! move only once the spans of those lines were exported) and the OTLP/JSON output.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{id_set, kill9, live_start, spawn_serve, spawn_until, terminate};
use kubetrail_gen::RolloutScenario;
use kubetrail_testkit::{ReceivedSpan, append};
use serde_json::Value;

const CLUSTER: &str = "e2e";

/// Which of two API servers served a request (by its audit ID).
fn server_of(e: &Value) -> usize {
    let id = e["auditID"].as_str().unwrap();
    let h = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (h % 2) as usize
}

fn lines_of(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| format!("{}\n", serde_json::to_string(e).unwrap()))
        .collect()
}

/// The committed (path, offset) of `log` in the state file, if it says.
fn committed(state: &Path, log: &Path) -> Option<(String, u64)> {
    let text = std::fs::read_to_string(state).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    let c = &v["logs"][log.to_str().unwrap()]["committed"];
    Some((c["path"].as_str()?.to_owned(), c["offset"].as_u64()?))
}

/// Waits until the state file says every line of `file` (its current length) is delivered.
fn wait_delivered(state: &Path, log: &Path, file: &Path, what: &str) {
    let want = (
        file.display().to_string(),
        std::fs::metadata(file).unwrap().len(),
    );
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        if committed(state, log).as_ref() == Some(&want) {
            return;
        }
        assert!(
            Instant::now() < until,
            "{what}: the state file says {:?}, want {want:?}",
            committed(state, log)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn replay_spans(dir: &Path, lines: &[String]) -> Vec<ReceivedSpan> {
    let log = dir.join("replay-input.log");
    std::fs::write(&log, lines.concat()).unwrap();
    let out = dir.join("replay.jsonl");
    let args = ["--linger", "1h", log.to_str().unwrap()];
    common::replay_json(CLUSTER, args, &out).await.0
}

struct Follow {
    args: Vec<String>,
}

impl Follow {
    fn new(dir: &Path, log: &Path, out: &Path, state: &Path) -> Follow {
        let config = dir.join("kubetrail.yaml");
        // The state file is rewritten often so the test waits little; poll fast too.
        std::fs::write(
            &config,
            "follow:\n  state_interval: 100ms\n  poll_interval: 20ms\n",
        )
        .unwrap();
        let s = |p: &Path| p.display().to_string();
        Follow {
            args: vec![
                "follow".into(),
                "--config".into(),
                s(&config),
                "--cluster".into(),
                CLUSTER.into(),
                // No family is emitted by the wall clock before the test says so (SIGTERM).
                "--linger".into(),
                "1h".into(),
                "--otlp-json".into(),
                s(out),
                "--state-file".into(),
                s(state),
                s(log),
            ],
        }
    }

    async fn start(&self) -> (tokio::process::Child, tokio::task::JoinHandle<String>) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let (child, _, stderr) = spawn_until(&args, "kubetrail follow: following ").await;
        (child, stderr)
    }
}

/// Every span id with every (trace, parent, name, start, end) it was exported with.
fn versions(spans: &[ReceivedSpan]) -> BTreeMap<String, BTreeSet<String>> {
    let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in spans {
        m.entry(s.span_id.clone()).or_default().insert(format!(
            "{} {:?} {} {} {}",
            s.trace_id, s.parent_span_id, s.name, s.start_unix_nano, s.end_unix_nano
        ));
    }
    m
}

fn gzip_to(from: &Path, to: &Path) {
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(to).unwrap(),
        flate2::Compression::fast(),
    );
    gz.write_all(&std::fs::read(from).unwrap()).unwrap();
    gz.finish().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appended_rotated_gzipped_truncated_and_killed_gives_the_replays_spans() {
    let stream = RolloutScenario {
        cluster_start: live_start(),
        ..Default::default()
    }
    .generate();
    let lines = lines_of(&stream.events);
    let n = lines.len();
    assert!(n > 100, "{n}");
    let part = |a: usize, b: usize| lines[a * n / 6..b * n / 6].concat();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let log = d.join("audit.log");
    let out = d.join("follow.jsonl");
    let state = d.join("state/follow.json");
    let follow = Follow::new(d, &log, &out, &state);

    // 1. A log exists, its last line half-written by the API server.
    let first = part(0, 1);
    let next = &lines[n / 6];
    let cut = next.len() / 2;
    append(&log, &format!("{first}{}", &next[..cut]));
    let (child, stderr) = follow.start().await;
    // Delivered up to the complete lines only: the partial one waits for its newline.
    let until = Instant::now() + Duration::from_secs(120);
    while committed(&state, &log).map(|c| c.1) != Some(first.len() as u64) {
        assert!(Instant::now() < until, "{:?}", committed(&state, &log));
        std::thread::sleep(Duration::from_millis(50));
    }
    // 2. The line is completed, more is appended.
    append(
        &log,
        &format!("{}{}", &next[cut..], lines[n / 6 + 1..2 * n / 6].concat()),
    );
    wait_delivered(&state, &log, &log, "appended");

    // 3. Rotation as lumberjack does it: rename, new file.
    let backup1 = d.join("audit-2024-07-15T09-00-00.000.log");
    std::fs::rename(&log, &backup1).unwrap();
    append(&log, &part(2, 3));
    wait_delivered(&state, &log, &log, "after the rotation");

    // 4. SIGKILL; meanwhile the log is appended to, rotated again and its backup compressed
    //    (the .gz written, the .log removed); then the restart resumes from the state file.
    kill9(&child);
    let mut child = child;
    let _ = child.wait().await;
    let _ = stderr.await;
    append(&log, &part(3, 4));
    let backup2 = d.join("audit-2024-07-15T10-00-00.000.log");
    std::fs::rename(&log, &backup2).unwrap();
    gzip_to(&backup2, &d.join("audit-2024-07-15T10-00-00.000.log.gz"));
    std::fs::remove_file(&backup2).unwrap();
    append(&log, &part(4, 5));
    let (mut child, stderr) = follow.start().await;
    wait_delivered(&state, &log, &log, "after the restart");

    // 5. copytruncate: the file is copied away and truncated in place, then written again.
    std::fs::copy(&log, d.join("audit-2024-07-15T11-00-00.000.log")).unwrap();
    kubetrail_testkit::truncate(&log);
    append(&log, &part(5, 6));
    wait_delivered(&state, &log, &log, "after the truncation");

    // 6. SIGTERM: every open family is emitted, the state saved clean.
    let status = terminate(&mut child).await;
    let log_text = stderr.await.unwrap();
    assert!(status.success(), "{log_text}");
    assert!(
        log_text.contains("did not stop cleanly"),
        "the restart after SIGKILL re-reads: {log_text}"
    );
    assert!(
        !log_text.contains("malformed"),
        "no line was read half-written: {log_text}"
    );
    let st: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let entry = &st["logs"][log.to_str().unwrap()];
    assert_eq!(entry["clean"], true, "{st}");
    assert_eq!(entry["resume"], entry["committed"], "{st}");

    let got = common::read_spans(&out);
    let want = replay_spans(d, &lines).await;
    assert_eq!(id_set(&got), id_set(&want), "{log_text}");
    // Re-reading after the crash exported some spans again: identical copies only.
    let v = versions(&got);
    let differing: Vec<_> = v.iter().filter(|(_, s)| s.len() > 1).collect();
    assert!(differing.is_empty(), "{differing:?}");
    assert!(got.len() > want.len(), "the crash forced a re-read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_restart_reads_nothing_twice() {
    let start = live_start();
    let web = RolloutScenario {
        cluster_start: start,
        ..Default::default()
    }
    .generate();
    let first = lines_of(&web.events);
    // A second rollout after the first, of other objects on other nodes.
    let last = web
        .events
        .iter()
        .filter_map(|e| e["stageTimestamp"].as_str())
        .map(|t| kubetrail_model::parse_rfc3339_nanos(t).unwrap())
        .max()
        .unwrap();
    let api = RolloutScenario {
        seed: 2,
        cluster_start: last + 1_000_000_000,
        namespace: "billing".into(),
        deployment: "api".into(),
        nodes: vec!["worker-7".into()],
        ..Default::default()
    }
    .generate();
    let second = lines_of(&api.events);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let log = d.join("audit.log");
    let out = d.join("follow.jsonl");
    let state = d.join("follow-state.json");
    let follow = Follow::new(d, &log, &out, &state);

    append(&log, &first.concat());
    let (mut child, stderr) = follow.start().await;
    wait_delivered(&state, &log, &log, "first rollout");
    let status = terminate(&mut child).await;
    let text = stderr.await.unwrap();
    assert!(status.success(), "{text}");

    append(&log, &second.concat());
    let (mut child, stderr) = follow.start().await;
    wait_delivered(&state, &log, &log, "second rollout");
    let status = terminate(&mut child).await;
    let text = stderr.await.unwrap();
    assert!(status.success(), "{text}");
    assert!(!text.contains("did not stop cleanly"), "{text}");

    let got = common::read_spans(&out);
    let all: Vec<String> = first.iter().chain(&second).cloned().collect();
    let want = replay_spans(d, &all).await;
    assert_eq!(id_set(&got), id_set(&want), "{text}");
    let ids: BTreeSet<&str> = got.iter().map(|s| s.span_id.as_str()).collect();
    assert_eq!(ids.len(), got.len(), "no span exported twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_forwarding_to_a_central_serve_give_the_merged_replays_spans() {
    // Two API servers' logs, one per control-plane node, each followed by its own `follow`
    // that POSTs to one `serve` (token-authenticated), which merges them by time. The lines
    // are as fresh as a live log's (event time = wall time): the central serve orders its
    // sources on the wall clock. The rollout (~35 s) must not straddle a 30-minute window
    // boundary: close to one, start just after it (within the watermark's far-ahead bound).
    let start = common::wall_time_start();
    let stream = RolloutScenario {
        cluster_start: start,
        ..Default::default()
    }
    .generate();
    let lines = lines_of(&stream.events);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tokens = d.join("tokens");
    std::fs::write(&tokens, "s3cret-token-for-the-forwarders\n").unwrap();
    let out = d.join("serve.jsonl");
    let s = |p: &Path| p.display().to_string();
    // The central serve knows its sources, so it holds events until both have spoken.
    let serve_config = d.join("serve.yaml");
    std::fs::write(
        &serve_config,
        "time:\n  expect_sources: [apiserver-0, apiserver-1]\n",
    )
    .unwrap();
    let (mut serve, addr, serve_err) = spawn_serve(&[
        "--config",
        &s(&serve_config),
        "--cluster",
        CLUSTER,
        "--linger",
        "1h",
        "--token-file",
        &s(&tokens),
        "--otlp-json",
        &s(&out),
    ])
    .await;
    let mut nodes = Vec::new();
    for node in 0..2 {
        let nd = d.join(format!("node{node}"));
        std::fs::create_dir(&nd).unwrap();
        let log = nd.join("audit.log");
        // An API server logs every stage of the requests it serves.
        let mine: String = stream
            .events
            .iter()
            .zip(&lines)
            .filter(|(e, _)| server_of(e) == node)
            .map(|(_, l)| l.as_str())
            .collect();
        append(&log, &mine);
        let state = nd.join("state.json");
        let config = nd.join("kubetrail.yaml");
        std::fs::write(
            &config,
            "follow:\n  state_interval: 100ms\n  poll_interval: 20ms\n",
        )
        .unwrap();
        let (child, _, err) = spawn_until(
            &[
                "follow",
                "--config",
                &s(&config),
                "--state-file",
                &s(&state),
                "--forward-url",
                &format!("http://{addr}/audit/{CLUSTER}"),
                "--forward-token-file",
                &s(&tokens),
                "--forward-source",
                &format!("apiserver-{node}"),
                &s(&log),
            ],
            "kubetrail follow: following ",
        )
        .await;
        nodes.push((child, err, log, state));
    }
    for (_, _, log, state) in &nodes {
        wait_delivered(state, log, log, "forwarded");
    }
    for (mut child, err, _, _) in nodes {
        let status = terminate(&mut child).await;
        let text = err.await.unwrap();
        assert!(status.success(), "{text}");
    }
    let status = terminate(&mut serve).await;
    let text = serve_err.await.unwrap();
    assert!(status.success(), "{text}");
    let got = common::read_spans(&out);
    let want = replay_spans(d, &lines).await;
    let (got, want) = (id_set(&got), id_set(&want));
    assert_eq!(
        got,
        want,
        "only in serve: {:?}\nonly in replay: {:?}\n{text}",
        got.difference(&want).collect::<Vec<_>>(),
        want.difference(&got).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_a_follow_section_exports_the_file_and_its_webhook_traffic() {
    // `serve` follows a log file (config `follow:`) and takes webhook batches at once; the
    // two sources merged are the spans of one replay of both.
    let start = live_start();
    let web = RolloutScenario {
        cluster_start: start,
        ..Default::default()
    }
    .generate();
    let api = RolloutScenario {
        seed: 3,
        cluster_start: start,
        namespace: "billing".into(),
        deployment: "api".into(),
        nodes: vec!["worker-9".into()],
        ..Default::default()
    }
    .generate();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let log = d.join("audit.log");
    let state = d.join("state.json");
    let out = d.join("serve.jsonl");
    append(&log, &lines_of(&web.events).concat());
    let config = d.join("serve.yaml");
    common::write_follow_config(&config, &log, &state);
    let s = |p: &Path| p.display().to_string();
    let (mut serve, addr, err) = spawn_serve(&[
        "--config",
        &s(&config),
        "--cluster",
        CLUSTER,
        "--linger",
        "1h",
        "--otlp-json",
        &s(&out),
    ])
    .await;
    let client = kubetrail_testkit::ApiServerClient::new(&format!(
        "http://{addr}/audit/{CLUSTER}?source=apiserver-2"
    ))
    .with_batch_size(400);
    let r = client.send_events(&api.events).await.unwrap();
    assert!(r.all_delivered(), "{:?}", r.statuses());
    wait_delivered(&state, &log, &log, "followed by serve");
    let status = terminate(&mut serve).await;
    let text = err.await.unwrap();
    assert!(status.success(), "{text}");
    let st: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(st["logs"][log.to_str().unwrap()]["clean"], true, "{st}");
    let got = common::read_spans(&out);
    let mut both = lines_of(&web.events);
    both.extend(lines_of(&api.events));
    let want = replay_spans(d, &both).await;
    assert_eq!(id_set(&got), id_set(&want), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_follow_of_two_api_servers_logs_merges_them_by_time() {
    // A log host with both API servers' files: one `follow`, two sources, one merged stream.
    let stream = RolloutScenario {
        cluster_start: live_start(),
        ..Default::default()
    }
    .generate();
    let lines = lines_of(&stream.events);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("follow.jsonl");
    let state = d.join("state.json");
    let logs: Vec<_> = (0..2)
        .map(|n| d.join(format!("node{n}-audit.log")))
        .collect();
    for (n, log) in logs.iter().enumerate() {
        let mine: String = stream
            .events
            .iter()
            .zip(&lines)
            .filter(|(e, _)| server_of(e) == n)
            .map(|(_, l)| l.as_str())
            .collect();
        append(log, &mine);
    }
    let mut follow = Follow::new(d, &logs[0], &out, &state);
    follow.args.push(logs[1].display().to_string());
    let (mut child, stderr) = follow.start().await;
    for log in &logs {
        wait_delivered(&state, log, log, "both logs");
    }
    let status = terminate(&mut child).await;
    let text = stderr.await.unwrap();
    assert!(status.success(), "{text}");
    let got = common::read_spans(&out);
    let want = replay_spans(d, &lines).await;
    assert_eq!(id_set(&got), id_set(&want), "{text}");
}
