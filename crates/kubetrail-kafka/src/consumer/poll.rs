//! The polling thread of one consumer ([`Poller`]) and its loop.
//!
//! librdkafka's consumer API blocks and runs the rebalance and commit callbacks on the thread
//! that polls, so one OS thread owns the client: each round it hands batches over (and
//! pauses or resumes partitions), commits every `commit_interval` when an acknowledgement
//! moved something, then drains what is available now into batches. Stopping commits what
//! is acknowledged, gives the partitions up (the revocation) and ends every channel.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError as RdError;
use tokio::sync::oneshot;

use super::context::ConsumerCtx;
use super::shared::ConsumerShared;
use super::{Routing, lock};
use crate::{Error, KafkaConfig};

/// How long one poll waits for a message; also the latency of stop and commits.
const POLL_TIMEOUT: Duration = Duration::from_millis(50);
/// How long one poll waits while batches wait for room in a channel.
const POLL_TIMEOUT_BACKLOG: Duration = Duration::from_millis(2);

/// The polling thread of one consumer, and how to stop it.
pub(crate) struct Poller {
    pub(crate) shared: Arc<ConsumerShared>,
    stop: Arc<AtomicBool>,
    closed: Option<oneshot::Receiver<()>>,
    close_timeout: Duration,
}

impl Poller {
    /// Creates the consumer, subscribes to the topic and starts the polling thread.
    pub(crate) fn start(config: &KafkaConfig, routing: Routing) -> Result<Poller, Error> {
        config.validate()?;
        let shared = Arc::new(ConsumerShared::new(config.topic.clone()));
        let ctx = ConsumerCtx::new(config.clone(), shared.clone(), routing);
        let consumer: BaseConsumer<ConsumerCtx> = config
            .consumer_config()
            .set_log_level(crate::librdkafka_log_level())
            .create_with_context(ctx)
            .map_err(|source| Error::Client {
                what: "consumer",
                brokers: config.brokers.clone(),
                source,
            })?;
        consumer
            .subscribe(&[config.topic.as_str()])
            .map_err(|source| Error::Subscribe {
                topic: config.topic.clone(),
                source,
            })?;
        let stop = Arc::new(AtomicBool::new(false));
        let (closed_tx, closed) = oneshot::channel();
        let commit_interval = config.commit_interval;
        let max_batch = config.max_batch_events;
        std::thread::Builder::new()
            .name("kubetrail-kafka-poll".to_owned())
            .spawn({
                let stop = stop.clone();
                move || poll_loop(consumer, &stop, commit_interval, max_batch, closed_tx)
            })
            .map_err(Error::Thread)?;
        Ok(Poller {
            shared,
            stop,
            closed: Some(closed),
            close_timeout: config
                .revoke_timeout
                .saturating_add(Duration::from_secs(15)),
        })
    }

    /// Starts closing: commit what is acknowledged, give up the partitions (revocation:
    /// per-partition workers finish), leave the group.
    pub(crate) fn begin_close(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Closes and waits until the consumer left the group (bounded).
    pub(crate) async fn close(&mut self) {
        self.begin_close();
        if let Some(closed) = self.closed.take()
            && tokio::time::timeout(self.close_timeout, closed)
                .await
                .is_err()
        {
            tracing::warn!("kafka: the consumer did not close in time");
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        // The thread commits what is acknowledged and leaves the group by itself.
        self.begin_close();
    }
}

/// The most messages (and errors) one round takes from librdkafka before handing batches
/// over again: 8 batches' worth, at least 64.
fn drain_limit(max_batch_events: usize) -> usize {
    max_batch_events.saturating_mul(8).max(64)
}

fn poll_loop(
    consumer: BaseConsumer<ConsumerCtx>,
    stop: &AtomicBool,
    commit_interval: Duration,
    max_batch: usize,
    closed: oneshot::Sender<()>,
) {
    let ctx = consumer.context().clone();
    let mut last_commit = Instant::now();
    let drain_limit = drain_limit(max_batch);
    while !stop.load(Ordering::Acquire) {
        let backlog = ctx.pump(&consumer);
        if ctx.shared.commit_dirty.load(Ordering::Acquire)
            && last_commit.elapsed() >= commit_interval
        {
            ctx.commit_assigned(&consumer, CommitMode::Sync);
            last_commit = Instant::now();
        }
        let mut next = consumer.poll(if backlog {
            POLL_TIMEOUT_BACKLOG
        } else {
            POLL_TIMEOUT
        });
        let mut taken = 0;
        while let Some(result) = next {
            match result {
                Ok(m) => ctx.absorb(&m),
                Err(RdError::PartitionEOF(p)) => ctx.eof(p),
                Err(e @ RdError::MessageConsumptionFatal(_)) => {
                    tracing::error!(error = %e, "kafka consumer: fatal error");
                    *lock(&ctx.shared.fatal) = Some(e.to_string());
                    stop.store(true, Ordering::Release);
                    break;
                }
                Err(e) => ctx.consumer_error(&e),
            }
            taken += 1;
            if taken >= drain_limit {
                break;
            }
            // Only what is already here: a batch is what is available now.
            next = consumer.poll(Duration::ZERO);
        }
    }
    // Closing: commit what is acknowledged, then close (the revocation in there lets
    // per-partition workers finish and commits again), then end every channel.
    ctx.commit_assigned(&consumer, CommitMode::Sync);
    drop(consumer);
    ctx.close_all();
    ctx.shared.closed.store(true, Ordering::Release);
    tracing::info!(topic = %ctx.config.topic, "kafka: consumer closed");
    let _ = closed.send(());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_drains_eight_batches_and_at_least_64_messages() {
        assert_eq!(drain_limit(512), 4096);
        assert_eq!(drain_limit(8), 64);
        assert_eq!(drain_limit(1), 64);
        assert_eq!(drain_limit(usize::MAX), usize::MAX, "saturates");
    }
}
