//! Replay decode throughput per cloud envelope against plain JSON lines: the same generated
//! audit events wrapped as AKS diagnostic records (one per line, and whole documents),
//! CloudWatch Logs exports, Firehose deliveries of gzip subscription payloads, and GKE
//! Cloud Logging LogEntries (mapped from AuditLog). Reported in events per second.

use std::io::Write as _;

use base64::Engine as _;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kubetrail_benches::{decode, volume};
use serde_json::{Value, json};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = gz.write_all(bytes);
    gz.finish().unwrap_or_default()
}

/// An audit Event as GKE logs it: a LogEntry with an AuditLog protoPayload.
fn log_entry(e: &Value) -> Value {
    let r = &e["objectRef"];
    let group = r["apiGroup"]
        .as_str()
        .filter(|g| !g.is_empty())
        .unwrap_or("core");
    let version = r["apiVersion"].as_str().unwrap_or("v1");
    let resource = r["resource"].as_str().unwrap_or("");
    let mut name = format!("{group}/{version}");
    if let Some(ns) = r["namespace"].as_str() {
        name.push_str(&format!("/namespaces/{ns}"));
    }
    name.push_str(&format!("/{resource}"));
    let mut method = format!("io.k8s.{group}.{version}.{resource}");
    if let Some(n) = r["name"].as_str() {
        name.push_str(&format!("/{n}"));
    }
    if let Some(s) = r["subresource"].as_str() {
        name.push_str(&format!("/{s}"));
        method.push_str(&format!(".{s}"));
    }
    method.push_str(&format!(".{}", e["verb"].as_str().unwrap_or("get")));
    let mut pp = json!({
        "@type": "type.googleapis.com/google.cloud.audit.AuditLog",
        "authenticationInfo": {"principalEmail": e["user"]["username"]},
        "methodName": method,
        "requestMetadata": {"callerIp": e["sourceIPs"][0], "callerSuppliedUserAgent": e["userAgent"]},
        "resourceName": name,
        "serviceName": "k8s.io",
        "status": {"code": 0}
    });
    if let Some(b) = e.get("requestObject") {
        pp["request"] = b.clone();
    }
    if let Some(b) = e.get("responseObject") {
        pp["response"] = b.clone();
    }
    json!({
        "insertId": e["auditID"], "labels": e["annotations"],
        "logName": "projects/p/logs/cloudaudit.googleapis.com%2Factivity",
        "operation": {"first": true, "id": e["auditID"], "last": true, "producer": "k8s.io"},
        "protoPayload": pp,
        "resource": {"type": "k8s_cluster", "labels": {"cluster_name": "c", "location": "l", "project_id": "p"}},
        "timestamp": e["stageTimestamp"], "receiveTimestamp": e["stageTimestamp"]
    })
}

fn formats() -> Vec<(&'static str, Vec<u8>, u64)> {
    let lines = volume(2);
    let events: Vec<Value> = lines
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect();
    let n = events.len() as u64;
    let text = |e: &Value| e.to_string();
    let aks_record = |e: &Value| json!({"category": "kube-audit", "operationName": "Microsoft.ContainerService/managedClusters/diagnosticLogs/Read", "properties": {"log": text(e), "stream": "stdout", "pod": "kube-apiserver-0"}});
    let mut aks_lines = Vec::new();
    for e in &events {
        aks_lines.extend_from_slice(aks_record(e).to_string().as_bytes());
        aks_lines.push(b'\n');
    }
    let mut aks_docs = Vec::new();
    for chunk in events.chunks(500) {
        let doc = json!({"records": chunk.iter().map(aks_record).collect::<Vec<_>>()});
        aks_docs.extend_from_slice(doc.to_string().as_bytes());
        aks_docs.push(b'\n');
    }
    let mut cloudwatch = Vec::new();
    for chunk in events.chunks(500) {
        let doc = json!({"events": chunk.iter().map(|e| json!({"logStreamName": "kube-apiserver-audit-1", "timestamp": 1, "message": text(e), "ingestionTime": 2, "eventId": "1"})).collect::<Vec<_>>()});
        cloudwatch.extend_from_slice(doc.to_string().as_bytes());
        cloudwatch.push(b'\n');
    }
    let mut firehose = Vec::new();
    for chunk in events.chunks(500) {
        let records: Vec<Value> = chunk
            .chunks(50)
            .map(|c| {
                let sub = json!({"messageType": "DATA_MESSAGE", "logGroup": "/aws/eks/c/cluster", "logStream": "kube-apiserver-audit-1", "logEvents": c.iter().map(|e| json!({"id": "1", "timestamp": 1, "message": text(e)})).collect::<Vec<_>>()});
                json!({"data": b64(&gzip(sub.to_string().as_bytes()))})
            })
            .collect();
        let doc = json!({"requestId": "r", "timestamp": 1, "records": records});
        firehose.extend_from_slice(doc.to_string().as_bytes());
        firehose.push(b'\n');
    }
    let mut gke = Vec::new();
    for e in &events {
        gke.extend_from_slice(log_entry(e).to_string().as_bytes());
        gke.push(b'\n');
    }
    vec![
        ("json_lines", lines, n),
        ("aks_record_lines", aks_lines, n),
        ("aks_documents", aks_docs, n),
        ("cloudwatch_export", cloudwatch, n),
        ("firehose_gzip_subscription", firehose, n),
        ("gke_log_entries", gke, n),
    ]
}

fn cloud(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_by_format");
    g.sample_size(10);
    for (name, input, n) in formats() {
        assert_eq!(decode(&input) as u64, n, "{name} decodes every event");
        g.throughput(Throughput::Elements(n));
        g.bench_function(name, |b| b.iter(|| decode(&input)));
    }
    g.finish();
}

criterion_group!(benches, cloud);
criterion_main!(benches);
