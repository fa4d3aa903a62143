//! A real Kafka-protocol broker for tests: [tansu](https://github.com/tansu-io/tansu), run as a
//! child process with in-memory storage on a free port of 127.0.0.1.

use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// The environment variable naming the tansu binary to use.
pub const TANSU_ENV: &str = "KUBETRAIL_TANSU";

/// How long the broker may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `tansu topic create` may take.
const TOPIC_TIMEOUT: Duration = Duration::from_secs(15);

/// A tansu broker (`tansu broker … --storage-engine memory://tansu/`) on 127.0.0.1.
///
/// The storage is in memory: [`stop`](Self::stop) and [`restart`](Self::restart) lose every
/// topic and offset (tansu 0.6 offers no storage that survives a restart without an external
/// S3 or PostgreSQL), so recreate topics after a restart. The process is killed when the
/// value is dropped.
///
/// The binary is `$KUBETRAIL_TANSU`, else `tansu` on `PATH`, else `<workspace>/.tools/bin/tansu`
/// (installed by `scripts/install-tansu.sh`).
#[derive(Debug)]
pub struct KafkaBroker {
    binary: PathBuf,
    port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl KafkaBroker {
    /// Starts a broker on a free port and waits until it accepts connections.
    pub fn start() -> anyhow::Result<KafkaBroker> {
        let binary = find_tansu()?;
        let mut last_error = None;
        // A free port may be taken between finding it and the broker binding it: retry.
        for _ in 0..3 {
            let port = free_port()?;
            let mut broker = KafkaBroker {
                binary: binary.clone(),
                port,
                log: std::env::temp_dir()
                    .join(format!("kubetrail-tansu-{}-{port}.log", std::process::id())),
                child: None,
            };
            match broker.spawn() {
                Ok(()) => return Ok(broker),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("tansu did not start")))
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `tcp://127.0.0.1:PORT`, for tansu's own commands.
    pub fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// Whether the broker process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Creates a topic with `partitions` partitions (`tansu topic create`).
    pub fn create_topic(&self, name: &str, partitions: u32) -> anyhow::Result<()> {
        let mut child = Command::new(&self.binary)
            .args(["topic", "create", name, "--partitions"])
            .arg(partitions.to_string())
            .args(["--broker", &self.url()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {} topic create", self.binary.display()))?;
        let deadline = Instant::now() + TOPIC_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("tansu topic create {name} did not finish within {TOPIC_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if !status.success() {
            let mut out = String::new();
            if let Some(mut s) = child.stderr.take() {
                let _ = s.read_to_string(&mut out);
            }
            if let Some(mut s) = child.stdout.take() {
                let _ = s.read_to_string(&mut out);
            }
            bail!(
                "tansu topic create {name} --partitions {partitions} failed ({status}): {}",
                out.trim()
            );
        }
        Ok(())
    }

    /// Kills the broker (like a crash: no shutdown).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().context("killing tansu")?;
            child.wait().context("waiting for tansu to exit")?;
        }
        Ok(())
    }

    /// Starts the broker again on the same port (after [`stop`](Self::stop), or kills it
    /// first). Its storage starts empty.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        self.spawn()
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let url = self.url();
        let log = std::fs::File::create(&self.log)
            .with_context(|| format!("creating {}", self.log.display()))?;
        let child = Command::new(&self.binary)
            .arg("broker")
            .args(["--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        self.child = Some(child);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!(
                    "tansu exited at start ({status}): {}",
                    std::fs::read_to_string(&self.log)
                        .unwrap_or_default()
                        .trim()
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = self.stop();
                bail!("tansu did not accept connections on {addr} within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        let _ = self.stop();
        let _ = std::fs::remove_file(&self.log);
    }
}

fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// `$KUBETRAIL_TANSU`, else `tansu` on `PATH`, else `<workspace>/.tools/bin/tansu`.
fn find_tansu() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(TANSU_ENV) {
        let p = PathBuf::from(p);
        if is_executable(&p) {
            return Ok(p);
        }
        bail!("{TANSU_ENV}={} is not an executable file", p.display());
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("tansu");
            if is_executable(&p) {
                return Ok(p);
            }
        }
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let p = workspace.join(".tools/bin/tansu");
    if is_executable(&p) {
        return Ok(p);
    }
    bail!(
        "the tansu Kafka broker is not installed: run scripts/install-tansu.sh (installs \
         .tools/bin/tansu), put tansu on PATH, or set {TANSU_ENV}"
    )
}

fn is_executable(p: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    {
        p.is_file()
    }
}
