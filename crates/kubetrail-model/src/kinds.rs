//! Kinds of request and response bodies that are not the object a request was about.
//!
//! A request's body is usually the object (a create, update or status body), but some verbs
//! and subresources carry something else: a `Status` answer, `DeleteOptions`, a pod's
//! `Binding` or `Eviction`, a `Scale`, a `TokenRequest`. The linker, the decorator and the
//! pipeline must not take those for the object; they share this one list.

/// Kinds of bodies that are not the object a request was about.
pub const NOT_THE_OBJECT: &[&str] = &[
    "Status",
    "DeleteOptions",
    "Binding",
    "Eviction",
    "Scale",
    "TokenRequest",
];

/// Kinds that are a *view* of objects rather than the object: what `kubectl get` (`Table`)
/// and metadata-only clients (`PartialObjectMetadata`) ask for. They name the object and
/// carry its metadata, but not its spec or status.
pub const OBJECT_VIEWS: &[&str] = &["Table", "PartialObjectMetadata"];

/// Whether a body of `kind` is not the object its request was about (see [`NOT_THE_OBJECT`]).
pub fn is_not_the_object(kind: &str) -> bool {
    NOT_THE_OBJECT.contains(&kind)
}

/// Whether a body of `kind` is a view of objects (see [`OBJECT_VIEWS`]).
pub fn is_object_view(kind: &str) -> bool {
    OBJECT_VIEWS.contains(&kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_that_are_not_the_object() {
        for k in ["Status", "Binding", "Scale", "Eviction"] {
            assert!(is_not_the_object(k), "{k}");
        }
        for k in ["Pod", "Deployment", "Table", "Event"] {
            assert!(!is_not_the_object(k), "{k}");
        }
        assert!(is_object_view("Table"));
        assert!(is_object_view("PartialObjectMetadata"));
        assert!(!is_object_view("Pod"));
    }
}
