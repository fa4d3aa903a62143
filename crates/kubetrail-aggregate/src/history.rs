//! Where an object's previous span is, so that its span in the next segment or window links
//! back to it: Jaeger's references then walk back through an object's history, one window
//! (one trace) at a time.
//!
//! Only spans actually emitted are remembered (a recreated object's incarnation that had no
//! request of its own has none), for the current and the previous window; the map is pruned
//! with the segment counters, so memory is bounded like theirs.

use std::collections::{BTreeMap, HashMap};

use kubetrail_model::ids::{SpanId, TraceId};
use kubetrail_model::{ObjectRef, UnixNanos};

/// An emitted object span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Emitted {
    /// Its trace (the family's main trace or a part).
    pub trace_id: TraceId,
    /// Its span id.
    pub span_id: SpanId,
}

/// The latest emitted span of each object, per window.
#[derive(Debug, Default)]
pub(crate) struct History {
    by_window: BTreeMap<UnixNanos, HashMap<(String, ObjectRef), Emitted>>,
}

impl History {
    /// The span to link back to from the object's next span in `window`: its latest span in
    /// `window` (an earlier segment), else in the window before. The flag says whether it is
    /// in the previous window.
    pub fn previous(
        &self,
        window: UnixNanos,
        window_len: i64,
        cluster: &str,
        object: &ObjectRef,
    ) -> Option<(Emitted, bool)> {
        let key = (cluster.to_owned(), object.clone());
        if let Some(e) = self.by_window.get(&window).and_then(|m| m.get(&key)) {
            return Some((*e, false));
        }
        self.by_window
            .get(&window.saturating_sub(window_len))
            .and_then(|m| m.get(&key))
            .map(|e| (*e, true))
    }

    /// Remembers an emitted span.
    pub fn record(&mut self, window: UnixNanos, cluster: &str, object: &ObjectRef, e: Emitted) {
        self.by_window
            .entry(window)
            .or_default()
            .insert((cluster.to_owned(), object.clone()), e);
    }

    /// Forgets windows before `horizon`.
    pub fn prune(&mut self, horizon: UnixNanos) {
        while let Some((&w, _)) = self.by_window.first_key_value() {
            if w >= horizon {
                break;
            }
            self.by_window.pop_first();
        }
    }
}
