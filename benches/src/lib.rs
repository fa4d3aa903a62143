//! Shared set-up for kubetrail's benchmarks: the generated inputs and the measured steps.
//!
//! Each step is a function so that the criterion benches (`benches/replay.rs`) and the
//! `bench-summary` binary measure exactly the same code.

#![forbid(unsafe_code)]

pub mod kafka;
pub mod webhook;

use std::io::BufRead;

use kubetrail_gen::VolumeScenario;
use kubetrail_model::SpanRecord;
use kubetrail_pipeline::{Pipeline, PipelineConfig};
use kubetrail_source::EventReader;

/// A generated audit log: `namespaces` × 5 Deployments × 3 replicas, 2 rollouts each, with
/// read and lease noise, as JSON lines.
pub fn volume(namespaces: u32) -> Vec<u8> {
    let scenario = VolumeScenario {
        seed: 42,
        namespaces,
        deployments_per_namespace: 5,
        replicas: 3,
        rollouts_per_deployment: 2,
        with_noise: true,
    };
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = scenario.write_json_lines(&mut out);
    out
}

/// EventList bodies of `per_body` events each, from a generated dump (each event distinct).
pub fn event_list_bodies(input: &[u8], per_body: usize) -> Vec<Vec<u8>> {
    let lines: Vec<&str> = std::str::from_utf8(input).unwrap_or("").lines().collect();
    lines
        .chunks(per_body)
        .filter(|c| c.len() == per_body)
        .map(|c| {
            format!(
                "{{\"kind\":\"EventList\",\"apiVersion\":\"audit.k8s.io/v1\",\"items\":[{}]}}",
                c.join(",")
            )
            .into_bytes()
        })
        .collect()
}

/// The first `events` events of a generated dump as one pretty-printed `EventList` (what
/// `kubectl get --raw`, `jq .` or a saved webhook body look like): many lines per event.
pub fn pretty_event_list(input: &[u8], events: usize) -> Vec<u8> {
    let items: Vec<serde_json::Value> = std::str::from_utf8(input)
        .unwrap_or("")
        .lines()
        .take(events)
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let list = serde_json::json!({
        "kind": "EventList",
        "apiVersion": "audit.k8s.io/v1",
        "items": items,
    });
    serde_json::to_vec_pretty(&list).unwrap_or_default()
}

/// The baseline: a bare `serde_json` parse of every line into a `Value`.
pub fn bare_parse(input: &[u8]) -> usize {
    let mut n = 0;
    for line in input.lines() {
        let Ok(line) = line else { continue };
        if serde_json::from_str::<serde_json::Value>(&line).is_ok() {
            n += 1;
        }
    }
    n
}

/// Decoding into `AuditEvent`s with kubetrail's reader (bodies kept raw).
pub fn decode(input: &[u8]) -> usize {
    EventReader::from_reader("bench", std::io::Cursor::new(input.to_vec()))
        .filter(|r| matches!(r, Ok(Ok(_))))
        .count()
}

/// Decode + the whole pipeline (filter, stage merge, link, aggregate); spans are counted,
/// not exported.
pub fn pipeline(input: &[u8]) -> usize {
    let mut p = Pipeline::new(PipelineConfig::default());
    let mut out: Vec<SpanRecord> = Vec::with_capacity(4096);
    let mut spans = 0;
    for rec in EventReader::from_reader("bench", std::io::Cursor::new(input.to_vec())) {
        if let Ok(Ok(e)) = rec {
            p.push("bench", e, &mut out);
            spans += out.len();
            out.clear();
        }
    }
    p.finish(&mut out);
    spans + out.len()
}

/// Decode + pipeline streaming from a file (the memory measurement: nothing is held but
/// the pipeline's own bounded state).
pub fn pipeline_file(path: &str) -> anyhow::Result<usize> {
    let mut p = Pipeline::new(PipelineConfig::default());
    let mut out: Vec<SpanRecord> = Vec::with_capacity(4096);
    let mut spans = 0;
    for rec in EventReader::open(path)? {
        if let Ok(Ok(e)) = rec {
            p.push("bench", e, &mut out);
            spans += out.len();
            out.clear();
        }
    }
    p.finish(&mut out);
    Ok(spans + out.len())
}

/// Decode + pipeline + conversion to OTLP protobuf bytes in batches of 512 (what an OTLP
/// exporter sends), without the network.
pub fn pipeline_encoded(input: &[u8]) -> usize {
    use prost::Message;
    let mut p = Pipeline::new(PipelineConfig::default());
    let mut out: Vec<SpanRecord> = Vec::with_capacity(4096);
    let mut bytes = 0;
    let mut flush = |out: &mut Vec<SpanRecord>| {
        for chunk in out.chunks(512) {
            bytes += kubetrail_export::to_export_request(chunk)
                .encode_to_vec()
                .len();
        }
        out.clear();
    };
    for rec in EventReader::from_reader("bench", std::io::Cursor::new(input.to_vec())) {
        if let Ok(Ok(e)) = rec {
            p.push("bench", e, &mut out);
            if out.len() >= 512 {
                flush(&mut out);
            }
        }
    }
    p.finish(&mut out);
    flush(&mut out);
    bytes
}
