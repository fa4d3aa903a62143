//! Who performed a request, as a low-cardinality component name.
//!
//! Jaeger colours a timeline by service, so request spans use the acting component as their
//! `service.name`: `kubelet`, `kube-scheduler`, `replicaset-controller`, `kubectl`, an
//! operator's name. Node names, versions and commit hashes are dropped so the set stays small.

use crate::audit::UserInfo;

/// The component that acted, and the user it acted as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// Low-cardinality component name.
    pub component: String,
    /// The username, verbatim (may be high-cardinality, e.g. `system:node:<name>`).
    pub username: String,
}

const GENERIC_AGENTS: &[&str] = &[
    "go-http-client",
    "mozilla",
    "curl",
    "python-requests",
    "okhttp",
    "unknown",
    "",
];

impl Actor {
    /// Derives the acting component from the user and the user agent.
    pub fn derive(user: &UserInfo, user_agent: Option<&str>) -> Actor {
        let username = user.username.clone().unwrap_or_default();
        Actor {
            component: component(&username, user_agent.unwrap_or("")),
            username,
        }
    }
}

fn component(username: &str, ua: &str) -> String {
    if username.starts_with("system:node:") {
        return "kubelet".into();
    }
    let product = ua.split(['/', ' ']).next().unwrap_or("").trim();
    // kube-controller-manager appends the controller's identity to its user agent when it runs
    // with --use-service-account-credentials: `.../kubernetes/<commit>/system:serviceaccount:kube-system:replicaset-controller`.
    if let Some(last) = ua.rsplit('/').next().filter(|_| ua.contains("kubernetes/")) {
        let last = last.trim();
        if let Some(sa) = last.strip_prefix("system:serviceaccount:") {
            if let Some((_, name)) = sa.split_once(':') {
                return name.into();
            }
        } else if last.ends_with("-controller") {
            return last.into();
        }
    }
    match username {
        "system:kube-scheduler" => return "kube-scheduler".into(),
        "system:kube-controller-manager" => return "kube-controller-manager".into(),
        "system:kube-proxy" => return "kube-proxy".into(),
        "system:apiserver" => return "kube-apiserver".into(),
        "system:anonymous" => return "anonymous".into(),
        _ => {}
    }
    if let Some((ns, name)) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|sa| sa.split_once(':'))
        && (ns == "kube-system" || name != "default")
    {
        return name.into();
    }
    if !GENERIC_AGENTS.contains(&product.to_ascii_lowercase().as_str()) {
        return product.into();
    }
    if username.is_empty() {
        "unknown".into()
    } else {
        username.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(user: &str, ua: &str) -> String {
        let u = UserInfo {
            username: Some(user.into()),
            ..Default::default()
        };
        Actor::derive(&u, Some(ua)).component
    }

    #[test]
    fn components_from_real_user_agents() {
        assert_eq!(
            actor(
                "system:node:oscar7",
                "kubelet/v1.25.8+27e744f (linux/amd64) kubernetes/df8a1b9"
            ),
            "kubelet"
        );
        assert_eq!(
            actor(
                "system:kube-scheduler",
                "kube-scheduler/v1.25.8 (linux/amd64) kubernetes/df8a1b9/scheduler"
            ),
            "kube-scheduler"
        );
        assert_eq!(
            actor(
                "system:serviceaccount:kube-system:replicaset-controller",
                "kube-controller-manager/v1.20.0 (linux/amd64) kubernetes/abc/system:serviceaccount:kube-system:replicaset-controller"
            ),
            "replicaset-controller"
        );
        assert_eq!(
            actor(
                "system:serviceaccount:kube-system:daemon-set-controller",
                ""
            ),
            "daemon-set-controller"
        );
        assert_eq!(
            actor(
                "kubernetes-admin",
                "kubectl/v1.28.2 (linux/amd64) kubernetes/89a4ea3"
            ),
            "kubectl"
        );
        assert_eq!(
            actor(
                "system:serviceaccount:flux-system:kustomize-controller",
                "kustomize-controller/v1.2.0"
            ),
            "kustomize-controller"
        );
        assert_eq!(
            actor(
                "system:serviceaccount:team:default",
                "my-operator/v0.1 (linux/amd64)"
            ),
            "my-operator"
        );
        assert_eq!(actor("alice", "Go-http-client/2.0"), "alice");
        assert_eq!(actor("", ""), "unknown");
    }
}
