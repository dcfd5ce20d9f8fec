//! A graceful stop mid-answer, on the real binary: SIGTERM while a gRPC
//! turn and two front-door calls (streamed and not) are part-way through a
//! slowly streamed answer. New work is refused from then on (UNAVAILABLE
//! naming the stop, `/healthz` 503), the three answers finish whole, the
//! process exits cleanly; after the restart each turn is in its journal
//! once, answered once, and nothing runs again.

use std::time::{Duration, Instant};

use baton::proto::v1;
use baton::types::EventKind;
use baton_testkit::fake_openai::Behavior;
use baton_testkit::{BatonProcess, FakeOpenAi};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::common::*;

/// The text of a streamed front-door answer (its SSE `data:` chunks), and
/// whether it ended with `[DONE]`.
fn sse_text(body: &str) -> (String, bool) {
    let mut text = String::new();
    let mut done = false;
    for line in body.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
    }
    (text, done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_answer_finishes_the_answers_in_progress_and_refuses_new_work() {
    let fake = FakeOpenAi::start().await.unwrap();
    // "echo: " and the message, 4 characters every 50 ms: about 1.5 s.
    fake.set_behavior(Behavior {
        chunk_chars: 4,
        chunk_delay: Duration::from_millis(50),
        ..Behavior::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let (server, http, client) =
        serve_http(dir.path(), &fake_model_toml(&fake.base_url(), true)).await;
    let mut grpc = server.client().await.unwrap();
    let session = start(&mut grpc, "").await;
    let text = "a message long enough to stream for a while";
    let expected = format!("echo: {text}");

    // A gRPC turn, a streamed and a non-streamed front-door call.
    let mut turn_stream = grpc
        .send_message(v1::SendMessageRequest {
            session_id: session.clone(),
            content: text.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let post = |stream: bool| {
        let (client, http) = (client.clone(), http.clone());
        tokio::spawn(async move {
            let r = client
                .post(format!("{http}/v1/chat/completions"))
                .json(&json!({
                    "model": "fake",
                    "stream": stream,
                    "messages": [{"role": "user", "content": text}],
                }))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let session = r
                .headers()
                .get("x-baton-session-id")
                .map(|v| v.to_str().unwrap().to_string());
            (status, session, r.text().await.unwrap())
        })
    };
    let streamed = post(true);
    let whole = post(false);
    // Part of the gRPC answer has arrived: the client is mid-answer.
    let mut seen = Vec::new();
    loop {
        let e = baton::proto::convert::event_from_proto(turn_stream.next().await.unwrap().unwrap())
            .unwrap();
        let delta = matches!(e.kind, EventKind::OutputDelta { .. });
        seen.push(e);
        if delta {
            break;
        }
    }
    while fake.requests() < 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let stopping = Instant::now();
    server.sigterm().await.unwrap();
    // New work is refused, naming the stop; health says so.
    let mut refused = None;
    for _ in 0..100 {
        match grpc.start_session(v1::StartSessionRequest::default()).await {
            Err(e) => {
                refused = Some(e);
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    let refused = refused.expect("new sessions are refused while draining");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("shutting down"), "{refused:?}");
    let r = client
        .post(format!("{http}/v1/chat/completions"))
        .json(&json!({"model": "fake", "messages": [{"role": "user", "content": "late"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let health = client.get(format!("{http}/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 503);
    assert!(health.text().await.unwrap().contains("shutting down"));

    // The answers in progress end whole.
    let mut answer = String::new();
    for e in &seen {
        if let EventKind::OutputDelta { text, .. } = &e.kind {
            answer.push_str(text);
        }
    }
    let mut completed = false;
    while let Some(e) = turn_stream.next().await {
        let e = baton::proto::convert::event_from_proto(e.unwrap()).unwrap();
        match &e.kind {
            EventKind::OutputDelta { text, .. } => answer.push_str(text),
            EventKind::TurnCompleted { .. } => {
                completed = true;
                break;
            }
            _ => {}
        }
    }
    assert!(completed, "the gRPC turn completed");
    assert_eq!(answer, expected);
    let (status, streamed_session, body) = streamed.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(sse_text(&body), (expected.clone(), true), "{body}");
    let (status, whole_session, body) = whole.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], expected.as_str());
    // Then the process exits, cleanly, well within the grace period.
    let status = server.wait_exit(Duration::from_secs(20)).await.unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "{:?}",
        stopping.elapsed()
    );
    let upstream_calls = fake.requests();

    // After the restart: each turn once, answered once; nothing runs again.
    let config = dir.path().join("baton.toml");
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut grpc = server.client().await.unwrap();
    for id in [Some(session), streamed_session, whole_session] {
        let id = id.expect("the front door names its session");
        let s = get(&mut grpc, &id).await;
        assert_eq!(texts(&s), vec![text.to_string(), expected.clone()], "{id}");
        assert_eq!(s.status, v1::SessionStatus::Idle as i32, "{id}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fake.requests(), upstream_calls, "no model call again");
    server.terminate().await.unwrap();
}
