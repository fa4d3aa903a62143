//! `audit.k8s.io/v1` and `v1beta1` `Event` and `EventList`.
//!
//! k8s-openapi has no audit types; these follow the API's Go types field by field
//! (`k8s.io/apiserver/pkg/apis/audit/v1`). `UserInfo` and `Status` are k8s-openapi's.
//! Unknown fields are ignored, so newer API servers' additions do not break parsing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::time::{UnixNanos, de_opt_time};

/// The user a request was made by (`authentication.k8s.io/v1` `UserInfo`).
pub type UserInfo = k8s_openapi::api::authentication::v1::UserInfo;

/// How much of a request the audit policy asked to record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Level {
    /// Nothing is logged (never seen in output, but part of the API).
    None,
    /// Request metadata only: user, timestamp, resource, verb; no bodies.
    Metadata,
    /// Metadata and the request body.
    Request,
    /// Metadata, request and response bodies.
    RequestResponse,
}

/// The stage of request handling at which an audit event was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Stage {
    /// As soon as the handler receives the request, before delegating it.
    RequestReceived,
    /// After response headers are sent, before the body (long-running requests only).
    ResponseStarted,
    /// The response body is complete.
    ResponseComplete,
    /// A panic occurred while handling the request.
    Panic,
}

impl Stage {
    /// Whether this is the last stage a request reaches (its outcome is known).
    pub fn is_final(self) -> bool {
        matches!(self, Stage::ResponseComplete | Stage::Panic)
    }
}

/// The object a request was about, as the API server resolved it from the URL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReference {
    /// Plural resource name (`pods`, `deployments`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Namespace; absent for cluster-scoped objects and cluster-wide collections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Object name; absent on creates with `generateName` and on collections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Object uid, when the API server knew it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// API group; empty or absent for the core group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_group: Option<String>,
    /// API version of the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Resource version the request carried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// Subresource (`status`, `binding`, `scale`, `exec`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subresource: Option<String>,
}

/// One audit event: a request at one stage of its handling.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    /// `audit.k8s.io/v1` or `audit.k8s.io/v1beta1`; absent in some hand-edited logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// `Event`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Audit level the policy chose for this request.
    pub level: Level,
    /// Unique id of the request; shared by all stages of one request.
    #[serde(rename = "auditID")]
    pub audit_id: String,
    /// Stage of request handling.
    pub stage: Stage,
    /// The request URI as sent by the client.
    #[serde(rename = "requestURI")]
    pub request_uri: String,
    /// Kubernetes verb (`create`, `update`, `patch`, `delete`, `get`, `watch`, …).
    pub verb: String,
    /// The authenticated user.
    pub user: UserInfo,
    /// The user the request impersonated, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impersonated_user: Option<UserInfo>,
    /// Source IPs, client first, then proxies.
    #[serde(default, rename = "sourceIPs", skip_serializing_if = "Vec::is_empty")]
    pub source_ips: Vec<String>,
    /// The client's `User-Agent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// The object the request was about; absent for non-resource URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_ref: Option<ObjectReference>,
    /// The response status; `code` is the HTTP status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_status: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>,
    /// Request body (level Request and above), raw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_object: Option<Box<RawValue>>,
    /// Response body (level RequestResponse), raw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_object: Option<Box<RawValue>>,
    /// When the request reached the API server, in Unix nanoseconds.
    #[serde(
        default,
        deserialize_with = "de_opt_time",
        serialize_with = "ser_opt_time",
        skip_serializing_if = "Option::is_none"
    )]
    pub request_received_timestamp: Option<UnixNanos>,
    /// When the request reached this stage, in Unix nanoseconds.
    #[serde(
        default,
        deserialize_with = "de_opt_time",
        serialize_with = "ser_opt_time",
        skip_serializing_if = "Option::is_none"
    )]
    pub stage_timestamp: Option<UnixNanos>,
    /// Annotations set by admission and authorization (`authorization.k8s.io/decision`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// `v1beta1` only: the event time, used when the v1 timestamps are absent.
    #[serde(
        default,
        deserialize_with = "de_opt_time",
        serialize_with = "ser_opt_time",
        skip_serializing_if = "Option::is_none"
    )]
    pub timestamp: Option<UnixNanos>,
}

fn ser_opt_time<S: serde::Serializer>(t: &Option<UnixNanos>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&crate::time::format_rfc3339(*t)),
        None => s.serialize_none(),
    }
}

impl AuditEvent {
    /// Whether the request was a dry run (`dryRun=All`): the API server does not audit
    /// `dryRun` as a field, but it is in the request URI's query.
    pub fn is_dry_run(&self) -> bool {
        self.request_uri
            .split_once('?')
            .is_some_and(|(_, q)| q.split('&').any(|kv| kv.starts_with("dryRun=")))
    }

    /// When the request started: `requestReceivedTimestamp`, else the v1beta1 `timestamp`,
    /// else `stageTimestamp`.
    pub fn start_time(&self) -> Option<UnixNanos> {
        self.request_received_timestamp
            .or(self.timestamp)
            .or(self.stage_timestamp)
    }

    /// When the request reached its stage: `stageTimestamp`, else the start time.
    pub fn end_time(&self) -> Option<UnixNanos> {
        self.stage_timestamp.or_else(|| self.start_time())
    }

    /// The HTTP status code of the response, if the event has one.
    pub fn response_code(&self) -> Option<i32> {
        self.response_status.as_ref().and_then(|s| s.code)
    }

    /// The user whose authority the request used: the impersonated user if any, else the
    /// authenticated one.
    pub fn effective_user(&self) -> &UserInfo {
        self.impersonated_user.as_ref().unwrap_or(&self.user)
    }

    /// Whether the verb changes state (`create`, `update`, `patch`, `delete`,
    /// `deletecollection`).
    pub fn is_mutating(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }

    /// The body that best describes the object after the request: the response for
    /// RequestResponse level, else the request body.
    pub fn object_body(&self) -> Option<&RawValue> {
        self.response_object
            .as_deref()
            .or(self.request_object.as_deref())
    }
}

/// A batch of audit events, as POSTed to an audit webhook.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EventList {
    /// `audit.k8s.io/v1`.
    #[serde(
        default,
        rename = "apiVersion",
        skip_serializing_if = "Option::is_none"
    )]
    pub api_version: Option<String>,
    /// `EventList`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The events.
    #[serde(default)]
    pub items: Vec<AuditEvent>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT: &str = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"RequestResponse","auditID":"a-1","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/ns/pods/p/status","verb":"patch","user":{"username":"system:node:n1","groups":["system:nodes"]},"impersonatedUser":{"username":"bob"},"sourceIPs":["10.0.0.1"],"userAgent":"kubelet/v1.30.0 (linux/amd64) kubernetes/abc","objectRef":{"resource":"pods","namespace":"ns","name":"p","apiVersion":"v1","subresource":"status"},"responseStatus":{"metadata":{},"code":200},"requestObject":{"status":{}},"responseObject":{"metadata":{"name":"p"}},"requestReceivedTimestamp":"2024-01-01T00:00:00.000001Z","stageTimestamp":"2024-01-01T00:00:00.000501Z","annotations":{"authorization.k8s.io/decision":"allow"},"someFutureField":{"x":1}}"#;

    #[test]
    fn parses_every_field_and_tolerates_unknown_ones() {
        let e: AuditEvent = serde_json::from_str(EVENT).unwrap();
        assert_eq!(e.level, Level::RequestResponse);
        assert_eq!(e.stage, Stage::ResponseComplete);
        assert_eq!(e.audit_id, "a-1");
        assert_eq!(e.verb, "patch");
        assert!(e.is_mutating());
        assert_eq!(e.effective_user().username.as_deref(), Some("bob"));
        assert_eq!(e.source_ips, ["10.0.0.1"]);
        let r = e.object_ref.as_ref().unwrap();
        assert_eq!(r.subresource.as_deref(), Some("status"));
        assert_eq!(e.response_code(), Some(200));
        assert_eq!(e.end_time().unwrap() - e.start_time().unwrap(), 500_000);
        assert_eq!(
            e.object_body().unwrap().get(),
            r#"{"metadata":{"name":"p"}}"#
        );
        assert_eq!(e.annotations["authorization.k8s.io/decision"], "allow");
    }

    #[test]
    fn round_trips_through_json() {
        let e: AuditEvent = serde_json::from_str(EVENT).unwrap();
        let back: AuditEvent = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back.start_time(), e.start_time());
        assert_eq!(back.object_ref, e.object_ref);
        assert_eq!(
            back.request_object.unwrap().get(),
            e.request_object.unwrap().get()
        );
    }

    #[test]
    fn missing_required_field_is_an_error_naming_it() {
        let err = serde_json::from_str::<AuditEvent>(
            r#"{"level":"Metadata","stage":"ResponseComplete"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("auditID"), "{err}");
    }

    #[test]
    fn v1beta1_timestamp_is_the_fallback() {
        let e: AuditEvent = serde_json::from_str(r#"{"level":"Metadata","timestamp":"2017-09-11T19:55:05Z","auditID":"x","stage":"ResponseComplete","requestURI":"/","verb":"get","user":{}}"#).unwrap();
        assert_eq!(e.start_time(), Some(1_505_159_705_000_000_000));
        assert_eq!(e.end_time(), e.start_time());
    }
}
