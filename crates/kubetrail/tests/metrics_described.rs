//! Every metric kubetrail records has a description (`# HELP` and a unit on /metrics), and the
//! binary registers every crate's descriptions where it installs the recorder.
//!
//! A scan of the sources, like the Grafana dashboard test: the metric names are the
//! `"kubetrail_…"` literals of the crates' `src/` (all of them are metric names); the described
//! names are those a `describe_metrics` function names, by literal or by a `const` holding one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

mod common;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `(crate directory name, file, text)` of every `.rs` file under `crates/*/src`, except the
/// test support and the generator crates (they record no metrics of kubetrail's).
fn sources() -> Vec<(String, PathBuf, String)> {
    let mut out = Vec::new();
    for krate in std::fs::read_dir(repo_root().join("crates")).unwrap() {
        let dir = krate.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        if name == "kubetrail-testkit" || name == "kubetrail-gen" {
            continue;
        }
        if !dir.join("src").is_dir() {
            continue;
        }
        for f in common::rust_files(&dir.join("src")) {
            let text = std::fs::read_to_string(&f).unwrap();
            out.push((name.clone(), f, text));
        }
    }
    out
}

/// The `"kubetrail_…"` literals of `text`.
fn literals(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, _) in text.match_indices("\"kubetrail_") {
        let rest = &text[i + 1..];
        let end = rest.find('"').unwrap_or(0);
        let lit = &rest[..end];
        if !lit.is_empty()
            && lit
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            names.insert(lit.to_owned());
        }
    }
    names
}

/// `const NAME: &str = "kubetrail_…";` declarations: NAME → the literal.
fn consts(text: &str, out: &mut BTreeMap<String, String>) {
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.split("const ").nth(1) else {
            continue;
        };
        let Some((name, value)) = rest.split_once(": &str = ") else {
            continue;
        };
        if let Some(lit) = literals(value).into_iter().next() {
            out.insert(name.trim().to_owned(), lit);
        }
    }
}

/// The bodies of the `fn describe…metrics()` functions in `text` (braces matched).
fn describe_bodies(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for (start, _) in text.match_indices("fn describe") {
        let Some(paren) = text[start..].find("()") else {
            continue;
        };
        if !text[start..start + paren].ends_with("metrics") {
            continue;
        }
        let Some(open) = text[start..].find('{').map(|o| start + o) else {
            continue;
        };
        let mut depth = 0;
        for (i, c) in text[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        out.push(&text[open..open + i + 1]);
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    out
}

fn words(text: &str) -> BTreeSet<&str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .collect()
}

#[test]
fn every_recorded_metric_is_described_and_every_description_is_of_a_recorded_metric() {
    let files = sources();
    let mut constants = BTreeMap::new();
    for (_, _, text) in &files {
        consts(text, &mut constants);
    }
    let mut recorded = BTreeSet::new();
    let mut described = BTreeSet::new();
    let mut describing_crates = BTreeSet::new();
    for (krate, file, text) in &files {
        let bodies = describe_bodies(text);
        if bodies.is_empty() {
            // Outside a describe function, every kubetrail_ literal is a recorded name.
            recorded.extend(literals(text));
            continue;
        }
        if text.contains("pub fn describe_metrics()") {
            describing_crates.insert((krate.clone(), file.clone()));
        }
        // A describing file may record too (the names are its constants or literals).
        let mut rest = text.clone();
        for body in &bodies {
            rest = rest.replace(body, "");
            described.extend(literals(body));
            let used = words(body);
            for (name, value) in &constants {
                if used.contains(name.as_str()) {
                    described.insert(value.clone());
                }
            }
        }
        recorded.extend(literals(&rest));
    }
    // The constants are the recorded names of the crates that use them.
    recorded.extend(constants.values().cloned());
    assert!(
        recorded.len() > 60
            && recorded.contains("kubetrail_open_objects")
            && recorded.contains("kubetrail_http_request_duration_seconds")
            && recorded.contains("kubetrail_kafka_consumer_lag"),
        "the scan finds the code's metric names: {recorded:?}"
    );
    let undescribed: Vec<_> = recorded.difference(&described).collect();
    assert!(
        undescribed.is_empty(),
        "recorded but not described (add them to the crate's describe_metrics): {undescribed:?}"
    );
    let stale: Vec<_> = described.difference(&recorded).collect();
    assert!(stale.is_empty(), "described but never recorded: {stale:?}");

    // The binary registers every crate's descriptions where it installs the recorder.
    let telemetry =
        std::fs::read_to_string(repo_root().join("crates/kubetrail/src/telemetry.rs")).unwrap();
    for (krate, file) in &describing_crates {
        if krate == "kubetrail" {
            continue;
        }
        let call = format!("{}::describe_metrics()", krate.replace('-', "_"));
        assert!(
            telemetry.contains(&call),
            "{} has describe_metrics but telemetry.rs does not call {call}",
            file.display()
        );
    }
    // And nothing else installs it.
    for (krate, file, text) in &files {
        if krate == "kubetrail" && !file.ends_with("telemetry.rs") {
            assert!(
                !text.contains("install_prometheus()"),
                "{} installs the recorder without the descriptions: use telemetry::install_metrics",
                file.display()
            );
        }
    }
}
