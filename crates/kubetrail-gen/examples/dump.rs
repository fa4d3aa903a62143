//! Writes a generated stream to stdout and its ground-truth counts to stderr.
//!
//! ```text
//! cargo run -p kubetrail-gen --example dump -- rollout [seed]
//! cargo run -p kubetrail-gen --release --example dump -- volume [seed] [namespaces] [deployments] [replicas] [rollouts] [noise 0|1]
//! ```
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    let seed = arg(1, 1);
    let stdout = std::io::stdout();
    let truth = if args.first().map(String::as_str) == Some("volume") {
        let v = kubetrail_gen::VolumeScenario {
            seed,
            namespaces: arg(2, 10) as u32,
            deployments_per_namespace: arg(3, 10) as u32,
            replicas: arg(4, 3) as u32,
            rollouts_per_deployment: arg(5, 1) as u32,
            with_noise: arg(6, 1) != 0,
        };
        v.write_json_lines(stdout.lock()).expect("write")
    } else {
        let s = kubetrail_gen::RolloutScenario {
            seed,
            ..Default::default()
        }
        .generate();
        s.write_json_lines(stdout.lock()).expect("write");
        s.truth
    };
    eprintln!(
        "lines {} | mutating requests {} ({} lines, {} failed) | kube events {} ({} lines) | noise lines {} | objects {}",
        truth.total_lines,
        truth.mutating_requests,
        truth.mutating_lines,
        truth.failed_requests,
        truth.kube_events,
        truth.kube_event_lines,
        truth.noise_events,
        truth.objects.len()
    );
}
