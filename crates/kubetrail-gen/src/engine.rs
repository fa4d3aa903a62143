//! The engine: plans families when their time comes, applies every op in commit order to the
//! simulated store, renders audit events, and releases them in `stageTimestamp` order.
//!
//! Memory stays bounded for very long streams: a family is planned only when the clock reaches
//! its start, its state is dropped after its last op, cluster noise is produced by tickers that
//! schedule their next firing lazily, and rendered lines wait in a small heap only until no
//! later op can produce an earlier line (every request lasts at most [`MAX_LATENCY`]).

use crate::cluster::{Actor, Cluster};
use crate::ids::{GenRng, rng_for, streams, uuid};
use crate::model::{DeployState, FamState, Fields, PodState, RsState, micros, touch};
use crate::plan::{Allocations, FamilySpec, MAX_LATENCY, Op, OpKind, Target, plan_family};
use crate::time::{MS, Micros, SEC, rfc3339_micros, rfc3339_secs};
use crate::truth::{GroundTruth, TruthObject};
use rand::Rng;
use serde_json::{Map, Value, json};
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};

/// How long cluster noise goes on after the last family op.
const TAIL: Micros = 1500 * MS;
/// Lines older than the current op's end minus this can no longer be preceded by a new line.
const WINDOW: Micros = MAX_LATENCY + 10 * MS;

/// Engine settings.
#[derive(Clone, Debug)]
pub(crate) struct EngineConfig {
    pub seed: u64,
    pub start: Micros,
    pub node_names: Vec<String>,
    pub noise: bool,
    pub request_received: bool,
}

enum Item {
    Plan(Box<FamilySpec>),
    Op(Box<Op>),
    Tick(usize),
}

struct Queued {
    key: Micros,
    seq: u64,
    item: Item,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.key, self.seq) == (other.key, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.key, self.seq).cmp(&(other.key, other.seq))
    }
}

struct Line {
    ts: Micros,
    seq: u64,
    value: Value,
}
impl PartialEq for Line {
    fn eq(&self, other: &Self) -> bool {
        (self.ts, self.seq) == (other.ts, other.seq)
    }
}
impl Eq for Line {}
impl PartialOrd for Line {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Line {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.ts, self.seq).cmp(&(other.ts, other.seq))
    }
}

/// What a line counts as in the ground truth.
#[derive(Clone, Copy, Debug)]
enum Class {
    /// A mutating request on a tracked object (index into `truth.objects`).
    Mutating(usize),
    KubeEvent,
    Noise,
}

/// A long-running watch as a ticker sees it.
#[derive(Clone, Debug)]
struct WatchSpec {
    actor: Actor,
    path: &'static str,
    resource: &'static str,
    group: &'static str,
    field_selector: Option<String>,
}

#[derive(Clone, Debug)]
enum TickKind {
    NodeLease(usize),
    Leader { kcm: bool },
    Watch(WatchSpec),
}

#[derive(Clone, Debug)]
struct Ticker {
    kind: TickKind,
    /// Lease resourceVersion.
    rv: u64,
    /// Open watch: (auditID, requestURI, requestReceivedTimestamp).
    open: Option<(String, String, Micros)>,
    /// Start of the next firing.
    next_start: Micros,
}

/// One request about to be rendered.
struct Req {
    start: Micros,
    end: Micros,
    audit_id: String,
    actor: Actor,
    level: &'static str,
    verb: &'static str,
    uri: String,
    object_ref: Option<Value>,
    rr_object_ref: Option<Value>,
    response_status: Value,
    request_object: Option<Value>,
    response_object: Option<Value>,
    pod_security: bool,
    class: Class,
}

fn ok_status(code: u16) -> Value {
    json!({"metadata": {}, "code": code})
}

/// Builds an `objectRef`, leaving out empty fields as the API server does.
fn oref(
    resource: &str,
    namespace: &str,
    name: Option<&str>,
    uid: Option<&str>,
    group: &str,
    rv: Option<u64>,
    subresource: Option<&str>,
) -> Value {
    let mut m = Map::new();
    m.insert("resource".into(), json!(resource));
    if !namespace.is_empty() {
        m.insert("namespace".into(), json!(namespace));
    }
    if let Some(n) = name {
        m.insert("name".into(), json!(n));
    }
    if let Some(u) = uid {
        m.insert("uid".into(), json!(u));
    }
    if !group.is_empty() {
        m.insert("apiGroup".into(), json!(group));
    }
    m.insert("apiVersion".into(), json!("v1"));
    if let Some(rv) = rv {
        m.insert("resourceVersion".into(), json!(rv.to_string()));
    }
    if let Some(s) = subresource {
        m.insert("subresource".into(), json!(s));
    }
    Value::Object(m)
}

fn go_duration_secs(s: i64) -> String {
    if s >= 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// The rendered identity of an actor (built once, cloned into every line).
struct Who {
    user: Value,
    source_ips: Value,
    user_agent: Value,
    reason: Value,
}

const FIXED_ACTORS: [Actor; 7] = [
    Actor::Kubectl,
    Actor::DeploymentController,
    Actor::ReplicaSetController,
    Actor::ControllerManager,
    Actor::ControllerManagerLeader,
    Actor::Scheduler,
    Actor::SchedulerLeader,
];

fn actor_index(a: Actor) -> usize {
    match a {
        Actor::Kubelet(i) => FIXED_ACTORS.len() + i,
        other => FIXED_ACTORS
            .iter()
            .position(|&x| x == other)
            .expect("fixed actor"),
    }
}

/// The generator engine.
pub(crate) struct Engine {
    cfg: EngineConfig,
    cluster: Cluster,
    actors: Vec<Who>,
    noise_rng: GenRng,
    alloc: Allocations,
    rv: u64,
    families: HashMap<u32, FamState>,
    heap: BinaryHeap<Reverse<Queued>>,
    seq: u64,
    busy: usize,
    last_busy: Micros,
    tickers: Vec<Ticker>,
    open_watches: HashMap<String, (String, Micros)>,
    lines: BinaryHeap<Reverse<Line>>,
    line_seq: u64,
    truth: GroundTruth,
}

impl Engine {
    pub(crate) fn new(cfg: EngineConfig) -> Engine {
        let mut crng = rng_for(cfg.seed, streams::CLUSTER);
        let cluster = Cluster::new(&mut crng, &cfg.node_names, cfg.start);
        let alloc = Allocations::new(
            cfg.node_names.clone(),
            cluster.nodes.iter().map(|n| n.pod_subnet).collect(),
        );
        let noise_rng = rng_for(cfg.seed, streams::NOISE);
        let rv = cluster.initial_rv;
        let all = FIXED_ACTORS
            .iter()
            .copied()
            .chain((0..cluster.nodes.len()).map(Actor::Kubelet));
        let actors = all
            .map(|a| Who {
                user: cluster.user(a),
                source_ips: json!([cluster.source_ip(a)]),
                user_agent: json!(cluster.user_agent(a)),
                reason: json!(cluster.authz_reason(a)),
            })
            .collect();
        Engine {
            cfg,
            cluster,
            actors,
            noise_rng,
            alloc,
            rv,
            families: HashMap::new(),
            heap: BinaryHeap::new(),
            seq: 0,
            busy: 0,
            last_busy: Micros::MIN,
            tickers: Vec::new(),
            open_watches: HashMap::new(),
            lines: BinaryHeap::new(),
            line_seq: 0,
            truth: GroundTruth::default(),
        }
    }

    fn push(&mut self, key: Micros, item: Item) {
        self.seq += 1;
        self.heap.push(Reverse(Queued {
            key,
            seq: self.seq,
            item,
        }));
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn nrng(&mut self, lo: Micros, hi: Micros) -> Micros {
        self.noise_rng.random_range(lo..=hi)
    }

    /// Runs the families to completion, handing each rendered event to `sink` in
    /// `stageTimestamp` order. Returns the ground truth.
    pub(crate) fn run<F>(
        mut self,
        families: Vec<FamilySpec>,
        mut sink: F,
    ) -> std::io::Result<GroundTruth>
    where
        F: FnMut(Value) -> std::io::Result<()>,
    {
        if families.is_empty() {
            return Ok(self.truth);
        }
        for f in families {
            self.busy += 1;
            self.push(f.start, Item::Plan(Box::new(f)));
        }
        if self.cfg.noise {
            self.init_tickers();
        }
        while let Some(Reverse(q)) = self.heap.pop() {
            let key = q.key;
            match q.item {
                Item::Plan(spec) => {
                    self.busy -= 1;
                    self.plan(*spec);
                }
                Item::Op(op) => {
                    self.busy -= 1;
                    self.last_busy = self.last_busy.max(key);
                    self.apply(*op);
                }
                Item::Tick(i) => {
                    if self.busy == 0 && key > self.last_busy.saturating_add(TAIL) {
                        continue;
                    }
                    self.tick(i, key);
                }
            }
            while self
                .lines
                .peek()
                .is_some_and(|Reverse(l)| l.ts < key - WINDOW)
            {
                let Reverse(l) = self.lines.pop().expect("peeked");
                sink(l.value)?;
            }
        }
        while let Some(Reverse(l)) = self.lines.pop() {
            sink(l.value)?;
        }
        Ok(self.truth)
    }

    fn plan(&mut self, spec: FamilySpec) {
        let rng = rng_for(self.cfg.seed, streams::FAMILY_BASE + u64::from(spec.id));
        let mut plan = plan_family(&spec, rng, &mut self.alloc);
        let ops = std::mem::take(&mut plan.ops);
        if ops.is_empty() {
            return;
        }
        let node_ips = self.cluster.nodes.iter().map(|n| n.ip.clone()).collect();
        let state = FamState::new(plan, ops.len(), self.cfg.node_names.clone(), node_ips);
        self.families.insert(spec.id, state);
        for op in ops {
            debug_assert!(op.end - op.start <= MAX_LATENCY, "{op:?}");
            self.busy += 1;
            self.push(op.end, Item::Op(Box::new(op)));
        }
    }

    // ----- rendering -----

    fn line(&mut self, ts: Micros, value: Value, class: Class) {
        self.truth.total_lines += 1;
        match class {
            Class::Mutating(_) => self.truth.mutating_lines += 1,
            Class::KubeEvent => self.truth.kube_event_lines += 1,
            Class::Noise => self.truth.noise_events += 1,
        }
        self.line_seq += 1;
        self.lines.push(Reverse(Line {
            ts,
            seq: self.line_seq,
            value,
        }));
    }

    fn base(
        &self,
        req: &Req,
        stage: &str,
        received: Micros,
        stage_ts: Micros,
        rr: bool,
    ) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("kind".into(), json!("Event"));
        m.insert("apiVersion".into(), json!("audit.k8s.io/v1"));
        m.insert("level".into(), json!(req.level));
        m.insert("auditID".into(), json!(req.audit_id));
        m.insert("stage".into(), json!(stage));
        m.insert("requestURI".into(), json!(req.uri));
        m.insert("verb".into(), json!(req.verb));
        let who = &self.actors[actor_index(req.actor)];
        m.insert("user".into(), who.user.clone());
        m.insert("sourceIPs".into(), who.source_ips.clone());
        m.insert("userAgent".into(), who.user_agent.clone());
        let oref = if rr {
            &req.rr_object_ref
        } else {
            &req.object_ref
        };
        if let Some(o) = oref {
            m.insert("objectRef".into(), o.clone());
        }
        m.insert("requestReceivedTimestamp".into(), micros(received));
        m.insert("stageTimestamp".into(), micros(stage_ts));
        if !rr {
            let mut a = Map::new();
            a.insert("authorization.k8s.io/decision".into(), json!("allow"));
            a.insert("authorization.k8s.io/reason".into(), who.reason.clone());
            if req.pod_security {
                a.insert(
                    "pod-security.kubernetes.io/enforce-policy".into(),
                    json!("privileged:latest"),
                );
            }
            m.insert("annotations".into(), Value::Object(a));
        }
        m
    }

    /// RequestReceived (when configured) and ResponseComplete lines of an ordinary request.
    fn emit(&mut self, mut req: Req) {
        if self.cfg.request_received {
            let rr = self.base(&req, "RequestReceived", req.start, req.start, true);
            self.line(req.start, Value::Object(rr), req.class);
        }
        let mut m = self.base(&req, "ResponseComplete", req.start, req.end, false);
        let code = req
            .response_status
            .get("code")
            .and_then(Value::as_u64)
            .unwrap_or(200);
        m.insert(
            "responseStatus".into(),
            std::mem::take(&mut req.response_status),
        );
        if req.level != "Metadata" {
            if let Some(o) = req.request_object.take() {
                m.insert("requestObject".into(), o);
            }
            if req.level == "RequestResponse"
                && let Some(o) = req.response_object.take()
            {
                m.insert("responseObject".into(), o);
            }
        }
        let class = req.class;
        self.line(req.end, Value::Object(m), class);
        if let Class::Mutating(i) = class {
            let failed = code >= 400;
            self.truth.mutating_requests += 1;
            let o = &mut self.truth.objects[i];
            o.requests += 1;
            if failed {
                o.failed_requests += 1;
                self.truth.failed_requests += 1;
            }
        } else if let Class::KubeEvent = class {
            self.truth.kube_events += 1;
        }
    }

    /// A watch starting: RequestReceived (when configured) at `req.start`, ResponseStarted at
    /// `req.end`.
    fn emit_watch_open(&mut self, req: &Req) {
        if self.cfg.request_received {
            let rr = self.base(req, "RequestReceived", req.start, req.start, true);
            self.line(req.start, Value::Object(rr), Class::Noise);
        }
        let mut m = self.base(req, "ResponseStarted", req.start, req.end, false);
        m.insert("responseStatus".into(), ok_status(200));
        self.line(req.end, Value::Object(m), Class::Noise);
    }

    /// A watch ending at `req.end` (requestReceivedTimestamp `req.start`).
    fn emit_watch_close(&mut self, req: &Req) {
        let mut m = self.base(req, "ResponseComplete", req.start, req.end, false);
        m.insert("responseStatus".into(), ok_status(200));
        self.line(req.end, Value::Object(m), Class::Noise);
    }

    fn push_truth(&mut self, o: TruthObject) -> usize {
        self.truth.objects.push(o);
        self.truth.objects.len() - 1
    }

    // ----- family ops -----

    fn apply(&mut self, op: Op) {
        let mut f = self.families.remove(&op.fam).expect("family state");
        self.apply_family(&mut f, &op);
        f.remaining -= 1;
        if f.remaining > 0 {
            self.families.insert(op.fam, f);
        }
    }

    fn req(&self, op: &Op, verb: &'static str, uri: String, class: Class) -> Req {
        Req {
            start: op.start,
            end: op.end,
            audit_id: op.audit_id.clone(),
            actor: op.actor,
            level: "RequestResponse",
            verb,
            uri,
            object_ref: None,
            rr_object_ref: None,
            response_status: ok_status(200),
            request_object: None,
            response_object: None,
            pod_security: false,
            class,
        }
    }

    #[allow(clippy::too_many_lines)]
    fn apply_family(&mut self, f: &mut FamState, op: &Op) {
        let ns = f.plan.spec.namespace.clone();
        let dname = f.plan.spec.name.clone();
        let apps = format!("/apis/apps/v1/namespaces/{ns}");
        let core = format!("/api/v1/namespaces/{ns}");
        match &op.kind {
            OpKind::CreateDeployment => {
                let rv = self.next_rv();
                let truth = self.push_truth(TruthObject {
                    resource: "deployments".into(),
                    group: "apps".into(),
                    kind: "Deployment".into(),
                    namespace: ns.clone(),
                    name: dname.clone(),
                    uid: f.plan.uid.clone(),
                    parent: None,
                    requests: 0,
                    failed_requests: 0,
                    deleted: false,
                });
                f.deploy = Some(DeployState {
                    created: op.end,
                    rv,
                    generation: 1,
                    revision_idx: 0,
                    revision_annotation: None,
                    status: None,
                    managed: Vec::new(),
                    stale: None,
                    truth,
                });
                touch(&mut f.d_mut().managed, Fields::DeployCreate, op.end);
                let mut r = self.req(
                    op,
                    "create",
                    format!(
                        "{apps}/deployments?fieldManager=kubectl-create&fieldValidation=Strict"
                    ),
                    Class::Mutating(truth),
                );
                r.object_ref = Some(oref(
                    "deployments",
                    &ns,
                    Some(&dname),
                    None,
                    "apps",
                    None,
                    None,
                ));
                r.rr_object_ref = Some(oref("deployments", &ns, None, None, "apps", None, None));
                r.response_status = ok_status(201);
                r.request_object = Some(f.deployment_create_body());
                r.response_object = Some(f.deployment_json());
                self.emit(r);
            }
            OpKind::PatchDeployment { revision } => {
                let stale = f.deployment_json();
                let rv = self.next_rv();
                let d = f.d_mut();
                d.stale = Some(stale);
                d.revision_idx = *revision;
                d.generation += 1;
                d.rv = rv;
                touch(&mut d.managed, Fields::DeployPatch, op.end);
                let truth = d.truth;
                let mut r = self.req(
                    op,
                    "patch",
                    format!("{apps}/deployments/{dname}?fieldManager=kubectl-patch"),
                    Class::Mutating(truth),
                );
                let o = oref("deployments", &ns, Some(&dname), None, "apps", None, None);
                r.object_ref = Some(o.clone());
                r.rr_object_ref = Some(o);
                r.request_object = Some(f.deployment_patch_body(*revision));
                r.response_object = Some(f.deployment_json());
                self.emit(r);
            }
            OpKind::DeploymentStatus { progress, conflict } => {
                let truth = f.d().truth;
                let mut r = self.req(
                    op,
                    "update",
                    format!("{apps}/deployments/{dname}/status"),
                    Class::Mutating(truth),
                );
                r.rr_object_ref = Some(oref(
                    "deployments",
                    &ns,
                    Some(&dname),
                    None,
                    "apps",
                    None,
                    Some("status"),
                ));
                if *conflict {
                    let body = f.d().stale.clone().unwrap_or_else(|| f.deployment_json());
                    let stale_rv = body["metadata"]["resourceVersion"]
                        .as_str()
                        .and_then(|s| s.parse().ok());
                    r.object_ref = Some(oref(
                        "deployments",
                        &ns,
                        Some(&dname),
                        Some(&f.plan.uid),
                        "apps",
                        stale_rv,
                        Some("status"),
                    ));
                    let message = format!(
                        "Operation cannot be fulfilled on deployments.apps \"{dname}\": the object has been modified; please apply your changes to the latest version and try again"
                    );
                    let details = json!({"name": dname, "group": "apps", "kind": "deployments"});
                    r.response_status = json!({"metadata": {}, "status": "Failure", "message": message, "reason": "Conflict", "details": details, "code": 409});
                    r.request_object = Some(body);
                    r.response_object = Some(json!({
                        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "message": message, "reason": "Conflict", "details": details, "code": 409,
                    }));
                } else {
                    let old_rv = f.d().rv;
                    f.recompute_deploy_status(*progress, op.start);
                    let body = f.deployment_json();
                    let rv = self.next_rv();
                    let d = f.d_mut();
                    d.rv = rv;
                    touch(&mut d.managed, Fields::DeployStatus, op.end);
                    r.object_ref = Some(oref(
                        "deployments",
                        &ns,
                        Some(&dname),
                        Some(&f.plan.uid),
                        "apps",
                        Some(old_rv),
                        Some("status"),
                    ));
                    r.request_object = Some(body);
                    r.response_object = Some(f.deployment_json());
                }
                self.emit(r);
            }
            OpKind::CreateRs { rs, replicas } => {
                let rv = self.next_rv();
                let plan = f.plan.rss[*rs].clone();
                let truth = self.push_truth(TruthObject {
                    resource: "replicasets".into(),
                    group: "apps".into(),
                    kind: "ReplicaSet".into(),
                    namespace: ns.clone(),
                    name: plan.name.clone(),
                    uid: plan.uid.clone(),
                    parent: Some(("deployments".into(), dname.clone())),
                    requests: 0,
                    failed_requests: 0,
                    deleted: false,
                });
                let body = f.rs_create_body(*rs, *replicas);
                f.rs[*rs] = Some(RsState {
                    created: op.end,
                    rv,
                    generation: 1,
                    replicas: *replicas,
                    status: None,
                    managed: Vec::new(),
                    truth,
                });
                touch(&mut f.rs_mut(*rs).managed, Fields::RsSpec, op.end);
                let mut r = self.req(
                    op,
                    "create",
                    format!("{apps}/replicasets"),
                    Class::Mutating(truth),
                );
                r.object_ref = Some(oref(
                    "replicasets",
                    &ns,
                    Some(&plan.name),
                    None,
                    "apps",
                    None,
                    None,
                ));
                r.rr_object_ref = Some(oref("replicasets", &ns, None, None, "apps", None, None));
                r.response_status = ok_status(201);
                r.request_object = Some(body);
                r.response_object = Some(f.rs_json(*rs));
                self.emit(r);
            }
            OpKind::ScaleRs { rs, replicas } => {
                let name = f.plan.rss[*rs].name.clone();
                let old_rv = f.rs_state(*rs).rv;
                f.rs_mut(*rs).replicas = *replicas;
                let body = f.rs_json(*rs);
                let rv = self.next_rv();
                let st = f.rs_mut(*rs);
                st.generation += 1;
                st.rv = rv;
                touch(&mut st.managed, Fields::RsSpec, op.end);
                let truth = st.truth;
                let mut r = self.req(
                    op,
                    "update",
                    format!("{apps}/replicasets/{name}"),
                    Class::Mutating(truth),
                );
                r.object_ref = Some(oref(
                    "replicasets",
                    &ns,
                    Some(&name),
                    Some(&f.plan.rss[*rs].uid),
                    "apps",
                    Some(old_rv),
                    None,
                ));
                r.rr_object_ref = Some(oref(
                    "replicasets",
                    &ns,
                    Some(&name),
                    None,
                    "apps",
                    None,
                    None,
                ));
                r.request_object = Some(body);
                r.response_object = Some(f.rs_json(*rs));
                self.emit(r);
            }
            OpKind::RsStatus { rs } => {
                let name = f.plan.rss[*rs].name.clone();
                let old_rv = f.rs_state(*rs).rv;
                f.recompute_rs_status(*rs);
                let body = f.rs_json(*rs);
                let rv = self.next_rv();
                let st = f.rs_mut(*rs);
                st.rv = rv;
                touch(&mut st.managed, Fields::RsStatus, op.end);
                let truth = st.truth;
                let mut r = self.req(
                    op,
                    "update",
                    format!("{apps}/replicasets/{name}/status"),
                    Class::Mutating(truth),
                );
                r.object_ref = Some(oref(
                    "replicasets",
                    &ns,
                    Some(&name),
                    Some(&f.plan.rss[*rs].uid),
                    "apps",
                    Some(old_rv),
                    Some("status"),
                ));
                r.rr_object_ref = Some(oref(
                    "replicasets",
                    &ns,
                    Some(&name),
                    None,
                    "apps",
                    None,
                    Some("status"),
                ));
                r.request_object = Some(body);
                r.response_object = Some(f.rs_json(*rs));
                self.emit(r);
            }
            OpKind::CreatePod { pod } => {
                let rv = self.next_rv();
                let plan = f.plan.pods[*pod].clone();
                let truth = self.push_truth(TruthObject {
                    resource: "pods".into(),
                    group: String::new(),
                    kind: "Pod".into(),
                    namespace: ns.clone(),
                    name: plan.name.clone(),
                    uid: plan.uid.clone(),
                    parent: Some(("replicasets".into(), f.plan.rss[plan.rs].name.clone())),
                    requests: 0,
                    failed_requests: 0,
                    deleted: false,
                });
                f.pods[*pod] = Some(PodState {
                    created: op.end,
                    rv,
                    bound: None,
                    phase: "Pending",
                    conditions: Vec::new(),
                    host_ip: false,
                    pod_ip: false,
                    start_time: None,
                    container: None,
                    deletion: None,
                    ready: false,
                    managed: Vec::new(),
                    truth,
                });
                touch(
                    &mut f.pod_mut(*pod).managed,
                    Fields::PodCreate(plan.rs),
                    op.end,
                );
                let mut r = self.req(op, "create", format!("{core}/pods"), Class::Mutating(truth));
                // The name is generated by the API server: the objectRef has none, exactly like
                // a real audit log. The generated name is in the responseObject.
                let o = oref("pods", &ns, None, None, "", None, None);
                r.object_ref = Some(o.clone());
                r.rr_object_ref = Some(o);
                r.response_status = ok_status(201);
                r.request_object = Some(f.pod_create_body(*pod));
                r.response_object = Some(f.pod_json(*pod));
                r.pod_security = true;
                self.emit(r);
            }
            OpKind::BindPod { pod } => {
                let plan = f.plan.pods[*pod].clone();
                f.bind_pod(*pod, op.start);
                let rv = self.next_rv();
                let st = f.pod_mut(*pod);
                st.rv = rv;
                let truth = st.truth;
                let mut r = self.req(
                    op,
                    "create",
                    format!("{core}/pods/{}/binding", plan.name),
                    Class::Mutating(truth),
                );
                r.object_ref = Some(oref(
                    "pods",
                    &ns,
                    Some(&plan.name),
                    Some(&plan.uid),
                    "",
                    None,
                    Some("binding"),
                ));
                r.rr_object_ref = Some(oref(
                    "pods",
                    &ns,
                    Some(&plan.name),
                    None,
                    "",
                    None,
                    Some("binding"),
                ));
                r.response_status = json!({"metadata": {}, "status": "Success", "code": 201});
                r.request_object = Some(json!({
                    "kind": "Binding",
                    "apiVersion": "v1",
                    "metadata": {"name": plan.name, "namespace": ns, "uid": plan.uid, "creationTimestamp": null},
                    "target": {"kind": "Node", "name": f.node_names[plan.node]},
                }));
                r.response_object = Some(
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
                );
                self.emit(r);
            }
            OpKind::PodStatus { pod, step } => {
                let name = f.plan.pods[*pod].name.clone();
                let patch = f.apply_pod_step(*pod, *step, op.start);
                let rv = self.next_rv();
                let st = f.pod_mut(*pod);
                st.rv = rv;
                touch(&mut st.managed, Fields::PodStatus, op.end);
                let truth = st.truth;
                let mut r = self.req(
                    op,
                    "patch",
                    format!("{core}/pods/{name}/status"),
                    Class::Mutating(truth),
                );
                let o = oref("pods", &ns, Some(&name), None, "", None, Some("status"));
                r.object_ref = Some(o.clone());
                r.rr_object_ref = Some(o);
                r.request_object = Some(patch);
                r.response_object = Some(f.pod_json(*pod));
                self.emit(r);
            }
            OpKind::DeletePod { pod, final_delete } => {
                let plan = f.plan.pods[*pod].clone();
                let rv = self.next_rv();
                let st = f.pod_mut(*pod);
                st.rv = rv;
                st.deletion = Some(if *final_delete {
                    (op.start, 0)
                } else {
                    (op.start + 30 * SEC, 30)
                });
                let truth = st.truth;
                let mut r = self.req(
                    op,
                    "delete",
                    format!("{core}/pods/{}", plan.name),
                    Class::Mutating(truth),
                );
                let o = oref("pods", &ns, Some(&plan.name), None, "", None, None);
                r.object_ref = Some(o.clone());
                r.rr_object_ref = Some(o);
                r.request_object = Some(if *final_delete {
                    json!({"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0, "preconditions": {"uid": plan.uid}})
                } else {
                    json!({"kind": "DeleteOptions", "apiVersion": "v1"})
                });
                r.response_object = Some(f.pod_json(*pod));
                if *final_delete {
                    self.truth.objects[truth].deleted = true;
                }
                self.emit(r);
            }
            OpKind::KubeEvent(ev) => {
                let (kind, api_version, name, uid, orv) = match ev.target {
                    Target::Deployment => (
                        "Deployment",
                        "apps/v1",
                        dname.clone(),
                        f.plan.uid.clone(),
                        f.d().rv,
                    ),
                    Target::Rs(i) => (
                        "ReplicaSet",
                        "apps/v1",
                        f.plan.rss[i].name.clone(),
                        f.plan.rss[i].uid.clone(),
                        f.rs_state(i).rv,
                    ),
                    Target::Pod(i) => (
                        "Pod",
                        "v1",
                        f.plan.pods[i].name.clone(),
                        f.plan.pods[i].uid.clone(),
                        f.pod(i).rv,
                    ),
                };
                let mut involved = json!({
                    "kind": kind, "namespace": ns, "name": name, "uid": uid, "apiVersion": api_version,
                    "resourceVersion": orv.to_string(),
                });
                if let Some(fp) = &ev.field_path {
                    involved["fieldPath"] = json!(fp);
                }
                let (source, component, instance) = self.cluster.event_source(op.actor);
                if matches!(op.actor, Actor::Scheduler | Actor::SchedulerLeader) {
                    // kube-scheduler records through events.k8s.io/v1 (seen on a real
                    // v1.37 control plane): `regarding`, `note`, `action`, a microsecond
                    // `eventTime`; the kubelet and kube-controller-manager use core/v1.
                    let body = json!({
                        "kind": "Event",
                        "apiVersion": "events.k8s.io/v1",
                        "metadata": {"name": ev.name, "namespace": ns},
                        "eventTime": crate::time::rfc3339_micros(op.start),
                        "reportingController": component,
                        "reportingInstance": instance,
                        "action": "Binding",
                        "reason": ev.reason,
                        "regarding": involved,
                        "note": ev.message,
                        "type": "Normal",
                        "deprecatedSource": {},
                        "deprecatedFirstTimestamp": null,
                        "deprecatedLastTimestamp": null,
                    });
                    let request = body.clone();
                    let rv = self.next_rv();
                    let mut response = body;
                    response["metadata"] = json!({
                        "name": ev.name, "namespace": ns, "uid": ev.uid, "resourceVersion": rv.to_string(),
                        "creationTimestamp": rfc3339_secs(op.end),
                    });
                    let mut r = self.req(
                        op,
                        "create",
                        format!("/apis/events.k8s.io/v1/namespaces/{ns}/events"),
                        Class::KubeEvent,
                    );
                    r.object_ref = Some(oref(
                        "events",
                        &ns,
                        Some(&ev.name),
                        None,
                        "events.k8s.io",
                        None,
                        None,
                    ));
                    r.rr_object_ref =
                        Some(oref("events", &ns, None, None, "events.k8s.io", None, None));
                    r.response_status = ok_status(201);
                    r.request_object = Some(request);
                    r.response_object = Some(response);
                    self.emit(r);
                    return;
                }
                let when = rfc3339_secs(op.start);
                let mut body = json!({
                    "kind": "Event",
                    "apiVersion": "v1",
                    "metadata": {"name": ev.name, "namespace": ns, "creationTimestamp": null},
                    "involvedObject": involved,
                    "reason": ev.reason,
                    "message": ev.message,
                    "source": source,
                    "firstTimestamp": when,
                    "lastTimestamp": when,
                    "count": 1,
                    "type": "Normal",
                    "eventTime": null,
                    "reportingComponent": component,
                    "reportingInstance": instance,
                });
                let request = body.clone();
                let rv = self.next_rv();
                body["metadata"] = json!({
                    "name": ev.name, "namespace": ns, "uid": ev.uid, "resourceVersion": rv.to_string(),
                    "creationTimestamp": rfc3339_secs(op.end),
                });
                let mut r = self.req(op, "create", format!("{core}/events"), Class::KubeEvent);
                r.object_ref = Some(oref("events", &ns, Some(&ev.name), None, "", None, None));
                r.rr_object_ref = Some(oref("events", &ns, None, None, "", None, None));
                r.response_status = ok_status(201);
                r.request_object = Some(request);
                r.response_object = Some(body);
                self.emit(r);
            }
            OpKind::Get { target } => {
                let (uri, o) = match target {
                    Target::Deployment => (
                        format!("{apps}/deployments/{dname}"),
                        oref("deployments", &ns, Some(&dname), None, "apps", None, None),
                    ),
                    Target::Rs(i) => {
                        let n = &f.plan.rss[*i].name;
                        (
                            format!("{apps}/replicasets/{n}"),
                            oref("replicasets", &ns, Some(n), None, "apps", None, None),
                        )
                    }
                    Target::Pod(i) => {
                        let n = &f.plan.pods[*i].name;
                        (
                            format!("{core}/pods/{n}"),
                            oref("pods", &ns, Some(n), None, "", None, None),
                        )
                    }
                };
                let mut r = self.req(op, "get", uri, Class::Noise);
                r.level = "Metadata";
                r.object_ref = Some(o.clone());
                r.rr_object_ref = Some(o);
                self.emit(r);
            }
            OpKind::OpenApi => {
                let mut r = self.req(
                    op,
                    "get",
                    format!(
                        "/openapi/v3/apis/apps/v1?hash={}&timeout=32s",
                        self.cluster.openapi_hash
                    ),
                    Class::Noise,
                );
                r.level = "Metadata";
                self.emit(r);
            }
            OpKind::ListPods => {
                let mut r = self.req(
                    op,
                    "list",
                    format!("{core}/pods?labelSelector=app%3D{dname}&limit=500"),
                    Class::Noise,
                );
                r.level = "Metadata";
                let o = oref("pods", &ns, None, None, "", None, None);
                r.object_ref = Some(o.clone());
                r.rr_object_ref = Some(o);
                self.emit(r);
            }
            OpKind::WatchOpen => {
                let uri = format!(
                    "{apps}/deployments?fieldSelector=metadata.name%3D{dname}&resourceVersion={}&watch=true",
                    f.d().rv
                );
                let mut r = self.req(op, "watch", uri.clone(), Class::Noise);
                r.level = "Metadata";
                // The API server takes the name from a `metadata.name` field selector.
                let o = oref("deployments", &ns, Some(&dname), None, "apps", None, None);
                r.object_ref = Some(o.clone());
                r.rr_object_ref = Some(o);
                self.open_watches
                    .insert(op.audit_id.clone(), (uri, op.start));
                self.emit_watch_open(&r);
            }
            OpKind::WatchClose => {
                let (uri, received) = self
                    .open_watches
                    .remove(&op.audit_id)
                    .expect("watch was opened");
                let mut r = self.req(op, "watch", uri, Class::Noise);
                r.level = "Metadata";
                r.start = received;
                r.object_ref = Some(oref(
                    "deployments",
                    &ns,
                    Some(&dname),
                    None,
                    "apps",
                    None,
                    None,
                ));
                self.emit_watch_close(&r);
            }
        }
    }

    // ----- cluster noise -----

    fn init_tickers(&mut self) {
        let t0 = self.cfg.start;
        let mut tickers = Vec::new();
        let below = |rng: &mut GenRng, rv: u64| rv - rng.random_range(1..5000u64);
        for n in 0..self.cluster.nodes.len() {
            let rv = below(&mut self.noise_rng, self.rv);
            let first = t0 + self.nrng(0, 10 * SEC);
            tickers.push(Ticker {
                kind: TickKind::NodeLease(n),
                rv,
                open: None,
                next_start: first,
            });
        }
        for kcm in [true, false] {
            let rv = below(&mut self.noise_rng, self.rv);
            let first = t0 + self.nrng(0, 2 * SEC);
            tickers.push(Ticker {
                kind: TickKind::Leader { kcm },
                rv,
                open: None,
                next_start: first,
            });
        }
        let mut watches = vec![
            WatchSpec {
                actor: Actor::ControllerManager,
                path: "/apis/apps/v1/deployments",
                resource: "deployments",
                group: "apps",
                field_selector: None,
            },
            WatchSpec {
                actor: Actor::ControllerManager,
                path: "/apis/apps/v1/replicasets",
                resource: "replicasets",
                group: "apps",
                field_selector: None,
            },
            WatchSpec {
                actor: Actor::ControllerManager,
                path: "/api/v1/pods",
                resource: "pods",
                group: "",
                field_selector: None,
            },
            WatchSpec {
                actor: Actor::Scheduler,
                path: "/api/v1/pods",
                resource: "pods",
                group: "",
                field_selector: Some(
                    "status.phase%21%3DSucceeded%2Cstatus.phase%21%3DFailed".into(),
                ),
            },
            WatchSpec {
                actor: Actor::Scheduler,
                path: "/api/v1/nodes",
                resource: "nodes",
                group: "",
                field_selector: None,
            },
        ];
        for (n, node) in self.cluster.nodes.iter().enumerate() {
            watches.push(WatchSpec {
                actor: Actor::Kubelet(n),
                path: "/api/v1/pods",
                resource: "pods",
                group: "",
                field_selector: Some(format!("spec.nodeName%3D{}", node.name)),
            });
        }
        for w in watches {
            // A watch opened before the stream began; it ends somewhere inside.
            let timeout = self.nrng(300, 600);
            let first = t0 + self.nrng(0, timeout * SEC);
            let received = first - timeout * SEC + self.nrng(0, 2 * SEC);
            let rv = self.rv - self.noise_rng.random_range(5000..50_000u64);
            let uri = watch_uri(&w, rv, timeout);
            let audit = uuid(&mut self.noise_rng);
            tickers.push(Ticker {
                kind: TickKind::Watch(w),
                rv: 0,
                open: Some((audit, uri, received)),
                next_start: first,
            });
        }
        self.tickers = tickers;
        for i in 0..self.tickers.len() {
            self.schedule_tick(i);
        }
    }

    fn tick_duration(&mut self, i: usize) -> Micros {
        match self.tickers[i].kind {
            TickKind::NodeLease(_) | TickKind::Leader { .. } => self.nrng(2 * MS, 9 * MS),
            TickKind::Watch(_) => self.nrng(MS, 5 * MS),
        }
    }

    fn schedule_tick(&mut self, i: usize) {
        let d = self.tick_duration(i);
        let key = self.tickers[i].next_start + d;
        self.push(key, Item::Tick(i));
    }

    fn tick(&mut self, i: usize, end: Micros) {
        let start = self.tickers[i].next_start;
        let audit_id = uuid(&mut self.noise_rng);
        let kind = self.tickers[i].kind.clone();
        match kind {
            TickKind::NodeLease(n) => {
                let node = self.cluster.nodes[n].clone();
                let old_rv = self.tickers[i].rv;
                let renew = start - self.nrng(200, 2 * MS);
                let rv = self.next_rv();
                self.tickers[i].rv = rv;
                let lease = |rv: u64| {
                    json!({
                        "kind": "Lease",
                        "apiVersion": "coordination.k8s.io/v1",
                        "metadata": {
                            "name": node.name, "namespace": "kube-node-lease", "uid": node.lease_uid,
                            "resourceVersion": rv.to_string(), "creationTimestamp": node.lease_created,
                            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node.name, "uid": node.uid}],
                        },
                        "spec": {"holderIdentity": node.name, "leaseDurationSeconds": 40, "renewTime": rfc3339_micros(renew)},
                    })
                };
                let r = Req {
                    start,
                    end,
                    audit_id,
                    actor: Actor::Kubelet(n),
                    level: "RequestResponse",
                    verb: "update",
                    uri: format!(
                        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{}?timeout=10s",
                        node.name
                    ),
                    object_ref: Some(oref(
                        "leases",
                        "kube-node-lease",
                        Some(&node.name),
                        Some(&node.lease_uid),
                        "coordination.k8s.io",
                        Some(old_rv),
                        None,
                    )),
                    rr_object_ref: Some(oref(
                        "leases",
                        "kube-node-lease",
                        Some(&node.name),
                        None,
                        "coordination.k8s.io",
                        None,
                        None,
                    )),
                    response_status: ok_status(200),
                    request_object: Some(lease(old_rv)),
                    response_object: Some(lease(rv)),
                    pod_security: false,
                    class: Class::Noise,
                };
                self.emit(r);
                self.tickers[i].next_start = start + 10 * SEC + self.nrng(0, 60 * MS) - 30 * MS;
            }
            TickKind::Leader { kcm } => {
                let (lease, actor) = if kcm {
                    (
                        self.cluster.kcm_lease.clone(),
                        Actor::ControllerManagerLeader,
                    )
                } else {
                    (self.cluster.scheduler_lease.clone(), Actor::SchedulerLeader)
                };
                let old_rv = self.tickers[i].rv;
                let renew = start - self.nrng(100, MS);
                let rv = self.next_rv();
                self.tickers[i].rv = rv;
                let body = |rv: u64| {
                    json!({
                        "kind": "Lease",
                        "apiVersion": "coordination.k8s.io/v1",
                        "metadata": {
                            "name": lease.name, "namespace": "kube-system", "uid": lease.uid,
                            "resourceVersion": rv.to_string(), "creationTimestamp": lease.created,
                        },
                        "spec": {
                            "holderIdentity": lease.holder, "leaseDurationSeconds": 15, "acquireTime": lease.acquire_time,
                            "renewTime": rfc3339_micros(renew), "leaseTransitions": lease.transitions,
                        },
                    })
                };
                let r = Req {
                    start,
                    end,
                    audit_id,
                    actor,
                    level: "RequestResponse",
                    verb: "update",
                    uri: format!(
                        "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/{}?timeout=5s",
                        lease.name
                    ),
                    object_ref: Some(oref(
                        "leases",
                        "kube-system",
                        Some(lease.name),
                        Some(&lease.uid),
                        "coordination.k8s.io",
                        Some(old_rv),
                        None,
                    )),
                    rr_object_ref: Some(oref(
                        "leases",
                        "kube-system",
                        Some(lease.name),
                        None,
                        "coordination.k8s.io",
                        None,
                        None,
                    )),
                    response_status: ok_status(200),
                    request_object: Some(body(old_rv)),
                    response_object: Some(body(rv)),
                    pod_security: false,
                    class: Class::Noise,
                };
                self.emit(r);
                self.tickers[i].next_start = start + 2 * SEC + self.nrng(0, 300 * MS);
            }
            TickKind::Watch(w) => {
                let o = oref(w.resource, "", None, None, w.group, None, None);
                if let Some((old_audit, old_uri, received)) = self.tickers[i].open.take() {
                    let mut r = self.watch_req(&w, old_audit, old_uri, received, start, o.clone());
                    r.start = received;
                    self.emit_watch_close(&r);
                }
                let timeout = self.nrng(300, 600);
                let uri = watch_uri(&w, self.rv, timeout);
                let received = start + self.nrng(100, (end - start).max(200) / 2);
                let r = self.watch_req(&w, audit_id.clone(), uri.clone(), received, end, o);
                self.emit_watch_open(&r);
                self.tickers[i].open = Some((audit_id, uri, received));
                self.tickers[i].next_start = received + timeout * SEC;
            }
        }
        self.schedule_tick(i);
    }

    fn watch_req(
        &self,
        w: &WatchSpec,
        audit_id: String,
        uri: String,
        start: Micros,
        end: Micros,
        o: Value,
    ) -> Req {
        Req {
            start,
            end,
            audit_id,
            actor: w.actor,
            level: "Metadata",
            verb: "watch",
            uri,
            object_ref: Some(o.clone()),
            rr_object_ref: Some(o),
            response_status: ok_status(200),
            request_object: None,
            response_object: None,
            pod_security: false,
            class: Class::Noise,
        }
    }
}

fn watch_uri(w: &WatchSpec, rv: u64, timeout: i64) -> String {
    let fs = w
        .field_selector
        .as_ref()
        .map(|f| format!("&fieldSelector={f}"))
        .unwrap_or_default();
    format!(
        "{}?allowWatchBookmarks=true{fs}&resourceVersion={rv}&timeout={}&timeoutSeconds={timeout}&watch=true",
        w.path,
        go_duration_secs(timeout)
    )
}
