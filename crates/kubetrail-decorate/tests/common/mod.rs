//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use kubetrail_model::{AuditEvent, ObjectHead, ObjectRef};
use serde_json::{Value, json};

/// `testdata/audit-samples/<rel>`.
pub fn sample_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/audit-samples")
        .join(rel)
}

/// The events of a JSON-lines sample file (EventList lines are unpacked).
pub fn sample_events(rel: &str) -> Vec<AuditEvent> {
    let text = std::fs::read_to_string(sample_path(rel)).unwrap();
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap();
        if v.get("kind").and_then(Value::as_str) == Some("EventList") {
            for it in v["items"].as_array().unwrap() {
                out.push(serde_json::from_value(it.clone()).unwrap());
            }
        } else {
            out.push(serde_json::from_value(v).unwrap());
        }
    }
    out
}

/// The object an event is about, placed the way the pipeline places it.
pub fn place(e: &AuditEvent) -> Option<ObjectRef> {
    let sub = e.object_ref.as_ref().and_then(|r| r.subresource.as_deref());
    let head = e
        .object_body()
        .and_then(|b| ObjectHead::parse(b).ok())
        .filter(|_| matches!(sub, None | Some("status")))
        .filter(|h| h.kind.as_deref() != Some("Status"));
    ObjectRef::from_event(e, head.as_ref())
}

/// An event from JSON.
pub fn event(v: Value) -> AuditEvent {
    serde_json::from_value(v).unwrap()
}

/// A completed request about `deployments.apps/shop/web`.
pub fn deploy_event(
    verb: &str,
    sub: Option<&str>,
    code: i32,
    request: Option<Value>,
    response: Option<Value>,
) -> AuditEvent {
    let mut object_ref = json!({"resource":"deployments","apiGroup":"apps","apiVersion":"v1","namespace":"shop","name":"web"});
    if let Some(s) = sub {
        object_ref["subresource"] = json!(s);
    }
    let level = if response.is_some() {
        "RequestResponse"
    } else if request.is_some() {
        "Request"
    } else {
        "Metadata"
    };
    let mut e = json!({
        "kind":"Event","apiVersion":"audit.k8s.io/v1","level":level,"auditID":"a","stage":"ResponseComplete",
        "requestURI":"/apis/apps/v1/namespaces/shop/deployments/web","verb":verb,
        "user":{"username":"kubectl"},"objectRef":object_ref,
        "responseStatus":{"metadata":{},"code":code},
        "requestReceivedTimestamp":"2024-05-01T10:00:00.000000Z","stageTimestamp":"2024-05-01T10:00:00.001000Z"
    });
    if let Some(r) = request {
        e["requestObject"] = r;
    }
    if let Some(r) = response {
        e["responseObject"] = r;
    }
    event(e)
}

/// The identity of `deployments.apps/shop/web`.
pub fn web() -> ObjectRef {
    ObjectRef {
        group: "apps".into(),
        resource: "deployments".into(),
        namespace: "shop".into(),
        name: "web".into(),
        uid: None,
        cluster: None,
    }
}

/// A Deployment body.
pub fn deployment(uid: &str, rv: &str, containers: Value) -> Value {
    json!({
        "kind":"Deployment","apiVersion":"apps/v1",
        "metadata":{"name":"web","namespace":"shop","uid":uid,"resourceVersion":rv,"generation":1,
            "creationTimestamp":"2024-05-01T10:00:00Z","labels":{"app":"web"},
            "managedFields":[{"manager":"kubectl","operation":"Update","fieldsV1":{"f:spec":{}}}]},
        "spec":{"replicas":3,"selector":{"matchLabels":{"app":"web"}},
            "template":{"metadata":{"labels":{"app":"web"}},"spec":{"containers":containers}}},
        "status":{"observedGeneration":1,"replicas":3,"conditions":[
            {"type":"Available","status":"True","lastUpdateTime":"2024-05-01T10:00:00Z","lastTransitionTime":"2024-05-01T10:00:00Z","reason":"MinimumReplicasAvailable"},
            {"type":"Progressing","status":"True","lastUpdateTime":"2024-05-01T10:00:00Z","lastTransitionTime":"2024-05-01T10:00:00Z","reason":"NewReplicaSetAvailable"}]}
    })
}
