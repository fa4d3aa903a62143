//! The managed clouds' real export samples replayed through the pipeline: the traces they
//! make, snapshotted (AKS diagnostic records, an EKS CloudWatch event, GKE LogEntries).

mod common;

use common::*;

#[test]
fn snapshot_cloud_exports() {
    let mut text = String::new();
    for f in [
        "sysdiglabs-aks-audit-log/raw/event.json",
        "sysdiglabs-aks-audit-log/raw/sample_KubeAuditLog_event.json",
        "otel-collector-contrib-cloud-exports/eks-cloudwatch/event-1.json",
        "otel-collector-contrib-cloud-exports/gke-cloud-logging/activity.json",
    ] {
        let (spans, _) = run(read_events(&samples().join(f)));
        text.push_str(&format!("## {f}\n{}\n", outline(&spans)));
    }
    // KHI keeps its GKE LogEntries as YAML; Cloud Logging exports the same keys as JSON.
    let dir = samples().join("khi-gke-cloud-logging/k8s_audit");
    let mut lines = String::new();
    for n in 1..=3 {
        let yaml = std::fs::read_to_string(dir.join(format!("container_recorder_test_1_{n}.yaml")))
            .unwrap();
        let v: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
        lines.push_str(&format!("{v}\n"));
    }
    let tmp = std::env::temp_dir().join(format!("kubetrail-gke-{}.jsonl", std::process::id()));
    std::fs::write(&tmp, lines).unwrap();
    let (spans, _) = run(read_events(&tmp));
    std::fs::remove_file(&tmp).unwrap();
    text.push_str(&format!(
        "## khi-gke-cloud-logging/k8s_audit (as JSON lines)\n{}\n",
        outline(&spans)
    ));
    insta::assert_snapshot!(text);
}
