//! The repartitioning stage: [`Repartitioner`] reads the namespace-keyed topic `receive`
//! writes, links each partition's events with a [`FamilyRouter`], and republishes every event
//! into the family topic keyed by its family's [`Scope`] (see the crate documentation,
//! "Repartitioning by family").

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kubetrail_link::LinkerConfig;
use kubetrail_pipeline::family::{FamilyRouter, Scope};
use kubetrail_queue::{AuditConsumer, PartitionLease, PartitionedConsumer as _, run_partitions};

use crate::partitioned::PartitionConsumer;
use crate::{Error, KafkaConfig, KafkaPartitionedConsumer, KafkaProducer, StatsHandle};

/// The family topic's message key for `scope` in `cluster`: `cluster/namespace` for a family
/// rooted in a namespace (the key `receive` gives its events, so such a family stays on the
/// same partition number), `cluster/` for the cluster scope.
pub fn family_key(cluster: &str, scope: &Scope) -> String {
    match scope {
        Scope::Namespace(ns) => format!("{cluster}/{ns}"),
        Scope::Cluster => format!("{cluster}/"),
    }
}

/// Shortest and longest wait before publishing a batch again after the brokers failed.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// What a [`Repartitioner`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteStats {
    /// Events republished.
    pub events: u64,
    /// Of those, keyed to their own namespace.
    pub namespace: u64,
    /// Of those, keyed to the cluster scope.
    pub cluster: u64,
    /// Namespaced events whose family crosses into the cluster scope.
    pub crossing: u64,
    /// Publishes retried after a failure.
    pub retries: u64,
    /// Events re-read by the lookback after an assignment: routed to rebuild the graph, not
    /// republished (they were before the committed offset).
    pub relearned: u64,
}

#[derive(Debug, Default)]
struct Counters {
    events: AtomicU64,
    namespace: AtomicU64,
    cluster: AtomicU64,
    crossing: AtomicU64,
    retries: AtomicU64,
    relearned: AtomicU64,
}

impl Counters {
    fn get(&self) -> RouteStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RouteStats {
            events: g(&self.events),
            namespace: g(&self.namespace),
            cluster: g(&self.cluster),
            crossing: g(&self.crossing),
            retries: g(&self.retries),
            relearned: g(&self.relearned),
        }
    }
}

/// Whether a [`Repartitioner`] is caught up: it holds partitions and each of them is at its
/// end with nothing waiting. Cheap to clone; see [`KafkaPartitionedConsumer::with_upstream`](crate::KafkaPartitionedConsumer::with_upstream).
#[derive(Debug, Clone, Default)]
pub struct RouteProgress(Arc<Progress>);

#[derive(Debug, Default)]
struct Progress {
    leases: AtomicU64,
    behind: AtomicU64,
}

impl RouteProgress {
    /// Holds at least one partition, and none is behind (during a rebalance it holds none).
    pub fn idle(&self) -> bool {
        self.0.leases.load(Ordering::Acquire) > 0 && self.0.behind.load(Ordering::Acquire) == 0
    }
}

/// One lease's share of [`RouteProgress`]; given back when dropped.
struct LeaseProgress {
    progress: RouteProgress,
    behind: bool,
}

impl LeaseProgress {
    fn new(progress: RouteProgress) -> Self {
        progress.0.leases.fetch_add(1, Ordering::AcqRel);
        progress.0.behind.fetch_add(1, Ordering::AcqRel);
        LeaseProgress {
            progress,
            behind: true,
        }
    }

    fn set(&mut self, caught_up: bool) {
        if caught_up && self.behind {
            self.progress.0.behind.fetch_sub(1, Ordering::AcqRel);
        } else if !caught_up && !self.behind {
            self.progress.0.behind.fetch_add(1, Ordering::AcqRel);
        }
        self.behind = !caught_up;
    }
}

impl Drop for LeaseProgress {
    fn drop(&mut self) {
        if self.behind {
            self.progress.0.behind.fetch_sub(1, Ordering::AcqRel);
        }
        self.progress.0.leases.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How often a routing task looks whether its partition is caught up while it waits.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// A handle to a [`Repartitioner`]'s counters.
#[derive(Debug, Clone)]
pub struct RouteStatsHandle(Arc<Counters>);

impl RouteStatsHandle {
    /// The counters now.
    pub fn get(&self) -> RouteStats {
        self.0.get()
    }
}

/// The repartitioning stage of `consume`: a member of the consumer group `<group>-route` on
/// the namespace-keyed topic; one [`FamilyRouter`] per assigned partition (each sees its
/// namespaces' events in offset order, from `lookback` before the committed offset, as a
/// pipeline would), republishing each batch to the family topic with the same value,
/// headers (cluster, source, acceptance time) and message timestamp, keyed by
/// [`family_key`]. A batch's offsets are committed once the family topic's brokers
/// acknowledged all of it. What the lookback re-reads before the committed offset only
/// rebuilds the router's state (it was republished before it was committed); the
/// uncommitted tail is republished after a crash (at least once: the pipelines drop the
/// repeated deliveries by auditID and stage).
pub struct Repartitioner {
    consumer: KafkaPartitionedConsumer,
    producer: KafkaProducer,
    link: LinkerConfig,
    counters: Arc<Counters>,
    progress: RouteProgress,
}

impl std::fmt::Debug for Repartitioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repartitioner")
            .field("producer", &self.producer)
            .finish_non_exhaustive()
    }
}

impl Repartitioner {
    /// Joins `<group>-route` on `config.topic` and creates the family topic's producer.
    /// `link` must be the pipelines' `link:` settings (the same owners are followed).
    pub fn new(config: &KafkaConfig, link: LinkerConfig) -> Result<Repartitioner, Error> {
        let producer = KafkaProducer::new(&config.family_producer())?;
        let consumer = KafkaPartitionedConsumer::new(&config.route_stage())?;
        Ok(Repartitioner {
            consumer,
            producer,
            link,
            counters: Arc::new(Counters::default()),
            progress: RouteProgress::default(),
        })
    }

    /// A handle to the routing counters.
    pub fn route_stats(&self) -> RouteStatsHandle {
        RouteStatsHandle(self.counters.clone())
    }

    /// Whether the routing is caught up (for the pipelines of the same process).
    pub fn progress(&self) -> RouteProgress {
        self.progress.clone()
    }

    /// A handle to the input consumer's statistics (assigned partitions, committed offsets).
    pub fn stats_handle(&self) -> StatsHandle {
        self.consumer.stats_handle()
    }

    /// Routes assigned partitions until `stop` resolves, then closes gracefully: what was
    /// republished is committed and the group left.
    pub async fn run(mut self, stop: impl Future<Output = ()>) -> Result<RouteStats, Error> {
        let (link, producer, counters, progress) =
            (&self.link, &self.producer, &self.counters, &self.progress);
        let start = |lease| {
            let router = FamilyRouter::new(link.clone());
            let progress = LeaseProgress::new(progress.clone());
            route_partition(lease, router, producer.clone(), counters.clone(), progress)
        };
        let ended = |joined: Result<(), tokio::task::JoinError>| {
            if let Err(e) = joined {
                tracing::error!(error = %e, "kafka: a routing task failed");
            }
            std::ops::ControlFlow::Continue(())
        };
        run_partitions(&mut self.consumer, stop, start, ended).await;
        if let Some(reason) = self.consumer.failure() {
            return Err(Error::Fatal(reason));
        }
        Ok(self.counters.get())
    }
}

async fn route_partition(
    lease: PartitionLease<PartitionConsumer>,
    mut router: FamilyRouter,
    producer: KafkaProducer,
    counters: Arc<Counters>,
    mut progress: LeaseProgress,
) {
    let PartitionLease {
        partition,
        mut consumer,
        done,
    } = lease;
    loop {
        let next = tokio::select! {
            next = consumer.recv_marked() => next,
            () = tokio::time::sleep(PROGRESS_EVERY) => {
                progress.set(consumer.caught_up());
                continue;
            }
        };
        let Some((received, replayed)) = next else {
            break;
        };
        progress.set(false);
        let batch = received.batch;
        if replayed {
            // Before the committed offset: the previous owner republished it before it
            // committed. Only learn from it (the owner graph, the sticky scopes).
            for e in &batch.events {
                router.route(e);
            }
            counters
                .relearned
                .fetch_add(batch.events.len() as u64, Ordering::Relaxed);
            received.ack.done();
            continue;
        }
        let mut keys = Vec::with_capacity(batch.events.len());
        for e in &batch.events {
            let before = router.stats().crossing;
            let scope = router.route(e);
            let label = match scope {
                Scope::Namespace(_) => {
                    counters.namespace.fetch_add(1, Ordering::Relaxed);
                    "namespace"
                }
                Scope::Cluster => {
                    counters.cluster.fetch_add(1, Ordering::Relaxed);
                    "cluster"
                }
            };
            if router.stats().crossing > before {
                counters.crossing.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("kubetrail_kafka_events_crossing_total").increment(1);
            }
            metrics::counter!("kubetrail_kafka_events_routed_total", "scope" => label).increment(1);
            keys.push(family_key(&batch.cluster, &scope));
        }
        let mut wait = RETRY_MIN;
        loop {
            match producer.publish_keyed(&batch, |i, _| keys[i].clone()).await {
                Ok(()) => break,
                Err(_) if consumer.revoked() => {
                    // The next owner of the partition reads the batch again.
                    tracing::warn!(
                        partition,
                        "kafka: partition revoked while republishing failed"
                    );
                    done.finish().await;
                    return;
                }
                Err(e) => {
                    counters.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(partition, error = %e, "kafka: republishing into the family topic failed; retrying");
                    // Backoff between retries (not a synchronisation).
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(RETRY_MAX);
                }
            }
        }
        counters
            .events
            .fetch_add(batch.events.len() as u64, Ordering::Relaxed);
        received.ack.done();
    }
    done.finish().await;
}
