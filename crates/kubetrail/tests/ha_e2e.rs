//! An HA control plane, as an operator meets it: two or three API servers, each serving a
//! share of the requests (dealt by auditID, as a load balancer does) and writing its own audit
//! log or its own webhook batches. `replay` of the servers' logs (rotated, gzipped, given as a
//! glob) and `serve` fed by concurrent API-server clients — one lagging 20 s behind — must
//! give exactly the spans of the merged single-stream replay.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

mod common;

use common::{id_set, replay_json, spawn_serve, terminate};
use kubetrail_gen::RolloutScenario;
use kubetrail_testkit::{ApiServerClient, ReceivedSpan};
use serde_json::Value;

const OBJECT_KIND: i32 = 1;

fn server_of(e: &Value, n: usize) -> usize {
    let id = e["auditID"].as_str().unwrap();
    let h = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (h % n as u64) as usize
}

fn lines(events: &[&Value]) -> String {
    let mut s = String::new();
    for e in events {
        s.push_str(&serde_json::to_string(e).unwrap());
        s.push('\n');
    }
    s
}

fn traces(spans: &[ReceivedSpan]) -> BTreeSet<String> {
    spans.iter().map(|s| s.trace_id.clone()).collect()
}

/// The trace of every object span, by object name.
fn deployment_family_traces(spans: &[ReceivedSpan], deployment: &str) -> BTreeSet<String> {
    spans
        .iter()
        .filter(|s| s.kind == OBJECT_KIND)
        .filter(|s| {
            s.attributes
                .get("kubetrail.object.name")
                .is_some_and(|n| n.starts_with(deployment))
        })
        .map(|s| s.trace_id.clone())
        .collect()
}

/// Writes server `i`'s log as kube-apiserver leaves it: the older half rotated away (gzipped
/// for the first server), the rest in `audit.log`.
fn write_server_log(dir: &Path, i: usize, events: &[&Value]) {
    let node = dir.join(format!("node{i}"));
    std::fs::create_dir_all(&node).unwrap();
    let (old, new) = events.split_at(events.len() / 2);
    let rotated = lines(old);
    if i == 0 {
        let f = std::fs::File::create(node.join("audit-2024-05-01T10-00-30.000.log.gz")).unwrap();
        let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        gz.write_all(rotated.as_bytes()).unwrap();
        gz.finish().unwrap();
    } else {
        std::fs::write(node.join("audit-2024-05-01T10-00-30.000.log"), rotated).unwrap();
    }
    std::fs::write(node.join("audit.log"), lines(new)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_of_two_and_three_servers_logs_equals_the_merged_replay() {
    let stream = RolloutScenario::default().generate();
    let dir = tempfile::tempdir().unwrap();
    let merged = dir.path().join("merged.log");
    std::fs::write(&merged, stream.to_json_lines()).unwrap();
    let (want, _) = replay_json(
        "e2e",
        &[merged.to_str().unwrap()],
        &dir.path().join("want.json"),
    )
    .await;
    assert_eq!(deployment_family_traces(&want, "web").len(), 1);

    for servers in [2usize, 3] {
        let ha = dir.path().join(format!("ha{servers}"));
        for i in 0..servers {
            let mine: Vec<&Value> = stream
                .events
                .iter()
                .filter(|e| server_of(e, servers) == i)
                .collect();
            write_server_log(&ha, i, &mine);
        }
        // As an operator types it: one glob over the nodes' logs and their rotated files.
        let glob = format!("{}/node*/audit*.log*", ha.display());
        let (got, stderr) = replay_json(
            "e2e",
            &[&glob],
            &dir.path().join(format!("got{servers}.json")),
        )
        .await;
        assert_eq!(id_set(&got), id_set(&want), "{servers} servers: {stderr}");
        assert!(
            stderr.contains(&format!("{} events read", stream.events.len())),
            "{stderr}"
        );

        // Directories work the same way.
        let dirs: Vec<String> = (0..servers)
            .map(|i| ha.join(format!("node{i}")).display().to_string())
            .collect();
        let args: Vec<&str> = dirs.iter().map(String::as_str).collect();
        let (by_dir, _) =
            replay_json("e2e", &args, &dir.path().join(format!("dir{servers}.json"))).await;
        assert_eq!(id_set(&by_dir), id_set(&want));

        // `--sequential` keeps the old reading (one file after another, no look-ahead): the
        // second server's events come out of order, which the summary says.
        let mut seq_args = vec!["--sequential"];
        seq_args.extend(args.iter().copied());
        let (_, stderr) = replay_json(
            "e2e",
            &seq_args,
            &dir.path().join(format!("seq{servers}.json")),
        )
        .await;
        assert!(
            stderr.contains("events beyond the look-ahead in their input"),
            "{stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_far_ahead_does_not_move_time() {
    let stream = RolloutScenario::default().generate();
    let dir = tempfile::tempdir().unwrap();
    let clean = dir.path().join("clean.log");
    std::fs::write(&clean, stream.to_json_lines()).unwrap();
    let (want, _) = replay_json(
        "e2e",
        &[clean.to_str().unwrap()],
        &dir.path().join("want.json"),
    )
    .await;

    // ConfigMap updates of another namespace in the middle of the log: one written ~50 s
    // ahead of its neighbours (a skewed clock), one dated 2200, and one dated 9999 (valid
    // RFC 3339; held as the latest time nanoseconds since 1970 can hold, 2262-04-11).
    let mut events: Vec<Value> = stream.events.clone();
    let mid = events.len() / 3;
    let t = kubetrail_model::parse_rfc3339_nanos(events[mid]["stageTimestamp"].as_str().unwrap())
        .unwrap();
    let odd = |id: &str, at: &str| -> Value {
        serde_json::from_str(&format!(
            r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"{id}","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/other/configmaps/{id}","verb":"update","user":{{"username":"admin"}},"objectRef":{{"resource":"configmaps","namespace":"other","name":"{id}","apiVersion":"v1"}},"responseStatus":{{"code":200}},"requestReceivedTimestamp":"{at}","stageTimestamp":"{at}"}}"#
        ))
        .unwrap()
    };
    let ahead = kubetrail_model::format_rfc3339(t + 50_000_000_000);
    events.insert(mid, odd("skewed", &ahead));
    events.insert(mid + 1, odd("y2200", "2200-01-01T00:00:00.000000Z"));
    events.insert(mid + 2, odd("y9999", "9999-12-31T23:59:59.000000Z"));
    let refs: Vec<&Value> = events.iter().collect();
    let odd_log = dir.path().join("odd.log");
    std::fs::write(&odd_log, lines(&refs)).unwrap();
    let (got, stderr) = replay_json(
        "e2e",
        &[odd_log.to_str().unwrap()],
        &dir.path().join("got.json"),
    )
    .await;

    // The rollout's spans are exactly those of the clean log: nothing emitted early, no
    // overlapping segments; the three odd requests are each in a trace of their own.
    let odd_names = ["skewed", "y2200", "y9999"];
    let rollout_only: Vec<ReceivedSpan> = got
        .iter()
        .filter(|s| {
            !s.attributes
                .get("kubetrail.object.name")
                .is_some_and(|n| odd_names.contains(&n.as_str()))
        })
        .cloned()
        .collect();
    assert_eq!(id_set(&rollout_only), id_set(&want), "{stderr}");
    assert_eq!(traces(&got).len(), traces(&want).len() + 3, "{stderr}");
    assert_eq!(
        got.len() - rollout_only.len(),
        6,
        "a request and an object span each: {stderr}"
    );
    assert!(stderr.contains("2 far ahead set aside"), "{stderr}");
    assert!(!stderr.contains("malformed records skipped"), "{stderr}");
}

/// One step of event time per round: each on-time server posts its events of the second,
/// the lagging one those of 20 s earlier; the posts of a round are concurrent.
async fn feed_servers(clients: &[ApiServerClient], per_server: &[Vec<Value>], lag_s: i64) {
    let t0 = per_server
        .iter()
        .filter_map(|v| v.first())
        .map(|e| {
            kubetrail_model::parse_rfc3339_nanos(e["stageTimestamp"].as_str().unwrap()).unwrap()
        })
        .min()
        .unwrap();
    let second = |e: &Value| -> i64 {
        let t =
            kubetrail_model::parse_rfc3339_nanos(e["stageTimestamp"].as_str().unwrap()).unwrap();
        (t - t0) / 1_000_000_000
    };
    let last = per_server
        .iter()
        .flat_map(|v| v.iter().map(second))
        .max()
        .unwrap();
    let lagging = clients.len() - 1;
    for round in 0..=last + lag_s {
        let mut sends = Vec::new();
        for (i, client) in clients.iter().enumerate() {
            let at = if i == lagging { round - lag_s } else { round };
            let batch: Vec<Value> = per_server[i]
                .iter()
                .filter(|e| second(e) == at)
                .cloned()
                .collect();
            if !batch.is_empty() {
                sends.push(async move {
                    let r = client.send_events(&batch).await.unwrap();
                    assert!(r.all_delivered(), "{:?}", r.statuses());
                });
            }
        }
        futures::future::join_all(sends).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_servers_one_lagging_20s_give_the_merged_replays_spans() {
    // Event time is wall time (the servers are live), so the watermark's wall-clock
    // extrapolation is exercised as in production.
    let start = common::wall_time_start();
    let stream = RolloutScenario {
        cluster_start: start,
        ..Default::default()
    }
    .generate();
    let dir = tempfile::tempdir().unwrap();
    let merged = dir.path().join("merged.log");
    std::fs::write(&merged, stream.to_json_lines()).unwrap();

    for servers in [2usize, 3] {
        let names: Vec<String> = (0..servers).map(|i| format!("apiserver-{i}")).collect();
        let config = dir.path().join(format!("kubetrail{servers}.yaml"));
        std::fs::write(
            &config,
            format!("time:\n  expect_sources: [{}]\n", names.join(", ")),
        )
        .unwrap();
        let (want, _) = replay_json(
            "e2e",
            &[
                "--config",
                config.to_str().unwrap(),
                merged.to_str().unwrap(),
            ],
            &dir.path().join(format!("want{servers}.json")),
        )
        .await;
        assert_eq!(deployment_family_traces(&want, "web").len(), 1);

        let out = dir.path().join(format!("serve{servers}.json"));
        let (mut child, addr, stderr) = spawn_serve(&[
            "--config",
            config.to_str().unwrap(),
            "--otlp-json",
            out.to_str().unwrap(),
        ])
        .await;
        let clients: Vec<ApiServerClient> = names
            .iter()
            .map(|n| {
                ApiServerClient::new(&format!("http://{addr}/audit/e2e?source={n}"))
                    .with_batch_size(400)
            })
            .collect();
        let per_server: Vec<Vec<Value>> = (0..servers)
            .map(|i| {
                stream
                    .events
                    .iter()
                    .filter(|e| server_of(e, servers) == i)
                    .cloned()
                    .collect()
            })
            .collect();
        feed_servers(&clients, &per_server, 20).await;
        let status = terminate(&mut child).await;
        let log = stderr.await.unwrap();
        assert!(status.success(), "{log}");
        let got = common::read_spans(&out);
        assert_eq!(id_set(&got), id_set(&want), "{servers} servers:\n{log}");
        assert!(
            got.iter()
                .all(|s| !s.attributes.contains_key("kubetrail.late")),
            "nothing was late"
        );
    }
}
