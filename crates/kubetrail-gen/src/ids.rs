//! Seeded randomness and the identifier formats Kubernetes uses.
//!
//! Every random choice comes from a [`ChaCha8Rng`]: unlike `StdRng` its output is specified
//! and stable across platforms and `rand` releases, so a seed names the same stream forever.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The generator's random source.
pub(crate) type GenRng = ChaCha8Rng;

/// An independent random stream for `(seed, stream)`.
pub(crate) fn rng_for(seed: u64, stream: u64) -> GenRng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(stream);
    r
}

/// Random stream numbers, so that each part of a scenario draws from its own stream and adding
/// a family or noise source does not shift the others.
pub(crate) mod streams {
    /// Cluster identity (service-account uids, lease uids, initial resourceVersion).
    pub const CLUSTER: u64 = 1;
    /// Runtime noise (lease renewals, watch restarts).
    pub const NOISE: u64 = 2;
    /// Volume scenario schedule (family start times).
    pub const SCHEDULE: u64 = 3;
    /// Family `i` plans from stream `FAMILY_BASE + i`.
    pub const FAMILY_BASE: u64 = 1 << 32;
}

/// A random version-4 UUID (`xxxxxxxx-xxxx-4xxx-[89ab]xxx-xxxxxxxxxxxx`), like the API server's
/// audit IDs and object UIDs.
pub(crate) fn uuid(rng: &mut GenRng) -> String {
    let mut b = [0u8; 16];
    rng.fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = |r: std::ops::Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
    format!(
        "{}-{}-{}-{}-{}",
        h(0..4),
        h(4..6),
        h(6..8),
        h(8..10),
        h(10..16)
    )
}

/// The alphabet of `k8s.io/apimachinery/pkg/util/rand.String` (no vowels, no confusable digits),
/// used for `generateName` suffixes and `pod-template-hash` values.
const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// A random `n`-character name suffix in the API server's alphabet (`xk2fq`).
pub(crate) fn k8s_suffix(rng: &mut GenRng, n: usize) -> String {
    (0..n)
        .map(|_| ALPHANUMS[rng.random_range(0..ALPHANUMS.len())] as char)
        .collect()
}

/// A random `pod-template-hash` (`78f5d695bd`): the deployment controller's safe-encoded FNV
/// hash of the pod template; 9 or 10 characters.
pub(crate) fn template_hash(rng: &mut GenRng) -> String {
    let n = if rng.random_bool(0.85) { 10 } else { 9 };
    k8s_suffix(rng, n)
}

/// `n` random lowercase hex digits.
pub(crate) fn hex(rng: &mut GenRng, n: usize) -> String {
    const HEX: &[u8] = b"0123456789abcdef";
    (0..n)
        .map(|_| HEX[rng.random_range(0..16)] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_is_v4() {
        let mut r = rng_for(7, 0);
        for _ in 0..100 {
            let u = uuid(&mut r);
            let parts: Vec<&str> = u.split('-').collect();
            assert_eq!(
                parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12]
            );
            assert!(parts[2].starts_with('4'));
            assert!(matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'));
        }
    }

    #[test]
    fn streams_are_reproducible_and_independent() {
        let a = uuid(&mut rng_for(1, 5));
        assert_eq!(a, uuid(&mut rng_for(1, 5)));
        assert_ne!(a, uuid(&mut rng_for(1, 6)));
        assert_ne!(a, uuid(&mut rng_for(2, 5)));
    }
}
