//! Deterministic trace and span ids.
//!
//! Every id is a hash of what the span stands for, so replaying the same input, or running
//! several consumers over partitions of it, gives the same ids with no shared state (Kelemetry
//! needs an etcd-backed span cache for this). The hash is XXH3 (a fixed, specified function,
//! stable across versions and platforms) over length-prefixed fields with a domain tag, so
//! no two different inputs can be spelled alike.

use std::fmt;

use xxhash_rust::xxh3::{xxh3_64, xxh3_128};

use crate::object::ObjectRef;
use crate::time::UnixNanos;

/// A 16-byte W3C / OTLP trace id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte W3C / OTLP span id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SpanId(pub [u8; 8]);

macro_rules! hex_id {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                for b in self.0 {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }
        impl $t {
            /// Parses lower- or upper-case hex of the right length; all-zero ids are invalid.
            pub fn from_hex(s: &str) -> Option<Self> {
                let mut out = Self::default();
                if s.len() != out.0.len() * 2 || !s.is_ascii() {
                    return None;
                }
                for (i, b) in out.0.iter_mut().enumerate() {
                    *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
                }
                (out != Self::default()).then_some(out)
            }
        }
    };
}
hex_id!(TraceId);
hex_id!(SpanId);

/// Parses a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`), as the Kubernetes
/// log-tracking KEP and OpenKruiseGame store in object annotations. Returns `None` for anything
/// malformed: wrong length or version, non-hex, or all-zero ids.
pub fn parse_traceparent(s: &str) -> Option<(TraceId, SpanId)> {
    let mut parts = s.trim().split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let span = parts.next()?;
    let flags = parts.next()?;
    if version.len() != 2
        || version.eq_ignore_ascii_case("ff")
        || u8::from_str_radix(version, 16).is_err()
    {
        return None;
    }
    // Version 00 has exactly four fields; later versions may append more.
    if version == "00" && parts.next().is_some() {
        return None;
    }
    if flags.len() != 2 || u8::from_str_radix(flags, 16).is_err() {
        return None;
    }
    Some((TraceId::from_hex(trace)?, SpanId::from_hex(span)?))
}

/// Builds the hashed key: a domain tag, then each field length-prefixed.
struct Key(Vec<u8>);

impl Key {
    fn new(domain: &str) -> Self {
        let mut k = Key(Vec::with_capacity(128));
        k.str(domain);
        k
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn int(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn object(&mut self, o: &ObjectRef) -> &mut Self {
        self.str(&o.group)
            .str(&o.resource)
            .str(&o.namespace)
            .str(&o.name)
    }
}

fn span_id(bytes: &[u8]) -> SpanId {
    let v = xxh3_64(bytes);
    // The all-zero id is invalid in W3C and OTLP.
    SpanId(if v == 0 { 1u64 } else { v }.to_be_bytes())
}

/// The start of the window of length `window` (nanoseconds) containing `t`: windows are
/// aligned to multiples of their length since the Unix epoch.
pub fn window_start(t: UnixNanos, window: i64) -> UnixNanos {
    let w = window.max(1);
    t.div_euclid(w) * w
}

/// The Jaeger UI address of a trace.
pub fn jaeger_trace_url(jaeger: &str, trace: TraceId) -> String {
    format!("{}/trace/{trace}", jaeger.trim_end_matches('/'))
}

/// The Jaeger UI address of the trace `object` is in at `at` (its family's trace of the
/// window of length `window` containing `at`, when `object` is the family's root): the one
/// computation behind `kubetrail url` and the webhook's `GET /redirect`.
pub fn object_trace_url(
    jaeger: &str,
    cluster: &str,
    object: &ObjectRef,
    at: UnixNanos,
    window: i64,
) -> String {
    jaeger_trace_url(jaeger, trace_id(cluster, object, window_start(at, window)))
}

/// The trace of one object family in one time window: (cluster, root object, window start).
pub fn trace_id(cluster: &str, root: &ObjectRef, window_start: UnixNanos) -> TraceId {
    let mut k = Key::new("kubetrail/trace/v1");
    k.str(cluster).object(root).int(window_start);
    let v = xxh3_128(&k.0);
    TraceId(if v == 0 { 1u128 } else { v }.to_be_bytes())
}

/// The span of one object in one window. `segment` counts the spans the object has had
/// earlier in the window (a recreation under the same name, or a later burst of activity
/// after its family's spans were emitted), 0 for the first.
pub fn object_span_id(
    cluster: &str,
    object: &ObjectRef,
    window_start: UnixNanos,
    segment: u32,
) -> SpanId {
    let mut k = Key::new("kubetrail/object/v1");
    k.str(cluster)
        .object(object)
        .int(window_start)
        .int(i64::from(segment));
    span_id(&k.0)
}

/// The span of one request, from its audit id (the same id at every stage of the request).
pub fn request_span_id(cluster: &str, audit_id: &str) -> SpanId {
    let mut k = Key::new("kubetrail/request/v1");
    k.str(cluster).str(audit_id);
    span_id(&k.0)
}

/// The span of one item of a `deletecollection` request: the request's audit id and the item.
pub fn collection_item_span_id(cluster: &str, audit_id: &str, item: &ObjectRef) -> SpanId {
    let mut k = Key::new("kubetrail/collection-item/v1");
    k.str(cluster).str(audit_id).object(item);
    span_id(&k.0)
}

/// The trace of part `part` (1, 2, …) of a family that outgrew its span budget in one window:
/// (cluster, family root, window start, part). Part 0 is the family's main trace,
/// [`trace_id`].
pub fn part_trace_id(
    cluster: &str,
    root: &ObjectRef,
    window_start: UnixNanos,
    part: u32,
) -> TraceId {
    if part == 0 {
        return trace_id(cluster, root, window_start);
    }
    let mut k = Key::new("kubetrail/part-trace/v1");
    k.str(cluster)
        .object(root)
        .int(window_start)
        .int(i64::from(part));
    let v = xxh3_128(&k.0);
    TraceId(if v == 0 { 1u128 } else { v }.to_be_bytes())
}

/// The root span of part `part` of a family: a stand-in for the owner whose objects or
/// requests the part holds.
pub fn part_root_span_id(
    cluster: &str,
    root: &ObjectRef,
    window_start: UnixNanos,
    part: u32,
) -> SpanId {
    let mut k = Key::new("kubetrail/part-root/v1");
    k.str(cluster)
        .object(root)
        .int(window_start)
        .int(i64::from(part));
    span_id(&k.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(name: &str) -> ObjectRef {
        ObjectRef {
            group: "apps".into(),
            resource: "deployments".into(),
            namespace: "shop".into(),
            name: name.into(),
            uid: None,
            cluster: None,
        }
    }

    #[test]
    fn an_objects_url_is_its_windows_trace() {
        let w = 1_800 * 1_000_000_000i64;
        let start = 1_714_557_600 * 1_000_000_000i64; // a window start
        let url = object_trace_url("http://jaeger:16686/", "c", &obj("web"), start + 5, w);
        let trace = trace_id("c", &obj("web"), start);
        assert_eq!(url, format!("http://jaeger:16686/trace/{trace}"));
        // Anywhere in the window: the same trace; the next window: another.
        assert_eq!(
            object_trace_url("http://jaeger:16686", "c", &obj("web"), start + w - 1, w),
            url
        );
        assert_ne!(
            object_trace_url("http://jaeger:16686", "c", &obj("web"), start + w, w),
            url
        );
    }

    #[test]
    fn ids_are_distinct() {
        // (Stability across runs and versions: `pinned_values_do_not_drift`.)
        let a = trace_id("c", &obj("web"), 0);
        assert_ne!(a, trace_id("c", &obj("web"), 1));
        assert_ne!(a, trace_id("c2", &obj("web"), 0));
        assert_ne!(a, trace_id("c", &obj("api"), 0));
        // Field boundaries matter: ("ab","c") is not ("a","bc").
        let x = ObjectRef {
            namespace: "ab".into(),
            name: "c".into(),
            ..obj("")
        };
        let y = ObjectRef {
            namespace: "a".into(),
            name: "bc".into(),
            ..obj("")
        };
        assert_ne!(object_span_id("c", &x, 0, 0), object_span_id("c", &y, 0, 0));
        assert_ne!(object_span_id("c", &x, 0, 0), object_span_id("c", &x, 0, 1));
        assert_eq!(request_span_id("c", "id"), request_span_id("c", "id"));
        assert_eq!(part_trace_id("c", &obj("web"), 0, 0), a);
        assert_ne!(part_trace_id("c", &obj("web"), 0, 1), a);
        assert_ne!(
            part_trace_id("c", &obj("web"), 0, 1),
            part_trace_id("c", &obj("web"), 0, 2)
        );
        assert_ne!(
            part_root_span_id("c", &obj("web"), 0, 1),
            object_span_id("c", &obj("web"), 0, 1)
        );
    }

    #[test]
    fn traceparents() {
        let (t, s) =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(t.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s.to_string(), "00f067aa0ba902b7");
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-xbf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
    }

    #[test]
    fn pinned_values_do_not_drift() {
        // Changing how ids are derived splits every trace that spans an upgrade: bump the
        // domain tag's version deliberately instead.
        let t = trace_id("prod", &obj("web"), 1_700_000_000_000_000_000);
        assert_eq!(t.to_string(), "c42aaa7dabfcf0f708e706b3c72eb888");
        assert_eq!(
            object_span_id("prod", &obj("web"), 0, 0).to_string(),
            "b55efd5a8dc75f2d"
        );
        assert_eq!(
            request_span_id("prod", "a-1").to_string(),
            "d591022eeaec30e2"
        );
        assert_eq!(TraceId::from_hex(&t.to_string()), Some(t));
        assert_eq!(SpanId::from_hex("0000000000000000"), None);
        assert_eq!(SpanId::from_hex("zz00000000000000"), None);
    }
}
