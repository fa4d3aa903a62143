//! Helpers shared by the binary's end-to-end tests: running `kubetrail` as a user would.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use kubetrail_testkit::ReceivedSpan;
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

/// The first word of a "listening on ADDR …" line's rest.
pub fn first_word(rest: &str) -> String {
    rest.split_whitespace().next().unwrap().to_owned()
}

/// Sends SIGTERM and waits for the process to exit.
pub async fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    tokio::time::timeout(Duration::from_secs(90), child.wait())
        .await
        .expect("did not stop after SIGTERM")
        .unwrap()
}

/// The (trace id, span id, parent span id) of every span: what "the same traces" means.
pub fn id_set(spans: &[ReceivedSpan]) -> BTreeSet<(String, String, Option<String>)> {
    spans
        .iter()
        .map(|s| {
            (
                s.trace_id.clone(),
                s.span_id.clone(),
                s.parent_span_id.clone(),
            )
        })
        .collect()
}
