//! Kubernetes Events (core/v1 `events` and `events.k8s.io/v1`) in the audit stream.
//!
//! An Event is a record *about* another object ("Scheduled", "BackOff", "FailedMount"), so
//! its create/patch requests are placed on that object's span rather than becoming objects of
//! their own. A patch of an existing Event (the count going up) rarely repeats the object it is
//! about, so the pipeline remembers, per Event name, which object that was (bounded LRU).

use std::num::NonZeroUsize;

use lru::LruCache;
use serde::Deserialize;

use kubetrail_aggregate::KubeEvent;
use kubetrail_model::{AuditEvent, ObjectRef};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Involved {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    uid: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Series {
    #[serde(default)]
    count: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventBody {
    #[serde(default)]
    involved_object: Option<Involved>,
    #[serde(default)]
    regarding: Option<Involved>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    note: Option<String>,
    #[serde(default, rename = "type")]
    type_: Option<String>,
    #[serde(default)]
    count: Option<i64>,
    #[serde(default)]
    deprecated_count: Option<i64>,
    #[serde(default)]
    series: Option<Series>,
    #[serde(default)]
    reporting_controller: Option<String>,
    #[serde(default)]
    reporting_component: Option<String>,
}

/// Whether a request is about a Kubernetes Event object.
pub(crate) fn is_event_request(e: &AuditEvent) -> bool {
    e.object_ref.as_ref().is_some_and(|r| {
        r.resource.as_deref() == Some("events")
            && matches!(r.api_group.as_deref().unwrap_or(""), "" | "events.k8s.io")
    })
}

/// Remembers which object each Event is about.
pub(crate) struct EventIndex {
    about: LruCache<(String, String), ObjectRef>,
}

impl EventIndex {
    pub(crate) fn new(capacity: usize) -> Self {
        EventIndex {
            about: LruCache::new(NonZeroUsize::new(capacity.max(1)).unwrap_or(NonZeroUsize::MIN)),
        }
    }

    /// The object an Event request is about, and what the Event says. `None` when neither the
    /// body nor an earlier request of the same Event tells.
    pub(crate) fn place(&mut self, e: &AuditEvent) -> Option<(ObjectRef, KubeEvent)> {
        let r = e.object_ref.as_ref()?;
        let ns = r.namespace.clone().unwrap_or_default();
        let body: EventBody = e
            .request_object
            .as_deref()
            .or(e.response_object.as_deref())
            .and_then(|b| serde_json::from_str(b.get()).ok())
            .unwrap_or_default();
        let resp: Option<EventBody> = e
            .response_object
            .as_deref()
            .and_then(|b| serde_json::from_str(b.get()).ok());
        // A full body (create, update, or a patch response) names the object; fill the gaps of
        // a partial request body from the response.
        let involved = body
            .involved_object
            .as_ref()
            .or(body.regarding.as_ref())
            .or_else(|| {
                resp.as_ref()
                    .and_then(|b| b.involved_object.as_ref().or(b.regarding.as_ref()))
            });
        let event_name = r.name.clone().or_else(|| {
            e.response_object
                .as_deref()
                .and_then(|b| kubetrail_model::ObjectHead::parse(b).ok())
                .and_then(|h| h.metadata.name)
        });
        let about = match involved.and_then(|i| involved_ref(i, &ns)) {
            Some(o) => {
                if let Some(name) = &event_name {
                    self.about.put((ns.clone(), name.clone()), o.clone());
                }
                o
            }
            None => self.about.get(&(ns, event_name?))?.clone(),
        };
        let pick =
            |f: fn(&EventBody) -> Option<String>| f(&body).or_else(|| resp.as_ref().and_then(f));
        let count = body
            .series
            .as_ref()
            .and_then(|s| s.count)
            .or(body.count)
            .or(body.deprecated_count)
            .or_else(|| {
                resp.as_ref()
                    .and_then(|b| b.series.as_ref().and_then(|s| s.count).or(b.count))
            });
        let info = KubeEvent {
            reason: pick(|b| b.reason.clone()).unwrap_or_default(),
            message: pick(|b| b.message.clone().or_else(|| b.note.clone())).unwrap_or_default(),
            kind: pick(|b| b.type_.clone()).unwrap_or_else(|| "Normal".into()),
            count,
            reporter: pick(|b| {
                b.reporting_controller
                    .clone()
                    .or_else(|| b.reporting_component.clone())
            }),
        };
        Some((about, info))
    }
}

fn involved_ref(i: &Involved, event_namespace: &str) -> Option<ObjectRef> {
    let kind = i.kind.as_deref().filter(|k| !k.is_empty())?;
    let name = i.name.as_deref().filter(|n| !n.is_empty())?;
    let owner = kubetrail_model::OwnerRef {
        api_version: i.api_version.clone().unwrap_or_else(|| "v1".into()),
        kind: kind.to_owned(),
        name: name.to_owned(),
        uid: i.uid.clone().unwrap_or_default(),
        ..Default::default()
    };
    let mut o = ObjectRef::from_owner_ref(&owner, event_namespace);
    // The Event says where the object lives; trust it over the kind-based guess.
    if let Some(ns) = &i.namespace {
        o.namespace = ns.clone();
    } else if !o.namespace.is_empty() && kind == "Node" {
        o.namespace.clear();
    }
    Some(o)
}
