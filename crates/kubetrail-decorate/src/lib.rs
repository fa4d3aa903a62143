//! The decorate stage: what a request did to its object, and no secret on the way out.
//!
//! An audit event says *that* a controller patched a Deployment; the person reading the trace
//! wants to know *what* changed (`spec.template.spec.containers[name=web].image: nginx:1.25 →
//! nginx:1.27`), what a deleted object looked like, and must never see a Secret's value in
//! Jaeger. The API server records whole objects, not changes, so this stage remembers the last
//! state it saw of each object (a cache bounded in bytes) and diffs the next one against it.
//!
//! * [`redact_event`] replaces secret values in an event's bodies **in place**, before any
//!   other stage reads them: Secret `data`/`stringData`/`binaryData` values, a Secret's
//!   `kubectl.kubernetes.io/last-applied-configuration` annotation, the same fields in patch
//!   bodies (merge, strategic-merge and JSON patches), tokens of `TokenRequest`s and
//!   `TokenReview`s, and configured paths. A value becomes `<redacted sha256:XXXXXXXX>`, a
//!   salted hash, so a diff still shows *that* a value changed, never what it is.
//! * [`Decorator::decorate`] returns a [`Decoration`] for one completed request: the changes
//!   since the object's last seen state, whether an update was a no-op, and a snapshot of the
//!   object on create and delete.
//! * [`diff`] is the diff itself.
//!
//! # Use
//!
//! ```
//! use kubetrail_decorate::{DecorateConfig, Decorator};
//! use kubetrail_model::{AuditEvent, ObjectRef};
//!
//! let decorator = Decorator::new(DecorateConfig::default());
//! let event = |verb: &str, image: &str, rv: &str| -> AuditEvent {
//!     let body = format!(r#"{{"kind":"Deployment","metadata":{{"name":"web","namespace":"shop","resourceVersion":"{rv}"}},
//!         "spec":{{"template":{{"spec":{{"containers":[{{"name":"web","image":"{image}"}}]}}}}}}}}"#);
//!     serde_json::from_str(&format!(r#"{{"level":"RequestResponse","auditID":"{rv}","stage":"ResponseComplete",
//!         "requestURI":"/apis/apps/v1/namespaces/shop/deployments/web","verb":"{verb}","user":{{}},
//!         "objectRef":{{"resource":"deployments","apiGroup":"apps","namespace":"shop","name":"web"}},
//!         "responseStatus":{{"code":200}},"requestObject":{{}},"responseObject":{body}}}"#)).unwrap()
//! };
//! let web = ObjectRef::from_event(&event("create", "nginx:1.25", "1"), None).unwrap();
//!
//! let mut create = event("create", "nginx:1.25", "1");
//! decorator.redact(&mut create); // first, before anything else reads the bodies
//! assert!(decorator.decorate("prod", &web, &create).snapshot.is_some());
//!
//! let mut patch = event("patch", "nginx:1.27", "2");
//! decorator.redact(&mut patch);
//! let d = decorator.decorate("prod", &web, &patch);
//! assert_eq!(d.changes[0].path, "spec.template.spec.containers[name=web].image");
//! assert_eq!(d.changes[0].old.as_deref(), Some("nginx:1.25"));
//! assert_eq!(d.changes[0].new.as_deref(), Some("nginx:1.27"));
//! ```
//!
//! # Paths
//!
//! Changes name fields as `metadata.labels.app`, `metadata.annotations["example.com/x"]`
//! (keys that are not plain words are quoted), `spec.template.spec.containers[name=web].image`
//! and `status.conditions[type=Ready].status` (list items by key), or `spec.args[3]` (by index,
//! only when a list cannot be keyed). Configured `ignore` and `redact.paths` use the same
//! syntax plus `*` (any one segment) and `[*]` (any list item); a run of plain segments may
//! name one key with dots in it (`metadata.annotations.example.com/token`).
//!
//! # Lists
//!
//! Lists of objects are matched by a key field, not by position, so reordering is no change:
//! `uid` then `name` for `ownerReferences`, `type` for `conditions`, otherwise the first of
//! `name`, `type`, `uid`, `key`, `mountPath`, `devicePath`, `containerPort`, `port`,
//! `ip` that every
//! item on both sides has, uniquely per side. Other lists are compared by index after their
//! common head and tail, except short lists of scalars (whose JSON fits in
//! `max_value_bytes`), which are shown whole.
//!
//! # Values
//!
//! A plain string is shown as itself (`nginx:1.27`); a string that would read as another JSON
//! value (`"12"`, `"true"`, empty, with newlines) is quoted; maps and lists are compact JSON.
//! An absent field, `null` and an empty map or list are the same (Kubernetes' `omitempty`): a
//! field going from one to another is no change. An added or removed map is reported key by
//! key, an added or removed list of keyed items item by item; an added or removed list item,
//! and any other value, is one change with the whole value.
//!
//! # Noise
//!
//! [`NOISE_PATHS`] are never diffed: `managedFields`, `resourceVersion`, `generation`,
//! `creationTimestamp`, `uid`, `selfLink`, the `kubectl apply` annotation,
//! `status.observedGeneration`, and the heartbeat-like condition timestamps
//! (`lastHeartbeatTime`, `lastProbeTime`, `lastUpdateTime`; `lastTransitionTime` is kept: it
//! moves only with the condition's status, and says when).
//!
//! # Who changed what
//!
//! A diff is against the last state *seen*, and requests whose bodies were not recorded
//! (a `pods/binding`, a patch at `Request` level) may have changed the object in between.
//! A request can only change part of an object: a `status` write only `status`, a main
//! resource write of a built-in kind with a status subresource never `status`, a patch only
//! the fields it names. Changes outside that part are not shown as the request's
//! ([`Decoration::changes`]) but apart ([`Decoration::unattributed`]); see the `scope`
//! module for the exact rules.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod decorator;
mod diff;
mod path;
mod redact;
mod scope;
mod states;

use serde::Deserialize;

pub use decorator::Decorator;
pub use diff::{NOISE_PATHS, diff};
pub use redact::{Redaction, Salt, SaltSecret, UNREDACTABLE_BODY};

/// Settings of the decorate stage, as found under `decorate:` in the config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecorateConfig {
    /// Diffs against the last seen state.
    pub diff: DiffConfig,
    /// Snapshots of objects when they are created and deleted.
    pub snapshot: SnapshotConfig,
    /// Redaction of secret values.
    pub redact: RedactConfig,
}

/// A malformed setting of the decorate stage ([`DecorateConfig::validate`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A path (of `diff.ignore` or `redact.paths`) that does not parse.
    #[error("{field}: {path:?}: {problem}")]
    Path {
        /// The setting (`diff.ignore`, `redact.paths`).
        field: &'static str,
        /// The path as written.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The redaction salt is too short.
    #[error("redact.salt: {problem}")]
    Salt {
        /// What is wrong with it.
        problem: String,
    },
    /// A `redact.resources` entry that is not `resource` or `resource.group`.
    #[error("redact.resources: {resource:?} is not \"resource\" or \"resource.group\"")]
    Resource {
        /// The entry as written.
        resource: String,
    },
}

impl DecorateConfig {
    /// Checks every configured path; the error names the first malformed one. Malformed paths
    /// are still used, read as literally as possible, so a config loader should call this to
    /// reject typos (a redaction path that matches nothing hides nothing).
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (what, paths) in [
            ("diff.ignore", &self.diff.ignore),
            ("redact.paths", &self.redact.paths),
        ] {
            for p in paths {
                if let Some(problem) = path::parse_segs(p).1 {
                    return Err(ConfigError::Path {
                        field: what,
                        path: p.clone(),
                        problem,
                    });
                }
            }
        }
        if let Some(problem) = self.redact.salt.as_ref().and_then(SaltSecret::problem) {
            return Err(ConfigError::Salt { problem });
        }
        for r in &self.redact.resources {
            if r.is_empty() || r.contains('/') {
                return Err(ConfigError::Resource {
                    resource: r.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Diff settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiffConfig {
    /// Compute diffs at all. Default: true.
    pub enabled: bool,
    /// Bytes of last seen states to keep, weighed by their compact JSON size (without the
    /// ignored fields) plus a small per-entry overhead. The least recently used are forgotten first; an object whose state
    /// was forgotten gets no diff on its next change. Default: 256 MiB.
    pub cache_bytes: u64,
    /// Extra paths to ignore (path syntax, with `*` and `[*]` wildcards), besides
    /// [`NOISE_PATHS`].
    pub ignore: Vec<String>,
    /// At most this many changes per request; the rest are counted in
    /// [`Decoration::more_changes`]. Default: 64.
    pub max_changes: usize,
    /// Old and new values longer than this (in bytes) are cut, with an ellipsis and their
    /// length. Default: 256.
    pub max_value_bytes: usize,
}

impl Default for DiffConfig {
    fn default() -> Self {
        DiffConfig {
            enabled: true,
            cache_bytes: 256 << 20,
            ignore: Vec::new(),
            max_changes: 64,
            max_value_bytes: 256,
        }
    }
}

/// Snapshot settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotConfig {
    /// Snapshot an object when it is created. Default: true.
    pub on_create: bool,
    /// Snapshot an object when it is deleted. Default: true.
    pub on_delete: bool,
    /// Snapshots longer than this (in bytes) are cut, with an ellipsis and their length.
    /// Default: 16 KiB.
    pub max_bytes: usize,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            on_create: true,
            on_delete: true,
            max_bytes: 16 << 10,
        }
    }
}

/// Redaction settings. Secrets are always redacted; these add to that.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedactConfig {
    /// Extra paths whose values are replaced in every object body (and in JSON patches that
    /// touch them), e.g. `spec.template.spec.containers[*].env[*].value` or
    /// `metadata.annotations["example.com/token"]`.
    pub paths: Vec<String>,
    /// Extra resources, `resource` or `resource.group` (`configmaps`,
    /// `sealedsecrets.bitnami.com`), whose `data`, `stringData` and `binaryData` are redacted
    /// like a Secret's.
    pub resources: Vec<String>,
    /// The secret text markers are salted with. Unset, each process draws a random salt,
    /// and two processes give one value different markers; set it (the same in every
    /// `receive` and `consume` process of a deployment) for markers that agree. The binary
    /// also reads it from `KUBETRAIL_REDACT_SALT` or from [`salt_file`](Self::salt_file).
    pub salt: Option<SaltSecret>,
    /// A file holding the salt text (a mounted Kubernetes Secret); read by the binary at
    /// start-up into [`salt`](Self::salt).
    pub salt_file: Option<std::path::PathBuf>,
}

/// Replaces secret values in the event's bodies in place and returns how many values were
/// replaced. Call it before anything else reads the event.
///
/// Redacted: in Secrets (the core `secrets` resource, bodies of kind `Secret`, and the items of
/// a Secret list, as a deletecollection returns) and objects of `config.resources`, every
/// value of `data`, `stringData` and `binaryData` and the
/// `kubectl.kubernetes.io/last-applied-configuration` annotation (it holds the data too);
/// the same in patch bodies of those resources (merge and strategic-merge patches carry them
/// at top level; in a JSON patch, the `value` of ops on those paths); the token in a
/// `serviceaccounts/token` response and in a `TokenReview`; and every path of
/// `config.paths`, in any body. A value becomes `<redacted sha256:XXXXXXXX>`: the first 8 hex
/// digits of SHA-256 over the salt and the value, so equal values give equal markers and a
/// diff still shows whether a value changed. Redacting an already redacted event changes
/// nothing. Other bodies are left byte for byte as they were; a redacted body is re-serialized
/// (compact, keys sorted).
///
/// Fails closed: a body that has to be looked into but does not parse (nesting deeper than
/// the JSON parser's limit of 128, say) is replaced whole by [`UNREDACTABLE_BODY`]; such a
/// body counts as one. [`redact_event_report`] tells the two apart.
pub fn redact_event(
    event: &mut kubetrail_model::AuditEvent,
    config: &RedactConfig,
    salt: &Salt,
) -> usize {
    let r = redact_event_report(event, config, salt);
    r.values + r.whole_bodies
}

/// [`redact_event`], telling values replaced from whole bodies replaced.
pub fn redact_event_report(
    event: &mut kubetrail_model::AuditEvent,
    config: &RedactConfig,
    salt: &Salt,
) -> Redaction {
    redact::Rules::compile(config).redact_event(event, salt)
}

/// One changed field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Path of the field (`spec.template.spec.containers[name=web].image`).
    pub path: String,
    /// The value before, rendered (a plain string as itself, anything else as compact JSON);
    /// `None` when the field was added.
    pub old: Option<String>,
    /// The value after, rendered the same way; `None` when the field was removed.
    pub new: Option<String>,
}

/// What decorating one request found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decoration {
    /// The changes this request made, ordered by path, at most `diff.max_changes`.
    pub changes: Vec<Change>,
    /// How many changes there were beyond `changes` (show as "… and N more").
    pub more_changes: usize,
    /// Changes since the last seen state that this request cannot have made (outside the
    /// subresource or the fields it wrote: see the crate docs, "Who changed what"), ordered
    /// by path, at most `diff.max_changes`. Shown apart as `kubetrail.diff.unattributed`.
    pub unattributed: Vec<Change>,
    /// How many unattributed changes there were beyond `unattributed`.
    pub more_unattributed: usize,
    /// An update or patch that changed nothing it could have changed (noise ignored; other
    /// requests' changes may still show in `unattributed`).
    pub noop: bool,
    /// Whether a prior state was known and a diff computed. When false, `changes` is empty
    /// and says nothing: no diff is ever invented.
    pub had_prior_state: bool,
    /// Compact JSON of the (redacted) object on create and delete, without `managedFields` and
    /// the `kubectl apply` annotation (and without the other ignored fields when a delete's
    /// snapshot comes from the remembered state), cut to `snapshot.max_bytes`.
    pub snapshot: Option<String>,
}
