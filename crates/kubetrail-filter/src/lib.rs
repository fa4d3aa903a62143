//! Which audit events become spans.
//!
//! Most of an audit log is reads (`get`, `list`, `watch`) and leader-election lease renewals:
//! they change nothing and would drown the timeline, so the default keeps only mutating verbs
//! and drops `coordination.k8s.io/leases`. Every rule is configurable, and every decision says
//! why it dropped an event ([`Verdict`]), so the pipeline can count drops by reason.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use serde::Deserialize;

use kubetrail_model::AuditEvent;

/// A simple glob: `*` matches any run of characters; everything else is literal.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Pattern(String);

impl Pattern {
    /// A pattern from its text.
    pub fn new(p: impl Into<String>) -> Self {
        Pattern(p.into())
    }

    /// Whether `s` matches.
    pub fn matches(&self, s: &str) -> bool {
        glob(self.0.as_bytes(), s.as_bytes())
    }
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    // Iterative wildcard matching with backtracking to the last star: O(len(p) * len(s)).
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// One include or exclude rule; every field given must match (an empty list matches all).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rule {
    /// Verbs (`create`, `patch`, …).
    pub verbs: Vec<Pattern>,
    /// `resource` or `resource.group`, optionally with `/subresource` (`pods/status`,
    /// `leases.coordination.k8s.io`, `*.example.com`).
    pub resources: Vec<Pattern>,
    /// Namespaces (the empty string is cluster scope).
    pub namespaces: Vec<Pattern>,
    /// Usernames (the authenticated user).
    pub users: Vec<Pattern>,
    /// User agents.
    pub user_agents: Vec<Pattern>,
    /// Cluster names.
    pub clusters: Vec<Pattern>,
}

impl Rule {
    fn any(list: &[Pattern], s: &str) -> bool {
        list.is_empty() || list.iter().any(|p| p.matches(s))
    }

    fn matches(&self, e: &EventView<'_>) -> bool {
        Self::any(&self.verbs, e.verb)
            && (self.resources.is_empty()
                || self
                    .resources
                    .iter()
                    .any(|p| p.matches(&e.resource_with_group) || p.matches(&e.resource_full)))
            && Self::any(&self.namespaces, e.namespace)
            && Self::any(&self.users, e.user)
            && Self::any(&self.user_agents, e.user_agent)
            && Self::any(&self.clusters, e.cluster)
    }
}

/// Filter configuration, as found under `filter:` in the config file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilterConfig {
    /// Verbs that can become spans. Default: the mutating verbs.
    pub verbs: Vec<String>,
    /// When non-empty, an event must match at least one of these rules.
    pub include: Vec<Rule>,
    /// An event matching any of these rules is dropped. Default: leases.
    pub exclude: Vec<Rule>,
    /// Keep requests that the API server rejected (4xx/5xx). Default: true, shown as errors.
    pub keep_failed: bool,
    /// Keep dry-run requests (annotated by the API server). Default: false: they change nothing.
    pub keep_dry_run: bool,
}

/// Resources dropped by default: leader-election leases (renewed every few seconds by every
/// controller and kubelet), and the virtual review resources that are "created" on every
/// authentication and authorization check but never stored.
pub const DEFAULT_EXCLUDED_RESOURCES: &[&str] = &[
    "leases.coordination.k8s.io",
    "*reviews.authorization.k8s.io",
    "*reviews.authentication.k8s.io",
];

/// Verbs that change state.
pub const MUTATING_VERBS: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];

impl Default for FilterConfig {
    fn default() -> Self {
        FilterConfig {
            verbs: MUTATING_VERBS.iter().map(|s| (*s).to_owned()).collect(),
            include: vec![],
            exclude: vec![Rule {
                resources: DEFAULT_EXCLUDED_RESOURCES
                    .iter()
                    .map(|r| Pattern::new(*r))
                    .collect(),
                ..Rule::default()
            }],
            keep_failed: true,
            keep_dry_run: false,
        }
    }
}

/// What the filter decided, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The event goes on.
    Keep,
    /// Its verb is not a configured one (reads, by default).
    DropVerb,
    /// Not about an object (non-resource URL such as `/healthz`, `/version`).
    DropNonResource,
    /// Matched an exclude rule.
    DropExcluded,
    /// Matched no include rule.
    DropNotIncluded,
    /// The API server rejected it and failed requests are not kept.
    DropFailed,
    /// A dry-run request.
    DropDryRun,
}

impl Verdict {
    /// A short label for metrics and summaries.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Keep => "kept",
            Verdict::DropVerb => "verb",
            Verdict::DropNonResource => "non_resource",
            Verdict::DropExcluded => "excluded",
            Verdict::DropNotIncluded => "not_included",
            Verdict::DropFailed => "failed_request",
            Verdict::DropDryRun => "dry_run",
        }
    }
}

struct EventView<'a> {
    verb: &'a str,
    resource_with_group: String,
    resource_full: String,
    namespace: &'a str,
    user: &'a str,
    user_agent: &'a str,
    cluster: &'a str,
}

/// The compiled filter.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    config: FilterConfig,
}

impl EventFilter {
    /// A filter from its configuration.
    pub fn new(config: FilterConfig) -> Self {
        EventFilter { config }
    }

    /// Decides whether an event from `cluster` becomes a span.
    pub fn decide(&self, cluster: &str, e: &AuditEvent) -> Verdict {
        let c = &self.config;
        if !c.verbs.iter().any(|v| v == &e.verb) {
            return Verdict::DropVerb;
        }
        let Some(r) = e
            .object_ref
            .as_ref()
            .filter(|r| r.resource.as_deref().is_some_and(|s| !s.is_empty()))
        else {
            return Verdict::DropNonResource;
        };
        if !c.keep_failed && e.response_code().is_some_and(|code| code >= 400) {
            return Verdict::DropFailed;
        }
        if !c.keep_dry_run && e.is_dry_run() {
            return Verdict::DropDryRun;
        }
        let resource = r.resource.as_deref().unwrap_or_default();
        let group = r.api_group.as_deref().unwrap_or_default();
        let resource_with_group = if group.is_empty() {
            resource.to_owned()
        } else {
            format!("{resource}.{group}")
        };
        let resource_full = match r.subresource.as_deref() {
            Some(sub) => format!("{resource_with_group}/{sub}"),
            None => resource_with_group.clone(),
        };
        let view = EventView {
            verb: &e.verb,
            resource_with_group,
            resource_full,
            namespace: r.namespace.as_deref().unwrap_or_default(),
            user: e.user.username.as_deref().unwrap_or_default(),
            user_agent: e.user_agent.as_deref().unwrap_or_default(),
            cluster,
        };
        if c.exclude.iter().any(|rule| rule.matches(&view)) {
            return Verdict::DropExcluded;
        }
        if !c.include.is_empty() && !c.include.iter().any(|rule| rule.matches(&view)) {
            return Verdict::DropNotIncluded;
        }
        Verdict::Keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(verb: &str, resource: &str, group: &str, sub: Option<&str>, uri: &str) -> AuditEvent {
        let sub = sub
            .map(|s| format!(r#","subresource":"{s}""#))
            .unwrap_or_default();
        serde_json::from_str(&format!(
            r#"{{"level":"Metadata","auditID":"x","stage":"ResponseComplete","requestURI":"{uri}","verb":"{verb}","user":{{"username":"system:node:n1"}},"userAgent":"kubelet/v1.30","objectRef":{{"resource":"{resource}","apiGroup":"{group}","namespace":"ns","name":"a"{sub}}},"responseStatus":{{"code":200}}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn defaults_keep_mutations_and_drop_reads_and_leases() {
        let f = EventFilter::default();
        assert_eq!(
            f.decide("c", &ev("patch", "pods", "", Some("status"), "/api")),
            Verdict::Keep
        );
        assert_eq!(
            f.decide("c", &ev("get", "pods", "", None, "/api")),
            Verdict::DropVerb
        );
        assert_eq!(
            f.decide("c", &ev("watch", "pods", "", None, "/api")),
            Verdict::DropVerb
        );
        assert_eq!(
            f.decide(
                "c",
                &ev("update", "leases", "coordination.k8s.io", None, "/apis")
            ),
            Verdict::DropExcluded
        );
        assert_eq!(
            f.decide(
                "c",
                &ev(
                    "patch",
                    "configmaps",
                    "",
                    None,
                    "/api/v1/namespaces/ns/configmaps/a?dryRun=All&fieldManager=x"
                )
            ),
            Verdict::DropDryRun
        );
    }

    #[test]
    fn config_rules_from_yaml() {
        let cfg: FilterConfig = serde_yaml::from_str(
            r#"
verbs: [create, update, patch, delete, deletecollection, get]
include:
  - namespaces: ["shop", "ns"]
exclude:
  - resources: ["pods/status"]
    users: ["system:node:*"]
"#,
        )
        .unwrap();
        let f = EventFilter::new(cfg);
        assert_eq!(
            f.decide("c", &ev("get", "pods", "", None, "/api")),
            Verdict::Keep
        );
        assert_eq!(
            f.decide("c", &ev("patch", "pods", "", Some("status"), "/api")),
            Verdict::DropExcluded
        );
        assert_eq!(
            f.decide(
                "c",
                &ev("update", "leases", "coordination.k8s.io", None, "/apis")
            ),
            Verdict::Keep
        );
        assert!(serde_yaml::from_str::<FilterConfig>("verbz: []").is_err());
    }

    #[test]
    fn glob_patterns() {
        assert!(Pattern::new("system:node:*").matches("system:node:n1"));
        assert!(Pattern::new("*.example.com").matches("flunders.example.com"));
        assert!(Pattern::new("a*b*c").matches("aXXbYYc"));
        assert!(!Pattern::new("a*b*c").matches("aXXbYY"));
        assert!(Pattern::new("*").matches(""));
        assert!(!Pattern::new("pods").matches("pods/status"));
    }
}
