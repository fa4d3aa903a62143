//! The managed clouds' real export samples (`testdata/audit-samples`, see MANIFEST.md) read
//! through the same [`EventReader`] replay uses, each shape detected from its content.
//!
//! Where no public capture of an envelope exists with a Kubernetes audit event inside (EKS
//! CLI exports, subscription payloads, Firehose deliveries, Pub/Sub push, BigQuery rows,
//! AKS one-record-per-line), the test wraps a *real* event from the samples in the envelope
//! as AWS and Google document it, and says so.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use kubetrail_source::cloud::{CloudFormat, CloudItem, decode_cloud_document};
use kubetrail_source::{AuditEvent, EventReader, Malformed};

fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/audit-samples")
}

fn read_path(p: &Path) -> (Vec<AuditEvent>, Vec<Malformed>) {
    let mut events = vec![];
    let mut bad = vec![];
    for r in EventReader::open(p.to_str().unwrap()).unwrap() {
        match r.unwrap() {
            Ok(e) => events.push(e),
            Err(m) => bad.push(m),
        }
    }
    (events, bad)
}

fn read_text(name: &str, text: &[u8]) -> (Vec<AuditEvent>, Vec<Malformed>) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    read_path(&p)
}

fn ids(events: &[AuditEvent]) -> Vec<String> {
    events.iter().map(|e| e.audit_id.clone()).collect()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// The real EKS audit event of the OTel CloudWatch sample, as its JSON text.
fn eks_message() -> String {
    let raw = std::fs::read_to_string(
        samples().join("otel-collector-contrib-cloud-exports/eks-cloudwatch/event-1.json"),
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
    v["Message"].as_str().unwrap().to_owned()
}

/// A GKE KHI sample (YAML) as the JSON LogEntry Cloud Logging exports.
fn khi_entry(name: &str) -> serde_json::Value {
    let text =
        std::fs::read_to_string(samples().join("khi-gke-cloud-logging/k8s_audit").join(name))
            .unwrap();
    serde_yaml::from_str(&text).unwrap()
}

#[test]
fn aks_diagnostic_records_whole_document_bom_and_per_line() {
    let aks = samples().join("sysdiglabs-aks-audit-log");
    let normalised = read_path(&aks.join("event.jsonl")).0;
    assert_eq!(normalised.len(), 22);

    // The Event Hubs batch, exactly as Azure delivered it.
    let (events, bad) = read_path(&aks.join("raw/event.json"));
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(ids(&events), ids(&normalised));

    // A pretty-printed single record starting with a UTF-8 BOM.
    let raw = std::fs::read(aks.join("raw/sample_EventHubs_event.json")).unwrap();
    assert!(raw.starts_with(b"\xEF\xBB\xBF"));
    let (events, bad) = read_path(&aks.join("raw/sample_EventHubs_event.json"));
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(
        ids(&events),
        ids(&read_path(&aks.join("sample_EventHubs_event.jsonl")).0)
    );

    let (events, bad) = read_path(&aks.join("raw/sample_KubeAuditLog_event.json"));
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(events.len(), 1);
    assert!(events[0].response_object.is_some());

    // One record per line (storage-account blobs, `az monitor` exports), BOM first.
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(aks.join("raw/event.json")).unwrap()).unwrap();
    let mut text = b"\xEF\xBB\xBF".to_vec();
    for r in doc["records"].as_array().unwrap() {
        text.extend_from_slice(serde_json::to_string(r).unwrap().as_bytes());
        text.push(b'\n');
    }
    text.extend_from_slice(
        b"{\"category\":\"kube-audit\",\"properties\":{\"log\":\"{not json\"}}\n",
    );
    let (events, bad) = read_text("PT1H.json", &text);
    assert_eq!(ids(&events), ids(&normalised));
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].line, 23);
    assert!(
        bad[0].reason.starts_with("properties.log: "),
        "{}",
        bad[0].reason
    );
}

#[test]
fn eks_cloudwatch_exports_sdk_and_cli_shapes() {
    let sdk = samples().join("otel-collector-contrib-cloud-exports/eks-cloudwatch/event-1.json");
    let (events, bad) = read_path(&sdk);
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(ids(&events), ["65c6f32c-63cc-4b49-82c8-80715b67d088"]);
    assert_eq!(events[0].verb, "update");

    // `aws logs filter-log-events --output json`, with a broken message in between.
    let msg = eks_message();
    let cli = serde_json::json!({
        "events": [
            {"logStreamName": "kube-apiserver-audit-ea9c831555adca1815ae04b884b30566",
             "timestamp": 1665417425981u64, "message": msg, "ingestionTime": 1665417427730u64,
             "eventId": "37140049665995015217793733901825489463841412966825590861"},
            {"logStreamName": "kube-apiserver-audit-ea9c831555adca1815ae04b884b30566",
             "timestamp": 1665417425982u64, "message": "{\"kind\":\"Event\"", "eventId": "2"}
        ],
        "searchedLogStreams": []
    });
    let pretty = serde_json::to_string_pretty(&cli).unwrap();
    let (events, bad) = read_text("export.json", pretty.as_bytes());
    assert_eq!(ids(&events), ["65c6f32c-63cc-4b49-82c8-80715b67d088"]);
    assert_eq!(bad.len(), 1);
    assert_eq!((bad[0].line, bad[0].item), (1, Some(1)));
    assert!(
        bad[0].reason.starts_with("events[1].message: "),
        "{}",
        bad[0].reason
    );
}

fn subscription_payload(messages: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "messageType": "DATA_MESSAGE",
        "owner": "123456789012",
        "logGroup": "/aws/eks/prod/cluster",
        "logStream": "kube-apiserver-audit-ea9c831555adca1815ae04b884b30566",
        "subscriptionFilters": ["kubetrail"],
        "logEvents": messages.iter().enumerate().map(|(i, m)| serde_json::json!({
            "id": format!("3714004966599501521779373390182548946384141296682559086{i}"),
            "timestamp": 1665417425981u64,
            "message": m,
        })).collect::<Vec<_>>()
    })
}

#[test]
fn eks_subscription_filter_payloads_lambda_and_firehose() {
    let msg = eks_message();
    let payload = subscription_payload(&[&msg, "not an event"]);
    let data = b64(&gzip(payload.to_string().as_bytes()));

    // As a Lambda receives it.
    let lambda = serde_json::json!({"awslogs": {"data": data}}).to_string();
    let (events, bad) = read_text("lambda.json", lambda.as_bytes());
    assert_eq!(ids(&events), ["65c6f32c-63cc-4b49-82c8-80715b67d088"]);
    assert_eq!(bad.len(), 1);
    assert!(
        bad[0]
            .reason
            .starts_with("awslogs.data.logEvents[1].message: "),
        "{}",
        bad[0].reason
    );

    // As Firehose delivers it to an HTTP endpoint: requestId, timestamp, records[].data, with a
    // control message (CloudWatch's subscription test) and a record that is not base64.
    let control = serde_json::json!({"messageType": "CONTROL_MESSAGE", "owner": "CloudwatchLogs",
        "logGroup": "", "logStream": "", "subscriptionFilters": [],
        "logEvents": [{"id": "", "timestamp": 1665417425981u64,
            "message": "CWL CONTROL MESSAGE: Checking health of destination Firehose."}]});
    let delivery = serde_json::json!({
        "requestId": "ed4acda5-034f-9f42-bba1-f29aea6d7d8f",
        "timestamp": 1665417428000u64,
        "records": [
            {"data": b64(&gzip(control.to_string().as_bytes()))},
            {"data": data},
            {"data": "%%%"},
        ]
    });
    let doc = decode_cloud_document(delivery.to_string().as_bytes()).unwrap();
    assert_eq!(doc.format, CloudFormat::FirehoseDelivery);
    assert_eq!(
        doc.request_id.as_deref(),
        Some("ed4acda5-034f-9f42-bba1-f29aea6d7d8f")
    );
    let kinds: Vec<&str> = doc
        .items
        .iter()
        .map(|i| match i {
            CloudItem::Event(_) => "event",
            CloudItem::Bad(_) => "bad",
            CloudItem::Skipped(_) => "skipped",
        })
        .collect();
    assert_eq!(kinds, ["skipped", "event", "bad", "bad"]);
    let (events, bad) = read_text("firehose.json", delivery.to_string().as_bytes());
    assert_eq!(events.len(), 1);
    assert_eq!(bad.len(), 3);
    assert!(
        bad[2].reason.starts_with("records[2].data: not base64"),
        "{}",
        bad[2].reason
    );

    // Firehose without the CloudWatch subscription in between: records of audit JSON lines.
    let lines = format!("{msg}\n{msg}\n");
    let plain = serde_json::json!({"requestId": "r", "timestamp": 1, "records": [{"data": b64(lines.as_bytes())}]});
    let (events, bad) = read_text("plain.json", plain.to_string().as_bytes());
    assert_eq!(events.len(), 2);
    assert!(bad.is_empty());
}

#[test]
fn gke_log_entries_map_onto_audit_events() {
    let gke = samples().join("otel-collector-contrib-cloud-exports/gke-cloud-logging");
    let (events, bad) = read_path(&gke.join("activity.json"));
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e.audit_id, "91515bc0-f1e8-4365-9bf5-e24ce587b653");
    assert_eq!(e.verb, "update");
    let r = e.object_ref.as_ref().unwrap();
    assert_eq!(
        (
            r.api_group.as_deref(),
            r.resource.as_deref(),
            r.namespace.as_deref(),
            r.name.as_deref()
        ),
        (
            Some("coordination.k8s.io"),
            Some("leases"),
            Some("kube-system"),
            Some("gcp-controller-manager")
        )
    );
    assert_eq!(
        e.user.username.as_deref(),
        Some("system:gcp-controller-manager")
    );
    assert_eq!(e.response_code(), Some(200));
    assert_eq!(e.annotations["authorization.k8s.io/decision"], "allow");

    // A control-plane (container.googleapis.com) entry in the same sink is skipped, said why.
    let (events, bad) = read_path(&gke.join("data_access.json"));
    assert!(events.is_empty());
    assert!(bad[0].skipped, "not malformed: {:?}", bad[0]);
    assert!(
        bad[0].reason.contains("container.googleapis.com"),
        "{}",
        bad[0].reason
    );

    // The KHI Pod create and status patches, as JSON lines (a GCS sink / `gcloud logging read`).
    let entries: Vec<_> = [
        "container_recorder_test_1_1.yaml",
        "container_recorder_test_1_2.yaml",
        "container_recorder_test_1_3.yaml",
    ]
    .iter()
    .map(|n| khi_entry(n))
    .collect();
    let lines: String = entries.iter().map(|e| format!("{e}\n")).collect();
    let (events, bad) = read_text("gke.jsonl", lines.as_bytes());
    assert!(bad.is_empty(), "{bad:?}");
    let mapped: Vec<serde_json::Value> = events
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .collect();
    insta::assert_json_snapshot!("gke_khi_pod_create_and_status_patches", mapped);
    let create = &events[0];
    assert_eq!(create.verb, "create");
    assert_eq!(
        create.object_ref.as_ref().unwrap().name.as_deref(),
        Some("nginx-deployment-surge-8655b4b8c5-xf5f4")
    );
    assert!(
        !create
            .response_object
            .as_ref()
            .unwrap()
            .get()
            .contains("@type")
    );
    assert_eq!(
        events[1]
            .object_ref
            .as_ref()
            .unwrap()
            .subresource
            .as_deref(),
        Some("status")
    );

    // `gcloud logging read --format=json` (an array) and the API's `entries` list agree.
    let array = serde_json::Value::Array(entries.clone()).to_string();
    assert_eq!(ids(&read_text("a.json", array.as_bytes()).0), ids(&events));
    let list = serde_json::json!({"entries": entries, "nextPageToken": "x"}).to_string();
    assert_eq!(ids(&read_text("l.json", list.as_bytes()).0), ids(&events));

    // Pub/Sub push: the LogEntry base64 in message.data.
    let push = serde_json::json!({
        "message": {"data": b64(entries[0].to_string().as_bytes()), "messageId": "2070443601311540",
            "publishTime": "2024-01-01T01:00:01Z", "attributes": {"logging.googleapis.com/timestamp": "2024-01-01T01:00:00Z"}},
        "subscription": "projects/sample-project/subscriptions/kubetrail"
    });
    let doc = decode_cloud_document(push.to_string().as_bytes()).unwrap();
    assert_eq!(doc.format, CloudFormat::PubSubPush);
    let (pushed, bad) = read_text("push.json", push.to_string().as_bytes());
    assert!(bad.is_empty());
    assert_eq!(serde_json::to_value(&pushed[0]).unwrap(), mapped[0]);

    // BigQuery export row: protopayload_auditlog with the bodies as JSON strings.
    let e = &entries[0];
    let mut pp = e["protoPayload"].clone();
    let obj = pp.as_object_mut().unwrap();
    let req = obj.remove("request").unwrap();
    let resp = obj.remove("response").unwrap();
    obj.insert("requestJson".into(), req.to_string().into());
    obj.insert("responseJson".into(), resp.to_string().into());
    let mut row = e.clone();
    let row_obj = row.as_object_mut().unwrap();
    row_obj.remove("protoPayload");
    row_obj.insert("protopayload_auditlog".into(), pp);
    row_obj.insert("timestamp".into(), "2024-01-01 01:00:00 UTC".into());
    let (bq, bad) = read_text("bq.json", format!("{row}\n").as_bytes());
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(bq[0].stage_timestamp, events[0].stage_timestamp);
    assert_eq!(
        bq[0].response_object.as_ref().unwrap().get(),
        events[0].response_object.as_ref().unwrap().get()
    );
}

#[test]
fn bad_cloud_input_is_reported_with_its_location_and_never_fatal() {
    let text = concat!(
        "{\"records\":[{\"category\":\"kube-audit\",\"properties\":{}}]}\n",
        "{\"protoPayload\":{\"@type\":\"type.googleapis.com/google.cloud.audit.AuditLog\",\"serviceName\":\"k8s.io\"},\"insertId\":\"x\"}\n",
        "{\"awslogs\":{\"data\":\"H4sI\"}}\n",
        "{\"message\":{\"data\":\"e30=\"},\"subscription\":\"s\"}\n",
    );
    let (events, bad) = read_text("bad.json", text.as_bytes());
    assert!(events.is_empty());
    let got: Vec<(u64, &str)> = bad.iter().map(|m| (m.line, m.reason.as_str())).collect();
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(
        got[0].1.contains("records[0].properties.log: missing"),
        "{got:?}"
    );
    assert!(got[1].1.contains("methodName: missing"), "{got:?}");
    assert!(
        got[2].1.starts_with("awslogs.data: not valid gzip"),
        "{got:?}"
    );
    assert!(got[3].1.starts_with("message.data"), "{got:?}");
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), [1, 2, 3, 4]);
}
