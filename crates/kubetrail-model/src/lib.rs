//! The vocabulary every other kubetrail crate speaks.
//!
//! * [`AuditEvent`] / [`EventList`]: the `audit.k8s.io/v1` (and `v1beta1`) wire types, as the
//!   API server writes them to `--audit-log-path` and POSTs them to an audit webhook. Request and
//!   response bodies stay raw JSON ([`serde_json::value::RawValue`]) until a stage needs them.
//! * [`ObjectRef`]: the identity of a Kubernetes object (group, resource, namespace, name, uid),
//!   and [`ObjectHead`]: the few metadata fields of an object body the linker needs.
//! * [`SpanRecord`]: what the pipeline produces and exporters send; protocol-neutral.
//! * [`ids`]: trace and span ids derived deterministically from what they describe, so that
//!   replays and parallel consumers agree without sharing state.
//! * [`Actor`]: the component that performed a request (kubelet, scheduler, kubectl, …).
//! * Helpers every stage needs once: the wall clock in Unix nanoseconds ([`now_unix_nanos`]),
//!   the body kinds that are not the object ([`kinds`]), whether a request was a dry run
//!   ([`AuditEvent::is_dry_run`]), and a bound on log lines about per-item problems
//!   ([`ratelimit`]).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod actor;
mod audit;
pub mod ids;
pub mod kinds;
mod object;
pub mod ratelimit;
mod span;
mod time;

pub use actor::Actor;
pub use audit::{AuditEvent, EventList, Level, ObjectReference, Stage, UserInfo};
pub use object::{
    ObjectHead, ObjectMetaHead, ObjectRef, OwnerRef, ParseObjectRefError, known_group,
    resource_for_kind,
};
pub use span::{
    AttrKey, AttrValue, SpanEventRecord, SpanKind, SpanLinkRecord, SpanRecord, SpanStatus,
};
pub use time::{UnixNanos, format_rfc3339, now_unix_nanos, parse_rfc3339_nanos, unix_nanos};
