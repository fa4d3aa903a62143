//! Deterministic generator of realistic Kubernetes audit event streams.
//!
//! # Why
//!
//! kubetrail turns API-server audit logs into traces, and the public samples of real audit
//! logs are tiny and never contain a whole Deployment → ReplicaSet → Pod story. End-to-end tests
//! need complete, realistic streams with a known right answer, and benchmarks need millions of
//! lines; both need the same bytes on every run. This crate simulates a kubeadm v1.30 cluster
//! well enough to produce them: the same actors, URIs, objectRefs, bodies, stages and timing as
//! a real `--audit-log-path` file or audit webhook, plus a [`GroundTruth`] describing what a
//! correct tracer should find. It depends on no other kubetrail crate: events are
//! [`serde_json::Value`]s and JSON text.
//!
//! # The rollout story ([`RolloutScenario`])
//!
//! 1. `kubectl create` of the Deployment (request and response bodies; generation 1).
//! 2. The deployment controller creates ReplicaSet `<name>-<hash>` (ownerReference to the
//!    Deployment, `controller: true`), records a `ScalingReplicaSet` Event and updates
//!    `deployments/status`.
//! 3. The replicaset controller creates the pods with `generateName` — the create's objectRef
//!    has **no name**, the generated name and uid are in the responseObject — records
//!    `SuccessfulCreate` Events and updates `replicasets/status`.
//! 4. kube-scheduler creates `pods/binding` for each pod (objectRef name and uid = the pod's,
//!    subresource `binding`) and records a `Scheduled` Event.
//! 5. Each pod's kubelet patches `pods/status` three times (Pending/ContainerCreating, sandbox
//!    ready, Running/Ready) and records `Pulling`/`Pulled`/`Created`/`Started` Events; status
//!    updates ripple up to the ReplicaSet and the Deployment.
//! 6. `kubectl patch` changes the image `nginx:1.25` → `nginx:1.27` (strategic merge patch;
//!    generation 2).
//! 7. The deployment controller creates a second ReplicaSet and scales both step by step
//!    (RollingUpdate, maxSurge 25 %, maxUnavailable 25 %) with `update replicasets`; new pods go
//!    through steps 3–5; old pods are deleted gracefully by the replicaset controller, then the
//!    kubelet records `Killing`, patches the pod to terminated and deletes it for good
//!    (`gracePeriodSeconds: 0`).
//! 8. With noise: kubectl and kubelet reads, `kubectl rollout status` watch (ResponseStarted …
//!    ResponseComplete), node and leader-election lease renewals, informer watch restarts and a
//!    409 Conflict on `deployments/status` by the deployment controller.
//!
//! Events come out in `stageTimestamp` order, pods interleaved as their timelines overlap.
//!
//! # Audit policy simulated
//!
//! Reads (get/list/watch, non-resource URLs) are logged at `Metadata` (no bodies); everything
//! else — including core/v1 Event creates and lease updates — at `RequestResponse`. With
//! `RequestReceived` stages on, every request gets a `RequestReceived` line (no responseStatus,
//! no bodies, no annotations, objectRef taken from the URL only, so a create's has no name)
//! before its final line.
//!
//! # Example
//!
//! ```
//! let stream = kubetrail_gen::RolloutScenario::default().generate();
//! let text = stream.to_json_lines();
//! assert_eq!(text.lines().count(), stream.truth.total_lines);
//! assert_eq!(stream.truth.roots().count(), 1);
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod cluster;
mod engine;
mod ids;
mod json;
mod model;
mod plan;
mod scenario;
mod tenant;
mod time;
mod truth;

pub use json::event_to_json;
pub use scenario::{DEFAULT_CLUSTER_START, GeneratedStream, RolloutScenario, VolumeScenario};
pub use tenant::{TENANT_UID, cluster_scoped_owner_family};
pub use truth::{GroundTruth, TruthObject};
