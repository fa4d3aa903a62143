//! End-to-end checks of generated streams: re-parse the text and hold it against the ground
//! truth and against what a real API server would write.

use kubetrail_gen::{GeneratedStream, GroundTruth, RolloutScenario, TruthObject, VolumeScenario};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};

const MUTATING: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];

fn parse_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (fixed width, so string order is time order).
fn is_audit_time(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 27
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            26 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// Microseconds since midnight of an audit timestamp (same-day streams only).
fn micros_of_day(s: &str) -> i64 {
    let n = |r: std::ops::Range<usize>| s[r].parse::<i64>().unwrap();
    ((n(11..13) * 60 + n(14..16)) * 60 + n(17..19)) * 1_000_000 + n(20..26)
}

fn is_uuid_v4(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && s.chars()
            .all(|c| c == '-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        && parts[2].starts_with('4')
        && matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b')
}

fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

fn resource(e: &Value) -> Option<&str> {
    s(e, &["objectRef", "resource"])
}

fn is_mutating_request(e: &Value) -> bool {
    MUTATING.contains(&s(e, &["verb"]).unwrap())
        && !matches!(resource(e), Some("leases" | "events") | None)
}

fn is_noise(e: &Value) -> bool {
    matches!(s(e, &["verb"]).unwrap(), "get" | "list" | "watch")
        || matches!(resource(e), Some("leases") | None)
}

/// The object a final line is about: objectRef name, or for generateName creates the name in
/// the responseObject.
fn target(e: &Value) -> (String, String, String) {
    let name = s(e, &["objectRef", "name"])
        .or_else(|| s(e, &["responseObject", "metadata", "name"]))
        .unwrap();
    (
        s(e, &["objectRef", "namespace"]).unwrap().into(),
        resource(e).unwrap().into(),
        name.into(),
    )
}

fn check_well_formed(events: &[Value]) {
    let mut prev = "";
    for e in events {
        for k in [
            "level",
            "auditID",
            "stage",
            "requestURI",
            "verb",
            "user",
            "requestReceivedTimestamp",
            "stageTimestamp",
        ] {
            assert!(e.get(k).is_some(), "missing {k}: {e}");
        }
        assert_eq!(s(e, &["kind"]), Some("Event"));
        assert_eq!(s(e, &["apiVersion"]), Some("audit.k8s.io/v1"));
        assert!(s(e, &["user", "username"]).is_some());
        assert!(is_uuid_v4(s(e, &["auditID"]).unwrap()), "{e}");
        let rr = s(e, &["requestReceivedTimestamp"]).unwrap();
        let st = s(e, &["stageTimestamp"]).unwrap();
        assert!(is_audit_time(rr) && is_audit_time(st), "{rr} {st}");
        assert!(st >= rr, "stage before receipt: {e}");
        assert!(st >= prev, "out of order: {prev} then {st}");
        prev = st;
        let stage = s(e, &["stage"]).unwrap();
        assert!(["RequestReceived", "ResponseStarted", "ResponseComplete"].contains(&stage));
        if stage == "RequestReceived" {
            assert_eq!(rr, st);
            for k in [
                "responseStatus",
                "responseObject",
                "requestObject",
                "annotations",
            ] {
                assert!(e.get(k).is_none(), "RequestReceived with {k}: {e}");
            }
        } else {
            let code = e["responseStatus"]["code"].as_u64().unwrap();
            assert!(e["responseStatus"]["metadata"].is_object());
            if code >= 400 {
                assert_eq!(s(e, &["responseStatus", "status"]), Some("Failure"));
                assert!(s(e, &["responseStatus", "reason"]).is_some());
                assert!(s(e, &["responseStatus", "message"]).is_some());
            }
            assert_eq!(
                s(e, &["annotations", "authorization.k8s.io/decision"]),
                Some("allow")
            );
            assert!(s(e, &["annotations", "authorization.k8s.io/reason"]).is_some());
        }
        if s(e, &["level"]) == Some("Metadata") {
            assert!(e.get("requestObject").is_none() && e.get("responseObject").is_none());
        }
    }
}

/// Recounts everything the ground truth claims, from the parsed lines alone.
fn check_truth(events: &[Value], truth: &GroundTruth) {
    assert_eq!(events.len(), truth.total_lines);
    assert_eq!(
        truth.total_lines,
        truth.mutating_lines + truth.kube_event_lines + truth.noise_events
    );

    let mut mutating_ids = BTreeSet::new();
    let mut failed_ids = BTreeSet::new();
    let mut event_ids = BTreeSet::new();
    let (mut mutating_lines, mut event_lines, mut noise_lines) = (0, 0, 0);
    let mut per_object: HashMap<(String, String, String), BTreeSet<String>> = HashMap::new();
    let mut per_object_failed: HashMap<(String, String, String), usize> = HashMap::new();
    // Pod creates carry no name on RequestReceived; attribute via the final line's auditID.
    for e in events {
        let id = s(e, &["auditID"]).unwrap().to_string();
        if is_mutating_request(e) {
            mutating_lines += 1;
            mutating_ids.insert(id.clone());
            if s(e, &["stage"]) == Some("ResponseComplete") {
                let key = target(e);
                per_object
                    .entry(key.clone())
                    .or_default()
                    .insert(id.clone());
                if e["responseStatus"]["code"].as_u64().unwrap() >= 400 {
                    failed_ids.insert(id);
                    *per_object_failed.entry(key).or_default() += 1;
                }
            }
        } else if resource(e) == Some("events") {
            event_lines += 1;
            event_ids.insert(id);
        } else {
            assert!(is_noise(e), "unclassified line: {e}");
            noise_lines += 1;
        }
    }
    assert_eq!(mutating_ids.len(), truth.mutating_requests);
    assert_eq!(failed_ids.len(), truth.failed_requests);
    assert_eq!(event_ids.len(), truth.kube_events);
    assert_eq!(mutating_lines, truth.mutating_lines);
    assert_eq!(event_lines, truth.kube_event_lines);
    assert_eq!(noise_lines, truth.noise_events);

    // Every targeted object is in the truth, with the right request count.
    assert_eq!(per_object.len(), truth.objects.len());
    for o in &truth.objects {
        let key = (o.namespace.clone(), o.resource.clone(), o.name.clone());
        let ids = per_object
            .get(&key)
            .unwrap_or_else(|| panic!("no requests for {o:?}"));
        assert_eq!(ids.len(), o.requests, "{o:?}");
        assert_eq!(
            per_object_failed.get(&key).copied().unwrap_or(0),
            o.failed_requests,
            "{o:?}"
        );
    }
    assert_eq!(
        truth.objects.iter().map(|o| o.requests).sum::<usize>(),
        truth.mutating_requests
    );

    // Ownership: pod → ReplicaSet → Deployment, and uids match the API server's responses.
    let by_key: HashMap<(&str, &str, &str), &TruthObject> = truth
        .objects
        .iter()
        .map(|o| {
            (
                (o.namespace.as_str(), o.resource.as_str(), o.name.as_str()),
                o,
            )
        })
        .collect();
    let mut uids = BTreeSet::new();
    for o in &truth.objects {
        assert!(uids.insert(o.uid.clone()), "duplicate uid");
        match o.resource.as_str() {
            "deployments" => assert!(o.parent.is_none()),
            "replicasets" => {
                let (r, n) = o.parent.as_ref().unwrap();
                assert_eq!(r, "deployments");
                assert!(by_key.contains_key(&(o.namespace.as_str(), "deployments", n.as_str())));
                assert!(o.name.starts_with(&format!("{n}-")));
            }
            "pods" => {
                let (r, n) = o.parent.as_ref().unwrap();
                assert_eq!(r, "replicasets");
                let rs = by_key[&(o.namespace.as_str(), "replicasets", n.as_str())];
                let (dr, _) = rs.parent.as_ref().unwrap();
                assert_eq!(dr, "deployments");
                assert_eq!(truth.root_of(o).unwrap().resource, "deployments");
            }
            other => panic!("unexpected truth resource {other}"),
        }
    }
    for e in events {
        if s(e, &["stage"]) != Some("ResponseComplete") || !is_mutating_request(e) {
            continue;
        }
        if let Some(uid) = s(e, &["responseObject", "metadata", "uid"]) {
            let (ns, r, n) = target(e);
            assert_eq!(by_key[&(ns.as_str(), r.as_str(), n.as_str())].uid, uid);
        }
    }
}

fn default_stream() -> GeneratedStream {
    RolloutScenario::default().generate()
}

#[test]
fn same_seed_same_bytes_different_seed_different_bytes() {
    let a = default_stream();
    let b = default_stream();
    assert_eq!(a.to_json_lines(), b.to_json_lines());
    assert_eq!(a.truth, b.truth);
    let c = RolloutScenario {
        seed: 2,
        ..Default::default()
    }
    .generate();
    assert_ne!(a.to_json_lines(), c.to_json_lines());
    let d = VolumeScenario {
        seed: 9,
        namespaces: 2,
        deployments_per_namespace: 2,
        replicas: 2,
        ..Default::default()
    };
    assert_eq!(d.generate().to_json_lines(), d.generate().to_json_lines());
}

#[test]
fn default_rollout_is_well_formed_and_matches_its_truth() {
    let stream = default_stream();
    let text = stream.to_json_lines();
    assert!(text.ends_with('\n'));
    let events = parse_lines(&text);
    assert_eq!(events, stream.events);
    check_well_formed(&events);
    check_truth(&events, &stream.truth);
}

#[test]
fn the_rollout_story() {
    let sc = RolloutScenario::default();
    let stream = sc.generate();
    let t = &stream.truth;
    let final_lines: Vec<&Value> = stream
        .events
        .iter()
        .filter(|e| s(e, &["stage"]) == Some("ResponseComplete"))
        .collect();

    // Objects: one Deployment, two ReplicaSets, 2 × replicas pods, old ones deleted.
    let count = |r: &str| t.objects.iter().filter(|o| o.resource == r).count();
    assert_eq!(count("deployments"), 1);
    assert_eq!(count("replicasets"), 2);
    assert_eq!(count("pods"), 2 * sc.replicas as usize);
    assert_eq!(
        t.objects.iter().filter(|o| o.deleted).count(),
        sc.replicas as usize
    );
    assert_eq!(t.roots().count(), 1);
    let rs: Vec<&TruthObject> = t.children_of("shop", "deployments", "web").collect();
    assert_eq!(rs.len(), 2);
    for r in &rs {
        assert_eq!(
            t.children_of("shop", "replicasets", &r.name).count(),
            sc.replicas as usize
        );
    }

    // 1. kubectl create, generation 1, full bodies.
    let create = final_lines
        .iter()
        .find(|e| s(e, &["verb"]) == Some("create") && resource(e) == Some("deployments"))
        .unwrap();
    assert_eq!(s(create, &["user", "username"]), Some("kubernetes-admin"));
    assert!(
        s(create, &["userAgent"])
            .unwrap()
            .starts_with("kubectl/v1.30.2 (linux/amd64) kubernetes/")
    );
    assert_eq!(s(create, &["level"]), Some("RequestResponse"));
    assert_eq!(create["responseObject"]["metadata"]["generation"], 1);
    assert!(
        create["requestObject"]["spec"]["template"]["spec"]["containers"][0]["image"]
            == "nginx:1.25"
    );
    assert!(s(create, &["responseObject", "metadata", "resourceVersion"]).is_some());

    // 2. ReplicaSets owned by the Deployment.
    let dep_uid = s(create, &["responseObject", "metadata", "uid"]).unwrap();
    let rs_creates: Vec<&&Value> = final_lines
        .iter()
        .filter(|e| s(e, &["verb"]) == Some("create") && resource(e) == Some("replicasets"))
        .collect();
    assert_eq!(rs_creates.len(), 2);
    for e in &rs_creates {
        assert_eq!(
            s(e, &["user", "username"]),
            Some("system:serviceaccount:kube-system:deployment-controller")
        );
        let owner = &e["responseObject"]["metadata"]["ownerReferences"][0];
        assert_eq!(owner["uid"], dep_uid);
        assert_eq!(owner["kind"], "Deployment");
        assert_eq!(owner["controller"], true);
        assert_eq!(owner["blockOwnerDeletion"], true);
    }

    // 3. Pod creates: generateName, no objectRef name, owner = ReplicaSet.
    let pod_creates: Vec<&&Value> = final_lines
        .iter()
        .filter(|e| {
            s(e, &["verb"]) == Some("create")
                && resource(e) == Some("pods")
                && e["objectRef"].get("subresource").is_none()
        })
        .collect();
    assert_eq!(pod_creates.len(), 2 * sc.replicas as usize);
    for e in &pod_creates {
        assert!(
            e["objectRef"].get("name").is_none(),
            "generateName create must have no objectRef.name"
        );
        let gen_name = s(e, &["requestObject", "metadata", "generateName"]).unwrap();
        assert!(e["requestObject"]["metadata"].get("name").is_none());
        let name = s(e, &["responseObject", "metadata", "name"]).unwrap();
        assert!(
            name.starts_with(gen_name) && name.len() == gen_name.len() + 5,
            "{name}"
        );
        assert_eq!(
            s(e, &["user", "username"]),
            Some("system:serviceaccount:kube-system:replicaset-controller")
        );
        assert_eq!(
            e["responseObject"]["metadata"]["ownerReferences"][0]["kind"],
            "ReplicaSet"
        );
    }
    // The RequestReceived line of a create has no name either.
    let named_in_url = |e: &Value| e["objectRef"].get("subresource").is_some();
    for e in stream.events.iter().filter(|e| {
        s(e, &["stage"]) == Some("RequestReceived")
            && s(e, &["verb"]) == Some("create")
            && !named_in_url(e)
    }) {
        assert!(e["objectRef"].get("name").is_none(), "{e}");
    }

    // 4. Bindings by the scheduler onto the scenario's nodes.
    let bindings: Vec<&&Value> = final_lines
        .iter()
        .filter(|e| s(e, &["objectRef", "subresource"]) == Some("binding"))
        .collect();
    assert_eq!(bindings.len(), 2 * sc.replicas as usize);
    for e in &bindings {
        assert_eq!(s(e, &["user", "username"]), Some("system:kube-scheduler"));
        assert_eq!(s(e, &["requestObject", "kind"]), Some("Binding"));
        assert!(
            sc.nodes
                .iter()
                .any(|n| Some(n.as_str()) == s(e, &["requestObject", "target", "name"]))
        );
        assert_eq!(
            s(e, &["objectRef", "uid"]),
            s(e, &["requestObject", "metadata", "uid"])
        );
    }

    // 5. Kubelet status patches, at least 3 per pod, by the pod's node.
    let mut patches: BTreeMap<&str, usize> = BTreeMap::new();
    for e in final_lines.iter().filter(|e| {
        s(e, &["objectRef", "subresource"]) == Some("status") && resource(e) == Some("pods")
    }) {
        assert_eq!(s(e, &["verb"]), Some("patch"));
        let node = e["responseObject"]["spec"]["nodeName"].as_str().unwrap();
        assert_eq!(
            s(e, &["user", "username"]).unwrap(),
            format!("system:node:{node}")
        );
        *patches
            .entry(s(e, &["objectRef", "name"]).unwrap())
            .or_default() += 1;
    }
    assert_eq!(patches.len(), 2 * sc.replicas as usize);
    assert!(patches.values().all(|&n| n >= 3));

    // Kubernetes Events, not audit events: involvedObject points at the object.
    let reasons: BTreeSet<&str> = final_lines
        .iter()
        .filter(|e| resource(e) == Some("events"))
        .map(|e| s(e, &["requestObject", "reason"]).unwrap())
        .collect();
    for r in [
        "Scheduled",
        "Pulled",
        "Created",
        "Started",
        "Killing",
        "ScalingReplicaSet",
        "SuccessfulCreate",
        "SuccessfulDelete",
    ] {
        assert!(reasons.contains(r), "no {r} event");
    }
    for e in final_lines.iter().filter(|e| resource(e) == Some("events")) {
        // core/v1 names `involvedObject`; events.k8s.io/v1 (kube-scheduler's) `regarding`.
        let body = &e["requestObject"];
        let inv = if body["apiVersion"] == "events.k8s.io/v1" {
            assert_eq!(e["objectRef"]["apiGroup"], "events.k8s.io");
            &body["regarding"]
        } else {
            &body["involvedObject"]
        };
        assert!(
            t.object_by_uid(inv["uid"].as_str().unwrap()).is_some(),
            "{inv}"
        );
    }

    // 6. kubectl patch → generation 2, strategic merge patch body.
    let patch = final_lines
        .iter()
        .find(|e| s(e, &["verb"]) == Some("patch") && resource(e) == Some("deployments"))
        .unwrap();
    assert_eq!(patch["responseObject"]["metadata"]["generation"], 2);
    assert_eq!(
        patch["requestObject"]["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.27"
    );

    // 7. Old pods: graceful delete by the replicaset controller, then the kubelet's final one.
    let old_rs = &rs_creates[0]["objectRef"]["name"];
    for pod in t.objects.iter().filter(|o| o.deleted) {
        assert_eq!(pod.parent.as_ref().unwrap().1, old_rs.as_str().unwrap());
        let deletes: Vec<&&Value> = final_lines
            .iter()
            .filter(|e| {
                s(e, &["verb"]) == Some("delete") && s(e, &["objectRef", "name"]) == Some(&pod.name)
            })
            .collect();
        assert_eq!(deletes.len(), 2);
        assert_eq!(
            s(deletes[0], &["user", "username"]),
            Some("system:serviceaccount:kube-system:replicaset-controller")
        );
        assert_eq!(
            deletes[0]["responseObject"]["metadata"]["deletionGracePeriodSeconds"],
            30
        );
        assert!(
            s(deletes[1], &["user", "username"])
                .unwrap()
                .starts_with("system:node:")
        );
        assert_eq!(deletes[1]["requestObject"]["gracePeriodSeconds"], 0);
        assert_eq!(
            s(deletes[1], &["requestObject", "preconditions", "uid"]),
            Some(pod.uid.as_str())
        );
    }
    // Scaling via `update replicasets`, both sets.
    let scaled: BTreeSet<&str> = final_lines
        .iter()
        .filter(|e| {
            s(e, &["verb"]) == Some("update")
                && resource(e) == Some("replicasets")
                && e["objectRef"].get("subresource").is_none()
        })
        .map(|e| s(e, &["objectRef", "name"]).unwrap())
        .collect();
    assert_eq!(scaled.len(), 2);

    // 8. Noise and the one conflict.
    assert_eq!(t.failed_requests, 1);
    let conflict = final_lines
        .iter()
        .find(|e| e["responseStatus"]["code"] == 409)
        .unwrap();
    assert_eq!(s(conflict, &["responseStatus", "reason"]), Some("Conflict"));
    let verbs: BTreeSet<&str> = final_lines
        .iter()
        .map(|e| s(e, &["verb"]).unwrap())
        .collect();
    for v in [
        "get", "list", "watch", "update", "patch", "create", "delete",
    ] {
        assert!(verbs.contains(v), "no {v}");
    }
    assert!(
        stream
            .events
            .iter()
            .any(|e| s(e, &["stage"]) == Some("ResponseStarted"))
    );
    assert!(stream.events.iter().any(|e| resource(e) == Some("leases")));

    // Latencies 1–30 ms for everything but watches; the final state is the new image.
    for e in final_lines
        .iter()
        .filter(|e| s(e, &["verb"]) != Some("watch"))
    {
        let d = micros_of_day(s(e, &["stageTimestamp"]).unwrap())
            - micros_of_day(s(e, &["requestReceivedTimestamp"]).unwrap());
        assert!((1000..=30_000).contains(&d), "latency {d}µs: {e}");
    }
    let last_dep = final_lines
        .iter()
        .rev()
        .find(|e| {
            resource(e) == Some("deployments")
                && e.get("responseObject").is_some()
                && e["responseStatus"]["code"] == 200
        })
        .unwrap();
    let status = &last_dep["responseObject"]["status"];
    assert_eq!(status["updatedReplicas"], sc.replicas);
    assert_eq!(status["availableReplicas"], sc.replicas);
    assert_eq!(status["conditions"][1]["reason"], "NewReplicaSetAvailable");
}

#[test]
fn request_received_pairs() {
    let stream = default_stream();
    let mut stages: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for e in &stream.events {
        stages
            .entry(s(e, &["auditID"]).unwrap())
            .or_default()
            .push(s(e, &["stage"]).unwrap());
    }
    for e in stream.events.iter().filter(|e| is_mutating_request(e)) {
        let st = &stages[s(e, &["auditID"]).unwrap()];
        assert_eq!(st, &["RequestReceived", "ResponseComplete"], "{e}");
    }
    let off = RolloutScenario {
        with_request_received_stage: false,
        ..Default::default()
    }
    .generate();
    assert!(
        off.events
            .iter()
            .all(|e| s(e, &["stage"]) != Some("RequestReceived"))
    );
    check_well_formed(&off.events);
    check_truth(&off.events, &off.truth);
    // Same story either way: the same objects and request counts.
    assert_eq!(off.truth.objects, stream.truth.objects);
    assert_eq!(off.truth.mutating_requests, stream.truth.mutating_requests);
    assert_eq!(off.truth.mutating_lines * 2, stream.truth.mutating_lines);
}

#[test]
fn without_noise_only_the_story_remains() {
    let stream = RolloutScenario {
        with_noise: false,
        with_request_received_stage: false,
        ..Default::default()
    }
    .generate();
    check_well_formed(&stream.events);
    check_truth(&stream.events, &stream.truth);
    assert_eq!(stream.truth.noise_events, 0);
    assert_eq!(stream.truth.failed_requests, 0);
    assert_eq!(
        stream.truth.total_lines,
        stream.truth.mutating_requests + stream.truth.kube_events
    );
}

#[test]
fn other_shapes_stay_consistent() {
    for (seed, replicas, nodes) in [
        (3, 0, 1),
        (4, 1, 1),
        (5, 2, 3),
        (6, 5, 2),
        (7, 10, 4),
        (8, 16, 3),
    ] {
        let sc = RolloutScenario {
            seed,
            replicas,
            namespace: "team-a".into(),
            deployment: "api".into(),
            nodes: (1..=nodes).map(|i| format!("node-{i}")).collect(),
            ..Default::default()
        };
        let stream = sc.generate();
        let events = parse_lines(&stream.to_json_lines());
        check_well_formed(&events);
        check_truth(&events, &stream.truth);
        assert_eq!(
            stream
                .truth
                .objects
                .iter()
                .filter(|o| o.resource == "pods")
                .count(),
            2 * replicas as usize
        );
        assert_eq!(
            stream.truth.objects.iter().filter(|o| o.deleted).count(),
            replicas as usize
        );
    }
}

#[test]
fn event_lists_carry_the_same_events() {
    let stream = default_stream();
    let lists = stream.to_event_lists(50);
    assert_eq!(lists.len(), stream.events.len().div_ceil(50));
    let mut items = Vec::new();
    for body in &lists {
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["kind"], "EventList");
        assert_eq!(v["apiVersion"], "audit.k8s.io/v1");
        let batch = v["items"].as_array().unwrap();
        assert!(!batch.is_empty() && batch.len() <= 50);
        items.extend(batch.iter().cloned());
    }
    assert_eq!(items, stream.events);
    assert_eq!(stream.to_event_lists(0).len(), stream.events.len());
}

#[test]
fn lines_use_the_api_server_key_order() {
    let text = default_stream().to_json_lines();
    for line in text.lines() {
        assert!(
            line.starts_with(r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":""#),
            "{line}"
        );
    }
    assert!(
        text.contains(r#""objectRef":{"resource":"pods","namespace":"shop","apiVersion":"v1"}"#)
    );
    assert!(
        text.contains(
            r#""responseObject":{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web-"#
        )
    );
}

#[test]
fn volume_streaming_equals_in_memory() {
    let v = VolumeScenario {
        seed: 11,
        namespaces: 2,
        deployments_per_namespace: 3,
        replicas: 2,
        rollouts_per_deployment: 2,
        with_noise: true,
    };
    let stream = v.generate();
    let mut buf = Vec::new();
    let truth = v.write_json_lines(&mut buf).unwrap();
    assert_eq!(truth, stream.truth);
    let text = String::from_utf8(buf).unwrap();
    assert_eq!(text, stream.to_json_lines());
    let events = parse_lines(&text);
    check_well_formed(&events);
    check_truth(&events, &truth);
    assert_eq!(truth.roots().count(), 6);
    assert_eq!(
        truth
            .objects
            .iter()
            .filter(|o| o.resource == "replicasets")
            .count(),
        6 * 3
    );
    assert_eq!(
        truth
            .objects
            .iter()
            .filter(|o| o.resource == "pods")
            .count(),
        6 * 3 * 2
    );
    assert_eq!(truth.failed_requests, 6);
    let namespaces: BTreeSet<&str> = truth.objects.iter().map(|o| o.namespace.as_str()).collect();
    assert_eq!(namespaces.len(), 2);
}

#[test]
fn volume_without_noise_is_one_line_per_request() {
    let v = VolumeScenario {
        seed: 3,
        namespaces: 3,
        deployments_per_namespace: 2,
        replicas: 1,
        rollouts_per_deployment: 0,
        with_noise: false,
    };
    let stream = v.generate();
    check_well_formed(&stream.events);
    check_truth(&stream.events, &stream.truth);
    assert_eq!(stream.truth.noise_events, 0);
    assert_eq!(
        stream.truth.total_lines,
        stream.truth.mutating_requests + stream.truth.kube_events
    );
    assert_eq!(
        stream
            .truth
            .objects
            .iter()
            .filter(|o| o.resource == "pods")
            .count(),
        6
    );
    let empty = VolumeScenario {
        namespaces: 0,
        ..Default::default()
    }
    .generate();
    assert!(empty.events.is_empty());
    assert_eq!(empty.truth, GroundTruth::default());
}

#[test]
fn uids_and_audit_ids_are_unique() {
    let stream = default_stream();
    let mut finals = BTreeSet::new();
    for e in stream
        .events
        .iter()
        .filter(|e| s(e, &["stage"]) == Some("ResponseComplete"))
    {
        assert!(
            finals.insert(s(e, &["auditID"]).unwrap()),
            "auditID reused: {e}"
        );
    }
    for o in &stream.truth.objects {
        assert!(is_uuid_v4(&o.uid));
    }
}
