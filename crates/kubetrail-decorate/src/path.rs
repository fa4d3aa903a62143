//! Field paths: how a changed field is named in a [`Change`](crate::Change), and the patterns
//! (same syntax, plus wildcards) that select fields to ignore or redact.
//!
//! Syntax, by example:
//!
//! * `metadata.labels.app`: map keys separated by dots;
//! * `metadata.annotations["example.com/x"]`: a key that is not a plain word (contains `.`,
//!   `/`, spaces, …) is written as a bracketed JSON string;
//! * `spec.template.spec.containers[name=web].image`: a list item picked by a key field;
//! * `spec.args[3]`: a list item by index, used only when a list cannot be keyed;
//! * in patterns only: `*` (any one segment) and `[*]` (any list item).
//!
//! Patterns are forgiving about dotted keys: `metadata.annotations.example.com/token` also
//! matches the annotation `example.com/token`, because consecutive plain key segments may
//! together name one key that contains dots.

use serde_json::Value;

/// One segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    /// A map key, written `key` or `["key"]`.
    Key(String),
    /// `*`: any one segment (a map key or a list item).
    Any,
    /// `[*]`: any list item.
    AnyItem,
    /// `[3]`: the list item at this index.
    Index(usize),
    /// `[field=value]`: the list items whose `field` renders as `value`.
    Keyed(String, String),
}

/// A compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    pub(crate) segs: Vec<Seg>,
    /// For each position holding a [`Seg::Key`]: the keys the segments from there can name,
    /// with the position after them (`a.b.c` at 0: `a`→1, `a.b`→2, `a.b.c`→3).
    joins: Vec<Vec<(usize, String)>>,
}

impl Pattern {
    /// Parses a pattern. Never fails: text that is not well-formed is read as literally as
    /// possible (see [`check`] for the strict reading).
    pub(crate) fn parse(text: &str) -> Pattern {
        Pattern::from_segs(parse_segs(text).0)
    }

    pub(crate) fn from_segs(segs: Vec<Seg>) -> Pattern {
        let joins = (0..segs.len())
            .map(|i| {
                let mut out = Vec::new();
                let Seg::Key(first) = &segs[i] else {
                    return out;
                };
                let mut joined = first.clone();
                out.push((i + 1, joined.clone()));
                for (j, s) in segs.iter().enumerate().skip(i + 1) {
                    let Seg::Key(k) = s else { break };
                    joined.push('.');
                    joined.push_str(k);
                    out.push((j + 1, joined.clone()));
                }
                out
            })
            .collect();
        Pattern { segs, joins }
    }

    /// Texts, one of which a JSON body must contain for the pattern to select anything in
    /// it: the last key, as written in JSON (also with `/` escaped as `\/`) and as escaped in a
    /// JSON pointer (`/` is `~1`).
    /// `None` when the pattern has no key plain enough to be found verbatim in JSON text.
    pub(crate) fn needles(&self) -> Option<Vec<String>> {
        let key = self.segs.iter().rev().find_map(|s| match s {
            Seg::Key(k) => Some(k),
            _ => None,
        })?;
        let plain = !key.is_empty()
            && key
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-_./:~".contains(&c));
        if !plain {
            return None;
        }
        let mut out = vec![key.clone()];
        if key.contains(['/', '~']) {
            // In a JSON pointer; and with JSON's optional escape of '/'.
            out.push(key.replace('~', "~0").replace('/', "~1"));
            out.push(key.replace('/', "\\/"));
        }
        Some(out)
    }

    /// Applies `act` to every node of `root` the pattern selects.
    pub(crate) fn apply(&self, root: &mut Value, act: &mut Action<'_>) {
        self.apply_from(0, root, act);
    }

    /// Applies `act` to every node below `node` that the pattern, from position `at`, selects.
    pub(crate) fn apply_from(&self, at: usize, node: &mut Value, act: &mut Action<'_>) {
        let Some(seg) = self.segs.get(at) else {
            return;
        };
        match node {
            Value::Object(map) => match seg {
                Seg::Any if at + 1 == self.segs.len() => match act {
                    Action::Remove => map.clear(),
                    Action::Redact(r) => map.values_mut().for_each(|v| r.redact(v)),
                },
                Seg::Any => {
                    for v in map.values_mut() {
                        self.apply_from(at + 1, v, act);
                    }
                }
                Seg::Key(_) => {
                    for (next, key) in &self.joins[at] {
                        if map.contains_key(key) {
                            self.step_key(map, key, *next, act);
                        }
                    }
                }
                _ => {}
            },
            Value::Array(items) => {
                let picked: Vec<usize> = match seg {
                    Seg::Any | Seg::AnyItem => (0..items.len()).collect(),
                    Seg::Index(n) => (*n < items.len()).then_some(*n).into_iter().collect(),
                    Seg::Keyed(field, value) => items
                        .iter()
                        .enumerate()
                        .filter(|(_, it)| item_has(it, field, value))
                        .map(|(i, _)| i)
                        .collect(),
                    Seg::Key(_) => Vec::new(),
                };
                if at + 1 == self.segs.len() {
                    match act {
                        Action::Remove => {
                            for i in picked.into_iter().rev() {
                                items.remove(i);
                            }
                        }
                        Action::Redact(r) => {
                            for i in picked {
                                r.redact(&mut items[i]);
                            }
                        }
                    }
                } else {
                    for i in picked {
                        self.apply_from(at + 1, &mut items[i], act);
                    }
                }
            }
            _ => {}
        }
    }

    fn step_key(
        &self,
        map: &mut serde_json::Map<String, Value>,
        key: &str,
        next: usize,
        act: &mut Action<'_>,
    ) {
        if next == self.segs.len() {
            match act {
                Action::Remove => {
                    map.remove(key);
                }
                Action::Redact(r) => {
                    if let Some(v) = map.get_mut(key) {
                        r.redact(v);
                    }
                }
            }
        } else if let Some(v) = map.get_mut(key) {
            self.apply_from(next, v, act);
        }
    }

    /// Matches the pattern against a JSON pointer (RFC 6901, as in a JSON patch op's `path`).
    /// Returns whether the pointer names a selected node or something inside one (`full`),
    /// and the pattern positions left to apply inside the node the pointer names.
    pub(crate) fn match_pointer(&self, tokens: &[String]) -> (bool, Vec<usize>) {
        let mut full = false;
        let mut rest = Vec::new();
        self.match_tokens(0, tokens, &mut full, &mut rest);
        rest.sort_unstable();
        rest.dedup();
        (full, rest)
    }

    fn match_tokens(&self, at: usize, tokens: &[String], full: &mut bool, rest: &mut Vec<usize>) {
        if at == self.segs.len() {
            *full = true;
            return;
        }
        let Some((tok, more)) = tokens.split_first() else {
            rest.push(at);
            return;
        };
        let item_like = tok == "-" || tok.bytes().all(|b| b.is_ascii_digit()) && !tok.is_empty();
        match &self.segs[at] {
            Seg::Any => self.match_tokens(at + 1, more, full, rest),
            // Which item `[name=web]` is cannot be told from an index: for redaction, err on
            // the side of hiding.
            Seg::AnyItem | Seg::Keyed(..) if item_like => {
                self.match_tokens(at + 1, more, full, rest)
            }
            Seg::Index(n) if tok == "-" || tok.parse::<usize>().ok() == Some(*n) => {
                self.match_tokens(at + 1, more, full, rest)
            }
            Seg::Key(_) => {
                for (next, key) in &self.joins[at] {
                    if key == tok {
                        self.match_tokens(*next, more, full, rest);
                    }
                }
            }
            _ => {}
        }
    }
}

/// What to do with the nodes a pattern selects.
pub(crate) enum Action<'a> {
    /// Remove them (noise before a diff).
    Remove,
    /// Replace their values with redaction markers.
    Redact(&'a mut crate::redact::Redactor),
}

/// Whether a list item is an object whose `field` renders as `value`.
fn item_has(item: &Value, field: &str, value: &str) -> bool {
    match item.get(field) {
        Some(Value::String(s)) => s == value,
        Some(Value::Number(n)) => n.to_string() == value,
        _ => false,
    }
}

/// The tokens of a JSON pointer (`/a/b~1c` → `a`, `b/c`); `""` is the whole document.
pub(crate) fn pointer_tokens(pointer: &str) -> Vec<String> {
    if pointer.is_empty() {
        return Vec::new();
    }
    pointer
        .strip_prefix('/')
        .unwrap_or(pointer)
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect()
}

/// Parses pattern text into segments, with a description of the first problem found (text
/// that was read literally because it was not well-formed).
pub(crate) fn parse_segs(text: &str) -> (Vec<Seg>, Option<String>) {
    let mut segs = Vec::new();
    let mut problem: Option<String> = None;
    let note = |p: &mut Option<String>, msg: String| {
        if p.is_none() {
            *p = Some(msg);
        }
    };
    let b = text.as_bytes();
    let mut i = 0;
    if text.is_empty() {
        note(&mut problem, "empty path".into());
    }
    while i < b.len() {
        if b[i] == b'[' {
            if b.get(i + 1) == Some(&b'"') {
                // ["quoted key"]
                match quoted_end(text, i + 1) {
                    Some(end) if b.get(end + 1) == Some(&b']') => {
                        match serde_json::from_str::<String>(&text[i + 1..=end]) {
                            Ok(k) => segs.push(Seg::Key(k)),
                            Err(e) => {
                                note(&mut problem, format!("bad quoted key at {i}: {e}"));
                                segs.push(Seg::Key(text[i + 2..end].to_owned()));
                            }
                        }
                        i = end + 2;
                    }
                    _ => {
                        note(&mut problem, format!("unterminated quoted key at {i}"));
                        segs.push(Seg::Key(text[i..].to_owned()));
                        break;
                    }
                }
            } else if let Some(close) = bracket_end(text, i + 1) {
                let inner = &text[i + 1..close];
                segs.push(parse_bracket(inner, i, &mut problem));
                i = close + 1;
            } else {
                note(&mut problem, format!("unterminated '[' at {i}"));
                segs.push(Seg::Key(text[i..].to_owned()));
                break;
            }
        } else {
            let start = i;
            while i < b.len() && b[i] != b'.' && b[i] != b'[' {
                i += 1;
            }
            let key = &text[start..i];
            if key.is_empty() {
                note(&mut problem, format!("empty segment at {start}"));
            }
            segs.push(if key == "*" {
                Seg::Any
            } else {
                Seg::Key(key.to_owned())
            });
        }
        if i < b.len() && b[i] == b'.' {
            i += 1;
            if i == b.len() {
                note(&mut problem, "path ends with '.'".into());
            }
        }
    }
    (segs, problem)
}

fn parse_bracket(inner: &str, at: usize, problem: &mut Option<String>) -> Seg {
    if inner == "*" {
        return Seg::AnyItem;
    }
    if !inner.is_empty()
        && inner.bytes().all(|c| c.is_ascii_digit())
        && let Ok(n) = inner.parse()
    {
        return Seg::Index(n);
    }
    if let Some((field, value)) = inner.split_once('=') {
        let value = if value.starts_with('"') {
            serde_json::from_str::<String>(value).unwrap_or_else(|_| value.to_owned())
        } else {
            value.to_owned()
        };
        return Seg::Keyed(field.to_owned(), value);
    }
    if problem.is_none() {
        *problem = Some(format!(
            "'[{inner}]' at {at} is not [*], [index], [field=value] or [\"key\"]"
        ));
    }
    Seg::Key(inner.to_owned())
}

/// The index of the closing quote of the JSON string starting at `open`.
fn quoted_end(text: &str, open: usize) -> Option<usize> {
    let b = text.as_bytes();
    let mut i = open + 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// The index of the `]` closing a bracket whose content starts at `from` (a quoted value
/// inside may contain `]`).
fn bracket_end(text: &str, from: usize) -> Option<usize> {
    let b = text.as_bytes();
    let mut i = from;
    while i < b.len() {
        match b[i] {
            b'"' => i = quoted_end(text, i)? + 1,
            b']' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// Whether a key can be written bare (`.key`) rather than quoted (`["key"]`).
fn is_plain_key(k: &str) -> bool {
    !k.is_empty()
        && k.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'$')
}

/// Appends a map key to a path.
pub(crate) fn push_key(path: &mut String, key: &str) {
    if is_plain_key(key) {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
    } else {
        path.push('[');
        push_json_string(path, key);
        path.push(']');
    }
}

/// Appends a keyed list item (`[name=web]`) to a path.
pub(crate) fn push_keyed(path: &mut String, field: &str, value: &str) {
    path.push('[');
    path.push_str(field);
    path.push('=');
    let bare = !value.is_empty()
        && value.trim() == value
        && !value
            .chars()
            .any(|c| c.is_control() || matches!(c, '[' | ']' | '"'));
    if bare {
        path.push_str(value);
    } else {
        push_json_string(path, value);
    }
    path.push(']');
}

/// Appends a list index (`[3]`) to a path.
pub(crate) fn push_index(path: &mut String, i: usize) {
    use std::fmt::Write;
    let _ = write!(path, "[{i}]");
}

fn push_json_string(path: &mut String, s: &str) {
    // Serializing a str cannot fail.
    path.push_str(&serde_json::to_string(s).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Seg {
        Seg::Key(s.into())
    }

    #[test]
    fn parses_every_form() {
        let (segs, problem) = parse_segs(r#"spec.containers[name=web].env[*].value["a.b/c"][3].*"#);
        assert_eq!(problem, None);
        assert_eq!(
            segs,
            vec![
                key("spec"),
                key("containers"),
                Seg::Keyed("name".into(), "web".into()),
                key("env"),
                Seg::AnyItem,
                key("value"),
                key("a.b/c"),
                Seg::Index(3),
                Seg::Any,
            ]
        );
        let (segs, _) = parse_segs(r#"x[k="a]b"]"#);
        assert_eq!(segs, vec![key("x"), Seg::Keyed("k".into(), "a]b".into())]);
    }

    #[test]
    fn malformed_text_is_read_literally_and_reported() {
        let (segs, problem) = parse_segs("a[b");
        assert!(problem.is_some());
        assert_eq!(segs, vec![key("a"), key("[b")]);
        assert!(parse_segs("a..b").1.is_some());
        assert!(parse_segs("").1.is_some());
        assert!(parse_segs("a[oops]").1.is_some());
    }

    #[test]
    fn rendered_paths_parse_back() {
        let mut p = String::new();
        push_key(&mut p, "metadata");
        push_key(&mut p, "annotations");
        push_key(&mut p, "example.com/x");
        assert_eq!(p, r#"metadata.annotations["example.com/x"]"#);
        let mut q = String::new();
        push_key(&mut q, "status");
        push_key(&mut q, "conditions");
        push_keyed(&mut q, "type", "Ready");
        push_key(&mut q, "status");
        push_index(&mut q, 2);
        assert_eq!(q, "status.conditions[type=Ready].status[2]");
        assert_eq!(
            parse_segs(&q).0,
            vec![
                key("status"),
                key("conditions"),
                Seg::Keyed("type".into(), "Ready".into()),
                key("status"),
                Seg::Index(2)
            ]
        );
    }

    #[test]
    fn dotted_keys_match_unquoted_patterns() {
        let p = Pattern::parse("metadata.annotations.example.com/token");
        let mut v =
            serde_json::json!({"metadata":{"annotations":{"example.com/token":"t","x":"y"}}});
        p.apply(&mut v, &mut Action::Remove);
        assert_eq!(v, serde_json::json!({"metadata":{"annotations":{"x":"y"}}}));
        let (full, _) =
            p.match_pointer(&pointer_tokens("/metadata/annotations/example.com~1token"));
        assert!(full);
    }

    #[test]
    fn needles_are_the_last_plain_key() {
        let n = |p: &str| Pattern::parse(p).needles();
        assert_eq!(
            n("spec.containers[*].env[*].value"),
            Some(vec!["value".into()])
        );
        assert_eq!(
            n("metadata.annotations.example.com/token"),
            Some(vec![
                "com/token".into(),
                "com~1token".into(),
                "com\\/token".into()
            ])
        );
        assert_eq!(n("metadata.labels.*"), Some(vec!["labels".into()]));
        assert_eq!(n("*"), None);
        assert_eq!(n(r#"metadata.annotations["a<b"]"#), None);
    }

    #[test]
    fn pointers_match_prefixes_and_items() {
        let p = Pattern::parse("spec.containers[name=web].env[*].value");
        let (full, rest) = p.match_pointer(&pointer_tokens("/spec/containers/0/env/-/value"));
        assert!(full && rest.is_empty());
        let (full, rest) = p.match_pointer(&pointer_tokens("/spec/containers/0"));
        assert!(!full);
        assert_eq!(rest, vec![3]);
        let (full, rest) = p.match_pointer(&pointer_tokens(""));
        assert!(!full);
        assert_eq!(rest, vec![0]);
        assert_eq!(
            p.match_pointer(&pointer_tokens("/metadata")),
            (false, vec![])
        );
    }
}
