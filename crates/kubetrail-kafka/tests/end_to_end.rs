//! Webhook-free end to end at library level: generated audit streams → `KafkaProducer` →
//! Apache Kafka → `PartitionedWorker`s → exporter → a real OTLP receiver, compared with a direct
//! `Pipeline` replay of the same events.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use kubetrail_kafka::{ConsumerStats, KafkaProducer};
use kubetrail_testkit::{OtlpReceiver, ReceivedSpan};
use kubetrail_worker::{PartitionedError, PartitionedReport, WorkerConfig, WorkerReport};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Generated streams carry 2024 timestamps: the wall clock must not move the pipelines'
/// clocks (as in a replay), or families would be cut wherever batches happen to end.
/// No lateness: a partition is one source, in time order, so each event is released as it
/// arrives — a batch is acknowledged (and committed) only once all its events were released,
/// and with a lateness the last seconds of a partition would stay held (uncommitted) until
/// the worker stops, which `wait_committed` would wait for in vain.
fn worker_config() -> WorkerConfig {
    WorkerConfig {
        tick: None,
        order: kubetrail_pipeline::watermark::OrderConfig {
            lateness: std::time::Duration::ZERO,
            ..Default::default()
        },
    }
}

struct Running {
    stats: kubetrail_kafka::StatsHandle,
    stop: oneshot::Sender<()>,
    run: JoinHandle<Result<PartitionedReport, PartitionedError>>,
    export: JoinHandle<kubetrail_export::ExportReport>,
}

fn start(cfg: &kubetrail_kafka::KafkaConfig, receiver: &OtlpReceiver) -> Running {
    let (handle, export) = exporter(receiver);
    let (worker, stats) = partitioned_worker(cfg, pipeline_config(), handle, worker_config());
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    Running {
        stats,
        stop,
        run,
        export,
    }
}

/// What a consumer did: its pipelines' reports and its statistics at the end.
#[derive(Debug)]
struct Consumed {
    partitions: Vec<(i32, WorkerReport)>,
    consumer: ConsumerStats,
}

/// Stops gracefully; returns once everything it exported was delivered.
async fn stop(r: Running) -> Consumed {
    let _ = r.stop.send(());
    let report = bounded("worker stops", r.run).await.unwrap().unwrap();
    let export = bounded("exporter ends", r.export).await.unwrap();
    assert_eq!(export.spans_dropped, 0);
    Consumed {
        partitions: report.partitions,
        consumer: r.stats.get(),
    }
}

/// Object spans by object identity: the distinct (trace, span, parent) ids each got.
fn object_ids(spans: &[ReceivedSpan]) -> BTreeMap<Vec<String>, BTreeSet<SpanIds>> {
    let mut by_object: BTreeMap<Vec<String>, BTreeSet<_>> = BTreeMap::new();
    for s in spans.iter().filter(|s| s.kind == OBJECT_KIND) {
        let key = [
            "kubetrail.object.resource",
            "k8s.namespace.name",
            "kubetrail.object.name",
            "kubetrail.object.uid",
        ]
        .iter()
        .map(|k| s.attributes.get(*k).cloned().unwrap_or_default())
        .collect();
        by_object.entry(key).or_default().insert((
            s.trace_id.clone(),
            s.span_id.clone(),
            s.parent_span_id.clone(),
        ));
    }
    by_object
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_make_the_same_traces_as_one_and_as_a_direct_replay() {
    init_tracing();
    let (broker, topic) = broker_with_topic(4);
    let stream = volume();
    let evs = events(&stream);
    let total = evs.len() as i64;
    let producer = KafkaProducer::new(&config(&broker, &topic, "unused")).unwrap();

    // Two members of one group, settled on two partitions each before anything arrives.
    let pair_cfg = config(&broker, &topic, &unique("pair"));
    let pair_receiver = OtlpReceiver::start().await.unwrap();
    let a = start(&pair_cfg, &pair_receiver);
    let b = start(&pair_cfg, &pair_receiver);
    let (sa, sb) = (a.stats.clone(), b.stats.clone());
    wait_until("two partitions each", || {
        sa.get().assigned.len() == 2 && sb.get().assigned.len() == 2
    })
    .await;
    publish_all(&producer, "e2e", &evs, 200).await;
    wait_committed(&[&sa, &sb], total).await;
    let (ra, rb) = (stop(a).await, stop(b).await);
    let pair = pair_receiver.spans();
    for (name, r) in [("a", &ra), ("b", &rb)] {
        let batches: u64 = r.partitions.iter().map(|(_, w)| w.batches).sum();
        assert!(batches > 0, "consumer {name} did part of the work: {r:?}");
        assert_eq!(r.consumer.malformed, 0);
    }

    // One member of another group, over the same topic.
    let single_receiver = OtlpReceiver::start().await.unwrap();
    let single_cfg = config(&broker, &topic, &unique("single"));
    let one = start(&single_cfg, &single_receiver);
    let s1 = one.stats.clone();
    wait_committed(&[&s1], total).await;
    stop(one).await;
    let single = single_receiver.spans();

    let direct = direct_replay("e2e", &evs).await;
    let truth = &stream.truth;
    let requests = audit_ids(&direct);
    assert_eq!(requests.len(), truth.mutating_requests + truth.kube_events);
    assert_eq!(audit_ids(&pair), requests, "every request span arrives");
    assert_eq!(audit_ids(&single), requests);
    let want = id_set(&direct);
    assert_eq!(id_set(&single), want, "one consumer = a direct replay");
    assert_eq!(id_set(&pair), want, "two consumers = one consumer");
    let objects = object_ids(&pair);
    assert_eq!(objects.len(), truth.objects.len());
    assert!(objects.values().all(|ids| ids.len() == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_mid_stream_loses_nothing_and_splits_no_family() {
    init_tracing();
    let (broker, topic) = broker_with_topic(4);
    let stream = volume();
    let evs = events(&stream);
    let total = evs.len() as i64;
    let producer = KafkaProducer::new(&config(&broker, &topic, "unused")).unwrap();
    publish_all(&producer, "e2e", &evs, 200).await;

    let mut cfg = config(&broker, &topic, &unique("group"));
    cfg.max_batch_events = 8; // many small batches: the kill lands mid-stream
    let receiver = OtlpReceiver::start().await.unwrap();

    // The first consumer gets part of the way, then is killed: its task is aborted, its
    // pipelines are dropped without finishing (no open family is emitted), nothing it holds
    // unacknowledged is committed.
    let first = start(&cfg, &receiver);
    let s1 = first.stats.clone();
    wait_until("the first consumer committed a third", || {
        committed(&[&s1]).values().sum::<i64>() >= total / 3
    })
    .await;
    first.run.abort();
    let at_kill: i64 = committed(&[&s1]).values().sum();
    tracing::info!(at_kill, total, "killed");
    drop(first.stop);

    // A new member of the group takes over and finishes.
    // The killed member's polling thread leaves the group on its own (a real `kill -9`
    // would leave it to expire after session.timeout.ms); the next member joins after it
    // left, so the test is about the takeover, not about the session timeout.
    wait_until("the killed member left the group", || s1.get().closed).await;
    let second = start(&cfg, &receiver);
    let s2 = second.stats.clone();
    wait_committed(&[&s2], total).await;
    let report = stop(second).await;
    let _ = bounded("first exporter ends", first.export).await;
    let spans = receiver.spans();

    let direct = direct_replay("e2e", &evs).await;
    assert!(
        audit_ids(&spans).is_superset(&audit_ids(&direct)),
        "every request span arrives at least once"
    );
    let objects = object_ids(&spans);
    assert_eq!(objects.len(), stream.truth.objects.len());
    for (object, ids) in &objects {
        assert_eq!(ids.len(), 1, "{object:?} has one object span, not {ids:?}");
    }
    assert_eq!(
        id_set(&spans),
        id_set(&direct),
        "the same traces as an uninterrupted replay"
    );
    assert!(
        report.consumer.replayed > 0,
        "the new member re-read before the committed offsets: {:?}",
        report.consumer
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_consumer_catches_up_on_event_time_then_emits_with_the_wall_clock() {
    init_tracing();
    let (broker, topic) = broker_with_topic(4);
    let stream = volume();
    let evs = events(&stream);
    let producer = KafkaProducer::new(&config(&broker, &topic, "unused")).unwrap();
    publish_all(&producer, "e2e", &evs, 200).await;
    let direct = direct_replay("e2e", &evs).await;

    // Ticking like `consume` does: while a partition has a backlog its clock is the events'
    // own (families are not cut between batches); once it is caught up, the wall clock (far
    // past these 2024 events) makes every family quiet, and it is emitted without a stop.
    let mut cfg = config(&broker, &topic, &unique("live"));
    cfg.max_batch_events = 4; // many pauses between batches, in each a tick is due
    let receiver = OtlpReceiver::start().await.unwrap();
    let (handle, export) = exporter(&receiver);
    let (worker, stats) = partitioned_worker(
        &cfg,
        pipeline_config(),
        handle,
        WorkerConfig {
            tick: Some(std::time::Duration::from_millis(1)),
            order: kubetrail_pipeline::watermark::OrderConfig {
                lateness: std::time::Duration::ZERO,
                max_lag: std::time::Duration::ZERO,
                ..Default::default()
            },
        },
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let live = receiver
        .wait_for_spans(direct.len(), DEADLINE)
        .await
        .unwrap();
    assert_eq!(id_set(&live), id_set(&direct));
    let _ = stop.send(());
    bounded("worker stops", run).await.unwrap().unwrap();
    bounded("exporter ends", export).await.unwrap();
    assert_eq!(
        receiver.spans().len(),
        direct.len(),
        "nothing left to emit at the stop, nothing emitted twice"
    );
    assert_eq!(stats.get().messages, evs.len() as u64);
}
