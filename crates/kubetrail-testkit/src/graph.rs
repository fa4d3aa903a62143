//! Walking the span graph, for the tests that check a family's spans all hang together. The
//! pipeline's own spans and the spans Jaeger gives back are different types, but "everything
//! reachable from the root by parent edges and links" is one walk, kept here once.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

/// Every node reachable from `root` (itself included) down the parent → child edges of
/// `children` and along the edges `links(node)` gives (the spans a span links to). Each node
/// is visited once, so cycles (links back to an ancestor) end the walk.
pub fn reachable<K, I>(
    root: K,
    children: &HashMap<K, Vec<K>>,
    mut links: impl FnMut(&K) -> I,
) -> HashSet<K>
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
        stack.extend(children.get(&k).into_iter().flatten().cloned());
        stack.extend(links(&k));
    }
    seen
}

#[cfg(test)]
mod tests {
    #[test]
    fn walks_once_through_cycles() {
        let children = [(1, vec![2]), (3, vec![4])].into_iter().collect();
        // 1 links to 3, 2 back to 1.
        let links = |n: &u32| -> Vec<u32> {
            match n {
                1 => vec![3],
                2 => vec![1],
                _ => vec![],
            }
        };
        let got = super::reachable(1, &children, links);
        assert_eq!(got, [1, 2, 3, 4].into_iter().collect());
        assert_eq!(
            super::reachable(3, &children, links),
            [3, 4].into_iter().collect()
        );
        assert_eq!(
            super::reachable(5, &children, links),
            [5].into_iter().collect()
        );
    }
}
