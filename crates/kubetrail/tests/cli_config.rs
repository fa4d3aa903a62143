//! The CLI, the environment and the config file agree: every flag that names a config key in
//! its help (`(config: `key`)`) names a key that exists in the reference config
//! `examples/kubetrail.yaml`, and that file is accepted by the binary.

use std::process::Command;

fn help(sub: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kubetrail"))
        .args([sub, "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn reference() -> serde_yaml::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/kubetrail.yaml");
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn lookup<'a>(v: &'a serde_yaml::Value, dotted: &str) -> Option<&'a serde_yaml::Value> {
    dotted.split('.').try_fold(v, |v, key| v.get(key))
}

/// One audit event (a read: filtered out, so nothing is exported, but the input is valid).
const ONE_EVENT: &str = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"a","stage":"ResponseComplete","requestURI":"/api/v1/pods","verb":"list","user":{"username":"u"},"requestReceivedTimestamp":"2024-05-01T10:00:00Z","stageTimestamp":"2024-05-01T10:00:00Z"}"#;

/// Runs `kubetrail replay --tree` on a one-event log with the given config file text.
fn replay_with_config(yaml: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("one.log");
    std::fs::write(&log, ONE_EVENT).unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    Command::new(env!("CARGO_BIN_EXE_kubetrail"))
        .args([
            "replay",
            "--config",
            cfg.to_str().unwrap(),
            "--tree",
            log.to_str().unwrap(),
        ])
        .output()
        .unwrap()
}

#[test]
fn every_config_key_named_in_help_is_in_the_reference_config() {
    let reference = reference();
    let mut checked = 0;
    for sub in ["replay", "serve", "receive", "consume", "timeline", "url"] {
        let text = help(sub);
        // clap wraps long help lines: join them before searching.
        let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
        for part in joined.split("(config: `").skip(1) {
            let key = part.split('`').next().unwrap();
            assert!(
                lookup(&reference, key).is_some(),
                "`kubetrail {sub} --help` names config key {key}, missing from examples/kubetrail.yaml"
            );
            checked += 1;
        }
    }
    assert!(checked >= 15, "only {checked} config keys found in --help");
}

#[test]
fn every_config_flag_has_an_environment_variable() {
    for sub in ["replay", "serve", "receive", "consume"] {
        let text = help(sub);
        let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let flags = joined.split("(config: `").skip(1).count();
        assert!(
            flags >= 5,
            "`kubetrail {sub} --help` names only {flags} config keys"
        );
        for part in joined.split("(config: `").skip(1) {
            let (note, rest) = part.split_once(')').unwrap_or((part, ""));
            // A repeatable key=value flag (`--kafka-property`) says it has none, on purpose.
            if note.ends_with("; no environment variable") {
                continue;
            }
            assert!(
                rest.trim_start().starts_with("[env: KUBETRAIL_"),
                "`kubetrail {sub}`: a config flag without an env var near: {}",
                &part[..part.len().min(80)]
            );
        }
    }
}

#[test]
fn the_reference_config_is_accepted_and_a_typo_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("one.log");
    std::fs::write(&log, ONE_EVENT).unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/kubetrail.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_kubetrail"))
        .args([
            "replay",
            "--config",
            path,
            "--otlp-json",
            dir.path().join("o.jsonl").to_str().unwrap(),
            log.to_str().unwrap(),
        ])
        .env_remove("KUBETRAIL_OTLP_ENDPOINT")
        .output()
        .unwrap();
    // The reference config names an OTLP endpoint that does not resolve here; a read is
    // filtered out and nothing is exported, so the run succeeds.
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Input with no audit event at all (binary garbage, an empty file): a clear error and a
    // non-zero exit, not "0 events read" and success.
    for (name, content) in [
        ("empty.log", b"".to_vec()),
        (
            "garbage.bin",
            (0..=255u8).cycle().take(100_000).collect::<Vec<u8>>(),
        ),
    ] {
        let input = dir.path().join(name);
        std::fs::write(&input, content).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_kubetrail"))
            .args([
                "replay",
                "--otlp-json",
                dir.path().join("g.jsonl").to_str().unwrap(),
            ])
            .arg(&input)
            .env_remove("KUBETRAIL_OTLP_ENDPOINT")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{name}: {stderr}");
        assert!(stderr.contains("holds no audit event"), "{name}: {stderr}");
    }
    let out = replay_with_config("aggregate:\n  windw: 10m\n");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `windw`"));
}

#[test]
fn environment_overrides_the_config_file_and_flags_override_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let log = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/rollout.audit.log"
    );
    let cfg = dir.path().join("c.yaml");
    std::fs::write(&cfg, "cluster: from-file\n").unwrap();
    let cluster_of = |env: Option<&str>, flag: Option<&str>| -> String {
        let out_file = dir.path().join("o.jsonl");
        let mut c = Command::new(env!("CARGO_BIN_EXE_kubetrail"));
        c.args([
            "replay",
            "--config",
            cfg.to_str().unwrap(),
            "--otlp-json",
            out_file.to_str().unwrap(),
        ]);
        if let Some(f) = flag {
            c.args(["--cluster", f]);
        }
        c.arg(log).env_remove("KUBETRAIL_CLUSTER");
        if let Some(e) = env {
            c.env("KUBETRAIL_CLUSTER", e);
        }
        assert!(c.output().unwrap().status.success());
        let text = std::fs::read_to_string(&out_file).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        let attrs = v["resourceSpans"][0]["resource"]["attributes"]
            .as_array()
            .unwrap()
            .clone();
        attrs
            .iter()
            .find(|a| a["key"] == "k8s.cluster.name")
            .map(|a| a["value"]["stringValue"].as_str().unwrap().to_owned())
            .unwrap()
    };
    assert_eq!(cluster_of(None, None), "from-file");
    assert_eq!(cluster_of(Some("from-env"), None), "from-env");
    assert_eq!(cluster_of(Some("from-env"), Some("from-flag")), "from-flag");
}

#[test]
fn a_broken_linker_rule_is_a_clear_config_error() {
    let out = replay_with_config(
        "link:\n  rules:\n    - name: half\n      resources: [pods]\n      field: spec.nodeName\n      relation: parent\n",
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("link.rules: rule half: a field rule needs a target resource"),
        "{err}"
    );
}
