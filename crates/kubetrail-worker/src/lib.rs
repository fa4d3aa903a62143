//! The consumer worker: queue → [`Pipeline`] → exporter, for every run mode.
//!
//! `replay` feeds it from files, `serve` from the webhook through the embedded queue, and
//! `consume` from Kafka; the loop is the same. A batch is acknowledged to its queue only once
//! the spans it produced were delivered (the exporter's [`Delivery`](kubetrail_export::Delivery)
//! resolved), so a queue's capacity — and, with Kafka, its committed offsets — never run ahead
//! of what is safely exported.
//!
//! Live sources also move the pipeline's clock with wall time (`tick`), so a family that goes
//! quiet has its object spans emitted even when no further events arrive — but only while the
//! queue is [caught up](AuditConsumer::caught_up): a backlog is processed on its events' own
//! time. Replays do not tick: their clock is the events' own.
//!
//! Between the queue and the pipeline sits a [`Sequencer`]: events are released to the
//! pipeline in event-time order once the watermark (the slowest source's time minus the
//! lateness) has passed them, so several API servers' interleaved, skewed streams give the
//! spans of one merged stream (see `kubetrail_pipeline::watermark`). A batch's source is its
//! [`AuditBatch::source`](kubetrail_queue::AuditBatch) (webhook client, Kafka source header),
//! else its cluster.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod metric_names;
pub use metric_names::describe_metrics;
mod partitioned;
pub use partitioned::{PartitionedError, PartitionedReport, PartitionedWorker};

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use kubetrail_model::now_unix_nanos as wall_now;

use kubetrail_export::{ExporterClosed, ExporterHandle};
use kubetrail_model::ids::SpanId;
use kubetrail_model::{SpanRecord, UnixNanos};
use kubetrail_pipeline::watermark::{OrderConfig, OrderStats, Sequencer};
use kubetrail_pipeline::{Pipeline, PipelineStats};
use kubetrail_queue::{Ack, AuditConsumer, Received};
use tokio::sync::oneshot;

/// How the worker runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerConfig {
    /// Advance the pipeline's clock with wall time this often (live sources); `None` for
    /// replays, whose clock is the events' own.
    pub tick: Option<Duration>,
    /// Event-time ordering across sources: lateness, idle sources, far-ahead events.
    pub order: OrderConfig,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            tick: Some(Duration::from_secs(1)),
            order: OrderConfig::default(),
        }
    }
}

/// What a worker did, returned when it stops.
#[derive(Debug, Clone, Default)]
pub struct WorkerReport {
    /// Batches taken from the queue.
    pub batches: u64,
    /// The pipeline's counters.
    pub pipeline: PipelineStats,
    /// What ordering by event time did (late, far-ahead, reordered events).
    pub order: OrderStats,
    /// Spans not exported because they were delivered before a restart.
    pub suppressed: u64,
}

/// Called with the ids of spans once every sink delivered them (see
/// [`Worker::on_delivered`]).
pub type DeliveredHook = std::sync::Arc<dyn Fn(&[SpanId]) + Send + Sync>;

/// A batch taken from the queue whose events are not all released by the sequencer yet.
struct Pending {
    remaining: usize,
    ack: Ack,
}

/// Runs the pipeline over everything a consumer yields.
pub struct Worker<C> {
    consumer: C,
    pipeline: Pipeline,
    exporter: ExporterHandle,
    config: WorkerConfig,
    published: PipelineStats,
    sequencer: Sequencer,
    published_order: OrderStats,
    /// Batches still waiting for some of their events to be released, by tag.
    pending: BTreeMap<u64, Pending>,
    next_tag: u64,
    /// Batches all of whose events were released in the current round.
    completed: Vec<Ack>,
    /// Tags released in the current round (scratch).
    released: Vec<u64>,
    /// Resolves once every earlier round's spans were delivered (`true`) or the exporter
    /// stopped (`false`).
    chain: Option<oneshot::Receiver<bool>>,
    suppressed: HashSet<SpanId>,
    suppressed_count: u64,
    on_delivered: Option<DeliveredHook>,
    /// Labels of the gauges this worker sets (`partition` for one of several per-partition
    /// workers in one process, so that their gauges do not overwrite each other).
    gauge_labels: Vec<(&'static str, String)>,
}

async fn next_tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

impl<C: AuditConsumer> Worker<C> {
    /// A worker over `consumer`, exporting through `exporter`.
    pub fn new(
        consumer: C,
        pipeline: Pipeline,
        exporter: ExporterHandle,
        config: WorkerConfig,
    ) -> Self {
        Worker {
            sequencer: Sequencer::new(&config.order),
            consumer,
            pipeline,
            exporter,
            config,
            published: PipelineStats::default(),
            published_order: OrderStats::default(),
            pending: BTreeMap::new(),
            next_tag: 1,
            completed: Vec::new(),
            released: Vec::new(),
            chain: None,
            suppressed: HashSet::new(),
            suppressed_count: 0,
            on_delivered: None,
            gauge_labels: Vec::new(),
        }
    }

    /// Labels this worker's gauges (`kubetrail_open_families`, `kubetrail_open_objects`, …)
    /// with `partition`: one of several workers in one process, each with a pipeline of its
    /// own (a Kafka consumer's partitions). Without it the workers' gauges would overwrite each
    /// other; with it, `sum by (pod)` adds them up. Counters need no label: the workers' deltas
    /// add up. The gauges go to 0 when the worker finishes (its families are emitted).
    pub fn gauge_partition(mut self, partition: i32) -> Self {
        self.gauge_labels.push(("partition", partition.to_string()));
        self
    }

    /// Spans with these ids are not exported: they were delivered before a restart (the
    /// durable log recorded them) and are produced again only because the retained history
    /// is processed again to rebuild the pipeline's state.
    pub fn suppress(mut self, ids: HashSet<SpanId>) -> Self {
        self.suppressed = ids;
        self
    }

    /// Calls `hook` with the ids of the spans of every submission once it was delivered (so a
    /// durable log can record what need not be exported again after a restart).
    pub fn on_delivered(mut self, hook: DeliveredHook) -> Self {
        self.on_delivered = Some(hook);
        self
    }

    /// Processes batches until the queue is closed and drained, or `stop` resolves; then emits
    /// every open family and waits until the exporter has delivered everything.
    ///
    /// A batch is acknowledged once **all its events were released** by the sequencer (or
    /// dropped by it, counted) and the spans of every round up to the one that released its
    /// last event were delivered: events the watermark still holds are not yet safe.
    pub async fn run(
        mut self,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<WorkerReport, ExporterClosed> {
        let mut report = WorkerReport::default();
        let mut out: Vec<SpanRecord> = Vec::with_capacity(1024);
        let mut ticker = self.config.tick.map(|t| {
            let mut i = tokio::time::interval(t);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        let live = self.config.tick.is_some();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                biased;
                () = &mut stop => break,
                received = self.consumer.recv() => {
                    let Some(Received { batch, mut ack }) = received else { break };
                    report.batches += 1;
                    // Wall time only while caught up: a backlog is ordered on its own time.
                    let now = (live && self.consumer.caught_up()).then(wall_now);
                    let tag = self.next_tag;
                    self.next_tag += 1;
                    let remaining = batch.events.len();
                    let source = batch.source.as_deref().unwrap_or(&batch.cluster);
                    for event in batch.events {
                        self.sequencer.push_tagged(source, &batch.cluster, event, now, tag);
                    }
                    // The events are the sequencer's now (bounded by `order.max_held`): the
                    // queue gets the batch's room back, or a queue full of batches whose last
                    // events wait for later ones could never take those (replay would hang).
                    // The acknowledgement still waits for the batch's own spans.
                    ack.release_room();
                    if remaining == 0 {
                        self.completed.push(ack);
                    } else {
                        self.pending.insert(tag, Pending { remaining, ack });
                    }
                    self.release(now, &mut out);
                    self.submit(&mut out).await?;
                    self.publish_metrics();
                }
                () = next_tick(&mut ticker) => {
                    // Behind (a backlog, a re-read after a restart): the events' own time
                    // drives the clock, or families would be cut before their later events.
                    if !self.consumer.caught_up() {
                        continue;
                    }
                    self.release(Some(wall_now()), &mut out);
                    self.submit(&mut out).await?;
                    self.publish_metrics();
                }
            }
        }
        let pipeline = &mut self.pipeline;
        let released = &mut self.released;
        self.sequencer.drain(|r| {
            released.push(r.tag);
            pipeline.push_marked(&r.cluster, r.event, r.late, &mut out)
        });
        self.settle_released();
        self.pipeline.finish(&mut out);
        // Whatever is still pending can never be released now (nothing is held any more).
        let rest = std::mem::take(&mut self.pending);
        self.completed.extend(rest.into_values().map(|p| p.ack));
        self.submit(&mut out).await?;
        self.exporter.flush().await?;
        if let Some(chain) = self.chain.take() {
            let _ = chain.await;
        }
        self.publish_metrics();
        report.pipeline = self.pipeline.stats();
        report.order = self.sequencer.stats().clone();
        report.suppressed = self.suppressed_count;
        Ok(report)
    }

    /// Hands the pipeline what the watermark has passed, then moves its clock to it.
    fn release(&mut self, now: Option<UnixNanos>, out: &mut Vec<SpanRecord>) {
        let pipeline = &mut self.pipeline;
        let released = &mut self.released;
        let watermark = self.sequencer.release(now, |r| {
            released.push(r.tag);
            pipeline.push_marked(&r.cluster, r.event, r.late, out)
        });
        if let Some(w) = watermark {
            self.pipeline.advance(w, out);
        }
        self.settle_released();
    }

    /// Counts the released (and dropped) events against their batches; a batch with none
    /// left joins this round's acknowledgements.
    fn settle_released(&mut self) {
        let mut tags = std::mem::take(&mut self.released);
        tags.extend(self.sequencer.take_dropped());
        for tag in tags.drain(..) {
            if let Some(p) = self.pending.get_mut(&tag) {
                p.remaining = p.remaining.saturating_sub(1);
                if p.remaining == 0
                    && let Some(p) = self.pending.remove(&tag)
                {
                    self.completed.push(p.ack);
                }
            }
        }
        self.released = tags;
    }

    /// Submits this round's spans and acknowledges the batches completed in it once they and
    /// every earlier round's spans were delivered.
    async fn submit(&mut self, out: &mut Vec<SpanRecord>) -> Result<(), ExporterClosed> {
        if !self.suppressed.is_empty() {
            let before = out.len();
            let suppressed = &self.suppressed;
            out.retain(|s| !suppressed.contains(&s.span_id));
            let n = (before - out.len()) as u64;
            if n > 0 {
                self.suppressed_count += n;
                metrics::counter!("kubetrail_spans_suppressed_total").increment(n);
            }
        }
        if out.is_empty() && self.completed.is_empty() {
            return Ok(());
        }
        let ids: Option<Vec<SpanId>> = self
            .on_delivered
            .as_ref()
            .filter(|_| !out.is_empty())
            .map(|_| out.iter().map(|s| s.span_id).collect());
        let delivery = self.exporter.submit(std::mem::take(out)).await?;
        let acks = std::mem::take(&mut self.completed);
        let before = self.chain.take();
        let (done, chain) = oneshot::channel();
        self.chain = Some(chain);
        let hook = self.on_delivered.clone();
        tokio::spawn(async move {
            // Spans the exporter dropped on purpose were counted and logged there:
            // acknowledged, so they are not redelivered forever. If the exporter stopped,
            // nothing is acknowledged: a durable queue delivers the batch again after the
            // restart.
            let own = match delivery.wait().await {
                Ok(()) => {
                    if let (Some(hook), Some(ids)) = (hook, ids) {
                        hook(&ids);
                    }
                    true
                }
                Err(e @ kubetrail_export::DeliveryError::Dropped { .. }) => {
                    tracing::warn!(error = %e, "spans of a batch were not delivered");
                    true
                }
                Err(e) => {
                    tracing::error!(error = %e, "the exporter stopped: the batch stays unacknowledged");
                    false
                }
            };
            let earlier = match before {
                Some(rx) => rx.await.unwrap_or(false),
                None => true,
            };
            let ok = own && earlier;
            if ok {
                for ack in acks {
                    ack.done();
                }
            } else {
                drop(acks);
            }
            let _ = done.send(ok);
        });
        Ok(())
    }

    /// Publishes the pipeline's counters to the metrics recorder (as deltas, so the hot path
    /// itself records nothing).
    fn publish_metrics(&mut self) {
        let now = self.pipeline.stats();
        let prev = &self.published;
        let inc = |name: &'static str, a: u64, b: u64| {
            if a > b {
                metrics::counter!(name).increment(a - b);
            }
        };
        inc(
            "kubetrail_events_processed_total",
            now.events_in,
            prev.events_in,
        );
        inc(
            "kubetrail_requests_duplicate_total",
            now.duplicates,
            prev.duplicates,
        );
        inc(
            "kubetrail_requests_incomplete_total",
            now.incomplete,
            prev.incomplete,
        );
        inc(
            "kubetrail_requests_untimed_total",
            now.untimed,
            prev.untimed,
        );
        inc(
            "kubetrail_spans_request_total",
            now.aggregate.request_spans,
            prev.aggregate.request_spans,
        );
        inc(
            "kubetrail_spans_object_total",
            now.aggregate.object_spans,
            prev.aggregate.object_spans,
        );
        inc(
            "kubetrail_families_emitted_total",
            now.aggregate.families_emitted,
            prev.aggregate.families_emitted,
        );
        inc(
            "kubetrail_families_forced_total",
            now.aggregate.families_forced,
            prev.aggregate.families_forced,
        );
        for (reason, n) in &now.filtered {
            let before = prev.filtered.get(reason).copied().unwrap_or(0);
            if *n > before {
                metrics::counter!("kubetrail_events_filtered_total", "reason" => *reason)
                    .increment(n - before);
            }
        }
        let labels = &self.gauge_labels;
        let (graph, families, objects, pending) = self.pipeline.sizes();
        metrics::gauge!("kubetrail_linker_objects", labels).set(graph as f64);
        metrics::gauge!("kubetrail_open_families", labels).set(families as f64);
        metrics::gauge!("kubetrail_open_objects", labels).set(objects as f64);
        metrics::gauge!("kubetrail_pending_requests", labels).set(pending as f64);
        let order = self.sequencer.stats().clone();
        let prev = &self.published_order;
        inc("kubetrail_events_late_total", order.late, prev.late);
        inc("kubetrail_events_ahead_total", order.ahead, prev.ahead);
        inc(
            "kubetrail_events_ahead_dropped_total",
            order.ahead_dropped,
            prev.ahead_dropped,
        );
        inc(
            "kubetrail_events_reordered_total",
            order.reordered,
            prev.reordered,
        );
        inc(
            "kubetrail_events_order_forced_total",
            order.forced,
            prev.forced,
        );
        inc(
            "kubetrail_sources_idle_total",
            order.idle_sources,
            prev.idle_sources,
        );
        metrics::gauge!("kubetrail_order_held_events", labels).set(self.sequencer.held() as f64);
        metrics::gauge!("kubetrail_order_sources", labels).set(self.sequencer.sources() as f64);
        if let Some(w) = self.sequencer.floor() {
            metrics::gauge!("kubetrail_watermark_seconds", labels).set(w as f64 / 1e9);
        }
        self.published_order = order;
        self.published = now;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use kubetrail_export::{ExportError, Exporter, ExporterConfig, SpanSink};
    use kubetrail_queue::AuditBatch;
    use tokio::sync::{Semaphore, mpsc};

    use super::*;

    /// A sink that holds each batch until the test releases it.
    struct GatedSink {
        gate: Arc<Semaphore>,
        got: mpsc::UnboundedSender<usize>,
        spans: Arc<Mutex<Vec<SpanRecord>>>,
    }

    #[async_trait::async_trait]
    impl SpanSink for GatedSink {
        async fn export(&mut self, batch: &[SpanRecord]) -> Result<(), ExportError> {
            // Recorded and signalled before waiting at the gate: the exporter *has* them;
            // delivery completes only when the gate opens.
            self.spans.lock().unwrap().extend_from_slice(batch);
            let _ = self.got.send(batch.len());
            self.gate
                .acquire()
                .await
                .map_err(|_| ExportError::permanent("gated", "closed"))?
                .forget();
            Ok(())
        }
        async fn finish(&mut self) -> Result<(), ExportError> {
            Ok(())
        }
        fn name(&self) -> &'static str {
            "gated"
        }
    }

    fn event(t: &str) -> kubetrail_model::AuditEvent {
        serde_json::from_str(&format!(
            r#"{{"level":"Metadata","auditID":"{t}","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/n/configmaps/c","verb":"update","user":{{"username":"u"}},"objectRef":{{"resource":"configmaps","namespace":"n","name":"c"}},"responseStatus":{{"code":200}},"requestReceivedTimestamp":"{t}","stageTimestamp":"{t}"}}"#
        ))
        .unwrap()
    }

    #[tokio::test]
    async fn per_partition_workers_label_their_gauges_instead_of_overwriting_them() {
        let (exporter, _task) = Exporter::spawn(Vec::new(), ExporterConfig::default());
        let worker = |partition: i32, events: usize| {
            let (_producer, consumer) = kubetrail_queue::embedded::channel(1);
            let mut w = Worker::new(
                consumer,
                Pipeline::new(Default::default()),
                exporter.clone(),
                WorkerConfig::default(),
            )
            .gauge_partition(partition);
            let mut out = Vec::new();
            for i in 0..events {
                // One object per event (a family each), held open: linger has not passed.
                let mut e = event(&format!("2024-05-01T10:00:0{i}Z"));
                if let Some(r) = e.object_ref.as_mut() {
                    r.name = Some(format!("c{i}"));
                }
                w.pipeline.push("c1", e, &mut out);
            }
            w
        };
        let (mut one, mut two) = (worker(1, 1), worker(2, 3));
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            one.publish_metrics();
            two.publish_metrics();
        });
        let text = handle.render();
        for want in [
            r#"kubetrail_open_families{partition="1"} 1"#,
            r#"kubetrail_open_families{partition="2"} 3"#,
            r#"kubetrail_open_objects{partition="1"} 1"#,
            r#"kubetrail_open_objects{partition="2"} 3"#,
        ] {
            assert!(text.lines().any(|l| l == want), "{want} not in:\n{text}");
        }
        // The counters add up across the workers.
        assert!(
            text.lines()
                .any(|l| l == "kubetrail_events_processed_total 4"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn the_queue_room_comes_back_once_the_worker_took_a_batch_over() {
        // The acknowledgement waits for the spans (see the lateness test below); the queue's
        // room must not, or a full queue of batches whose events the sequencer holds could
        // never take the later events that release them.
        let gate = Arc::new(Semaphore::new(0));
        let (got_tx, mut got) = mpsc::unbounded_channel();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = GatedSink {
            gate: gate.clone(),
            got: got_tx,
            spans: spans.clone(),
        };
        let config = ExporterConfig {
            max_batch_delay: Duration::from_millis(1),
            ..Default::default()
        };
        let (exporter, exporter_task) = Exporter::spawn(vec![Box::new(sink)], config);
        // Capacity for exactly one event.
        let (producer, consumer) = kubetrail_queue::embedded::channel(1);
        let worker = Worker::new(
            consumer,
            Pipeline::new(Default::default()),
            exporter,
            WorkerConfig {
                tick: None,
                // No lateness: each event is released to the pipeline as it arrives, so its
                // span reaches the exporter before the next batch is published.
                order: OrderConfig {
                    lateness: Duration::ZERO,
                    ..Default::default()
                },
            },
        );
        let worker = tokio::spawn(worker.run(std::future::pending()));
        let batch = |t: &str| AuditBatch {
            cluster: "c".into(),
            events: vec![event(t)],
            ..Default::default()
        };
        use kubetrail_queue::AuditProducer;
        producer
            .publish(batch("2024-01-01T00:00:00Z"))
            .await
            .unwrap();
        // The exporter has the request span, not yet delivered: the worker took the batch
        // over, so its room is back and the next batch is accepted at once.
        assert_eq!(got.recv().await, Some(1));
        producer
            .publish(batch("2024-01-01T00:00:01Z"))
            .await
            .expect("the room came back before delivery");
        gate.add_permits(1);
        gate.add_permits(100);
        producer.close();
        drop(producer);
        let report = worker.await.unwrap().unwrap();
        assert_eq!(report.batches, 2);
        drop(exporter_task.await.unwrap());
        let spans = spans.lock().unwrap();
        assert_eq!(
            spans
                .iter()
                .filter(|s| s.kind == kubetrail_model::SpanKind::Request)
                .count(),
            2
        );
        assert_eq!(
            spans
                .iter()
                .filter(|s| s.kind == kubetrail_model::SpanKind::Object)
                .count(),
            1,
            "finish emits the open family"
        );
    }

    /// A consumer fed by the test, whose acknowledgements say when they ran.
    struct ChannelConsumer {
        rx: mpsc::UnboundedReceiver<(AuditBatch, kubetrail_queue::Ack)>,
    }

    #[async_trait::async_trait]
    impl AuditConsumer for ChannelConsumer {
        async fn recv(&mut self) -> Option<Received> {
            let (batch, ack) = self.rx.recv().await?;
            Some(Received { batch, ack })
        }
    }

    /// With a lateness, the sequencer holds a batch's events after the batch was received:
    /// the batch is acknowledged only once they were released and their spans delivered —
    /// not when the spans of whatever the sequencer released at the time were.
    #[tokio::test]
    async fn with_lateness_a_batch_is_acknowledged_only_after_its_own_events_are_exported() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let gate = Arc::new(Semaphore::new(0));
        let (got_tx, mut got) = mpsc::unbounded_channel();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = GatedSink {
            gate: gate.clone(),
            got: got_tx,
            spans: spans.clone(),
        };
        let config = ExporterConfig {
            max_batch_delay: Duration::from_millis(1),
            ..Default::default()
        };
        let (exporter, exporter_task) = Exporter::spawn(vec![Box::new(sink)], config);
        let (tx, rx) = mpsc::unbounded_channel();
        let worker = Worker::new(
            ChannelConsumer { rx },
            Pipeline::new(Default::default()),
            exporter,
            WorkerConfig {
                tick: None,
                order: OrderConfig {
                    lateness: Duration::from_secs(5),
                    ..Default::default()
                },
            },
        );
        let worker = tokio::spawn(worker.run(std::future::pending()));
        // Spans delivered (past the gate) when each acknowledgement ran.
        let delivered = Arc::new(AtomicUsize::new(0));
        let (acked_tx, mut acked) = mpsc::unbounded_channel();
        let send = |name: &'static str, t: &str| {
            let (delivered, acked_tx) = (delivered.clone(), acked_tx.clone());
            let batch = AuditBatch {
                cluster: "c".into(),
                events: vec![event(t)],
                ..Default::default()
            };
            let ack = kubetrail_queue::Ack::explicit(move || {
                let _ = acked_tx.send((name, delivered.load(Ordering::SeqCst)));
            });
            tx.send((batch, ack)).unwrap();
        };
        let open = |n: usize| {
            delivered.fetch_add(n, Ordering::SeqCst);
            gate.add_permits(n);
        };
        // A at 0 s is held (watermark −5 s); B at 10 s moves the watermark to 5 s: A's
        // event is released, B's is held.
        send("A", "2024-01-01T00:00:00Z");
        send("B", "2024-01-01T00:00:10Z");
        assert_eq!(got.recv().await, Some(1), "A's request span");
        open(1);
        assert_eq!(
            acked.recv().await,
            Some(("A", 1)),
            "A once its span is delivered"
        );
        // B's event is released only by C's time; B's acknowledgement waits for its span.
        send("C", "2024-01-01T00:00:20Z");
        assert_eq!(got.recv().await, Some(1), "B's request span");
        open(1);
        assert_eq!(
            acked.recv().await,
            Some(("B", 2)),
            "B only after its own span was delivered"
        );
        // End of input: C's event is released by the drain; the family is emitted.
        drop(tx);
        open(100);
        let (name, at) = acked.recv().await.unwrap();
        assert_eq!(name, "C");
        assert!(at >= 3, "C after its span: {at}");
        let report = worker.await.unwrap().unwrap();
        assert_eq!(report.batches, 3);
        drop(exporter_task.await.unwrap());
        let spans = spans.lock().unwrap();
        assert_eq!(
            spans
                .iter()
                .filter(|s| s.kind == kubetrail_model::SpanKind::Request)
                .count(),
            3
        );
    }

    #[tokio::test(start_paused = true)]
    async fn wall_clock_ticks_emit_quiet_families_without_new_events() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Semaphore::new(1000));
        let sink = GatedSink {
            gate,
            got: tx,
            spans: spans.clone(),
        };
        let config = ExporterConfig {
            max_batch_delay: Duration::from_millis(1),
            ..Default::default()
        };
        let (exporter, _task) = Exporter::spawn(vec![Box::new(sink)], config);
        let (producer, consumer) = kubetrail_queue::embedded::channel(100);
        // An event from long ago (1970): the first wall-clock tick is far past its linger.
        // No lag allowance: the 1970 source is not waited for once wall time moves on.
        let worker = Worker::new(
            consumer,
            Pipeline::new(Default::default()),
            exporter,
            WorkerConfig {
                order: OrderConfig {
                    max_lag: Duration::ZERO,
                    ..Default::default()
                },
                ..Default::default()
            },
        );
        let _worker = tokio::spawn(worker.run(std::future::pending()));
        use kubetrail_queue::AuditProducer;
        producer
            .publish(AuditBatch {
                cluster: "c".into(),
                events: vec![event("1970-01-01T00:00:01Z")],
                ..Default::default()
            })
            .await
            .unwrap();
        // Request span first, then — with no further event — the object span from a tick.
        let mut total = 0;
        while total < 2 {
            total += rx.recv().await.unwrap();
        }
        let spans = spans.lock().unwrap();
        assert!(
            spans
                .iter()
                .any(|s| s.kind == kubetrail_model::SpanKind::Object)
        );
    }
}
