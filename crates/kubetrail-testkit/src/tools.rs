//! The real programs the integration tests run (Jaeger, Apache Kafka) are built or fetched by
//! pinned scripts under `scripts/` into the workspace's `.tools/`. The harnesses call those
//! scripts on first use: each script does nothing when its tool is installed, and takes a
//! lock while installing, so several test binaries starting at once are safe.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The real audit samples, `testdata/audit-samples/`, or a file below them (`rel`, which may be
/// empty).
pub fn audit_sample(rel: &str) -> PathBuf {
    workspace_root().join("testdata/audit-samples").join(rel)
}

/// Runs `scripts/NAME` (bash) and returns the path it prints on its last line of stdout.
/// The script's own progress goes to this process's stderr (the test's output).
pub fn install(script: &str) -> anyhow::Result<PathBuf> {
    let path = workspace_root().join("scripts").join(script);
    let out = Command::new("bash")
        .arg(&path)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", path.display()))?;
    if !out.status.success() {
        bail!("{} failed ({})", path.display(), out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(last) = stdout.lines().rev().find(|l| !l.trim().is_empty()) else {
        bail!("{} printed no path", path.display());
    };
    Ok(PathBuf::from(last.trim()))
}

/// The first executable file called `name` on `PATH`.
pub fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

/// Whether `p` is an executable regular file.
pub fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
