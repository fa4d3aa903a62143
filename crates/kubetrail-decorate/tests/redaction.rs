//! Secrets never leave: `redact_event` on planted values.

mod common;

use common::*;
use kubetrail_decorate::{DecorateConfig, Decorator, RedactConfig, Salt, redact_event};
use kubetrail_model::AuditEvent;
use kubetrail_testkit::base64;
use proptest::prelude::*;
use serde_json::{Value, json};

const PLANTED: &str = "s3cr3t-value-PLANTED";

fn salt() -> Salt {
    Salt::fixed(*b"0123456789abcdef")
}

fn secret_event(verb: &str, request: Option<Value>, response: Option<Value>) -> AuditEvent {
    let mut e = json!({
        "kind":"Event","apiVersion":"audit.k8s.io/v1","level":"RequestResponse","auditID":"s","stage":"ResponseComplete",
        "requestURI":"/api/v1/namespaces/shop/secrets/db","verb":verb,"user":{"username":"kubectl"},
        "objectRef":{"resource":"secrets","namespace":"shop","name":"db","apiVersion":"v1"},
        "responseStatus":{"metadata":{},"code":200}
    });
    if let Some(r) = request {
        e["requestObject"] = r;
    }
    if let Some(r) = response {
        e["responseObject"] = r;
    }
    event(e)
}

fn secret_body(password: &str) -> Value {
    let applied = json!({"apiVersion":"v1","kind":"Secret","metadata":{"name":"db"},
        "stringData":{"password":password},"data":{"token":base64(password.as_bytes())}});
    json!({"kind":"Secret","apiVersion":"v1",
        "metadata":{"name":"db","namespace":"shop","uid":"u-s","resourceVersion":"1","labels":{"app":"db"},
            "annotations":{"kubectl.kubernetes.io/last-applied-configuration":applied.to_string(),"owner":"team-a"}},
        "type":"Opaque",
        "data":{"password":base64(password.as_bytes()),"username":base64(b"admin")},
        "stringData":{"extra":password}})
}

/// Asserts that nothing of the planted value is left anywhere in the event.
fn assert_clean(e: &AuditEvent) -> String {
    let text = serde_json::to_string(e).unwrap();
    assert!(!text.contains(PLANTED), "{text}");
    assert!(!text.contains(&base64(PLANTED.as_bytes())), "{text}");
    text
}

fn body(raw: &Option<Box<serde_json::value::RawValue>>) -> Value {
    serde_json::from_str(raw.as_ref().unwrap().get()).unwrap()
}

#[test]
fn secret_data_string_data_and_last_applied() {
    let mut e = secret_event(
        "create",
        Some(secret_body(PLANTED)),
        Some(secret_body(PLANTED)),
    );
    let n = redact_event(&mut e, &RedactConfig::default(), &salt());
    // Per body: password, username, extra, last-applied.
    assert_eq!(n, 8);
    assert_clean(&e);
    let resp = body(&e.response_object);
    assert_eq!(resp["type"], "Opaque");
    assert_eq!(resp["metadata"]["labels"]["app"], "db");
    assert_eq!(resp["metadata"]["annotations"]["owner"], "team-a");
    assert_eq!(resp["metadata"]["name"], "db");
    let marker = resp["data"]["password"].as_str().unwrap();
    assert!(
        marker.starts_with("<redacted sha256:") && marker.len() == 26,
        "{marker}"
    );
    // Equal values, equal markers; different values, different markers.
    assert_eq!(
        resp["data"]["password"],
        body(&e.request_object)["data"]["password"]
    );
    assert_ne!(resp["data"]["password"], resp["data"]["username"]);
    // Idempotent.
    let before = serde_json::to_string(&e).unwrap();
    assert_eq!(redact_event(&mut e, &RedactConfig::default(), &salt()), 0);
    assert_eq!(serde_json::to_string(&e).unwrap(), before);
}

#[test]
fn strategic_merge_and_json_patches_of_secrets() {
    let smp = json!({"metadata":{"annotations":{"kubectl.kubernetes.io/last-applied-configuration":
            format!("{{\"stringData\":{{\"password\":\"{PLANTED}\"}}}}")}},
        "data":{"password":base64(PLANTED.as_bytes())},"stringData":{"password":PLANTED}});
    let mut e = secret_event("patch", Some(smp), Some(secret_body(PLANTED)));
    assert!(redact_event(&mut e, &RedactConfig::default(), &salt()) >= 7);
    assert_clean(&e);

    let jp = json!([
        {"op":"replace","path":"/data/password","value":base64(PLANTED.as_bytes())},
        {"op":"add","path":"/stringData","value":{"a":PLANTED,"b":PLANTED}},
        {"op":"replace","path":"/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration","value":PLANTED},
        {"op":"add","path":"/metadata/annotations","value":{"kubectl.kubernetes.io/last-applied-configuration":PLANTED,"keep":"me"}},
        {"op":"replace","path":"","value":{"kind":"Secret","data":{"x":base64(PLANTED.as_bytes())}}},
        {"op":"test","path":"/metadata/labels/app","value":"keep-me"},
        {"op":"remove","path":"/data/old"}
    ]);
    let mut e = secret_event("patch", Some(jp), None);
    let n = redact_event(&mut e, &RedactConfig::default(), &salt());
    assert_eq!(n, 6);
    assert_clean(&e);
    let ops = body(&e.request_object);
    assert_eq!(ops[3]["value"]["keep"], "me");
    assert_eq!(ops[5]["value"], "keep-me");
    assert_eq!(ops[6], json!({"op":"remove","path":"/data/old"}));
}

#[test]
fn configured_paths_in_objects_and_json_patches() {
    let cfg = RedactConfig {
        paths: vec![
            "spec.template.spec.containers[*].env[*].value".into(),
            "metadata.annotations.example.com/token".into(),
        ],
        resources: vec![],
        ..RedactConfig::default()
    };
    let containers = json!([{"name":"web","image":"nginx:1.25",
        "env":[{"name":"DB_PASSWORD","value":PLANTED},{"name":"MODE","value":PLANTED}]}]);
    let mut b = deployment("u1", "1", containers.clone());
    // `kubectl apply` keeps a copy of the applied object, env values included.
    let applied =
        json!({"kind":"Deployment","spec":{"template":{"spec":{"containers":containers}}}});
    b["metadata"]["annotations"] = json!({"example.com/token": PLANTED, "example.com/other": "visible",
        "kubectl.kubernetes.io/last-applied-configuration": applied.to_string()});
    let mut e = deploy_event("create", None, 201, Some(b.clone()), Some(b));
    assert_eq!(redact_event(&mut e, &cfg, &salt()), 10);
    assert_clean(&e);
    let resp = body(&e.response_object);
    let c = &resp["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["env"][0]["name"], "DB_PASSWORD");
    assert_eq!(c["image"], "nginx:1.25");
    assert_eq!(
        resp["metadata"]["annotations"]["example.com/other"],
        "visible"
    );
    let applied: Value = serde_json::from_str(
        resp["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        applied["spec"]["template"]["spec"]["containers"][0]["env"][1]["name"],
        "MODE"
    );

    let jp = json!([
        {"op":"replace","path":"/spec/template/spec/containers/0/env/1/value","value":PLANTED},
        {"op":"add","path":"/spec/template/spec/containers/0/env/-","value":{"name":"N","value":PLANTED}},
        {"op":"replace","path":"/spec/replicas","value":5}
    ]);
    let mut e = deploy_event("patch", None, 200, Some(jp), None);
    assert_eq!(redact_event(&mut e, &cfg, &salt()), 2);
    assert_clean(&e);
    assert_eq!(body(&e.request_object)[2]["value"], 5);
}

#[test]
fn secret_lists_and_configured_resources() {
    // A deletecollection of secrets answers with the deleted Secrets (items carry no kind).
    let list = json!({"kind":"SecretList","apiVersion":"v1","metadata":{},
        "items":[{"metadata":{"name":"a"},"data":{"k":base64(PLANTED.as_bytes())}},
                 {"metadata":{"name":"b"},"stringData":{"k":PLANTED}}]});
    let mut e = secret_event("deletecollection", None, Some(list));
    assert_eq!(redact_event(&mut e, &RedactConfig::default(), &salt()), 2);
    assert_clean(&e);

    // A Secret inside a generic List of another resource's response.
    let mut e = deploy_event(
        "create",
        None,
        201,
        None,
        Some(
            json!({"kind":"List","items":[{"kind":"Secret","data":{"k":PLANTED}},{"kind":"ConfigMap","data":{"k":"plain"}}]}),
        ),
    );
    assert_eq!(redact_event(&mut e, &RedactConfig::default(), &salt()), 1);
    let text = assert_clean(&e);
    assert!(text.contains("plain"));

    // A real ConfigMap with credentials in it, redacted by configuration.
    let mut events =
        sample_events("falco-trace-files-k8s-audit/create_configmap_sensitive_values.json");
    let cfg = RedactConfig {
        paths: vec![],
        resources: vec!["configmaps".into()],
        ..RedactConfig::default()
    };
    for e in &mut events {
        assert!(serde_json::to_string(e).unwrap().contains("MY-KEY"));
        assert_eq!(redact_event(e, &cfg, &salt()), 4);
        let text = serde_json::to_string(e).unwrap();
        assert!(!text.contains("MY-KEY"), "{text}");
        assert!(text.contains("my-config"));
    }
}

#[test]
fn tokens_of_token_requests_and_reviews() {
    let mut e = event(json!({
        "level":"RequestResponse","auditID":"t","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/shop/serviceaccounts/default/token",
        "verb":"create","user":{"username":"system:node:n1"},
        "objectRef":{"resource":"serviceaccounts","namespace":"shop","name":"default","apiVersion":"v1","subresource":"token"},
        "responseStatus":{"code":201},
        "requestObject":{"kind":"TokenRequest","spec":{"audiences":["api"]}},
        "responseObject":{"kind":"TokenRequest","spec":{"audiences":["api"]},"status":{"token":PLANTED,"expirationTimestamp":"2024-05-01T11:00:00Z"}}
    }));
    assert_eq!(redact_event(&mut e, &RedactConfig::default(), &salt()), 1);
    let text = assert_clean(&e);
    assert!(text.contains("expirationTimestamp"));
}

#[test]
fn other_events_are_left_byte_for_byte() {
    let mut events = sample_events("openshift-cluster-logging-operator/audit_in.log");
    for e in &mut events {
        let before = serde_json::to_string(e).unwrap();
        assert_eq!(redact_event(e, &RedactConfig::default(), &salt()), 0);
        assert_eq!(serde_json::to_string(e).unwrap(), before);
    }
}

#[test]
fn real_flux_secret_patch() {
    let mut events = sample_events("gitops-reverser/flux-secret-dryrun-patch-eventlist.jsonl");
    assert_eq!(events.len(), 1);
    let e = &mut events[0];
    assert_eq!(redact_event(e, &RedactConfig::default(), &salt()), 1);
    let text = serde_json::to_string(e).unwrap();
    assert!(!text.contains("never-commit-this"), "{text}");
    assert!(text.contains("bi-secret-1781599981478403287"));
}

#[test]
fn diffs_of_redacted_secrets_show_only_real_changes() {
    let d = Decorator::new(DecorateConfig::default());
    let obj = kubetrail_model::ObjectRef {
        resource: "secrets".into(),
        namespace: "shop".into(),
        name: "db".into(),
        ..Default::default()
    };
    let mut create = secret_event("create", None, Some(secret_body(PLANTED)));
    create.response_status.as_mut().unwrap().code = Some(201);
    assert!(d.redact(&mut create) > 0);
    let snap = d.decorate("c", &obj, &create).snapshot.unwrap();
    assert!(!snap.contains(PLANTED) && !snap.contains(&base64(PLANTED.as_bytes())));

    // Same values again, new resourceVersion: a no-op.
    let mut same = secret_body(PLANTED);
    same["metadata"]["resourceVersion"] = json!("2");
    let mut update = secret_event("update", None, Some(same));
    d.redact(&mut update);
    let out = d.decorate("c", &obj, &update);
    assert!(out.had_prior_state && out.noop, "{:?}", out.changes);

    // One value changed: exactly that key, shown as two markers.
    let mut changed = secret_body(PLANTED);
    changed["data"]["username"] = json!(base64(b"root"));
    let mut update = secret_event("update", None, Some(changed));
    d.redact(&mut update);
    let out = d.decorate("c", &obj, &update);
    assert_eq!(out.changes.len(), 1, "{:?}", out.changes);
    let c = &out.changes[0];
    assert_eq!(c.path, "data.username");
    assert!(c.old.as_deref().unwrap().starts_with("<redacted sha256:"));
    assert!(c.new.as_deref().unwrap().starts_with("<redacted sha256:"));
    assert_ne!(c.old, c.new);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Whatever a Secret holds, and however it is written (object, list item, merge patch,
    /// JSON patch), none of its values survive.
    #[test]
    fn no_secret_value_survives(
        values in prop::collection::btree_map("[a-z]{1,8}", "[A-Za-z0-9+/]{12,24}", 1..5),
        shape in 0u8..4,
    ) {
        let data: serde_json::Map<String, Value> =
            values.iter().map(|(k, v)| (k.clone(), json!(base64(v.as_bytes())))).collect();
        let string_data: serde_json::Map<String, Value> =
            values.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        let secret = json!({"kind":"Secret","metadata":{"name":"db"},"data":data,"stringData":string_data});
        let (request, response) = match shape {
            0 => (Some(secret.clone()), Some(secret)),
            1 => (None, Some(json!({"kind":"SecretList","items":[secret]}))),
            2 => (Some(json!({"data":data,"stringData":string_data})), None),
            _ => (
                Some(Value::from(
                    values
                        .iter()
                        .flat_map(|(k, v)| {
                            [
                                json!({"op":"add","path":format!("/data/{k}"),"value":base64(v.as_bytes())}),
                                json!({"op":"add","path":"/stringData","value":{k.clone(): v}}),
                            ]
                        })
                        .collect::<Vec<_>>(),
                )),
                None,
            ),
        };
        let mut e = secret_event("patch", request, response);
        prop_assert!(redact_event(&mut e, &RedactConfig::default(), &salt()) >= values.len());
        let text = serde_json::to_string(&e).unwrap();
        for v in values.values() {
            prop_assert!(!text.contains(v.as_str()), "{} in {}", v, text);
            prop_assert!(!text.contains(&base64(v.as_bytes())), "{} in {}", v, text);
        }
    }
}
