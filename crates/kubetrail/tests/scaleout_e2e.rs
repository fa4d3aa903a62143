//! Scale-out as an operator runs it: `kubetrail receive` in front of a real Kafka-protocol
//! broker (Apache Kafka), two `kubetrail consume` processes in one group, a real OTLP receiver. The
//! traces equal those `kubetrail replay` builds from the same events.

use std::time::Duration;

use kubetrail_gen::RolloutScenario;
use kubetrail_testkit::{ApiServerClient, KafkaBroker, OtlpReceiver};
use tokio::process::Child;

mod common;

use common::{id_set as ids, kill9, spawn_until, terminate};

async fn start(args: &[&str], ready: &str) -> (Child, String) {
    let (child, rest, _stderr) = spawn_until(args, ready).await;
    (child, rest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_to_kafka_to_two_consumers_equals_replay() {
    let stream = RolloutScenario::default().generate();
    let broker = KafkaBroker::start().unwrap();
    broker.create_topic("audit", 4).unwrap();
    // `consume` routes `audit` into the family-keyed `audit-families` (kafka.repartition).
    broker.create_topic("audit-families", 4).unwrap();
    let brokers = broker.addr().to_string();
    let otlp = OtlpReceiver::start().await.unwrap();
    let endpoint = otlp.grpc_endpoint();

    let (mut receive, addr, _stderr) = common::spawn_receive("e2e", &brokers, "audit", &[]).await;
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
    let expected = ids(&common::replay_json("e2e", [&log], &json).await.0);

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

/// One `kubetrail consume` of group `group` on `topic`, exporting into Jaeger.
async fn consume(brokers: &str, topic: &str, group: &str, otlp: &str) -> (Child, String) {
    start(
        &[
            "consume",
            "--cluster",
            "e2e",
            "--kafka-brokers",
            brokers,
            "--kafka-topic",
            topic,
            "--kafka-group",
            group,
            "--otlp-endpoint",
            otlp,
        ],
        "kubetrail consume: joined group",
    )
    .await
}

/// `kubetrail receive` on `topic` with a short produce timeout (so a broker outage turns into
/// 503 within seconds); returns the child and its `http://ADDR/audit/e2e` URL.
async fn receive(dir: &std::path::Path, brokers: &str, topic: &str) -> (Child, String) {
    let config = dir.join("receive.yaml");
    std::fs::write(&config, "kafka:\n  produce_timeout: 3s\n").unwrap();
    let more = ["--config", config.to_str().unwrap()];
    let (child, addr, _stderr) = common::spawn_receive("e2e", brokers, topic, &more).await;
    (child, format!("http://{addr}/audit/e2e"))
}

/// The committed offsets of `group` equal the end of every partition: each message was
/// consumed and committed, and nothing is left behind.
async fn wait_all_committed(broker: &KafkaBroker, group: &str, topic: &str) {
    let until = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let end = broker.end_offsets(topic).unwrap();
        let committed = broker.committed_offsets(group, topic).unwrap();
        let done = end
            .iter()
            .all(|(p, e)| *e == 0 || committed.get(p) == Some(e));
        if done {
            return;
        }
        assert!(
            std::time::Instant::now() < until,
            "committed {committed:?} of {end:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_with_receive_and_two_consumers_running_loses_nothing_acknowledged() {
    let stream = RolloutScenario::default().generate();
    let expected = common::replay_id_set("e2e", &stream.to_json_lines()).await;
    let jaeger = kubetrail_testkit::Jaeger::start().unwrap();
    let mut broker = KafkaBroker::start().unwrap();
    broker.create_topic("audit", 4).unwrap();
    // `consume` routes `audit` into the family-keyed `audit-families` (kafka.repartition).
    broker.create_topic("audit-families", 4).unwrap();
    let brokers = broker.addr();
    let dir = tempfile::tempdir().unwrap();
    let (mut recv, url) = receive(dir.path(), &brokers, "audit").await;
    let otlp = jaeger.otlp_grpc_endpoint();
    let (mut ca, _) = consume(&brokers, "audit", "g", &otlp).await;
    let (mut cb, _) = consume(&brokers, "audit", "g", &otlp).await;

    let half = stream.events.len() / 2;
    let client = ApiServerClient::new(&url).with_batch_size(50);
    let first = client.send_events(&stream.events[..half]).await.unwrap();
    assert!(first.all_delivered(), "{:?}", first.statuses());

    // The broker crashes: `receive` answers 503 + Retry-After (the API server keeps the batch
    // and retries) instead of acknowledging what it cannot store.
    broker.stop().unwrap();
    let body = serde_json::to_vec(&kubetrail_testkit::event_list(
        &stream.events[half..half + 10],
    ))
    .unwrap();
    let down = ApiServerClient::new(&url)
        .post_raw("", body, &[])
        .await
        .unwrap();
    assert_eq!(down.status, 503, "{}", down.text());
    assert!(down.header("retry-after").is_some());

    // Back on the same data; the rest is sent, retried as the API server does.
    broker.restart().unwrap();
    let rest = ApiServerClient::new(&url)
        .with_batch_size(50)
        .with_retries(30, Duration::from_millis(500))
        .send_events(&stream.events[half..])
        .await
        .unwrap();
    assert!(rest.all_delivered(), "{:?}", rest.statuses());

    // Everything acknowledged is in Jaeger with replay's ids; nothing else is.
    let got =
        common::wait_for_jaeger_ids(&jaeger.query(), &expected, Duration::from_secs(180)).await;
    assert_eq!(got, expected, "the traces equal replay's");
    // The topic holds each acknowledged event once (idempotent producer: the broker restart
    // duplicated nothing), and the group committed exactly to its end.
    let end: i64 = broker.end_offsets("audit").unwrap().values().sum();
    assert_eq!(
        end as usize,
        stream.events.len(),
        "one message per acknowledged event"
    );
    wait_all_committed(&broker, "g-route", "audit").await;
    wait_all_committed(&broker, "g", "audit-families").await;
    for c in [&mut ca, &mut cb, &mut recv] {
        assert!(terminate(c).await.success());
    }
    assert_eq!(common::jaeger_id_set(&jaeger.query()).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_with_sigkill_is_replaced_and_the_traces_equal_replay() {
    let stream = RolloutScenario::default().generate();
    let expected = common::replay_id_set("e2e", &stream.to_json_lines()).await;
    let jaeger = kubetrail_testkit::Jaeger::start().unwrap();
    let broker = KafkaBroker::start().unwrap();
    broker.create_topic("audit", 4).unwrap();
    // `consume` routes `audit` into the family-keyed `audit-families` (kafka.repartition).
    broker.create_topic("audit-families", 4).unwrap();
    let brokers = broker.addr();
    let dir = tempfile::tempdir().unwrap();
    let (mut recv, url) = receive(dir.path(), &brokers, "audit").await;
    let otlp = jaeger.otlp_grpc_endpoint();
    let (ca, _) = consume(&brokers, "audit", "g", &otlp).await;
    let (mut cb, _) = consume(&brokers, "audit", "g", &otlp).await;

    let half = stream.events.len() / 2;
    let client = ApiServerClient::new(&url).with_batch_size(50);
    assert!(
        client
            .send_events(&stream.events[..half])
            .await
            .unwrap()
            .all_delivered()
    );
    // Once the group committed part of the first half, one consumer dies without a word.
    let until = std::time::Instant::now() + Duration::from_secs(120);
    while broker
        .committed_offsets("g", "audit-families")
        .unwrap()
        .values()
        .sum::<i64>()
        == 0
    {
        assert!(std::time::Instant::now() < until, "nothing committed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    kill9(&ca);
    // A replacement joins; the group hands it the dead member's partitions once the session
    // timeout expired, and it resumes them (with the lookback) where the dead one committed.
    let (mut cc, _) = consume(&brokers, "audit", "g", &otlp).await;
    assert!(
        client
            .send_events(&stream.events[half..])
            .await
            .unwrap()
            .all_delivered()
    );

    let got =
        common::wait_for_jaeger_ids(&jaeger.query(), &expected, Duration::from_secs(180)).await;
    assert_eq!(got, expected, "the traces equal replay's");
    wait_all_committed(&broker, "g-route", "audit").await;
    wait_all_committed(&broker, "g", "audit-families").await;
    for c in [&mut cb, &mut cc, &mut recv] {
        assert!(terminate(c).await.success());
    }
}

/// Trace ids of the Tenant family's request spans (auditIDs `tenant-…`).
fn tenant_traces(spans: &[kubetrail_testkit::ReceivedSpan]) -> std::collections::BTreeSet<String> {
    kubetrail_testkit::audit_id_traces(spans, "tenant-")
}

/// The family `receive`'s namespace keys cut apart — a cluster-scoped Tenant owning two
/// Namespaces and a ConfigMap in each — among a Deployment rollout, live: `receive` → Kafka →
/// two `consume` (routing into `audit-families`, then the pipelines) give `replay`'s trace
/// and span ids, the Tenant's family in one trace. The API server posts a round of 2 s of
/// event time once the routing group committed the previous one (live routers keep up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_scoped_owners_family_through_receive_and_two_consumes_equals_replay() {
    let start = common::live_start();
    let mut events = RolloutScenario {
        cluster_start: start,
        ..Default::default()
    }
    .generate()
    .events;
    events.extend(kubetrail_gen::cluster_scoped_owner_family(start));
    let time = |e: &serde_json::Value| {
        kubetrail_model::parse_rfc3339_nanos(e["stageTimestamp"].as_str().unwrap()).unwrap()
    };
    events.sort_by_key(time);
    let lines: String = events
        .iter()
        .map(|e| format!("{}\n", kubetrail_gen::event_to_json(e)))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    std::fs::write(&log, &lines).unwrap();
    let json = dir.path().join("replay.jsonl");
    let (want, _) = common::replay_json("e2e", [&log], &json).await;
    assert_eq!(tenant_traces(&want).len(), 1, "replay: one trace");

    let broker = KafkaBroker::start().unwrap();
    broker.create_topic("audit", 4).unwrap();
    broker.create_topic("audit-families", 4).unwrap();
    let brokers = broker.addr();
    let otlp = OtlpReceiver::start().await.unwrap();
    let endpoint = otlp.grpc_endpoint();
    let (mut recv, url) = receive(dir.path(), &brokers, "audit").await;
    let (mut ca, _) = consume(&brokers, "audit", "g", &endpoint).await;
    let (mut cb, _) = consume(&brokers, "audit", "g", &endpoint).await;

    let client = ApiServerClient::new(&url).with_batch_size(400);
    let t0 = events.iter().map(time).min().unwrap();
    let last = events.iter().map(time).max().unwrap();
    let mut round_start = t0;
    while round_start <= last {
        let round: Vec<serde_json::Value> = events
            .iter()
            .filter(|e| (round_start..round_start + 2_000_000_000).contains(&time(e)))
            .cloned()
            .collect();
        round_start += 2_000_000_000;
        if round.is_empty() {
            continue;
        }
        let report = client.send_events(&round).await.unwrap();
        assert!(report.all_delivered(), "{:?}", report.statuses());
        wait_all_committed(&broker, "g-route", "audit").await;
    }
    // Live consumers emit object spans once the families are quiet (wall clock). A rebalance
    // (the second member joining both groups) may export a span twice (same ids), so wait
    // for the ids, not for a count.
    let expected = ids(&want);
    let until = std::time::Instant::now() + Duration::from_secs(180);
    let got = loop {
        let got = otlp.spans();
        if ids(&got).is_superset(&expected) {
            break got;
        }
        assert!(
            std::time::Instant::now() < until,
            "{} of {} span ids arrived",
            ids(&got).intersection(&expected).count(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(tenant_traces(&got).len(), 1, "one trace for the family");
    assert_eq!(ids(&got), ids(&want), "receive + two consume = replay");
    wait_all_committed(&broker, "g", "audit-families").await;
    for c in [&mut ca, &mut cb, &mut recv] {
        assert!(terminate(c).await.success());
    }
    assert_eq!(ids(&otlp.spans()), ids(&want));
}
