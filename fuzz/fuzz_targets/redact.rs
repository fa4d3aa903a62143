//! The redactor fails closed on any Secret body: after `redact_event`, a body that parsed
//! keeps no value of its `data`/`stringData`, and a body that did not parse (nesting past the
//! parser's limit, say) is replaced whole. Then the decorator diffs the redacted bodies, which
//! must not panic either.
#![no_main]

use kubetrail_decorate::{
    DecorateConfig, Decorator, RedactConfig, Salt, SaltSecret, UNREDACTABLE_BODY, redact_event,
};
use kubetrail_model::{AuditEvent, ObjectRef};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use serde_json::value::RawValue;

fn secret_event(verb: &str, body: Box<RawValue>) -> Option<AuditEvent> {
    let mut e: AuditEvent = serde_json::from_str(
        r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"RequestResponse",
        "auditID":"fuzz","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/ns/secrets/s",
        "verb":"create","user":{"username":"fuzz"},
        "objectRef":{"resource":"secrets","namespace":"ns","name":"s","apiVersion":"v1"},
        "responseStatus":{"metadata":{},"code":200},
        "requestReceivedTimestamp":"2024-05-01T10:00:00Z","stageTimestamp":"2024-05-01T10:00:01Z"}"#,
    )
    .ok()?;
    e.verb = verb.to_owned();
    e.request_object = Some(body.clone());
    e.response_object = Some(body);
    Some(e)
}

/// The string values of `data` and `stringData` of a parsed body, by (field, key).
fn secret_values(v: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for field in ["data", "stringData"] {
        if let Some(m) = v.get(field).and_then(Value::as_object) {
            for (k, x) in m {
                if let Some(s) = x.as_str() {
                    out.push((field.to_owned(), k.clone(), s.to_owned()));
                }
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The audit event's body is raw JSON: anything the JSON grammar accepts, at any depth.
    let Ok(raw) = RawValue::from_string(text.to_owned()) else {
        return;
    };
    let Some(mut event) = secret_event("update", raw) else {
        return;
    };
    let salt = Salt::from_secret(&SaltSecret::new("a fuzzing salt, 16+ chars"));
    redact_event(&mut event, &RedactConfig::default(), &salt);
    let parsed: Option<Value> = serde_json::from_str(text).ok();
    for body in [&event.request_object, &event.response_object] {
        let out = body.as_deref().map(RawValue::get).unwrap_or("null");
        match &parsed {
            None => assert_eq!(
                serde_json::from_str::<Value>(out).ok(),
                Some(Value::String(UNREDACTABLE_BODY.to_owned())),
                "an unparseable Secret body must be replaced whole"
            ),
            Some(original) => {
                let after: Value = serde_json::from_str(out).expect("redacted JSON parses");
                for (field, key, value) in secret_values(original) {
                    let kept = after
                        .get(&field)
                        .and_then(|m| m.get(&key))
                        .and_then(Value::as_str);
                    assert!(
                        kept != Some(value.as_str()) || value.starts_with("<redacted"),
                        "{field}.{key} survived redaction"
                    );
                }
            }
        }
    }
    // The decorator on what came out: create, then an update with the same body.
    let decorator = Decorator::new(DecorateConfig::default());
    let object = ObjectRef {
        group: String::new(),
        resource: "secrets".into(),
        namespace: "ns".into(),
        name: "s".into(),
        uid: None,
        cluster: None,
    };
    if let Some(body) = event.response_object.clone()
        && let Some(mut create) = secret_event("create", body)
    {
        decorator.redact(&mut create);
        let _ = decorator.decorate("fuzz", &object, &create);
        let _ = decorator.decorate("fuzz", &object, &event);
    }
});
