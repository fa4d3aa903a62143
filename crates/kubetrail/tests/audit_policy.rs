//! The audit policies we ship (`audit-policy/policy.yaml`, `audit-policy/minimal.yaml`),
//! evaluated as kube-apiserver evaluates an `audit.k8s.io/v1` Policy, over every real event of
//! `testdata/audit-samples` and over a grid of made-up requests.
//!
//! The evaluator follows kube-apiserver's policy checker (`k8s.io/apiserver/pkg/audit/policy`):
//! rules in order, the first that matches decides the level, no match is `None`. A rule
//! matches when every field it sets matches: `users` (the authenticated user, not the
//! impersonated one: the audit filter runs before impersonation), `userGroups` (any group),
//! `verbs`; then, if it sets `namespaces` or `resources`, only resource requests whose
//! namespace (`""` for cluster-scoped) is listed and whose (group, resource) is listed, with
//! `resource/subresource`, `*` (anything, subresources too), `*/subresource` and
//! `resource/*` (the resource and all its subresources); else, if it sets
//! `nonResourceURLs`, only non-resource requests whose path equals one or starts with a
//! pattern's prefix before a trailing `*`. Stages in the policy's or the rule's `omitStages`
//! are not recorded at all.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use kubetrail_filter::{EventFilter, Verdict};
use kubetrail_model::{AuditEvent, Level, Stage};
use kubetrail_source::EventReader;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Policy {
    api_version: String,
    kind: String,
    #[serde(default)]
    metadata: Option<serde_yaml::Value>,
    #[serde(default)]
    omit_stages: Vec<Stage>,
    #[serde(default)]
    omit_managed_fields: Option<bool>,
    rules: Vec<PolicyRule>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PolicyRule {
    level: Level,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    user_groups: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    resources: Vec<GroupResources>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    non_resource_urls: Vec<String>,
    #[serde(default)]
    omit_stages: Vec<Stage>,
    #[serde(default)]
    omit_managed_fields: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GroupResources {
    /// `""` (or absent) is the core group.
    #[serde(default)]
    group: String,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    resource_names: Vec<String>,
}

/// What the policy checker looks at in a request.
#[derive(Debug, Clone, Default)]
struct Request {
    user: String,
    groups: Vec<String>,
    verb: String,
    /// `Some` for a resource request.
    resource: Option<ResourceAttrs>,
    /// The path of a non-resource request.
    path: String,
    stage: Option<Stage>,
}

#[derive(Debug, Clone, Default)]
struct ResourceAttrs {
    group: String,
    resource: String,
    subresource: String,
    namespace: String,
    name: String,
}

impl Request {
    fn from_event(e: &AuditEvent) -> Request {
        let resource = e
            .object_ref
            .as_ref()
            .filter(|r| r.resource.as_deref().is_some_and(|s| !s.is_empty()))
            .map(|r| ResourceAttrs {
                group: r.api_group.clone().unwrap_or_default(),
                resource: r.resource.clone().unwrap_or_default(),
                subresource: r.subresource.clone().unwrap_or_default(),
                namespace: r.namespace.clone().unwrap_or_default(),
                name: r.name.clone().unwrap_or_default(),
            });
        Request {
            user: e.user.username.clone().unwrap_or_default(),
            groups: e.user.groups.clone().unwrap_or_default(),
            verb: e.verb.clone(),
            resource,
            path: e
                .request_uri
                .split('?')
                .next()
                .unwrap_or_default()
                .to_owned(),
            stage: Some(e.stage),
        }
    }

    /// `resource[.group][/subresource]`, or the path of a non-resource request.
    fn target(&self) -> String {
        match &self.resource {
            Some(r) => {
                let mut s = r.resource.clone();
                if !r.group.is_empty() {
                    s = format!("{s}.{}", r.group);
                }
                if !r.subresource.is_empty() {
                    s = format!("{s}/{}", r.subresource);
                }
                s
            }
            None => format!("(url) {}", self.path),
        }
    }
}

/// The decision for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Decision {
    level: Level,
    /// Zero-based index of the rule that matched; `None` when none did.
    rule: Option<usize>,
    /// The request's stage is not recorded (`omitStages`).
    stage_omitted: bool,
}

impl Policy {
    fn load(name: &str) -> Policy {
        let path = repo_root().join("audit-policy").join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        let p: Policy = serde_yaml::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not a valid Policy: {e}", path.display()));
        assert_eq!(p.api_version, "audit.k8s.io/v1", "{name}");
        assert_eq!(p.kind, "Policy", "{name}");
        assert!(p.metadata.is_none() && p.omit_managed_fields.is_none());
        assert!(!p.rules.is_empty());
        p
    }

    fn decide(&self, req: &Request) -> Decision {
        match self.rules.iter().position(|r| r.matches(req)) {
            Some(i) => {
                let rule = &self.rules[i];
                let stage_omitted = req.stage.is_some_and(|s| {
                    self.omit_stages.contains(&s) || rule.omit_stages.contains(&s)
                });
                Decision {
                    level: rule.level,
                    rule: Some(i),
                    stage_omitted,
                }
            }
            None => Decision {
                level: Level::None,
                rule: None,
                stage_omitted: false,
            },
        }
    }
}

impl PolicyRule {
    fn matches(&self, req: &Request) -> bool {
        assert!(self.omit_managed_fields.is_none());
        if !self.users.is_empty() && !self.users.contains(&req.user) {
            return false;
        }
        if !self.user_groups.is_empty() && !req.groups.iter().any(|g| self.user_groups.contains(g))
        {
            return false;
        }
        if !self.verbs.is_empty() && !self.verbs.contains(&req.verb) {
            return false;
        }
        if !self.namespaces.is_empty() || !self.resources.is_empty() {
            return self.matches_resource(req);
        }
        if !self.non_resource_urls.is_empty() {
            return req.resource.is_none()
                && self
                    .non_resource_urls
                    .iter()
                    .any(|spec| path_matches(&req.path, spec));
        }
        true
    }

    fn matches_resource(&self, req: &Request) -> bool {
        let Some(r) = &req.resource else {
            return false;
        };
        if !self.namespaces.is_empty() && !self.namespaces.contains(&r.namespace) {
            return false;
        }
        if self.resources.is_empty() {
            return true;
        }
        let combined = if r.subresource.is_empty() {
            r.resource.clone()
        } else {
            format!("{}/{}", r.resource, r.subresource)
        };
        self.resources.iter().any(|gr| {
            if gr.group != r.group {
                return false;
            }
            if gr.resources.is_empty() {
                return true;
            }
            gr.resources.iter().any(|res| {
                if !gr.resource_names.is_empty() && !gr.resource_names.contains(&r.name) {
                    return false;
                }
                res == &combined
                    || res == "*"
                    || (!r.subresource.is_empty()
                        && res.strip_prefix("*/") == Some(r.subresource.as_str()))
                    || res.strip_suffix("/*") == Some(r.resource.as_str())
            })
        })
    }
}

fn path_matches(path: &str, spec: &str) -> bool {
    spec == "*"
        || spec == path
        || spec
            .strip_suffix('*')
            .is_some_and(|prefix| path.starts_with(prefix.trim_end_matches('*')))
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Every event of `testdata/audit-samples` outside `raw/` folders, named `file#n`.
fn samples() -> Vec<(String, AuditEvent)> {
    let root = repo_root().join("testdata/audit-samples");
    let mut files = vec![];
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                // raw/ originals and the verbatim cloud export envelopes are not normalised.
                if p.file_name().is_some_and(|n| {
                    n != "raw"
                        && n != "khi-gke-cloud-logging"
                        && n != "otel-collector-contrib-cloud-exports"
                }) {
                    stack.push(p);
                }
            } else if p.extension().is_some_and(|e| e != "md" && e != "yaml") {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut out = vec![];
    for f in files {
        let rel = f
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        for (i, rec) in EventReader::open(f.to_str().unwrap()).unwrap().enumerate() {
            let event = rec
                .unwrap()
                .unwrap_or_else(|m| panic!("{rel}: malformed sample: {m:?}"));
            out.push((format!("{rel}#{}", i + 1), event));
        }
    }
    out
}

const MUTATING: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];
const READS: &[&str] = &["get", "list", "watch"];

/// What kubetrail turns into a span: a mutating request on a resource other than leases and
/// the virtual `*reviews`.
fn becomes_span(req: &Request) -> bool {
    MUTATING.contains(&req.verb.as_str())
        && req
            .resource
            .as_ref()
            .is_some_and(|r| r.resource != "leases" && !r.resource.ends_with("reviews"))
}

fn is_pod_or_deployment_write(req: &Request) -> bool {
    MUTATING.contains(&req.verb.as_str())
        && req.resource.as_ref().is_some_and(|r| {
            (r.group.is_empty()
                && r.resource == "pods"
                && ["", "status", "binding", "eviction", "ephemeralcontainers"]
                    .contains(&r.subresource.as_str()))
                || (r.group == "apps" && r.resource == "deployments")
        })
}

/// The properties both policies must have, for one request.
fn check(policy_name: &str, policy: &Policy, id: &str, req: &Request) {
    let d = policy.decide(req);
    let what = format!("{policy_name}: {id}: {} {} → {d:?}", req.verb, req.target());
    if let Some(r) = &req.resource {
        if r.group.is_empty() && r.resource == "secrets" {
            assert!(d.level <= Level::Metadata, "secrets above Metadata: {what}");
        }
        if r.group == "coordination.k8s.io" && r.resource == "leases" {
            assert_eq!(d.level, Level::None, "leases: {what}");
        }
    }
    if READS.contains(&req.verb.as_str()) {
        assert_eq!(d.level, Level::None, "reads: {what}");
    }
    if becomes_span(req) {
        assert_ne!(
            d.level,
            Level::None,
            "a request kubetrail traces is dropped: {what}"
        );
    }
    if policy_name == "policy.yaml" && is_pod_or_deployment_write(req) {
        assert_eq!(
            d.level,
            Level::RequestResponse,
            "pod/deployment write: {what}"
        );
    }
}

fn policies() -> [(&'static str, Policy); 2] {
    [
        ("policy.yaml", Policy::load("policy.yaml")),
        ("minimal.yaml", Policy::load("minimal.yaml")),
    ]
}

fn level_name(d: Decision) -> String {
    let rule = d.rule.map_or("-".to_owned(), |i| format!("#{}", i + 1));
    let omitted = if d.stage_omitted {
        " (stage omitted)"
    } else {
        ""
    };
    format!("{:?} {rule}{omitted}", d.level)
}

#[test]
fn evaluator_follows_the_api_server() {
    let p: Policy = serde_yaml::from_str(
        r#"
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: None
    users: ["system:kube-proxy"]
  - level: Metadata
    userGroups: ["system:nodes"]
    resources: [{group: "", resources: ["pods/status"]}]
  - level: Request
    resources: [{group: "apps", resources: ["*/scale"]}]
  - level: RequestResponse
    namespaces: ["shop"]
    resources: [{group: "", resources: ["configmaps"], resourceNames: ["cfg"]}]
  - level: Metadata
    resources: [{group: "batch", resources: ["jobs/*"]}]
  - level: Request
    nonResourceURLs: ["/healthz*", "/version"]
  - level: Metadata
    omitStages: [ResponseStarted]
    resources: [{group: "", resources: ["*"]}]
"#,
    )
    .unwrap();
    let res = |group: &str, resource: &str, sub: &str, ns: &str, name: &str| ResourceAttrs {
        group: group.into(),
        resource: resource.into(),
        subresource: sub.into(),
        namespace: ns.into(),
        name: name.into(),
    };
    let req =
        |user: &str, groups: &[&str], verb: &str, r: Option<ResourceAttrs>, path: &str| Request {
            user: user.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            verb: verb.into(),
            resource: r,
            path: path.into(),
            stage: Some(Stage::ResponseComplete),
        };
    let level = |r: &Request| p.decide(r).level;
    let pod_status = || Some(res("", "pods", "status", "shop", "web"));
    assert_eq!(
        level(&req("system:kube-proxy", &[], "patch", pod_status(), "")),
        Level::None
    );
    assert_eq!(
        level(&req(
            "kubelet",
            &["system:nodes"],
            "patch",
            pod_status(),
            ""
        )),
        Level::Metadata
    );
    // The group matters: the core group's `*` rule decides for other users.
    assert_eq!(
        level(&req("bob", &["dev"], "patch", pod_status(), "")),
        Level::Metadata
    );
    assert_eq!(
        p.decide(&req("bob", &[], "patch", pod_status(), "")).rule,
        Some(6)
    );
    let scale = Some(res("apps", "deployments", "scale", "shop", "web"));
    assert_eq!(level(&req("bob", &[], "update", scale, "")), Level::Request);
    // `*/scale` needs a subresource; other groups match nothing: None.
    let deploy = Some(res("apps", "deployments", "", "shop", "web"));
    assert_eq!(p.decide(&req("bob", &[], "update", deploy, "")).rule, None);
    let cfg = |ns: &str, name: &str| Some(res("", "configmaps", "", ns, name));
    assert_eq!(
        level(&req("bob", &[], "update", cfg("shop", "cfg"), "")),
        Level::RequestResponse
    );
    assert_eq!(
        level(&req("bob", &[], "update", cfg("shop", "other"), "")),
        Level::Metadata
    );
    assert_eq!(
        level(&req("bob", &[], "update", cfg("dev", "cfg"), "")),
        Level::Metadata
    );
    let job_status = Some(res("batch", "jobs", "status", "shop", "j"));
    assert_eq!(
        level(&req("bob", &[], "update", job_status, "")),
        Level::Metadata
    );
    // As in kube-apiserver, `resource/*` also matches the resource itself.
    let job = Some(res("batch", "jobs", "", "shop", "j"));
    assert_eq!(p.decide(&req("bob", &[], "update", job, "")).rule, Some(4));
    let cronjob = Some(res("batch", "cronjobs", "", "shop", "j"));
    assert_eq!(p.decide(&req("bob", &[], "update", cronjob, "")).rule, None);
    assert_eq!(
        level(&req("bob", &[], "get", None, "/healthz/etcd")),
        Level::Request
    );
    assert_eq!(
        level(&req("bob", &[], "get", None, "/version")),
        Level::Request
    );
    assert_eq!(
        p.decide(&req("bob", &[], "get", None, "/versions")).rule,
        None
    );
    // A resource rule never matches a non-resource request and vice versa.
    assert_eq!(
        p.decide(&req("bob", &[], "get", None, "/api/v1/pods")).rule,
        None
    );
    // omitStages: the policy's and the matching rule's.
    let mut r = req("bob", &[], "create", cfg("dev", "x"), "");
    r.stage = Some(Stage::RequestReceived);
    assert!(p.decide(&r).stage_omitted);
    r.stage = Some(Stage::ResponseStarted);
    assert!(p.decide(&r).stage_omitted);
    r.stage = Some(Stage::ResponseComplete);
    assert!(!p.decide(&r).stage_omitted);
    assert!(path_matches("/apis/apps", "/apis/*"));
    assert!(!path_matches("/apis", "/apis/*"));
}

#[test]
fn shipped_policies_over_the_real_samples() {
    let samples = samples();
    assert_eq!(
        samples.len(),
        266,
        "testdata/audit-samples/MANIFEST.md counts 266"
    );
    let policies = policies();
    let filter = EventFilter::default();

    // One line per sample: the level and the rule (#n, 1-based) each policy gives it.
    let mut table = format!(
        "{:<16} {:<56} {:<20} {:<20} sample\n",
        "verb", "target", "policy.yaml", "minimal.yaml"
    );
    let mut summary = String::new();
    // (verb, target) → per policy: level → count
    let mut by_target: BTreeMap<(String, String), [BTreeMap<String, usize>; 2]> = BTreeMap::new();
    let mut counts: [BTreeMap<String, usize>; 2] = Default::default();
    let mut traced = 0;
    for (id, event) in &samples {
        let req = Request::from_event(event);
        let mut cells = vec![];
        for (i, (name, policy)) in policies.iter().enumerate() {
            check(name, policy, id, &req);
            let d = policy.decide(&req);
            // The default filter of kubetrail keeps only what the policies keep.
            if filter.decide("c", event) == Verdict::Keep {
                assert_ne!(d.level, Level::None, "{name}: {id}: kubetrail keeps it");
            }
            let level = format!("{:?}", d.level);
            *counts[i].entry(level.clone()).or_default() += 1;
            if d.stage_omitted {
                *counts[i].entry("(stage omitted)".to_owned()).or_default() += 1;
            }
            *by_target
                .entry((req.verb.clone(), req.target()))
                .or_default()[i]
                .entry(level)
                .or_default() += 1;
            cells.push(level_name(d));
        }
        if becomes_span(&req) {
            traced += 1;
        }
        writeln!(
            table,
            "{:<16} {:<56} {:<20} {:<20} {id}",
            req.verb,
            req.target(),
            cells[0],
            cells[1]
        )
        .unwrap();
    }
    assert!(traced > 50, "the samples hold {traced} traced requests");

    writeln!(
        summary,
        "{} sample events; {traced} would become spans",
        samples.len()
    )
    .unwrap();
    for (i, (name, _)) in policies.iter().enumerate() {
        let line: Vec<String> = counts[i].iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(summary, "{name}: {}", line.join(" ")).unwrap();
    }
    writeln!(summary, "\nverb target: policy.yaml | minimal.yaml").unwrap();
    for ((verb, target), per) in &by_target {
        let cell = |m: &BTreeMap<String, usize>| {
            m.iter()
                .map(|(k, v)| format!("{k}×{v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        writeln!(
            summary,
            "{verb} {target}: {} | {}",
            cell(&per[0]),
            cell(&per[1])
        )
        .unwrap();
    }
    insta::assert_snapshot!("levels_summary", summary);
    insta::assert_snapshot!("levels_per_sample", table);
}

#[test]
fn shipped_policies_over_a_grid_of_requests() {
    let policies = policies();
    let resources: &[(&str, &str, &str)] = &[
        ("", "pods", ""),
        ("", "pods", "status"),
        ("", "pods", "binding"),
        ("", "pods", "eviction"),
        ("", "pods", "exec"),
        ("", "secrets", ""),
        ("", "serviceaccounts", "token"),
        ("", "configmaps", ""),
        ("", "events", ""),
        ("", "nodes", "status"),
        ("", "namespaces", ""),
        ("events.k8s.io", "events", ""),
        ("apps", "deployments", ""),
        ("apps", "deployments", "scale"),
        ("apps", "deployments", "status"),
        ("apps", "replicasets", ""),
        ("apps", "statefulsets", ""),
        ("apps", "daemonsets", ""),
        ("batch", "jobs", ""),
        ("batch", "cronjobs", ""),
        ("coordination.k8s.io", "leases", ""),
        ("authentication.k8s.io", "tokenreviews", ""),
        ("authorization.k8s.io", "subjectaccessreviews", ""),
        ("authorization.k8s.io", "selfsubjectaccessreviews", ""),
        ("rbac.authorization.k8s.io", "clusterroles", ""),
        ("certificates.k8s.io", "certificatesigningrequests", ""),
        ("example.com", "widgets", ""),
        ("example.com", "widgets", "status"),
    ];
    let users: &[(&str, &[&str])] = &[
        (
            "kubernetes-admin",
            &["system:masters", "system:authenticated"],
        ),
        ("system:node:n1", &["system:nodes", "system:authenticated"]),
        (
            "system:serviceaccount:kube-system:replicaset-controller",
            &["system:serviceaccounts", "system:authenticated"],
        ),
    ];
    let mut n = 0;
    for verb in READS.iter().chain(MUTATING) {
        for (group, resource, sub) in resources {
            for ns in ["shop", ""] {
                for (user, groups) in users {
                    let req = Request {
                        user: (*user).into(),
                        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
                        verb: (*verb).into(),
                        resource: Some(ResourceAttrs {
                            group: (*group).into(),
                            resource: (*resource).into(),
                            subresource: (*sub).into(),
                            namespace: ns.into(),
                            name: "x".into(),
                        }),
                        path: String::new(),
                        stage: Some(Stage::ResponseComplete),
                    };
                    for (name, policy) in &policies {
                        check(name, policy, "grid", &req);
                        n += 1;
                    }
                }
            }
        }
        for path in [
            "/healthz",
            "/readyz",
            "/livez",
            "/version",
            "/metrics",
            "/apis/apps",
        ] {
            let req = Request {
                verb: (*verb).into(),
                path: path.into(),
                stage: Some(Stage::ResponseComplete),
                ..Request::default()
            };
            for (name, policy) in &policies {
                assert_eq!(
                    policy.decide(&req).level,
                    Level::None,
                    "{name}: {verb} {path}"
                );
            }
        }
    }
    assert!(n > 1000);
    // Both policies drop the RequestReceived copy of every request.
    for (name, policy) in &policies {
        assert!(
            policy.omit_stages.contains(&Stage::RequestReceived),
            "{name}"
        );
    }
}
