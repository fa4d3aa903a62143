//! The CLI for big families and long histories: `timeline` and `replay --tree` show a family
//! cut into part traces as one tree with the parts marked; `url --since/--until` lists an
//! object's trace per window from the ids; a too-small budget is refused with a clear error.

use std::process::Command;

use kubetrail_gen::RolloutScenario;
use kubetrail_model::ObjectRef;
use kubetrail_model::ids::trace_id;

fn big_log(dir: &std::path::Path) -> std::path::PathBuf {
    let stream = RolloutScenario {
        replicas: 20,
        with_noise: false,
        with_request_received_stage: false,
        ..RolloutScenario::default()
    }
    .generate();
    let path = dir.join("audit.log");
    std::fs::write(&path, stream.to_json_lines()).unwrap();
    path
}

fn kubetrail(args: &[&str]) -> (String, String, bool) {
    let out = Command::new(env!("CARGO_BIN_EXE_kubetrail"))
        .args(args)
        .output()
        .unwrap();
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
        out.status.success(),
    )
}

/// Root-level lines of a rendered tree (no tree-drawing prefix).
fn root_lines(tree: &str) -> Vec<&str> {
    tree.lines()
        .filter(|l| !l.starts_with(['├', '└', '│', ' ']))
        .collect()
}

#[test]
fn timeline_and_tree_show_a_cut_family_as_one_tree_with_parts_marked() {
    let dir = tempfile::tempdir().unwrap();
    let log = big_log(dir.path());
    let log = log.to_str().unwrap();
    let (tree, err, ok) = kubetrail(&[
        "replay",
        "--no-progress",
        "--max-trace-spans",
        "64",
        "--tree",
        log,
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("parts:"), "the summary counts parts: {err}");
    let roots = root_lines(&tree);
    assert_eq!(roots.len(), 1, "one tree: {roots:?}");
    assert!(
        roots[0].starts_with("deployments.apps/shop/web"),
        "{}",
        roots[0]
    );
    assert!(tree.contains("(part 1 of "), "{tree}");
    let parts = tree.matches("(part ").count();
    assert!(parts > 3, "{parts} parts");
    // Every Pod is in the tree.
    let pods: std::collections::BTreeSet<&str> = tree
        .lines()
        .filter_map(|l| l.split("pods/shop/").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    assert_eq!(pods.len(), 40, "{pods:?}");
    // The whole family is as many spans as without a budget, only cut.
    let (uncut, _, ok) = kubetrail(&["replay", "--no-progress", "--tree", log]);
    assert!(ok);
    assert_eq!(root_lines(&uncut).len(), 1);
    assert!(!uncut.contains("(part "));

    let (timeline, err, ok) = kubetrail(&[
        "timeline",
        "--max-trace-spans",
        "64",
        "pods/shop/".to_owned().as_str(),
        log,
    ]);
    // No such object: no tree, a failure exit.
    assert!(!ok && timeline.is_empty(), "{err}");
    // A Pod deep in a part: its whole family, as one tree.
    let pod = pods.iter().last().unwrap();
    let object = format!("pods/shop/{pod}");
    let (timeline, err, ok) = kubetrail(&["timeline", "--max-trace-spans", "64", &object, log]);
    assert!(ok, "{err}");
    assert_eq!(root_lines(&timeline).len(), 1, "{timeline}");
    assert!(timeline.contains("(part "));
    assert!(timeline.contains(&object));
}

#[test]
fn url_lists_an_objects_trace_per_window() {
    let (out, err, ok) = kubetrail(&[
        "url",
        "--cluster",
        "prod",
        "--jaeger-url",
        "http://jaeger:16686",
        "--since",
        "2024-05-01T10:10:00Z",
        "--until",
        "2024-05-01T11:05:00Z",
        "deployments.apps/shop/web",
    ]);
    assert!(ok, "{err}");
    let object: ObjectRef = "deployments.apps/shop/web".parse().unwrap();
    let start = 1_714_557_600i64 * 1_000_000_000; // 10:00
    let window = 1_800i64 * 1_000_000_000;
    let expected: Vec<String> = (0..3)
        .map(|i| {
            let w = start + i * window;
            format!(
                "{}  http://jaeger:16686/trace/{}",
                kubetrail_model::format_rfc3339(w),
                trace_id("prod", &object, w)
            )
        })
        .collect();
    assert_eq!(out.lines().collect::<Vec<_>>(), expected);
    let (_, err, ok) = kubetrail(&[
        "url",
        "--since",
        "2024-05-01T11:00:00Z",
        "--until",
        "2024-05-01T10:00:00Z",
        "deployments.apps/shop/web",
    ]);
    assert!(!ok && err.contains("--until is before --since"), "{err}");
}

#[test]
fn a_budget_below_the_minimum_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("empty.log");
    std::fs::write(&log, "").unwrap();
    let (_, err, ok) = kubetrail(&["replay", "--max-trace-spans", "10", log.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("max_trace_spans") && err.contains("at least 64"),
        "{err}"
    );
}
