//! A recorded run of a real HA control plane (testdata/cluster-capture/: the log backends of
//! two kube-apiservers, recorded by scripts/record-cluster-capture.sh — ≈ 2,800 events of
//! Deployments rolled and scaled, Secrets, ConfigMaps, Jobs with a failing Pod, namespaces
//! deleted with their contents — gzipped as kube-apiserver's rotation leaves them; Secrets at
//! Metadata level, so no value was ever written) replayed as a regression input: the families,
//! their sizes and their actors are snapshotted, the two logs give the same spans in either
//! order, and no Secret value appears in the spans.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use kubetrail_testkit::{ReceivedSpan, parse_otlp_json_lines};

const OBJECT_KIND: i32 = 1;

const CAPTURE: [&str; 2] = [
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/cluster-capture/apiserver-1.audit.log.gz"
    ),
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/cluster-capture/apiserver-2.audit.log.gz"
    ),
];

/// `kubetrail replay` of the capture's files in this order; the OTLP/JSON it wrote.
async fn replay(files: &[&str], out: &std::path::Path) -> String {
    let mut args = vec![
        "replay",
        "--cluster",
        "local",
        "--no-progress",
        "--otlp-json",
    ];
    args.push(out.to_str().unwrap());
    args.extend_from_slice(files);
    common::run_ok(args).await;
    std::fs::read_to_string(out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_cluster_capture_replays_to_the_same_families() {
    let dir = tempfile::tempdir().unwrap();
    let text = replay(&CAPTURE, &dir.path().join("a.otlp.jsonl")).await;
    let reversed = replay(&[CAPTURE[1], CAPTURE[0]], &dir.path().join("b.otlp.jsonl")).await;
    let ids = |t: &str| -> BTreeSet<(String, String, Option<String>)> {
        parse_otlp_json_lines(t)
            .unwrap()
            .into_iter()
            .map(|s| (s.trace_id, s.span_id, s.parent_span_id))
            .collect()
    };
    assert_eq!(
        ids(&text),
        ids(&reversed),
        "the two API servers' logs merge by time, whatever their order"
    );
    let spans = parse_otlp_json_lines(&text).unwrap();
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
        if root.starts_with("deployments/shop-")
            || root.starts_with("jobs/shop-")
            || root.starts_with("namespaces//shop-")
            || root.starts_with("secrets/shop-")
            || root.starts_with("configmaps/shop-")
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
    let mut logs = String::new();
    for f in CAPTURE {
        use std::io::Read as _;
        flate2::read::GzDecoder::new(std::fs::File::open(f).unwrap())
            .read_to_string(&mut logs)
            .unwrap();
    }
    for r in 1..=9 {
        for v in [
            format!("capture-secret-{r}"),
            format!("capture-rotated-{r}"),
        ] {
            assert!(!text.contains(&v), "{v} in the spans");
            assert!(!logs.contains(&v), "{v} in the capture");
        }
    }
    assert!(
        logs.lines().count() > 2_000,
        "a few thousand real events: {}",
        logs.lines().count()
    );
}
