//! Which files a replay reads, and in what order per API server.
//!
//! An HA control plane leaves one audit log per API server, each rotated by kube-apiserver
//! (lumberjack): `audit.log` is the live file and `audit-2024-07-15T09-00-00.000.log[.gz]` the
//! older ones, named by when they were rotated. A replay is given files, directories and
//! globs (`node*/audit*.log*`); they are expanded here and grouped into **servers**: the
//! rotated files of one log and the log itself are one [`InputChain`], read oldest first,
//! the live file last. Different chains are merged by event time (see [`crate::merge`]).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

/// Why the inputs could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum InputsError {
    /// A glob that matches no file.
    #[error("no file matches {0}")]
    NotFound(String),
    /// A glob pattern is invalid.
    #[error("invalid glob {pattern}: {reason}")]
    Glob {
        /// The pattern as given.
        pattern: String,
        /// Why.
        reason: String,
    },
    /// A directory could not be listed.
    #[error("cannot list {path}")]
    List {
        /// The directory.
        path: String,
        /// Cause.
        source: io::Error,
    },
}

/// One API server's log: its files in time order (rotated ones oldest first, the live one
/// last), read one after the other as one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputChain {
    /// The files (`-` for stdin), in reading order.
    pub files: Vec<String>,
}

impl InputChain {
    /// A short name for logs and source names: the live file's path.
    pub fn name(&self) -> &str {
        self.files.last().map(String::as_str).unwrap_or("-")
    }
}

/// The rotation timestamp and the live file's name of a kube-apiserver rotated log
/// (`audit-2024-07-15T09-00-00.000.log[.gz]` → (`2024-07-15T09-00-00.000`, `audit.log`)).
pub fn rotated_name(file_name: &str) -> Option<(String, String)> {
    let plain = file_name.strip_suffix(".gz").unwrap_or(file_name);
    // lumberjack: <name>-<2006-01-02T15-04-05.000><ext>; the extension may be empty.
    const STAMP: usize = "2006-01-02T15-04-05.000".len();
    let bytes = plain.as_bytes();
    for (i, _) in plain.match_indices('-') {
        let Some(stamp) = plain.get(i + 1..i + 1 + STAMP) else {
            continue;
        };
        let shape = stamp.bytes().enumerate().all(|(j, b)| match j {
            4 | 7 | 13 | 16 => b == b'-',
            10 => b == b'T',
            19 => b == b'.',
            _ => b.is_ascii_digit(),
        });
        let rest = &plain[i + 1 + STAMP..];
        if shape && (rest.is_empty() || rest.starts_with('.')) && i > 0 && bytes[0] != b'.' {
            return Some((stamp.to_owned(), format!("{}{}", &plain[..i], rest)));
        }
    }
    None
}

/// A file of a chain: its rotation stamp (`None` for the live file) and its path.
type RotatedFile = (Option<String>, String);

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, InputsError> {
    let err = |source| InputsError::List {
        path: dir.display().to_string(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if !hidden && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Expands files, directories (their regular, non-hidden files) and globs, and groups
/// rotated logs with their live file. Chains come in the order their first path was given;
/// `-` (stdin) is a chain of its own. A path given twice is read once.
pub fn expand(args: &[String]) -> Result<Vec<InputChain>, InputsError> {
    let mut paths: Vec<String> = Vec::new();
    for arg in args {
        if arg == "-" {
            paths.push(arg.clone());
            continue;
        }
        let p = Path::new(arg);
        if p.is_dir() {
            paths.extend(list_dir(p)?.into_iter().map(|f| f.display().to_string()));
        } else if p.exists() || !is_glob(arg) {
            // A missing plain path fails when it is opened, with the OS's reason.
            paths.push(arg.clone());
        } else {
            let matches = glob::glob(arg).map_err(|e| InputsError::Glob {
                pattern: arg.clone(),
                reason: e.to_string(),
            })?;
            let mut found: Vec<String> = matches
                .filter_map(Result::ok)
                .filter(|m| m.is_file())
                .map(|m| m.display().to_string())
                .collect();
            if found.is_empty() {
                return Err(InputsError::NotFound(arg.clone()));
            }
            found.sort();
            paths.extend(found);
        }
    }
    // Group by (directory, live name); keep first-seen order of groups.
    let mut order: Vec<(PathBuf, String)> = Vec::new();
    let mut groups: BTreeMap<(PathBuf, String), Vec<RotatedFile>> = BTreeMap::new();
    let mut stdin = 0usize;
    for path in paths {
        let (key, stamp) = if path == "-" {
            stdin += 1;
            ((PathBuf::from("-"), format!("-{stdin}")), None)
        } else {
            let p = Path::new(&path);
            let dir = p.parent().map(Path::to_path_buf).unwrap_or_default();
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match rotated_name(&name) {
                Some((stamp, live)) => ((dir, live), Some(stamp)),
                None => (
                    (dir, name.strip_suffix(".gz").unwrap_or(&name).to_owned()),
                    None,
                ),
            }
        };
        let files = groups.entry(key.clone()).or_default();
        if files.is_empty() {
            order.push(key);
        }
        if !files.iter().any(|(_, f)| *f == path) {
            files.push((stamp, path));
        }
    }
    Ok(order
        .into_iter()
        .filter_map(|k| groups.remove(&k))
        .map(|mut files| {
            // Rotated files by their stamp (lexical = chronological), the live file last.
            files.sort_by(|(a, fa), (b, fb)| match (a, b) {
                (Some(x), Some(y)) => x.cmp(y).then(fa.cmp(fb)),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => fa.cmp(fb),
            });
            InputChain {
                files: files.into_iter().map(|(_, f)| f).collect(),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_apiserver_rotated_names_are_recognised() {
        assert_eq!(
            rotated_name("audit-2024-07-15T09-00-00.000.log"),
            Some(("2024-07-15T09-00-00.000".into(), "audit.log".into()))
        );
        assert_eq!(
            rotated_name("audit-2024-07-15T09-00-00.000.log.gz"),
            Some(("2024-07-15T09-00-00.000".into(), "audit.log".into()))
        );
        assert_eq!(
            rotated_name("kube-apiserver-audit-2024-07-15T09-00-00.000.log"),
            Some((
                "2024-07-15T09-00-00.000".into(),
                "kube-apiserver-audit.log".into()
            ))
        );
        assert_eq!(rotated_name("audit.log"), None);
        assert_eq!(rotated_name("audit-2024-07-15.log"), None);
    }

    #[test]
    fn directories_globs_and_rotation_give_one_chain_per_server() {
        let dir = tempfile::tempdir().unwrap();
        for node in ["node1", "node2"] {
            std::fs::create_dir(dir.path().join(node)).unwrap();
            for f in [
                "audit.log",
                "audit-2024-07-15T10-00-00.000.log.gz",
                "audit-2024-07-15T09-00-00.000.log",
            ] {
                std::fs::write(dir.path().join(node).join(f), b"").unwrap();
            }
        }
        let root = dir.path().display().to_string();
        let chains = expand(&[format!("{root}/node*/audit*.log*")]).unwrap();
        assert_eq!(chains.len(), 2);
        for (chain, node) in chains.iter().zip(["node1", "node2"]) {
            let names: Vec<&str> = chain
                .files
                .iter()
                .map(|f| f.rsplit('/').next().unwrap())
                .collect();
            assert_eq!(
                names,
                [
                    "audit-2024-07-15T09-00-00.000.log",
                    "audit-2024-07-15T10-00-00.000.log.gz",
                    "audit.log"
                ]
            );
            assert!(chain.files[0].contains(node));
        }
        let by_dir = expand(&[format!("{root}/node2")]).unwrap();
        assert_eq!(by_dir.len(), 1);
        assert_eq!(by_dir[0].files.len(), 3);
        assert!(matches!(
            expand(&[format!("{root}/nothing*.log")]),
            Err(InputsError::NotFound(_))
        ));
        // A plain path that does not exist is kept: opening it gives the OS's error.
        assert_eq!(
            expand(&[format!("{root}/missing.log")]).unwrap()[0].files,
            [format!("{root}/missing.log")]
        );
    }
}
