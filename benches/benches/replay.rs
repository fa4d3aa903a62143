//! Replay throughput: a bare serde_json parse (the baseline of the product target "replay
//! within 2× of a bare parse"), kubetrail's typed decode, the pipeline, and OTLP encoding.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kubetrail_benches::{
    bare_parse, decode, pipeline, pipeline_encoded, pretty_event_list, volume,
};

fn replay(c: &mut Criterion) {
    let input = volume(4);
    let lines = input.iter().filter(|b| **b == b'\n').count() as u64;
    let mut g = c.benchmark_group("replay");
    g.sample_size(20);
    g.throughput(Throughput::Bytes(input.len() as u64));
    g.bench_function("bare_serde_json_value", |b| b.iter(|| bare_parse(&input)));
    g.bench_function("decode_audit_events", |b| b.iter(|| decode(&input)));
    g.bench_function("decode_and_pipeline", |b| b.iter(|| pipeline(&input)));
    g.bench_function("decode_pipeline_and_otlp_encode", |b| {
        b.iter(|| pipeline_encoded(&input))
    });
    g.finish();
    let mut g = c.benchmark_group("replay_events");
    g.sample_size(20);
    g.throughput(Throughput::Elements(lines));
    g.bench_function("decode_and_pipeline", |b| b.iter(|| pipeline(&input)));
    g.finish();
    // Pretty-printed input: one EventList of 2,000 events over many lines. It used to be
    // re-parsed after every line (quadratic: 38.6 s); the framer finds its end in one pass.
    let pretty = pretty_event_list(&input, 2_000);
    let mut g = c.benchmark_group("replay_pretty");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(pretty.len() as u64));
    g.bench_function("decode_pretty_event_list_2000", |b| {
        b.iter(|| decode(&pretty))
    });
    g.finish();
}

criterion_group!(benches, replay);
criterion_main!(benches);
