//! A recorded run of the real control plane (testdata/cluster-capture/: the log backend of
//! scripts/local-cluster.sh during e2e_cluster.rs, Secrets at Metadata level so no value was
//! ever written) replayed as a regression input: the families, their sizes and their actors
//! are snapshotted, and no Secret value appears in the spans.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Stdio;

use kubetrail_testkit::{ReceivedSpan, parse_otlp_json_lines};
use tokio::process::Command;

const OBJECT_KIND: i32 = 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_cluster_capture_replays_to_the_same_families() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("spans.otlp.jsonl");
    let capture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/cluster-capture/apiserver-1.audit.log"
    );
    let run = Command::new(env!("CARGO_BIN_EXE_kubetrail"))
        .args([
            "replay",
            "--cluster",
            "local",
            "--no-progress",
            "--otlp-json",
        ])
        .arg(&out)
        .arg(capture)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let spans = parse_otlp_json_lines(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let by_id: HashMap<(&str, &str), &ReceivedSpan> = spans
        .iter()
        .map(|s| ((s.trace_id.as_str(), s.span_id.as_str()), s))
        .collect();
    let attr = |s: &ReceivedSpan, k: &str| s.attributes.get(k).cloned().unwrap_or_default();
    // family root (resource/namespace/name) → (object spans, request spans, actors)
    let mut families: BTreeMap<String, (usize, usize, BTreeSet<String>)> = BTreeMap::new();
    for s in &spans {
        let mut at = s;
        while let Some(p) = at.parent_span_id.as_deref() {
            at = by_id[&(at.trace_id.as_str(), p)];
        }
        let root = format!(
            "{}/{}/{}",
            attr(at, "kubetrail.object.resource"),
            attr(at, "k8s.namespace.name"),
            attr(at, "kubetrail.object.name")
        );
        // Generated names (ReplicaSet hashes, pod suffixes, Job schedule times) vary per run
        // only in the capture's own content, which is fixed: keep them.
        let f = families.entry(root).or_default();
        if s.kind == OBJECT_KIND {
            f.0 += 1;
        } else {
            f.1 += 1;
            f.2.insert(s.service_name.clone());
        }
    }
    let mut summary = String::new();
    for (root, (objects, requests, actors)) in &families {
        if root.starts_with("deployments/shop")
            || root.starts_with("cronjobs/")
            || root.starts_with("statefulsets/")
            || root.starts_with("deployments/doomed")
            || root.starts_with("namespaces/")
            || root.starts_with("secrets/")
        {
            summary.push_str(&format!(
                "{root}: {objects} object spans, {requests} request spans, by {}\n",
                actors.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    summary.push_str(&format!(
        "total: {} spans in {} families\n",
        spans.len(),
        families.len()
    ));
    insta::assert_snapshot!("cluster_capture_families", summary);
    let text = std::fs::read_to_string(&out).unwrap();
    for v in [
        "hunter2-initial-Secret-Value",
        "rotated-Secret-Value-42",
        "doomed-Secret-Value-7",
    ] {
        assert!(!text.contains(v));
        assert!(!std::fs::read_to_string(capture).unwrap().contains(v));
    }
}
