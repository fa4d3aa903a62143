//! Compact JSON rendering with the key order the API server uses.
//!
//! `serde_json::Value` objects are sorted maps (unless some crate in the build turns on
//! `preserve_order`), while the API server serialises Go structs in field order: an audit line
//! starts `{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":...,"auditID":...`, object
//! bodies start `{"kind":...,"apiVersion":...,"metadata":{"name":...`. This writer orders the keys
//! of each object by the Go field order of the struct it stands for (chosen from the key that
//! holds it), and sorts the keys of Go maps (labels, annotations, `fieldsV1`) alphabetically, as
//! `encoding/json` does. The output is therefore the same whatever serde_json features are on.

use serde_json::Value;
use std::collections::HashMap;
use std::sync::OnceLock;

/// Renders one audit event (or any Kubernetes object) as compact JSON in API-server key order.
///
/// This is what [`crate::GeneratedStream::to_json_lines`] writes for each line.
pub fn event_to_json(event: &Value) -> String {
    let mut out = String::with_capacity(2048);
    write_value(&mut out, event, Ctx::Root);
    out
}

/// Appends `event` in API-server key order to `out`.
pub(crate) fn write_event(out: &mut String, event: &Value) {
    write_value(out, event, Ctx::Root);
}

/// Renders an `audit.k8s.io/v1` `EventList` body holding `events`, as a webhook receives it.
pub(crate) fn event_list(events: &[Value]) -> String {
    let mut out = String::with_capacity(events.len() * 2048 + 80);
    out.push_str(r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":["#);
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_value(&mut out, e, Ctx::Root);
    }
    out.push_str("]}");
    out
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Ctx {
    /// The audit `Event` itself.
    Root,
    /// `user` / `impersonatedUser`.
    User,
    /// `objectRef`, `involvedObject`.
    Ref,
    /// `metadata.ownerReferences[]`.
    OwnerRef,
    /// `status.conditions[]`.
    Condition,
    /// A `Status` (responseStatus, or a body of kind Status).
    Status,
    /// `Status.details`.
    StatusDetails,
    /// `ReplicaSetStatus` (field order differs from `DeploymentStatus`).
    RsStatus,
    /// A Go map: keys sorted.
    Map,
    /// Any other struct: the global field order below.
    Generic,
}

const ROOT: &[&str] = &[
    "kind",
    "apiVersion",
    "level",
    "auditID",
    "stage",
    "requestURI",
    "verb",
    "user",
    "impersonatedUser",
    "sourceIPs",
    "userAgent",
    "objectRef",
    "responseStatus",
    "requestObject",
    "responseObject",
    "requestReceivedTimestamp",
    "stageTimestamp",
    "annotations",
];
const USER: &[&str] = &["username", "uid", "groups", "extra"];
const REF: &[&str] = &[
    "kind",
    "resource",
    "namespace",
    "name",
    "uid",
    "apiGroup",
    "apiVersion",
    "resourceVersion",
    "fieldPath",
    "subresource",
];
const OWNER_REF: &[&str] = &[
    "apiVersion",
    "kind",
    "name",
    "uid",
    "controller",
    "blockOwnerDeletion",
];
const CONDITION: &[&str] = &[
    "type",
    "status",
    "lastProbeTime",
    "lastUpdateTime",
    "lastTransitionTime",
    "reason",
    "message",
];
const STATUS: &[&str] = &[
    "kind",
    "apiVersion",
    "metadata",
    "status",
    "message",
    "reason",
    "details",
    "code",
];
const STATUS_DETAILS: &[&str] = &[
    "name",
    "group",
    "kind",
    "uid",
    "causes",
    "retryAfterSeconds",
];
const RS_STATUS: &[&str] = &[
    "replicas",
    "fullyLabeledReplicas",
    "readyReplicas",
    "availableReplicas",
    "observedGeneration",
    "conditions",
];
/// A topological merge of the Go field orders of every struct the generator emits
/// (ObjectMeta, Deployment/ReplicaSet/Pod specs and statuses, Container, Volume, Event,
/// Binding, DeleteOptions, Lease, ManagedFieldsEntry, List).
const GENERIC: &[&str] = &[
    "manager",
    "operation",
    "kind",
    "apiVersion",
    "time",
    "fieldsType",
    "fieldsV1",
    "subresource",
    "metadata",
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
    "items",
    "spec",
    "observedGeneration",
    "replicas",
    "selector",
    "matchLabels",
    "template",
    "strategy",
    "minReadySeconds",
    "revisionHistoryLimit",
    "paused",
    "progressDeadlineSeconds",
    "holderIdentity",
    "leaseDurationSeconds",
    "acquireTime",
    "renewTime",
    "leaseTransitions",
    "volumes",
    "initContainers",
    "containers",
    "restartPolicy",
    "terminationGracePeriodSeconds",
    "activeDeadlineSeconds",
    "dnsPolicy",
    "nodeSelector",
    "serviceAccountName",
    "serviceAccount",
    "nodeName",
    "hostNetwork",
    "projected",
    "sources",
    "serviceAccountToken",
    "configMap",
    "downwardAPI",
    "expirationSeconds",
    "key",
    "operator",
    "value",
    "effect",
    "tolerationSeconds",
    "path",
    "fieldRef",
    "fieldPath",
    "defaultMode",
    "state",
    "lastState",
    "waiting",
    "running",
    "terminated",
    "ready",
    "restartCount",
    "image",
    "imageID",
    "command",
    "args",
    "workingDir",
    "ports",
    "containerPort",
    "protocol",
    "envFrom",
    "env",
    "resources",
    "volumeMounts",
    "readOnly",
    "mountPath",
    "terminationMessagePath",
    "terminationMessagePolicy",
    "imagePullPolicy",
    "securityContext",
    "affinity",
    "schedulerName",
    "tolerations",
    "priorityClassName",
    "priority",
    "enableServiceLinks",
    "preemptionPolicy",
    "status",
    "updatedReplicas",
    "readyReplicas",
    "availableReplicas",
    "unavailableReplicas",
    "phase",
    "conditions",
    "collisionCount",
    "hostIP",
    "hostIPs",
    "podIP",
    "podIPs",
    "ip",
    "startTime",
    "containerStatuses",
    "qosClass",
    "involvedObject",
    "exitCode",
    "signal",
    "reason",
    "message",
    "startedAt",
    "finishedAt",
    "containerID",
    "started",
    "source",
    "component",
    "host",
    "firstTimestamp",
    "lastTimestamp",
    "count",
    "type",
    "rollingUpdate",
    "maxUnavailable",
    "maxSurge",
    "eventTime",
    "series",
    "action",
    "related",
    "reportingComponent",
    "reportingInstance",
    "target",
    "gracePeriodSeconds",
    "preconditions",
    "orphanDependents",
    "propagationPolicy",
    "dryRun",
];

fn table(ctx: Ctx) -> &'static [&'static str] {
    match ctx {
        Ctx::Root => ROOT,
        Ctx::User => USER,
        Ctx::Ref => REF,
        Ctx::OwnerRef => OWNER_REF,
        Ctx::Condition => CONDITION,
        Ctx::Status => STATUS,
        Ctx::StatusDetails => STATUS_DETAILS,
        Ctx::RsStatus => RS_STATUS,
        Ctx::Generic => GENERIC,
        Ctx::Map => &[],
    }
}

/// FNV-1a: the rank tables are looked up for every key of every rendered object, and keys are
/// short, trusted strings.
#[derive(Default, Clone, Copy)]
struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

type Ranks = HashMap<&'static str, u16, std::hash::BuildHasherDefault<Fnv>>;

const CTXS: [Ctx; 9] = [
    Ctx::Root,
    Ctx::User,
    Ctx::Ref,
    Ctx::OwnerRef,
    Ctx::Condition,
    Ctx::Status,
    Ctx::StatusDetails,
    Ctx::RsStatus,
    Ctx::Generic,
];

fn ranks(ctx: Ctx) -> &'static Ranks {
    static RANKS: OnceLock<Vec<Ranks>> = OnceLock::new();
    let all = RANKS.get_or_init(|| {
        CTXS.iter()
            .map(|&c| {
                table(c)
                    .iter()
                    .enumerate()
                    .map(|(i, k)| (*k, i as u16))
                    .collect()
            })
            .collect()
    });
    let i = CTXS.iter().position(|&c| c == ctx).expect("ranked context");
    &all[i]
}

/// Sort key of `key` inside an object of context `ctx`: known fields by Go order, then
/// strategic-merge directives (`$setElementOrder/...`), then unknown keys alphabetically.
fn rank<'k>(ranks: Option<&Ranks>, key: &'k str) -> (u16, &'k str) {
    let Some(ranks) = ranks else { return (0, key) };
    if key.starts_with('$') {
        return (0, key);
    }
    match ranks.get(key) {
        Some(r) => (r + 1, ""),
        None => (u16::MAX, key),
    }
}

fn child_ctx(parent: Ctx, key: &str, value: &Value) -> Ctx {
    if parent == Ctx::Map {
        return Ctx::Map;
    }
    match key {
        "user" | "impersonatedUser" if parent == Ctx::Root => Ctx::User,
        "objectRef" | "involvedObject" | "regarding" | "related" => Ctx::Ref,
        "ownerReferences" => Ctx::OwnerRef,
        "conditions" => Ctx::Condition,
        "responseStatus" => Ctx::Status,
        "details" if parent == Ctx::Status => Ctx::StatusDetails,
        "labels" | "annotations" | "matchLabels" | "extra" | "fieldsV1" | "nodeSelector"
        | "data" => Ctx::Map,
        "status" if value.get("fullyLabeledReplicas").is_some() => Ctx::RsStatus,
        _ if value.get("kind").and_then(Value::as_str) == Some("Status") => Ctx::Status,
        _ => Ctx::Generic,
    }
}

fn write_value(out: &mut String, v: &Value, ctx: Ctx) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let ctx = if ctx != Ctx::Map
                    && item.get("kind").and_then(Value::as_str) == Some("Status")
                {
                    Ctx::Status
                } else {
                    ctx
                };
                write_value(out, item, ctx);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let table = if ctx == Ctx::Map {
                None
            } else {
                Some(ranks(ctx))
            };
            let mut keys: Vec<((u16, &str), &String, &Value)> =
                map.iter().map(|(k, v)| (rank(table, k), k, v)).collect();
            keys.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            out.push('{');
            for (i, (_, k, val)) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_str(out, k);
                out.push(':');
                write_value(out, val, child_ctx(ctx, k, val));
            }
            out.push('}');
        }
    }
}

/// JSON string escaping as serde_json does it (quotes, backslash, control characters).
fn write_str(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0x08 => Some("\\b"),
            0x0c => Some("\\f"),
            0..=0x1f => None,
            _ => continue,
        };
        out.push_str(&s[start..i]);
        match esc {
            Some(e) => out.push_str(e),
            None => out.push_str(&format!("\\u{b:04x}")),
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn orders_like_the_api_server() {
        let v = json!({
            "stageTimestamp": "b", "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
            "objectRef": {"name": "x", "resource": "pods", "namespace": "ns", "apiVersion": "v1"},
            "user": {"groups": ["a"], "username": "u"},
            "annotations": {"z": "1", "a": "2"},
            "responseObject": {"status": {}, "spec": {}, "metadata": {"namespace": "n", "name": "p", "labels": {"name": "x", "app": "y"}}, "apiVersion": "v1", "kind": "Pod"},
        });
        assert_eq!(
            event_to_json(&v),
            r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","user":{"username":"u","groups":["a"]},"objectRef":{"resource":"pods","namespace":"ns","name":"x","apiVersion":"v1"},"responseObject":{"kind":"Pod","apiVersion":"v1","metadata":{"name":"p","namespace":"n","labels":{"app":"y","name":"x"}},"spec":{},"status":{}},"stageTimestamp":"b","annotations":{"a":"2","z":"1"}}"#
        );
    }

    #[test]
    fn escapes_like_serde_json() {
        let s = "a\"b\\c\nd\u{1}é/<>";
        let mut out = String::new();
        write_str(&mut out, s);
        assert_eq!(out, serde_json::to_string(s).unwrap());
    }

    #[test]
    fn round_trips() {
        let v = json!({"kind": "Status", "status": "Failure", "code": 409, "details": {"kind": "deployments", "name": "web", "group": "apps"}, "metadata": {}, "message": "m", "reason": "Conflict", "apiVersion": "v1"});
        let s = event_to_json(&json!({"responseObject": v.clone()}));
        assert!(s.contains(r#""responseObject":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"m","reason":"Conflict","details":{"name":"web","group":"apps","kind":"deployments"},"code":409}"#), "{s}");
        let back: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(back["responseObject"], v);
    }
}
