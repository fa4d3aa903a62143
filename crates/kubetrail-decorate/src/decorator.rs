//! The stateful part: last seen states, and what each request changed.

use std::sync::{Arc, LazyLock};

use kubetrail_model::{AuditEvent, ObjectRef, Stage, kinds};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::diff::{Ignore, compact_prefix, diff_scoped, strip_bulk, truncate};
use crate::redact::Rules;
use crate::scope::Scope;
use crate::states::ByteLru;
use crate::{DecorateConfig, Decoration, Redaction, Salt};

/// Bytes an entry costs besides its key and JSON (the entry, its Arc, the LRU's links).
const ENTRY_OVERHEAD: usize = 96;

/// The salt of [`Decorator::redact`] when none is configured: one per process.
static PROCESS_SALT: LazyLock<Salt> = LazyLock::new(Salt::random);

/// A remembered object state.
#[derive(Debug)]
struct Stored {
    uid: Option<String>,
    /// Compact JSON, redacted, without the ignored fields (noise and `diff.ignore`).
    json: Box<str>,
}

/// Diffs requests against the objects' last seen states and takes snapshots.
///
/// Holds the states in a cache bounded in bytes (`diff.cache_bytes`, least recently used
/// forgotten first). Shared by reference (`&self`); safe to use from several threads, but the
/// pipeline feeds it one object's events in order, which is what makes diffs meaningful.
pub struct Decorator {
    config: DecorateConfig,
    ignore: Ignore,
    redact: Rules,
    /// The markers' salt: from `redact.salt`, else the process's random one.
    salt: Salt,
    /// Last seen states by (cluster, object identity); `None` when nothing needs them.
    states: Option<ByteLru<Stored>>,
}

impl std::fmt::Debug for Decorator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decorator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What the request's body tells about the object.
struct Body {
    value: Value,
    uid: Option<String>,
}

impl Decorator {
    /// A decorator with the given settings and an empty state cache.
    pub fn new(config: DecorateConfig) -> Self {
        let wants_states =
            (config.diff.enabled || config.snapshot.on_delete) && config.diff.cache_bytes > 0;
        // Evictions follow the order of the calls only (never time): the same input gives
        // the same diffs whatever the speed.
        let capacity = usize::try_from(config.diff.cache_bytes).unwrap_or(usize::MAX);
        let states = wants_states.then(|| {
            ByteLru::new(capacity, |k: &str, v: &Stored| {
                k.len() + v.json.len() + v.uid.as_deref().map_or(0, str::len) + ENTRY_OVERHEAD
            })
        });
        Decorator {
            ignore: Ignore::compile(&config.diff),
            redact: Rules::compile(&config.redact),
            salt: config
                .redact
                .salt
                .as_ref()
                .map_or_else(|| PROCESS_SALT.clone(), Salt::from_secret),
            config,
            states,
        }
    }

    /// [`redact_event`](crate::redact_event) with this decorator's `redact` settings
    /// (compiled once) and a salt shared by the whole process.
    pub fn redact(&self, event: &mut AuditEvent) -> usize {
        let r = self.redact_report(event);
        r.values + r.whole_bodies
    }

    /// [`redact`](Self::redact), telling values replaced from whole bodies replaced (fail
    /// closed: bodies that had to be redacted but could not be parsed).
    pub fn redact_report(&self, event: &mut AuditEvent) -> Redaction {
        self.redact.redact_event(event, &self.salt)
    }

    /// Decorates one completed request about `object` in `cluster`. The event's bodies must
    /// already be redacted ([`redact_event`](crate::redact_event)).
    ///
    /// * `create` of the object (not of a subresource), with a body that is the object (the
    ///   response at `RequestResponse` level, else the request): snapshot (if
    ///   `snapshot.on_create`); the state is remembered.
    /// * `update`/`patch` of the object or of its `status`, with a response that is the object:
    ///   diff against the remembered state, if there is one of the same uid; the new state is
    ///   remembered. An `update` recorded at `Request` level uses its request body (the whole
    ///   object; for `status` only its status counts, and an update of the main resource keeps
    ///   the remembered status when the body has none, as the API server does). A `patch`
    ///   without a response body, an update or patch without bodies, and a successful update
    ///   of another subresource (`scale`, …) changed the object in a way that cannot be seen:
    ///   the remembered state is forgotten, and no diff is given.
    /// * `delete`: snapshot (if `snapshot.on_delete`) of the response when it is the object
    ///   (a graceful delete returns it), else of the remembered state (which lacks the
    ///   ignored fields: `resourceVersion`, `uid`, …). The state is forgotten,
    ///   unless the response is the object with a `deletionTimestamp` and finalizers or a
    ///   grace period still to run (a pod being terminated): then it is remembered.
    /// * `get` with the object as response (if the filter lets reads through): remembered, so
    ///   the next change gets a diff. No decoration.
    /// * `deletecollection`: the items of a list response are forgotten.
    /// * Failed requests (code ≥ 400), dry runs, stages other than `ResponseComplete` and
    ///   other verbs: nothing.
    ///
    /// A remembered state with another uid than the request's is another incarnation of the
    /// name: no diff against it.
    pub fn decorate(&self, cluster: &str, object: &ObjectRef, event: &AuditEvent) -> Decoration {
        let mut d = Decoration::default();
        let verb = event.verb.as_str();
        if event.is_dry_run() {
            return d;
        }
        // Only a completed request says what became of the object. (A request released
        // without its final stage is left alone: an earlier stage must not wipe the state the
        // final one will be diffed against.)
        if event.stage != Stage::ResponseComplete {
            return d;
        }
        if event.response_code().is_some_and(|c| c >= 400) {
            return d;
        }
        let sub = event
            .object_ref
            .as_ref()
            .and_then(|r| r.subresource.as_deref());
        if object.name.is_empty() {
            if verb == "deletecollection" {
                self.forget_listed(cluster, object, event);
            }
            return d;
        }
        let k = key(cluster, object, &object.name, &object.namespace);
        match (verb, sub) {
            ("create", None) => {
                let Some(mut body) = self
                    .object_body(event.response_object.as_deref(), object)
                    .or_else(|| self.object_body(event.request_object.as_deref(), object))
                else {
                    return d;
                };
                if self.config.snapshot.on_create {
                    d.snapshot = Some(self.snapshot(&body.value));
                }
                self.ignore.strip(&mut body.value);
                let uid = body.uid.or_else(|| object.uid.clone());
                self.remember(k, uid, to_json(&body.value));
            }
            ("update" | "patch", None | Some("status")) => {
                self.on_write(&k, object, event, sub, &mut d);
            }
            ("update" | "patch", Some(_)) => self.forget(&k),
            ("delete", None) => {
                let body = self.object_body(event.response_object.as_deref(), object);
                let uid = body
                    .as_ref()
                    .and_then(|b| b.uid.clone())
                    .or_else(|| object.uid.clone());
                if self.config.snapshot.on_delete {
                    d.snapshot = match &body {
                        Some(b) => Some(self.snapshot(&b.value)),
                        None => self.recall(&k, uid.as_deref()).map(|s| {
                            truncate(&s.json, s.json.len(), self.config.snapshot.max_bytes)
                        }),
                    };
                }
                match body {
                    Some(mut b) if still_there(&b.value) => {
                        self.ignore.strip(&mut b.value);
                        self.remember(k, uid, to_json(&b.value));
                    }
                    _ => self.forget(&k),
                }
            }
            ("get", None) => {
                if let Some(mut b) = self.object_body(event.response_object.as_deref(), object) {
                    self.ignore.strip(&mut b.value);
                    let uid = b.uid.or_else(|| object.uid.clone());
                    self.remember(k, uid, to_json(&b.value));
                }
            }
            _ => {}
        }
        d
    }

    fn on_write(
        &self,
        k: &str,
        object: &ObjectRef,
        event: &AuditEvent,
        sub: Option<&str>,
        d: &mut Decoration,
    ) {
        let (body, from_request) = match self.object_body(event.response_object.as_deref(), object)
        {
            Some(b) => (b, false),
            None if event.verb == "update" => {
                match self.object_body(event.request_object.as_deref(), object) {
                    Some(b) => (b, true),
                    None => return self.forget(k),
                }
            }
            // A patch is not the object: what it became is unknown.
            None => return self.forget(k),
        };
        let uid = body.uid.or_else(|| object.uid.clone());
        let prior = self.recall(k, uid.as_deref());
        let mut new = body.value;
        let mut old = None;
        if from_request && let Some(p) = &prior {
            old = serde_json::from_str::<Value>(&p.json).ok();
            if let Some(old) = &old {
                new = merge_request_body(old, new, sub);
            }
        }
        self.ignore.strip(&mut new);
        let json = to_json(&new);
        let uid = uid.or_else(|| prior.as_ref().and_then(|p| p.uid.clone()));
        if let Some(p) = &prior
            && self.config.diff.enabled
        {
            d.had_prior_state = true;
            // Both sides are stored without noise: equal text, no change (most resyncs).
            if *p.json != *json {
                if old.is_none() {
                    old = serde_json::from_str::<Value>(&p.json).ok();
                }
                if let Some(old) = &old {
                    let request = (event.verb == "patch")
                        .then_some(event.request_object.as_deref())
                        .flatten()
                        .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok());
                    let scope = Scope::of_write(
                        &object.group,
                        &object.resource,
                        &event.verb,
                        sub,
                        request.as_ref(),
                    );
                    let diff = diff_scoped(
                        old,
                        &new,
                        self.config.diff.max_changes,
                        self.config.diff.max_value_bytes,
                        &scope,
                    );
                    d.changes = diff.changes;
                    d.more_changes = diff.more;
                    d.unattributed = diff.unattributed;
                    d.more_unattributed = diff.more_unattributed;
                } else {
                    d.had_prior_state = false;
                }
            }
            d.noop = d.had_prior_state && d.changes.is_empty() && d.more_changes == 0;
        }
        self.remember(k.to_owned(), uid, json);
    }

    /// Bytes and entries held in the state cache (for metrics).
    pub fn cache_size(&self) -> (u64, u64) {
        self.states.as_ref().map_or((0, 0), ByteLru::size)
    }

    /// The body, parsed, when it is the object itself (not a Status, DeleteOptions, …, and
    /// not another object's name), without its bulky fields.
    fn object_body(&self, raw: Option<&RawValue>, object: &ObjectRef) -> Option<Body> {
        let mut value: Value = serde_json::from_str(raw?.get()).ok()?;
        let map = value.as_object()?;
        if map
            .get("kind")
            .and_then(Value::as_str)
            .is_some_and(|k| kinds::is_not_the_object(k) || kinds::is_object_view(k))
        {
            return None;
        }
        // The API server answers in the group of the request: a body of another group (a
        // meta.k8s.io Table, an autoscaling Scale) is something else.
        if let Some(api_version) = map.get("apiVersion").and_then(Value::as_str)
            && api_version.rsplit_once('/').map_or("", |(g, _)| g) != object.group
        {
            return None;
        }
        let meta = map.get("metadata");
        if let Some(name) = meta.and_then(|m| m.get("name")).and_then(Value::as_str)
            && name != object.name
        {
            return None;
        }
        let uid = meta
            .and_then(|m| m.get("uid"))
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
            .map(str::to_owned);
        strip_bulk(&mut value);
        Some(Body { value, uid })
    }

    /// Compact JSON of `v`, cut to `snapshot.max_bytes` (without serializing past that).
    fn snapshot(&self, v: &Value) -> String {
        let max = self.config.snapshot.max_bytes;
        let (s, total) = compact_prefix(v, max);
        truncate(&s, total, max)
    }

    /// The remembered state, if it is of the same incarnation (an unknown uid on either side
    /// matches).
    fn recall(&self, k: &str, uid: Option<&str>) -> Option<Arc<Stored>> {
        let s = self.states.as_ref()?.get(k)?;
        match (s.uid.as_deref(), uid) {
            (Some(a), Some(b)) if a != b => None,
            _ => Some(s),
        }
    }

    fn remember(&self, k: String, uid: Option<String>, json: String) {
        if let Some(c) = &self.states {
            c.insert(
                k,
                Stored {
                    uid,
                    json: json.into_boxed_str(),
                },
            );
        }
    }

    fn forget(&self, k: &str) {
        if let Some(c) = &self.states {
            c.remove(k);
        }
    }

    fn forget_listed(&self, cluster: &str, collection: &ObjectRef, event: &AuditEvent) {
        if self.states.is_none() {
            return;
        }
        let Some(raw) = event.response_object.as_deref() else {
            return;
        };
        #[derive(serde::Deserialize)]
        struct List {
            #[serde(default)]
            items: Vec<Item>,
        }
        #[derive(serde::Deserialize)]
        struct Item {
            #[serde(default)]
            metadata: Meta,
        }
        #[derive(serde::Deserialize, Default)]
        struct Meta {
            #[serde(default)]
            name: Option<String>,
            #[serde(default)]
            namespace: Option<String>,
        }
        let Ok(list) = serde_json::from_str::<List>(raw.get()) else {
            return;
        };
        for it in list.items {
            if let Some(name) = it.metadata.name.as_deref() {
                let ns = it
                    .metadata
                    .namespace
                    .as_deref()
                    .unwrap_or(&collection.namespace);
                self.forget(&key(cluster, collection, name, ns));
            }
        }
    }
}

/// The object after an update recorded at `Request` level, from its request body: for the
/// `status` subresource only the status is taken (the API server ignores the rest); for the
/// main resource, a body without `status` keeps the old one (the API server ignores `status`
/// there, for the resources that have the subresource).
fn merge_request_body(old: &Value, mut new: Value, sub: Option<&str>) -> Value {
    match sub {
        Some("status") => {
            let mut merged = old.clone();
            if let (Some(m), Some(status)) = (merged.as_object_mut(), new.get_mut("status")) {
                m.insert("status".into(), status.take());
            }
            merged
        }
        _ => {
            if let (Some(m), Some(status)) = (new.as_object_mut(), old.get("status"))
                && !m.contains_key("status")
            {
                m.insert("status".into(), status.clone());
            }
            new
        }
    }
}

/// Whether a delete's response describes an object that still exists: deletion requested,
/// with finalizers pending or a grace period running (a pod's kubelet deletes it for good
/// later, with a grace period of 0).
fn still_there(v: &Value) -> bool {
    let Some(meta) = v.get("metadata") else {
        return false;
    };
    let requested = meta.get("deletionTimestamp").is_some_and(|t| !t.is_null());
    let finalizers = meta
        .get("finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty());
    let grace = meta
        .get("deletionGracePeriodSeconds")
        .and_then(Value::as_i64)
        .is_some_and(|g| g > 0);
    requested && (finalizers || grace)
}

/// Compact JSON of a value (`serde_json::to_string`: several times faster than `Display`).
fn to_json(v: &Value) -> String {
    // Serializing a Value cannot fail.
    serde_json::to_string(v).unwrap_or_default()
}

fn key(cluster: &str, o: &ObjectRef, name: &str, namespace: &str) -> String {
    const SEP: char = '\u{1f}';
    let mut k = String::with_capacity(
        cluster.len() + o.group.len() + o.resource.len() + namespace.len() + name.len() + 4,
    );
    for (i, part) in [cluster, &o.group, &o.resource, namespace, name]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            k.push(SEP);
        }
        k.push_str(part);
    }
    k
}
