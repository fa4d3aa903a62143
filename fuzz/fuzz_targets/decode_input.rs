//! Replay's decoder on any bytes: JSON lines, EventLists, arrays, pretty-printed documents,
//! the cloud exports, gzip of any of them. It must never panic or hang, and every record must
//! come out as an event or as a malformed record with its line — never lost silently.
#![no_main]

use std::io::Cursor;

use kubetrail_source::EventReader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A small record limit, so the skip-without-holding path is reached too.
    let Ok(reader) = EventReader::from_raw("fuzz", Cursor::new(data.to_vec())) else {
        return;
    };
    let reader = reader.with_max_record_bytes(16 << 10);
    for item in reader {
        match item {
            Ok(Ok(event)) => {
                // What a decoded event is used for next must not panic either.
                let _ = event.end_time();
                let _ = serde_json::to_vec(&event);
            }
            Ok(Err(malformed)) => assert!(malformed.line >= 1, "{malformed:?}"),
            Err(_) => break,
        }
    }
});
