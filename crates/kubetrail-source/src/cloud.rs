//! Audit events inside the managed clouds' log envelopes (AKS, EKS, GKE).
//!
//! Managed control planes do not let anyone set kube-apiserver's audit flags: their audit
//! events come out of the cloud's log service, wrapped in that service's record shape. This
//! module recognises those shapes from the JSON itself (never from a file name) behind one
//! entry point, [`decode_cloud_document`], which the line reader calls for any complete JSON
//! document that is not a plain audit `Event`, and which the receiver's push endpoints call
//! for Firehose and Pub/Sub bodies:
//!
//! * **AKS** diagnostic settings records, `{"records":[{"category":"kube-audit",
//!   "properties":{"log":"<Event JSON>"}}]}` (Event Hubs, storage-account blobs), or one
//!   record per line;
//! * **EKS** CloudWatch Logs exports (`aws logs filter-log-events`/`get-log-events`:
//!   `{"events":[{"message":"<Event JSON>"}]}`, also the SDK's PascalCase `Message`),
//!   subscription-filter payloads (`{"logEvents":[{"message":…}]}`, also as the Lambda
//!   `{"awslogs":{"data":"<base64 gzip>"}}`), and Kinesis Data Firehose HTTP-endpoint
//!   deliveries (`{"requestId":…,"records":[{"data":"<base64>"}]}`, the data being a gzip
//!   subscription payload or audit JSON lines);
//! * **GKE** Cloud Logging `LogEntry`s whose `protoPayload` is a
//!   `type.googleapis.com/google.cloud.audit.AuditLog` from `serviceName: k8s.io`: exported to
//!   files (one per line, a JSON array from `gcloud logging read`, or an `entries` list),
//!   BigQuery rows (`protopayload_auditlog` with `requestJson`/`responseJson`), and Pub/Sub
//!   push bodies (`{"message":{"data":"<base64 LogEntry>"},"subscription":…}`).
//!
//! Every item is decoded on its own: a bad item is an [`ItemError`] whose reason names where
//! it is (`records[3].properties.log: …`) and the rest of the document still counts. GKE
//! entries of other services (`container.googleapis.com` cluster operations share the sink)
//! are reported as items skipped, with the reason, not as events.

use std::collections::BTreeMap;
use std::io::Read as _;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use kubetrail_model::{AuditEvent, Level, ObjectReference, Stage, UserInfo, parse_rfc3339_nanos};

use crate::decode::ItemError;

/// Deepest nesting of envelopes followed (Firehose → gzip subscription → event is 2).
const MAX_DEPTH: u8 = 4;
/// Largest decompressed size of one base64/gzip payload inside an envelope.
const MAX_INFLATED: u64 = 64 << 20;

/// Which envelope a document was recognised as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloudFormat {
    /// Azure diagnostic settings records (`records[].properties.log`).
    AksDiagnostics,
    /// CloudWatch Logs `events[].message` (CLI/SDK export), or one such event.
    CloudWatchExport,
    /// CloudWatch Logs subscription-filter payload (`logEvents[].message`).
    CloudWatchSubscription,
    /// Kinesis Data Firehose HTTP-endpoint delivery (`records[].data`).
    FirehoseDelivery,
    /// Cloud Logging `LogEntry` with an `AuditLog` payload (file, array, `entries`, BigQuery).
    GkeLogEntry,
    /// Pub/Sub push body carrying a `LogEntry` (`message.data`).
    PubSubPush,
}

impl CloudFormat {
    /// A short stable name for logs and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            CloudFormat::AksDiagnostics => "aks",
            CloudFormat::CloudWatchExport => "cloudwatch",
            CloudFormat::CloudWatchSubscription => "cloudwatch-subscription",
            CloudFormat::FirehoseDelivery => "firehose",
            CloudFormat::GkeLogEntry => "gke",
            CloudFormat::PubSubPush => "pubsub",
        }
    }
}

/// One item of a cloud document.
#[derive(Debug)]
pub enum CloudItem {
    /// An audit event.
    Event(Box<AuditEvent>),
    /// A record that is not an audit event at all (why, with its location).
    Bad(ItemError),
    /// A valid record that carries no Kubernetes API audit event (a GKE cluster operation, a
    /// CloudWatch control message); counted apart from malformed records.
    Skipped(ItemError),
}

/// A recognised cloud document.
#[derive(Debug)]
pub struct CloudDocument {
    /// The envelope.
    pub format: CloudFormat,
    /// Its items in order.
    pub items: Vec<CloudItem>,
    /// The Firehose `requestId`, which the HTTP answer must echo.
    pub request_id: Option<String>,
}

/// Recognises `text` (one complete JSON document, optionally starting with a UTF-8 BOM) as a
/// cloud envelope and decodes its items, or `None` when it is not one of the known shapes
/// (then it is a plain `Event`, `EventList`, array of events, or malformed).
pub fn decode_cloud_document(text: &[u8]) -> Option<CloudDocument> {
    let text = strip_bom(text);
    let first = text.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first == b'[' {
        let items: Vec<&RawValue> = serde_json::from_slice(text).ok()?;
        let head = items.first()?;
        let probe: Probe<'_> = serde_json::from_str(head.get()).ok()?;
        let format = probe.format()?;
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            decode_record(item.get(), &format!("[{i}]"), 0, &mut out);
        }
        return Some(CloudDocument {
            format,
            items: out,
            request_id: None,
        });
    }
    let probe: Probe<'_> = serde_json::from_slice(text).ok()?;
    let format = probe.format()?;
    let request_id = probe.request_id.clone();
    let mut items = Vec::new();
    // `from_slice` succeeded above, so the text is UTF-8.
    let text = std::str::from_utf8(text).ok()?;
    probe.decode_into(text, "", 0, &mut items);
    Some(CloudDocument {
        format,
        items,
        request_id,
    })
}

/// Strips a leading UTF-8 byte order mark (Azure writes one into its blobs).
pub fn strip_bom(text: &[u8]) -> &[u8] {
    text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text)
}

/// Every top-level key any envelope is recognised by; the rest is ignored.
#[derive(Deserialize, Default)]
struct Probe<'a> {
    #[serde(default, borrow)]
    records: Option<Vec<&'a RawValue>>,
    #[serde(default, borrow)]
    events: Option<Vec<&'a RawValue>>,
    #[serde(default, rename = "logEvents", borrow)]
    log_events: Option<Vec<&'a RawValue>>,
    #[serde(default, rename = "messageType")]
    message_type: Option<String>,
    #[serde(default)]
    awslogs: Option<AwsLogs>,
    #[serde(default, rename = "requestId")]
    request_id: Option<String>,
    #[serde(default, rename = "protoPayload", borrow)]
    proto_payload: Option<&'a RawValue>,
    #[serde(default, borrow)]
    protopayload_auditlog: Option<&'a RawValue>,
    #[serde(default, borrow)]
    entries: Option<Vec<&'a RawValue>>,
    #[serde(default, borrow)]
    message: Option<&'a RawValue>,
    #[serde(default, rename = "Message", borrow)]
    message_pascal: Option<&'a RawValue>,
    #[serde(default)]
    subscription: Option<String>,
    #[serde(default, borrow)]
    properties: Option<&'a RawValue>,
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    data: Option<String>,
}

#[derive(Deserialize)]
struct AwsLogs {
    data: String,
}

#[derive(Deserialize)]
struct AksProperties {
    log: Option<String>,
}

#[derive(Deserialize)]
struct PubSubMessage {
    data: Option<String>,
    #[serde(default, rename = "messageId")]
    message_id: Option<String>,
}

impl Probe<'_> {
    /// Which envelope this object is, if any.
    fn format(&self) -> Option<CloudFormat> {
        if self.proto_payload.is_some() || self.protopayload_auditlog.is_some() {
            return Some(CloudFormat::GkeLogEntry);
        }
        if self.entries.is_some() {
            return Some(CloudFormat::GkeLogEntry);
        }
        if let Some(records) = &self.records {
            // Firehose carries `requestId` and `records[].data`; Azure `records[].properties`.
            if self.request_id.is_some() {
                return Some(CloudFormat::FirehoseDelivery);
            }
            let head: Option<Probe<'_>> = records
                .first()
                .and_then(|r| serde_json::from_str(r.get()).ok());
            return match head {
                Some(h) if h.data.is_some() => Some(CloudFormat::FirehoseDelivery),
                _ => Some(CloudFormat::AksDiagnostics),
            };
        }
        if self.properties.is_some() && self.category.is_some() {
            return Some(CloudFormat::AksDiagnostics);
        }
        if self.log_events.is_some() || self.message_type.is_some() || self.awslogs.is_some() {
            return Some(CloudFormat::CloudWatchSubscription);
        }
        if self.events.is_some() {
            return Some(CloudFormat::CloudWatchExport);
        }
        if let Some(m) = self.message {
            if m.get().starts_with('{') && self.subscription.is_some() {
                return Some(CloudFormat::PubSubPush);
            }
            if m.get().starts_with('"') {
                return Some(CloudFormat::CloudWatchExport);
            }
        }
        if self
            .message_pascal
            .is_some_and(|m| m.get().starts_with('"'))
        {
            return Some(CloudFormat::CloudWatchExport);
        }
        if self.data.is_some() {
            return Some(CloudFormat::FirehoseDelivery);
        }
        None
    }

    /// Decodes this object's items, `at` being its location for error reasons.
    fn decode_into(&self, text: &str, at: &str, depth: u8, out: &mut Vec<CloudItem>) {
        let Some(format) = self.format() else {
            out.push(bad(at, "not an audit event or a known cloud log record"));
            return;
        };
        match format {
            CloudFormat::GkeLogEntry => {
                if let Some(entries) = &self.entries {
                    for (i, e) in entries.iter().enumerate() {
                        decode_record(e.get(), &format!("{at}entries[{i}]"), depth + 1, out);
                    }
                } else {
                    out.push(gke_entry_text(text, at));
                }
            }
            CloudFormat::FirehoseDelivery | CloudFormat::AksDiagnostics
                if self.records.is_some() =>
            {
                for (i, r) in self.records.iter().flatten().enumerate() {
                    decode_record(r.get(), &format!("{at}records[{i}]"), depth + 1, out);
                }
            }
            CloudFormat::FirehoseDelivery => {
                // A single Firehose record: `{"data":"<base64>"}`.
                let loc = format!("{at}data");
                match self.data.as_deref().map(unbase64) {
                    Some(Ok(bytes)) => decode_bytes(&bytes, &loc, depth + 1, out),
                    Some(Err(e)) => out.push(bad(&loc, e)),
                    None => out.push(bad(at, "no data")),
                }
            }
            CloudFormat::AksDiagnostics => {
                let loc = format!("{at}properties.log");
                let props = self
                    .properties
                    .and_then(|p| serde_json::from_str::<AksProperties>(p.get()).ok());
                match props.and_then(|p| p.log) {
                    Some(log) => out.push(event_from_text(log.as_bytes(), &loc)),
                    None => out.push(bad(&loc, "missing: an AKS record needs properties.log")),
                }
            }
            CloudFormat::CloudWatchSubscription => {
                if let Some(aws) = &self.awslogs {
                    let loc = format!("{at}awslogs.data");
                    match unbase64(&aws.data) {
                        Ok(bytes) => decode_bytes(&bytes, &loc, depth + 1, out),
                        Err(e) => out.push(bad(&loc, e)),
                    }
                    return;
                }
                if self.message_type.as_deref() == Some("CONTROL_MESSAGE") {
                    out.push(CloudItem::Skipped(ItemError {
                        index: 0,
                        reason: format!("{at}: CloudWatch Logs CONTROL_MESSAGE (no log events)"),
                    }));
                    return;
                }
                for (i, e) in self.log_events.iter().flatten().enumerate() {
                    cloudwatch_event(e.get(), &format!("{at}logEvents[{i}]"), out);
                }
            }
            CloudFormat::CloudWatchExport => {
                if let Some(events) = &self.events {
                    for (i, e) in events.iter().enumerate() {
                        cloudwatch_event(e.get(), &format!("{at}events[{i}]"), out);
                    }
                } else {
                    let m = self.message.or(self.message_pascal);
                    let loc = format!("{at}message");
                    match m.map(|m| serde_json::from_str::<String>(m.get())) {
                        Some(Ok(text)) => out.push(event_from_text(text.as_bytes(), &loc)),
                        _ => out.push(bad(&loc, "missing: expected a string")),
                    }
                }
            }
            CloudFormat::PubSubPush => {
                let loc = format!("{at}message.data");
                let msg = self
                    .message
                    .and_then(|m| serde_json::from_str::<PubSubMessage>(m.get()).ok());
                let Some(msg) = msg else {
                    out.push(bad(&loc, "message is not a Pub/Sub message"));
                    return;
                };
                let loc = match &msg.message_id {
                    Some(id) => format!("{loc} (messageId {id})"),
                    None => loc,
                };
                match msg.data.as_deref().map(unbase64) {
                    Some(Ok(bytes)) => decode_bytes(&bytes, &loc, depth + 1, out),
                    Some(Err(e)) => out.push(bad(&loc, e)),
                    None => out.push(bad(&loc, "missing")),
                }
            }
        }
    }
}

fn bad(at: &str, reason: impl std::fmt::Display) -> CloudItem {
    let at = at.trim_end_matches('.');
    CloudItem::Bad(ItemError {
        index: 0,
        reason: if at.is_empty() {
            reason.to_string()
        } else {
            format!("{at}: {reason}")
        },
    })
}

/// One record inside an envelope: an audit event itself, or a nested envelope.
fn decode_record(text: &str, at: &str, depth: u8, out: &mut Vec<CloudItem>) {
    if depth > MAX_DEPTH {
        out.push(bad(at, "envelopes nested too deeply"));
        return;
    }
    match serde_json::from_str::<Probe<'_>>(text) {
        Ok(p) if p.format().is_some() => p.decode_into(text, &format!("{at}."), depth, out),
        Ok(_) => out.push(event_from_text(text.as_bytes(), at)),
        Err(e) => out.push(bad(at, format!("not a JSON object: {e}"))),
    }
}

/// Decoded bytes of a base64 payload: one JSON document (an envelope or an event), or audit
/// JSON lines (Firehose concatenates records that way).
fn decode_bytes(bytes: &[u8], at: &str, depth: u8, out: &mut Vec<CloudItem>) {
    if depth > MAX_DEPTH {
        out.push(bad(at, "envelopes nested too deeply"));
        return;
    }
    let bytes = strip_bom(bytes);
    if let Ok(text) = std::str::from_utf8(bytes) {
        if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
            decode_record(text, at, depth, out);
            return;
        }
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            decode_record(line, &format!("{at} line {}", i + 1), depth, out);
        }
    } else {
        out.push(bad(at, "not UTF-8 text"));
    }
}

/// `{"message": "<Event JSON>"}` (any case of `message`), the CloudWatch Logs event.
fn cloudwatch_event(text: &str, at: &str, out: &mut Vec<CloudItem>) {
    #[derive(Deserialize)]
    struct Ev {
        #[serde(alias = "Message")]
        message: Option<String>,
    }
    let loc = format!("{at}.message");
    match serde_json::from_str::<Ev>(text) {
        Ok(Ev { message: Some(m) }) => out.push(event_from_text(m.as_bytes(), &loc)),
        Ok(_) => out.push(bad(&loc, "missing")),
        Err(e) => out.push(bad(at, format!("not a log event: {e}"))),
    }
}

fn event_from_text(text: &[u8], at: &str) -> CloudItem {
    match serde_json::from_slice::<AuditEvent>(text) {
        Ok(e) => CloudItem::Event(Box::new(e)),
        Err(_) => bad(at, crate::decode::describe_error(text)),
    }
}

/// Decodes base64 (standard alphabet, padding optional), then gunzips when the bytes are gzip
/// (checked by magic, since Firehose records may or may not be compressed).
fn unbase64(text: &str) -> Result<Vec<u8>, String> {
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let raw = engine
        .decode(text.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(raw.as_slice())
            .take(MAX_INFLATED + 1)
            .read_to_end(&mut out)
            .map_err(|e| format!("not valid gzip: {e}"))?;
        if out.len() as u64 > MAX_INFLATED {
            return Err(format!(
                "larger than {MAX_INFLATED} bytes once decompressed"
            ));
        }
        return Ok(out);
    }
    Ok(raw)
}

// ---------------------------------------------------------------------------------------
// GKE: Cloud Audit Logs `AuditLog` → audit `Event`.

/// The `AuditLog` fields used (`google.cloud.audit.AuditLog`), in JSON or BigQuery naming.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct AuditLog {
    #[serde(default, rename = "@type")]
    type_url: Option<String>,
    #[serde(default)]
    service_name: Option<String>,
    #[serde(default)]
    method_name: Option<String>,
    #[serde(default)]
    resource_name: Option<String>,
    #[serde(default)]
    authentication_info: Option<AuthenticationInfo>,
    #[serde(default)]
    authorization_info: Option<Value>,
    #[serde(default)]
    request_metadata: Option<RequestMetadata>,
    #[serde(default)]
    status: Option<RpcStatus>,
    #[serde(default)]
    request: Option<Value>,
    #[serde(default)]
    response: Option<Value>,
    /// BigQuery exports carry the bodies as JSON strings.
    #[serde(default)]
    request_json: Option<String>,
    #[serde(default)]
    response_json: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct AuthenticationInfo {
    #[serde(default)]
    principal_email: Option<String>,
    #[serde(default)]
    principal_subject: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RequestMetadata {
    #[serde(default)]
    caller_ip: Option<String>,
    #[serde(default)]
    caller_supplied_user_agent: Option<String>,
}

#[derive(Deserialize, Default)]
struct RpcStatus {
    #[serde(default)]
    code: Option<i32>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize, Default)]
struct Operation {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    producer: Option<String>,
    #[serde(default)]
    first: Option<bool>,
    #[serde(default)]
    last: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct LogEntry {
    #[serde(default)]
    proto_payload: Option<AuditLog>,
    #[serde(default, rename = "protopayload_auditlog")]
    protopayload_auditlog: Option<AuditLog>,
    #[serde(default)]
    insert_id: Option<String>,
    #[serde(default)]
    log_name: Option<String>,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(default)]
    receive_timestamp: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, Value>>,
    #[serde(default)]
    operation: Option<Operation>,
    #[serde(default)]
    resource: Option<MonitoredResource>,
}

#[derive(Deserialize, Default)]
struct MonitoredResource {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, Value>>,
}

/// The annotation-key prefix for LogEntry fields that have no audit `Event` equivalent.
pub const GCP_ATTR_PREFIX: &str = "cloud.google.com/";
const AUDIT_LOG_TYPE: &str = "type.googleapis.com/google.cloud.audit.AuditLog";

/// Maps one `LogEntry` (JSON text) to an audit event.
fn gke_entry_text(text: &str, at: &str) -> CloudItem {
    let entry: LogEntry = match serde_json::from_str(text) {
        Ok(e) => e,
        Err(e) => return bad(at, format!("not a Cloud Logging LogEntry: {e}")),
    };
    match map_log_entry(entry) {
        Ok(e) => CloudItem::Event(Box::new(e)),
        Err(Unmapped::Skip(reason)) => CloudItem::Skipped(ItemError {
            index: 0,
            reason: if at.is_empty() {
                reason
            } else {
                format!("{}: {reason}", at.trim_end_matches('.'))
            },
        }),
        Err(Unmapped::Bad(reason)) => bad(at, reason),
    }
}

enum Unmapped {
    Skip(String),
    Bad(String),
}

/// Parses a LogEntry timestamp: RFC 3339, or BigQuery's `2024-01-01 01:00:00.123456 UTC`.
fn gcp_time(s: &str) -> Option<i64> {
    if let Some(t) = parse_rfc3339_nanos(s) {
        return Some(t);
    }
    let s = s.strip_suffix(" UTC")?;
    parse_rfc3339_nanos(&format!("{s}Z"))
}

/// `google.rpc.Code` → the HTTP status the API server answered (the mapping in
/// `google/rpc/code.proto`).
fn rpc_to_http(code: i32) -> Option<i32> {
    Some(match code {
        0 => 200,
        1 => 499,
        2 | 13 | 15 => 500,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => return None,
    })
}

/// Where `resourceName` points: `core/v1/namespaces/ns/pods/name/status`.
struct ResourcePath {
    group: String,
    version: String,
    namespace: Option<String>,
    resource: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_resource_name(s: &str) -> Option<ResourcePath> {
    let segs: Vec<&str> = s.trim_matches('/').split('/').collect();
    if segs.len() < 3 || segs.iter().any(|p| p.is_empty()) {
        return None;
    }
    let group = if segs[0] == "core" { "" } else { segs[0] };
    let version = segs[1];
    let mut rest = &segs[2..];
    let mut namespace = None;
    if rest[0] == "namespaces" && rest.len() >= 3 {
        namespace = Some(rest[1].to_owned());
        rest = &rest[2..];
    }
    if rest.len() > 3 {
        return None;
    }
    Some(ResourcePath {
        group: group.to_owned(),
        version: version.to_owned(),
        namespace,
        resource: rest[0].to_owned(),
        name: rest.get(1).map(|s| (*s).to_owned()),
        subresource: rest.get(2).map(|s| (*s).to_owned()),
    })
}

/// The body with its `@type` removed (the type goes into an attribute), as raw JSON.
fn body(
    v: Option<Value>,
    json: Option<String>,
    key: &str,
    annotations: &mut BTreeMap<String, String>,
) -> Result<Option<Box<RawValue>>, String> {
    let v = match (v, json) {
        (Some(v), _) => v,
        (None, Some(s)) if !s.is_empty() => {
            serde_json::from_str(&s).map_err(|e| format!("{key}Json is not JSON: {e}"))?
        }
        _ => return Ok(None),
    };
    let mut v = v;
    if let Value::Object(m) = &mut v
        && let Some(Value::String(t)) = m.remove("@type")
    {
        annotations.insert(format!("{GCP_ATTR_PREFIX}{key}.type"), t);
    }
    if v.is_null() {
        return Ok(None);
    }
    let text = serde_json::to_string(&v).map_err(|e| format!("{key}: {e}"))?;
    RawValue::from_string(text)
        .map(Some)
        .map_err(|e| format!("{key}: {e}"))
}

fn label_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn map_log_entry(entry: LogEntry) -> Result<AuditEvent, Unmapped> {
    let LogEntry {
        proto_payload,
        protopayload_auditlog,
        insert_id,
        log_name,
        timestamp,
        receive_timestamp,
        labels,
        operation,
        resource,
    } = entry;
    let Some(log) = proto_payload.or(protopayload_auditlog) else {
        return Err(Unmapped::Bad("a LogEntry without protoPayload".to_owned()));
    };
    if let Some(t) = &log.type_url
        && t != AUDIT_LOG_TYPE
    {
        return Err(Unmapped::Skip(format!(
            "protoPayload is {t}, not an AuditLog (skipped)"
        )));
    }
    let service = log.service_name.clone().unwrap_or_default();
    if service != "k8s.io" {
        return Err(Unmapped::Skip(format!(
            "AuditLog of service {service:?}, not the Kubernetes API (k8s.io) (skipped)"
        )));
    }
    let method = log
        .method_name
        .clone()
        .ok_or_else(|| Unmapped::Bad("protoPayload.methodName: missing".to_owned()))?;
    let verb = method
        .rsplit_once('.')
        .map(|(_, v)| v.to_owned())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            Unmapped::Bad(format!(
                "protoPayload.methodName {method:?}: expected io.k8s.<group>.<version>.<resource>[.<subresource>].<verb>"
            ))
        })?;
    let operation = operation.unwrap_or_default();
    let audit_id = operation
        .id
        .clone()
        .or(insert_id.clone())
        .ok_or_else(|| Unmapped::Bad("operation.id and insertId: both missing".to_owned()))?;
    let stage_time = timestamp
        .as_deref()
        .map(|t| gcp_time(t).ok_or_else(|| Unmapped::Bad(format!("timestamp {t:?}: not a time"))));
    let stage_time = stage_time.transpose()?;

    let mut annotations: BTreeMap<String, String> = BTreeMap::new();
    // GKE moves the audit annotations (authorization decision, admission) into labels.
    for (k, v) in labels.iter().flatten() {
        annotations.insert(k.clone(), label_text(v));
    }
    let mut keep = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            annotations.insert(format!("{GCP_ATTR_PREFIX}{k}"), v);
        }
    };
    keep("methodName", Some(method.clone()));
    keep("resourceName", log.resource_name.clone());
    keep("insertId", insert_id);
    keep("logName", log_name);
    keep("receiveTimestamp", receive_timestamp);
    keep("operation.producer", operation.producer.clone());
    keep("operation.first", operation.first.map(|b| b.to_string()));
    keep("operation.last", operation.last.map(|b| b.to_string()));
    keep(
        "authorizationInfo",
        log.authorization_info.as_ref().map(Value::to_string),
    );
    if let Some(r) = resource {
        keep("resource.type", r.kind);
        for (k, v) in r.labels.iter().flatten() {
            annotations.insert(format!("{GCP_ATTR_PREFIX}resource.{k}"), label_text(v));
        }
    }
    let status = log.status.unwrap_or_default();
    if let Some(c) = status.code {
        annotations.insert(format!("{GCP_ATTR_PREFIX}status.code"), c.to_string());
    }
    let auth = log.authentication_info.unwrap_or_default();
    if let Some(s) = auth.principal_subject {
        annotations.insert(
            format!("{GCP_ATTR_PREFIX}authenticationInfo.principalSubject"),
            s,
        );
    }
    let request_object =
        body(log.request, log.request_json, "request", &mut annotations).map_err(Unmapped::Bad)?;
    let response_object = body(
        log.response,
        log.response_json,
        "response",
        &mut annotations,
    )
    .map_err(Unmapped::Bad)?;

    // The audit level is not in the entry: the bodies present say what the policy recorded.
    let level = if response_object.is_some() {
        Level::RequestResponse
    } else if request_object.is_some() {
        Level::Request
    } else {
        Level::Metadata
    };
    // One entry per stage the sink received: `first` without `last` is the start of a
    // long-running request (watch, exec), `last` (or neither) its completion.
    let stage = match (operation.first, operation.last) {
        (Some(true), Some(false)) => Stage::ResponseStarted,
        _ => Stage::ResponseComplete,
    };

    let path = log.resource_name.as_deref().and_then(parse_resource_name);
    let (object_ref, request_uri) = match &path {
        Some(p) => {
            let mut uri = if p.group.is_empty() {
                format!("/api/{}", p.version)
            } else {
                format!("/apis/{}/{}", p.group, p.version)
            };
            if let Some(ns) = &p.namespace {
                uri.push_str("/namespaces/");
                uri.push_str(ns);
            }
            for part in [Some(&p.resource), p.name.as_ref(), p.subresource.as_ref()]
                .into_iter()
                .flatten()
            {
                uri.push('/');
                uri.push_str(part);
            }
            (
                Some(ObjectReference {
                    resource: Some(p.resource.clone()),
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    uid: None,
                    api_group: Some(p.group.clone()),
                    api_version: Some(p.version.clone()),
                    resource_version: None,
                    subresource: p.subresource.clone(),
                }),
                uri,
            )
        }
        None => (
            None,
            format!("/{}", log.resource_name.as_deref().unwrap_or_default()),
        ),
    };
    // The URI is rebuilt from resourceName (GKE does not log it): no query string.
    annotations.insert(
        format!("{GCP_ATTR_PREFIX}requestURI"),
        "rebuilt from resourceName".to_owned(),
    );

    let response_status = status.code.and_then(rpc_to_http).map(|code| {
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Status {
            code: Some(code),
            message: status.message.clone().filter(|m| !m.is_empty()),
            ..Default::default()
        }
    });
    let meta = log.request_metadata.unwrap_or_default();
    Ok(AuditEvent {
        api_version: Some("audit.k8s.io/v1".to_owned()),
        kind: Some("Event".to_owned()),
        level,
        audit_id,
        stage,
        request_uri,
        verb,
        user: UserInfo {
            username: auth.principal_email,
            ..Default::default()
        },
        impersonated_user: None,
        source_ips: meta.caller_ip.into_iter().collect(),
        user_agent: meta.caller_supplied_user_agent,
        object_ref,
        response_status,
        request_object,
        response_object,
        request_received_timestamp: None,
        stage_timestamp: stage_time,
        annotations,
        timestamp: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_names() {
        let p = parse_resource_name("core/v1/namespaces/d/pods/p/status").unwrap();
        assert_eq!(
            (
                p.group.as_str(),
                p.namespace.as_deref(),
                p.resource.as_str()
            ),
            ("", Some("d"), "pods")
        );
        assert_eq!(p.subresource.as_deref(), Some("status"));
        let p = parse_resource_name("apps/v1/namespaces/d/deployments").unwrap();
        assert_eq!((p.resource.as_str(), p.name), ("deployments", None));
        let p = parse_resource_name("core/v1/namespaces/kube-system").unwrap();
        assert_eq!(
            (p.resource.as_str(), p.name.as_deref()),
            ("namespaces", Some("kube-system"))
        );
        assert!(parse_resource_name("a/b").is_none());
    }

    #[test]
    fn rpc_codes() {
        assert_eq!(rpc_to_http(0), Some(200));
        assert_eq!(rpc_to_http(7), Some(403));
        assert_eq!(rpc_to_http(99), None);
    }

    #[test]
    fn bigquery_times() {
        assert_eq!(
            gcp_time("2024-01-01 01:00:00.5 UTC"),
            parse_rfc3339_nanos("2024-01-01T01:00:00.5Z")
        );
    }
}
