//! Walking the span graph, for the tests that check a family's spans all hang together. The
//! pipeline's own spans and the spans Jaeger gives back are different types, but "everything
//! reachable from the root by parent edges and links" is one walk, kept here once.

use std::collections::HashSet;
use std::hash::Hash;

/// Every node reachable from `root` (itself included), where `next(node)` gives the nodes one
/// step on from `node` (its children, the spans it links to). Each node is visited once, so
/// cycles (links back to an ancestor) end the walk.
pub fn reachable<K, I>(root: K, mut next: impl FnMut(&K) -> I) -> HashSet<K>
where
    K: Clone + Eq + Hash,
    I: IntoIterator<Item = K>,
{
    let mut seen = HashSet::new();
    let mut stack = vec![root];
    while let Some(k) = stack.pop() {
        if !seen.insert(k.clone()) {
            continue;
        }
        stack.extend(next(&k));
    }
    seen
}

#[cfg(test)]
mod tests {
    #[test]
    fn walks_once_through_cycles() {
        let edges = |n: &u32| -> Vec<u32> {
            match n {
                1 => vec![2, 3],
                2 => vec![1],
                3 => vec![4],
                _ => vec![],
            }
        };
        let got = super::reachable(1, edges);
        assert_eq!(got, [1, 2, 3, 4].into_iter().collect());
        assert_eq!(super::reachable(5, edges), [5].into_iter().collect());
    }
}
