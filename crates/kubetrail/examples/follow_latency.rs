//! Measures `kubetrail follow`'s latency: from an audit line appended to the log (as
//! kube-apiserver writes it) to its request span in the exported OTLP/JSON file. Not a test:
//! the figures go to BENCHMARKS.md.
//!
//! ```text
//! cargo build --release -p kubetrail
//! cargo run --release -p kubetrail --example follow_latency -- [LINES] [-- FOLLOW ARGS…]
//! ```
//!
//! `KUBETRAIL_BIN` names the binary (default `target/release/kubetrail`). Extra arguments are
//! passed to `follow` (e.g. `--lateness 0s --poll-interval 20ms`). One line at a time: each is
//! written, then the output file is watched (read every millisecond) until the span with
//! that line's audit ID is there.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

fn event_line(i: usize) -> String {
    let now = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
    format!(
        concat!(
            r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"latency-{i:06}","#,
            r#""stage":"ResponseComplete","requestURI":"/api/v1/namespaces/default/configmaps","verb":"create","#,
            r#""user":{{"username":"alice"}},"sourceIPs":["10.0.0.1"],"userAgent":"kubectl/v1.30.0","#,
            r#""objectRef":{{"resource":"configmaps","namespace":"default","name":"cm-{i}","apiVersion":"v1"}},"#,
            r#""responseStatus":{{"metadata":{{}},"code":201}},"requestReceivedTimestamp":"{now}","stageTimestamp":"{now}"}}"#,
            "\n"
        ),
        i = i,
        now = now
    )
}

fn main() -> anyhow::Result<()> {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    let lines: usize = match argv.first().and_then(|a| a.parse().ok()) {
        Some(n) => {
            argv.remove(0);
            n
        }
        None => 50,
    };
    if argv.first().map(String::as_str) == Some("--") {
        argv.remove(0);
    }
    let bin = std::env::var("KUBETRAIL_BIN").unwrap_or_else(|_| "target/release/kubetrail".into());
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("audit.log");
    let out = dir.path().join("out.jsonl");
    std::fs::write(&log, "")?;
    std::fs::write(&out, "")?;
    let mut child = Command::new(&bin)
        .args([
            "follow",
            "--cluster",
            "bench",
            "--linger",
            "1h",
            "--otlp-json",
        ])
        .arg(&out)
        .args(&argv)
        .arg(&log)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stderr = BufReader::new(
        child
            .stderr
            .take()
            .ok_or_else(|| anyhow::anyhow!("stderr"))?,
    );
    let mut line = String::new();
    loop {
        line.clear();
        if stderr.read_line(&mut line)? == 0 {
            anyhow::bail!("follow exited before it started");
        }
        if line.starts_with("kubetrail follow: following ") {
            break;
        }
    }
    std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = stderr.read_to_string(&mut sink);
    });
    let mut output = std::fs::File::open(&out)?;
    let mut read_to = 0u64;
    let mut seen = String::new();
    let mut samples = Vec::with_capacity(lines);
    let mut writer = std::fs::OpenOptions::new().append(true).open(&log)?;
    for i in 0..lines {
        let id = format!("\"latency-{i:06}\"");
        writer.write_all(event_line(i).as_bytes())?;
        writer.flush()?;
        let t0 = Instant::now();
        loop {
            output.seek(SeekFrom::Start(read_to))?;
            let mut more = String::new();
            output.read_to_string(&mut more)?;
            read_to += more.len() as u64;
            seen.push_str(&more);
            if seen.contains(&id) {
                samples.push(t0.elapsed());
                // Keep only the unfinished last line.
                if let Some(nl) = seen.rfind('\n') {
                    seen.drain(..=nl);
                }
                break;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                anyhow::bail!("no span for line {i} after 60 s");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // Lines apart, so each is measured on its own (not batched with the previous).
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    samples.sort();
    let q = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize].as_millis();
    println!(
        "follow {}: {} lines, line written → request span exported: p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
        argv.join(" "),
        samples.len(),
        q(0.5),
        q(0.9),
        q(0.99),
        q(1.0)
    );
    Ok(())
}
