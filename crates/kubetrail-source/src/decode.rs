//! Decoding one JSON document into audit events: the one decoder of replay
//! ([`EventReader`](crate::EventReader), after [`framing`](crate::framing) found the
//! document) and of the webhook ([`decode_event_list`]).
//!
//! A document is an `Event`, an `EventList`, or a JSON array of events. **A new input shape
//! is added in [`decode_document`]**, as one more arm of the shape dispatch: everything
//! else (item errors, invalid UTF-8, line numbers) then works for it too.
//!
//! Every item is decoded on its own, so one bad item costs only itself: an item that is not
//! an audit event, that holds invalid UTF-8, or (when the list itself is not valid JSON)
//! that is broken JSON, is reported with its index; the others are decoded.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use kubetrail_model::AuditEvent;

/// An item of an `EventList` that is not a valid audit event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemError {
    /// Zero-based index of the item in `items`.
    pub index: usize,
    /// Why it was rejected (serde's message, naming the missing or invalid field).
    pub reason: String,
}

/// The shape of a decoded document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Shape {
    /// A single audit event.
    Event,
    /// An object with `items` (`kind` `EventList`, or none).
    List,
    /// A JSON array of events.
    Array,
    /// A cloud log service's envelope around events ([`crate::cloud`]).
    Cloud,
    /// Nothing usable: the reason.
    Invalid(String),
}

/// One decoded document.
#[derive(Debug)]
pub(crate) struct Document {
    pub shape: Shape,
    /// The events, in order.
    pub events: Vec<AuditEvent>,
    /// Items that were rejected (only for lists and arrays).
    pub errors: Vec<ItemError>,
    /// Indices (in `errors`' `index` space) of the rejected items that are not errors but
    /// records of something else: cloud log entries that carry no Kubernetes audit event
    /// (GKE cluster operations, CloudWatch control messages). Counted apart from malformed.
    pub skipped: Vec<usize>,
}

#[derive(Deserialize)]
struct RawList<'a> {
    #[serde(default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    items: Option<Vec<&'a RawValue>>,
}

/// The text with invalid UTF-8 replaced (U+FFFD), and the byte ranges, in the returned text,
/// of the replacements.
fn lossy(bytes: &[u8]) -> (Cow<'_, str>, Vec<(usize, usize)>) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (Cow::Borrowed(s), Vec::new()),
        Err(_) => {
            let mut out = String::with_capacity(bytes.len() + 16);
            let mut bad = Vec::new();
            for chunk in bytes.utf8_chunks() {
                out.push_str(chunk.valid());
                if !chunk.invalid().is_empty() {
                    let at = out.len();
                    out.push(char::REPLACEMENT_CHARACTER);
                    bad.push((at, out.len()));
                }
            }
            (Cow::Owned(out), bad)
        }
    }
}

/// Where `part` (a slice of `whole`) starts in it.
fn offset_in(whole: &str, part: &str) -> usize {
    (part.as_ptr() as usize).saturating_sub(whole.as_ptr() as usize)
}

/// Whether the first bytes of a document say it is a list (`EventList`, or an `items` key).
/// Only a hint for the fast path: a miss costs one parse, never a wrong result.
fn names_a_list(doc: &[u8]) -> bool {
    let head = &doc[..doc.len().min(160)];
    let has = |needle: &[u8]| head.windows(needle.len()).any(|w| w == needle);
    has(b"List\"") || has(b"\"items\"")
}

/// Decodes one JSON document: an event, an `EventList` (or any object with `items`), or an
/// array of events.
pub(crate) fn decode_document(bytes: &[u8]) -> Document {
    let (text, bad_utf8) = lossy(bytes);
    let text: &str = &text;
    let invalid_utf8_in = |from: usize, to: usize| {
        bad_utf8
            .iter()
            .find(|(a, b)| *a < to && *b > from)
            .map(|(a, _)| *a)
    };
    let mut doc = Document {
        shape: Shape::Event,
        events: Vec::new(),
        errors: Vec::new(),
        skipped: Vec::new(),
    };
    let trimmed = text.trim_start();
    // The common case first: one audit event, as kube-apiserver writes them (`"kind":"Event"`,
    // valid UTF-8) — one parse instead of a look at the shape and then the parse. Anything
    // else (a list, a cloud envelope, a broken event) takes the shape dispatch below. A list
    // names itself in its first bytes (`{"kind":"EventList",…`, as the webhook sends them): it
    // skips the attempt, which would scan the whole list only to fail.
    if trimmed.starts_with('{')
        && bad_utf8.is_empty()
        && !names_a_list(trimmed.as_bytes())
        && let Ok(e) = serde_json::from_str::<AuditEvent>(text)
        && e.kind.as_deref() == Some("Event")
    {
        doc.events.push(e);
        return doc;
    }
    // Shape dispatch. A new input format is one more arm here.
    let items: Vec<&str> = if trimmed.starts_with('{') {
        match serde_json::from_str::<RawList<'_>>(text) {
            Ok(RawList { kind, items: None }) => {
                if kind.as_deref().is_some_and(|k| k.ends_with("List")) {
                    doc.shape = Shape::Invalid(format!(
                        "not an audit EventList: kind {:?} without an \"items\" array",
                        kind.as_deref().unwrap_or("")
                    ));
                    return doc;
                }
                // A single event.
                match (
                    serde_json::from_str::<AuditEvent>(text),
                    invalid_utf8_in(0, text.len()),
                ) {
                    (Ok(_), Some(at)) => {
                        doc.shape = Shape::Invalid(format!("invalid UTF-8 at byte {at}"));
                    }
                    (Ok(e), None) => doc.events.push(e),
                    (Err(_), _) => {
                        // Not an event: a cloud log envelope (AKS records, CloudWatch, GKE
                        // LogEntry …), else malformed.
                        if !cloud_document(bytes, &mut doc) {
                            doc.shape = Shape::Invalid(describe_error(text.as_bytes()));
                        }
                    }
                }
                return doc;
            }
            Ok(RawList {
                kind,
                items: Some(items),
            }) => {
                if let Some(k) = kind.as_deref()
                    && k != "EventList"
                {
                    doc.shape =
                        Shape::Invalid(format!("not an audit event or EventList: kind {k:?}"));
                    return doc;
                }
                doc.shape = Shape::List;
                items.into_iter().map(RawValue::get).collect()
            }
            Err(e) => match split_items(text) {
                Some((Container::Object, items)) => {
                    doc.shape = Shape::List;
                    items
                }
                _ => {
                    doc.shape = Shape::Invalid(if e.is_syntax() || e.is_eof() {
                        format!("not JSON: {e}")
                    } else {
                        describe_error(text.as_bytes())
                    });
                    return doc;
                }
            },
        }
    } else if trimmed.starts_with('[') {
        // An array of cloud log entries (`gcloud logging read --format json`, BigQuery)?
        if cloud_document(bytes, &mut doc) {
            return doc;
        }
        doc.shape = Shape::Array;
        match serde_json::from_str::<Vec<&RawValue>>(text) {
            Ok(items) => items.into_iter().map(RawValue::get).collect(),
            Err(e) => match split_items(text) {
                Some((Container::Array, items)) => items,
                _ => {
                    doc.shape = Shape::Invalid(format!("not JSON: {e}"));
                    return doc;
                }
            },
        }
    } else {
        doc.shape = Shape::Invalid(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Err(e) => format!("not JSON: {e}"),
            Ok(_) => "not an audit event, EventList or array of events".to_owned(),
        });
        return doc;
    };
    doc.events.reserve(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let from = offset_in(text, item);
        if let Some(at) = invalid_utf8_in(from, from + item.len()) {
            doc.errors.push(ItemError {
                index,
                reason: format!("invalid UTF-8 at byte {}", at - from),
            });
            continue;
        }
        match serde_json::from_str::<AuditEvent>(item) {
            Ok(e) => doc.events.push(e),
            Err(_) => doc.errors.push(ItemError {
                index,
                reason: describe_error(item.as_bytes()),
            }),
        }
    }
    doc
}

/// Decodes `bytes` as a cloud log envelope into `doc` (items that are not audit events, or
/// carry none, become item errors with their reason). `false` when it is not one.
fn cloud_document(bytes: &[u8], doc: &mut Document) -> bool {
    let Some(cloud) = crate::cloud::decode_cloud_document(bytes) else {
        return false;
    };
    doc.shape = Shape::Cloud;
    for (index, item) in cloud.items.into_iter().enumerate() {
        match item {
            crate::cloud::CloudItem::Event(e) => doc.events.push(*e),
            crate::cloud::CloudItem::Bad(e) => doc.errors.push(ItemError {
                index,
                reason: e.reason,
            }),
            crate::cloud::CloudItem::Skipped(e) => {
                doc.skipped.push(index);
                doc.errors.push(ItemError {
                    index,
                    reason: e.reason,
                })
            }
        }
    }
    true
}

#[derive(Debug, PartialEq, Eq)]
enum Container {
    Object,
    Array,
}

/// The items of a document that is not valid JSON as a whole, found structurally (one
/// linear pass): the elements of a top-level array, or of the array under the top-level
/// key `items`. Each is cut at the commas of its own nesting level, so a broken item (bad
/// syntax, a stray quote) is one item and the others stay intact. `None` when the text has
/// no such array.
fn split_items(text: &str) -> Option<(Container, Vec<&str>)> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escape = false;
    let mut container = None;
    // Depth of the items array, once found; start of the current item.
    let mut items_depth = None;
    let mut item_start = 0usize;
    let mut items = Vec::new();
    // The last top-level key (of a top-level object) and where its string starts.
    let mut key_start = None;
    let mut last_key: Option<&str> = None;
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            if escape {
                escape = false;
            } else if b == b'\\' {
                escape = true;
            } else if b == b'"' {
                in_string = false;
                if let Some(s) = key_start.take() {
                    last_key = text.get(s..i);
                }
            }
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                if depth == 1 && container == Some(Container::Object) && items_depth.is_none() {
                    key_start = Some(i + 1);
                }
            }
            b'{' | b'[' => {
                depth += 1;
                if depth == 1 {
                    container = Some(if b == b'{' {
                        Container::Object
                    } else {
                        Container::Array
                    });
                    if b == b'[' {
                        items_depth = Some(1);
                        item_start = i + 1;
                    }
                } else if depth == 2
                    && b == b'['
                    && container == Some(Container::Object)
                    && items_depth.is_none()
                    && last_key == Some("items")
                {
                    items_depth = Some(2);
                    item_start = i + 1;
                }
            }
            b'}' | b']' => {
                if items_depth == Some(depth) {
                    push_item(text, item_start, i, &mut items);
                    return Some((container?, items));
                }
                depth = depth.saturating_sub(1);
            }
            b',' if items_depth == Some(depth) => {
                push_item(text, item_start, i, &mut items);
                item_start = i + 1;
            }
            _ => {}
        }
    }
    // Unterminated: what was found so far, the last item included.
    let d = items_depth?;
    let _ = d;
    push_item(text, item_start, bytes.len(), &mut items);
    Some((container?, items))
}

fn push_item<'a>(text: &'a str, from: usize, to: usize, items: &mut Vec<&'a str>) {
    let Some(item) = text.get(from..to) else {
        return;
    };
    let item = item.trim();
    if !item.is_empty() {
        items.push(item);
    }
}

/// Re-parses a rejected audit event tracking the path, so the reason names the field
/// (`user.groups[1]: invalid type: integer…`). Only runs on the error path.
pub(crate) fn describe_error(text: &[u8]) -> String {
    let de = &mut serde_json::Deserializer::from_slice(text);
    match serde_path_to_error::deserialize::<_, AuditEvent>(de) {
        Ok(_) => "not an audit event".to_owned(),
        Err(e) if e.path().to_string() == "." => e.inner().to_string(),
        Err(e) => format!("{}: {}", e.path(), e.inner()),
    }
}

/// Why a body is not an `audit.k8s.io` `EventList` as a whole ([`decode_event_list`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventListError {
    /// Not JSON, not an object with `items`, or another `kind`: the reason says which, and
    /// where (`line 3 column 7`).
    #[error("not an audit EventList: {reason}")]
    Invalid {
        /// What is wrong, with its position where JSON parsing said it.
        reason: String,
    },
    /// A single audit event.
    #[error("not an audit EventList: a single event (no \"items\" array)")]
    SingleEvent,
    /// A JSON array of events.
    #[error("not an audit EventList: a JSON array (no \"items\" array)")]
    Array,
    /// A cloud log service's envelope.
    #[error("not an audit EventList: a cloud log envelope (POST it to /firehose or /pubsub)")]
    CloudEnvelope,
}

/// Decodes an `audit.k8s.io` `EventList` body (compact or pretty-printed).
///
/// Each item is decoded on its own, so a malformed item (not an audit event, invalid UTF-8,
/// or broken JSON when the list is not valid JSON as a whole) is reported in the second
/// vector and does not reject the others. The whole body is an error when it is not an
/// object with an `items` array, or has a `kind` other than `EventList`.
pub fn decode_event_list(body: &[u8]) -> Result<(Vec<AuditEvent>, Vec<ItemError>), EventListError> {
    let doc = decode_document(body);
    match doc.shape {
        Shape::List => Ok((doc.events, doc.errors)),
        Shape::Invalid(reason) => Err(EventListError::Invalid { reason }),
        Shape::Event => Err(EventListError::SingleEvent),
        Shape::Array => Err(EventListError::Array),
        Shape::Cloud => Err(EventListError::CloudEnvelope),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"level":"Metadata","auditID":"a","stage":"ResponseComplete","requestURI":"/api/v1/pods","verb":"list","user":{"username":"u"}}"#;

    #[test]
    fn bad_items_do_not_reject_good_ones() {
        let body = format!(
            r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{GOOD},{{"level":"Metadata"}},42,{GOOD}]}}"#
        );
        let (events, errors) = decode_event_list(body.as_bytes()).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].index, 1);
        assert!(errors[0].reason.contains("auditID"), "{}", errors[0].reason);
        assert_eq!(errors[1].index, 2);
    }

    #[test]
    fn invalid_utf8_and_broken_json_cost_only_their_item() {
        let mut body = format!(r#"{{"kind":"EventList","items":[{GOOD},"#).into_bytes();
        body.extend_from_slice(br#"{"level":"Metadata","auditID":"b","stage":"ResponseComplete","requestURI":"/x","verb":"get","user":{"username":""#);
        body.extend_from_slice(b"\xff\xfe");
        body.extend_from_slice(br#""}},"#);
        body.extend_from_slice(br#"{"level": tru},"#);
        body.extend_from_slice(format!("{GOOD}]}}").as_bytes());
        let (events, errors) = decode_event_list(&body).unwrap();
        assert_eq!(events.len(), 2, "{errors:?}");
        assert_eq!(
            errors.iter().map(|e| e.index).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert!(errors[0].reason.contains("UTF-8"), "{}", errors[0].reason);
    }

    #[test]
    fn whole_body_errors() {
        assert!(
            decode_event_list(b"not json")
                .unwrap_err()
                .to_string()
                .contains("not an audit EventList")
        );
        assert!(
            decode_event_list(br#"{"kind":"PodList","items":[]}"#)
                .unwrap_err()
                .to_string()
                .contains("PodList")
        );
        assert!(
            decode_event_list(br#"{"kind":"EventList"}"#)
                .unwrap_err()
                .to_string()
                .contains("items")
        );
        assert!(decode_event_list(b"[1,2]").is_err());
    }
}
