//! The same events give the same spans, span events included, whatever the diff cache's
//! size and however fast the pipeline runs: the cache forgets states in an order given by
//! the input alone, never by time.

use kubetrail_gen::VolumeScenario;
use kubetrail_model::{AuditEvent, SpanRecord};
use kubetrail_pipeline::{Pipeline, PipelineConfig};

fn events() -> Vec<AuditEvent> {
    let scenario = VolumeScenario {
        seed: 7,
        namespaces: 2,
        deployments_per_namespace: 3,
        replicas: 3,
        rollouts_per_deployment: 2,
        with_noise: false,
    };
    let mut out = Vec::new();
    scenario.write_json_lines(&mut out).unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Runs the pipeline with a diff cache of `cache_bytes`; `pause` between events slows it
/// down (what a loaded machine or a slow exporter does to a live pipeline).
fn run(
    events: &[AuditEvent],
    cache_bytes: u64,
    pause: Option<std::time::Duration>,
) -> (Vec<SpanRecord>, u64) {
    let mut config = PipelineConfig::default();
    config.decorate.diff.cache_bytes = cache_bytes;
    let mut p = Pipeline::new(config);
    let mut spans = Vec::new();
    for (i, e) in events.iter().enumerate() {
        if let Some(d) = pause
            && i % 8 == 0
        {
            std::thread::sleep(d);
        }
        p.push("c", e.clone(), &mut spans);
    }
    p.finish(&mut spans);
    (spans, p.stats().diffs)
}

#[test]
fn a_tiny_cache_gives_the_same_spans_fast_and_slow() {
    let events = events();
    let tiny = 16 * 1024;
    let (fast, fast_diffs) = run(&events, tiny, None);
    let (slow, slow_diffs) = run(&events, tiny, Some(std::time::Duration::from_millis(2)));
    let (_, roomy_diffs) = run(&events, 256 << 20, None);
    assert!(
        fast_diffs < roomy_diffs,
        "the tiny cache must be under pressure ({fast_diffs} diffs vs {roomy_diffs})"
    );
    assert!(fast_diffs > 0, "and still remember some states");
    assert_eq!(fast_diffs, slow_diffs);
    assert_eq!(fast.len(), slow.len());
    for (a, b) in fast.iter().zip(&slow) {
        assert_eq!(a, b, "span events and attributes included");
    }
    assert!(
        fast.iter().any(|s| !s.events.is_empty()),
        "diffs became span events"
    );
}
