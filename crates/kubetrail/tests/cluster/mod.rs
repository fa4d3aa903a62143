//! A real Kubernetes control plane for the end-to-end tests: `scripts/local-cluster.sh` (etcd,
//! N kube-apiservers, kube-controller-manager, kube-scheduler and the fake kubelet, built from
//! source by `scripts/install-k8s.sh`), driven with the kubectl built from the same release.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// The repository root (two levels above this crate).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Where kube-apiserver sends audit batches, and how it authenticates.
pub struct Webhook {
    /// `https://127.0.0.1:PORT/audit/CLUSTER`.
    pub url: String,
    /// A line of kubetrail's `--token-file`.
    pub token: String,
    /// The CA that signed kubetrail's serving certificate (`None` for a plain-HTTP URL).
    pub ca: Option<PathBuf>,
}

/// A running local cluster; `down` (or drop) stops it.
pub struct LocalCluster {
    /// The `--dir` of `local-cluster.sh`.
    pub dir: PathBuf,
    /// The admin kubeconfig (`DIR/kubeconfig`).
    pub kubeconfig: PathBuf,
    /// The directory of the built binaries (kubectl among them).
    pub bin: PathBuf,
    /// How many API servers run.
    pub apiservers: usize,
    up: bool,
}

/// The output of one kubectl run.
pub struct Output {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl LocalCluster {
    /// `scripts/local-cluster.sh up --dir DIR --apiservers N [--webhook-…]`, waiting for its
    /// `ready` line.
    pub async fn up(dir: &Path, apiservers: usize, webhook: Option<&Webhook>) -> LocalCluster {
        let mut cmd = Command::new("bash");
        cmd.arg(repo().join("scripts/local-cluster.sh"))
            .args(["up", "--dir"])
            .arg(dir)
            .args(["--apiservers", &apiservers.to_string()]);
        if let Some(w) = webhook {
            cmd.args(["--webhook-url", &w.url, "--webhook-token", &w.token]);
            if let Some(ca) = &w.ca {
                cmd.arg("--webhook-ca").arg(ca);
            }
        }
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .await
            .expect("run local-cluster.sh");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success() && stdout.lines().last() == Some("ready"),
            "local-cluster.sh up failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let env = std::fs::read_to_string(dir.join("cluster.env")).unwrap();
        let bin = env
            .lines()
            .find_map(|l| l.strip_prefix("bin="))
            .expect("bin= in cluster.env")
            .into();
        LocalCluster {
            dir: dir.to_owned(),
            kubeconfig: dir.join("kubeconfig"),
            bin,
            apiservers,
            up: true,
        }
    }

    /// kubectl with the admin kubeconfig; `context` picks an API server (None: apiserver-1).
    pub async fn kubectl_on(
        &self,
        context: Option<&str>,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Output {
        let mut cmd = Command::new(self.bin.join("kubectl"));
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        if let Some(c) = context {
            cmd.args(["--context", c]);
        }
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn kubectl");
        if let Some(text) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(text.as_bytes()).await.unwrap();
            drop(pipe);
        }
        let out = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish"))
            .unwrap();
        Output {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// kubectl ARGS on apiserver-1; panics with its stderr when it fails.
    pub async fn kubectl(&self, args: &[&str]) -> String {
        let out = self.kubectl_on(None, args, None).await;
        assert!(
            out.ok,
            "kubectl {args:?} failed:\n{}{}",
            out.stdout, out.stderr
        );
        out.stdout
    }

    /// `kubectl apply -f -` with this manifest, on the given API server context.
    pub async fn apply(&self, context: Option<&str>, manifest: &str) -> String {
        let out = self
            .kubectl_on(context, &["apply", "-f", "-"], Some(manifest))
            .await;
        assert!(
            out.ok,
            "kubectl apply failed:\n{}{}\n{manifest}",
            out.stdout, out.stderr
        );
        out.stdout
    }

    /// Polls `kubectl ARGS` until its output satisfies `done` (the cluster converging is the
    /// synchronisation; the limit only turns a hang into a failure).
    pub async fn wait_for(&self, what: &str, args: &[&str], done: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
        let mut last = String::new();
        while tokio::time::Instant::now() < deadline {
            let out = self.kubectl_on(None, args, None).await;
            if out.ok && done(&out.stdout) {
                return out.stdout;
            }
            last = format!("{}{}", out.stdout, out.stderr);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("{what}: not reached; last kubectl {args:?}:\n{last}");
    }

    /// The `apiserver_audit_*` series of API server I, from its `/metrics`.
    pub async fn audit_metrics(&self, i: usize) -> std::collections::BTreeMap<String, f64> {
        let ctx = format!("apiserver-{i}");
        let out = self
            .kubectl_on(Some(&ctx), &["get", "--raw", "/metrics"], None)
            .await;
        assert!(out.ok, "{}", out.stderr);
        out.stdout
            .lines()
            .filter(|l| l.starts_with("apiserver_audit_"))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect()
    }

    /// The log backend's files, `DIR/audit/apiserver-I/audit.log`.
    pub fn audit_logs(&self) -> Vec<PathBuf> {
        (1..=self.apiservers)
            .map(|i| self.dir.join(format!("audit/apiserver-{i}/audit.log")))
            .collect()
    }

    /// Every line of every audit log (one event each).
    pub fn audit_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for f in self.audit_logs() {
            let text =
                std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            lines.extend(
                text.lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(str::to_owned),
            );
        }
        lines
    }

    /// A component's log, `DIR/logs/NAME.log`.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join("logs").join(format!("{name}.log")))
            .unwrap_or_default()
    }

    /// `local-cluster.sh down`: the API servers flush their webhook buffers on SIGTERM.
    pub fn down(&mut self) {
        if !self.up {
            return;
        }
        self.up = false;
        let status = std::process::Command::new("bash")
            .arg(repo().join("scripts/local-cluster.sh"))
            .args(["down", "--dir"])
            .arg(&self.dir)
            .stdin(Stdio::null())
            .status()
            .expect("run local-cluster.sh down");
        assert!(status.success(), "local-cluster.sh down: {status}");
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if self.up {
            self.up = false;
            let _ = std::process::Command::new("bash")
                .arg(repo().join("scripts/local-cluster.sh"))
                .args(["down", "--dir"])
                .arg(&self.dir)
                .stdin(Stdio::null())
                .status();
        }
    }
}
