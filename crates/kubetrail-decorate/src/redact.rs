//! Redaction of secret values in audit event bodies.

use std::fmt::{self, Write as _};
use std::sync::LazyLock;

use kubetrail_model::AuditEvent;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::RedactConfig;
use crate::path::{Action, Pattern, pointer_tokens};

/// The per-process secret mixed into every redaction marker's hash, so that a marker proves
/// "same value as before" or "changed" without allowing anyone to guess the value by hashing
/// candidates (a secret's value is often short and guessable).
///
/// Its `Debug` output does not show the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Salt([u8; 16]);

impl Salt {
    /// A salt from the operating system's random source: the normal choice, once per process.
    pub fn random() -> Salt {
        Salt(rand::random())
    }

    /// A fixed salt, for tests and for deployments that want markers to agree across
    /// processes (every consumer, or a replay compared with a live run). Whoever knows it can
    /// test guesses of a redacted value against its marker, so keep it as secret as the
    /// values.
    pub fn fixed(bytes: [u8; 16]) -> Salt {
        Salt(bytes)
    }

    /// A salt derived from a configured secret text (`decorate.redact.salt`,
    /// `KUBETRAIL_REDACT_SALT`, or the content of `decorate.redact.salt_file`): every process
    /// given the same text produces the same markers, so two `receive` replicas and the
    /// `consume` processes behind them agree.
    pub fn from_secret(secret: &SaltSecret) -> Salt {
        let mut h = Sha256::new();
        h.update(b"kubetrail redaction salt v1\0");
        h.update(secret.0.as_bytes());
        let digest = h.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        Salt(bytes)
    }
}

/// A configured salt text. Its `Debug` output does not show it.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct SaltSecret(String);

impl SaltSecret {
    /// Shortest accepted salt text: a short salt can be guessed, and with it every value.
    pub const MIN_LEN: usize = 16;

    /// Wraps a salt text (surrounding whitespace, such as a file's final newline, removed).
    pub fn new(text: &str) -> SaltSecret {
        SaltSecret(text.trim().to_owned())
    }

    /// Why the text cannot be used, if it cannot.
    pub fn problem(&self) -> Option<String> {
        (self.0.trim().len() < Self::MIN_LEN).then(|| {
            format!(
                "the redaction salt must be at least {} characters (it has {})",
                Self::MIN_LEN,
                self.0.trim().len()
            )
        })
    }
}

impl fmt::Debug for SaltSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SaltSecret(..)")
    }
}

/// What replaces a whole body that has to be redacted but cannot be (it does not parse, e.g.
/// nested deeper than the JSON parser's limit): nothing of it is kept.
pub const UNREDACTABLE_BODY: &str = "<redacted: body could not be parsed for redaction>";

/// What one redaction pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Redaction {
    /// Values replaced by markers.
    pub values: usize,
    /// Whole bodies replaced by [`UNREDACTABLE_BODY`] (fail closed).
    pub whole_bodies: usize,
}

impl fmt::Debug for Salt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Salt(..)")
    }
}

const MARKER_PREFIX: &str = "<redacted sha256:";
const MARKER_LEN: usize = MARKER_PREFIX.len() + 8 + 1;

/// Whether a value is already a redaction marker (redacting twice keeps the first marker).
fn is_marker(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        s == UNREDACTABLE_BODY
            || s.len() == MARKER_LEN
                && s.starts_with(MARKER_PREFIX)
                && s.ends_with('>')
                && s[MARKER_PREFIX.len()..MARKER_LEN - 1]
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit())
    })
}

/// Replaces values with markers and counts them.
pub(crate) struct Redactor {
    hasher: Sha256,
    pub(crate) count: usize,
}

impl Redactor {
    pub(crate) fn new(salt: &Salt) -> Redactor {
        let mut hasher = Sha256::new();
        hasher.update(salt.0);
        Redactor { hasher, count: 0 }
    }

    /// Replaces `v` with `<redacted sha256:XXXXXXXX>`. Nulls (nothing to hide) and markers are
    /// left alone.
    pub(crate) fn redact(&mut self, v: &mut Value) {
        if v.is_null() || is_marker(v) {
            return;
        }
        let mut h = self.hasher.clone();
        match &*v {
            Value::String(s) => {
                h.update(b"s");
                h.update(s.as_bytes());
            }
            other => {
                h.update(b"j");
                h.update(serde_json::to_vec(other).unwrap_or_default());
            }
        }
        let digest = h.finalize();
        let mut m = String::with_capacity(MARKER_LEN);
        m.push_str(MARKER_PREFIX);
        for b in &digest[..4] {
            let _ = write!(m, "{b:02x}");
        }
        m.push('>');
        *v = Value::String(m);
        self.count += 1;
    }
}

/// The fields of a Secret that hold its values.
const SECRET_FIELDS: &[&str] = &["data", "stringData", "binaryData"];

/// Paths redacted in Secrets (and in objects of the configured `resources`): each value of
/// `data`, `stringData` and `binaryData` separately (so a diff tells which key changed), and
/// the `kubectl apply` annotation, which holds a copy of the whole object, data included.
static SECRET_PATHS: LazyLock<Vec<Pattern>> = LazyLock::new(|| {
    [
        "data.*",
        "stringData.*",
        "binaryData.*",
        r#"metadata.annotations["kubectl.kubernetes.io/last-applied-configuration"]"#,
    ]
    .iter()
    .map(|p| Pattern::parse(p))
    .collect()
});

/// Bearer tokens in bodies that are not Secrets: a `TokenRequest` (`serviceaccounts/token`)
/// response, and the token a `TokenReview` checks.
static TOKEN_REQUEST_PATHS: LazyLock<Vec<Pattern>> =
    LazyLock::new(|| vec![Pattern::parse("status.token")]);
static TOKEN_REVIEW_PATHS: LazyLock<Vec<Pattern>> =
    LazyLock::new(|| vec![Pattern::parse("spec.token")]);

/// Redaction rules compiled from a [`RedactConfig`].
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    paths: Vec<Pattern>,
    /// Texts a body must contain for `paths` to apply to it (`None`: parse every body).
    needles: Option<Vec<String>>,
    resources: Vec<String>,
}

impl Rules {
    pub(crate) fn compile(config: &RedactConfig) -> Rules {
        let paths: Vec<Pattern> = config.paths.iter().map(|p| Pattern::parse(p)).collect();
        let needles = paths
            .iter()
            .map(Pattern::needles)
            .collect::<Option<Vec<_>>>()
            .map(|n| n.concat());
        Rules {
            paths,
            needles,
            resources: config.resources.clone(),
        }
    }

    /// Redacts both bodies of `event`. Fails closed: a body that has to be looked into (a
    /// secret resource's, one that mentions a Secret, one a token or configured path may be
    /// in) but does not parse is replaced whole by [`UNREDACTABLE_BODY`].
    pub(crate) fn redact_event(&self, event: &mut AuditEvent, salt: &Salt) -> Redaction {
        let (group, resource, sub) = event.object_ref.as_ref().map_or(("", "", None), |r| {
            (
                r.api_group.as_deref().unwrap_or(""),
                r.resource.as_deref().unwrap_or(""),
                r.subresource.as_deref(),
            )
        });
        let secretish = (group.is_empty() && resource == "secrets")
            || self.resources.iter().any(|r| {
                r.split_once('.')
                    .map_or(group.is_empty() && r == resource, |(rr, g)| {
                        rr == resource && g == group
                    })
            });
        let tokens: &[Pattern] = match (group, resource, sub) {
            ("", "serviceaccounts", Some("token")) => &TOKEN_REQUEST_PATHS,
            ("authentication.k8s.io", "tokenreviews", _) => &TOKEN_REVIEW_PATHS,
            _ => &[],
        };
        let mut r = Redactor::new(salt);
        let mut whole_bodies = 0;
        for body in [&mut event.request_object, &mut event.response_object] {
            let Some(raw) = body.as_ref() else {
                continue;
            };
            // Most bodies need no parsing: not a secret resource, no Secret (or SecretList)
            // inside, and no configured path can match (its last key is not in the text).
            let text = raw.get();
            let paths_may_match = !self.paths.is_empty()
                && self
                    .needles
                    .as_ref()
                    .is_none_or(|n| n.iter().any(|x| text.contains(x.as_str())));
            if !secretish && tokens.is_empty() && !paths_may_match && !text.contains("\"Secret") {
                continue;
            }
            let Ok(mut v) = serde_json::from_str::<Value>(raw.get()) else {
                *body = Some(unredactable_body());
                whole_bodies += 1;
                continue;
            };
            let before = r.count;
            self.redact_body(&mut v, secretish, tokens, &mut r);
            if r.count > before {
                // Re-serializing a Value cannot fail; were it to, dropping the body is the safe
                // way out.
                *body = Some(
                    serde_json::value::to_raw_value(&v).unwrap_or_else(|_| unredactable_body()),
                );
            }
        }
        Redaction {
            values: r.count,
            whole_bodies,
        }
    }

    fn redact_body(&self, v: &mut Value, secretish: bool, tokens: &[Pattern], r: &mut Redactor) {
        match v {
            Value::Object(_) => {
                let kind = v
                    .get("kind")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                self.redact_object(v, secretish || kind == "Secret", tokens, r);
                // A list body (a deletecollection or list response): each item.
                if (kind.is_empty() || kind.ends_with("List"))
                    && let Some(Value::Array(items)) = v.get_mut("items")
                {
                    let list_secret = secretish || kind == "SecretList";
                    for it in items.iter_mut().filter(|it| it.is_object()) {
                        let s =
                            list_secret || it.get("kind").and_then(Value::as_str) == Some("Secret");
                        self.redact_object(it, s, tokens, r);
                    }
                }
            }
            Value::Array(ops) if is_json_patch(ops) => {
                let mut patterns: Vec<&Pattern> = self.paths.iter().chain(tokens).collect();
                if secretish {
                    patterns.extend(SECRET_PATHS.iter());
                }
                for op in ops.iter_mut() {
                    let toks = pointer_tokens(op.get("path").and_then(Value::as_str).unwrap_or(""));
                    let Some(value) = op.get_mut("value") else {
                        continue;
                    };
                    if secretish
                        && toks.len() == 1
                        && SECRET_FIELDS.contains(&toks[0].as_str())
                        && !value.is_object()
                    {
                        r.redact(value);
                        continue;
                    }
                    for p in &patterns {
                        let (full, rest) = p.match_pointer(&toks);
                        if full {
                            r.redact(value);
                            break;
                        }
                        for at in rest {
                            p.apply_from(at, value, &mut Action::Redact(r));
                        }
                    }
                }
            }
            // A patch body that is not JSON (a string), or any other shape: for a secret, it
            // can only be hidden whole.
            _ if secretish => r.redact(v),
            _ => {}
        }
    }

    fn redact_object(&self, v: &mut Value, secret: bool, tokens: &[Pattern], r: &mut Redactor) {
        if secret {
            for p in SECRET_PATHS.iter() {
                p.apply(v, &mut Action::Redact(r));
            }
            // `data` that is not a map (malformed, or a patch setting it whole): hide it whole.
            for f in SECRET_FIELDS {
                if let Some(x) = v.get_mut(*f)
                    && !x.is_object()
                {
                    r.redact(x);
                }
            }
        }
        for p in tokens.iter().chain(&self.paths) {
            p.apply(v, &mut Action::Redact(r));
        }
        if !secret && !self.paths.is_empty() {
            self.redact_last_applied(v, r);
        }
    }

    /// The `kubectl apply` annotation holds the applied object as JSON text: the configured
    /// paths are redacted inside it too.
    fn redact_last_applied(&self, v: &mut Value, r: &mut Redactor) {
        let Some(annotation) = v
            .pointer_mut("/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration")
        else {
            return;
        };
        let Some(Ok(mut applied)) = annotation.as_str().map(serde_json::from_str::<Value>) else {
            return;
        };
        let before = r.count;
        for p in &self.paths {
            p.apply(&mut applied, &mut Action::Redact(r));
        }
        if r.count > before {
            match serde_json::to_string(&applied) {
                Ok(text) => *annotation = Value::String(text),
                // Cannot happen; if it did, hide the annotation whole.
                Err(_) => r.redact(annotation),
            }
        }
    }
}

fn unredactable_body() -> Box<serde_json::value::RawValue> {
    // A JSON string literal of fixed ASCII text without quotes or backslashes.
    serde_json::value::RawValue::from_string(format!("\"{UNREDACTABLE_BODY}\""))
        .unwrap_or_else(|_| serde_json::value::RawValue::NULL.to_owned())
}

/// Whether an array body is a JSON patch (RFC 6902): objects with string `op` and `path`.
fn is_json_patch(ops: &[Value]) -> bool {
    !ops.is_empty()
        && ops.iter().all(|op| {
            op.get("op").is_some_and(Value::is_string)
                && op.get("path").is_some_and(Value::is_string)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn markers_are_stable_salted_and_idempotent() {
        let s = Salt::fixed([7; 16]);
        let mut r = Redactor::new(&s);
        let mut a = json!("v");
        let mut b = json!("v");
        r.redact(&mut a);
        r.redact(&mut b);
        assert_eq!(a, b);
        assert!(is_marker(&a), "{a}");
        let before = a.clone();
        r.redact(&mut a);
        assert_eq!(a, before);
        assert_eq!(r.count, 2);
        let mut c = json!("v");
        Redactor::new(&Salt::fixed([8; 16])).redact(&mut c);
        assert_ne!(a, c);
        // A string and a number with the same text are different values.
        let (mut n, mut t) = (json!(1), json!("1"));
        r.redact(&mut n);
        r.redact(&mut t);
        assert_ne!(n, t);
        let mut null = Value::Null;
        r.redact(&mut null);
        assert!(null.is_null());
        assert_eq!(format!("{s:?}"), "Salt(..)");
    }
}
