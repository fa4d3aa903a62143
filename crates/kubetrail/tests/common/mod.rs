//! Helpers shared by the binary's end-to-end tests: running `kubetrail` as a user would.
#![allow(dead_code, unused_imports)]

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

/// Starts `kubetrail ARGS…` and waits for the stderr line that starts with `ready` (e.g.
/// "kubetrail serve: listening on "). Returns the child, the rest of that line, and a task
/// that keeps draining stderr (so the child never blocks on a full pipe) and yields all of it.
pub async fn spawn_until(args: &[&str], ready: &str) -> (Child, String, JoinHandle<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kubetrail"))
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    let rest = loop {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{args:?} exited early:\n{seen}"));
        seen.push_str(&line);
        seen.push('\n');
        if let Some(rest) = line.strip_prefix(ready) {
            break rest.to_owned();
        }
    };
    let drain = tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push_str(&line);
            seen.push('\n');
        }
        seen
    });
    (child, rest, drain)
}

/// Starts `kubetrail ARGS…` (ARGS name the `serve` command, after any global flags) and
/// waits until it listens. Returns the child, the address it listens on, and the task
/// draining its stderr (see [`spawn_until`]).
pub async fn spawn_serve_args(args: &[&str]) -> (Child, String, JoinHandle<String>) {
    let (child, rest, stderr) = spawn_until(args, "kubetrail serve: listening on ").await;
    (child, first_word(&rest), stderr)
}

/// Starts `kubetrail serve ARGS…` on an ephemeral port of 127.0.0.1 (see
/// [`spawn_serve_args`]).
pub async fn spawn_serve(args: &[&str]) -> (Child, String, JoinHandle<String>) {
    let mut all = vec!["serve", "--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    spawn_serve_args(&all).await
}

/// Starts `kubetrail receive` on an ephemeral port for `cluster`, producing to `topic` on
/// the Kafka `brokers`, with `more` arguments, and waits until it listens. Returns the child,
/// the address it listens on, and the task draining its stderr (see [`spawn_until`]).
pub async fn spawn_receive(
    cluster: &str,
    brokers: &str,
    topic: &str,
    more: &[&str],
) -> (Child, String, JoinHandle<String>) {
    let mut args = vec!["receive", "--listen", "127.0.0.1:0", "--cluster", cluster];
    args.extend_from_slice(&["--kafka-brokers", brokers, "--kafka-topic", topic]);
    args.extend_from_slice(more);
    let (child, rest, stderr) = spawn_until(&args, "kubetrail receive: listening on ").await;
    (child, first_word(&rest), stderr)
}

/// The `serve` arguments for HTTPS with `pki`'s server certificate and bearer tokens read
/// from the file `tokens`, as an operator configures the webhook.
pub fn tls_token_args<'a>(
    pki: &'a kubetrail_testkit::Pki,
    tokens: &'a std::path::Path,
) -> [&'a str; 6] {
    [
        "--tls-cert",
        pki.server_cert.to_str().unwrap(),
        "--tls-key",
        pki.server_key.to_str().unwrap(),
        "--token-file",
        tokens.to_str().unwrap(),
    ]
}

/// Writes to `path` a config whose `follow:` section follows `log`, keeping its positions in
/// `state` and checking often (state every 100 ms, the file every 20 ms), so tests of `serve`
/// and `receive` with a follower see it work within moments.
pub fn write_follow_config(path: &std::path::Path, log: &std::path::Path, state: &std::path::Path) {
    let yaml = format!(
        "follow:\n  paths: [{}]\n  state_file: {}\n  state_interval: 100ms\n  poll_interval: 20ms\n",
        log.display(),
        state.display()
    );
    std::fs::write(path, yaml).unwrap();
}

/// POSTs the EventList `batch` to `url` with the bearer `token`, as kube-apiserver's webhook
/// does, and fails the test unless the answer is 200; returns the answer's body.
pub async fn post_batch_ok(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    batch: &serde_json::Value,
) -> String {
    let answer = http
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(batch).unwrap())
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = answer.status();
    let body = answer.text().await.unwrap();
    assert_eq!(status, 200, "POST {url}: {body}");
    body
}

/// Runs `kubetrail ARGS…` to its end (stdin closed, killed should the test end first) and
/// fails the test, showing the arguments and kubetrail's stderr, unless it exits 0. Returns
/// its output, for assertions on stdout and stderr.
pub async fn run_ok<I, S>(args: I) -> std::process::Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let out = Command::new(env!("CARGO_BIN_EXE_kubetrail"))
        .args(&args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "kubetrail {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The spans of an OTLP/JSON file (one `ExportTraceServiceRequest` a line, as `--otlp-json`
/// writes), failing the test when it cannot be read or parsed.
pub fn read_spans(path: &std::path::Path) -> Vec<kubetrail_testkit::ReceivedSpan> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    kubetrail_testkit::parse_otlp_json_lines(&text)
        .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()))
}

/// Runs `kubetrail replay --cluster CLUSTER --otlp-json OUT ARGS…` (ARGS: more options and
/// the inputs), failing the test unless it succeeds (see [`run_ok`]); the spans it wrote to
/// OUT, and its stderr.
pub async fn replay_json<I, S>(
    cluster: &str,
    args: I,
    out: &std::path::Path,
) -> (Vec<kubetrail_testkit::ReceivedSpan>, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut all: Vec<std::ffi::OsString> = ["replay", "--cluster", cluster, "--otlp-json"]
        .iter()
        .map(Into::into)
        .collect();
    all.push(out.into());
    all.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
    let run = run_ok(all).await;
    (
        read_spans(out),
        String::from_utf8_lossy(&run.stderr).into_owned(),
    )
}

/// The first word of a "listening on ADDR …" line's rest.
pub fn first_word(rest: &str) -> String {
    rest.split_whitespace().next().unwrap().to_owned()
}

/// Sends the signal `sig` (`TERM`, `KILL`, …) to the child with kill(1), failing the test
/// unless it was sent.
pub fn signal(child: &Child, sig: &str) {
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .unwrap()
            .success(),
        "kill -{sig} {pid}"
    );
}

/// Sends SIGKILL (a crash: nothing is flushed); does not wait.
pub fn kill9(child: &Child) {
    signal(child, "KILL");
}

/// Sends SIGTERM and waits for the process to exit.
pub async fn terminate(child: &mut Child) -> std::process::ExitStatus {
    signal(child, "TERM");
    tokio::time::timeout(Duration::from_secs(90), child.wait())
        .await
        .expect("did not stop after SIGTERM")
        .unwrap()
}

pub use kubetrail_testkit::id_set;

/// The (trace id, span id, parent span id) of every span Jaeger holds, found as Jaeger UI
/// finds traces (a search per service) and opened one by one. Exact duplicates of a span
/// (at-least-once delivery) are one span in Jaeger's view.
pub async fn jaeger_id_set(
    q: &kubetrail_testkit::JaegerQuery,
) -> BTreeSet<(String, String, Option<String>)> {
    let mut out = BTreeSet::new();
    for t in jaeger_traces(q).await.values() {
        for s in &t.spans {
            out.insert((
                s.trace_id.clone(),
                s.span_id.clone(),
                s.parent().map(|r| r.span_id.clone()),
            ));
        }
    }
    out
}

/// Every trace Jaeger holds, by id: a search per service, each found trace re-read through
/// `/api/traces/{id}` as the trace view does.
pub async fn jaeger_traces(
    q: &kubetrail_testkit::JaegerQuery,
) -> std::collections::BTreeMap<String, kubetrail_testkit::JaegerTrace> {
    let mut ids = BTreeSet::new();
    for service in q.services().await.unwrap() {
        let mut query = kubetrail_testkit::TraceQuery::service(&service);
        query.limit = Some(100_000);
        for t in q.find_traces(&query).await.unwrap() {
            ids.insert(t.trace_id);
        }
    }
    let mut out = std::collections::BTreeMap::new();
    for id in ids {
        let t = q
            .trace(&id)
            .await
            .unwrap()
            .expect("a found trace can be opened");
        out.insert(id, t);
    }
    out
}

/// Polls Jaeger until it holds at least the spans of `expected` (by id), up to `deadline`;
/// returns what it holds then.
pub async fn wait_for_jaeger_ids(
    q: &kubetrail_testkit::JaegerQuery,
    expected: &BTreeSet<(String, String, Option<String>)>,
    deadline: Duration,
) -> BTreeSet<(String, String, Option<String>)> {
    let until = std::time::Instant::now() + deadline;
    loop {
        let got = jaeger_id_set(q).await;
        if got.is_superset(expected) {
            return got;
        }
        assert!(
            std::time::Instant::now() < until,
            "Jaeger holds {} of the {} expected spans after {deadline:?}",
            got.intersection(expected).count(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The ids `kubetrail replay --cluster CLUSTER` exports for these JSON lines.
pub async fn replay_id_set(
    cluster: &str,
    json_lines: &str,
) -> BTreeSet<(String, String, Option<String>)> {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    std::fs::write(&log, json_lines).unwrap();
    let (spans, _) = replay_json(cluster, [&log], &dir.path().join("replay.jsonl")).await;
    id_set(&spans)
}

/// A start for a live rollout (what an API server sends `serve`): inside the current
/// 30-minute window, all of it (up to 150 s) in one window. Normally 200 s ago (all in the
/// past); within 200 s after a window boundary, just after the boundary (partly ahead of wall
/// time, well inside the watermark's 5-minute far-ahead bound) — not in the previous window,
/// which wall-clock ticks already treat as closed (`serve_e2e` lost a request span there,
/// run at :31–:33). With a `--linger` longer than the rollout, no wall-clock tick emits a
/// family before the test says so (SIGTERM), however slowly the machine runs.
pub fn live_start() -> i64 {
    const WINDOW: i64 = 30 * 60 * 1_000_000_000;
    let now = kubetrail_model::now_unix_nanos();
    let window_start = now - now.rem_euclid(WINDOW);
    if now - window_start >= 200_000_000_000 {
        now - 200_000_000_000
    } else {
        window_start + 1_000_000_000
    }
}

/// A start for a rollout whose event time is wall time (live servers, fresh log lines): now,
/// unless the rollout (about 35 s) would straddle a 30-minute window boundary (that would
/// rightly make two traces) — then just after that boundary, up to a minute ahead of wall
/// time, well within the watermark's far-ahead bound.
pub fn wall_time_start() -> i64 {
    const WINDOW: i64 = 30 * 60 * 1_000_000_000;
    let now = kubetrail_model::now_unix_nanos();
    let next_window = now - now.rem_euclid(WINDOW) + WINDOW;
    if now + 60_000_000_000 < next_window {
        now
    } else {
        next_window + 1_000_000_000
    }
}

/// `nanos` as an RFC 3339 time (seconds).
pub fn rfc3339(nanos: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_nanos(u64::try_from(nanos).unwrap());
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The `.rs` files below `dir`, recursively (for the tests that scan the sources).
pub fn rust_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}

pub use kubetrail_testkit::get_text;
