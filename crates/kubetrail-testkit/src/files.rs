//! Writing audit log files the way kube-apiserver's log backend does, for the tests of the
//! tailers (`kubetrail-source`'s `follow`, the `follow` and `receive` commands). It lives here,
//! not in each test, so every tailer test appends to its log in the same way.

use std::io::Write as _;
use std::path::Path;

/// Appends `text` to the file at `path` (creating it when it does not exist) and syncs it to
/// disk before returning, as a log writer that has flushed a line does; a tailer polling the
/// file sees all of `text` from then on. Fails the test on any I/O error.
pub fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {} to append: {e}", path.display()));
    f.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("appending to {}: {e}", path.display()));
    f.sync_all()
        .unwrap_or_else(|e| panic!("syncing {}: {e}", path.display()));
}

/// Truncates the file at `path` to nothing in place (the same inode), as logrotate's
/// `copytruncate` does after copying it away. Fails the test on any I/O error.
pub fn truncate(path: &Path) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(0))
        .unwrap_or_else(|e| panic!("truncating {}: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    #[test]
    fn appends_creates_and_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        super::append(&p, "a\n");
        super::append(&p, "b\n");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a\nb\n");
        super::truncate(&p);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "");
    }
}
