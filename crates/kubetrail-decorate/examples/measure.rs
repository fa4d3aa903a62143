//! Rough cost of the decorate stage per event, on a generated stream of rollouts.
//!
//! `cargo run --release -p kubetrail-decorate --example measure [--print N] [--rounds N]`
//!
//! Feeds the mutating `ResponseComplete` events of `kubetrail_gen::VolumeScenario::default()`
//! (100 Deployments, 300 pods, one rollout each; what the default filter passes) through
//! `Decorator::redact` and `Decorator::decorate`, and compares with a bare `serde_json` parse
//! of the same lines into `AuditEvent`. Prints numbers; asserts nothing.

use std::time::Instant;

use kubetrail_decorate::{DecorateConfig, Decorator};
use kubetrail_model::{AuditEvent, ObjectHead, ObjectRef, Stage};

fn place(e: &AuditEvent) -> Option<ObjectRef> {
    let sub = e.object_ref.as_ref().and_then(|r| r.subresource.as_deref());
    let head = e
        .object_body()
        .and_then(|b| ObjectHead::parse(b).ok())
        .filter(|_| matches!(sub, None | Some("status")))
        .filter(|h| h.kind.as_deref() != Some("Status"));
    ObjectRef::from_event(e, head.as_ref())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let print: usize = args
        .iter()
        .position(|a| a == "--print")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    // Fewer rounds for instruction counting (`valgrind --tool=callgrind`).
    let rounds: usize = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(5);

    let stream = kubetrail_gen::VolumeScenario::default().generate();
    let lines: Vec<String> = stream
        .events
        .iter()
        .map(kubetrail_gen::event_to_json)
        .filter(|l| {
            let e: AuditEvent = serde_json::from_str(l).unwrap();
            e.stage == Stage::ResponseComplete && e.is_mutating()
        })
        .collect();
    let bytes: usize = lines.iter().map(String::len).sum();

    // Baseline: parsing the lines (the fastest of 5 runs).
    let mut parse = std::time::Duration::MAX;
    let mut events: Vec<AuditEvent> = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        events = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        parse = parse.min(t.elapsed());
    }
    let places: Vec<Option<ObjectRef>> = events.iter().map(place).collect();

    let mut best: std::collections::BTreeMap<String, (usize, f64)> = Default::default();
    for round in 0..rounds {
        let mut evs = events.clone();
        let d = Decorator::new(DecorateConfig::default());
        let t = Instant::now();
        let mut redacted = 0;
        for e in &mut evs {
            redacted += d.redact(e);
        }
        let redact = t.elapsed();
        let t = Instant::now();
        let (mut diffs, mut changes, mut snaps, mut noops) = (0, 0, 0, 0);
        let mut printed = 0;
        // (count, seconds) per kind of request.
        let mut by_kind: std::collections::BTreeMap<String, (usize, f64)> = Default::default();
        for (e, o) in evs.iter().zip(&places) {
            let Some(o) = o else { continue };
            let t1 = Instant::now();
            let out = d.decorate("c", o, e);
            let kind = format!(
                "{} {}{}",
                e.verb,
                o.resource,
                e.object_ref
                    .as_ref()
                    .and_then(|r| r.subresource.as_deref())
                    .map(|s| format!("/{s}"))
                    .unwrap_or_default()
            );
            let slot = by_kind.entry(kind).or_default();
            slot.0 += 1;
            slot.1 += t1.elapsed().as_secs_f64();
            diffs += usize::from(out.had_prior_state);
            noops += usize::from(out.noop);
            changes += out.changes.len();
            snaps += usize::from(out.snapshot.is_some());
            if round == 0 && printed < print && (out.had_prior_state || out.snapshot.is_some()) {
                printed += 1;
                println!(
                    "{} {}{} noop={}",
                    e.verb,
                    o,
                    e.object_ref
                        .as_ref()
                        .and_then(|r| r.subresource.as_deref())
                        .map(|s| format!("/{s}"))
                        .unwrap_or_default(),
                    out.noop
                );
                for c in &out.changes {
                    println!(
                        "    {}: {} → {}",
                        c.path,
                        c.old.as_deref().unwrap_or("(none)"),
                        c.new.as_deref().unwrap_or("(none)")
                    );
                }
            }
        }
        let decorate = t.elapsed();
        let n = evs.len() as f64;
        let (cache_bytes, cache_entries) = d.cache_size();
        println!(
            "round {round}: {} events ({:.1} MB): parse {:.2} µs/event | redact {:.2} µs/event ({redacted} values) | decorate {:.2} µs/event ({diffs} diffs, {noops} no-ops, {changes} changes, {snaps} snapshots) | cache {cache_entries} states, {:.1} MB",
            evs.len(),
            bytes as f64 / 1e6,
            parse.as_secs_f64() * 1e6 / n,
            redact.as_secs_f64() * 1e6 / n,
            decorate.as_secs_f64() * 1e6 / n,
            cache_bytes as f64 / 1e6,
        );
        for (kind, (n, secs)) in by_kind {
            let b = best.entry(kind).or_insert((n, f64::MAX));
            b.1 = b.1.min(secs);
        }
    }
    // Redaction with a configured path: every body is parsed (and re-serialized if hit).
    let cfg = kubetrail_decorate::RedactConfig {
        paths: vec!["spec.template.spec.containers[*].env[*].value".into()],
        resources: vec![],
        ..Default::default()
    };
    let salt = kubetrail_decorate::Salt::random();
    let mut fastest = f64::MAX;
    for _ in 0..3 {
        let mut evs = events.clone();
        let t = Instant::now();
        for e in &mut evs {
            kubetrail_decorate::redact_event(e, &cfg, &salt);
        }
        fastest = fastest.min(t.elapsed().as_secs_f64());
    }
    println!(
        "redact with one configured path: {:.2} µs/event",
        fastest * 1e6 / events.len() as f64
    );
    // Fail-closed redaction: Secret bodies that parse (values replaced one by one) against
    // bodies nested past the parser's limit (replaced whole), per event.
    let secret = |deep: bool, i: usize| -> AuditEvent {
        let extra = if deep {
            format!(r#","x":{}1{}"#, "[".repeat(200), "]".repeat(200))
        } else {
            String::new()
        };
        let body = format!(
            r#"{{"kind":"Secret","apiVersion":"v1","metadata":{{"name":"s{i}","namespace":"ns"}},"data":{{"password":"aHVudGVyMg==","token":"dG9rZW4tdmFsdWU="}}{extra}}}"#
        );
        serde_json::from_str(&format!(
            r#"{{"level":"RequestResponse","auditID":"{i}","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/ns/secrets/s{i}","verb":"update","user":{{}},"objectRef":{{"resource":"secrets","namespace":"ns","name":"s{i}","apiVersion":"v1"}},"responseStatus":{{"code":200}},"requestObject":{body},"responseObject":{body}}}"#
        ))
        .unwrap()
    };
    for (what, deep) in [
        ("parseable", false),
        ("200 levels deep (fail closed)", true),
    ] {
        let evs: Vec<AuditEvent> = (0..20_000).map(|i| secret(deep, i)).collect();
        let d = Decorator::new(DecorateConfig::default());
        let mut fastest = f64::MAX;
        let mut whole = 0;
        for _ in 0..3 {
            let mut batch = evs.clone();
            let t = Instant::now();
            for e in &mut batch {
                whole += d.redact_report(e).whole_bodies;
            }
            fastest = fastest.min(t.elapsed().as_secs_f64());
        }
        println!(
            "redact a Secret update, {what}: {:.2} µs/event ({} bodies replaced whole)",
            fastest * 1e6 / evs.len() as f64,
            whole / 3
        );
    }
    println!("fastest round per kind of request:");
    for (kind, (n, secs)) in &best {
        println!("    {kind:32} {n:6} × {:6.2} µs", secs * 1e6 / *n as f64);
    }
    events.clear();
}
