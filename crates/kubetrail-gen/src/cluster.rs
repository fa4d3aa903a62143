//! The simulated cluster: who talks to the API server, from where, as whom.
//!
//! Identities follow a kubeadm v1.30 cluster with `--use-service-account-credentials` (each
//! controller of kube-controller-manager has its own service account and user-agent suffix),
//! the Node authorizer for kubelets, and RBAC for everyone else, with the authorization
//! reasons the API server writes.

use crate::ids::{GenRng, uuid};
use crate::time::Micros;
use rand::Rng;
use serde_json::{Value, json};

/// Kubernetes release of every simulated component.
pub(crate) const K8S_VERSION: &str = "v1.30.2";
/// The 7-character git commit client-go puts in user agents (`kubernetes/3968350`; v1.30.2 is
/// commit 39683505b6…).
pub(crate) const K8S_COMMIT: &str = "3968350";

/// Who sent a request.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, PartialOrd, Ord)]
pub(crate) enum Actor {
    /// `kubectl` as `kubernetes-admin` (kubeadm's admin.conf).
    Kubectl,
    /// kube-controller-manager's deployment controller.
    DeploymentController,
    /// kube-controller-manager's replicaset controller.
    ReplicaSetController,
    /// kube-controller-manager's shared informers (list/watch).
    ControllerManager,
    /// kube-controller-manager's leader election.
    ControllerManagerLeader,
    /// kube-scheduler (binding, events, list/watch).
    Scheduler,
    /// kube-scheduler's leader election.
    SchedulerLeader,
    /// The kubelet of node `i`.
    Kubelet(usize),
}

/// A worker node.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub name: String,
    pub ip: String,
    /// Third octet of the node's pod CIDR `10.244.<n>.0/24`.
    pub pod_subnet: u32,
    pub uid: String,
    pub lease_uid: String,
    pub lease_created: String,
}

/// A leader-election lease held by a control-plane component.
#[derive(Clone, Debug)]
pub(crate) struct LeaderLease {
    pub name: &'static str,
    pub uid: String,
    pub holder: String,
    pub acquire_time: String,
    pub created: String,
    pub transitions: u32,
}

/// Everything about the cluster that does not change during a scenario.
#[derive(Clone, Debug)]
pub(crate) struct Cluster {
    pub nodes: Vec<Node>,
    pub control_plane: String,
    control_plane_ip: String,
    kubectl_ip: String,
    deployment_controller_uid: String,
    deployment_controller_jti: String,
    replicaset_controller_uid: String,
    replicaset_controller_jti: String,
    pub kcm_lease: LeaderLease,
    pub scheduler_lease: LeaderLease,
    /// Hash kubectl sends when fetching the OpenAPI v3 document of `apps/v1`.
    pub openapi_hash: String,
    /// etcd revision before the first generated write.
    pub initial_rv: u64,
}

impl Cluster {
    /// Builds a cluster whose worker nodes have the given names.
    pub(crate) fn new(rng: &mut GenRng, node_names: &[String], start: Micros) -> Cluster {
        let boot = start - rng.random_range(3 * 86_400..40 * 86_400) * crate::time::SEC;
        let boot_s = crate::time::rfc3339_secs(boot);
        let nodes = node_names
            .iter()
            .enumerate()
            .map(|(i, name)| Node {
                name: name.clone(),
                ip: format!("10.0.{}.{}", 1 + i / 240, 11 + i % 240),
                pod_subnet: (i % 254) as u32 + 1,
                uid: uuid(rng),
                lease_uid: uuid(rng),
                lease_created: boot_s.clone(),
            })
            .collect();
        let control_plane = "control-plane-1".to_string();
        let leader = |name: &'static str, rng: &mut GenRng| LeaderLease {
            name,
            uid: uuid(rng),
            holder: format!("{control_plane}_{}", uuid(rng)),
            acquire_time: crate::time::rfc3339_micros(
                boot + rng.random_range(20 * crate::time::SEC..90 * crate::time::SEC),
            ),
            created: boot_s.clone(),
            transitions: rng.random_range(0..3),
        };
        let kcm_lease = leader("kube-controller-manager", rng);
        let scheduler_lease = leader("kube-scheduler", rng);
        Cluster {
            nodes,
            control_plane: control_plane.clone(),
            control_plane_ip: "10.0.1.10".into(),
            kubectl_ip: format!("10.0.0.{}", rng.random_range(20..60)),
            deployment_controller_uid: uuid(rng),
            deployment_controller_jti: uuid(rng),
            replicaset_controller_uid: uuid(rng),
            replicaset_controller_jti: uuid(rng),
            kcm_lease,
            scheduler_lease,
            openapi_hash: crate::ids::hex(rng, 128).to_uppercase(),
            initial_rv: rng.random_range(150_000..900_000),
        }
    }

    /// The audit `user` block.
    pub(crate) fn user(&self, actor: Actor) -> Value {
        let sa = |name: &str, uid: &str, jti: &str| {
            json!({
                "username": format!("system:serviceaccount:kube-system:{name}"),
                "uid": uid,
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"],
                "extra": {"authentication.kubernetes.io/credential-id": [format!("JTI={jti}")]},
            })
        };
        match actor {
            Actor::Kubectl => {
                json!({"username": "kubernetes-admin", "groups": ["kubeadm:cluster-admins", "system:authenticated"]})
            }
            Actor::DeploymentController => sa(
                "deployment-controller",
                &self.deployment_controller_uid,
                &self.deployment_controller_jti,
            ),
            Actor::ReplicaSetController => sa(
                "replicaset-controller",
                &self.replicaset_controller_uid,
                &self.replicaset_controller_jti,
            ),
            Actor::ControllerManager | Actor::ControllerManagerLeader => {
                json!({"username": "system:kube-controller-manager", "groups": ["system:authenticated"]})
            }
            Actor::Scheduler | Actor::SchedulerLeader => {
                json!({"username": "system:kube-scheduler", "groups": ["system:authenticated"]})
            }
            Actor::Kubelet(i) => json!({
                "username": format!("system:node:{}", self.nodes[i].name),
                "groups": ["system:nodes", "system:authenticated"],
            }),
        }
    }

    /// The `userAgent` client-go sends for this actor.
    pub(crate) fn user_agent(&self, actor: Actor) -> String {
        let base =
            |prog: &str| format!("{prog}/{K8S_VERSION} (linux/amd64) kubernetes/{K8S_COMMIT}");
        match actor {
            Actor::Kubectl => base("kubectl"),
            Actor::DeploymentController => {
                format!(
                    "{}/system:serviceaccount:kube-system:deployment-controller",
                    base("kube-controller-manager")
                )
            }
            Actor::ReplicaSetController => {
                format!(
                    "{}/system:serviceaccount:kube-system:replicaset-controller",
                    base("kube-controller-manager")
                )
            }
            Actor::ControllerManager => {
                format!("{}/shared-informers", base("kube-controller-manager"))
            }
            Actor::ControllerManagerLeader => {
                format!("{}/leader-election", base("kube-controller-manager"))
            }
            Actor::Scheduler => format!("{}/scheduler", base("kube-scheduler")),
            Actor::SchedulerLeader => format!("{}/leader-election", base("kube-scheduler")),
            Actor::Kubelet(_) => base("kubelet"),
        }
    }

    /// The client address the API server saw.
    pub(crate) fn source_ip(&self, actor: Actor) -> &str {
        match actor {
            Actor::Kubectl => &self.kubectl_ip,
            Actor::Kubelet(i) => &self.nodes[i].ip,
            _ => &self.control_plane_ip,
        }
    }

    /// `authorization.k8s.io/reason` for a request by `actor` (the Node authorizer gives none).
    pub(crate) fn authz_reason(&self, actor: Actor) -> String {
        let controller = |name: &str| {
            format!(
                "RBAC: allowed by ClusterRoleBinding \"system:controller:{name}\" of ClusterRole \"system:controller:{name}\" to ServiceAccount \"{name}/kube-system\""
            )
        };
        let user = |name: &str| {
            format!(
                "RBAC: allowed by ClusterRoleBinding \"{name}\" of ClusterRole \"{name}\" to User \"{name}\""
            )
        };
        match actor {
            Actor::Kubectl => "RBAC: allowed by ClusterRoleBinding \"kubeadm:cluster-admins\" of ClusterRole \"cluster-admin\" to Group \"kubeadm:cluster-admins\"".into(),
            Actor::DeploymentController => controller("deployment-controller"),
            Actor::ReplicaSetController => controller("replicaset-controller"),
            Actor::ControllerManager | Actor::ControllerManagerLeader => user("system:kube-controller-manager"),
            Actor::Scheduler | Actor::SchedulerLeader => user("system:kube-scheduler"),
            Actor::Kubelet(_) => String::new(),
        }
    }

    /// `(source, reportingComponent, reportingInstance)` of core/v1 Events recorded by `actor`.
    pub(crate) fn event_source(&self, actor: Actor) -> (Value, &'static str, String) {
        match actor {
            Actor::DeploymentController => (
                json!({"component": "deployment-controller"}),
                "deployment-controller",
                String::new(),
            ),
            Actor::ReplicaSetController => (
                json!({"component": "replicaset-controller"}),
                "replicaset-controller",
                String::new(),
            ),
            Actor::Scheduler | Actor::SchedulerLeader => (
                json!({"component": "default-scheduler"}),
                "default-scheduler",
                format!("default-scheduler-{}", self.control_plane),
            ),
            Actor::Kubelet(i) => {
                let node = &self.nodes[i].name;
                (
                    json!({"component": "kubelet", "host": node}),
                    "kubelet",
                    node.clone(),
                )
            }
            Actor::Kubectl | Actor::ControllerManager | Actor::ControllerManagerLeader => (
                json!({"component": "kube-controller-manager"}),
                "kube-controller-manager",
                String::new(),
            ),
        }
    }
}
