//! The queue against a real Apache Kafka broker: round trip and key order, the commit rule,
//! malformed messages, a broker outage.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use kubetrail_gen::RolloutScenario;
use kubetrail_kafka::{
    HEADER_CLUSTER, HEADER_FORMAT, KafkaConfig, KafkaConsumer, KafkaProducer, partition_key,
};
use kubetrail_queue::{AuditBatch, AuditConsumer, AuditProducer, PublishError};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

type Sequences = BTreeMap<String, Vec<(String, String)>>;

fn push(seqs: &mut Sequences, cluster: &str, e: &kubetrail_model::AuditEvent) {
    seqs.entry(partition_key(cluster, e))
        .or_default()
        .push((e.audit_id.clone(), format!("{:?}", e.stage)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_keeps_key_order_and_commits_only_what_is_acknowledged() {
    init_tracing();
    let (broker, topic) = broker_with_topic(4);
    let mut cfg = config(&broker, &topic, &unique("group"));
    cfg.lookback = Duration::ZERO;
    cfg.max_batch_events = 64;
    let evs = events(&RolloutScenario::default().generate());
    let producer = KafkaProducer::new(&cfg).unwrap();
    let t0 = now_nanos();
    publish_all(&producer, "east", &evs, 50).await;
    publish_all(&producer, "west", &evs, 50).await;
    let total = 2 * evs.len();
    let mut expected = Sequences::new();
    for cluster in ["east", "west"] {
        for e in &evs {
            push(&mut expected, cluster, e);
        }
    }
    assert!(expected.len() >= 4, "several keys: {:?}", expected.keys());
    wait_until("the producer reports the brokers reachable", || {
        producer.health().ready
    })
    .await;

    // A consumer that receives half of the messages and acknowledges nothing, then goes.
    let mut first = KafkaConsumer::new(&cfg).unwrap();
    let mut unacknowledged = Vec::new();
    let mut seen = 0;
    while seen < total / 2 {
        let r = bounded("first consumer", first.recv()).await.unwrap();
        seen += r.batch.events.len();
        unacknowledged.push(r);
    }
    drop(unacknowledged);
    assert_eq!(committed(&[&first.stats_handle()]).values().sum::<i64>(), 0);
    first.close().await;

    // The next member of the group gets every message again, per key in publishing order,
    // in batches of one partition and one cluster.
    let mut second = KafkaConsumer::new(&cfg).unwrap();
    let mut got = Sequences::new();
    let mut n = 0;
    while n < total {
        let r = bounded("second consumer", second.recv()).await.unwrap();
        let b = &r.batch;
        assert!(b.cluster == "east" || b.cluster == "west", "{}", b.cluster);
        assert!(b.received_at >= t0, "received_at is carried");
        assert_eq!(b.source.as_deref(), Some("10.0.0.1:4242"));
        assert!(!b.events.is_empty() && b.events.len() <= 64);
        for e in &b.events {
            push(&mut got, &b.cluster, e);
        }
        n += b.events.len();
        r.ack.done();
    }
    assert_eq!(n, total);
    assert_eq!(got, expected, "per key, the order of publishing");
    let second_stats = second.stats_handle();
    wait_committed(&[&second_stats], total as i64).await;
    let stats = second.stats();
    assert_eq!(stats.messages, total as u64);
    assert_eq!(stats.malformed, 0);
    second.close().await;

    // Everything is committed: a new member has nothing to read.
    let mut third = KafkaConsumer::new(&cfg).unwrap();
    wait_until("the third consumer is assigned and at the end", || {
        third.caught_up()
    })
    .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(100), third.recv())
            .await
            .is_err()
    );
    assert_eq!(third.stats().messages, 0);
    third.close().await;

    // With a lookback, a new member re-reads what came within it before the committed
    // offsets (here: everything), without committing anything new.
    cfg.lookback = KafkaConfig::default().lookback;
    let mut fourth = KafkaConsumer::new(&cfg).unwrap();
    let mut again = Sequences::new();
    let mut n = 0;
    while n < total {
        let r = bounded("fourth consumer", fourth.recv()).await.unwrap();
        for e in &r.batch.events {
            push(&mut again, &r.batch.cluster, e);
        }
        n += r.batch.events.len();
        r.ack.done();
    }
    assert_eq!(again, expected);
    let stats = fourth.stats();
    assert_eq!(stats.replayed, total as u64, "all of it below the commits");
    assert_eq!(
        stats.committed.values().sum::<i64>(),
        total as i64,
        "no commit moves"
    );
    fourth.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_skipped_counted_and_do_not_block_the_partition() {
    init_tracing();
    let (broker, topic) = broker_with_topic(1);
    let cfg = config(&broker, &topic, &unique("group"));
    let evs = events(&RolloutScenario::default().generate());
    let producer = KafkaProducer::new(&cfg).unwrap();
    publish_all(&producer, "c", &evs[..3], 3).await;

    let raw: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.addr())
        .create()
        .unwrap();
    let valid = serde_json::to_vec(&evs[3]).unwrap();
    let headers = |format: &str| {
        OwnedHeaders::new()
            .insert(Header {
                key: HEADER_FORMAT,
                value: Some(format),
            })
            .insert(Header {
                key: HEADER_CLUSTER,
                value: Some("c"),
            })
    };
    let bad: Vec<(&[u8], Option<OwnedHeaders>)> = vec![
        (b"not json at all", Some(headers("1"))),
        (&valid, Some(headers("2"))), // a future format version
        (&valid, None),               // not written by kubetrail
        (br#"{"kind":"Event"}"#, Some(headers("1"))),
    ];
    for (value, headers) in bad {
        let mut record = FutureRecord::to(&topic).key("c/").payload(value);
        if let Some(h) = headers {
            record = record.headers(h);
        }
        raw.send(record, Duration::from_secs(5)).await.unwrap();
    }
    publish_all(&producer, "c", &evs[4..7], 3).await;

    let mut consumer = KafkaConsumer::new(&cfg).unwrap();
    let mut ids = Vec::new();
    while ids.len() < 6 {
        let r = bounded("consumer", consumer.recv()).await.unwrap();
        ids.extend(r.batch.events.iter().map(|e| e.audit_id.clone()));
        r.ack.done();
    }
    let want: Vec<String> = evs[..3]
        .iter()
        .chain(&evs[4..7])
        .map(|e| e.audit_id.clone())
        .collect();
    assert_eq!(ids, want, "the messages after the bad ones still arrive");
    let handle = consumer.stats_handle();
    wait_committed(&[&handle], 10).await;
    assert_eq!(consumer.stats().malformed, 4);
    consumer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_fails_within_the_timeout_while_the_broker_is_down_and_recovers() {
    init_tracing();
    let (mut broker, topic) = broker_with_topic(2);
    let mut cfg = config(&broker, &topic, &unique("group"));
    cfg.produce_timeout = Duration::from_secs(2);
    let evs = events(&RolloutScenario::default().generate());
    let producer = KafkaProducer::new(&cfg).unwrap();
    let batch = |i: usize| AuditBatch {
        cluster: "c".to_owned(),
        received_at: now_nanos(),
        source: None,
        events: evs[i * 10..(i + 1) * 10].to_vec(),
    };
    producer.publish(batch(0)).await.unwrap();
    wait_until("healthy", || producer.health().ready).await;

    broker.stop().unwrap();
    let start = Instant::now();
    let err = producer.publish(batch(1)).await.unwrap_err();
    let took = start.elapsed();
    assert!(
        matches!(
            err,
            PublishError::Unavailable { .. } | PublishError::Full { .. }
        ),
        "{err:?}"
    );
    assert!(
        took <= cfg.produce_timeout + Duration::from_millis(500),
        "no hang: {took:?}"
    );
    assert!(err.retry_after() > Duration::ZERO);
    wait_until("the producer reports the outage", || {
        !producer.health().ready
    })
    .await;
    let health = producer.health();
    assert!(health.reason.is_some(), "{health:?}");

    // The same broker, on the same data: the topic and what was acknowledged survive.
    broker.restart().unwrap();
    // As the API server does: retry the batch until it is accepted.
    let start = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let t = Instant::now();
        match producer.publish(batch(2)).await {
            Ok(()) => break,
            Err(e) => {
                assert!(t.elapsed() <= cfg.produce_timeout + Duration::from_millis(500));
                assert!(
                    start.elapsed() < DEADLINE,
                    "still failing after {attempts} attempts: {e}"
                );
                tracing::info!(error = %e, "retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    wait_until("healthy again", || producer.health().ready).await;

    // What was accepted after the restart is there.
    let mut consumer = KafkaConsumer::new(&cfg).unwrap();
    let mut ids = std::collections::BTreeSet::new();
    let want: std::collections::BTreeSet<String> =
        evs[20..30].iter().map(|e| e.audit_id.clone()).collect();
    while !want.is_subset(&ids) {
        let r = bounded("consumer", consumer.recv()).await.unwrap();
        ids.extend(r.batch.events.iter().map(|e| e.audit_id.clone()));
        r.ack.done();
    }
    consumer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_whose_worker_is_behind_is_paused_and_resumed_without_loss() {
    init_tracing();
    let (broker, topic) = broker_with_topic(1);
    let mut cfg = config(&broker, &topic, &unique("group"));
    cfg.max_batch_events = 16;
    cfg.max_buffered_bytes = 64 << 10;
    let evs = events(&volume());
    let producer = KafkaProducer::new(&cfg).unwrap();
    publish_all(&producer, "c", &evs, 200).await;

    let mut consumer = KafkaConsumer::new(&cfg).unwrap();
    let stats = consumer.stats_handle();
    wait_until("the partition is paused while nothing is received", || {
        stats.get().pauses > 0
    })
    .await;
    let mut ids = Vec::new();
    while ids.len() < evs.len() {
        let r = bounded("consumer", consumer.recv()).await.unwrap();
        ids.extend(r.batch.events.iter().map(|e| e.audit_id.clone()));
        r.ack.done();
    }
    let want: Vec<String> = evs.iter().map(|e| e.audit_id.clone()).collect();
    assert_eq!(ids, want, "everything, once, in order");
    wait_committed(&[&stats], evs.len() as i64).await;
    consumer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lookback_re_reads_what_was_accepted_within_it_before_the_committed_offset() {
    init_tracing();
    let (broker, topic) = broker_with_topic(1);
    let mut cfg = config(&broker, &topic, &unique("group"));
    let evs = events(&RolloutScenario::default().generate());
    let producer = KafkaProducer::new(&cfg).unwrap();
    // Three batches accepted an hour apart (message timestamps are acceptance times).
    let hour = 3_600_000_000_000i64;
    let t0 = now_nanos() - 3 * hour;
    for i in 0..3usize {
        producer
            .publish(AuditBatch {
                cluster: "c".to_owned(),
                received_at: t0 + i as i64 * hour,
                source: None,
                events: evs[i * 10..(i + 1) * 10].to_vec(),
            })
            .await
            .unwrap();
    }
    let mut consumer = KafkaConsumer::new(&cfg).unwrap();
    let mut n = 0;
    while n < 30 {
        let r = bounded("consumer", consumer.recv()).await.unwrap();
        n += r.batch.events.len();
        r.ack.done();
    }
    let handle = consumer.stats_handle();
    wait_committed(&[&handle], 30).await;
    consumer.close().await;

    // The last committed message was accepted at t0 + 2h: a lookback of 30 min re-reads its
    // batch only (offsets 20..30), one of 90 min the last two: the broker's time index
    // (`offsets_for_times`) answers the start.
    for (lookback_min, first) in [(30u64, 20usize), (90, 10), (300, 0)] {
        cfg.lookback = Duration::from_secs(lookback_min * 60);
        let mut again = KafkaConsumer::new(&cfg).unwrap();
        let r = bounded("re-read", again.recv()).await.unwrap();
        assert_eq!(
            r.batch.events[0].audit_id, evs[first].audit_id,
            "lookback {lookback_min} min starts at offset {first}"
        );
        wait_until("re-read to the end", || again.caught_up()).await;
        assert_eq!(again.stats().replayed, 30 - first as u64);
        again.close().await;
    }
}
