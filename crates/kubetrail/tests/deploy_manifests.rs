//! The deployment files (`deploy/`), the Dockerfile and the Grafana dashboard.
//!
//! `scripts/validate-manifests.sh` renders every kustomize overlay and validates each object
//! against the Kubernetes API schemas (it installs its tools under `.tools/` on first use);
//! these tests run it once, check what it reports, and then check in Rust what a schema
//! cannot: hardened containers, probes, the `serve` flags, selectors that select something,
//! files that the mounted volumes provide, the config file that kubetrail accepts, the Kafka
//! topic against the consumers' lookback, and a dashboard that queries metrics the code has.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

mod common;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde::Deserialize;
use serde_yaml::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// The overlays: every directory of `deploy/overlays` with a kustomization.
fn overlay_names() -> Vec<String> {
    let dir = repo_root().join("deploy/overlays");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.join("kustomization.yaml").is_file())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// One run of the validation script, shared by every test of this file.
struct Validation {
    success: bool,
    stdout: String,
    stderr: String,
    out_dir: PathBuf,
}

impl Validation {
    fn report(&self) -> String {
        format!(
            "--- stdout\n{}\n--- stderr\n{}",
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

fn validation() -> &'static Validation {
    static RUN: OnceLock<Validation> = OnceLock::new();
    RUN.get_or_init(|| {
        let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deploy-manifests");
        let _ = std::fs::remove_dir_all(&out_dir);
        let output = Command::new("bash")
            .arg(repo_root().join("scripts/validate-manifests.sh"))
            .arg("--out")
            .arg(&out_dir)
            // The checks below expect the default versions (1.30.0 and 1.37.0).
            .env_remove("KUBE_VERSIONS")
            .current_dir(repo_root())
            .output()
            .expect("cannot run scripts/validate-manifests.sh");
        Validation {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            out_dir,
        }
    })
}

/// The objects of an overlay as the script rendered them.
fn rendered(overlay: &str) -> Vec<Value> {
    let v = validation();
    assert!(v.success, "validate-manifests.sh failed:\n{}", v.report());
    let path = v.out_dir.join(format!("{overlay}.yaml"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", path.display(), v.report()));
    parse_documents(&text)
}

fn parse_documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("a YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

/// `v.a.b.c` for a path of mapping keys; `None` when any is missing.
fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(v, path).and_then(Value::as_str)
}

fn seq_at<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    at(v, path)
        .and_then(Value::as_sequence)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn kind(v: &Value) -> &str {
    str_at(v, &["kind"]).unwrap_or("")
}

fn name(v: &Value) -> &str {
    str_at(v, &["metadata", "name"]).unwrap_or("")
}

fn namespace(v: &Value) -> &str {
    str_at(v, &["metadata", "namespace"]).unwrap_or("")
}

/// `Kind namespace/name` (`-` for no namespace), as the script prints objects.
fn ident(v: &Value) -> String {
    let ns = match namespace(v) {
        "" => "-",
        ns => ns,
    };
    format!("{} {ns}/{}", kind(v), name(v))
}

fn find<'a>(objects: &'a [Value], k: &str, n: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| kind(o) == k && name(o) == n)
        .unwrap_or_else(|| panic!("no {k} {n}"))
}

const WORKLOAD_KINDS: &[&str] = &["Deployment", "StatefulSet", "DaemonSet", "Job"];

/// Every workload of an overlay.
fn workloads(objects: &[Value]) -> Vec<&Value> {
    objects
        .iter()
        .filter(|o| WORKLOAD_KINDS.contains(&kind(o)))
        .collect()
}

fn pod_spec(workload: &Value) -> &Value {
    at(workload, &["spec", "template", "spec"])
        .unwrap_or_else(|| panic!("{}: no pod template", ident(workload)))
}

fn containers(workload: &Value) -> Vec<&Value> {
    let spec = pod_spec(workload);
    seq_at(spec, &["initContainers"])
        .iter()
        .chain(seq_at(spec, &["containers"]))
        .collect()
}

fn args(container: &Value) -> Vec<&str> {
    seq_at(container, &["args"])
        .iter()
        .map(|a| a.as_str().expect("string args"))
        .collect()
}

/// The value after `flag` in `args` (`--flag value`), or of `--flag=value`.
fn flag<'a>(args: &[&'a str], flag: &str) -> Option<&'a str> {
    let prefix = format!("{flag}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if *a == flag {
            args.get(i + 1).copied()
        } else {
            a.strip_prefix(prefix.as_str())
        }
    })
}

fn labels_match(selector: &Value, labels: Option<&Value>) -> bool {
    let Some(selector) = selector.as_mapping() else {
        return false;
    };
    !selector.is_empty()
        && selector
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

fn parse_duration(s: &str) -> Duration {
    humantime::parse_duration(s).unwrap_or_else(|e| panic!("duration {s:?}: {e}"))
}

/// The kubetrail config file held by the rendered ConfigMap `kubetrail-config-<hash>`.
fn kubetrail_config(objects: &[Value]) -> (String, Value) {
    let cm = objects
        .iter()
        .find(|o| kind(o) == "ConfigMap" && name(o).starts_with("kubetrail-config"))
        .expect("a kubetrail-config ConfigMap");
    let text = str_at(cm, &["data", "kubetrail.yaml"])
        .expect("kubetrail-config holds kubetrail.yaml")
        .to_owned();
    let value = serde_yaml::from_str(&text).expect("kubetrail.yaml is YAML");
    (text, value)
}

/// Parses the script's `summary <name>: objects=N validated=N skipped=N errors=N` lines.
fn summaries(stdout: &str) -> BTreeMap<String, BTreeMap<String, usize>> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("summary "))
        .map(|rest| {
            let (name, counts) = rest.split_once(": ").expect("summary <name>: counts");
            let counts = counts
                .split_whitespace()
                .map(|kv| {
                    let (k, v) = kv.split_once('=').expect("key=value");
                    (k.to_owned(), v.parse().expect("a count"))
                })
                .collect();
            (name.to_owned(), counts)
        })
        .collect()
}

#[test]
fn the_script_renders_and_validates_every_overlay() {
    let v = validation();
    assert!(v.success, "validate-manifests.sh failed:\n{}", v.report());
    let overlays = overlay_names();
    assert!(
        overlays.contains(&"all-in-one".to_owned()) && overlays.contains(&"scale-out".to_owned()),
        "overlays: {overlays:?}"
    );
    let summaries = summaries(&v.stdout);
    for overlay in &overlays {
        let rendered_line = format!("render {overlay}: ");
        let line = v
            .stdout
            .lines()
            .find(|l| l.starts_with(&rendered_line))
            .unwrap_or_else(|| panic!("{overlay} was not rendered:\n{}", v.report()));
        let n: usize = line[rendered_line.len()..]
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .expect("render <overlay>: <n> objects");
        let objects = rendered(overlay);
        assert_eq!(objects.len(), n, "{overlay}: objects in the rendered file");
        let s = summaries
            .get(overlay)
            .unwrap_or_else(|| panic!("no summary for {overlay}:\n{}", v.report()));
        assert_eq!(s["objects"], n, "{overlay}: {s:?}");
        assert_eq!(s["errors"], 0, "{overlay}: {s:?}");
        assert_eq!(s["validated"] + s["skipped"], n, "{overlay}: {s:?}");
        assert!(s["validated"] > s["skipped"], "{overlay}: {s:?}");
        // Each object validated against every version, or skipped as a known custom resource.
        for o in &objects {
            let id = ident(o);
            let validated = v
                .stdout
                .lines()
                .filter(|l| l.starts_with(&format!("ok {overlay} v")) && l.ends_with(&id))
                .count();
            if ["ServiceMonitor", "KafkaTopic"].contains(&kind(o)) {
                assert!(
                    v.stdout
                        .lines()
                        .any(|l| l.starts_with(&format!("skip {overlay} {id} ("))),
                    "{overlay}: {id} should be listed as skipped"
                );
            } else {
                assert_eq!(validated, 2, "{overlay}: {id} validated against 2 versions");
            }
        }
    }
    // Nothing but the two known custom resources is skipped.
    for l in v.stdout.lines().filter(|l| l.starts_with("skip ")) {
        assert!(
            l.contains(" ServiceMonitor ") || l.contains(" KafkaTopic "),
            "unexpected skip: {l}"
        );
    }
    let s = &summaries["secrets.example"];
    assert_eq!((s["validated"], s["errors"]), (3, 0), "{s:?}");
    assert!(v.stdout.lines().any(|l| l == "dockerfile: ok"));
    assert_eq!(v.stdout.lines().last(), Some("result: ok"));
}

#[test]
fn every_container_is_hardened_and_limited() {
    for overlay in overlay_names() {
        let objects = rendered(&overlay);
        let workloads = workloads(&objects);
        assert!(!workloads.is_empty(), "{overlay}: no workload");
        for w in workloads {
            let pod = pod_spec(w);
            let id = format!("{overlay}: {}", ident(w));
            assert_eq!(
                at(pod, &["automountServiceAccountToken"]).and_then(Value::as_bool),
                Some(false),
                "{id}: automountServiceAccountToken"
            );
            let pod_sc = at(pod, &["securityContext"]);
            for c in containers(w) {
                let cid = format!("{id} container {}", str_at(c, &["name"]).unwrap_or("?"));
                let image = str_at(c, &["image"]).unwrap_or("");
                let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
                assert!(
                    !tag.is_empty() && !tag.contains('/') && tag != "latest",
                    "{cid}: image {image:?} needs a pinned tag"
                );
                for r in ["cpu", "memory"] {
                    assert!(
                        at(c, &["resources", "limits", r]).is_some(),
                        "{cid}: resources.limits.{r}"
                    );
                    assert!(
                        at(c, &["resources", "requests", r]).is_some(),
                        "{cid}: resources.requests.{r}"
                    );
                }
                let sc = at(c, &["securityContext"]);
                // A container's setting, or else its Pod's.
                let setting = |key: &str| {
                    sc.and_then(|s| s.get(key))
                        .or_else(|| pod_sc.and_then(|s| s.get(key)))
                };
                assert_eq!(
                    setting("runAsNonRoot").and_then(Value::as_bool),
                    Some(true),
                    "{cid}: runAsNonRoot"
                );
                assert!(
                    setting("runAsUser")
                        .and_then(Value::as_u64)
                        .is_some_and(|u| u > 0),
                    "{cid}: a non-zero runAsUser"
                );
                assert_eq!(
                    sc.and_then(|s| s.get("readOnlyRootFilesystem"))
                        .and_then(Value::as_bool),
                    Some(true),
                    "{cid}: readOnlyRootFilesystem"
                );
                assert_eq!(
                    sc.and_then(|s| s.get("allowPrivilegeEscalation"))
                        .and_then(Value::as_bool),
                    Some(false),
                    "{cid}: allowPrivilegeEscalation"
                );
                let drops: Vec<&str> = sc
                    .map(|s| seq_at(s, &["capabilities", "drop"]))
                    .unwrap_or(&[])
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                assert_eq!(drops, ["ALL"], "{cid}: capabilities.drop");
                assert!(
                    sc.and_then(|s| s.get("capabilities"))
                        .and_then(|c| c.get("add"))
                        .is_none(),
                    "{cid}: adds capabilities"
                );
                assert_eq!(
                    setting("seccompProfile").and_then(|p| str_at(p, &["type"])),
                    Some("RuntimeDefault"),
                    "{cid}: seccompProfile"
                );
                if !seq_at(c, &["ports"]).is_empty() {
                    for probe in ["livenessProbe", "readinessProbe"] {
                        assert!(
                            at(c, &[probe]).is_some(),
                            "{cid}: exposes a port, no {probe}"
                        );
                    }
                }
                for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                    if let Some(port) = at(c, &[probe, "httpGet", "port"]).and_then(Value::as_str) {
                        assert!(
                            seq_at(c, &["ports"])
                                .iter()
                                .any(|p| str_at(p, &["name"]) == Some(port)),
                            "{cid}: {probe} names port {port:?}, which the container does not have"
                        );
                    }
                }
            }
        }
    }
}

/// The file arguments of a container, and whether the mounted volumes provide them.
fn assert_files_mounted(
    objects: &[Value],
    workload: &Value,
    container: &Value,
    files: &[&str],
    secrets_example: &[Value],
) {
    let pod = pod_spec(workload);
    for file in files {
        let mount = seq_at(container, &["volumeMounts"])
            .iter()
            .filter_map(|m| {
                let path = str_at(m, &["mountPath"])?;
                let rest = file.strip_prefix(path)?.strip_prefix('/')?;
                Some((str_at(m, &["name"])?, rest))
            })
            .max_by_key(|(_, rest)| std::cmp::Reverse(rest.len()));
        let (volume_name, rel) =
            mount.unwrap_or_else(|| panic!("{}: {file} is on no volume mount", ident(workload)));
        let volume = seq_at(pod, &["volumes"])
            .iter()
            .find(|v| str_at(v, &["name"]) == Some(volume_name))
            .unwrap_or_else(|| panic!("{}: no volume {volume_name}", ident(workload)));
        let sources: Vec<&Value> = match at(volume, &["projected", "sources"]) {
            Some(s) => s.as_sequence().unwrap().iter().collect(),
            None => vec![volume],
        };
        // (kind, object name, key) of the source that provides `rel`.
        let provided = sources.iter().find_map(|s| {
            let (k, src) = if let Some(cm) = s.get("configMap") {
                ("ConfigMap", cm)
            } else {
                ("Secret", s.get("secret")?)
            };
            let obj = str_at(src, &["name"]).or_else(|| str_at(src, &["secretName"]))?;
            let items = seq_at(src, &["items"]);
            if items.is_empty() {
                Some((k, obj, rel.to_owned()))
            } else {
                items.iter().find_map(|i| {
                    (str_at(i, &["path"]) == Some(rel))
                        .then(|| (k, obj, str_at(i, &["key"]).unwrap_or("").to_owned()))
                })
            }
        });
        let (k, obj, key) = provided.unwrap_or_else(|| {
            panic!(
                "{}: volume {volume_name} does not provide {file}",
                ident(workload)
            )
        });
        // ConfigMaps are rendered; Secrets are created by hand in the shape of the example.
        let holder = if k == "ConfigMap" {
            find(objects, k, obj)
        } else {
            find(secrets_example, k, obj)
        };
        let has_key = ["data", "stringData"]
            .iter()
            .any(|d| at(holder, &[d, key.as_str()]).is_some());
        assert!(has_key, "{}: {k} {obj} has no key {key}", ident(workload));
    }
}

fn secrets_example() -> Vec<Value> {
    let path = repo_root().join("deploy/base/secrets.example.yaml");
    let secrets = parse_documents(&std::fs::read_to_string(path).expect("secrets.example.yaml"));
    for s in &secrets {
        assert_eq!(kind(s), "Secret");
        for d in ["data", "stringData"] {
            if let Some(m) = at(s, &[d]).and_then(Value::as_mapping) {
                for (k, v) in m {
                    assert_eq!(
                        v.as_str(),
                        Some(""),
                        "secrets.example.yaml: {} {k:?} must stay an empty placeholder",
                        name(s)
                    );
                }
            }
        }
    }
    secrets
}

/// The webhook container of an overlay (its args start with `subcommand`).
fn webhook<'a>(objects: &'a [Value], subcommand: &str) -> (&'a Value, &'a Value) {
    let found: Vec<(&Value, &Value)> = workloads(objects)
        .into_iter()
        .flat_map(|w| containers(w).into_iter().map(move |c| (w, c)))
        .filter(|(_, c)| args(c).first() == Some(&subcommand))
        .collect();
    assert_eq!(found.len(), 1, "one `kubetrail {subcommand}` container");
    found[0]
}

/// What the webhook Deployments of both overlays must agree on.
fn check_webhook(objects: &[Value], subcommand: &str) {
    let (w, c) = webhook(objects, subcommand);
    let a = args(c);
    let id = ident(w);
    assert!(
        str_at(c, &["image"]).is_some_and(|i| i.starts_with("ghcr.io/kubetrail/kubetrail:")),
        "{id}: image"
    );
    assert_eq!(flag(&a, "--listen"), Some("0.0.0.0:8443"), "{id}: {a:?}");
    assert!(
        !a.iter().any(|x| x.starts_with("--insecure")),
        "{id}: --insecure must never be deployed: {a:?}"
    );
    assert!(
        flag(&a, "--token-file").is_some() || flag(&a, "--client-ca").is_some(),
        "{id}: needs --token-file or --client-ca: {a:?}"
    );
    let files: Vec<&str> = [
        "--config",
        "--tls-cert",
        "--tls-key",
        "--token-file",
        "--client-ca",
    ]
    .iter()
    .filter_map(|f| flag(&a, f))
    .collect();
    for f in ["--config", "--tls-cert", "--tls-key"] {
        assert!(flag(&a, f).is_some(), "{id}: {f} missing: {a:?}");
    }
    assert_eq!(flag(&a, "--config"), Some("/etc/kubetrail/kubetrail.yaml"));
    assert_files_mounted(objects, w, c, &files, &secrets_example());

    let port = seq_at(c, &["ports"])
        .iter()
        .find(|p| str_at(p, &["name"]) == Some("https"))
        .expect("a port named https");
    assert_eq!(
        at(port, &["containerPort"]).and_then(Value::as_u64),
        Some(8443)
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(str_at(c, &[probe, "httpGet", "path"]), Some(path), "{id}");
        assert_eq!(
            str_at(c, &[probe, "httpGet", "scheme"]),
            Some("HTTPS"),
            "{id}"
        );
    }

    // Shutdown: the preStop sleep lets the Service stop routing first, then kubetrail has
    // shutdown_timeout to drain; the grace period must cover both.
    let (_, config) = kubetrail_config(objects);
    let shutdown = parse_duration(
        str_at(&config, &["shutdown_timeout"]).expect("shutdown_timeout in kubetrail.yaml"),
    );
    assert_eq!(
        shutdown,
        Duration::from_secs(30),
        "kubetrail's default, stated"
    );
    let sleep = at(c, &["lifecycle", "preStop", "sleep", "seconds"])
        .and_then(Value::as_u64)
        .expect("a preStop sleep");
    assert!(sleep > 0);
    let grace = at(pod_spec(w), &["terminationGracePeriodSeconds"])
        .and_then(Value::as_u64)
        .expect("terminationGracePeriodSeconds");
    assert!(
        grace > sleep + shutdown.as_secs(),
        "{id}: grace period {grace}s <= preStop {sleep}s + shutdown_timeout {}s",
        shutdown.as_secs()
    );
    assert_eq!(
        str_at(pod_spec(w), &["serviceAccountName"]),
        Some("kubetrail")
    );
}

#[test]
fn all_in_one_runs_one_authenticated_serve() {
    let objects = rendered("all-in-one");
    check_webhook(&objects, "serve");
    let (w, _) = webhook(&objects, "serve");
    assert_eq!(name(w), "kubetrail");
    assert_eq!(
        at(w, &["spec", "replicas"]).and_then(Value::as_u64),
        Some(1)
    );
    assert_eq!(str_at(w, &["spec", "strategy", "type"]), Some("Recreate"));
    assert!(
        !objects.iter().any(|o| kind(o) == "HorizontalPodAutoscaler"),
        "the embedded queue is per process: no autoscaling"
    );
    // Jaeger v2, OTLP gRPC/HTTP and UI Services.
    let jaeger = find(&objects, "Deployment", "jaeger");
    let image = str_at(containers(jaeger)[0], &["image"]).unwrap();
    assert!(image.starts_with("jaegertracing/jaeger:2."), "{image}");
    let ports = |svc: &str| -> BTreeSet<u64> {
        seq_at(find(&objects, "Service", svc), &["spec", "ports"])
            .iter()
            .filter_map(|p| at(p, &["port"]).and_then(Value::as_u64))
            .collect()
    };
    assert_eq!(ports("jaeger-collector"), BTreeSet::from([4317, 4318]));
    assert_eq!(ports("jaeger-query"), BTreeSet::from([16686]));
}

#[test]
fn scale_out_receives_into_kafka_and_consumes_from_it() {
    let objects = rendered("scale-out");
    check_webhook(&objects, "receive");
    let (rw, rc) = webhook(&objects, "receive");
    assert!(at(rw, &["spec", "replicas"]).and_then(Value::as_u64) >= Some(2));
    let (cw, cc) = workloads(&objects)
        .into_iter()
        .flat_map(|w| containers(w).into_iter().map(move |c| (w, c)))
        .find(|(_, c)| args(c).first() == Some(&"consume"))
        .expect("a `kubetrail consume` container");
    let (ra, ca) = (args(rc), args(cc));
    for f in ["--kafka-brokers", "--kafka-topic"] {
        assert!(flag(&ra, f).is_some(), "receive {f}: {ra:?}");
        assert_eq!(
            flag(&ra, f),
            flag(&ca, f),
            "receive and consume agree on {f}"
        );
    }
    for f in ["--kafka-group", "--otlp-endpoint"] {
        assert!(flag(&ca, f).is_some(), "consume {f}: {ca:?}");
    }
    assert!(
        !ca.iter()
            .any(|a| a.starts_with("--listen") || a.starts_with("--insecure"))
    );
    assert_files_mounted(&objects, cw, cc, &["/etc/kubetrail/kubetrail.yaml"], &[]);

    // One redaction salt for both halves: every process gives a value the same marker, so
    // two receive replicas never make a diff show a false change.
    let salt_file = |c: &Value| -> String {
        seq_at(c, &["env"])
            .iter()
            .find(|e| str_at(e, &["name"]) == Some("KUBETRAIL_REDACT_SALT_FILE"))
            .and_then(|e| str_at(e, &["value"]))
            .expect("KUBETRAIL_REDACT_SALT_FILE")
            .to_owned()
    };
    let (rs, cs) = (salt_file(rc), salt_file(cc));
    let secrets = secrets_example();
    assert_files_mounted(&objects, rw, rc, &[rs.as_str()], &secrets);
    assert_files_mounted(&objects, cw, cc, &[cs.as_str()], &secrets);
    let salt_secret = |w: &Value| -> Vec<String> {
        seq_at(pod_spec(w), &["volumes"])
            .iter()
            .flat_map(|v| seq_at(v, &["projected", "sources"]).iter())
            .filter_map(|s| str_at(s, &["secret", "name"]))
            .filter(|n| n.contains("salt"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(salt_secret(rw), vec!["kubetrail-redact-salt".to_owned()]);
    assert_eq!(
        salt_secret(rw),
        salt_secret(cw),
        "receive and consume share one salt Secret"
    );

    // The topic: the name both use, partitions for the consumers, durability, retention.
    let topic = find(&objects, "KafkaTopic", "kubetrail-audit");
    assert_eq!(
        str_at(topic, &["apiVersion"]),
        Some("kafka.strimzi.io/v1beta2")
    );
    assert_eq!(flag(&ra, "--kafka-topic"), Some(name(topic)));
    assert!(
        str_at(topic, &["metadata", "labels", "strimzi.io/cluster"]).is_some(),
        "the Topic Operator needs the cluster label"
    );
    let cluster = str_at(topic, &["metadata", "labels", "strimzi.io/cluster"]).unwrap();
    assert!(
        flag(&ra, "--kafka-brokers")
            .unwrap()
            .starts_with(&format!("{cluster}-kafka-bootstrap.{}.", namespace(topic))),
        "brokers are the bootstrap Service of the topic's cluster"
    );
    let partitions = at(topic, &["spec", "partitions"])
        .and_then(Value::as_u64)
        .unwrap();
    assert_eq!(partitions, 12);
    let consumers = at(cw, &["spec", "replicas"])
        .and_then(Value::as_u64)
        .unwrap();
    assert!(
        (2..=partitions).contains(&consumers),
        "{consumers} consumers"
    );
    let replicas = at(topic, &["spec", "replicas"])
        .and_then(Value::as_u64)
        .unwrap();
    let min_isr = at(topic, &["spec", "config", "min.insync.replicas"])
        .and_then(Value::as_u64)
        .unwrap();
    assert_eq!(min_isr, 2);
    assert!(min_isr < replicas, "acks=all must survive a broker loss");
    let retention = Duration::from_millis(
        at(topic, &["spec", "config", "retention.ms"])
            .and_then(Value::as_u64)
            .unwrap(),
    );
    let (_, config) = kubetrail_config(&objects);
    let window = parse_duration(str_at(&config, &["aggregate", "window"]).unwrap_or("30m"));
    let linger = parse_duration(str_at(&config, &["aggregate", "linger"]).unwrap_or("30s"));
    assert!(
        retention >= Duration::from_secs(24 * 3600) && retention > window + linger,
        "retention {retention:?} must cover the lookback ({window:?} + {linger:?}) and a margin"
    );
    if let Some(hpa) = objects
        .iter()
        .find(|o| kind(o) == "HorizontalPodAutoscaler")
    {
        assert_eq!(
            str_at(hpa, &["spec", "scaleTargetRef", "name"]),
            Some(name(rw))
        );
        assert!(at(hpa, &["spec", "minReplicas"]).and_then(Value::as_u64) >= Some(2));
    }
}

#[test]
fn selectors_select_and_ports_exist() {
    for overlay in overlay_names() {
        let objects = rendered(&overlay);
        let pods: Vec<(&Value, &Value)> = workloads(&objects)
            .into_iter()
            .map(|w| {
                (
                    w,
                    at(w, &["spec", "template", "metadata", "labels"]).unwrap(),
                )
            })
            .collect();
        let selected = |ns: &str, sel: &Value| -> Vec<&Value> {
            pods.iter()
                .filter(|(w, l)| namespace(w) == ns && labels_match(sel, Some(l)))
                .map(|(w, _)| *w)
                .collect()
        };
        for o in &objects {
            let id = format!("{overlay}: {}", ident(o));
            match kind(o) {
                "Deployment" => {
                    let sel = at(o, &["spec", "selector", "matchLabels"]).unwrap();
                    let labels = at(o, &["spec", "template", "metadata", "labels"]);
                    assert!(labels_match(sel, labels), "{id}: selector vs template");
                }
                "Service" => {
                    let sel = at(o, &["spec", "selector"]).expect("a selector");
                    let targets = selected(namespace(o), sel);
                    assert!(!targets.is_empty(), "{id}: selects no Pod");
                    for p in seq_at(o, &["spec", "ports"]) {
                        let target = at(p, &["targetPort"]).unwrap();
                        for w in &targets {
                            let found = containers(w).iter().any(|c| {
                                seq_at(c, &["ports"]).iter().any(|cp| {
                                    at(cp, &["name"]) == Some(target)
                                        || at(cp, &["containerPort"]) == Some(target)
                                })
                            });
                            assert!(found, "{id}: target port {target:?} not in {}", ident(w));
                        }
                    }
                }
                "PodDisruptionBudget" | "NetworkPolicy" => {
                    let path: &[&str] = if kind(o) == "NetworkPolicy" {
                        &["spec", "podSelector", "matchLabels"]
                    } else {
                        &["spec", "selector", "matchLabels"]
                    };
                    let sel = at(o, path).expect("matchLabels");
                    assert!(
                        !selected(namespace(o), sel).is_empty(),
                        "{id}: selects no Pod"
                    );
                }
                "ServiceMonitor" => {
                    let sel = at(o, &["spec", "selector", "matchLabels"]).unwrap();
                    let services: Vec<&Value> = objects
                        .iter()
                        .filter(|s| kind(s) == "Service" && namespace(s) == namespace(o))
                        .filter(|s| labels_match(sel, at(s, &["metadata", "labels"])))
                        .collect();
                    assert_eq!(services.len(), 1, "{id}: selects the kubetrail Service");
                    for e in seq_at(o, &["spec", "endpoints"]) {
                        let port = str_at(e, &["port"]).unwrap();
                        assert!(
                            seq_at(services[0], &["spec", "ports"])
                                .iter()
                                .any(|p| str_at(p, &["name"]) == Some(port)),
                            "{id}: no Service port {port}"
                        );
                        assert_eq!(str_at(e, &["scheme"]), Some("https"));
                        assert_eq!(str_at(e, &["path"]), Some("/metrics"));
                    }
                }
                "HorizontalPodAutoscaler" => {
                    let target = str_at(o, &["spec", "scaleTargetRef", "name"]).unwrap();
                    find(&objects, "Deployment", target);
                }
                _ => {}
            }
            if kind(o) != "Namespace" && kind(o) != "KafkaTopic" {
                assert_eq!(namespace(o), "kubetrail", "{id}");
            }
        }
        // The webhook port admits only the API server's range and the monitoring namespace.
        let np = find(&objects, "NetworkPolicy", "kubetrail-webhook");
        let ingress = seq_at(np, &["spec", "ingress"]);
        assert_eq!(ingress.len(), 2, "{overlay}: {ingress:?}");
        for rule in ingress {
            let ports: Vec<u64> = seq_at(rule, &["ports"])
                .iter()
                .filter_map(|p| at(p, &["port"]).and_then(Value::as_u64))
                .collect();
            assert_eq!(ports, [8443], "{overlay}: ingress ports");
        }
        // First the API server's address range, then the monitoring namespace.
        assert!(at(&seq_at(&ingress[0], &["from"])[0], &["ipBlock", "cidr"]).is_some());
        assert_eq!(
            at(
                &seq_at(&ingress[1], &["from"])[0],
                &[
                    "namespaceSelector",
                    "matchLabels",
                    "kubernetes.io/metadata.name"
                ]
            )
            .and_then(Value::as_str),
            Some("monitoring")
        );
        let egress_ports: BTreeSet<u64> = seq_at(np, &["spec", "egress"])
            .iter()
            .flat_map(|r| seq_at(r, &["ports"]))
            .filter_map(|p| at(p, &["port"]).and_then(Value::as_u64))
            .collect();
        assert!(egress_ports.contains(&53), "{overlay}: DNS egress");
        let types: Vec<&str> = seq_at(np, &["spec", "policyTypes"])
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(types, ["Ingress", "Egress"]);
    }
}

#[test]
fn the_config_file_is_accepted_by_kubetrail_and_exports_to_the_collector() {
    for overlay in overlay_names() {
        let objects = rendered(&overlay);
        let (text, config) = kubetrail_config(&objects);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubetrail.yaml");
        std::fs::write(&path, &text).unwrap();
        // `url` loads the config file (unknown keys are errors) and needs no network.
        let out = Command::new(env!("CARGO_BIN_EXE_kubetrail"))
            .args(["url", "--config"])
            .arg(&path)
            .args([
                "--time",
                "2024-05-01T10:00:00Z",
                "deployments.apps/shop/web",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{overlay}: kubetrail rejects the ConfigMap's config: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // export.otlp.endpoint names a Service (and port) of the overlay.
        let endpoint = str_at(&config, &["export", "otlp", "endpoint"]).expect("an endpoint");
        let hostport = endpoint.strip_prefix("http://").expect("http:// endpoint");
        let (host, port) = hostport.rsplit_once(':').expect("host:port");
        let mut parts = host.split('.');
        let (svc, ns) = (parts.next().unwrap(), parts.next().unwrap());
        let service = find(&objects, "Service", svc);
        assert_eq!(namespace(service), ns);
        let port: u64 = port.parse().unwrap();
        assert!(
            seq_at(service, &["spec", "ports"])
                .iter()
                .any(|p| at(p, &["port"]).and_then(Value::as_u64) == Some(port)),
            "{overlay}: {endpoint} is not a port of Service {svc}"
        );
    }
}

#[test]
fn the_dockerfile_builds_kubetrail_for_a_non_root_distroless_runtime() {
    let text = std::fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "multi-stage: {froms:?}");
    assert!(froms[0].contains("rust:") && froms[0].contains("bookworm"));
    assert!(text.contains("cargo build --release --locked -p kubetrail"));
    assert!(froms[1].contains("gcr.io/distroless/cc-debian12:nonroot"));
    let runtime = &text[text.find(froms[1]).unwrap()..];
    assert!(runtime.contains("USER 65532:65532"));
    assert!(runtime.contains("EXPOSE 8443"));
    assert!(runtime.contains(r#"ENTRYPOINT ["/kubetrail"]"#));
    // The build context keeps what the workspace needs.
    let ignore = std::fs::read_to_string(repo_root().join(".dockerignore")).unwrap();
    for needed in ["Cargo.toml", "Cargo.lock", "crates", "benches"] {
        assert!(
            !ignore.lines().any(|l| l.trim() == needed),
            ".dockerignore excludes {needed}"
        );
    }
    assert!(ignore.lines().any(|l| l.trim() == "**/target"));
}

/// Every metric name the code records or describes: string literals `"kubetrail_…"`.
fn metric_names_in_code() -> BTreeSet<String> {
    let mut files = Vec::new();
    for krate in std::fs::read_dir(repo_root().join("crates")).unwrap() {
        let src = krate.unwrap().path().join("src");
        if src.is_dir() {
            files.extend(common::rust_files(&src));
        }
    }
    let mut names = BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, _) in text.match_indices("\"kubetrail_") {
            let rest = &text[i + 1..];
            let end = rest.find('"').unwrap_or(0);
            let lit = &rest[..end];
            if lit
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                names.insert(lit.to_owned());
            }
        }
    }
    names
}

/// The `kubetrail_…` identifiers of a PromQL expression.
fn metrics_in(expr: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("kubetrail_") {
        let preceded = rest[..i]
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'"');
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !preceded {
            out.push(&tail[..end]);
        }
        rest = &tail[end..];
    }
    out
}

fn balanced(expr: &str) -> bool {
    let mut stack = Vec::new();
    let mut in_string = false;
    for c in expr.chars() {
        match c {
            '"' => in_string = !in_string,
            _ if in_string => {}
            '(' | '{' | '[' => stack.push(c),
            ')' | '}' | ']' => {
                let open = stack.pop();
                let want = match c {
                    ')' => '(',
                    '}' => '{',
                    _ => '[',
                };
                if open != Some(want) {
                    return false;
                }
            }
            _ => {}
        }
    }
    stack.is_empty() && !in_string
}

#[test]
fn the_grafana_dashboard_queries_metrics_the_code_records() {
    let path = repo_root().join("examples/grafana-dashboard.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let code = metric_names_in_code();
    assert!(
        code.contains("kubetrail_events_accepted_total")
            && code.contains("kubetrail_http_request_duration_seconds"),
        "the metric scan finds the code's names: {code:?}"
    );

    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    // (where, expression, is a panel query)
    let mut exprs = Vec::new();
    for p in panels {
        let title = p["title"].as_str().unwrap_or("");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id: {title}"
        );
        for k in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][k].is_u64(), "{title}: gridPos.{k}");
        }
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            let expr = t["expr"].as_str().expect("expr").to_owned();
            exprs.push((title.to_owned(), expr, true));
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["definition"].as_str() {
            exprs.push((format!("variable {}", v["name"]), q.to_owned(), false));
        }
    }

    let mut queried = BTreeSet::new();
    for (title, expr, is_panel) in &exprs {
        assert!(balanced(expr), "{title}: unbalanced {expr}");
        for m in metrics_in(expr) {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| m.strip_suffix(s).filter(|b| code.contains(*b)));
            let known = if let Some(base) = base {
                // A histogram's series: the base must be a histogram (kubetrail's only one).
                assert_eq!(
                    base, "kubetrail_http_request_duration_seconds",
                    "{title}: {m}"
                );
                base
            } else {
                m
            };
            assert!(
                code.contains(known),
                "{title}: {m} is not a metric of the code (known: {code:?})"
            );
            assert!(!m.ends_with("_total_total"), "{title}: {m}");
            if *is_panel && m.ends_with("_total") {
                assert!(
                    expr.contains(&format!("rate({m}{{"))
                        || expr.contains(&format!("increase({m}{{")),
                    "{title}: counter {m} should be queried as a rate or an increase: {expr}"
                );
            }
            queried.insert(known.to_owned());
        }
    }
    for required in [
        "kubetrail_events_received_total",
        "kubetrail_events_accepted_total",
        "kubetrail_events_rejected_total",
        "kubetrail_http_requests_total",
        "kubetrail_http_request_duration_seconds",
        "kubetrail_queue_depth_events",
        "kubetrail_events_filtered_total",
        "kubetrail_spans_exported_total",
        "kubetrail_spans_dropped_total",
        "kubetrail_export_retries_total",
        "kubetrail_export_errors_total",
        "kubetrail_open_families",
        "kubetrail_open_objects",
        "kubetrail_linker_objects",
        "kubetrail_pending_requests",
        "kubetrail_kafka_consumer_lag",
    ] {
        assert!(
            queried.contains(required),
            "the dashboard does not show {required}"
        );
    }
    assert!(
        exprs
            .iter()
            .any(|(_, e, _)| e.contains("histogram_quantile(0.99")
                && e.contains("kubetrail_http_request_duration_seconds_bucket")),
        "a p99 latency panel"
    );
}

#[test]
fn metric_scan_and_promql_helpers() {
    assert_eq!(
        metrics_in(r#"sum(rate(kubetrail_a_total{x="kubetrail_not"}[5m])) / kubetrail_b"#),
        ["kubetrail_a_total", "kubetrail_b"]
    );
    assert!(balanced(r#"sum(rate(a{b=~"(x"}[5m]))"#));
    assert!(!balanced("sum(rate(a[5m])"));
    assert!(!balanced("sum(a})"));
    assert_eq!(flag(&["serve", "--listen", "x"], "--listen"), Some("x"));
    assert_eq!(flag(&["--listen=y"], "--listen"), Some("y"));
    assert_eq!(flag(&["--listen"], "--listen"), None);
}

#[test]
fn control_plane_follow_tails_the_audit_log_read_only_and_forwards_to_serve() {
    let objects = rendered("control-plane-follow");
    // The central serve of all-in-one is there, unchanged.
    check_webhook(&objects, "serve");
    let (w, c) = webhook(&objects, "follow");
    assert_eq!(kind(w), "DaemonSet");
    let pod = pod_spec(w);
    assert_eq!(
        str_at(
            pod,
            &["nodeSelector", "node-role.kubernetes.io/control-plane"]
        ),
        Some(""),
        "runs on control-plane nodes"
    );
    for key in [
        "node-role.kubernetes.io/control-plane",
        "node-role.kubernetes.io/master",
    ] {
        assert!(
            seq_at(pod, &["tolerations"]).iter().any(|t| {
                str_at(t, &["key"]) == Some(key)
                    && str_at(t, &["operator"]) == Some("Exists")
                    && str_at(t, &["effect"]) == Some("NoSchedule")
            }),
            "tolerates {key}:NoSchedule"
        );
    }
    // Not behind the webhook Service: its Pods do not carry the webhook labels.
    let labels = at(w, &["spec", "template", "metadata", "labels"]).unwrap();
    assert_eq!(
        str_at(labels, &["app.kubernetes.io/component"]),
        Some("follow")
    );
    let a = args(c);
    // The log (last argument) is on a read-only hostPath mount.
    let log = *a.last().unwrap();
    let mount_of = |file: &str| -> (&Value, &Value) {
        let m = seq_at(c, &["volumeMounts"])
            .iter()
            .filter(|m| {
                str_at(m, &["mountPath"])
                    .is_some_and(|p| file.starts_with(&format!("{}/", p.trim_end_matches('/'))))
            })
            .max_by_key(|m| str_at(m, &["mountPath"]).map_or(0, str::len))
            .unwrap_or_else(|| panic!("{file} is on no volume mount"));
        let vname = str_at(m, &["name"]).unwrap();
        let v = seq_at(pod, &["volumes"])
            .iter()
            .find(|v| str_at(v, &["name"]) == Some(vname))
            .unwrap_or_else(|| panic!("no volume {vname}"));
        (m, v)
    };
    let (m, v) = mount_of(log);
    assert_eq!(at(m, &["readOnly"]).and_then(Value::as_bool), Some(true));
    assert_eq!(
        str_at(v, &["hostPath", "path"]),
        str_at(m, &["mountPath"]),
        "the node's directory at the same path"
    );
    // The state file is on a writable hostPath (it must survive Pod replacement).
    let state = flag(&a, "--state-file").expect("--state-file");
    let (m, v) = mount_of(state);
    assert_ne!(at(m, &["readOnly"]).and_then(Value::as_bool), Some(true));
    assert!(str_at(v, &["hostPath", "path"]).is_some(), "{v:?}");
    // Forwarding to the serve Service's webhook port, authenticated, over TLS.
    let url = flag(&a, "--forward-url").expect("--forward-url");
    let rest = url.strip_prefix("https://").expect("https");
    let (hostport, path) = rest.split_once('/').unwrap();
    assert!(path.starts_with("audit"), "{url}");
    let (host, port) = hostport.rsplit_once(':').unwrap();
    let svc = host.split('.').next().unwrap();
    let service = find(&objects, "Service", svc);
    assert!(
        seq_at(service, &["spec", "ports"])
            .iter()
            .any(|p| at(p, &["port"]).and_then(Value::as_u64) == port.parse().ok()),
        "{url}: no such port on Service {svc}"
    );
    let token = flag(&a, "--forward-token-file").expect("--forward-token-file");
    let ca = flag(&a, "--forward-ca").expect("--forward-ca");
    assert_files_mounted(&objects, w, c, &[token, ca], &secrets_example());
    // The source is the node's name, from the downward API.
    assert_eq!(flag(&a, "--forward-source"), Some("$(NODE_NAME)"));
    assert!(
        seq_at(c, &["env"]).iter().any(|e| {
            str_at(e, &["name"]) == Some("NODE_NAME")
                && str_at(e, &["valueFrom", "fieldRef", "fieldPath"]) == Some("spec.nodeName")
        }),
        "NODE_NAME from spec.nodeName"
    );
    // The follow command has every flag the manifest gives.
    let help = Command::new(env!("CARGO_BIN_EXE_kubetrail"))
        .args(["follow", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for f in a.iter().filter(|x| x.starts_with("--")) {
        if !["--log-format", "--log-level"].contains(f) {
            assert!(help.contains(f), "kubetrail follow has no {f}");
        }
    }
    // The webhook admits the followers (an extra, additive policy).
    let np = find(
        &objects,
        "NetworkPolicy",
        "kubetrail-webhook-from-followers",
    );
    let from = &seq_at(&seq_at(np, &["spec", "ingress"])[0], &["from"])[0];
    assert!(labels_match(
        at(from, &["podSelector", "matchLabels"]).unwrap(),
        Some(labels)
    ));
}
