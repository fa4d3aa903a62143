//! Properties of `diff`.

use kubetrail_decorate::{Change, DiffConfig, diff};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Keys, including ones that need quoting in paths (`.`, `/`, spaces, brackets, quotes, `*`,
/// the empty key), and none that is built-in noise (`metadata`, `status`).
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-e]",
        1 => Just("a.b".to_owned()),
        1 => Just("example.com/x".to_owned()),
        1 => Just("with space".to_owned()),
        1 => Just("br[0]".to_owned()),
        1 => Just("q\"uote".to_owned()),
        1 => Just("*".to_owned()),
        1 => Just(String::new()),
        1 => Just("name".to_owned()),
    ]
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<bool>().prop_map(Value::from),
        (-5i64..5).prop_map(Value::from),
        "[a-c0-9 :.\n\"{-]{0,6}".prop_map(Value::from),
        Just(json!("true")),
        Just(json!("12")),
    ]
}

/// Objects of scalars, short lists of scalars and nested objects: no lists of objects (their
/// items are reported by key, which a path alone cannot put back).
fn plain_object() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        4 => scalar(),
        1 => prop::collection::vec(scalar(), 0..4).prop_map(Value::from),
    ];
    let tree = leaf.prop_recursive(3, 24, 4, |inner| {
        prop::collection::btree_map(key(), inner, 0..4)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    });
    prop::collection::btree_map(key(), tree, 0..5)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// Any JSON, lists of objects (keyed or not) included.
fn any_object() -> impl Strategy<Value = Value> {
    let leaf = scalar();
    let tree = leaf.prop_recursive(4, 48, 5, |inner| {
        prop_oneof![
            prop::collection::btree_map(key(), inner.clone(), 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            // Lists of named items, as containers are.
            prop::collection::vec((0u8..4, inner), 0..4).prop_map(|items| {
                Value::from(
                    items
                        .into_iter()
                        .map(|(n, v)| json!({"name": format!("n{n}"), "v": v}))
                        .collect::<Vec<_>>(),
                )
            }),
        ]
    });
    prop::collection::btree_map(key(), tree, 0..5)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

fn unbounded() -> DiffConfig {
    DiffConfig {
        max_changes: usize::MAX,
        max_value_bytes: usize::MAX,
        ..DiffConfig::default()
    }
}

/// Splits a path of keys (`a.b["x.y"]`) into its keys.
fn keys_of(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = path.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'.' {
            i += 1;
        } else if b[i] == b'[' {
            // ["…"]: a JSON string, then ']'.
            let mut de = serde_json::Deserializer::from_str(&path[i + 1..]).into_iter::<String>();
            let k = de.next().unwrap().unwrap();
            i += 1 + de.byte_offset();
            assert_eq!(b[i], b']', "{path}");
            i += 1;
            out.push(k);
        } else {
            let start = i;
            while i < b.len() && b[i] != b'.' && b[i] != b'[' {
                i += 1;
            }
            out.push(path[start..i].to_owned());
        }
    }
    out
}

/// A rendered value back to JSON: plain strings are shown bare, everything else as JSON.
fn value_of(rendered: &str) -> Value {
    serde_json::from_str(rendered).unwrap_or_else(|_| Value::from(rendered))
}

fn apply(target: &mut Value, c: &Change) {
    let keys = keys_of(&c.path);
    let (last, parents) = keys.split_last().unwrap();
    let mut node = target;
    for k in parents {
        let map = node.as_object_mut().unwrap();
        node = map
            .entry(k.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
    }
    let map = node.as_object_mut().unwrap();
    match &c.new {
        Some(v) => {
            map.insert(last.clone(), value_of(v));
        }
        None => {
            map.remove(last);
        }
    }
}

/// Drops what diff treats as absent: nulls and empty maps and lists (below the root).
fn prune(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), prune(v)))
                .filter(|(_, v)| match v {
                    Value::Null => false,
                    Value::Object(m) => !m.is_empty(),
                    Value::Array(a) => !a.is_empty(),
                    _ => true,
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_value_has_no_diff_with_itself(a in any_object()) {
        let (changes, more) = diff(&a, &a, &DiffConfig::default());
        prop_assert!(changes.is_empty());
        prop_assert_eq!(more, 0);
    }

    #[test]
    fn applying_the_changes_to_a_gives_b(a in plain_object(), b in plain_object()) {
        let (changes, more) = diff(&a, &b, &unbounded());
        prop_assert_eq!(more, 0);
        let mut got = a.clone();
        for c in &changes {
            apply(&mut got, c);
        }
        prop_assert_eq!(prune(&got), prune(&b), "changes: {:?}", changes);
    }

    #[test]
    fn changes_are_sorted_unique_capped_and_bounded(
        a in any_object(),
        b in any_object(),
        max_changes in 0usize..6,
        max_value_bytes in 0usize..40,
    ) {
        let cfg = DiffConfig { max_changes, max_value_bytes, ..DiffConfig::default() };
        let (changes, more) = diff(&a, &b, &cfg);
        // (max_value_bytes also decides whether a list of scalars is shown whole.)
        let uncapped = DiffConfig { max_changes: usize::MAX, ..cfg.clone() };
        let (all, none) = diff(&a, &b, &uncapped);
        prop_assert_eq!(none, 0);
        prop_assert_eq!(changes.len() + more, all.len());
        prop_assert!(changes.len() <= max_changes);
        prop_assert!(changes.windows(2).all(|w| w[0].path < w[1].path));
        for (c, full) in changes.iter().zip(&all) {
            prop_assert_eq!(&c.path, &full.path);
            for v in [&c.old, &c.new].into_iter().flatten() {
                // The length suffix alone may exceed a tiny limit.
                prop_assert!(v.len() <= max_value_bytes.max(24), "{} > {}", v, max_value_bytes);
            }
        }
        // Symmetry: the same paths change both ways, with old and new swapped.
        let (back, _) = diff(&b, &a, &uncapped);
        prop_assert_eq!(back.len(), all.len());
        for (x, y) in all.iter().zip(&back) {
            prop_assert_eq!(&x.path, &y.path);
            prop_assert_eq!(&x.old, &y.new);
        }
    }

    #[test]
    fn reordering_named_items_is_no_change(
        names in prop::collection::btree_set("[a-z]{1,6}", 1..6),
        seed in any::<u64>(),
    ) {
        let items: Vec<Value> = names.iter().map(|n| json!({"name": n, "image": format!("{n}:1")})).collect();
        let mut shuffled = items.clone();
        let len = shuffled.len();
        shuffled.rotate_left((seed as usize) % len);
        if seed % 2 == 0 {
            shuffled.reverse();
        }
        let a = json!({"spec": {"containers": items}});
        let b = json!({"spec": {"containers": shuffled}});
        let (changes, _) = diff(&a, &b, &DiffConfig::default());
        prop_assert!(changes.is_empty(), "{:?}", changes);
    }
}
