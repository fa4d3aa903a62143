//! What a correct tracer should make of a generated stream.

/// One Kubernetes object that receives at least one mutating request in the stream: the
/// Deployment, every ReplicaSet and every Pod. Not core/v1 Events, not Leases.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TruthObject {
    /// Plural resource: `deployments`, `replicasets` or `pods`.
    pub resource: String,
    /// API group: `apps`, or `""` for core.
    pub group: String,
    /// Kind: `Deployment`, `ReplicaSet` or `Pod`.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name (for pods, the name the API server generated from `generateName`).
    pub name: String,
    /// The object's uid as the API server assigned it.
    pub uid: String,
    /// Controlling owner `(resource, name)`, in the same namespace: a ReplicaSet's Deployment,
    /// a Pod's ReplicaSet; `None` for a Deployment.
    pub parent: Option<(String, String)>,
    /// Distinct mutating auditIDs that target this object, subresources included
    /// (`deployments/status`, `pods/binding`, `pods/status`) and failed ones (the 409) too.
    pub requests: usize,
    /// Distinct auditIDs among `requests` whose response code was ≥ 400.
    pub failed_requests: usize,
    /// Whether the object is deleted for good by the end of the stream (old pods after the
    /// kubelet's final delete).
    pub deleted: bool,
}

/// Expected results for a generated stream.
///
/// Request counts are distinct auditIDs (a request with RequestReceived and ResponseComplete
/// lines counts once); `*_lines` and `noise_events` count lines.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroundTruth {
    /// Every object that gets at least one mutating request, in creation order (a Deployment,
    /// then its first ReplicaSet, its pods, and so on).
    pub objects: Vec<TruthObject>,
    /// Distinct auditIDs with verb create/update/patch/delete/deletecollection on resources
    /// other than `leases` and `events` — what becomes request spans. Includes failed ones.
    pub mutating_requests: usize,
    /// Of `mutating_requests`, those answered with a code ≥ 400 (the 409 Conflict with noise).
    pub failed_requests: usize,
    /// Lines belonging to `mutating_requests` (RequestReceived + ResponseComplete).
    pub mutating_lines: usize,
    /// Distinct core/v1 Event writes (creates; `events` resource, any verb).
    pub kube_events: usize,
    /// Lines belonging to `kube_events`.
    pub kube_event_lines: usize,
    /// Lines a default filter must drop: get/list/watch (all stages), non-resource requests,
    /// and lease updates (all stages).
    pub noise_events: usize,
    /// All lines: `mutating_lines + kube_event_lines + noise_events`.
    pub total_lines: usize,
}

impl GroundTruth {
    /// The objects without a parent (one per trace: the Deployments).
    pub fn roots(&self) -> impl Iterator<Item = &TruthObject> {
        self.objects.iter().filter(|o| o.parent.is_none())
    }

    /// The objects whose parent is `(resource, name)` in `namespace`.
    pub fn children_of<'a>(
        &'a self,
        namespace: &'a str,
        resource: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a TruthObject> + 'a {
        self.objects.iter().filter(move |o| {
            o.namespace == namespace
                && o.parent
                    .as_ref()
                    .is_some_and(|(r, n)| r == resource && n == name)
        })
    }

    /// Looks an object up by uid.
    pub fn object_by_uid(&self, uid: &str) -> Option<&TruthObject> {
        self.objects.iter().find(|o| o.uid == uid)
    }

    /// The Deployment at the top of `o`'s ownership chain (`o` itself for a Deployment).
    pub fn root_of<'a>(&'a self, o: &'a TruthObject) -> Option<&'a TruthObject> {
        let mut cur = o;
        for _ in 0..8 {
            match &cur.parent {
                None => return Some(cur),
                Some((r, n)) => {
                    cur = self.objects.iter().find(|x| {
                        x.namespace == cur.namespace && &x.resource == r && &x.name == n
                    })?;
                }
            }
        }
        None
    }
}
