//! The simulated object store: current state of each family's Deployment, ReplicaSets and Pods,
//! and their JSON as the API server returns it (defaults applied, managedFields, status).

use crate::plan::{FamilyPlan, PodStep, Progress};
use crate::time::{Micros, rfc3339_micros, rfc3339_secs};
use serde_json::{Map, Value, json};

/// A `managedFields` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fields {
    DeployCreate,
    DeployPatch,
    DeployStatus,
    RsSpec,
    RsStatus,
    /// A pod created by ReplicaSet `.0`.
    PodCreate(usize),
    PodStatus,
}

#[derive(Clone, Debug)]
pub(crate) struct Managed {
    pub fields: Fields,
    pub time: Micros,
}

/// Inserts or refreshes a managedFields entry.
pub(crate) fn touch(list: &mut Vec<Managed>, fields: Fields, time: Micros) {
    match list.iter_mut().find(|m| m.fields == fields) {
        Some(m) => m.time = time,
        None => list.push(Managed { fields, time }),
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Cond {
    pub typ: &'static str,
    pub status: &'static str,
    pub reason: Option<&'static str>,
    pub message: Option<String>,
    pub last_update: Micros,
    pub last_transition: Micros,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct DeployStatus {
    pub observed_generation: i64,
    pub replicas: u32,
    pub updated: u32,
    pub ready: u32,
    pub available: u32,
    pub unavailable: u32,
    pub conditions: Vec<Cond>,
}

#[derive(Clone, Debug)]
pub(crate) struct DeployState {
    pub created: Micros,
    pub rv: u64,
    pub generation: i64,
    pub revision_idx: usize,
    pub revision_annotation: Option<usize>,
    pub status: Option<DeployStatus>,
    pub managed: Vec<Managed>,
    /// The object as it was before kubectl's last patch (what a controller with a stale
    /// informer cache sends).
    pub stale: Option<Value>,
    pub truth: usize,
}

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RsStatus {
    pub replicas: u32,
    pub ready: u32,
    pub available: u32,
    pub observed_generation: i64,
}

#[derive(Clone, Debug)]
pub(crate) struct RsState {
    pub created: Micros,
    pub rv: u64,
    pub generation: i64,
    pub replicas: u32,
    pub status: Option<RsStatus>,
    pub managed: Vec<Managed>,
    pub truth: usize,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Container {
    Waiting,
    Running { started: Micros },
    Terminated { started: Micros, finished: Micros },
}

#[derive(Clone, Debug)]
pub(crate) struct PodState {
    pub created: Micros,
    pub rv: u64,
    pub bound: Option<Micros>,
    pub phase: &'static str,
    pub conditions: Vec<Cond>,
    pub host_ip: bool,
    pub pod_ip: bool,
    pub start_time: Option<Micros>,
    pub container: Option<Container>,
    pub deletion: Option<(Micros, i64)>,
    pub ready: bool,
    pub managed: Vec<Managed>,
    pub truth: usize,
}

/// One family's state in the store.
#[derive(Clone, Debug)]
pub(crate) struct FamState {
    pub plan: FamilyPlan,
    pub remaining: usize,
    pub deploy: Option<DeployState>,
    pub rs: Vec<Option<RsState>>,
    pub pods: Vec<Option<PodState>>,
    pub node_names: Vec<String>,
    pub node_ips: Vec<String>,
    /// Rendered `fieldsV1` of every managedFields entry kind this family uses (they only
    /// depend on the family), indexed by [`FamState::fields_slot`].
    fields_cache: Vec<Value>,
}

/// `nginx:1.25` → `docker.io/library/nginx:1.25`, as the container runtime reports it.
pub(crate) fn full_image(image: &str) -> String {
    let (first, rest) = image.split_once('/').unwrap_or(("", image));
    if first.is_empty() {
        format!("docker.io/library/{rest}")
    } else if first.contains('.') || first.contains(':') || first == "localhost" {
        image.to_string()
    } else {
        format!("docker.io/{image}")
    }
}

fn repo_of(image: &str) -> &str {
    // Strip the tag (a ':' after the last '/').
    let slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[slash..].find(':') {
        Some(i) => &image[..slash + i],
        None => image,
    }
}

impl FamState {
    pub(crate) fn new(
        plan: FamilyPlan,
        remaining: usize,
        node_names: Vec<String>,
        node_ips: Vec<String>,
    ) -> FamState {
        let rs = vec![None; plan.rss.len()];
        let pods = vec![None; plan.pods.len()];
        let mut f = FamState {
            plan,
            remaining,
            deploy: None,
            rs,
            pods,
            node_names,
            node_ips,
            fields_cache: Vec::new(),
        };
        let kinds = [
            Fields::DeployCreate,
            Fields::DeployPatch,
            Fields::DeployStatus,
            Fields::RsSpec,
            Fields::RsStatus,
            Fields::PodStatus,
        ];
        let per_rs = (0..f.plan.rss.len()).map(Fields::PodCreate);
        f.fields_cache = kinds
            .into_iter()
            .chain(per_rs)
            .map(|k| f.fields_v1(k))
            .collect();
        f
    }

    fn fields_slot(f: Fields) -> usize {
        match f {
            Fields::DeployCreate => 0,
            Fields::DeployPatch => 1,
            Fields::DeployStatus => 2,
            Fields::RsSpec => 3,
            Fields::RsStatus => 4,
            Fields::PodStatus => 5,
            Fields::PodCreate(rs) => 6 + rs,
        }
    }

    fn ns(&self) -> &str {
        &self.plan.spec.namespace
    }

    fn name(&self) -> &str {
        &self.plan.spec.name
    }

    pub(crate) fn d(&self) -> &DeployState {
        self.deploy.as_ref().expect("deployment exists")
    }

    pub(crate) fn d_mut(&mut self) -> &mut DeployState {
        self.deploy.as_mut().expect("deployment exists")
    }

    pub(crate) fn rs_state(&self, i: usize) -> &RsState {
        self.rs[i].as_ref().expect("replicaset exists")
    }

    pub(crate) fn rs_mut(&mut self, i: usize) -> &mut RsState {
        self.rs[i].as_mut().expect("replicaset exists")
    }

    pub(crate) fn pod(&self, i: usize) -> &PodState {
        self.pods[i].as_ref().expect("pod exists")
    }

    pub(crate) fn pod_mut(&mut self, i: usize) -> &mut PodState {
        self.pods[i].as_mut().expect("pod exists")
    }

    fn labels(&self, hash: Option<&str>) -> Value {
        let mut m = Map::new();
        m.insert("app".into(), Value::String(self.name().to_string()));
        if let Some(h) = hash {
            m.insert("pod-template-hash".into(), Value::String(h.to_string()));
        }
        Value::Object(m)
    }

    fn container_name(&self) -> &str {
        &self.plan.spec.container
    }

    // ----- Deployment -----

    /// What `kubectl create deployment <name> --image=<image> --replicas=<n> --port=80` sends.
    pub(crate) fn deployment_create_body(&self) -> Value {
        let labels = self.labels(None);
        json!({
            "kind": "Deployment",
            "apiVersion": "apps/v1",
            "metadata": {"name": self.name(), "namespace": self.ns(), "creationTimestamp": null, "labels": labels},
            "spec": {
                "replicas": self.plan.spec.replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"creationTimestamp": null, "labels": labels},
                    "spec": {"containers": [{
                        "name": self.container_name(),
                        "image": self.plan.spec.images[0],
                        "ports": [{"containerPort": 80}],
                        "resources": {},
                    }]},
                },
                "strategy": {},
            },
            "status": {},
        })
    }

    /// The strategic merge patch `kubectl patch` sends to change the image.
    pub(crate) fn deployment_patch_body(&self, revision: usize) -> Value {
        json!({"spec": {"template": {"spec": {"containers": [{"name": self.container_name(), "image": self.plan.spec.images[revision]}]}}}})
    }

    fn template_spec(&self, revision: usize) -> Value {
        json!({
            "containers": [{
                "name": self.container_name(),
                "image": self.plan.spec.images[revision],
                "ports": [{"containerPort": 80, "protocol": "TCP"}],
                "resources": {},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent",
            }],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "securityContext": {},
            "schedulerName": "default-scheduler",
        })
    }

    fn template(&self, revision: usize, hash: Option<&str>) -> Value {
        json!({"metadata": {"creationTimestamp": null, "labels": self.labels(hash)}, "spec": self.template_spec(revision)})
    }

    /// The Deployment as stored now.
    pub(crate) fn deployment_json(&self) -> Value {
        let d = self.d();
        let mut meta = json!({
            "name": self.name(),
            "namespace": self.ns(),
            "uid": self.plan.uid,
            "resourceVersion": d.rv.to_string(),
            "generation": d.generation,
            "creationTimestamp": rfc3339_secs(d.created),
            "labels": self.labels(None),
        });
        if let Some(rev) = d.revision_annotation {
            meta["annotations"] =
                json!({"deployment.kubernetes.io/revision": (rev + 1).to_string()});
        }
        meta["managedFields"] = self.managed_json(&d.managed, "apps/v1");
        let labels = self.labels(None);
        json!({
            "kind": "Deployment",
            "apiVersion": "apps/v1",
            "metadata": meta,
            "spec": {
                "replicas": self.plan.spec.replicas,
                "selector": {"matchLabels": labels},
                "template": self.template(d.revision_idx, None),
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}},
                "revisionHistoryLimit": 10,
                "progressDeadlineSeconds": 600,
            },
            "status": d.status.as_ref().map_or(json!({}), deploy_status_json),
        })
    }

    /// Recomputes the Deployment status from the ReplicaSets' statuses, as the deployment
    /// controller's `calculateStatus`/`syncRolloutStatus` do, at time `t`.
    pub(crate) fn recompute_deploy_status(&mut self, progress: Progress, t: Micros) {
        let r = self.plan.spec.replicas;
        let max_unavailable = r / 4;
        let newest = self.rs.iter().rposition(Option::is_some);
        let (mut replicas, mut ready, mut available, mut spec_total) = (0, 0, 0, 0);
        for rs in self.rs.iter().flatten() {
            let st = rs.status.unwrap_or_default();
            replicas += st.replicas;
            ready += st.ready;
            available += st.available;
            spec_total += rs.replicas;
        }
        let updated = newest
            .and_then(|i| self.rs[i].as_ref())
            .and_then(|rs| rs.status)
            .map_or(0, |s| s.replicas);
        let rs_name = |i: usize| self.plan.rss[i].name.clone();
        let (p_reason, p_msg) = match progress {
            Progress::NewRs(i) => (
                "NewReplicaSetCreated",
                format!("Created new replica set \"{}\"", rs_name(i)),
            ),
            Progress::Updated(i) => (
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{}\" is progressing.", rs_name(i)),
            ),
            Progress::Available(i) => (
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{}\" has successfully progressed.", rs_name(i)),
            ),
        };
        let d = self.deploy.as_mut().expect("deployment exists");
        if let Progress::NewRs(i) = progress {
            d.revision_annotation = Some(i);
        }
        let mut st = d.status.take().unwrap_or_default();
        st.observed_generation = d.generation;
        st.replicas = replicas;
        st.updated = updated;
        st.ready = ready;
        st.available = available;
        st.unavailable = spec_total.saturating_sub(available);
        let avail_ok = available + max_unavailable >= r;
        let (a_status, a_reason, a_msg) = if avail_ok {
            (
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
            )
        } else {
            (
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
            )
        };
        set_condition(
            &mut st.conditions,
            "Available",
            a_status,
            a_reason,
            a_msg.to_string(),
            t,
            false,
        );
        set_condition(
            &mut st.conditions,
            "Progressing",
            "True",
            p_reason,
            p_msg,
            t,
            true,
        );
        d.status = Some(st);
    }

    // ----- ReplicaSet -----

    fn rs_annotations(&self, i: usize) -> Value {
        let r = self.plan.spec.replicas;
        json!({
            "deployment.kubernetes.io/desired-replicas": r.to_string(),
            "deployment.kubernetes.io/max-replicas": (r + r.div_ceil(4)).to_string(),
            "deployment.kubernetes.io/revision": (self.plan.rss[i].revision + 1).to_string(),
        })
    }

    fn owner_deployment(&self) -> Value {
        json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": self.name(), "uid": self.plan.uid, "controller": true, "blockOwnerDeletion": true}])
    }

    fn owner_rs(&self, i: usize) -> Value {
        let rs = &self.plan.rss[i];
        json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs.name, "uid": rs.uid, "controller": true, "blockOwnerDeletion": true}])
    }

    /// What the deployment controller sends to create ReplicaSet `i`.
    pub(crate) fn rs_create_body(&self, i: usize, replicas: u32) -> Value {
        let rs = &self.plan.rss[i];
        let labels = self.labels(Some(&rs.hash));
        json!({
            "kind": "ReplicaSet",
            "apiVersion": "apps/v1",
            "metadata": {
                "name": rs.name,
                "namespace": self.ns(),
                "creationTimestamp": null,
                "labels": labels,
                "annotations": self.rs_annotations(i),
                "ownerReferences": self.owner_deployment(),
            },
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels}, "template": self.template(rs.revision, Some(&rs.hash))},
            "status": {"replicas": 0},
        })
    }

    /// ReplicaSet `i` as stored now.
    pub(crate) fn rs_json(&self, i: usize) -> Value {
        let plan = &self.plan.rss[i];
        let st = self.rs_state(i);
        let labels = self.labels(Some(&plan.hash));
        let status = match st.status {
            None => json!({"replicas": 0}),
            Some(s) => {
                let mut m = Map::new();
                m.insert("replicas".into(), json!(s.replicas));
                if s.replicas > 0 {
                    m.insert("fullyLabeledReplicas".into(), json!(s.replicas));
                }
                if s.ready > 0 {
                    m.insert("readyReplicas".into(), json!(s.ready));
                }
                if s.available > 0 {
                    m.insert("availableReplicas".into(), json!(s.available));
                }
                m.insert("observedGeneration".into(), json!(s.observed_generation));
                Value::Object(m)
            }
        };
        json!({
            "kind": "ReplicaSet",
            "apiVersion": "apps/v1",
            "metadata": {
                "name": plan.name,
                "namespace": self.ns(),
                "uid": plan.uid,
                "resourceVersion": st.rv.to_string(),
                "generation": st.generation,
                "creationTimestamp": rfc3339_secs(st.created),
                "labels": labels,
                "annotations": self.rs_annotations(i),
                "ownerReferences": self.owner_deployment(),
                "managedFields": self.managed_json(&st.managed, "apps/v1"),
            },
            "spec": {"replicas": st.replicas, "selector": {"matchLabels": labels}, "template": self.template(plan.revision, Some(&plan.hash))},
            "status": status,
        })
    }

    /// ReplicaSet status as the replicaset controller computes it from its pods.
    pub(crate) fn recompute_rs_status(&mut self, i: usize) {
        let mut replicas = 0;
        let mut ready = 0;
        for (p, plan) in self.plan.pods.iter().enumerate() {
            if plan.rs != i {
                continue;
            }
            if let Some(pod) = &self.pods[p]
                && pod.deletion.is_none()
            {
                replicas += 1;
                if pod.ready {
                    ready += 1;
                }
            }
        }
        let rs = self.rs_mut(i);
        rs.status = Some(RsStatus {
            replicas,
            ready,
            available: ready,
            observed_generation: rs.generation,
        });
    }

    // ----- Pod -----

    /// What the replicaset controller sends to create pod `p` (generateName, no name).
    pub(crate) fn pod_create_body(&self, p: usize) -> Value {
        let plan = &self.plan.pods[p];
        let rs = &self.plan.rss[plan.rs];
        json!({
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {
                "generateName": format!("{}-", rs.name),
                "creationTimestamp": null,
                "labels": self.labels(Some(&rs.hash)),
                "ownerReferences": self.owner_rs(plan.rs),
            },
            "spec": self.template_spec(rs.revision),
            "status": {},
        })
    }

    /// Pod `p` as stored now.
    pub(crate) fn pod_json(&self, p: usize) -> Value {
        let plan = &self.plan.pods[p];
        let rs = &self.plan.rss[plan.rs];
        let st = self.pod(p);
        let vol = format!("kube-api-access-{}", plan.token_suffix);
        let mut meta = json!({
            "name": plan.name,
            "generateName": format!("{}-", rs.name),
            "namespace": self.ns(),
            "uid": plan.uid,
            "resourceVersion": st.rv.to_string(),
            "creationTimestamp": rfc3339_secs(st.created),
            "labels": self.labels(Some(&rs.hash)),
            "ownerReferences": self.owner_rs(plan.rs),
        });
        if let Some((ts, grace)) = st.deletion {
            meta["deletionTimestamp"] = json!(rfc3339_secs(ts));
            meta["deletionGracePeriodSeconds"] = json!(grace);
        }
        meta["managedFields"] = self.managed_json(&st.managed, "v1");
        let mut spec = json!({
            "volumes": [{
                "name": vol,
                "projected": {
                    "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
                    ],
                    "defaultMode": 420,
                },
            }],
            "containers": [{
                "name": self.container_name(),
                "image": self.plan.spec.images[rs.revision],
                "ports": [{"containerPort": 80, "protocol": "TCP"}],
                "resources": {},
                "volumeMounts": [{"name": vol, "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent",
            }],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "serviceAccount": "default",
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            ],
            "priority": 0,
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority",
        });
        if st.bound.is_some() {
            spec["nodeName"] = json!(self.node_names[plan.node]);
        }
        json!({"kind": "Pod", "apiVersion": "v1", "metadata": meta, "spec": spec, "status": self.pod_status_json(p)})
    }

    fn pod_status_json(&self, p: usize) -> Value {
        let plan = &self.plan.pods[p];
        let st = self.pod(p);
        let mut m = Map::new();
        m.insert("phase".into(), json!(st.phase));
        if !st.conditions.is_empty() {
            m.insert(
                "conditions".into(),
                Value::Array(st.conditions.iter().map(pod_cond_json).collect()),
            );
        }
        if st.host_ip {
            let ip = &self.node_ips[plan.node];
            m.insert("hostIP".into(), json!(ip));
            m.insert("hostIPs".into(), json!([{"ip": ip}]));
        }
        if st.pod_ip {
            m.insert("podIP".into(), json!(plan.ip));
            m.insert("podIPs".into(), json!([{"ip": plan.ip}]));
        }
        if let Some(t) = st.start_time {
            m.insert("startTime".into(), json!(rfc3339_secs(t)));
        }
        if let Some(c) = st.container {
            m.insert(
                "containerStatuses".into(),
                json!([self.container_status(p, c)]),
            );
        }
        m.insert("qosClass".into(), json!("BestEffort"));
        Value::Object(m)
    }

    fn container_status(&self, p: usize, c: Container) -> Value {
        let plan = &self.plan.pods[p];
        let revision = self.plan.rss[plan.rs].revision;
        let image = &self.plan.spec.images[revision];
        match c {
            Container::Waiting => json!({
                "name": self.container_name(),
                "state": {"waiting": {"reason": "ContainerCreating"}},
                "lastState": {},
                "ready": false,
                "restartCount": 0,
                "image": image,
                "imageID": "",
                "started": false,
            }),
            Container::Running { started } => json!({
                "name": self.container_name(),
                "state": {"running": {"startedAt": rfc3339_secs(started)}},
                "lastState": {},
                "ready": true,
                "restartCount": 0,
                "image": full_image(image),
                "imageID": format!("{}@{}", repo_of(&full_image(image)), self.plan.image_digests[revision]),
                "containerID": plan.container_id,
                "started": true,
            }),
            Container::Terminated { started, finished } => json!({
                "name": self.container_name(),
                "state": {"terminated": {
                    "exitCode": 0,
                    "reason": "Completed",
                    "startedAt": rfc3339_secs(started),
                    "finishedAt": rfc3339_secs(finished),
                    "containerID": plan.container_id,
                }},
                "lastState": {},
                "ready": false,
                "restartCount": 0,
                "image": full_image(image),
                "imageID": format!("{}@{}", repo_of(&full_image(image)), self.plan.image_digests[revision]),
                "containerID": plan.container_id,
                "started": false,
            }),
        }
    }

    /// The scheduler's binding at `t`: node assigned, PodScheduled condition.
    pub(crate) fn bind_pod(&mut self, p: usize, t: Micros) {
        let st = self.pod_mut(p);
        st.bound = Some(t);
        st.conditions = vec![cond("PodScheduled", "True", None, None, t)];
    }

    /// Applies a kubelet status step computed at `t`; returns the strategic merge patch the
    /// kubelet sends for it.
    pub(crate) fn apply_pod_step(&mut self, p: usize, step: PodStep, t: Micros) -> Value {
        let uid = self.plan.pods[p].uid.clone();
        let host_ip = self.node_ips[self.plan.pods[p].node].clone();
        let pod_ip = self.plan.pods[p].ip.clone();
        let not_ready_msg = format!(
            "containers with unready status: [{}]",
            self.container_name()
        );
        let order = json!([
            {"type": "PodReadyToStartContainers"}, {"type": "Initialized"}, {"type": "Ready"},
            {"type": "ContainersReady"}, {"type": "PodScheduled"}
        ]);
        let ts = rfc3339_secs(t);
        let st = self.pod_mut(p);
        let patch_status = match step {
            PodStep::Pending => {
                let bound = st.bound.unwrap_or(t);
                st.conditions = vec![
                    cond("PodReadyToStartContainers", "False", None, None, t),
                    cond("Initialized", "True", None, None, t),
                    cond(
                        "Ready",
                        "False",
                        Some("ContainersNotReady"),
                        Some(not_ready_msg.clone()),
                        t,
                    ),
                    cond(
                        "ContainersReady",
                        "False",
                        Some("ContainersNotReady"),
                        Some(not_ready_msg.clone()),
                        t,
                    ),
                    cond("PodScheduled", "True", None, None, bound),
                ];
                st.host_ip = true;
                st.start_time = Some(t);
                st.container = Some(Container::Waiting);
                st.phase = "Pending";
                let patch_conds: Vec<Value> =
                    st.conditions[..4].iter().map(pod_cond_json).collect();
                json!({
                    "$setElementOrder/conditions": order,
                    "conditions": patch_conds,
                    "hostIP": host_ip,
                    "hostIPs": [{"ip": host_ip}],
                    "startTime": ts,
                })
            }
            PodStep::SandboxReady => {
                set_pod_cond(
                    &mut st.conditions,
                    "PodReadyToStartContainers",
                    "True",
                    None,
                    None,
                    t,
                );
                st.pod_ip = true;
                json!({
                    "$setElementOrder/conditions": order,
                    "conditions": [{"lastTransitionTime": ts, "status": "True", "type": "PodReadyToStartContainers"}],
                    "podIP": pod_ip,
                    "podIPs": [{"ip": pod_ip}],
                })
            }
            PodStep::Running { started_at } => {
                set_pod_cond(&mut st.conditions, "Ready", "True", None, None, t);
                set_pod_cond(&mut st.conditions, "ContainersReady", "True", None, None, t);
                st.container = Some(Container::Running {
                    started: started_at,
                });
                st.phase = "Running";
                st.ready = true;
                json!({
                    "$setElementOrder/conditions": order,
                    "conditions": [
                        {"lastTransitionTime": ts, "message": null, "reason": null, "status": "True", "type": "Ready"},
                        {"lastTransitionTime": ts, "message": null, "reason": null, "status": "True", "type": "ContainersReady"},
                    ],
                    "phase": "Running",
                })
            }
            PodStep::Terminated { finished_at } => {
                let started = match st.container {
                    Some(Container::Running { started }) => started,
                    _ => finished_at,
                };
                set_pod_cond(
                    &mut st.conditions,
                    "PodReadyToStartContainers",
                    "False",
                    None,
                    None,
                    t,
                );
                set_pod_cond(
                    &mut st.conditions,
                    "Ready",
                    "False",
                    Some("PodCompleted"),
                    None,
                    t,
                );
                set_pod_cond(
                    &mut st.conditions,
                    "ContainersReady",
                    "False",
                    Some("PodCompleted"),
                    None,
                    t,
                );
                st.container = Some(Container::Terminated {
                    started,
                    finished: finished_at,
                });
                st.phase = "Succeeded";
                st.ready = false;
                json!({
                    "$setElementOrder/conditions": order,
                    "conditions": [
                        {"lastTransitionTime": ts, "status": "False", "type": "PodReadyToStartContainers"},
                        {"lastTransitionTime": ts, "reason": "PodCompleted", "status": "False", "type": "Ready"},
                        {"lastTransitionTime": ts, "reason": "PodCompleted", "status": "False", "type": "ContainersReady"},
                    ],
                    "phase": "Succeeded",
                })
            }
        };
        let mut patch = json!({"metadata": {"uid": uid}, "status": patch_status});
        if !matches!(step, PodStep::SandboxReady) {
            let c = self.pod(p).container.expect("container status set");
            patch["status"]["containerStatuses"] = json!([self.container_status(p, c)]);
        }
        patch
    }

    // ----- managedFields -----

    fn managed_json(&self, list: &[Managed], api_version: &str) -> Value {
        Value::Array(
            list.iter()
                .map(|m| {
                    let (manager, sub) = match m.fields {
                        Fields::DeployCreate => ("kubectl-create", None),
                        Fields::DeployPatch => ("kubectl-patch", None),
                        Fields::DeployStatus | Fields::RsStatus => {
                            ("kube-controller-manager", Some("status"))
                        }
                        Fields::RsSpec | Fields::PodCreate(_) => ("kube-controller-manager", None),
                        Fields::PodStatus => ("kubelet", Some("status")),
                    };
                    let mut e = json!({
                        "manager": manager,
                        "operation": "Update",
                        "apiVersion": api_version,
                        "time": rfc3339_secs(m.time),
                        "fieldsType": "FieldsV1",
                        "fieldsV1": self.fields_cache[Self::fields_slot(m.fields)].clone(),
                    });
                    if let Some(s) = sub {
                        e["subresource"] = json!(s);
                    }
                    e
                })
                .collect(),
        )
    }

    fn container_fields(&self, with_ports: bool) -> Value {
        let key = format!("k:{{\"name\":\"{}\"}}", self.container_name());
        let mut c = json!({
            ".": {}, "f:image": {}, "f:imagePullPolicy": {}, "f:name": {}, "f:resources": {},
            "f:terminationMessagePath": {}, "f:terminationMessagePolicy": {},
        });
        if with_ports {
            c["f:ports"] = json!({".": {}, "k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}, "f:protocol": {}}});
        }
        let mut m = Map::new();
        m.insert(key, c);
        Value::Object(m)
    }

    fn pod_spec_fields(&self) -> Value {
        json!({
            "f:containers": self.container_fields(true),
            "f:dnsPolicy": {}, "f:restartPolicy": {}, "f:schedulerName": {}, "f:securityContext": {},
            "f:terminationGracePeriodSeconds": {},
        })
    }

    fn fields_v1(&self, f: Fields) -> Value {
        let cond = |t: &str, update: bool| {
            let mut c = json!({".": {}, "f:lastTransitionTime": {}, "f:message": {}, "f:reason": {}, "f:status": {}, "f:type": {}});
            if update {
                c["f:lastUpdateTime"] = json!({});
            } else {
                c["f:lastProbeTime"] = json!({});
            }
            (format!("k:{{\"type\":\"{t}\"}}"), c)
        };
        match f {
            Fields::DeployCreate => json!({
                "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                "f:spec": {
                    "f:progressDeadlineSeconds": {}, "f:replicas": {}, "f:revisionHistoryLimit": {}, "f:selector": {},
                    "f:strategy": {"f:rollingUpdate": {".": {}, "f:maxSurge": {}, "f:maxUnavailable": {}}, "f:type": {}},
                    "f:template": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}}, "f:spec": self.pod_spec_fields()},
                },
            }),
            Fields::DeployPatch => {
                let key = format!("k:{{\"name\":\"{}\"}}", self.container_name());
                let mut containers = Map::new();
                containers.insert(key, json!({"f:image": {}}));
                json!({"f:spec": {"f:template": {"f:spec": {"f:containers": containers}}}})
            }
            Fields::DeployStatus => {
                let mut conds = Map::new();
                conds.insert(".".into(), json!({}));
                for t in ["Available", "Progressing"] {
                    let (k, v) = cond(t, true);
                    conds.insert(k, v);
                }
                json!({
                    "f:metadata": {"f:annotations": {".": {}, "f:deployment.kubernetes.io/revision": {}}},
                    "f:status": {
                        "f:availableReplicas": {}, "f:conditions": conds, "f:observedGeneration": {},
                        "f:readyReplicas": {}, "f:replicas": {}, "f:updatedReplicas": {},
                    },
                })
            }
            Fields::RsSpec => {
                let mut owners = Map::new();
                owners.insert(".".into(), json!({}));
                owners.insert(format!("k:{{\"uid\":\"{}\"}}", self.plan.uid), json!({}));
                json!({
                    "f:metadata": {
                        "f:annotations": {
                            ".": {}, "f:deployment.kubernetes.io/desired-replicas": {},
                            "f:deployment.kubernetes.io/max-replicas": {}, "f:deployment.kubernetes.io/revision": {},
                        },
                        "f:labels": {".": {}, "f:app": {}, "f:pod-template-hash": {}},
                        "f:ownerReferences": owners,
                    },
                    "f:spec": {
                        "f:replicas": {}, "f:selector": {},
                        "f:template": {"f:metadata": {"f:labels": {".": {}, "f:app": {}, "f:pod-template-hash": {}}}, "f:spec": self.pod_spec_fields()},
                    },
                })
            }
            Fields::RsStatus => json!({
                "f:status": {"f:availableReplicas": {}, "f:fullyLabeledReplicas": {}, "f:observedGeneration": {}, "f:readyReplicas": {}, "f:replicas": {}},
            }),
            Fields::PodCreate(rs) => {
                let mut owners = Map::new();
                owners.insert(".".into(), json!({}));
                owners.insert(
                    format!("k:{{\"uid\":\"{}\"}}", self.plan.rss[rs].uid),
                    json!({}),
                );
                json!({
                    "f:metadata": {"f:generateName": {}, "f:labels": {".": {}, "f:app": {}, "f:pod-template-hash": {}}, "f:ownerReferences": owners},
                    "f:spec": {
                        "f:containers": self.container_fields(true),
                        "f:dnsPolicy": {}, "f:enableServiceLinks": {}, "f:restartPolicy": {}, "f:schedulerName": {},
                        "f:securityContext": {}, "f:terminationGracePeriodSeconds": {},
                    },
                })
            }
            Fields::PodStatus => {
                let mut conds = Map::new();
                for t in [
                    "ContainersReady",
                    "Initialized",
                    "PodReadyToStartContainers",
                    "Ready",
                ] {
                    let (k, v) = cond(t, false);
                    conds.insert(k, v);
                }
                json!({
                    "f:status": {
                        "f:conditions": conds, "f:containerStatuses": {}, "f:hostIP": {}, "f:hostIPs": {},
                        "f:phase": {}, "f:podIP": {}, "f:podIPs": {}, "f:startTime": {},
                    },
                })
            }
        }
    }
}

fn cond(
    typ: &'static str,
    status: &'static str,
    reason: Option<&'static str>,
    message: Option<String>,
    t: Micros,
) -> Cond {
    Cond {
        typ,
        status,
        reason,
        message,
        last_update: t,
        last_transition: t,
    }
}

fn set_pod_cond(
    conds: &mut [Cond],
    typ: &'static str,
    status: &'static str,
    reason: Option<&'static str>,
    message: Option<String>,
    t: Micros,
) {
    if let Some(c) = conds.iter_mut().find(|c| c.typ == typ) {
        if c.status != status {
            c.last_transition = t;
        }
        c.status = status;
        c.reason = reason;
        c.message = message;
        c.last_update = t;
    }
}

/// The deployment controller's `SetDeploymentCondition`: an unchanged status and reason keeps
/// the condition as is (unless `refresh`, which the Progressing condition gets on every sync);
/// otherwise the condition moves to the end, keeping its transition time if the status holds.
fn set_condition(
    conds: &mut Vec<Cond>,
    typ: &'static str,
    status: &'static str,
    reason: &'static str,
    message: String,
    t: Micros,
    refresh: bool,
) {
    let pos = conds.iter().position(|c| c.typ == typ);
    if let Some(i) = pos {
        let c = &conds[i];
        if c.status == status && c.reason == Some(reason) && !refresh {
            return;
        }
        let transition = if c.status == status {
            c.last_transition
        } else {
            t
        };
        conds.remove(i);
        conds.push(Cond {
            typ,
            status,
            reason: Some(reason),
            message: Some(message),
            last_update: t,
            last_transition: transition,
        });
    } else {
        conds.push(Cond {
            typ,
            status,
            reason: Some(reason),
            message: Some(message),
            last_update: t,
            last_transition: t,
        });
    }
}

fn pod_cond_json(c: &Cond) -> Value {
    let mut m = Map::new();
    m.insert("type".into(), json!(c.typ));
    m.insert("status".into(), json!(c.status));
    m.insert("lastProbeTime".into(), Value::Null);
    m.insert(
        "lastTransitionTime".into(),
        json!(rfc3339_secs(c.last_transition)),
    );
    if let Some(r) = c.reason {
        m.insert("reason".into(), json!(r));
    }
    if let Some(msg) = &c.message {
        m.insert("message".into(), json!(msg));
    }
    Value::Object(m)
}

fn deploy_status_json(s: &DeployStatus) -> Value {
    let mut m = Map::new();
    m.insert("observedGeneration".into(), json!(s.observed_generation));
    for (k, v) in [
        ("replicas", s.replicas),
        ("updatedReplicas", s.updated),
        ("readyReplicas", s.ready),
        ("availableReplicas", s.available),
        ("unavailableReplicas", s.unavailable),
    ] {
        if v > 0 {
            m.insert(k.into(), json!(v));
        }
    }
    let conds: Vec<Value> = s
        .conditions
        .iter()
        .map(|c| {
            json!({
                "type": c.typ,
                "status": c.status,
                "lastUpdateTime": rfc3339_secs(c.last_update),
                "lastTransitionTime": rfc3339_secs(c.last_transition),
                "reason": c.reason,
                "message": c.message,
            })
        })
        .collect();
    m.insert("conditions".into(), Value::Array(conds));
    Value::Object(m)
}

/// A microsecond-precision timestamp (lease renew times, audit stage times).
pub(crate) fn micros(t: Micros) -> Value {
    Value::String(rfc3339_micros(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_normalised_like_containerd() {
        assert_eq!(full_image("nginx:1.25"), "docker.io/library/nginx:1.25");
        assert_eq!(full_image("bitnami/redis:7"), "docker.io/bitnami/redis:7");
        assert_eq!(
            full_image("registry.example.com/shop/web:v1"),
            "registry.example.com/shop/web:v1"
        );
        assert_eq!(
            repo_of("docker.io/library/nginx:1.25"),
            "docker.io/library/nginx"
        );
        assert_eq!(repo_of("localhost:5000/x/y:2"), "localhost:5000/x/y");
    }
}
