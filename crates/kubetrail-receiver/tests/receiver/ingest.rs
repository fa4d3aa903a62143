//! Accepting EventLists: real captures, generated streams, gzip, malformed items.

use kubetrail_testkit::ApiServerClient;
use serde_json::{Value, json};

use crate::common::*;

/// The webhook bodies captured by gitops-reverser are real `EventList`s: each is accepted
/// whole, and arrives in the queue in order, under the cluster named in the path.
#[tokio::test]
async fn real_eventlist_bodies_are_published_in_order() {
    let mut h = Harness::start(config()).await;
    let client = ApiServerClient::new(&h.url("/audit/gitops"));
    let dir = testdata("gitops-reverser/raw");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 4, "the four raw EventList captures");
    for file in files {
        let body = std::fs::read(&file).unwrap();
        let list: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(list["kind"], "EventList", "{}", file.display());
        let items = list["items"].as_array().unwrap().clone();
        assert!(!items.is_empty());

        let resp = client.post_raw("", body, &[]).await.unwrap();
        assert_eq!(resp.status, 200, "{}: {}", file.display(), resp.text());
        let answer = resp.json().unwrap();
        assert_eq!(answer["accepted"], items.len(), "{}", file.display());
        assert_eq!(answer["rejected"], json!([]));

        let batch = h.next_batch().await;
        assert_eq!(batch.cluster, "gitops");
        assert_eq!(
            audit_ids(std::slice::from_ref(&batch)),
            item_ids(&items),
            "{}",
            file.display()
        );
        // The source (one API server) is the client's address without its port: a server
        // opens several connections.
        let source = batch.source.as_deref().expect("the remote address");
        assert_eq!(source, "127.0.0.1");
        assert!(batch.received_at > 1_600_000_000_000_000_000);
    }
    h.server.stop().await;
}

/// OpenShift's 100-event real capture, sent the way the API server does it (batches of 30),
/// to `POST /audit`: every event arrives, in order, under the default cluster.
#[tokio::test]
async fn openshift_capture_through_the_default_cluster() {
    let mut h = Harness::start(kubetrail_receiver::ReceiverConfig {
        default_cluster: "ocp-412".to_owned(),
        ..config()
    })
    .await;
    let text = std::fs::read_to_string(testdata("openshift-cluster-logging-operator/audit_in.log"))
        .unwrap();
    let items: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(items.len(), 100);

    let report = ApiServerClient::new(&h.url("/audit"))
        .with_batch_size(30)
        .send_events(&items)
        .await
        .unwrap();
    assert!(report.all_delivered(), "{report:?}");
    assert_eq!(report.accepted, 100);
    assert_eq!(report.statuses(), vec![200; 4]);
    assert!(report.rejected().is_empty(), "{:?}", report.rejected());

    let batches = h.batches_with(100).await;
    assert_eq!(
        batches.iter().map(|b| b.events.len()).collect::<Vec<_>>(),
        vec![30, 30, 30, 10]
    );
    assert!(batches.iter().all(|b| b.cluster == "ocp-412"));
    assert_eq!(audit_ids(&batches), item_ids(&items));
    h.server.stop().await;
}

/// A generated stream, gzip-compressed, over several batches and two clusters.
#[tokio::test]
async fn generated_events_gzip_and_clusters() {
    let mut h = Harness::start(config()).await;
    let items = events(1000);
    let report = ApiServerClient::new(&h.url("/audit/gen-1"))
        .with_batch_size(250)
        .gzip(true)
        .send_events(&items)
        .await
        .unwrap();
    assert!(report.all_delivered(), "{report:?}");
    assert_eq!(report.accepted, 1000);
    let batches = h.batches_with(1000).await;
    assert_eq!(batches.len(), 4);
    assert!(batches.iter().all(|b| b.cluster == "gen-1"));
    assert_eq!(audit_ids(&batches), item_ids(&items));

    // Another cluster on the same server; an odd content type is tolerated (the body is JSON).
    let client = ApiServerClient::new(&h.url(""));
    let resp = client
        .post_raw(
            "/audit/gen-2",
            body_of(&items[..3]),
            &[("content-type", "text/plain")],
        )
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let b = h.next_batch().await;
    assert_eq!(b.cluster, "gen-2");
    assert_eq!(audit_ids(&[b]), item_ids(&items[..3]));
    h.server.stop().await;
}

/// One malformed item does not reject the batch: the others are published, the answer is
/// 200 and names the rejected items.
#[tokio::test]
async fn malformed_items_are_rejected_alone() {
    let mut h = Harness::start(config()).await;
    let mut items = events(5);
    items[2].as_object_mut().unwrap().remove("auditID");
    items[3] = json!(42);
    let resp = ApiServerClient::new(&h.url("/audit/mixed"))
        .post_raw("", body_of(&items), &[])
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let answer = resp.json().unwrap();
    assert_eq!(answer["accepted"], 3);
    let rejected = answer["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2);
    assert_eq!(rejected[0]["index"], 2);
    assert!(
        rejected[0]["reason"].as_str().unwrap().contains("auditID"),
        "{answer}"
    );
    assert_eq!(rejected[1]["index"], 3);

    let batch = h.next_batch().await;
    assert_eq!(
        audit_ids(&[batch]),
        item_ids(&[items[0].clone(), items[1].clone(), items[4].clone()])
    );

    // Every item malformed: nothing to publish, still 200 (resending cannot help).
    let resp = ApiServerClient::new(&h.url("/audit/mixed"))
        .post_raw("", body_of(&[json!({"level": "Metadata"})]), &[])
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json().unwrap()["accepted"], 0);

    // The queue got nothing from that request: the next batch is the next good one.
    let resp = ApiServerClient::new(&h.url("/audit/mixed"))
        .post_raw("", body_of(&items[4..]), &[])
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(audit_ids(&[h.next_batch().await]), item_ids(&items[4..]));
    h.server.stop().await;
}

/// Bodies that are not EventLists get 400 with the reason, and publish nothing.
#[tokio::test]
async fn not_an_eventlist_is_400() {
    let mut h = Harness::start(config()).await;
    let client = ApiServerClient::new(&h.url("/audit"));
    type Case = (
        &'static str,
        Vec<u8>,
        Vec<(&'static str, &'static str)>,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        ("", b"not json".to_vec(), vec![], "not an audit EventList"),
        (
            "",
            br#"{"kind":"PodList","items":[]}"#.to_vec(),
            vec![],
            "PodList",
        ),
        ("", br#"{"kind":"EventList"}"#.to_vec(), vec![], "items"),
        ("", b"[1,2,3]".to_vec(), vec![], "not an audit EventList"),
        (
            "",
            b"plainly not gzip".to_vec(),
            vec![("content-encoding", "gzip")],
            "gzip",
        ),
        ("/Bad_Cluster", body_of(&events(1)), vec![], "cluster"),
        ("/-x", body_of(&events(1)), vec![], "cluster"),
        ("/a.b", body_of(&events(1)), vec![], "cluster"),
    ];
    for (suffix, body, headers, needle) in cases {
        let resp = client.post_raw(suffix, body, &headers).await.unwrap();
        assert_eq!(resp.status, 400, "{suffix} {needle}: {}", resp.text());
        let reason = resp.json().unwrap()["error"].as_str().unwrap().to_owned();
        assert!(
            reason.contains(needle),
            "{reason:?} should mention {needle}"
        );
    }
    let items = events(2);
    let resp = client.post_raw("", body_of(&items), &[]).await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(
        audit_ids(&[h.next_batch().await]),
        item_ids(&items),
        "no bad request published anything"
    );
    h.server.stop().await;
}
