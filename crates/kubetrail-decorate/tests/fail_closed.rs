//! Redaction fails closed: a body that has to be redacted but cannot be parsed (nested
//! deeper than the JSON parser allows, say) is replaced whole and counted, never passed on
//! as it came; nesting of any depth and shape costs nothing else (no panic, no overflow).

use kubetrail_decorate::{
    DecorateConfig, Decorator, RedactConfig, Salt, UNREDACTABLE_BODY, redact_event_report,
};
use kubetrail_model::{AuditEvent, ObjectRef};
use proptest::prelude::*;

const PLANTED: &str = "s3cr3t-value-PLANTED";

fn salt() -> Salt {
    Salt::fixed(*b"0123456789abcdef")
}

/// An event about `resource` whose request body is the JSON text `body`.
fn event_with_body(resource: &str, body: &str) -> Option<AuditEvent> {
    let text = format!(
        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"RequestResponse","auditID":"a1",
        "stage":"ResponseComplete","requestURI":"/api/v1/namespaces/shop/{resource}/db","verb":"update",
        "user":{{"username":"kubectl"}},
        "objectRef":{{"resource":"{resource}","namespace":"shop","name":"db","apiVersion":"v1"}},
        "responseStatus":{{"code":200}},"requestObject":{body}}}"#
    );
    serde_json::from_str(&text).ok()
}

/// `depth` levels of nesting (`open`/`close` per level) around `inner`.
fn nested(depth: usize, open: &str, close: &str, inner: &str) -> String {
    format!("{}{inner}{}", open.repeat(depth), close.repeat(depth))
}

fn text_of(e: &AuditEvent) -> String {
    serde_json::to_string(e).unwrap()
}

#[test]
fn a_secret_too_deep_to_parse_is_replaced_whole_and_counted() {
    let deep = nested(200, r#"{"x":"#, "}", "1");
    let body = format!(
        r#"{{"kind":"Secret","metadata":{{"name":"db"}},"data":{{"password":"{PLANTED}"}},"deep":{deep}}}"#
    );
    let mut e = event_with_body("secrets", &body).expect("the event itself decodes");
    assert!(
        serde_json::from_str::<serde_json::Value>(&body).is_err(),
        "too deep for serde_json"
    );
    let r = redact_event_report(&mut e, &RedactConfig::default(), &salt());
    assert_eq!(r.whole_bodies, 1);
    assert_eq!(
        e.request_object.as_ref().unwrap().get(),
        format!("\"{UNREDACTABLE_BODY}\"")
    );
    assert!(!text_of(&e).contains(PLANTED));
    // Redacting again changes nothing (the consumer redacts what the receiver redacted).
    let before = text_of(&e);
    let again = redact_event_report(&mut e, &RedactConfig::default(), &salt());
    assert_eq!((again.values, again.whole_bodies), (0, 0));
    assert_eq!(text_of(&e), before);
}

#[test]
fn a_deep_body_that_mentions_a_secret_is_replaced_whole() {
    // A ConfigMap is no secret resource, but its body contains a Secret (a List) that
    // cannot be parsed to be redacted.
    let deep = nested(300, "[", "]", "0");
    let body = format!(
        r#"{{"kind":"List","items":[{{"kind":"Secret","data":{{"k":"{PLANTED}"}}}}],"x":{deep}}}"#
    );
    let mut e = event_with_body("configmaps", &body).unwrap();
    let r = redact_event_report(&mut e, &RedactConfig::default(), &salt());
    assert_eq!(r.whole_bodies, 1);
    assert!(!text_of(&e).contains(PLANTED));

    // A configured path may be inside: the same.
    let body = format!(r#"{{"spec":{{"token":"{PLANTED}"}},"x":{deep}}}"#);
    let mut e = event_with_body("configmaps", &body).unwrap();
    let cfg = RedactConfig {
        paths: vec!["spec.token".into()],
        ..RedactConfig::default()
    };
    assert_eq!(redact_event_report(&mut e, &cfg, &salt()).whole_bodies, 1);
    assert!(!text_of(&e).contains(PLANTED));
}

#[test]
fn a_deep_body_with_nothing_to_redact_is_left_as_it_was() {
    let body = format!(
        r#"{{"kind":"ConfigMap","x":{}}}"#,
        nested(300, "[", "]", "0")
    );
    let mut e = event_with_body("configmaps", &body).unwrap();
    let r = redact_event_report(&mut e, &RedactConfig::default(), &salt());
    assert_eq!((r.values, r.whole_bodies), (0, 0));
    assert_eq!(e.request_object.as_ref().unwrap().get(), body);
}

/// One level of nesting.
#[derive(Debug, Clone, Copy)]
enum Level {
    Object,
    Array,
    /// `{"items":[...]}`, as a list body.
    Items,
}

fn level() -> impl Strategy<Value = Level> {
    prop_oneof![Just(Level::Object), Just(Level::Array), Just(Level::Items)]
}

fn wrap(levels: &[Level], inner: &str) -> String {
    let mut open = String::new();
    let mut close = String::new();
    for l in levels {
        let (o, c) = match l {
            Level::Object => (r#"{"k":"#, "}"),
            Level::Array => ("[", "]"),
            Level::Items => (r#"{"items":["#, "]}"),
        };
        open.push_str(o);
        close.insert_str(0, c);
    }
    format!("{open}{inner}{close}")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, failure_persistence: None, ..ProptestConfig::default() })]

    /// Nesting of any depth (0–400) and shape, beside a Secret's values or around them, in
    /// every body shape a Secret travels in: the value never survives; a body that parses
    /// is redacted value by value, one that does not is replaced whole; the decorator
    /// (diffs, snapshots) copes with whatever is left.
    #[test]
    fn no_secret_survives_any_nesting(
        levels in prop::collection::vec(level(), 0..400),
        shape in 0u8..5,
        resource in prop_oneof![Just("secrets"), Just("configmaps")],
    ) {
        let deep = wrap(&levels, "0");
        let around = wrap(&levels, &format!("\"{PLANTED}\""));
        let (resource, body) = match shape {
            // A Secret with deep nesting beside its data.
            0 => (resource, format!(
                r#"{{"kind":"Secret","data":{{"password":"{PLANTED}"}},"x":{deep}}}"#
            )),
            // A Secret whose value is itself nested (a malformed but possible body).
            1 => (resource, format!(r#"{{"kind":"Secret","stringData":{{"password":{around}}}}}"#)),
            // A SecretList (a deletecollection response) with nesting in an item.
            2 => (resource, format!(
                r#"{{"kind":"SecretList","items":[{{"kind":"Secret","metadata":{{"name":"a","labels":{{"x":{deep}}}}},"data":{{"k":"{PLANTED}"}}}}]}}"#
            )),
            // A merge patch of a Secret.
            3 => ("secrets", format!(r#"{{"data":{{"k":"{PLANTED}"}},"metadata":{{"x":{deep}}}}}"#)),
            // A JSON patch of a Secret, its value nested.
            _ => ("secrets", format!(r#"[{{"op":"add","path":"/data/k","value":{around}}}]"#)),
        };
        let Some(mut e) = event_with_body(resource, &body) else {
            // Not even an event: rejected as malformed before anything reads it.
            return Ok(());
        };
        let parses = serde_json::from_str::<serde_json::Value>(&body).is_ok();
        let r = redact_event_report(&mut e, &RedactConfig::default(), &salt());
        let text = text_of(&e);
        prop_assert!(!text.contains(PLANTED), "{}", text);
        if parses {
            prop_assert!(r.values >= 1, "{:?}", r);
            prop_assert_eq!(r.whole_bodies, 0);
        } else {
            prop_assert_eq!(r.whole_bodies, 1);
        }
        let d = Decorator::new(DecorateConfig::default());
        if let Some(object) = ObjectRef::from_event(&e, None) {
            let _ = d.decorate("c", &object, &e);
        }
    }
}
