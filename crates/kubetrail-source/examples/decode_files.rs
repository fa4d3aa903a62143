//! Decode speed of whole inputs: each file through `EventReader` (the decoder replay and the
//! webhook share), the fastest of `--rounds` runs, as events/s and MB/s.
//!
//! `cargo run --release -p kubetrail-source --example decode_files -- [--rounds N] FILE…`
//!
//! Used for BENCHMARKS.md's pretty-printed input row (a 2,000-event pretty EventList against
//! the same events as JSON lines). Prints numbers; asserts nothing.

use std::time::{Duration, Instant};

use kubetrail_source::EventReader;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut rounds = 5;
    if let Some(i) = args.iter().position(|a| a == "--rounds") {
        rounds = args.get(i + 1).and_then(|n| n.parse().ok()).unwrap_or(5);
        args.drain(i..(i + 2).min(args.len()));
    }
    for path in &args {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let mut best = Duration::MAX;
        let (mut events, mut malformed) = (0u64, 0u64);
        for _ in 0..rounds {
            let Ok(reader) = EventReader::open(path) else {
                eprintln!("{path}: cannot open");
                break;
            };
            let t = Instant::now();
            (events, malformed) = (0, 0);
            for item in reader {
                match item {
                    Ok(Ok(_)) => events += 1,
                    Ok(Err(_)) => malformed += 1,
                    Err(e) => {
                        eprintln!("{path}: {e}");
                        break;
                    }
                }
            }
            best = best.min(t.elapsed());
        }
        let secs = best.as_secs_f64();
        println!(
            "{path}: {events} events ({malformed} malformed), {:.1} MB in {:.1} ms: {:.0} events/s, {:.1} MB/s",
            size as f64 / 1e6,
            secs * 1e3,
            events as f64 / secs,
            size as f64 / 1e6 / secs
        );
    }
}
