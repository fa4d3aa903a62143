//! Planning: what each component does to one Deployment family, and when.
//!
//! A [`FamilySpec`] (a Deployment, its replica count and how many image rollouts it goes
//! through) is turned into a [`FamilyPlan`]: the names and uids of every ReplicaSet and Pod, and
//! a list of [`Op`]s — one per API request — with their start and end times. All randomness of a
//! family is spent here, from the family's own random stream; the engine later applies the ops
//! in commit order to a simulated object store to render the audit events, without drawing any
//! more random numbers.
//!
//! The timeline follows what the controllers really do:
//! kubectl creates the Deployment → the deployment controller creates a ReplicaSet and updates
//! the Deployment status → the replicaset controller creates pods (slow-start batches 1, 2, 4…)
//! and updates the ReplicaSet status → the scheduler binds each pod → the kubelet patches pod
//! status (Pending/ContainerCreating → sandbox ready → Running) and records events (Pulling,
//! Pulled, Created, Started) → status updates ripple back up. An image change is rolled out with
//! the default RollingUpdate strategy (maxSurge 25 % rounded up, maxUnavailable 25 % rounded down),
//! the old pods being deleted gracefully by the replicaset controller and then for good by their
//! kubelet.

use crate::cluster::Actor;
use crate::ids::{GenRng, hex, k8s_suffix, template_hash, uuid};
use crate::time::{MS, Micros, go_duration_ms};
use rand::Rng;
use std::collections::HashMap;

/// Longest request latency the planner produces (the engine's ordering window relies on it).
pub(crate) const MAX_LATENCY: Micros = 30 * MS;

/// Input of the planner: one Deployment and what happens to it.
#[derive(Clone, Debug)]
pub(crate) struct FamilySpec {
    /// Family number: picks the random stream and keys the engine's state.
    pub id: u32,
    pub namespace: String,
    pub name: String,
    pub replicas: u32,
    /// Image changes after the creation.
    pub rollouts: u32,
    /// When kubectl starts creating the Deployment.
    pub start: Micros,
    /// Pause between the end of one rollout and the next kubectl patch: `[lo, hi]`.
    pub rollout_gap: (Micros, Micros),
    /// Image of revision `r` (0-based) is `images[r]`; `rollouts + 1` entries.
    pub images: Vec<String>,
    /// The (single) container's name.
    pub container: String,
    /// Plan read noise (kubectl get/watch/list, kubelet gets) and a conflict.
    pub noise: bool,
}

/// A ReplicaSet the family will have.
#[derive(Clone, Debug)]
pub(crate) struct RsPlan {
    pub name: String,
    pub hash: String,
    pub uid: String,
    /// 0-based revision: the Deployment template (image) it runs.
    pub revision: usize,
}

/// A Pod the family will have.
#[derive(Clone, Debug)]
pub(crate) struct PodPlan {
    pub name: String,
    pub uid: String,
    pub rs: usize,
    pub node: usize,
    pub ip: String,
    pub container_id: String,
    /// Suffix of the projected `kube-api-access-xxxxx` volume.
    pub token_suffix: String,
}

/// Which object of the family an op or event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Deployment,
    Rs(usize),
    Pod(usize),
}

/// The Deployment's `Progressing` condition an update sets.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Progress {
    /// `NewReplicaSetCreated` (and the revision annotation) for ReplicaSet `i`.
    NewRs(usize),
    /// `ReplicaSetUpdated`.
    Updated(usize),
    /// `NewReplicaSetAvailable`.
    Available(usize),
}

/// One kubelet pod-status patch.
#[derive(Clone, Copy, Debug)]
pub(crate) enum PodStep {
    /// Pending, container waiting in ContainerCreating, host IP and start time.
    Pending,
    /// Sandbox up: PodReadyToStartContainers and pod IP.
    SandboxReady,
    /// Running and Ready; the container started at `started_at`.
    Running { started_at: Micros },
    /// Container exited after SIGTERM at `finished_at`; phase Succeeded.
    Terminated { finished_at: Micros },
}

/// A core/v1 Event a component records.
#[derive(Clone, Debug)]
pub(crate) struct EventPlan {
    pub name: String,
    pub uid: String,
    pub target: Target,
    pub reason: &'static str,
    pub message: String,
    pub field_path: Option<String>,
}

/// What an [`Op`] does.
#[derive(Clone, Debug)]
pub(crate) enum OpKind {
    CreateDeployment,
    /// kubectl patches the image to revision `revision` (0-based).
    PatchDeployment {
        revision: usize,
    },
    /// `update deployments/status`; `conflict` sends a stale resourceVersion and gets a 409.
    DeploymentStatus {
        progress: Progress,
        conflict: bool,
    },
    CreateRs {
        rs: usize,
        replicas: u32,
    },
    ScaleRs {
        rs: usize,
        replicas: u32,
    },
    RsStatus {
        rs: usize,
    },
    CreatePod {
        pod: usize,
    },
    BindPod {
        pod: usize,
    },
    PodStatus {
        pod: usize,
        step: PodStep,
    },
    /// `final_delete`: the kubelet's gracePeriodSeconds=0 delete after the graceful one.
    DeletePod {
        pod: usize,
        final_delete: bool,
    },
    KubeEvent(EventPlan),
    /// Reads (noise).
    Get {
        target: Target,
    },
    OpenApi,
    ListPods,
    /// `kubectl rollout status` watch: the open (RequestReceived + ResponseStarted) and the close
    /// (ResponseComplete, with the same auditID).
    WatchOpen,
    WatchClose,
}

/// One API request of a family.
#[derive(Clone, Debug)]
pub(crate) struct Op {
    pub start: Micros,
    pub end: Micros,
    pub audit_id: String,
    pub actor: Actor,
    pub fam: u32,
    pub kind: OpKind,
}

/// The planner's output for one family.
#[derive(Clone, Debug)]
pub(crate) struct FamilyPlan {
    pub spec: FamilySpec,
    pub uid: String,
    pub rss: Vec<RsPlan>,
    pub pods: Vec<PodPlan>,
    /// `sha256:` digest of each image.
    pub image_digests: Vec<String>,
    pub ops: Vec<Op>,
}

/// Cluster-wide allocation state shared by the planners (pod IPs per node).
#[derive(Clone, Debug)]
pub(crate) struct Allocations {
    pub node_names: Vec<String>,
    next_ip: Vec<u32>,
    subnets: Vec<u32>,
}

impl Allocations {
    pub(crate) fn new(node_names: Vec<String>, subnets: Vec<u32>) -> Allocations {
        Allocations {
            next_ip: vec![0; node_names.len()],
            node_names,
            subnets,
        }
    }

    fn pod_ip(&mut self, node: usize) -> String {
        let n = self.next_ip[node];
        self.next_ip[node] = n + 1;
        format!("10.244.{}.{}", self.subnets[node], 2 + n % 252)
    }
}

struct Planner<'a> {
    rng: GenRng,
    spec: &'a FamilySpec,
    alloc: &'a mut Allocations,
    uid: String,
    ops: Vec<Op>,
    rss: Vec<RsPlan>,
    pods: Vec<PodPlan>,
    pod_ready: Vec<Micros>,
    pod_alive: Vec<bool>,
    node_load: Vec<u32>,
    image_on_node: HashMap<(usize, usize), Micros>,
}

/// Plans one family.
pub(crate) fn plan_family(spec: &FamilySpec, rng: GenRng, alloc: &mut Allocations) -> FamilyPlan {
    let nodes = alloc.node_names.len();
    let mut p = Planner {
        rng,
        spec,
        alloc,
        uid: String::new(),
        ops: Vec::new(),
        rss: Vec::new(),
        pods: Vec::new(),
        pod_ready: Vec::new(),
        pod_alive: Vec::new(),
        node_load: vec![0; nodes],
        image_on_node: HashMap::new(),
    };
    p.uid = uuid(&mut p.rng);
    let image_digests = spec
        .images
        .iter()
        .map(|_| format!("sha256:{}", hex(&mut p.rng, 64)))
        .collect();
    p.run();
    let Planner {
        uid,
        ops,
        rss,
        pods,
        ..
    } = p;
    FamilyPlan {
        spec: spec.clone(),
        uid,
        rss,
        pods,
        image_digests,
        ops,
    }
}

impl Planner<'_> {
    /// Uniform random duration in `[lo, hi]`.
    fn us(&mut self, lo: Micros, hi: Micros) -> Micros {
        self.rng.random_range(lo..=hi)
    }

    /// Adds a request starting at `start` with a latency in `[lo_ms, hi_ms]`; returns its end.
    fn req(
        &mut self,
        actor: Actor,
        start: Micros,
        (lo_ms, hi_ms): (i64, i64),
        kind: OpKind,
    ) -> Micros {
        debug_assert!(hi_ms * MS <= MAX_LATENCY && lo_ms >= 1);
        let end = start + self.us(lo_ms * MS, hi_ms * MS);
        let audit_id = uuid(&mut self.rng);
        self.ops.push(Op {
            start,
            end,
            audit_id,
            actor,
            fam: self.spec.id,
            kind,
        });
        end
    }

    fn target_name(&self, t: Target) -> &str {
        match t {
            Target::Deployment => &self.spec.name,
            Target::Rs(i) => &self.rss[i].name,
            Target::Pod(i) => &self.pods[i].name,
        }
    }

    /// Records a core/v1 Event (an `events` create) at `t`.
    fn event(
        &mut self,
        actor: Actor,
        t: Micros,
        target: Target,
        reason: &'static str,
        message: String,
    ) -> Micros {
        let field_path = match (target, reason) {
            (Target::Pod(_), "Pulling" | "Pulled" | "Created" | "Started" | "Killing") => {
                Some(format!("spec.containers{{{}}}", self.spec.container))
            }
            _ => None,
        };
        // client-go names events `<object>.<hex unix nanos>`.
        let nanos = t * 1000 + self.rng.random_range(0..1000);
        let name = format!("{}.{:x}", self.target_name(target), nanos);
        let uid = uuid(&mut self.rng);
        let ev = EventPlan {
            name,
            uid,
            target,
            reason,
            message,
            field_path,
        };
        self.req(actor, t, (2, 10), OpKind::KubeEvent(ev))
    }

    fn new_rs(&mut self, revision: usize) -> usize {
        let hash = loop {
            let h = template_hash(&mut self.rng);
            if !self.rss.iter().any(|r| r.hash == h) {
                break h;
            }
        };
        let uid = uuid(&mut self.rng);
        self.rss.push(RsPlan {
            name: format!("{}-{hash}", self.spec.name),
            hash,
            uid,
            revision,
        });
        self.rss.len() - 1
    }

    fn new_pod(&mut self, rs: usize) -> usize {
        // Least-loaded node, ties broken at random (the default scheduler spreads replicas).
        let min = *self.node_load.iter().min().expect("at least one node");
        let candidates: Vec<usize> = (0..self.node_load.len())
            .filter(|&n| self.node_load[n] == min)
            .collect();
        let node = candidates[self.rng.random_range(0..candidates.len())];
        self.node_load[node] += 1;
        // The API server retries generateName on a collision; so do we.
        let name = loop {
            let n = format!("{}-{}", self.rss[rs].name, k8s_suffix(&mut self.rng, 5));
            if !self.pods.iter().any(|p| p.name == n) {
                break n;
            }
        };
        let uid = uuid(&mut self.rng);
        let ip = self.alloc.pod_ip(node);
        let container_id = format!("containerd://{}", hex(&mut self.rng, 64));
        let token_suffix = k8s_suffix(&mut self.rng, 5);
        self.pods.push(PodPlan {
            name,
            uid,
            rs,
            node,
            ip,
            container_id,
            token_suffix,
        });
        self.pod_ready.push(Micros::MAX);
        self.pod_alive.push(true);
        self.pods.len() - 1
    }

    fn max_surge(&self) -> u32 {
        self.spec.replicas.div_ceil(4)
    }

    fn max_unavailable(&self) -> u32 {
        self.spec.replicas / 4
    }

    fn run(&mut self) {
        let spec = self.spec;
        let r = spec.replicas;
        let mut t = spec.start;
        if spec.noise {
            // kubectl fetches the OpenAPI schema for client-side validation before creating.
            t = self.req(Actor::Kubectl, t, (6, 25), OpKind::OpenApi);
            t += self.us(15 * MS, 60 * MS);
        }
        let created = self.req(Actor::Kubectl, t, (6, 22), OpKind::CreateDeployment);
        if spec.noise {
            // `kubectl get deployment` right after.
            let g = created + self.us(400 * MS, 1500 * MS);
            self.req(
                Actor::Kubectl,
                g,
                (1, 5),
                OpKind::Get {
                    target: Target::Deployment,
                },
            );
        }
        let rs0 = self.new_rs(0);
        let t0 = created + self.us(2 * MS, 8 * MS);
        let rs_end = self.dc_create_rs(rs0, r, t0);
        let s = rs_end + self.us(MS, 4 * MS);
        let ready = self.rsc_create_pods(rs0, r, s);
        let mut t = self.status_waves(rs0, ready, true);
        if spec.noise {
            let l = t + self.us(1000 * MS, 3000 * MS);
            self.req(Actor::Kubectl, l, (2, 12), OpKind::ListPods);
        }

        for k in 1..=spec.rollouts as usize {
            t += self.us(spec.rollout_gap.0, spec.rollout_gap.1);
            if spec.noise {
                t = self.req(
                    Actor::Kubectl,
                    t,
                    (1, 5),
                    OpKind::Get {
                        target: Target::Deployment,
                    },
                );
                t += self.us(2 * MS, 10 * MS);
            }
            let patched = self.req(
                Actor::Kubectl,
                t,
                (5, 18),
                OpKind::PatchDeployment { revision: k },
            );
            let mut dc_t = patched + self.us(2 * MS, 8 * MS);
            if spec.noise && k == 1 {
                // The deployment controller was still writing status from its stale cache when
                // the patch landed: 409 Conflict, then it resyncs.
                let c = patched + self.us(200, MS);
                let c_end = self.req(
                    Actor::DeploymentController,
                    c,
                    (2, 6),
                    OpKind::DeploymentStatus {
                        progress: Progress::Available(k - 1),
                        conflict: true,
                    },
                );
                dc_t = c_end + self.us(5 * MS, 20 * MS);
            }
            let mut watch = None;
            if spec.noise {
                // `kubectl rollout status deployment/<name>`: get, then watch until complete.
                let g = patched + self.us(30 * MS, 120 * MS);
                let g_end = self.req(
                    Actor::Kubectl,
                    g,
                    (1, 5),
                    OpKind::Get {
                        target: Target::Deployment,
                    },
                );
                let w = g_end + self.us(MS, 5 * MS);
                watch = Some(self.req(Actor::Kubectl, w, (1, 3), OpKind::WatchOpen));
            }
            let done = self.rollout(k, dc_t);
            t = done;
            if let Some(opened) = watch {
                let close = done.max(opened) + self.us(MS, 4 * MS);
                // A close has no latency of its own: start == end.
                let audit_id = self
                    .ops
                    .iter()
                    .rev()
                    .find(|o| matches!(o.kind, OpKind::WatchOpen))
                    .map(|o| o.audit_id.clone());
                let audit_id = audit_id.expect("watch opened");
                self.ops.push(Op {
                    start: close,
                    end: close,
                    audit_id,
                    actor: Actor::Kubectl,
                    fam: spec.id,
                    kind: OpKind::WatchClose,
                });
                t = close;
            }
            if spec.noise {
                let l = t + self.us(1000 * MS, 3000 * MS);
                self.req(Actor::Kubectl, l, (2, 12), OpKind::ListPods);
            }
        }
    }

    /// One RollingUpdate from revision `k - 1` to `k`, starting when the deployment controller
    /// sees the new template at `t`. Returns when the final Deployment status is written.
    fn rollout(&mut self, k: usize, mut t: Micros) -> Micros {
        let r = self.spec.replicas;
        let surge = self.max_surge();
        let unavailable = self.max_unavailable();
        let old = self
            .rss
            .iter()
            .rposition(|rs| rs.revision == k - 1)
            .expect("previous ReplicaSet");
        let new = self.new_rs(k);
        let (mut new_n, mut old_n) = (0u32, r);
        let mut first = true;
        loop {
            let up = r.min(r + surge - old_n).saturating_sub(new_n);
            if up > 0 || first {
                let rs_end = if first {
                    self.dc_create_rs(new, up, t)
                } else {
                    self.dc_scale_rs(new, new_n, new_n + up, t)
                };
                first = false;
                if up > 0 {
                    let s = rs_end + self.us(MS, 4 * MS);
                    let ready = self.rsc_create_pods(new, up, s);
                    new_n += up;
                    t = self.status_waves(new, ready, false);
                } else {
                    t = rs_end;
                }
            }
            let down = old_n.min((old_n + new_n).saturating_sub(r - unavailable));
            if down > 0 {
                let s = t + self.us(MS, 5 * MS);
                let scaled = self.dc_scale_rs(old, old_n, old_n - down, s);
                old_n -= down;
                let s = scaled + self.us(MS, 4 * MS);
                let rs_status = self.rsc_delete_pods(old, down, s);
                let complete = new_n == r && old_n == 0;
                let progress = if complete {
                    Progress::Available(new)
                } else {
                    Progress::Updated(new)
                };
                let d = rs_status + self.us(MS, 6 * MS);
                t = self.req(
                    Actor::DeploymentController,
                    d,
                    (3, 12),
                    OpKind::DeploymentStatus {
                        progress,
                        conflict: false,
                    },
                );
                if complete {
                    return t;
                }
                t += self.us(MS, 5 * MS);
            }
            if new_n == r && old_n == 0 {
                // Only when there was nothing to scale down (replicas 0).
                let d = t + self.us(MS, 6 * MS);
                return self.req(
                    Actor::DeploymentController,
                    d,
                    (3, 12),
                    OpKind::DeploymentStatus {
                        progress: Progress::Available(new),
                        conflict: false,
                    },
                );
            }
        }
    }

    /// Deployment controller creates ReplicaSet `rs` with `replicas`, records the scaling event,
    /// and writes the Deployment status (new revision). Returns the create's end.
    fn dc_create_rs(&mut self, rs: usize, replicas: u32, t: Micros) -> Micros {
        let end = self.req(
            Actor::DeploymentController,
            t,
            (6, 20),
            OpKind::CreateRs { rs, replicas },
        );
        let name = self.rss[rs].name.clone();
        let e = end + self.us(100, 2 * MS);
        self.event(
            Actor::DeploymentController,
            e,
            Target::Deployment,
            "ScalingReplicaSet",
            format!("Scaled up replica set {name} to {replicas}"),
        );
        let s = end + self.us(MS, 4 * MS);
        self.req(
            Actor::DeploymentController,
            s,
            (3, 12),
            OpKind::DeploymentStatus {
                progress: Progress::NewRs(rs),
                conflict: false,
            },
        );
        end
    }

    /// Deployment controller scales ReplicaSet `rs` from `from` to `to`, records the event and
    /// updates the Deployment status. Returns the scale's end.
    fn dc_scale_rs(&mut self, rs: usize, from: u32, to: u32, t: Micros) -> Micros {
        let end = self.req(
            Actor::DeploymentController,
            t,
            (4, 14),
            OpKind::ScaleRs { rs, replicas: to },
        );
        let name = self.rss[rs].name.clone();
        let dir = if to > from { "up" } else { "down" };
        let e = end + self.us(100, 2 * MS);
        self.event(
            Actor::DeploymentController,
            e,
            Target::Deployment,
            "ScalingReplicaSet",
            format!("Scaled {dir} replica set {name} to {to} from {from}"),
        );
        let newest = self.rss.len() - 1;
        let s = end + self.us(MS, 4 * MS);
        self.req(
            Actor::DeploymentController,
            s,
            (3, 12),
            OpKind::DeploymentStatus {
                progress: Progress::Updated(newest),
                conflict: false,
            },
        );
        end
    }

    /// ReplicaSet controller creates `n` pods for `rs` in slow-start batches from `t`, then each
    /// pod is scheduled and started. Returns the pods' ready times.
    fn rsc_create_pods(&mut self, rs: usize, n: u32, t: Micros) -> Vec<Micros> {
        let mut created = Vec::new();
        let (mut batch, mut remaining, mut bt) = (1u32, n, t);
        let mut last = t;
        while remaining > 0 {
            let size = batch.min(remaining);
            let mut s = bt;
            let mut bmax = bt;
            for _ in 0..size {
                let p = self.new_pod(rs);
                let e = self.req(
                    Actor::ReplicaSetController,
                    s,
                    (5, 18),
                    OpKind::CreatePod { pod: p },
                );
                let name = self.pods[p].name.clone();
                let ev = e + self.us(100, 3 * MS);
                self.event(
                    Actor::ReplicaSetController,
                    ev,
                    Target::Rs(rs),
                    "SuccessfulCreate",
                    format!("Created pod: {name}"),
                );
                created.push((p, e));
                bmax = bmax.max(e);
                s += self.us(50, 400);
            }
            remaining -= size;
            batch *= 2;
            last = bmax;
            bt = bmax + self.us(200, 1500);
        }
        let st = last + self.us(MS, 5 * MS);
        let st_end = self.req(
            Actor::ReplicaSetController,
            st,
            (3, 12),
            OpKind::RsStatus { rs },
        );
        let d = st_end + self.us(MS, 6 * MS);
        let newest = self.rss.len() - 1;
        self.req(
            Actor::DeploymentController,
            d,
            (3, 12),
            OpKind::DeploymentStatus {
                progress: Progress::Updated(newest),
                conflict: false,
            },
        );
        created
            .into_iter()
            .map(|(p, e)| self.run_pod(p, e))
            .collect()
    }

    /// Scheduler binds pod `p` (created at `created`), the kubelet starts it. Returns when the
    /// kubelet's Running/Ready status patch completes.
    fn run_pod(&mut self, p: usize, created: Micros) -> Micros {
        let node = self.pods[p].node;
        let kubelet = Actor::Kubelet(node);
        let bind = created + self.us(MS, 12 * MS);
        let bound = self.req(Actor::Scheduler, bind, (3, 15), OpKind::BindPod { pod: p });
        let msg = format!(
            "Successfully assigned {}/{} to {}",
            self.spec.namespace, self.pods[p].name, self.alloc.node_names[node]
        );
        let ev = bound + self.us(200, 3 * MS);
        self.event(Actor::Scheduler, ev, Target::Pod(p), "Scheduled", msg);

        let seen = bound + self.us(8 * MS, 40 * MS);
        self.kubelet_patch(p, seen, PodStep::Pending);
        let sandbox = seen + self.us(600 * MS, 1500 * MS);
        self.kubelet_patch(p, sandbox, PodStep::SandboxReady);

        let revision = self.rss[self.pods[p].rs].revision;
        let image = self.spec.images[revision].clone();
        let pulled = match self.image_on_node.get(&(node, revision)).copied() {
            None => {
                let pulling = sandbox + self.us(5 * MS, 40 * MS);
                self.event(
                    kubelet,
                    pulling,
                    Target::Pod(p),
                    "Pulling",
                    format!("Pulling image \"{image}\""),
                );
                let dur = self.us(1500 * MS, 6000 * MS);
                let pulled = pulling + dur;
                self.image_on_node.insert((node, revision), pulled);
                let d = go_duration_ms(dur / MS);
                let size = self.rng.random_range(40_000_000u64..200_000_000);
                self.event(
                    kubelet,
                    pulled,
                    Target::Pod(p),
                    "Pulled",
                    format!("Successfully pulled image \"{image}\" in {d} ({d} including waiting). Image size: {size} bytes."),
                );
                pulled
            }
            Some(ready) => {
                let a = sandbox + self.us(10 * MS, 60 * MS);
                let b = ready + self.us(5 * MS, 30 * MS);
                let pulled = a.max(b);
                self.event(
                    kubelet,
                    pulled,
                    Target::Pod(p),
                    "Pulled",
                    format!("Container image \"{image}\" already present on machine"),
                );
                pulled
            }
        };
        let container = self.spec.container.clone();
        let created_c = pulled + self.us(20 * MS, 80 * MS);
        self.event(
            kubelet,
            created_c,
            Target::Pod(p),
            "Created",
            format!("Created container {container}"),
        );
        let started = created_c + self.us(60 * MS, 250 * MS);
        self.event(
            kubelet,
            started,
            Target::Pod(p),
            "Started",
            format!("Started container {container}"),
        );
        let ready = started + self.us(300 * MS, 1200 * MS);
        let end = self.kubelet_patch(
            p,
            ready,
            PodStep::Running {
                started_at: started,
            },
        );
        self.pod_ready[p] = end;
        end
    }

    /// The kubelet's status manager: GET the pod (noise), then PATCH pods/status.
    fn kubelet_patch(&mut self, p: usize, t: Micros, step: PodStep) -> Micros {
        let kubelet = Actor::Kubelet(self.pods[p].node);
        let mut t = t;
        if self.spec.noise {
            let g = self.req(
                kubelet,
                t,
                (1, 4),
                OpKind::Get {
                    target: Target::Pod(p),
                },
            );
            t = g + self.us(200, 2 * MS);
        }
        self.req(kubelet, t, (3, 14), OpKind::PodStatus { pod: p, step })
    }

    /// ReplicaSet controller deletes `n` pods of `rs` from `t`; each pod's kubelet stops the
    /// container, reports it terminated and deletes the pod for good. Returns the end of the
    /// ReplicaSet status update that follows the deletes.
    fn rsc_delete_pods(&mut self, rs: usize, n: u32, t: Micros) -> Micros {
        // ActivePodsWithRanks: pods sharing a node with more of their siblings go first, then
        // the most recently ready.
        let mut victims: Vec<usize> = (0..self.pods.len())
            .filter(|&p| self.pods[p].rs == rs && self.pod_alive[p])
            .collect();
        let colocated = |p: usize, pods: &[PodPlan], alive: &[bool]| {
            pods.iter()
                .enumerate()
                .filter(|(q, x)| alive[*q] && x.rs == rs && x.node == pods[p].node)
                .count()
        };
        let keys: Vec<(usize, usize, Micros)> = victims
            .iter()
            .map(|&p| {
                (
                    p,
                    colocated(p, &self.pods, &self.pod_alive),
                    self.pod_ready[p],
                )
            })
            .collect();
        let mut keyed = keys;
        keyed.sort_by(|a, b| b.1.cmp(&a.1).then(b.2.cmp(&a.2)).then(a.0.cmp(&b.0)));
        victims = keyed.into_iter().take(n as usize).map(|k| k.0).collect();

        let mut s = t;
        let mut last = t;
        for p in victims {
            self.pod_alive[p] = false;
            let node = self.pods[p].node;
            self.node_load[node] -= 1;
            let kubelet = Actor::Kubelet(node);
            let d = self.req(
                Actor::ReplicaSetController,
                s,
                (4, 14),
                OpKind::DeletePod {
                    pod: p,
                    final_delete: false,
                },
            );
            last = last.max(d);
            s += self.us(50, 400);
            let name = self.pods[p].name.clone();
            let ev = d + self.us(100, 2 * MS);
            self.event(
                Actor::ReplicaSetController,
                ev,
                Target::Rs(rs),
                "SuccessfulDelete",
                format!("Deleted pod: {name}"),
            );
            let kill = d + self.us(5 * MS, 40 * MS);
            let container = self.spec.container.clone();
            self.event(
                kubelet,
                kill,
                Target::Pod(p),
                "Killing",
                format!("Stopping container {container}"),
            );
            let finished = kill + self.us(20 * MS, 400 * MS);
            let report = finished + self.us(200 * MS, 600 * MS);
            let patched = self.kubelet_patch(
                p,
                report,
                PodStep::Terminated {
                    finished_at: finished,
                },
            );
            let del = patched + self.us(3 * MS, 25 * MS);
            self.req(
                kubelet,
                del,
                (3, 12),
                OpKind::DeletePod {
                    pod: p,
                    final_delete: true,
                },
            );
        }
        let st = last + self.us(MS, 5 * MS);
        self.req(
            Actor::ReplicaSetController,
            st,
            (3, 12),
            OpKind::RsStatus { rs },
        )
    }

    /// ReplicaSet and Deployment status updates as the pods of `rs` become ready: pods ready
    /// within 150 ms of each other share one update. With `final_wave`, the last Deployment
    /// update reports the rollout complete.
    fn status_waves(&mut self, rs: usize, mut ready: Vec<Micros>, final_wave: bool) -> Micros {
        ready.sort_unstable();
        let mut groups: Vec<Micros> = Vec::new();
        let mut first = Micros::MIN;
        for r in ready {
            if groups.is_empty() || r - first > 150 * MS {
                groups.push(r);
                first = r;
            } else {
                *groups.last_mut().expect("non-empty") = r;
            }
        }
        let mut t_last = Micros::MIN;
        let n = groups.len();
        for (i, g) in groups.into_iter().enumerate() {
            let mut s = g + self.us(3 * MS, 25 * MS);
            if t_last != Micros::MIN {
                s = s.max(t_last + self.us(MS, 3 * MS));
            }
            let rs_end = self.req(
                Actor::ReplicaSetController,
                s,
                (3, 12),
                OpKind::RsStatus { rs },
            );
            let progress = if final_wave && i + 1 == n {
                Progress::Available(rs)
            } else {
                Progress::Updated(rs)
            };
            let d = rs_end + self.us(MS, 6 * MS);
            t_last = self.req(
                Actor::DeploymentController,
                d,
                (3, 12),
                OpKind::DeploymentStatus {
                    progress,
                    conflict: false,
                },
            );
        }
        if t_last == Micros::MIN {
            // No pods (replicas 0): report straight away.
            let s = self.ops.last().map_or(self.spec.start, |o| o.end) + self.us(MS, 5 * MS);
            let progress = if final_wave {
                Progress::Available(rs)
            } else {
                Progress::Updated(rs)
            };
            t_last = self.req(
                Actor::DeploymentController,
                s,
                (3, 12),
                OpKind::DeploymentStatus {
                    progress,
                    conflict: false,
                },
            );
        }
        t_last
    }
}
