//! Event-time order across sources: an HA control plane's streams, interleaved and skewed,
//! give the spans of the merged stream (the `watermark` module in front of the pipeline).

use kubetrail_model::{AuditEvent, SpanKind, SpanRecord, UnixNanos};
use kubetrail_pipeline::watermark::{OrderConfig, Sequencer};
use kubetrail_pipeline::{Pipeline, PipelineConfig};
use proptest::prelude::*;

fn rollout(seed: u64) -> Vec<AuditEvent> {
    let scenario = kubetrail_gen::RolloutScenario {
        seed,
        ..Default::default()
    };
    scenario
        .generate()
        .events
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect()
}

/// Which of `n` API servers served a request: by its auditID, as a load balancer would.
fn server_of(e: &AuditEvent, n: usize) -> usize {
    let h = e.audit_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (h % n as u64) as usize
}

/// Runs `(source, event)` arrivals through a sequencer and a pipeline (replay: no wall time).
fn run(arrivals: Vec<(String, AuditEvent)>, order: &OrderConfig) -> Vec<SpanRecord> {
    let mut seq = Sequencer::new(order);
    let mut pipeline = Pipeline::new(PipelineConfig::default());
    let mut out = Vec::new();
    for (source, e) in arrivals {
        seq.push(&source, "c", e, None);
        let p = &mut pipeline;
        let o = &mut out;
        if let Some(w) = seq.release(None, |r| p.push_marked(&r.cluster, r.event, r.late, o)) {
            pipeline.advance(w, &mut out);
        }
    }
    let p = &mut pipeline;
    let o = &mut out;
    seq.drain(|r| p.push_marked(&r.cluster, r.event, r.late, o));
    pipeline.finish(&mut out);
    assert_eq!(pipeline.stats().late, 0, "nothing was late");
    out.sort_by_key(|s| (s.trace_id, s.span_id));
    out
}

fn merged(events: &[AuditEvent], order: &OrderConfig) -> Vec<SpanRecord> {
    run(
        events
            .iter()
            .map(|e| ("all".to_owned(), e.clone()))
            .collect(),
        order,
    )
}

/// Interleaves per-server streams: at each step, `choices` picks among the servers whose next
/// event is within `skew` of the earliest pending one (so the skew never exceeds it).
fn interleave(
    events: &[AuditEvent],
    servers: usize,
    skew: UnixNanos,
    choices: &[usize],
) -> Vec<(String, AuditEvent)> {
    let mut streams: Vec<std::collections::VecDeque<AuditEvent>> =
        vec![Default::default(); servers];
    for e in events {
        streams[server_of(e, servers)].push_back(e.clone());
    }
    let mut out = Vec::with_capacity(events.len());
    let mut step = 0usize;
    loop {
        let heads: Vec<(usize, UnixNanos)> = streams
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.front().map(|e| (i, e.end_time().unwrap())))
            .collect();
        let Some(min) = heads.iter().map(|(_, t)| *t).min() else {
            break;
        };
        let eligible: Vec<usize> = heads
            .iter()
            .filter(|(_, t)| *t <= min + skew)
            .map(|(i, _)| *i)
            .collect();
        let pick = eligible[choices[step % choices.len()] % eligible.len()];
        step += 1;
        let e = streams[pick].pop_front().unwrap();
        out.push((format!("apiserver-{pick}"), e));
    }
    out
}

fn trace_ids(spans: &[SpanRecord]) -> std::collections::BTreeSet<kubetrail_model::ids::TraceId> {
    spans.iter().map(|s| s.trace_id).collect()
}

#[test]
fn three_servers_one_lagging_20s_give_the_merged_streams_spans() {
    let events = rollout(7);
    // The servers are declared (`time.expect_sources`), so the lagging one holds time back
    // from the start; the lateness is the default 5 s.
    let order = OrderConfig {
        expect_sources: (0..3).map(|i| format!("apiserver-{i}")).collect(),
        ..Default::default()
    };
    let want = merged(&events, &OrderConfig::default());
    // Server 2 is 20 s behind the others: everything it sends is 20 s late.
    let mut arrivals: Vec<(UnixNanos, String, AuditEvent)> = events
        .iter()
        .map(|e| {
            let s = server_of(e, 3);
            let t = e.end_time().unwrap();
            let at = if s == 2 { t + 20_000_000_000 } else { t };
            (at, format!("apiserver-{s}"), e.clone())
        })
        .collect();
    arrivals.sort_by_key(|(at, _, _)| *at);
    let got = run(
        arrivals.into_iter().map(|(_, s, e)| (s, e)).collect(),
        &order,
    );
    assert_eq!(got, want);
    // One trace for the Deployment's family.
    let families: std::collections::BTreeSet<_> = want
        .iter()
        .filter(|s| s.kind == SpanKind::Object && s.parent_span_id.is_none())
        .filter(|s| s.name.starts_with("deployments"))
        .map(|s| s.trace_id)
        .collect();
    assert_eq!(families.len(), 1);
}

#[test]
fn the_same_events_read_one_server_after_another_are_not_the_merged_stream() {
    // What the sequencer repairs: without it (sequential files) an owner's events may come
    // after those of the objects it owns. Owner inference from names (Metadata-level logs)
    // now keeps such a family in one trace, but the spans are still not the merged stream's
    // (owners learned late, extents and links cut differently).
    let events = rollout(7);
    let mut pipeline = Pipeline::new(PipelineConfig::default());
    let mut out = Vec::new();
    for s in 0..3 {
        for e in events.iter().filter(|e| server_of(e, 3) == s) {
            pipeline.push("c", e.clone(), &mut out);
        }
    }
    pipeline.finish(&mut out);
    let want = merged(&events, &OrderConfig::default());
    assert!(trace_ids(&out).len() >= trace_ids(&want).len());
    assert_ne!(out, want, "without the sequencer the spans differ");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any interleaving of N per-server time-ordered streams whose skew stays within the
    /// lateness gives the same spans (ids, parents, extents, attributes) as the merged stream.
    #[test]
    fn any_interleaving_within_the_lateness_gives_the_merged_spans(
        seed in 1u64..1000,
        servers in 2usize..=4,
        skew_ms in 0i64..4_900,
        choices in proptest::collection::vec(0usize..16, 1..64),
    ) {
        let events = rollout(seed);
        let order = OrderConfig::default(); // lateness 5 s
        let want = merged(&events, &order);
        let got = run(interleave(&events, servers, skew_ms * 1_000_000, &choices), &order);
        prop_assert_eq!(got, want);
    }
}
