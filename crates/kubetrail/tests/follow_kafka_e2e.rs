//! `kubetrail follow --kafka-brokers` against a real Apache Kafka broker: the followed log's
//! events are produced (one message per event), the follower is killed with SIGKILL and
//! restarted from its state file (resuming exactly at the last acknowledged batch: towards a
//! durable queue there is no re-read), and a `kubetrail consume` builds the traces `replay`
//! builds from the same lines.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{id_set, spawn_until, terminate};
use kubetrail_gen::RolloutScenario;
use kubetrail_testkit::{KafkaBroker, OtlpReceiver, append};
use serde_json::Value;

fn committed_offset(state: &Path, log: &Path) -> Option<u64> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(state).ok()?).ok()?;
    v["logs"][log.to_str().unwrap()]["committed"]["offset"].as_u64()
}

fn wait_delivered(state: &Path, log: &Path) {
    let want = std::fs::metadata(log).unwrap().len();
    let until = Instant::now() + Duration::from_secs(120);
    while committed_offset(state, log) != Some(want) {
        assert!(
            Instant::now() < until,
            "state {:?}, want {want}",
            committed_offset(state, log)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_into_kafka_survives_sigkill_and_consume_equals_replay() {
    let stream = RolloutScenario::default().generate();
    let lines: Vec<String> = stream
        .events
        .iter()
        .map(|e| format!("{}\n", serde_json::to_string(e).unwrap()))
        .collect();
    let half = lines.len() / 2;
    let broker = KafkaBroker::start().unwrap();
    broker.create_topic("audit", 2).unwrap();
    // `consume` routes `audit` into the family-keyed `audit-families` (kafka.repartition).
    broker.create_topic("audit-families", 2).unwrap();
    let brokers = broker.addr().to_string();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let log = d.join("audit.log");
    let state = d.join("state.json");
    let config = d.join("follow.yaml");
    std::fs::write(
        &config,
        "follow:\n  state_interval: 100ms\n  poll_interval: 20ms\n",
    )
    .unwrap();
    let s = |p: &Path| p.display().to_string();
    let args = [
        "follow".to_owned(),
        "--config".into(),
        s(&config),
        "--cluster".into(),
        "e2e".into(),
        "--kafka-brokers".into(),
        brokers.clone(),
        "--kafka-topic".into(),
        "audit".into(),
        "--state-file".into(),
        s(&state),
        s(&log),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    append(&log, &lines[..half].concat());
    let (follower, _, _err) = spawn_until(&args, "kubetrail follow: following ").await;
    wait_delivered(&state, &log);
    common::kill9(&follower);
    let mut follower = follower;
    let _ = follower.wait().await;
    append(&log, &lines[half..].concat());
    let (mut follower, _, err) = spawn_until(&args, "kubetrail follow: following ").await;
    wait_delivered(&state, &log);
    assert!(terminate(&mut follower).await.success());
    let text = err.await.unwrap();
    // Every acknowledged batch was produced once: one message per event, no re-read.
    let messages: i64 = broker.end_offsets("audit").unwrap().values().sum();
    assert_eq!(messages as usize, stream.events.len(), "{text}");

    let otlp = OtlpReceiver::start().await.unwrap();
    let (mut consume, _, _cerr) = spawn_until(
        &[
            "consume",
            "--cluster",
            "e2e",
            "--kafka-brokers",
            &brokers,
            "--kafka-topic",
            "audit",
            "--kafka-group",
            "e2e",
            "--otlp-endpoint",
            &otlp.grpc_endpoint(),
        ],
        "kubetrail consume: joined group",
    )
    .await;
    let replay_out = d.join("replay.jsonl");
    let input = d.join("replay-input.log");
    std::fs::write(&input, lines.concat()).unwrap();
    let expected = id_set(&common::replay_json("e2e", [&input], &replay_out).await.0);
    let got = otlp
        .wait_for_spans(expected.len(), Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(id_set(&got), expected);
    assert!(terminate(&mut consume).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_with_a_follow_section_produces_the_file_once() {
    // `receive` follows a log file (config `follow:`) into its topic, next to the webhook.
    let stream = RolloutScenario::default().generate();
    let broker = KafkaBroker::start().unwrap();
    broker.create_topic("audit", 2).unwrap();
    let brokers = broker.addr().to_string();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let log = d.join("audit.log");
    let state = d.join("state.json");
    append(&log, &stream.to_json_lines());
    let config = d.join("receive.yaml");
    common::write_follow_config(&config, &log, &state);
    let s = |p: &Path| p.display().to_string();
    let (mut receive, _, err) =
        common::spawn_receive("e2e", &brokers, "audit", &["--config", &s(&config)]).await;
    wait_delivered(&state, &log);
    assert!(terminate(&mut receive).await.success());
    let text = err.await.unwrap();
    let messages: i64 = broker.end_offsets("audit").unwrap().values().sum();
    assert_eq!(messages as usize, stream.events.len(), "{text}");
    let st: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(st["logs"][log.to_str().unwrap()]["clean"], true, "{st}");
}
