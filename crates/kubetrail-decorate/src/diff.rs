//! Structural diff of two object bodies.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::LazyLock;

use serde_json::Value;

use crate::path::{Action, Pattern, push_index, push_key, push_keyed};
use crate::scope::Scope;
use crate::{Change, DiffConfig};

/// Fields that change on every write, or that restate other fields, and so say nothing about
/// what a request did. Removed before every diff.
///
/// Condition timestamps: `lastHeartbeatTime` and `lastProbeTime` move on every kubelet
/// heartbeat, `lastUpdateTime` on every reconcile, so they are noise. `lastTransitionTime` is
/// kept: it only moves when the condition's `status` does, and then it says when.
pub const NOISE_PATHS: &[&str] = &[
    "metadata.managedFields",
    "metadata.resourceVersion",
    "metadata.generation",
    "metadata.creationTimestamp",
    "metadata.uid",
    "metadata.selfLink",
    r#"metadata.annotations["kubectl.kubernetes.io/last-applied-configuration"]"#,
    "status.observedGeneration",
    "status.conditions[*].lastHeartbeatTime",
    "status.conditions[*].lastProbeTime",
    "status.conditions[*].lastUpdateTime",
    "status.*.conditions[*].lastHeartbeatTime",
    "status.*.conditions[*].lastProbeTime",
    "status.*.conditions[*].lastUpdateTime",
];

static NOISE: LazyLock<Vec<Pattern>> =
    LazyLock::new(|| NOISE_PATHS.iter().map(|p| Pattern::parse(p)).collect());

/// The fields dropped before an object is remembered or snapshotted: big, and restating the
/// rest of the object (`managedFields` lists every field's owner; the `kubectl apply`
/// annotation is a copy of the applied object).
static BULK: LazyLock<Vec<Pattern>> = LazyLock::new(|| {
    [
        "metadata.managedFields",
        r#"metadata.annotations["kubectl.kubernetes.io/last-applied-configuration"]"#,
    ]
    .iter()
    .map(|p| Pattern::parse(p))
    .collect()
});

/// Removes the bulky fields that are never diffed nor shown (see [`BULK`]).
pub(crate) fn strip_bulk(v: &mut Value) {
    for p in BULK.iter() {
        p.apply(v, &mut Action::Remove);
    }
}

/// The ignore rules of a [`DiffConfig`]: the built-in noise plus the configured paths.
#[derive(Debug, Clone)]
pub(crate) struct Ignore {
    extra: Vec<Pattern>,
}

impl Ignore {
    pub(crate) fn compile(config: &DiffConfig) -> Ignore {
        Ignore {
            extra: config.ignore.iter().map(|p| Pattern::parse(p)).collect(),
        }
    }

    /// Removes every ignored field from `v`.
    pub(crate) fn strip(&self, v: &mut Value) {
        for p in NOISE.iter().chain(&self.extra) {
            p.apply(v, &mut Action::Remove);
        }
    }
}

/// The changes from `old` to `new`, ordered by path, at most `config.max_changes` of them,
/// and how many more there were.
///
/// Ignores the built-in noise ([`NOISE_PATHS`]) and `config.ignore`. See the crate
/// documentation for how paths are written and how lists are compared.
pub fn diff(old: &Value, new: &Value, config: &DiffConfig) -> (Vec<Change>, usize) {
    let ignore = Ignore::compile(config);
    let (mut old, mut new) = (old.clone(), new.clone());
    ignore.strip(&mut old);
    ignore.strip(&mut new);
    diff_stripped(&old, &new, config.max_changes, config.max_value_bytes)
}

/// [`diff`] of values the ignore rules were already applied to.
pub(crate) fn diff_stripped(
    old: &Value,
    new: &Value,
    max_changes: usize,
    max_value_bytes: usize,
) -> (Vec<Change>, usize) {
    let d = diff_scoped(old, new, max_changes, max_value_bytes, &Scope::default());
    (d.changes, d.more)
}

/// A diff split by what the request can have made.
#[derive(Debug, Default)]
pub(crate) struct ScopedDiff {
    /// Changes within the request's scope, at most `max_changes`.
    pub changes: Vec<Change>,
    /// How many more there were.
    pub more: usize,
    /// Changes outside it (made by requests not seen with a body), at most `max_changes`.
    pub unattributed: Vec<Change>,
    /// How many more of those there were.
    pub more_unattributed: usize,
}

/// [`diff_stripped`], with the changes `scope` does not allow set apart.
pub(crate) fn diff_scoped(
    old: &Value,
    new: &Value,
    max_changes: usize,
    max_value_bytes: usize,
    scope: &Scope,
) -> ScopedDiff {
    let mut raw = Vec::new();
    let mut path = String::new();
    let mut w = Walker {
        out: &mut raw,
        max_value_bytes,
    };
    w.walk(Some(old), Some(new), &mut path, None);
    raw.sort_by(|a, b| a.0.cmp(&b.0));
    let (mine, others): (Vec<_>, Vec<_>) = raw.into_iter().partition(|c| scope.allows(&c.0));
    let render_all = |mut list: Vec<Raw<'_>>| {
        let more = list.len().saturating_sub(max_changes);
        list.truncate(max_changes);
        let changes = list
            .into_iter()
            .map(|(path, o, n)| Change {
                path,
                old: o.map(|v| render(v, max_value_bytes)),
                new: n.map(|v| render(v, max_value_bytes)),
            })
            .collect();
        (changes, more)
    };
    let (changes, more) = render_all(mine);
    let (unattributed, more_unattributed) = render_all(others);
    ScopedDiff {
        changes,
        more,
        unattributed,
        more_unattributed,
    }
}

type Raw<'a> = (String, Option<&'a Value>, Option<&'a Value>);

struct Walker<'o, 'a> {
    out: &'o mut Vec<Raw<'a>>,
    max_value_bytes: usize,
}

impl<'a> Walker<'_, 'a> {
    fn walk(
        &mut self,
        old: Option<&'a Value>,
        new: Option<&'a Value>,
        path: &mut String,
        key: Option<&str>,
    ) {
        // Kubernetes treats an unset field, null and an empty map or list alike (`omitempty`).
        // (Not at the root: `{}` and `{"a":1}` are two whole bodies.)
        let root = path.is_empty();
        let old = old.filter(|v| root || !is_empty(v));
        let new = new.filter(|v| root || !is_empty(v));
        match (old, new) {
            (Some(Value::Object(a)), Some(Value::Object(b))) => {
                let len = path.len();
                for (k, va) in a {
                    push_key(path, k);
                    self.walk(Some(va), b.get(k), path, Some(k));
                    path.truncate(len);
                }
                for (k, vb) in b {
                    if !a.contains_key(k) {
                        push_key(path, k);
                        self.walk(None, Some(vb), path, Some(k));
                        path.truncate(len);
                    }
                }
            }
            (Some(o @ Value::Array(a)), Some(n @ Value::Array(b))) => {
                if a != b {
                    self.list(o, n, a, b, path, key);
                }
            }
            // A field (not a list item) that appeared or disappeared: its keys or keyed items
            // one by one, as if the other side had been empty.
            (Some(v), None) if key.is_some() && self.spread(v, true, path, key) => {}
            (None, Some(v)) if key.is_some() && self.spread(v, false, path, key) => {}
            (o, n) => {
                if o != n {
                    self.out.push((path.clone(), o, n));
                }
            }
        }
    }

    /// Reports a map or a keyed list that exists on one side only (`old_side`: the old one)
    /// entry by entry. Returns false, reporting nothing, for anything else.
    fn spread(
        &mut self,
        v: &'a Value,
        old_side: bool,
        path: &mut String,
        key: Option<&str>,
    ) -> bool {
        let len = path.len();
        let pair = |x: &'a Value| {
            if old_side {
                (Some(x), None)
            } else {
                (None, Some(x))
            }
        };
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    push_key(path, k);
                    let (o, n) = pair(x);
                    self.walk(o, n, path, Some(k));
                    path.truncate(len);
                }
                true
            }
            Value::Array(items) => {
                let Some(field) = list_key(items, &[], key) else {
                    return false;
                };
                for it in items {
                    if let Some(k) = it.get(field).and_then(key_text) {
                        push_keyed(path, field, &k);
                        let (o, n) = pair(it);
                        self.walk(o, n, path, None);
                        path.truncate(len);
                    }
                }
                true
            }
            _ => false,
        }
    }

    fn list(
        &mut self,
        old: &'a Value,
        new: &'a Value,
        a: &'a [Value],
        b: &'a [Value],
        path: &mut String,
        key: Option<&str>,
    ) {
        let len = path.len();
        if let Some(field) = list_key(a, b, key) {
            let new_by_key: HashMap<String, &Value> = b
                .iter()
                .filter_map(|it| Some((key_text(it.get(field)?)?, it)))
                .collect();
            let mut seen = HashSet::with_capacity(a.len());
            for it in a {
                let Some(k) = it.get(field).and_then(key_text) else {
                    continue;
                };
                push_keyed(path, field, &k);
                self.walk(Some(it), new_by_key.get(&k).copied(), path, None);
                path.truncate(len);
                seen.insert(k);
            }
            for it in b {
                let Some(k) = it.get(field).and_then(key_text) else {
                    continue;
                };
                if !seen.contains(&k) {
                    push_keyed(path, field, &k);
                    self.walk(None, Some(it), path, None);
                    path.truncate(len);
                }
            }
            return;
        }
        let scalars = |l: &[Value]| l.iter().all(|v| !v.is_object() && !v.is_array());
        if scalars(a)
            && scalars(b)
            && compact_len(old, self.max_value_bytes) <= self.max_value_bytes
            && compact_len(new, self.max_value_bytes) <= self.max_value_bytes
        {
            // A short list of scalars (args, finalizers, databases): one change, whole lists.
            self.out.push((path.clone(), Some(old), Some(new)));
            return;
        }
        // By index, after the common head and tail (an insertion shows as one change, not as
        // every later item shifting).
        let head = a.iter().zip(b).take_while(|(x, y)| x == y).count();
        let tail = a[head..]
            .iter()
            .rev()
            .zip(b[head..].iter().rev())
            .take_while(|(x, y)| x == y)
            .count();
        let (ma, mb) = (&a[head..a.len() - tail], &b[head..b.len() - tail]);
        for i in 0..ma.len().max(mb.len()) {
            push_index(path, head + i);
            self.walk(ma.get(i), mb.get(i), path, None);
            path.truncate(len);
        }
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// The field that identifies the items of a list, if there is one: every item on both sides
/// is an object with that field holding a string or number, unique on each side.
fn list_key(a: &[Value], b: &[Value], key: Option<&str>) -> Option<&'static str> {
    const DEFAULT: &[&str] = &[
        "name",
        "type",
        "uid",
        "key",
        "mountPath",
        "devicePath",
        "containerPort",
        "port",
        "ip",
    ];
    if a.iter().chain(b).any(|v| !v.is_object()) || a.is_empty() && b.is_empty() {
        return None;
    }
    let candidates: &[&'static str] = match key {
        Some("ownerReferences") => &["uid", "name"],
        Some("conditions") => &["type", "name"],
        _ => DEFAULT,
    };
    candidates
        .iter()
        .copied()
        .find(|f| unique_key(a, f) && unique_key(b, f))
}

fn unique_key(items: &[Value], field: &str) -> bool {
    let mut seen = HashSet::with_capacity(items.len());
    items.iter().all(|it| {
        it.get(field)
            .and_then(key_text)
            .is_some_and(|k| seen.insert(k))
    })
}

fn key_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A writer that keeps the first `max` bytes and counts them all.
struct Capped {
    buf: Vec<u8>,
    max: usize,
    total: usize,
}

impl io::Write for Capped {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = self.max.saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&data[..room.min(data.len())]);
        self.total += data.len();
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Compact JSON of `v`: its first `max` bytes (rounded down to a character) and its length.
pub(crate) fn compact_prefix(v: &Value, max: usize) -> (String, usize) {
    let mut w = Capped {
        buf: Vec::new(),
        max,
        total: 0,
    };
    // Serializing a Value into a writer that never fails cannot fail.
    let _ = serde_json::to_writer(&mut w, v);
    let s = match String::from_utf8(w.buf) {
        Ok(s) => s,
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let mut b = e.into_bytes();
            b.truncate(valid);
            String::from_utf8(b).unwrap_or_default()
        }
    };
    (s, w.total)
}

fn compact_len(v: &Value, max: usize) -> usize {
    compact_prefix(v, max.saturating_add(1)).1
}

/// Renders a value for a [`Change`]: a plain string as itself, anything else as compact JSON;
/// longer than `max` bytes: truncated, with an ellipsis and the full length.
pub(crate) fn render(v: &Value, max: usize) -> String {
    if let Value::String(s) = v
        && is_plain_string(s)
    {
        return truncate(s, s.len(), max);
    }
    let (s, total) = compact_prefix(v, max);
    truncate(&s, total, max)
}

/// Cuts `s` (a prefix of a text of `total` bytes) so that it and the `… (N bytes)` suffix fit
/// in `max` bytes (when `max` leaves room for anything besides the suffix).
pub(crate) fn truncate(s: &str, total: usize, max: usize) -> String {
    if total <= max && s.len() == total {
        return s.to_owned();
    }
    let suffix = format!("… ({total} bytes)");
    let mut cut = max.saturating_sub(suffix.len()).min(s.len());
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = String::with_capacity(cut + suffix.len());
    out.push_str(&s[..cut]);
    out.push_str(&suffix);
    out
}

/// Whether a string can be shown without quotes and still not be mistaken for another JSON
/// value: not empty, no surrounding whitespace, no control characters, and not readable as
/// JSON (`true`, `12`, `{…}`, `"…"`).
fn is_plain_string(s: &str) -> bool {
    !s.is_empty()
        && s.trim() == s
        && !s.chars().any(char::is_control)
        && !s.starts_with(['"', '{', '['])
        && !matches!(s, "true" | "false" | "null")
        && serde_json::from_str::<serde_json::Number>(s).is_err()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg() -> DiffConfig {
        DiffConfig::default()
    }

    #[test]
    fn renders_plain_strings_bare_and_the_rest_as_json() {
        assert_eq!(render(&json!("nginx:1.25"), 256), "nginx:1.25");
        assert_eq!(
            render(&json!("2023-05-16T19:27:15Z"), 256),
            "2023-05-16T19:27:15Z"
        );
        assert_eq!(render(&json!("12"), 256), r#""12""#);
        assert_eq!(render(&json!("true"), 256), r#""true""#);
        assert_eq!(render(&json!("a\nb"), 256), r#""a\nb""#);
        assert_eq!(render(&json!(""), 256), r#""""#);
        assert_eq!(render(&json!(3), 256), "3");
        assert_eq!(render(&json!({"a":[1,2]}), 256), r#"{"a":[1,2]}"#);
    }

    #[test]
    fn long_values_are_truncated_with_their_length() {
        let long = "é".repeat(200); // 400 bytes
        let r = render(&json!(long), 64);
        assert!(r.len() <= 64, "{r}");
        assert!(r.ends_with("… (400 bytes)"), "{r}");
        let obj = json!({"k": "x".repeat(1000)});
        let r = render(&obj, 50);
        assert!(
            r.starts_with(r#"{"k":"xxx"#) && r.ends_with("… (1008 bytes)"),
            "{r}"
        );
        assert!(r.len() <= 50);
    }

    #[test]
    fn scalar_lists_short_whole_long_by_index() {
        let (c, _) = diff(&json!({"f": ["a", "b"]}), &json!({"f": ["a", "c"]}), &cfg());
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].path, "f");
        assert_eq!(c[0].new.as_deref(), Some(r#"["a","c"]"#));
        let long: Vec<String> = (0..100).map(|i| format!("item-{i}")).collect();
        let mut longer = long.clone();
        longer.insert(50, "new".into());
        let (c, _) = diff(&json!({ "f": long }), &json!({ "f": longer }), &cfg());
        assert_eq!(
            c,
            vec![Change {
                path: "f[50]".into(),
                old: None,
                new: Some("new".into())
            }]
        );
    }

    #[test]
    fn null_and_empty_are_absent() {
        let (c, _) = diff(&json!({"a": null, "b": {}, "c": []}), &json!({}), &cfg());
        assert!(c.is_empty());
    }
}
