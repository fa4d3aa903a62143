//! [`KafkaConfig`]: the `kafka:` section of the config file, and the librdkafka settings
//! derived from it.

use std::fmt;
use std::time::Duration;

use rdkafka::ClientConfig;
use serde::Deserialize;

use kubetrail_pipeline::PipelineConfig;

/// Where the queue lives and how the producer and consumers use it.
///
/// ```yaml
/// kafka:
///   brokers: kafka-0.kafka:9092,kafka-1.kafka:9092
///   topic: kubetrail-audit
///   group: kubetrail
///   produce_timeout: 4s
///   lookback: 30m 30s
///   properties:            # passed to librdkafka as they are
///     security.protocol: SASL_SSL
///     sasl.mechanism: SCRAM-SHA-512
///     sasl.username: kubetrail
///     sasl.password: "…"
/// ```
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port[,host:port…]` (librdkafka `bootstrap.servers`).
    pub brokers: String,
    /// The topic audit events are written to and read from.
    pub topic: String,
    /// The consumer group of the `consume` processes.
    pub group: String,
    /// librdkafka properties passed through as they are (`security.protocol`, `sasl.*`,
    /// `ssl.*`, `session.timeout.ms`, `linger.ms` …), applied after kubetrail's defaults and
    /// before the settings kubetrail's guarantees depend on (`enable.idempotence`, `acks`,
    /// `enable.auto.commit`, `enable.auto.offset.store`, `group.id`), which cannot be
    /// overridden. In the config file, a map of names to scalars.
    #[serde(deserialize_with = "de_properties")]
    pub properties: Vec<(String, String)>,
    /// How long [`KafkaProducer::publish`](crate::KafkaProducer) waits for the brokers to
    /// acknowledge every message of a batch before it gives up with
    /// [`PublishError::Unavailable`](kubetrail_queue::PublishError) (librdkafka's
    /// `message.timeout.ms` too). Keep it below the webhook's publish timeout. Default 4 s.
    #[serde(with = "humantime_serde")]
    pub produce_timeout: Duration,
    /// How far back (in message time, i.e. acceptance time) a consumer re-reads a partition
    /// before its committed offset when it is assigned the partition, to rebuild the open
    /// families and the learned owner graph (see the crate documentation). At least the
    /// pipeline's `aggregate.window` + `aggregate.linger` ([`minimum_lookback`]); 0 disables
    /// the re-read. Default 30 min 30 s.
    #[serde(with = "humantime_serde")]
    pub lookback: Duration,
    /// The most messages (events) in one batch handed to a worker. Default 512.
    pub max_batch_events: usize,
    /// How often acknowledged offsets are committed. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// On revocation, how long a partition's worker may take to emit its open families and
    /// have its acknowledged spans exported before what is acknowledged is committed and the
    /// partition handed over anyway. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub revoke_timeout: Duration,
    /// How many bytes of messages a partition may hold waiting for its worker before it is
    /// paused (no more fetching until the worker caught up). Pausing drops what librdkafka
    /// prefetched for the partition, so it should hold a few batches. Default 4 MiB.
    pub max_buffered_bytes: usize,
    /// An event whose JSON is larger than this is published without its request and response
    /// bodies (annotated [`BODIES_DROPPED_ANNOTATION`](crate::BODIES_DROPPED_ANNOTATION)) so
    /// that it fits a Kafka message. Keep it below the topic's `max.message.bytes`. Default
    /// 900 000.
    pub max_event_bytes: usize,
    /// Route events by object family before the pipelines (see the crate documentation,
    /// "Repartitioning by family"): `consume` reads [`topic`](Self::topic) in the consumer
    /// group `<group>-route`, links, and republishes every event into the
    /// [family topic](Self::family_topic) keyed by its family's scope; its pipelines read
    /// that topic. `false`: the pipelines read `topic` directly (families with a
    /// cluster-scoped owner are then cut across partitions). Default `true`.
    pub repartition: bool,
    /// The family-keyed topic. Default (empty): `<topic>-families`. Create it with as many
    /// partitions as the pipelines should spread over.
    pub family_topic: String,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "localhost:9092".to_owned(),
            topic: "kubetrail-audit".to_owned(),
            group: "kubetrail".to_owned(),
            properties: Vec::new(),
            produce_timeout: Duration::from_secs(4),
            lookback: Duration::from_secs(30 * 60 + 30),
            max_batch_events: 512,
            commit_interval: Duration::from_secs(1),
            revoke_timeout: Duration::from_secs(10),
            max_buffered_bytes: 4 << 20,
            max_event_bytes: 900_000,
            repartition: true,
            family_topic: String::new(),
        }
    }
}

impl fmt::Debug for KafkaConfig {
    /// Property values are not shown: they may hold passwords (`sasl.password`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.properties.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("group", &self.group)
            .field("properties", &names)
            .field("produce_timeout", &self.produce_timeout)
            .field("lookback", &self.lookback)
            .field("max_batch_events", &self.max_batch_events)
            .field("commit_interval", &self.commit_interval)
            .field("revoke_timeout", &self.revoke_timeout)
            .field("max_buffered_bytes", &self.max_buffered_bytes)
            .field("max_event_bytes", &self.max_event_bytes)
            .field("repartition", &self.repartition)
            .field("family_topic", &self.family_topic)
            .finish()
    }
}

/// The smallest [`KafkaConfig::lookback`] that rebuilds every family still open when a
/// partition changes hands: the pipeline's `aggregate.window` + `aggregate.linger`.
pub fn minimum_lookback(pipeline: &PipelineConfig) -> Duration {
    pipeline
        .aggregate
        .window
        .saturating_add(pipeline.aggregate.linger)
}

/// Settings a user property may not change, with the value kubetrail needs.
const PRODUCER_ENFORCED: &[(&str, &str)] = &[("enable.idempotence", "true"), ("acks", "all")];
const CONSUMER_ENFORCED: &[(&str, &str)] = &[
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
    ("enable.partition.eof", "true"),
];

impl KafkaConfig {
    /// The family-keyed topic's name: [`family_topic`](Self::family_topic), or
    /// `<topic>-families`.
    pub fn family_topic_name(&self) -> String {
        if self.family_topic.trim().is_empty() {
            format!("{}-families", self.topic)
        } else {
            self.family_topic.clone()
        }
    }

    /// The settings of the repartitioning stage: reads [`topic`](Self::topic) in the group
    /// `<group>-route`.
    pub fn route_stage(&self) -> KafkaConfig {
        KafkaConfig {
            group: format!("{}-route", self.group),
            ..self.clone()
        }
    }

    /// The settings of the pipelines: with [`repartition`](Self::repartition) the family
    /// topic in `group`, else `topic` itself.
    pub fn pipeline_stage(&self) -> KafkaConfig {
        if !self.repartition {
            return self.clone();
        }
        KafkaConfig {
            topic: self.family_topic_name(),
            repartition: false,
            ..self.clone()
        }
    }

    /// The producer settings of the repartitioning stage: writes the family topic.
    pub fn family_producer(&self) -> KafkaConfig {
        KafkaConfig {
            topic: self.family_topic_name(),
            repartition: false,
            ..self.clone()
        }
    }

    /// Checks what librdkafka would not catch.
    pub(crate) fn validate(&self) -> Result<(), crate::Error> {
        let bad = |what: &str| Err(crate::Error::Config(what.to_owned()));
        if self.brokers.trim().is_empty() {
            return bad("kafka.brokers is empty");
        }
        if self.topic.trim().is_empty() {
            return bad("kafka.topic is empty");
        }
        if self.produce_timeout.is_zero() {
            return bad("kafka.produce_timeout must be more than 0");
        }
        if self.max_batch_events == 0 {
            return bad("kafka.max_batch_events must be at least 1");
        }
        // 0 would pause every partition on the first round and resume it on the next (nothing
        // waits), over and over, throwing away what librdkafka had fetched each time.
        if self.max_buffered_bytes == 0 {
            return bad("kafka.max_buffered_bytes must be at least 1");
        }
        if self.repartition && self.family_topic_name() == self.topic {
            return bad("kafka.family_topic must differ from kafka.topic");
        }
        Ok(())
    }

    fn base(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", "kubetrail");
        c
    }

    fn apply_user(&self, c: &mut ClientConfig, enforced: &[(&str, &str)], skip: &[&str]) {
        for (k, v) in &self.properties {
            if skip.contains(&k.as_str()) {
                continue;
            }
            if let Some((_, needed)) = enforced.iter().find(|(name, _)| *name == k.as_str()) {
                if v != needed {
                    tracing::warn!(
                        property = %k,
                        "kafka.properties: {k} is always {needed} in kubetrail; ignoring {v:?}"
                    );
                }
                continue;
            }
            c.set(k, v);
        }
        for (k, v) in enforced {
            c.set(*k, *v);
        }
    }

    /// The idempotent, acks=all producer's settings.
    pub(crate) fn producer_config(&self) -> ClientConfig {
        let mut c = self.base();
        let ms = self.produce_timeout.as_millis().clamp(1, i32::MAX as u128);
        c.set("message.timeout.ms", ms.to_string())
            .set("linger.ms", "5")
            .set("statistics.interval.ms", "0");
        self.apply_user(&mut c, PRODUCER_ENFORCED, &[]);
        c
    }

    /// The group consumer's settings.
    pub(crate) fn consumer_config(&self) -> ClientConfig {
        let mut c = self.base();
        c.set("group.id", &self.group)
            .set("auto.offset.reset", "earliest")
            // A crashed consumer's partitions move after the session timeout: 10 s (Kafka's
            // default is 45 s) keeps the stall short; heartbeats go every 3 s. Overridable
            // through `kafka.properties`.
            .set("session.timeout.ms", "10000")
            .set("statistics.interval.ms", "5000");
        self.apply_user(&mut c, CONSUMER_ENFORCED, &[]);
        c.set("group.id", &self.group);
        c
    }

    /// A consumer reading single messages of assigned partitions (the lookback's time
    /// probe). librdkafka assigns partitions only to a consumer with a `group.id`; the probe's
    /// group is never joined (no subscription) and never committed to.
    pub(crate) fn probe_config(&self) -> ClientConfig {
        let mut c = self.base();
        c.set("enable.partition.eof", "true")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("group.id", format!("{}.kubetrail-lookback", self.group))
            .set("client.id", "kubetrail-lookback")
            // Each read re-assigns: do not let a long-polling fetch at the end of the
            // partition hold up the next one.
            .set("fetch.wait.max.ms", "10");
        self.apply_user(
            &mut c,
            &[],
            &[
                "group.id",
                "group.instance.id",
                "enable.auto.commit",
                "enable.partition.eof",
                "statistics.interval.ms",
                "fetch.wait.max.ms",
            ],
        );
        c
    }

    /// The producer's queue capacity in messages (librdkafka `queue.buffering.max.messages`).
    pub(crate) fn producer_capacity(&self) -> usize {
        self.properties
            .iter()
            .find(|(k, _)| k == "queue.buffering.max.messages")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(100_000)
    }
}

/// Reads `properties` as a map of names to scalars (strings, numbers, booleans), keeping the
/// order of the file.
fn de_properties<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<(String, String)>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Bool(bool),
        Int(i64),
        Uint(u64),
        Float(f64),
        Text(String),
    }
    impl Scalar {
        fn into_string(self) -> String {
            match self {
                Scalar::Bool(b) => b.to_string(),
                Scalar::Int(i) => i.to_string(),
                Scalar::Uint(u) => u.to_string(),
                Scalar::Float(f) => f.to_string(),
                Scalar::Text(s) => s,
            }
        }
    }
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = Vec<(String, String)>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of librdkafka property names to values")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some((k, v)) = map.next_entry::<String, Scalar>()? {
                out.push((k, v.into_string()));
            }
            Ok(out)
        }
    }
    d.deserialize_map(Visitor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_config_section_with_defaults() {
        let c: KafkaConfig = serde_yaml::from_str(
            "brokers: k:9092\ntopic: audit\nproduce_timeout: 2s\nproperties:\n  security.protocol: SASL_SSL\n  session.timeout.ms: 10000\n  enable.ssl.certificate.verification: false\n",
        )
        .unwrap();
        assert_eq!(c.brokers, "k:9092");
        assert_eq!(c.topic, "audit");
        assert_eq!(c.group, "kubetrail");
        assert_eq!(c.produce_timeout, Duration::from_secs(2));
        assert_eq!(c.lookback, Duration::from_secs(1830));
        assert_eq!(
            c.properties,
            vec![
                ("security.protocol".into(), "SASL_SSL".into()),
                ("session.timeout.ms".into(), "10000".into()),
                ("enable.ssl.certificate.verification".into(), "false".into()),
            ]
        );
        assert!(c.repartition);
        assert_eq!(c.family_topic_name(), "audit-families");
        assert_eq!(c.route_stage().group, "kubetrail-route");
        assert_eq!(c.route_stage().topic, "audit");
        assert_eq!(c.pipeline_stage().topic, "audit-families");
        assert_eq!(c.pipeline_stage().group, "kubetrail");
        let direct: KafkaConfig =
            serde_yaml::from_str("repartition: false\nfamily_topic: f").unwrap();
        assert_eq!(direct.pipeline_stage().topic, "kubetrail-audit");
        assert_eq!(direct.family_topic_name(), "f");
        let same: KafkaConfig = serde_yaml::from_str("topic: a\nfamily_topic: a").unwrap();
        assert!(same.validate().is_err());
        let unbuffered = KafkaConfig {
            max_buffered_bytes: 0,
            ..KafkaConfig::default()
        };
        let e = unbuffered.validate().unwrap_err().to_string();
        assert!(e.contains("kafka.max_buffered_bytes"), "{e}");
        // The derived stages are valid whatever the family topic is called.
        let named: KafkaConfig = serde_yaml::from_str("topic: a\nfamily_topic: fam").unwrap();
        for derived in [
            named.route_stage(),
            named.pipeline_stage(),
            named.family_producer(),
        ] {
            assert!(derived.validate().is_ok(), "{derived:?}");
        }
        assert_eq!(named.pipeline_stage().topic, "fam");
        assert_eq!(named.family_producer().topic, "fam");
        assert!(serde_yaml::from_str::<KafkaConfig>("brokerz: x").is_err());
        assert_eq!(
            minimum_lookback(&PipelineConfig::default()),
            KafkaConfig::default().lookback
        );
    }

    #[test]
    fn guarantees_cannot_be_overridden_but_the_rest_can() {
        let c = KafkaConfig {
            properties: vec![
                ("acks".into(), "1".into()),
                ("enable.auto.commit".into(), "true".into()),
                ("session.timeout.ms".into(), "45000".into()),
                ("group.id".into(), "other".into()),
                ("sasl.password".into(), "secret".into()),
            ],
            ..KafkaConfig::default()
        };
        let p = c.producer_config();
        assert_eq!(p.get("acks"), Some("all"));
        assert_eq!(p.get("enable.idempotence"), Some("true"));
        assert_eq!(p.get("message.timeout.ms"), Some("4000"));
        let k = c.consumer_config();
        assert_eq!(k.get("enable.auto.commit"), Some("false"));
        assert_eq!(k.get("session.timeout.ms"), Some("45000"));
        assert_eq!(k.get("group.id"), Some("kubetrail"));
        assert_eq!(
            c.probe_config().get("group.id"),
            Some("kubetrail.kubetrail-lookback")
        );
        assert!(!format!("{c:?}").contains("secret"));
    }
}
