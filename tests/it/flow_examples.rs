//! The flows in `examples/flows/`, loaded as they are by the real binary,
//! run end to end against a fake model server and a small fake ERP (real
//! HTTP on loopback), each with a SIGKILL mid-run and a resume: nothing
//! lost, no completed step run again, no request to the ERP sent twice.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::routing;
use baton::proto::v1;
use baton_testkit::fake_openai::ScriptedReply;
use baton_testkit::{BatonProcess, FakeOpenAi, process::write_config};
use serde_json::{Value, json};

use crate::common::*;
use crate::flows::{flows_client, get_run, records, start_run, until_status, wait_until};

/// A small ERP: customers and purchase orders to read, and POST endpoints
/// (documents, invoices, exceptions, review and human queues, outbox) that
/// record what they receive. GETs hang while `slow_get` is set.
#[derive(Clone)]
struct Erp {
    gets: Arc<AtomicUsize>,
    slow_get: Arc<AtomicBool>,
    posts: Arc<Mutex<Vec<(String, Value)>>>,
    host: String,
}

impl Erp {
    async fn start() -> Erp {
        let mut erp = Erp {
            gets: Arc::new(AtomicUsize::new(0)),
            slow_get: Arc::new(AtomicBool::new(false)),
            posts: Arc::new(Mutex::new(Vec::new())),
            host: String::new(),
        };
        async fn hold(e: &Erp) {
            e.gets.fetch_add(1, Ordering::SeqCst);
            while e.slow_get.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        async fn customer(State(e): State<Erp>, Path(id): Path<String>) -> axum::Json<Value> {
            hold(&e).await;
            let tier = if id.starts_with("GOLD") {
                "gold"
            } else {
                "silver"
            };
            axum::Json(
                json!({"id": id, "name": "Ada Lovelace", "tier": tier, "email": "ada@example.com"}),
            )
        }
        async fn po(State(e): State<Erp>, Path(id): Path<String>) -> axum::Json<Value> {
            hold(&e).await;
            axum::Json(json!({
                "po": id,
                "total": 100.0,
                "lines": [{"sku": "BOLT-8", "qty": 50}, {"sku": "NUT-8", "qty": 50}],
            }))
        }
        async fn post(
            State(e): State<Erp>,
            Path(what): Path<String>,
            axum::Json(body): axum::Json<Value>,
        ) -> axum::Json<Value> {
            let mut posts = e.posts.lock().unwrap();
            posts.push((what, body));
            axum::Json(json!({"accepted": posts.len()}))
        }
        let app = Router::new()
            .route("/customers/{id}", routing::get(customer))
            .route("/purchase-orders/{id}", routing::get(po))
            .route("/{what}", routing::post(post))
            .with_state(erp.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        erp.host = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, app).await });
        erp
    }

    fn posted(&self, what: &str) -> Vec<Value> {
        self.posts
            .lock()
            .unwrap()
            .iter()
            .filter(|(w, _)| w == what)
            .map(|(_, b)| b.clone())
            .collect()
    }
}

/// A config serving `examples/flows` as they are, with this deployment's
/// values in `[flows.vars]`.
fn setup(dir: &std::path::Path, fake: &FakeOpenAi, erp: &Erp) -> std::path::PathBuf {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/flows");
    write_config(
        dir,
        &dir.join("data"),
        &format!(
            r#"{model}
[flows]
dir = {examples:?}
inline_wait_ms = 0
timer_poll_ms = 50
[flows.http]
allowed_hosts = [{host:?}]
[flows.vars]
erp = "http://{host}"
vision_route = "fake"
classify_route = "fake"
extract_route = "fake"
draft_routes = {{ billing = "fake", technical = "fake" }}
min_confidence = 0.8
auto_send_confidence = 0.7
total_tolerance = 0.02
"#,
            model = fake_model_toml(&fake.base_url(), false),
            examples = examples.display().to_string(),
            host = erp.host,
        ),
    )
    .unwrap()
}

/// The first gate `req` lists, once there is one.
async fn wait_for_gate(
    gates: &mut v1::gates_client::GatesClient<tonic::transport::Channel>,
    req: v1::ListGatesRequest,
) -> v1::Gate {
    for _ in 0..1500 {
        let list = gates.list_gates(req.clone()).await.unwrap().into_inner();
        if let Some(g) = list.gates.into_iter().next() {
            return g;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no gate for {req:?}");
}

/// How many times each step path completed in the run's journal.
async fn completions(
    c: &mut v1::flows_client::FlowsClient<tonic::transport::Channel>,
    id: &str,
) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (t, r) in records(c, id).await {
        if t == "step_completed" {
            *out.entry(r["path"].as_str().unwrap().to_string())
                .or_insert(0) += 1;
        }
    }
    out
}

fn output(run: &v1::Run) -> Value {
    serde_json::from_str(&run.output_json).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoice_matching_posts_a_matched_invoice_across_sigkill_and_routes_an_exception() {
    let fake = FakeOpenAi::start().await.unwrap();
    let erp = Erp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), &fake, &erp);
    let matched = json!({"po_number": "PO-1001", "total": 100.5,
        "lines": [{"sku": "BOLT-8", "qty": 50, "amount": 50.5}, {"sku": "NUT-8", "qty": 50, "amount": 50.0}]});
    fake.push_reply(ScriptedReply::Text(matched.to_string()));
    erp.slow_get.store(true, Ordering::SeqCst);

    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut c = flows_client(&server).await;
    let id = start_run(
        &mut c,
        "invoice_matching",
        json!({"invoice_id": "INV-1", "text": "Invoice INV-1 for PO-1001: 50 BOLT-8, 50 NUT-8, total 100.50"}),
    )
    .await;
    // Extracted; the purchase order lookup is in flight when the process dies.
    wait_until("the PO lookup", || erp.gets.load(Ordering::SeqCst) == 1).await;
    server.kill9().await.unwrap();
    erp.slow_get.store(false, Ordering::SeqCst);

    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut c = flows_client(&server).await;
    let run = until_status(&mut c, &id, "completed").await;
    assert_eq!(
        output(&run),
        json!({"invoice_id": "INV-1", "po": "PO-1001", "matched": true, "reasons": []})
    );
    assert_eq!(fake.requests(), 1, "the extraction was not asked again");
    assert_eq!(
        erp.gets.load(Ordering::SeqCst),
        2,
        "the GET was sent again once"
    );
    let posted = erp.posted("invoices");
    assert_eq!(posted.len(), 1, "{posted:?}");
    assert_eq!(posted[0]["po"], "PO-1001");
    assert!(erp.posted("exceptions").is_empty());
    let done = completions(&mut c, &id).await;
    assert!(done.values().all(|n| *n == 1), "{done:?}");
    for path in ["extract", "po", "lines", "check", "route", "route/0/post"] {
        assert_eq!(done.get(path), Some(&1), "{path}: {done:?}");
    }

    // A line not on the order and a total off by more than the tolerance.
    let off = json!({"po_number": "PO-1002", "total": 130.0,
        "lines": [{"sku": "BOLT-8", "qty": 80, "amount": 80.0}, {"sku": "WASHER", "qty": 10, "amount": 50.0}]});
    fake.push_reply(ScriptedReply::Text(off.to_string()));
    let id2 = start_run(
        &mut c,
        "invoice_matching",
        json!({"invoice_id": "INV-2", "text": "Invoice INV-2 for PO-1002"}),
    )
    .await;
    let run = until_status(&mut c, &id2, "completed").await;
    let out = output(&run);
    assert_eq!(out["matched"], false);
    let reasons: Vec<String> = serde_json::from_value(out["reasons"].clone()).unwrap();
    assert_eq!(
        reasons,
        vec![
            "line WASHER is not on the purchase order".to_string(),
            "line BOLT-8 bills more than was ordered".into(),
            "the total differs from the purchase order by 30.0, more than 2.0".into(),
        ]
    );
    let exceptions = erp.posted("exceptions");
    assert_eq!(exceptions.len(), 1);
    assert_eq!(exceptions[0]["invoice_id"], "INV-2");
    assert_eq!(erp.posted("invoices").len(), 1, "nothing more posted");
    server.terminate().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enquiry_triage_auto_sends_across_sigkill_and_queues_sensitive_enquiries_for_humans() {
    let fake = FakeOpenAi::start().await.unwrap();
    let erp = Erp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), &fake, &erp);
    erp.slow_get.store(true, Ordering::SeqCst);

    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut c = flows_client(&server).await;
    let id = start_run(
        &mut c,
        "enquiry_triage",
        json!({"customer": "C-7", "text": "My last bill was charged twice, can you refund one?"}),
    )
    .await;
    // The customer lookup is in flight when the process dies.
    wait_until("the customer lookup", || {
        erp.gets.load(Ordering::SeqCst) == 1
    })
    .await;
    server.kill9().await.unwrap();
    erp.slow_get.store(false, Ordering::SeqCst);
    fake.push_reply(ScriptedReply::Text(
        json!({"category": "billing", "confidence": 0.93}).to_string(),
    ));
    fake.push_reply(ScriptedReply::Text(
        json!({"reply": "Sorry about that: the duplicate charge is refunded.", "confidence": 0.9})
            .to_string(),
    ));

    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut c = flows_client(&server).await;
    let run = until_status(&mut c, &id, "completed").await;
    assert_eq!(
        output(&run),
        json!({"category": "billing", "delivery": "auto_sent",
               "reply": "Sorry about that: the duplicate charge is refunded."})
    );
    assert_eq!(fake.requests(), 2, "classified once, drafted once");
    let outbox = erp.posted("outbox");
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0]["email"], "ada@example.com");
    assert!(erp.posted("human-queue").is_empty());
    let done = completions(&mut c, &id).await;
    assert!(done.values().all(|n| *n == 1), "{done:?}");
    // The classifier saw the enquiry; the draft was asked on its route.
    let received = fake.received();
    assert!(received[0].to_string().contains("charged twice"));

    // Sensitive data: a human reviews the draft, whatever its confidence.
    fake.push_reply(ScriptedReply::Text(
        json!({"category": "billing", "confidence": 0.99}).to_string(),
    ));
    fake.push_reply(ScriptedReply::Text(
        json!({"reply": "We have updated your bank details.", "confidence": 0.95}).to_string(),
    ));
    let id2 = start_run(
        &mut c,
        "enquiry_triage",
        json!({"customer": "C-8", "text": "Please pay refunds to my IBAN DE89370400440532013000"}),
    )
    .await;
    let run = until_status(&mut c, &id2, "completed").await;
    assert_eq!(output(&run)["delivery"], "human_queue");
    let human = erp.posted("human-queue");
    assert_eq!(human.len(), 1);
    assert_eq!(human[0]["flags"]["sensitive"], true);
    assert_eq!(erp.posted("outbox").len(), 1, "nothing auto-sent");
    server.terminate().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_processing_posts_clean_extractions_and_gates_uncertain_ones_for_a_reviewer_across_sigkill()
 {
    let fake = FakeOpenAi::start().await.unwrap();
    let erp = Erp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), &fake, &erp);
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut c = flows_client(&server).await;

    // Clean: posted at once.
    fake.push_reply(ScriptedReply::Text(
        json!({"vendor": "ACME", "total": 99.0, "currency": "EUR", "confidence": 0.97}).to_string(),
    ));
    let clean = start_run(
        &mut c,
        "document_processing",
        json!({"document_id": "D-1", "image_url": "https://files.example/D-1.png"}),
    )
    .await;
    let run = until_status(&mut c, &clean, "completed").await;
    assert_eq!(output(&run)["posted"], true);
    assert_eq!(erp.posted("documents").len(), 1);

    // Uncertain: a gate for the document-review group; the run waits
    // (passivated) for the decision; the process dies while it waits.
    fake.push_reply(ScriptedReply::Text(
        json!({"vendor": "ACMF", "total": 12.0, "currency": "EUR", "confidence": 0.41}).to_string(),
    ));
    let unsure = start_run(
        &mut c,
        "document_processing",
        json!({"document_id": "D-2", "image_url": "https://files.example/D-2.png"}),
    )
    .await;
    until_status(&mut c, &unsure, "waiting").await;
    let pending = || v1::ListGatesRequest {
        status: v1::GateStatus::Pending as i32,
        policy: format!("flow:{unsure}:review/0/decision"),
        ..Default::default()
    };
    let mut gates = gates_client(&server).await;
    wait_for_gate(&mut gates, pending()).await;
    server.kill9().await.unwrap();

    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut c = flows_client(&server).await;
    let mut gates = gates_client(&server).await;
    let gate = wait_for_gate(&mut gates, pending()).await;
    assert_eq!(
        (gate.kind.as_str(), gate.reviewers.as_str()),
        ("flow", "document-review")
    );
    let subject: Value = serde_json::from_str(&gate.subject).unwrap();
    assert_eq!(subject["extraction"]["vendor"], "ACMF");
    // The reviewer corrects the extraction.
    gates
        .decide_gate(v1::DecideGateRequest {
            gate_id: gate.gate_id.clone(),
            decision: v1::GateDecision::Edit as i32,
            reviewer: "ana".into(),
            reason: "misread".into(),
            edited_payload: json!({"document_id": "D-2", "extraction":
                {"vendor": "ACME", "total": 120.0, "currency": "EUR"}})
            .to_string(),
        })
        .await
        .unwrap();
    let run = until_status(&mut c, &unsure, "completed").await;
    assert_eq!(output(&run)["posted"], true);
    let docs = erp.posted("documents");
    assert_eq!(docs.len(), 2, "{docs:?}");
    assert_eq!(
        docs[1],
        json!({"document_id": "D-2", "vendor": "ACME", "total": 120.0, "currency": "EUR"}),
        "the reviewer's correction was posted"
    );
    assert_eq!(fake.requests(), 2, "one extraction per document");
    let done = completions(&mut c, &unsure).await;
    assert!(done.values().all(|n| *n == 1), "{done:?}");
    let full = get_run(&mut c, &unsure).await;
    let decision = full
        .steps
        .iter()
        .find(|s| s.path == "review/0/decision")
        .expect("the decision step");
    let decision: Value = serde_json::from_str(&decision.output_json).unwrap();
    assert_eq!(decision["decision"], "edit");
    assert_eq!(decision["reviewer"], "local:ana");
    server.terminate().await.unwrap();
}
