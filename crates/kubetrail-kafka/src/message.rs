//! The message format: one Kafka message per audit event (see the crate documentation).

use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::{Message, Timestamp};

use kubetrail_model::{AuditEvent, UnixNanos};

/// The header naming the format version of a message's value.
pub const HEADER_FORMAT: &str = "kubetrail-format";
/// The header holding the cluster the event came from.
pub const HEADER_CLUSTER: &str = "kubetrail-cluster";
/// The header holding when the batch was accepted, Unix nanoseconds in decimal.
pub const HEADER_RECEIVED_AT: &str = "kubetrail-received-at";
/// The header holding who sent the batch (the webhook client's address), when known.
pub const HEADER_SOURCE: &str = "kubetrail-source";
/// The format version written, and the only one read: the value is the audit event's JSON
/// (`audit.k8s.io/v1` `Event`, as [`AuditEvent`] serializes it).
pub const FORMAT_VERSION: &str = "1";
/// Annotation added to an event published without its request and response bodies because
/// it was larger than [`KafkaConfig::max_event_bytes`](crate::KafkaConfig::max_event_bytes).
pub const BODIES_DROPPED_ANNOTATION: &str = "kubetrail.io/bodies-dropped";

/// The message key of `event` from `cluster`: `cluster + "/" + namespace` (`cluster + "/"` for
/// cluster-scoped objects and non-resource requests), so everything an object family needs —
/// a Deployment, its ReplicaSets, their Pods and the Kubernetes Events about them share a
/// namespace — lands on one partition, in order.
pub fn partition_key(cluster: &str, event: &AuditEvent) -> String {
    let namespace = event
        .object_ref
        .as_ref()
        .and_then(|r| r.namespace.as_deref())
        .unwrap_or("");
    let mut key = String::with_capacity(cluster.len() + 1 + namespace.len());
    key.push_str(cluster);
    key.push('/');
    key.push_str(namespace);
    key
}

/// The value of `event`: its JSON; without its bodies when that is larger than `max_bytes`.
/// Returns the value and whether the bodies were dropped.
pub(crate) fn encode_event(
    event: &AuditEvent,
    max_bytes: usize,
) -> Result<(Vec<u8>, bool), serde_json::Error> {
    let value = serde_json::to_vec(event)?;
    if value.len() <= max_bytes
        || (event.request_object.is_none() && event.response_object.is_none())
    {
        return Ok((value, false));
    }
    let mut slim = event.clone();
    slim.request_object = None;
    slim.response_object = None;
    slim.annotations.insert(
        BODIES_DROPPED_ANNOTATION.to_owned(),
        format!(
            "the event's {} bytes exceeded the Kafka queue's limit of {max_bytes}",
            value.len()
        ),
    );
    Ok((serde_json::to_vec(&slim)?, true))
}

/// The headers of every message of a batch.
pub(crate) fn headers(cluster: &str, received_at: UnixNanos, source: Option<&str>) -> OwnedHeaders {
    let received_at = received_at.to_string();
    let mut h = OwnedHeaders::new_with_capacity(4)
        .insert(Header {
            key: HEADER_FORMAT,
            value: Some(FORMAT_VERSION),
        })
        .insert(Header {
            key: HEADER_CLUSTER,
            value: Some(cluster),
        })
        .insert(Header {
            key: HEADER_RECEIVED_AT,
            value: Some(received_at.as_str()),
        });
    if let Some(source) = source {
        h = h.insert(Header {
            key: HEADER_SOURCE,
            value: Some(source),
        });
    }
    h
}

/// A consumed message, copied out of librdkafka's buffer, headers read but value not parsed
/// (that happens on the worker's task, not on the polling thread).
#[derive(Debug, Clone)]
pub(crate) struct RawMessage {
    pub offset: i64,
    /// Message timestamp, Unix milliseconds.
    pub timestamp_ms: Option<i64>,
    pub format: Option<String>,
    pub cluster: Option<String>,
    pub received_at: Option<UnixNanos>,
    pub source: Option<String>,
    pub value: Vec<u8>,
}

fn text(v: Option<&[u8]>) -> Option<String> {
    v.map(|b| String::from_utf8_lossy(b).into_owned())
}

impl RawMessage {
    pub(crate) fn from_kafka(m: &BorrowedMessage<'_>) -> RawMessage {
        let mut raw = RawMessage {
            offset: m.offset(),
            timestamp_ms: match m.timestamp() {
                Timestamp::NotAvailable => None,
                Timestamp::CreateTime(t) | Timestamp::LogAppendTime(t) => Some(t),
            },
            format: None,
            cluster: None,
            received_at: None,
            source: None,
            value: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        };
        if let Some(headers) = m.headers() {
            for h in headers.iter() {
                match h.key {
                    HEADER_FORMAT => raw.format = text(h.value),
                    HEADER_CLUSTER => raw.cluster = text(h.value),
                    HEADER_RECEIVED_AT => {
                        raw.received_at = text(h.value).and_then(|t| t.trim().parse().ok());
                    }
                    HEADER_SOURCE => raw.source = text(h.value),
                    _ => {}
                }
            }
        }
        raw
    }

    /// The audit event, or why the message is not one.
    pub(crate) fn decode(&self) -> Result<AuditEvent, String> {
        match self.format.as_deref() {
            Some(FORMAT_VERSION) => {}
            Some(other) => return Err(format!("unknown {HEADER_FORMAT} version {other:?}")),
            None => return Err(format!("no {HEADER_FORMAT} header")),
        }
        if self.cluster.is_none() {
            return Err(format!("no {HEADER_CLUSTER} header"));
        }
        serde_json::from_slice(&self.value).map_err(|e| format!("not an audit event: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(json: &str) -> AuditEvent {
        serde_json::from_str(json).unwrap()
    }

    const POD: &str = r#"{"level":"RequestResponse","auditID":"a1","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/shop/pods","verb":"create","user":{"username":"u"},"objectRef":{"resource":"pods","namespace":"shop","name":"p","apiVersion":"v1"},"requestObject":{"kind":"Pod","data":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"},"stageTimestamp":"2024-05-01T10:00:00.123456Z"}"#;

    #[test]
    fn keys_group_a_namespace_and_the_cluster_scope() {
        assert_eq!(partition_key("prod", &event(POD)), "prod/shop");
        let node = r#"{"level":"Metadata","auditID":"a2","stage":"ResponseComplete","requestURI":"/api/v1/nodes/n1","verb":"patch","user":{},"objectRef":{"resource":"nodes","name":"n1"}}"#;
        assert_eq!(partition_key("prod", &event(node)), "prod/");
        let healthz = r#"{"level":"Metadata","auditID":"a3","stage":"ResponseComplete","requestURI":"/healthz","verb":"get","user":{}}"#;
        assert_eq!(partition_key("", &event(healthz)), "/");
    }

    #[test]
    fn values_round_trip_and_oversized_bodies_are_dropped() {
        let e = event(POD);
        let (v, dropped) = encode_event(&e, 1 << 20).unwrap();
        assert!(!dropped);
        let raw = RawMessage {
            offset: 0,
            timestamp_ms: None,
            format: Some("1".into()),
            cluster: Some("c".into()),
            received_at: None,
            source: None,
            value: v,
        };
        let back = raw.decode().unwrap();
        assert_eq!(back.audit_id, "a1");
        assert_eq!(back.stage_timestamp, e.stage_timestamp);
        assert!(back.request_object.is_some());

        let (v, dropped) = encode_event(&e, 100).unwrap();
        assert!(dropped);
        let slim: AuditEvent = serde_json::from_slice(&v).unwrap();
        assert!(slim.request_object.is_none());
        assert!(slim.annotations[BODIES_DROPPED_ANNOTATION].contains("exceeded"));

        let bad = |format: Option<&str>, cluster: Option<&str>, value: &[u8]| RawMessage {
            offset: 7,
            timestamp_ms: None,
            format: format.map(str::to_owned),
            cluster: cluster.map(str::to_owned),
            received_at: None,
            source: None,
            value: value.to_vec(),
        };
        assert!(
            bad(Some("2"), Some("c"), b"{}")
                .decode()
                .unwrap_err()
                .contains("version")
        );
        assert!(
            bad(None, Some("c"), b"{}")
                .decode()
                .unwrap_err()
                .contains("no kubetrail-format")
        );
        assert!(
            bad(Some("1"), None, b"{}")
                .decode()
                .unwrap_err()
                .contains("cluster")
        );
        assert!(
            bad(Some("1"), Some("c"), b"{nope")
                .decode()
                .unwrap_err()
                .contains("not an audit event")
        );
    }
}
