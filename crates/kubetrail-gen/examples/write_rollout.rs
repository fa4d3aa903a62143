//! Writes the default rollout scenario as an audit log (JSON lines) to stdout: the dump in
//! `examples/rollout.audit.log` is this program's output.
//!
//! `cargo run -p kubetrail-gen --example write_rollout > examples/rollout.audit.log`

use std::io::Write;

fn main() -> std::io::Result<()> {
    let stream = kubetrail_gen::RolloutScenario::default().generate();
    std::io::stdout()
        .lock()
        .write_all(stream.to_json_lines().as_bytes())
}
