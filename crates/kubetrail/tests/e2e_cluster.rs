//! kubetrail on a real Kubernetes control plane: two kube-apiservers on one etcd,
//! kube-controller-manager, kube-scheduler and a node agent (scripts/local-cluster.sh, built from
//! k8s.io/kubernetes by scripts/install-k8s.sh), driven by the kubectl of the same release.
//! Every API server sends its audit events to `kubetrail serve` (webhook, batch mode, README's
//! flags) and writes them to its log backend; the tests run the workloads an operator runs and
//! check the traces, the actors, the diffs, the redaction, and that the webhook and the log
//! backend give the same trace and span ids.
//!
//! Needs the binaries of scripts/install-k8s.sh (local-cluster.sh builds them when missing).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use kubetrail_testkit::{Jaeger, JaegerQuery, OtlpReceiver, Pki, ReceivedSpan};
use tokio::process::Child;

mod cluster;
mod common;

use cluster::{LocalCluster, Webhook};
use common::{id_set, terminate};

const OBJECT_KIND: i32 = 1; // SPAN_KIND_INTERNAL
const REQUEST_KIND: i32 = 2; // SPAN_KIND_SERVER
const TOKEN: &str = "kube-apiserver-e2e-token";
/// Values that must never leave the cluster: Secret data set by kubectl.
const SECRET_VALUES: [&str; 3] = [
    "hunter2-initial-Secret-Value",
    "rotated-Secret-Value-42",
    "doomed-Secret-Value-7",
];

/// `kubetrail serve` over TLS with a bearer token, exporting to `otlp` and an OTLP/JSON file,
/// expecting batches from `apiservers` API servers (`time.expect_sources`: local-cluster.sh
/// names them in their webhook URLs, `?source=apiserver-I`, as README's HA section says).
async fn start_serve(
    pki: &Pki,
    otlp: &str,
    json: &Path,
    listen: &str,
    apiservers: usize,
) -> (Child, String, tokio::task::JoinHandle<String>) {
    let tokens = pki.dir.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN}\n")).unwrap();
    let config = pki.dir.path().join("kubetrail.yaml");
    let sources: Vec<String> = (1..=apiservers).map(|i| format!("apiserver-{i}")).collect();
    std::fs::write(
        &config,
        format!("time:\n  expect_sources: [{}]\n", sources.join(", ")),
    )
    .unwrap();
    let mut args = vec![
        "--log-level",
        "info",
        "serve",
        "--config",
        config.to_str().unwrap(),
    ];
    args.extend(["--listen", listen, "--otlp-endpoint", otlp]);
    args.extend(["--otlp-json", json.to_str().unwrap()]);
    args.extend(common::tls_token_args(pki, &tokens));
    common::spawn_serve_args(&args).await
}

/// `kubetrail_events_accepted_total` for the cluster, from serve's /metrics.
async fn accepted(pki: &Pki, addr: &str) -> u64 {
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let text = common::get_text(&client, &format!("https://{addr}/metrics")).await;
    kubetrail_testkit::prometheus_sum(
        &text,
        "kubetrail_events_accepted_total",
        &[("cluster", "local")],
    ) as u64
}

/// Runs `kubetrail replay` on the audit logs; returns the spans of its OTLP/JSON file.
async fn replay(files: &[std::path::PathBuf], out: &Path) -> (Vec<ReceivedSpan>, String) {
    let files = files.iter().map(|f| f.to_str().unwrap());
    common::replay_json("local", ["--no-progress"].into_iter().chain(files), out).await
}

fn namespace_manifest(ns: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n")
}

/// Deployment: created, scaled up, rolled to a new image, scaled down, deleted.
async fn deployment_lifecycle(c: &LocalCluster) {
    c.kubectl(&["create", "namespace", "shop"]).await;
    c.kubectl(&[
        "-n",
        "shop",
        "create",
        "deployment",
        "web",
        "--image=registry.local/web:1.0",
        "--replicas=2",
    ])
    .await;
    let status = [
        "-n",
        "shop",
        "rollout",
        "status",
        "deployment/web",
        "--timeout=180s",
    ];
    c.kubectl(&status).await;
    c.kubectl(&["-n", "shop", "scale", "deployment/web", "--replicas=4"])
        .await;
    c.kubectl(&status).await;
    c.kubectl(&[
        "-n",
        "shop",
        "set",
        "image",
        "deployment/web",
        "web=registry.local/web:1.1",
    ])
    .await;
    c.kubectl(&status).await;
    c.kubectl(&["-n", "shop", "scale", "deployment/web", "--replicas=1"])
        .await;
    c.kubectl(&status).await;
    c.kubectl(&["-n", "shop", "delete", "deployment", "web"])
        .await;
    // The garbage collector deletes the ReplicaSets, they their Pods; the kubelet confirms.
    c.wait_for(
        "web's ReplicaSets and Pods gone",
        &["-n", "shop", "get", "replicasets,pods", "-o", "name"],
        |out| out.trim().is_empty(),
    )
    .await;
}

/// CronJob → Job → Pod; the first Pod fails and the Job controller retries it.
async fn cronjob_with_a_failing_pod(c: &LocalCluster) {
    c.kubectl(&["create", "namespace", "batch-jobs"]).await;
    c.apply(
        None,
        r#"apiVersion: batch/v1
kind: CronJob
metadata:
  name: backup
  namespace: batch-jobs
spec:
  schedule: "* * * * *"
  concurrencyPolicy: Forbid
  jobTemplate:
    spec:
      backoffLimit: 3
      template:
        metadata:
          annotations:
            fake-kubelet.kubetrail.dev/fail-first: "1"
        spec:
          restartPolicy: Never
          containers:
            - name: backup
              image: registry.local/backup:2.0
"#,
    )
    .await;
    // The next full minute starts the Job; its first Pod fails, the retry succeeds.
    c.wait_for(
        "a backup Job that succeeded after a failed Pod",
        &[
            "-n",
            "batch-jobs",
            "get",
            "jobs",
            "-o",
            "jsonpath={range .items[*]}{.status.failed}/{.status.succeeded}{\"\\n\"}{end}",
        ],
        |out| out.lines().any(|l| l == "1/1"),
    )
    .await;
    c.kubectl(&[
        "-n",
        "batch-jobs",
        "patch",
        "cronjob",
        "backup",
        "-p",
        r#"{"spec":{"suspend":true}}"#,
    ])
    .await;
}

/// StatefulSet with a volume claim template, bound to pre-created PersistentVolumes.
async fn statefulset_with_claims(c: &LocalCluster) {
    c.kubectl(&["create", "namespace", "data"]).await;
    for i in 0..2 {
        c.apply(
            None,
            &format!(
                r#"apiVersion: v1
kind: PersistentVolume
metadata:
  name: pv-{i}
spec:
  capacity:
    storage: 1Gi
  accessModes: ["ReadWriteOnce"]
  persistentVolumeReclaimPolicy: Retain
  hostPath:
    path: /var/tmp/kubetrail-e2e-pv-{i}
"#
            ),
        )
        .await;
    }
    // Through the second API server (when there is one): requests land on both.
    let ctx = format!("apiserver-{}", c.apiservers);
    c.apply(
        Some(&ctx),
        r#"apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: db
  namespace: data
spec:
  serviceName: db
  replicas: 2
  # Owner references from the claims to the StatefulSet (without a Delete policy the
  # controller sets none, and a claim is its own family).
  persistentVolumeClaimRetentionPolicy:
    whenDeleted: Delete
    whenScaled: Retain
  selector:
    matchLabels: {app: db}
  template:
    metadata:
      labels: {app: db}
    spec:
      containers:
        - name: db
          image: registry.local/db:16
          volumeMounts:
            - {name: data, mountPath: /var/lib/db}
  volumeClaimTemplates:
    - metadata:
        name: data
      spec:
        accessModes: ["ReadWriteOnce"]
        resources:
          requests:
            storage: 1Gi
"#,
    )
    .await;
    c.kubectl(&[
        "-n",
        "data",
        "rollout",
        "status",
        "statefulset/db",
        "--timeout=180s",
    ])
    .await;
}

/// A Secret created and updated (its values must never reach a span or a log).
async fn secret_created_and_updated(c: &LocalCluster) {
    c.kubectl(&[
        "-n",
        "shop",
        "create",
        "secret",
        "generic",
        "db-password",
        &format!("--from-literal=password={}", SECRET_VALUES[0]),
    ])
    .await;
    c.kubectl(&[
        "-n",
        "shop",
        "patch",
        "secret",
        "db-password",
        "--type=merge",
        "-p",
        &format!(r#"{{"stringData":{{"password":"{}"}}}}"#, SECRET_VALUES[1]),
    ])
    .await;
}

/// A namespace deleted with its contents: the namespace controller empties it.
async fn namespace_deleted_with_contents(c: &LocalCluster) {
    c.apply(None, &namespace_manifest("doomed")).await;
    c.kubectl(&[
        "-n",
        "doomed",
        "create",
        "deployment",
        "api",
        "--image=registry.local/api:3",
        "--replicas=2",
    ])
    .await;
    c.kubectl(&[
        "-n",
        "doomed",
        "create",
        "configmap",
        "settings",
        "--from-literal=mode=fast",
    ])
    .await;
    c.kubectl(&[
        "-n",
        "doomed",
        "create",
        "secret",
        "generic",
        "token",
        &format!("--from-literal=token={}", SECRET_VALUES[2]),
    ])
    .await;
    c.kubectl(&[
        "-n",
        "doomed",
        "rollout",
        "status",
        "deployment/api",
        "--timeout=180s",
    ])
    .await;
    c.kubectl(&["delete", "namespace", "doomed", "--timeout=240s"])
        .await;
}

fn attr<'a>(s: &'a ReceivedSpan, k: &str) -> &'a str {
    s.attributes.get(k).map(String::as_str).unwrap_or("")
}

/// The object span of `resource`/`namespace`/`name` (the first one when there are several windows).
fn object<'a>(spans: &'a [ReceivedSpan], resource: &str, ns: &str, name: &str) -> &'a ReceivedSpan {
    spans
        .iter()
        .filter(|s| s.kind == OBJECT_KIND)
        .filter(|s| {
            attr(s, "kubetrail.object.resource") == resource
                && attr(s, "kubetrail.object.name") == name
        })
        .filter(|s| attr(s, "k8s.namespace.name") == ns || ns.is_empty())
        .min_by_key(|s| s.start_unix_nano)
        .unwrap_or_else(|| panic!("no object span for {resource} {ns}/{name}"))
}

/// Checks the traces of one run (from serve's export).
fn assert_traces(spans: &[ReceivedSpan]) {
    let by_id: HashMap<(&str, &str), &ReceivedSpan> = spans
        .iter()
        .map(|s| ((s.trace_id.as_str(), s.span_id.as_str()), s))
        .collect();
    assert_eq!(
        by_id.len(),
        spans.len(),
        "span ids are unique within their traces"
    );
    let parent_of = |s: &ReceivedSpan| -> Option<&ReceivedSpan> {
        s.parent_span_id.as_deref().map(|p| {
            *by_id
                .get(&(s.trace_id.as_str(), p))
                .unwrap_or_else(|| panic!("span {} has a parent that was not exported", s.name))
        })
    };
    // The top of a span's tree (a family spans several trace windows: one trace per window).
    let root_of = |s: &ReceivedSpan| -> (String, String, String) {
        let mut at = s;
        while let Some(p) = parent_of(at) {
            at = p;
        }
        (
            attr(at, "kubetrail.object.resource").to_owned(),
            attr(at, "k8s.namespace.name").to_owned(),
            attr(at, "kubetrail.object.name").to_owned(),
        )
    };
    let family = |r: &str, ns: &str, n: &str| (r.to_owned(), ns.to_owned(), n.to_owned());
    // Every object span's parent is its owner's object span, in the same trace.
    for s in spans.iter().filter(|s| s.kind == OBJECT_KIND) {
        if let Some(p) = parent_of(s) {
            assert_eq!(p.kind, OBJECT_KIND, "{} under {}", s.name, p.name);
        }
    }

    // Deployment → ReplicaSets → Pods, one trace.
    let web = object(spans, "deployments", "shop", "web");
    assert_eq!(
        web.parent_span_id, None,
        "the Deployment is its family's root"
    );
    let replicasets: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.kind == OBJECT_KIND && attr(s, "kubetrail.object.resource") == "replicasets")
        .filter(|s| attr(s, "k8s.namespace.name") == "shop")
        .collect();
    let rs_names: BTreeSet<&str> = replicasets
        .iter()
        .map(|s| attr(s, "kubetrail.object.name"))
        .collect();
    assert_eq!(
        rs_names.len(),
        2,
        "the rollout made a second ReplicaSet: {rs_names:?}"
    );
    for rs in &replicasets {
        let owner = parent_of(rs).unwrap_or_else(|| panic!("{} has no owner span", rs.name));
        assert_eq!(attr(owner, "kubetrail.object.resource"), "deployments");
        assert_eq!(root_of(rs), family("deployments", "shop", "web"));
    }
    let pods: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.kind == OBJECT_KIND && attr(s, "kubetrail.object.resource") == "pods")
        .filter(|s| attr(s, "k8s.namespace.name") == "shop")
        .collect();
    assert!(
        pods.len() >= 6,
        "2 + 2 scaled + replacements: {}",
        pods.len()
    );
    for p in &pods {
        assert_eq!(
            root_of(p),
            family("deployments", "shop", "web"),
            "{}",
            p.name
        );
        let owner = parent_of(p).unwrap_or_else(|| panic!("{} has no owner span", p.name));
        assert_eq!(
            attr(owner, "kubetrail.object.resource"),
            "replicasets",
            "{}",
            p.name
        );
    }
    // The rolling update's image change is a diff on the Deployment's patch.
    let image_change = spans
        .iter()
        .filter(|s| s.kind == REQUEST_KIND && root_of(s) == family("deployments", "shop", "web"))
        .flat_map(|s| s.events.iter().map(move |e| (s, e)))
        .find(|(_, (name, a))| {
            name == "changed"
                && a.get("path").map(String::as_str)
                    == Some("spec.template.spec.containers[name=web].image")
        })
        .unwrap_or_else(|| panic!("no image diff in web's trace"));
    assert_eq!(image_change.0.service_name, "kubectl");
    assert_eq!(
        attr(image_change.0, "kubetrail.object.resource"),
        "deployments"
    );
    assert_eq!(image_change.1.1["old"], "registry.local/web:1.0");
    assert_eq!(image_change.1.1["new"], "registry.local/web:1.1");

    // CronJob → Job → Pods (one failed, one succeeded).
    assert_eq!(
        object(spans, "cronjobs", "batch-jobs", "backup").parent_span_id,
        None
    );
    let jobs: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.kind == OBJECT_KIND && attr(s, "kubetrail.object.resource") == "jobs")
        .filter(|s| attr(s, "k8s.namespace.name") == "batch-jobs")
        .collect();
    assert!(!jobs.is_empty());
    for j in &jobs {
        assert_eq!(
            parent_of(j).map(|p| attr(p, "kubetrail.object.resource")),
            Some("cronjobs")
        );
        assert_eq!(root_of(j), family("cronjobs", "batch-jobs", "backup"));
    }
    let job_pods: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.kind == OBJECT_KIND && attr(s, "kubetrail.object.resource") == "pods")
        .filter(|s| attr(s, "k8s.namespace.name") == "batch-jobs")
        .collect();
    assert!(
        job_pods.len() >= 2,
        "a failed Pod and its retry: {}",
        job_pods.len()
    );
    for p in &job_pods {
        assert_eq!(root_of(p), family("cronjobs", "batch-jobs", "backup"));
        assert_eq!(
            parent_of(p).map(|o| attr(o, "kubetrail.object.resource")),
            Some("jobs")
        );
    }

    // StatefulSet → Pods, and its claims.
    let db = object(spans, "statefulsets", "data", "db");
    assert_eq!(db.parent_span_id, None);
    for name in ["db-0", "db-1"] {
        let p = object(spans, "pods", "data", name);
        assert_eq!(
            parent_of(p).map(|o| attr(o, "kubetrail.object.resource")),
            Some("statefulsets")
        );
        assert_eq!(root_of(p), family("statefulsets", "data", "db"));
        // The controller creates the claim without an owner reference and adds it next
        // (persistentVolumeClaimRetentionPolicy), so the create is its own family; the
        // claim's later requests are in db's tree.
        let claim = format!("data-{name}");
        assert!(
            spans.iter().any(|s| s.kind == OBJECT_KIND
                && attr(s, "kubetrail.object.resource") == "persistentvolumeclaims"
                && attr(s, "kubetrail.object.name") == claim
                && root_of(s) == family("statefulsets", "data", "db")),
            "the claim {claim} is in db's tree"
        );
    }

    // The namespace was emptied by the namespace controller.
    let requests: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.kind == REQUEST_KIND).collect();
    let in_doomed: Vec<&&ReceivedSpan> = requests
        .iter()
        .filter(|s| attr(s, "k8s.namespace.name") == "doomed")
        .collect();
    assert!(
        in_doomed
            .iter()
            .any(|s| s.service_name == "namespace-controller"
                && attr(s, "kubetrail.audit.verb") == "deletecollection"),
        "namespace-controller's deletecollection in doomed"
    );

    // The real components as services.
    let services: BTreeSet<&str> = requests.iter().map(|s| s.service_name.as_str()).collect();
    for actor in [
        "kubectl",
        "deployment-controller",
        "replicaset-controller",
        "kube-scheduler",
        "kubelet",
        "cronjob-controller",
        "job-controller",
        "statefulset-controller",
        "generic-garbage-collector",
        "namespace-controller",
        "persistent-volume-binder",
    ] {
        assert!(
            services.contains(actor),
            "service {actor} missing from {services:?}"
        );
    }
    // Every request span is a child of an object span of its own trace.
    for r in &requests {
        let p = parent_of(r).unwrap_or_else(|| panic!("request {} has no parent", r.name));
        assert_eq!(p.kind, OBJECT_KIND);
    }
}

/// No Secret value in any span attribute, span event or in a text.
fn assert_no_secret_values(what: &str, text: &str) {
    for v in SECRET_VALUES {
        assert!(!text.contains(v), "Secret value {v} found in {what}");
    }
}

fn span_text(spans: &[ReceivedSpan]) -> String {
    let mut out = String::new();
    for s in spans {
        out.push_str(&format!(
            "{} {:?} {:?} {:?}\n",
            s.name, s.attributes, s.events, s.resource_attributes
        ));
    }
    out
}

/// One API server: the family trees, actors, diffs, redaction, and the webhook and the log
/// backend giving identical trace and span ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_control_plane_traces_through_the_webhook_and_the_log_backend() {
    full_run(1).await;
}

/// Two API servers on one etcd (HA), each naming itself in its webhook URL: every event of
/// both reaches serve exactly once, and the trees, actors, diffs, redaction and the
/// webhook-vs-log-backend ids are those of one API server — serve waits for the slower one
/// (per-source watermark), replay merges the two logs by time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_servers_give_the_same_traces_through_the_webhook_and_the_log_backend() {
    full_run(2).await;
}

/// Reads back from Jaeger's query API (as Jaeger UI does: `/api/traces/{id}`) every trace of
/// `written`, once Jaeger holds all of its spans; returns them as Jaeger has them. A trace
/// Jaeger warns about (duplicate ids, an invalid parent, clock skew) fails the test.
async fn jaeger_spans(q: &JaegerQuery, written: &[ReceivedSpan]) -> Vec<ReceivedSpan> {
    let mut per_trace: BTreeMap<&str, usize> = BTreeMap::new();
    for s in written {
        *per_trace.entry(s.trace_id.as_str()).or_default() += 1;
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut out = Vec::new();
    for (id, want) in per_trace {
        loop {
            let trace = q.trace(id).await.unwrap();
            let have = trace.as_ref().map_or(0, |t| t.spans.len());
            if let Some(t) = trace.filter(|_| have >= want) {
                assert!(
                    t.all_warnings().is_empty(),
                    "trace {id}: {:?}",
                    t.all_warnings()
                );
                out.extend(t.received_spans());
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Jaeger holds {have} of the {want} spans of trace {id}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    out
}

async fn full_run(apiservers: usize) {
    let pki = Pki::new();
    let work = tempfile::tempdir().unwrap();
    let jaeger = Jaeger::start().unwrap();
    let serve_json = work.path().join("serve.otlp.jsonl");
    let (mut serve, addr, serve_log) = start_serve(
        &pki,
        &jaeger.otlp_grpc_endpoint(),
        &serve_json,
        "127.0.0.1:0",
        apiservers,
    )
    .await;
    let webhook = Webhook {
        url: format!("https://{addr}/audit/local"),
        token: TOKEN.into(),
        ca: Some(pki.ca_file.clone()),
    };
    let mut c = LocalCluster::up(&work.path().join("cluster"), apiservers, Some(&webhook)).await;

    deployment_lifecycle(&c).await;
    secret_created_and_updated(&c).await;
    statefulset_with_claims(&c).await;
    namespace_deleted_with_contents(&c).await;
    cronjob_with_a_failing_pod(&c).await;

    // Stopping the API servers flushes their webhook buffers: then the log backend's files are
    // complete, and every event in them reached serve.
    c.down();
    let lines = c.audit_lines();
    let logged = lines.len() as u64;
    // KUBETRAIL_E2E_KEEP=DIR keeps this run's audit logs (how testdata/cluster-capture/ was made).
    if let Some(keep) = std::env::var_os("KUBETRAIL_E2E_KEEP") {
        for (i, f) in c.audit_logs().iter().enumerate() {
            std::fs::create_dir_all(&keep).unwrap();
            std::fs::copy(
                f,
                Path::new(&keep).join(format!("apiserver-{}.audit.log", i + 1)),
            )
            .unwrap();
        }
    }
    assert!(
        logged > 500,
        "a real run writes hundreds of events: {logged}"
    );
    let got = accepted(&pki, &addr).await;
    assert_eq!(
        got, logged,
        "serve accepted exactly the events the API servers logged"
    );

    // SIGTERM drains serve's queue and flushes its exporter.
    let status = terminate(&mut serve).await;
    assert!(status.success(), "serve exit: {status}");
    let serve_stderr = serve_log.await.unwrap();
    if let Some(keep) = std::env::var_os("KUBETRAIL_E2E_KEEP") {
        std::fs::copy(&serve_json, Path::new(&keep).join("serve.otlp.jsonl")).unwrap();
    }
    let from_file = common::read_spans(&serve_json);
    // Everything below is checked on what Jaeger stored, read through its query API.
    let query = jaeger.query();
    let exported = jaeger_spans(&query, &from_file).await;
    assert_eq!(
        id_set(&from_file),
        id_set(&exported),
        "OTLP/JSON file = what Jaeger holds"
    );
    let services = query.services().await.unwrap();
    for actor in [
        "kubectl",
        "deployment-controller",
        "replicaset-controller",
        "kube-scheduler",
        "kubelet",
    ] {
        assert!(
            services.iter().any(|s| s == actor),
            "Jaeger's services lack {actor}: {services:?}"
        );
    }
    assert_traces(&exported);
    // Every API server logged and sent events (the real components act through all of them).
    for f in c.audit_logs() {
        let n = std::fs::read_to_string(&f).unwrap().lines().count();
        assert!(n > 50, "{}: {n} events", f.display());
    }

    // No Secret value anywhere: not in the audit logs (the policy keeps Secrets at Metadata),
    // spans, the OTLP/JSON file, nor serve's log.
    for l in &lines {
        assert_no_secret_values("the audit log", l);
    }
    assert_no_secret_values("the exported spans", &span_text(&exported));
    assert_no_secret_values(
        "the OTLP/JSON file",
        &std::fs::read_to_string(&serve_json).unwrap(),
    );
    assert_no_secret_values("serve's log", &serve_stderr);

    // The log backend gives the same trace and span ids as the webhook.
    let (replayed, replay_stderr) =
        replay(&c.audit_logs(), &work.path().join("replay.otlp.jsonl")).await;
    assert_no_secret_values("replay's log", &replay_stderr);
    let served = id_set(&exported);
    let from_logs = id_set(&replayed);
    let only_served: Vec<_> = served.difference(&from_logs).take(5).collect();
    let only_logs: Vec<_> = from_logs.difference(&served).take(5).collect();
    assert!(
        served == from_logs,
        "webhook vs log backend ({apiservers} API servers): {} vs {} spans; only in serve: {only_served:?}; only in replay: {only_logs:?}",
        served.len(),
        from_logs.len()
    );
    let names = |v: &[ReceivedSpan]| -> BTreeMap<String, (String, String)> {
        v.iter()
            .map(|s| (s.span_id.clone(), (s.name.clone(), s.service_name.clone())))
            .collect()
    };
    assert_eq!(names(&replayed), names(&exported));
}

/// The "N events processed" of serve's last line.
fn processed(stderr: &str) -> u64 {
    stderr
        .lines()
        .rev()
        .find_map(|l| {
            let (_, rest) = l.split_once("queued events: ")?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no 'events processed' in serve's log:\n{stderr}"))
}

/// A free loopback port (serve must come back on the same address the API servers send to).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_buffers_and_retries_while_serve_is_stopped() {
    let pki = Pki::new();
    let work = tempfile::tempdir().unwrap();
    let otlp = OtlpReceiver::start().await.unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let (mut serve, addr, log1) = start_serve(
        &pki,
        &otlp.grpc_endpoint(),
        &work.path().join("a.jsonl"),
        &listen,
        1,
    )
    .await;
    let webhook = Webhook {
        url: format!("https://{addr}/audit/local"),
        token: TOKEN.into(),
        ca: Some(pki.ca_file.clone()),
    };
    let mut c = LocalCluster::up(&work.path().join("cluster"), 1, Some(&webhook)).await;
    c.kubectl(&["create", "namespace", "outage"]).await;

    // serve stops (draining what it accepted); the API server's batches now fail.
    assert!(terminate(&mut serve).await.success());
    let before = processed(&log1.await.unwrap());
    for i in 0..20 {
        c.kubectl(&[
            "-n",
            "outage",
            "create",
            "configmap",
            &format!("during-outage-{i}"),
            "--from-literal=k=v",
        ])
        .await;
    }
    // The outage is seen by the API server: its webhook sends fail.
    c.wait_for(
        "a failed webhook send in the API server's log",
        &["get", "--raw", "/readyz"],
        |_| {
            c.log("apiserver-1")
                .contains("Error in audit plugin 'webhook'")
        },
    )
    .await;
    let (mut serve, addr2, log2) = start_serve(
        &pki,
        &otlp.grpc_endpoint(),
        &work.path().join("b.jsonl"),
        &listen,
        1,
    )
    .await;
    assert_eq!(addr2, addr);
    c.kubectl(&[
        "-n",
        "outage",
        "create",
        "configmap",
        "after-outage",
        "--from-literal=k=v",
    ])
    .await;
    let metrics = c.audit_metrics(1).await;
    c.down();
    let logged = c.audit_lines().len() as u64;
    assert!(terminate(&mut serve).await.success());
    let after = processed(&log2.await.unwrap());
    let created: BTreeSet<String> = otlp
        .spans()
        .iter()
        .filter(|s| s.kind == REQUEST_KIND && attr(s, "kubetrail.audit.verb") == "create")
        .filter(|s| {
            attr(s, "kubetrail.object.resource") == "configmaps"
                && attr(s, "k8s.namespace.name") == "outage"
        })
        .map(|s| attr(s, "kubetrail.object.name").to_owned())
        .collect();
    eprintln!("apiserver_audit_* before shutdown: {metrics:#?}");
    eprintln!("logged {logged}, accepted before the outage {before}, by the second serve {after}");
    // What kube-apiserver really does: its batch backend retries a failed send with backoff
    // (--audit-webhook-initial-backoff=1s) a bounded number of times, then drops the batch and
    // counts it in apiserver_audit_error_total{plugin="webhook"}; later batches are delivered
    // once serve is back. So no loss is silent: every logged event reached a serve or is
    // counted as a webhook error by the API server.
    let dropped = metrics
        .get("apiserver_audit_error_total{plugin=\"webhook\"}")
        .copied()
        .unwrap_or(0.0) as u64;
    assert_eq!(
        before + after + dropped,
        logged,
        "accepted by the first serve + by the second + counted as dropped by the API server"
    );
    let during = (0..20)
        .filter(|i| created.contains(&format!("during-outage-{i}")))
        .count() as u64;
    assert!(
        during > 0,
        "batches retried after the outage arrived: {created:?}"
    );
    assert!(
        during + dropped >= 20,
        "each configmap of the outage arrived or is among the events the API server dropped"
    );
    assert!(created.contains("after-outage"));
}
