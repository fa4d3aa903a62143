//! Repartitioning by family against a real Apache Kafka: `receive`'s namespace-keyed topic →
//! the routing stage (`Repartitioner`, one `FamilyRouter` per partition) → the family topic →
//! one pipeline per partition (`PartitionedWorker`), as `consume` runs them; compared with a
//! direct `Pipeline` replay of the merged stream.
//!
//! The family under test is what namespace keys cut apart: a cluster-scoped custom resource
//! (`tenants.example.com/acme`) owning two Namespaces and a ConfigMap in each, among the
//! generated Deployment families of four other namespaces.
//!
//! Feeding: events are published in rounds of [`ROUND_S`] seconds of event time, and a round
//! starts once the routing stage has republished everything published so far (its counter,
//! an observable fact). So the interleaving of the routers' outputs in a family partition
//! stays within the watermark's lateness, as it does with live routers.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use kubetrail_kafka::{
    KafkaConfig, KafkaProducer, Repartitioner, RouteStats, RouteStatsHandle, StatsHandle,
};
use kubetrail_model::AuditEvent;
use kubetrail_pipeline::watermark::OrderConfig;
use kubetrail_queue::{AuditBatch, AuditProducer};
use kubetrail_testkit::{KafkaBroker, OtlpReceiver, ReceivedSpan};
use kubetrail_worker::{PartitionedError, PartitionedReport, WorkerConfig};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Seconds of event time per feeding round (below the default 5 s lateness).
const ROUND_S: i64 = 2;

/// The Tenant family of `kubetrail-gen`, from the generated streams' start.
fn tenant_family() -> Vec<AuditEvent> {
    kubetrail_gen::cluster_scoped_owner_family(kubetrail_gen::DEFAULT_CLUSTER_START)
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect()
}

/// The tenant family among generated Deployment families, in event-time order.
fn mixed_stream() -> Vec<AuditEvent> {
    let mut all = events(&volume());
    all.extend(tenant_family());
    all.sort_by_key(|e| e.stage_timestamp);
    all
}

/// Trace ids of the tenant family's request spans (auditIDs `tenant-…`).
fn tenant_traces(spans: &[ReceivedSpan]) -> BTreeSet<String> {
    kubetrail_testkit::audit_id_traces(spans, "tenant-")
}

/// Which of `n` API servers handled an event (all stages of a request on one).
fn server_of(e: &AuditEvent, n: usize) -> usize {
    e.audit_id.bytes().map(usize::from).sum::<usize>() % n
}

/// A broker with the input topic and the family topic, 4 partitions each.
fn broker_with_topics() -> (KafkaBroker, String) {
    let (broker, topic) = broker_with_topic(4);
    broker
        .create_topic(&format!("{topic}-families"), 4)
        .unwrap();
    (broker, topic)
}

/// One `consume` process's two halves: routing its share of the input partitions into the
/// family topic, and the pipelines of its share of the family partitions.
struct Consume {
    stop: watch::Sender<bool>,
    route: JoinHandle<Result<RouteStats, kubetrail_kafka::Error>>,
    run: JoinHandle<Result<PartitionedReport, PartitionedError>>,
    export: JoinHandle<kubetrail_export::ExportReport>,
    routed: RouteStatsHandle,
    route_input: StatsHandle,
    pipelines: StatsHandle,
}

fn consume(cfg: &KafkaConfig, receiver: &OtlpReceiver, order: OrderConfig) -> Consume {
    let (stop, rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let router = Repartitioner::new(cfg, pipeline_config().link).unwrap();
    let (routed, route_input) = (router.route_stats(), router.stats_handle());
    let route = tokio::spawn(router.run(stopped(rx.clone())));
    let (handle, export) = exporter(receiver);
    let (worker, pipelines) = partitioned_worker(
        &cfg.pipeline_stage(),
        pipeline_config(),
        handle,
        WorkerConfig { tick: None, order },
    );
    let run = tokio::spawn(worker.run(stopped(rx)));
    Consume {
        stop,
        route,
        run,
        export,
        routed,
        route_input,
        pipelines,
    }
}

async fn stop(c: Consume) -> PartitionedReport {
    let _ = c.stop.send(true);
    let report = bounded("pipelines stop", c.run).await.unwrap().unwrap();
    bounded("routing stops", c.route).await.unwrap().unwrap();
    let export = bounded("exporter ends", c.export).await.unwrap();
    assert_eq!(export.spans_dropped, 0);
    report
}

/// Events of each round of [`ROUND_S`] seconds (from the first event), per server: server
/// `lagging` (if any) sends its events `lag_s` seconds late.
fn rounds(
    events: &[AuditEvent],
    servers: usize,
    lagging: Option<usize>,
    lag_s: i64,
) -> Vec<Vec<(usize, Vec<AuditEvent>)>> {
    let t0 = events
        .iter()
        .filter_map(|e| e.stage_timestamp)
        .min()
        .unwrap();
    let second = |e: &AuditEvent| (e.stage_timestamp.unwrap_or(t0) - t0) / 1_000_000_000;
    let last = events.iter().map(second).max().unwrap() + lag_s;
    let mut out = Vec::new();
    let mut r = 0;
    while r <= last {
        let mut round = Vec::new();
        for s in 0..servers {
            let shift = if Some(s) == lagging { lag_s } else { 0 };
            let batch: Vec<AuditEvent> = events
                .iter()
                .filter(|e| server_of(e, servers) == s)
                .filter(|e| (r..r + ROUND_S).contains(&(second(e) + shift)))
                .cloned()
                .collect();
            if !batch.is_empty() {
                round.push((s, batch));
            }
        }
        out.push(round);
        r += ROUND_S;
    }
    out
}

/// Publishes each round as the API servers' batches (source `apiserver-<i>`), then waits until
/// the routing stage committed the input topic to its end: everything published so far was
/// republished into the family topic. Returns how many events were published.
async fn feed(
    producer: &KafkaProducer,
    broker: &KafkaBroker,
    topic: &str,
    rounds: &[Vec<(usize, Vec<AuditEvent>)>],
    routers: &[&StatsHandle],
) -> u64 {
    let mut published = 0;
    for round in rounds {
        for (server, batch) in round {
            producer
                .publish(AuditBatch {
                    cluster: "e2e".to_owned(),
                    received_at: now_nanos(),
                    source: Some(format!("apiserver-{server}")),
                    events: batch.clone(),
                })
                .await
                .unwrap();
            published += batch.len() as u64;
        }
        let end = broker.end_offsets(topic).unwrap();
        wait_until("the round was routed", || {
            let done = committed(routers);
            end.iter()
                .all(|(p, e)| *e == 0 || done.get(p).is_some_and(|c| c >= e))
        })
        .await;
    }
    published
}

/// Waits until the pipelines took every message of `topic` (all partitions at their end):
/// everything published has reached a pipeline, which processes it before it finishes. (Not
/// the group's commits: a batch is committed only once the watermark released its events and
/// their spans were delivered, so the tail within the lateness is committed at stop.)
async fn wait_topic_taken(broker: &KafkaBroker, topic: &str, pipelines: &[&StatsHandle]) {
    wait_until(&format!("the pipelines took all of {topic}"), || {
        let end = broker.end_offsets(topic).unwrap();
        let mut taken = BTreeMap::new();
        for h in pipelines {
            for (p, o) in h.get().taken {
                let t = taken.entry(p).or_insert(o);
                *t = (*t).max(o);
            }
        }
        end.iter()
            .all(|(p, e)| *e == 0 || taken.get(p).is_some_and(|t| t >= e))
    })
    .await;
}

/// Waits until the group committed every message of `topic` (all partitions at their end).
async fn wait_topic_committed(broker: &KafkaBroker, group: &str, topic: &str) {
    wait_until(&format!("{group} committed all of {topic}"), || {
        let end = broker.end_offsets(topic).unwrap();
        let committed = broker.committed_offsets(group, topic).unwrap();
        end.iter()
            .all(|(p, e)| *e == 0 || committed.get(p).is_some_and(|c| c >= e))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_scoped_owners_family_across_namespaces_is_one_trace_as_in_replay() {
    init_tracing();
    let (broker, topic) = broker_with_topics();
    let evs = mixed_stream();
    let direct = direct_replay("e2e", &evs).await;
    assert_eq!(tenant_traces(&direct).len(), 1, "replay: one trace");
    let producer = KafkaProducer::new(&config(&broker, &topic, "unused")).unwrap();

    // Two `consume`s, each settled on two input and two family partitions.
    let cfg = config(&broker, &topic, &unique("fam"));
    let receiver = OtlpReceiver::start().await.unwrap();
    let a = consume(&cfg, &receiver, OrderConfig::default());
    let b = consume(&cfg, &receiver, OrderConfig::default());
    let (ra, rb, pa, pb) = (
        a.route_input.clone(),
        b.route_input.clone(),
        a.pipelines.clone(),
        b.pipelines.clone(),
    );
    wait_until("two partitions each, in both stages", || {
        [&ra, &rb, &pa, &pb]
            .iter()
            .all(|s| s.get().assigned.len() == 2)
    })
    .await;
    let total = feed(
        &producer,
        &broker,
        &topic,
        &rounds(&evs, 1, None, 0),
        &[&ra, &rb],
    )
    .await;
    assert_eq!(total, evs.len() as u64);
    let families = format!("{topic}-families");
    wait_topic_taken(&broker, &families, &[&pa, &pb]).await;
    let routed = [a.routed.get(), b.routed.get()];
    let (ra_, rb_) = (stop(a).await, stop(b).await);
    // Stopped, the pipelines emitted what they held and committed all of it.
    wait_topic_committed(&broker, &cfg.group, &families).await;
    for r in [&ra_, &rb_] {
        assert!(r.partitions.iter().any(|(_, w)| w.batches > 0), "{r:?}");
    }
    let crossing: u64 = routed.iter().map(|r| r.crossing).sum();
    // The ConfigMaps' creates and updates and their delete: namespaced members of the
    // tenant's family.
    assert!(crossing >= 5, "{routed:?}");
    let spans = receiver.spans();
    assert_eq!(tenant_traces(&spans).len(), 1, "one trace for the family");
    assert_eq!(audit_ids(&spans), audit_ids(&direct), "every request span");
    assert_eq!(id_set(&spans), id_set(&direct), "the replay's ids");

    // The control: pipelines reading the namespace-keyed topic directly cut the family.
    let direct_cfg = KafkaConfig {
        repartition: false,
        ..config(&broker, &topic, &unique("nokey"))
    };
    let control = OtlpReceiver::start().await.unwrap();
    let (handle, export) = exporter(&control);
    let (worker, s) = partitioned_worker(
        &direct_cfg.pipeline_stage(),
        pipeline_config(),
        handle,
        WorkerConfig {
            tick: None,
            order: OrderConfig::default(),
        },
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(worker.run(async {
        let _ = rx.await;
    }));
    wait_topic_taken(&broker, &topic, &[&s]).await;
    let _ = tx.send(());
    bounded("control stops", run).await.unwrap().unwrap();
    bounded("control exporter", export).await.unwrap();
    assert!(
        tenant_traces(&control.spans()).len() > 1,
        "keyed by namespace, the family is cut across partitions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_api_servers_one_lagging_20s_through_kafka_give_the_merged_replay() {
    init_tracing();
    let (broker, topic) = broker_with_topics();
    let evs = mixed_stream();
    let direct = direct_replay("e2e", &evs).await;
    let producer = KafkaProducer::new(&config(&broker, &topic, "unused")).unwrap();
    let cfg = config(&broker, &topic, &unique("ha"));
    let order = OrderConfig {
        expect_sources: (0..3).map(|i| format!("apiserver-{i}")).collect(),
        ..OrderConfig::default()
    };
    let receiver = OtlpReceiver::start().await.unwrap();
    let a = consume(&cfg, &receiver, order.clone());
    let b = consume(&cfg, &receiver, order);
    let (ra, rb, pa, pb) = (
        a.route_input.clone(),
        b.route_input.clone(),
        a.pipelines.clone(),
        b.pipelines.clone(),
    );
    wait_until("two partitions each, in both stages", || {
        [&ra, &rb, &pa, &pb]
            .iter()
            .all(|s| s.get().assigned.len() == 2)
    })
    .await;
    feed(
        &producer,
        &broker,
        &topic,
        &rounds(&evs, 3, Some(2), 20),
        &[&ra, &rb],
    )
    .await;
    let families = format!("{topic}-families");
    wait_topic_taken(&broker, &families, &[&pa, &pb]).await;
    let (ra_, rb_) = (stop(a).await, stop(b).await);
    wait_topic_committed(&broker, &cfg.group, &families).await;
    let late: u64 = ra_
        .partitions
        .iter()
        .chain(&rb_.partitions)
        .map(|(_, w)| w.pipeline.late)
        .sum();
    assert_eq!(late, 0, "nothing late: the lagging server held time back");
    let spans = receiver.spans();
    assert_eq!(tenant_traces(&spans).len(), 1);
    assert_eq!(audit_ids(&spans), audit_ids(&direct));
    assert_eq!(id_set(&spans), id_set(&direct), "the merged replay's ids");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consume_killed_mid_stream_and_a_rebalance_keep_the_replays_ids() {
    init_tracing();
    let (broker, topic) = broker_with_topics();
    let evs = mixed_stream();
    let direct = direct_replay("e2e", &evs).await;
    let producer = KafkaProducer::new(&config(&broker, &topic, "unused")).unwrap();
    let mut cfg = config(&broker, &topic, &unique("kill"));
    cfg.max_batch_events = 16; // many small batches: the kill lands mid-stream
    let receiver = OtlpReceiver::start().await.unwrap();
    let a = consume(&cfg, &receiver, OrderConfig::default());
    let b = consume(&cfg, &receiver, OrderConfig::default());
    let (ra, rb, pa, pb) = (
        a.route_input.clone(),
        b.route_input.clone(),
        a.pipelines.clone(),
        b.pipelines.clone(),
    );
    wait_until("two partitions each, in both stages", || {
        [&ra, &rb, &pa, &pb]
            .iter()
            .all(|s| s.get().assigned.len() == 2)
    })
    .await;
    let all = rounds(&evs, 1, None, 0);
    let half = all.len() / 2;
    let first = feed(&producer, &broker, &topic, &all[..half], &[&ra, &rb]).await;

    // `a` dies without a word: both its stages are aborted (no open family emitted, nothing
    // unacknowledged committed); its partitions move to `b` (a rebalance), whose pipelines
    // finish what they had, and whose new partitions start `lookback` back.
    a.route.abort();
    a.run.abort();
    drop(a.stop);
    wait_until("the killed member left both groups", || {
        ra.get().closed && pa.get().closed
    })
    .await;
    wait_until("b took every partition", || {
        rb.get().assigned.len() == 4 && pb.get().assigned.len() == 4
    })
    .await;
    // The rest goes to the survivor, and a new member joins mid-way: another rebalance.
    let quarter = half + (all.len() - half) / 2;
    let second = feed(&producer, &broker, &topic, &all[half..quarter], &[&ra, &rb]).await;
    let c = consume(&cfg, &receiver, OrderConfig::default());
    let (rc, pc) = (c.route_input.clone(), c.pipelines.clone());
    wait_until("c took its share", || {
        !rc.get().assigned.is_empty() && !pc.get().assigned.is_empty()
    })
    .await;
    let third = feed(
        &producer,
        &broker,
        &topic,
        &all[quarter..],
        &[&ra, &rb, &rc],
    )
    .await;
    assert_eq!(first + second + third, evs.len() as u64);
    wait_topic_committed(&broker, &cfg.route_stage().group, &topic).await;
    // The survivors' pipelines (not the killed member's: what it took died with it).
    wait_topic_taken(&broker, &format!("{topic}-families"), &[&pb, &pc]).await;
    let relearned = b.routed.get().relearned + c.routed.get().relearned;
    assert!(
        relearned > 0,
        "moved input partitions were re-read to rebuild the routers, not republished"
    );
    // Republished at most: every event once, plus the uncommitted tail of the killed member
    // (at most its batches in flight), never the lookback.
    let families: i64 = broker
        .end_offsets(&format!("{topic}-families"))
        .unwrap()
        .values()
        .sum();
    assert!(
        families >= evs.len() as i64 && (families as u64) < evs.len() as u64 + relearned,
        "{families} messages in the family topic for {} events ({relearned} re-read)",
        evs.len()
    );
    stop(b).await;
    stop(c).await;
    wait_topic_committed(&broker, &cfg.group, &format!("{topic}-families")).await;
    let _ = bounded("the killed exporter ends", a.export).await;

    let spans = receiver.spans();
    assert!(audit_ids(&spans).is_superset(&audit_ids(&direct)));
    assert_eq!(tenant_traces(&spans).len(), 1);
    assert_eq!(
        id_set(&spans),
        id_set(&direct),
        "the same traces as an uninterrupted replay"
    );
}
