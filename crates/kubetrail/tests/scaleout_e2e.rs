//! Scale-out as an operator runs it: `kubetrail receive` in front of a real Kafka-protocol
//! broker (tansu), two `kubetrail consume` processes in one group, a real OTLP receiver. The
//! traces equal those `kubetrail replay` builds from the same events.

use std::time::Duration;

use kubetrail_gen::RolloutScenario;
use kubetrail_testkit::{ApiServerClient, KafkaBroker, OtlpReceiver, parse_otlp_json_lines};
use tokio::process::{Child, Command};

mod common;

use common::{first_word, id_set as ids, spawn_until, terminate};

async fn start(args: &[&str], ready: &str) -> (Child, String) {
    let (child, rest, _stderr) = spawn_until(args, ready).await;
    (child, rest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_to_kafka_to_two_consumers_equals_replay() {
    let stream = RolloutScenario::default().generate();
    let broker = KafkaBroker::start().unwrap();
    broker.create_topic("audit", 4).unwrap();
    let brokers = broker.addr().to_string();
    let otlp = OtlpReceiver::start().await.unwrap();
    let endpoint = otlp.grpc_endpoint();

    let (mut receive, rest) = start(
        &[
            "receive",
            "--listen",
            "127.0.0.1:0",
            "--cluster",
            "e2e",
            "--kafka-brokers",
            &brokers,
            "--kafka-topic",
            "audit",
        ],
        "kubetrail receive: listening on ",
    )
    .await;
    let addr = first_word(&rest);
    let consumer = || {
        vec![
            "consume".to_owned(),
            "--cluster".into(),
            "e2e".into(),
            "--kafka-brokers".into(),
            brokers.clone(),
            "--kafka-topic".into(),
            "audit".into(),
            "--kafka-group".into(),
            "e2e".into(),
            // tansu holds a JoinGroup for about half the session timeout (ENVIRONMENT.md).
            "--kafka-property".into(),
            "session.timeout.ms=6000".into(),
            "--otlp-endpoint".into(),
            endpoint.clone(),
        ]
    };
    let a: Vec<String> = consumer();
    let b: Vec<String> = consumer();
    let (mut ca, _) = start(
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        "kubetrail consume: joined group",
    )
    .await;
    let (mut cb, _) = start(
        &b.iter().map(String::as_str).collect::<Vec<_>>(),
        "kubetrail consume: joined group",
    )
    .await;

    let report = ApiServerClient::new(&format!("http://{addr}/audit/e2e"))
        .with_batch_size(50)
        .send_events(&stream.events)
        .await
        .unwrap();
    assert!(report.all_delivered(), "{:?}", report.statuses());

    // What replay builds from the same events is what the consumers must export.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    std::fs::write(&log, stream.to_json_lines()).unwrap();
    let json = dir.path().join("replay.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_kubetrail"))
        .args([
            "replay",
            "--cluster",
            "e2e",
            "--otlp-json",
            json.to_str().unwrap(),
            log.to_str().unwrap(),
        ])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let expected = ids(&parse_otlp_json_lines(&std::fs::read_to_string(&json).unwrap()).unwrap());

    // Live consumers emit object spans once the families are quiet (wall clock), so every
    // expected span arrives without stopping them.
    let got = otlp
        .wait_for_spans(expected.len(), Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(
        ids(&got),
        expected,
        "two consumers behind Kafka build the replay's traces"
    );

    for c in [&mut ca, &mut cb, &mut receive] {
        assert!(terminate(c).await.success());
    }
    // Stopping flushed nothing new and lost nothing: still exactly the replay's spans.
    assert_eq!(ids(&otlp.spans()), expected);
}
