//! Decoding of `EventList` bodies with per-item errors.

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

#[derive(Deserialize)]
struct RawList<'a> {
    #[serde(default)]
    kind: Option<&'a str>,
    #[serde(borrow)]
    items: Option<Vec<&'a RawValue>>,
}

/// Decodes an `audit.k8s.io` `EventList` body.
///
/// Each item is decoded on its own, so a malformed item is reported in the second vector
/// and does not reject the others. The whole body is an error when it is not JSON, not an
/// object, has a `kind` other than `EventList`, or has no `items` array.
pub fn decode_event_list(body: &[u8]) -> Result<(Vec<AuditEvent>, Vec<ItemError>), String> {
    let list: RawList<'_> =
        serde_json::from_slice(body).map_err(|e| format!("not an audit EventList: {e}"))?;
    if let Some(kind) = list.kind
        && kind != "EventList"
    {
        return Err(format!("not an audit EventList: kind is {kind:?}"));
    }
    let items = list
        .items
        .ok_or_else(|| "not an audit EventList: no \"items\" array".to_owned())?;
    let mut events = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        match serde_json::from_str::<AuditEvent>(item.get()) {
            Ok(e) => events.push(e),
            Err(_) => errors.push(ItemError {
                index,
                reason: crate::reader::describe_error(item.get().as_bytes()),
            }),
        }
    }
    Ok((events, errors))
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
    fn whole_body_errors() {
        assert!(
            decode_event_list(b"not json")
                .unwrap_err()
                .contains("not an audit EventList")
        );
        assert!(
            decode_event_list(br#"{"kind":"PodList","items":[]}"#)
                .unwrap_err()
                .contains("PodList")
        );
        assert!(
            decode_event_list(br#"{"kind":"EventList"}"#)
                .unwrap_err()
                .contains("items")
        );
        assert!(decode_event_list(b"[1,2]").is_err());
    }
}
