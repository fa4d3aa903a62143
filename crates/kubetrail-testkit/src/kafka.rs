//! A real Apache Kafka broker for tests: a single KRaft node (broker and controller in one
//! JVM) started as a child process on free ports of 127.0.0.1, with its log on disk in a
//! temporary directory, so that [`KafkaBroker::stop`] and [`KafkaBroker::restart`] behave as
//! a crash and a restart of a real broker do: topics, messages and committed offsets survive.
//!
//! The broker's jars come from Maven Central, pinned by `scripts/install-kafka.sh`, which the
//! harness runs on first use (it installs once into `.tools/kafka-<version>/`, under a lock,
//! so test binaries starting at once are safe). Set [`KAFKA_HOME_ENV`] to use another
//! installation (a directory with `libs/*.jar`).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};

/// The environment variable naming a Kafka installation (a directory holding `libs/`).
pub const KAFKA_HOME_ENV: &str = "KUBETRAIL_KAFKA_HOME";

/// How long the JVM may take to format the storage or to start serving.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long creating a topic may take.
const TOPIC_TIMEOUT: Duration = Duration::from_secs(30);
/// The KRaft cluster id of every test broker (each broker is its own cluster).
const CLUSTER_ID: &str = "a3VidGV0cmFpbC10ZXN0cw";
/// The line the broker logs once it serves (log4j2.properties of the install sets the
/// logger of `kafka.server.KafkaRaftServer` to INFO).
const STARTED: &str = "Kafka Server started";

/// One Apache Kafka broker (KRaft, single node) on 127.0.0.1.
///
/// Every broker has its own data directory and ports; the process is killed and the data
/// removed when the value is dropped. Settings are production defaults except what a single
/// node needs (replication factor 1 for internal topics), no group join delay, and a minimum
/// session timeout of 1 s so tests can have a crashed consumer replaced quickly.
#[derive(Debug)]
pub struct KafkaBroker {
    java: PathBuf,
    home: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    controller_port: u16,
    child: Option<Child>,
    starts: u32,
}

impl KafkaBroker {
    /// Installs Kafka if needed, formats a fresh storage directory and starts the broker on
    /// free ports; returns once it serves clients.
    pub fn start() -> anyhow::Result<KafkaBroker> {
        let home = kafka_home()?;
        let java = find_java()?;
        let mut last_error = None;
        // A free port may be taken between finding it and the broker binding it: retry.
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("kubetrail-kafka-")
                .tempdir()
                .context("creating the broker's directory")?;
            let mut broker = KafkaBroker {
                java: java.clone(),
                home: home.clone(),
                dir,
                port: free_port()?,
                controller_port: free_port()?,
                child: None,
                starts: 0,
            };
            broker.write_config()?;
            broker.format()?;
            match broker.spawn() {
                Ok(()) => return Ok(broker),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("kafka did not start")))
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's data directory (`log.dirs`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The broker's log of its current (or last) run.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Whether the broker process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The resident memory of the broker process in bytes (from `/proc`), if it runs.
    pub fn rss_bytes(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        crate::proc::rss_bytes(pid)
    }

    /// Creates a topic with `partitions` partitions (replication factor 1) through the admin
    /// API and waits until its leaders are known.
    pub fn create_topic(&self, name: &str, partitions: u32) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.addr())
            .create()
            .context("creating a Kafka admin client")?;
        let partitions = i32::try_from(partitions).context("partition count")?;
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let options = AdminOptions::new().operation_timeout(Some(TOPIC_TIMEOUT));
        let results = futures::executor::block_on(admin.create_topics([&topic], &options))
            .with_context(|| format!("creating topic {name}"))?;
        for result in results {
            if let Err((topic, code)) = result {
                bail!("creating topic {topic}: {code}");
            }
        }
        // Wait until every partition has a leader, so producers do not start on a topic the
        // broker still sets up.
        let deadline = Instant::now() + TOPIC_TIMEOUT;
        loop {
            let metadata = rdkafka::client::Client::fetch_metadata(
                admin.inner(),
                Some(name),
                Duration::from_secs(5),
            );
            if let Ok(md) = metadata
                && let Some(t) = md.topics().first()
                && t.error().is_none()
                && t.partitions().len() == partitions as usize
                && t.partitions().iter().all(|p| p.leader() >= 0)
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("topic {name} has no leaders after {TOPIC_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The end offset (high watermark) of every partition of `topic`: how many messages each
    /// holds (no compaction, no transactions here).
    pub fn end_offsets(&self, topic: &str) -> anyhow::Result<BTreeMap<i32, i64>> {
        let consumer = self.probe("kubetrail-testkit-probe")?;
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .with_context(|| format!("metadata of {topic}"))?;
        let mut out = BTreeMap::new();
        for t in md.topics() {
            for p in t.partitions() {
                let (_, high) = consumer
                    .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                    .with_context(|| format!("watermarks of {topic}/{}", p.id()))?;
                out.insert(p.id(), high);
            }
        }
        Ok(out)
    }

    /// The offsets consumer group `group` committed on the partitions of `topic` (partitions
    /// it never committed are absent). Reads them without joining the group.
    pub fn committed_offsets(
        &self,
        group: &str,
        topic: &str,
    ) -> anyhow::Result<BTreeMap<i32, i64>> {
        let consumer = self.probe(group)?;
        let mut tpl = TopicPartitionList::new();
        for p in self.end_offsets(topic)?.keys() {
            tpl.add_partition(topic, *p);
        }
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .with_context(|| format!("committed offsets of {group} on {topic}"))?;
        Ok(committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect())
    }

    fn probe(&self, group: &str) -> anyhow::Result<BaseConsumer> {
        ClientConfig::new()
            .set("bootstrap.servers", self.addr())
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .context("creating a Kafka consumer")
    }

    /// Kills the broker with SIGKILL (a crash: no controlled shutdown). Its data stays.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().context("killing kafka")?;
            child.wait().context("waiting for kafka to exit")?;
        }
        Ok(())
    }

    /// Starts the broker again on the same ports and the same data (after
    /// [`stop`](Self::stop), or kills it first), and waits until it serves.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        self.spawn()
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("server.properties")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("broker-{}.log", self.starts))
    }

    fn write_config(&self) -> anyhow::Result<()> {
        let (port, cport) = (self.port, self.controller_port);
        let data = self.data_dir();
        let config = format!(
            "process.roles=broker,controller\n\
             node.id=1\n\
             controller.quorum.voters=1@127.0.0.1:{cport}\n\
             listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
             controller.listener.names=CONTROLLER\n\
             inter.broker.listener.name=PLAINTEXT\n\
             listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
             log.dirs={}\n\
             num.partitions=1\n\
             auto.create.topics.enable=false\n\
             offsets.topic.replication.factor=1\n\
             offsets.topic.num.partitions=4\n\
             transaction.state.log.replication.factor=1\n\
             transaction.state.log.min.isr=1\n\
             share.coordinator.state.topic.replication.factor=1\n\
             share.coordinator.state.topic.min.isr=1\n\
             group.initial.rebalance.delay.ms=0\n\
             group.min.session.timeout.ms=1000\n",
            data.display()
        );
        std::fs::write(self.config_path(), config).context("writing server.properties")
    }

    fn java_command(&self, log: &Path) -> anyhow::Result<Command> {
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(&self.java);
        cmd.args([
            "-Xms128m",
            "-Xmx512m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
        ])
        .arg(format!(
            "-Dlog4j2.configurationFile={}",
            self.home.join("log4j2.properties").display()
        ))
        .arg("-cp")
        .arg(format!("{}/*", self.home.join("libs").display()))
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
        Ok(cmd)
    }

    /// `kafka-storage.sh format`: writes meta.properties and the bootstrap metadata.
    fn format(&self) -> anyhow::Result<()> {
        let log = self.dir.path().join("format.log");
        let status = self
            .java_command(&log)?
            .args(["kafka.tools.StorageTool", "format", "-t", CLUSTER_ID, "-c"])
            .arg(self.config_path())
            .status()
            .context("running kafka.tools.StorageTool format")?;
        if !status.success() {
            bail!(
                "formatting the Kafka storage failed ({status}): {}",
                std::fs::read_to_string(&log).unwrap_or_default().trim()
            );
        }
        Ok(())
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        let log = self.log_path();
        let child = self
            .java_command(&log)?
            .arg("kafka.Kafka")
            .arg(self.config_path())
            .spawn()
            .with_context(|| format!("starting {}", self.java.display()))?;
        self.child = Some(child);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!("kafka exited at start ({status}): {}", self.log().trim());
            }
            if self.log().contains(STARTED)
                && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let log = self.log();
                let _ = self.stop();
                bail!("kafka did not start on {addr} within {START_TIMEOUT:?}: {log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// `$KUBETRAIL_KAFKA_HOME`, else what `scripts/install-kafka.sh` installs (running it).
fn kafka_home() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(KAFKA_HOME_ENV) {
        let p = PathBuf::from(p);
        if p.join("libs").is_dir() {
            return Ok(p);
        }
        bail!("{KAFKA_HOME_ENV}={} has no libs/ directory", p.display());
    }
    crate::tools::install("install-kafka.sh")
}

fn find_java() -> anyhow::Result<PathBuf> {
    if let Some(home) = std::env::var_os("JAVA_HOME") {
        let p = PathBuf::from(home).join("bin/java");
        if p.is_file() {
            return Ok(p);
        }
    }
    crate::tools::on_path("java").context("Apache Kafka needs Java 17+: java is not on PATH")
}
