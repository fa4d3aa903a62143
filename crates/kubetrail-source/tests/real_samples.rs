//! Every real audit event shipped in `testdata/audit-samples` parses.

use std::path::{Path, PathBuf};

use kubetrail_source::EventReader;

fn sample_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/audit-samples");
    let mut out = vec![];
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e != "md" && e != "yaml") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_sample_event_parses() {
    let files = sample_files();
    assert!(files.len() > 60, "samples missing: {}", files.len());
    let mut normalised = 0;
    let mut raw = 0;
    for f in &files {
        let is_raw = f.components().any(|c| {
            c.as_os_str() == "raw" || c.as_os_str() == "otel-collector-contrib-cloud-exports"
        });
        for rec in EventReader::open(f.to_str().unwrap()).unwrap() {
            match rec.unwrap() {
                Ok(_) => {
                    if is_raw {
                        raw += 1
                    } else {
                        normalised += 1
                    }
                }
                // Some raw originals are not audit events at all (Azure envelopes, DeleteOptions
                // bodies); the normalised copies must all parse.
                Err(m) => assert!(is_raw, "{m}"),
            }
        }
    }
    assert_eq!(normalised, 266, "MANIFEST.md counts 266 events");
    assert!(raw > 0);
}
