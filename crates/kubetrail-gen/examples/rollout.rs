//! Writes a generated Deployment rollout as audit JSON lines to stdout, for trying kubetrail on
//! a large input by hand: `cargo run -p kubetrail-gen --example rollout -- 1200 > big.audit.log`
//! (the argument is `spec.replicas`; default 3).

fn main() -> std::io::Result<()> {
    let replicas = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3);
    let scenario = kubetrail_gen::RolloutScenario {
        replicas,
        ..Default::default()
    };
    let stream = scenario.generate();
    stream.write_json_lines(std::io::stdout().lock())?;
    eprintln!(
        "{} lines, {} objects, {} mutating requests, {} Kubernetes Events",
        stream.truth.total_lines,
        stream.truth.objects.len(),
        stream.truth.mutating_requests,
        stream.truth.kube_events
    );
    Ok(())
}
