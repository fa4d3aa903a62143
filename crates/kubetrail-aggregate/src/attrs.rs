//! Attribute names and the attributes of request and object spans.
//!
//! OpenTelemetry's semantic conventions are used where they exist (`k8s.*`, `user.name`,
//! `user_agent.original`, `client.address`, `http.response.status_code`, `error.type`);
//! everything else carries the one project prefix `kubetrail.`.

use kubetrail_model::AttrKey;
use kubetrail_model::{AttrValue, AuditEvent, ObjectRef, SpanRecord};

/// `kubetrail.object.ref`: `resource[.group]/[namespace/]name`.
pub const OBJECT_REF: &str = "kubetrail.object.ref";
/// `kubetrail.object.resource`: plural resource.
pub const OBJECT_RESOURCE: &str = "kubetrail.object.resource";
/// `kubetrail.object.group`: API group, empty for core.
pub const OBJECT_GROUP: &str = "kubetrail.object.group";
/// `kubetrail.object.version`: API version seen in requests.
pub const OBJECT_VERSION: &str = "kubetrail.object.version";
/// `kubetrail.object.kind`: kind, when a body told it.
pub const OBJECT_KIND: &str = "kubetrail.object.kind";
/// `kubetrail.object.name`.
pub const OBJECT_NAME: &str = "kubetrail.object.name";
/// `kubetrail.object.uid`.
pub const OBJECT_UID: &str = "kubetrail.object.uid";
/// `k8s.namespace.name` (OpenTelemetry).
pub const NAMESPACE: &str = "k8s.namespace.name";
/// `k8s.cluster.name` (OpenTelemetry).
pub const CLUSTER: &str = "k8s.cluster.name";
/// `kubetrail.audit.id`: the request's auditID.
pub const AUDIT_ID: &str = "kubetrail.audit.id";
/// `kubetrail.audit.verb`.
pub const VERB: &str = "kubetrail.audit.verb";
/// `kubetrail.audit.subresource`.
pub const SUBRESOURCE: &str = "kubetrail.audit.subresource";
/// `http.response.status_code` (OpenTelemetry).
pub const STATUS_CODE: &str = "http.response.status_code";

/// `kubetrail.part.index`: the part (1, 2, …) of its family a span is in; absent in the main
/// trace.
pub const PART_INDEX: &str = "kubetrail.part.index";
/// `kubetrail.part.count`: parts the family had in the window when the part was emitted.
pub const PART_COUNT: &str = "kubetrail.part.count";
/// `kubetrail.part.stand_in`: the span is a part's root, standing in for the owner.
pub const PART_STAND_IN: &str = "kubetrail.part.stand_in";
/// `kubetrail.part.objects`: objects whose span is in the part.
pub const PART_OBJECTS: &str = "kubetrail.part.objects";
/// `kubetrail.part.requests`: request spans in the part.
pub const PART_REQUESTS: &str = "kubetrail.part.requests";
/// `kubetrail.part.main_trace`: the family's main trace id (hex), on a part's stand-in.
pub const PART_MAIN_TRACE: &str = "kubetrail.part.main_trace";
/// `kubetrail.parts`: on an owner's span, how many parts hold its objects or requests.
pub const PARTS: &str = "kubetrail.parts";
/// `kubetrail.link.rule`: why a span link exists.
pub const LINK_RULE: &str = "kubetrail.link.rule";
/// `kubetrail.link.target`: what the link leads to, for a person.
pub const LINK_TARGET: &str = "kubetrail.link.target";
/// Link rule: an owner's span to one of its parts.
pub const LINK_PART: &str = "part";
/// Link rule: a part's stand-in back to the owner's span.
pub const LINK_PART_OWNER: &str = "part-owner";
/// Link rule: a part's stand-in to the owner's previous part.
pub const LINK_PART_PREVIOUS: &str = "part-previous";
/// Link rule: a part's stand-in to the owner's next part.
pub const LINK_PART_NEXT: &str = "part-next";
/// Link rule: an object's span to its owner's span in another trace.
pub const LINK_OWNER: &str = "owner";
/// Link rule: an object's span to its span in an earlier segment of the same window.
pub const LINK_PREVIOUS_SEGMENT: &str = "previous-segment";
/// On a root span of a later segment: the span id of the same object's span in the earlier
/// segment of the same trace. Said as an attribute, not a link: Jaeger takes a span's
/// `FOLLOWS_FROM` reference into its own trace for its parent when it has no `CHILD_OF`, so
/// such a link would nest the later segment under the earlier one and draw a clock-skew
/// warning on it (it starts after its "parent" ended).
pub const SEGMENT_PREVIOUS: &str = "kubetrail.segment.previous_span_id";
/// Link rule: an object's span to its last span in the previous window.
pub const LINK_PREVIOUS_WINDOW: &str = "previous-window";

pub(crate) fn push(
    attrs: &mut Vec<(AttrKey, AttrValue)>,
    key: &'static str,
    value: impl Into<AttrValue>,
) {
    attrs.push((AttrKey::Borrowed(key), value.into()));
}

/// OpenTelemetry's `k8s.<kind>` prefix for the resources it has conventions for.
fn semconv_kind(o: &ObjectRef) -> Option<&'static str> {
    Some(match (o.group.as_str(), o.resource.as_str()) {
        ("", "pods") => "pod",
        ("", "nodes") => "node",
        ("", "namespaces") => "namespace",
        ("apps", "deployments") => "deployment",
        ("apps", "replicasets") => "replicaset",
        ("apps", "statefulsets") => "statefulset",
        ("apps", "daemonsets") => "daemonset",
        ("batch", "jobs") => "job",
        ("batch", "cronjobs") => "cronjob",
        _ => return None,
    })
}

/// Identity attributes shared by an object's span and its requests' spans, so either can be
/// found by the same Jaeger tag search.
pub(crate) fn object_identity(attrs: &mut Vec<(AttrKey, AttrValue)>, cluster: &str, o: &ObjectRef) {
    if !cluster.is_empty() {
        push(attrs, CLUSTER, cluster);
    }
    if !o.namespace.is_empty() {
        push(attrs, NAMESPACE, o.namespace.as_str());
    }
    push(attrs, OBJECT_REF, o.to_string());
    push(attrs, OBJECT_RESOURCE, o.resource.as_str());
    if !o.group.is_empty() {
        push(attrs, OBJECT_GROUP, o.group.as_str());
    }
    push(attrs, OBJECT_NAME, o.name.as_str());
    if let Some(uid) = &o.uid {
        push(attrs, OBJECT_UID, uid.as_str());
    }
    if let Some(k) = semconv_kind(o) {
        let (name_key, uid_key) = match k {
            "pod" => ("k8s.pod.name", "k8s.pod.uid"),
            "node" => ("k8s.node.name", "k8s.node.uid"),
            "namespace" => ("k8s.namespace.name", "k8s.namespace.uid"),
            "deployment" => ("k8s.deployment.name", "k8s.deployment.uid"),
            "replicaset" => ("k8s.replicaset.name", "k8s.replicaset.uid"),
            "statefulset" => ("k8s.statefulset.name", "k8s.statefulset.uid"),
            "daemonset" => ("k8s.daemonset.name", "k8s.daemonset.uid"),
            "job" => ("k8s.job.name", "k8s.job.uid"),
            _ => ("k8s.cronjob.name", "k8s.cronjob.uid"),
        };
        if k != "namespace" {
            push(attrs, name_key, o.name.as_str());
        }
        if let Some(uid) = &o.uid {
            push(attrs, uid_key, uid.as_str());
        }
    }
}

/// Request attributes from the audit event: actor, verb, outcome, request details.
pub(crate) fn request_attributes(
    attrs: &mut Vec<(AttrKey, AttrValue)>,
    e: &AuditEvent,
    actor_username: &str,
) {
    push(attrs, AUDIT_ID, e.audit_id.as_str());
    push(attrs, VERB, e.verb.as_str());
    if let Some(r) = &e.object_ref {
        if let Some(s) = &r.subresource {
            push(attrs, SUBRESOURCE, s.as_str());
        }
        if let Some(v) = &r.api_version {
            push(attrs, OBJECT_VERSION, v.as_str());
        }
        if let Some(rv) = &r.resource_version {
            push(attrs, "kubetrail.object.resource_version", rv.as_str());
        }
    }
    push(attrs, "kubetrail.audit.stage", format!("{:?}", e.stage));
    push(attrs, "kubetrail.audit.level", format!("{:?}", e.level));
    push(attrs, "kubetrail.audit.request_uri", e.request_uri.as_str());
    push(attrs, "user.name", actor_username);
    if let Some(groups) = e.effective_user().groups.as_ref().filter(|g| !g.is_empty()) {
        push(
            attrs,
            "kubetrail.user.groups",
            AttrValue::StrList(groups.clone()),
        );
    }
    if e.impersonated_user.is_some() {
        push(attrs, "kubetrail.audit.impersonated", true);
        push(
            attrs,
            "kubetrail.audit.authenticated_user",
            e.user.username.clone().unwrap_or_default(),
        );
    }
    if let Some(ua) = &e.user_agent {
        push(attrs, "user_agent.original", ua.as_str());
    }
    if let Some(ip) = e.source_ips.first() {
        push(attrs, "client.address", ip.as_str());
    }
    if e.source_ips.len() > 1 {
        push(
            attrs,
            "kubetrail.audit.source_ips",
            AttrValue::StrList(e.source_ips.clone()),
        );
    }
    if let Some(code) = e.response_code() {
        push(attrs, STATUS_CODE, i64::from(code));
    }
    if let Some(reason) = e
        .response_status
        .as_ref()
        .and_then(|s| s.reason.as_deref())
        .filter(|r| !r.is_empty())
        && e.response_code().is_some_and(|c| c >= 400)
    {
        push(attrs, "error.type", reason);
    }
    for (k, v) in &e.annotations {
        // Admission and authorization decisions are short and useful; keep a known few.
        let key: &'static str = match k.as_str() {
            "authorization.k8s.io/decision" => "kubetrail.audit.authorization.decision",
            "authorization.k8s.io/reason" => "kubetrail.audit.authorization.reason",
            "pod-security.kubernetes.io/enforce-policy" => {
                "kubetrail.audit.pod_security.enforce_policy"
            }
            _ => continue,
        };
        push(attrs, key, v.as_str());
    }
}

/// Looks up a string attribute of a span (for tests and consumers).
pub fn attr<'a>(span: &'a SpanRecord, key: &str) -> Option<&'a str> {
    span.attr_str(key)
}
