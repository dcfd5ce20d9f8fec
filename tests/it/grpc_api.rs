//! The Sessions API over real gRPC, in-process, against the fake model server.

use std::time::Duration;

use baton::proto::v1;
use baton::types::EventKind;
use baton::{BusyPolicy, RuntimeConfig};
use baton_testkit::fake_openai::Behavior;
use baton_testkit::server::openai_endpoint;
use baton_testkit::{FakeOpenAi, TestServer};

use crate::common::*;

fn config(fake: &FakeOpenAi, stream: bool) -> RuntimeConfig {
    let mut c = RuntimeConfig {
        models: vec![openai_endpoint("fake", &fake.base_url(), stream)],
        ..Default::default()
    };
    c.sessions.default_route = "fake".into();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_turn_end_to_end() {
    let fake = FakeOpenAi::start().await.unwrap();
    fake.set_behavior(Behavior {
        chunk_chars: 4,
        ..Behavior::default()
    });
    let server = TestServer::start(config(&fake, true)).await.unwrap();
    let mut client = server.client().await.unwrap();
    let r = client
        .start_session(v1::StartSessionRequest {
            system_prompt: "be brief".into(),
            metadata: [("customer".to_string(), "acme".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.created);
    let events = turn(&mut client, &r.session_id, "what is baton").await;
    let deltas: String = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::OutputDelta { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(deltas, "echo: what is baton");
    assert!(
        events
            .iter()
            .filter(|e| e.kind.name() == "output_delta")
            .count()
            > 1
    );
    match &events[events.len() - 2].kind {
        EventKind::AssistantMessage {
            message,
            model,
            endpoint,
            usage,
            ..
        } => {
            assert_eq!(message.content, "echo: what is baton");
            assert_eq!(model, "fake-model");
            assert_eq!(endpoint, "fake");
            assert!(usage.output_tokens > 0);
        }
        other => panic!("expected the assistant message, got {other:?}"),
    }
    // The model saw the system prompt and the user message.
    let body = &fake.received()[0];
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(body["messages"][1]["content"], "what is baton");
    let s = get(&mut client, &r.session_id).await;
    assert_eq!(texts(&s), vec!["what is baton", "echo: what is baton"]);
    assert_eq!(s.metadata["customer"], "acme");
    assert!(s.usage.unwrap().input_tokens > 0);
    // Gap-free seqs; live output chunks share the seq of their record.
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert!(
        events.windows(2).all(|w| w[1].seq == w[0].seq + 1
            || (w[1].seq == w[0].seq && w[1].kind.name() == "output_delta")),
        "gap-free seqs: {seqs:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_right_status_and_touches_nothing() {
    let fake = FakeOpenAi::start().await.unwrap();
    let mut cfg = config(&fake, false);
    cfg.sessions.max_message_bytes = 1000;
    let server = TestServer::start(cfg).await.unwrap();
    let mut client = server.client().await.unwrap();
    let id = start(&mut client, "").await;
    let send = |content: String, session_id: String| v1::SendMessageRequest {
        session_id,
        content,
        review: false,
        images: Vec::new(),
    };

    let e = client
        .send_message(send("hi".into(), "not-a-uuid".into()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().contains("session_id") && e.message().contains("not-a-uuid"),
        "{}",
        e.message()
    );
    let e = client
        .send_message(send("hi".into(), String::new()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = client
        .send_message(send("hi".into(), baton::SessionId::new().to_string()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(e.message().contains("not found"));
    let e = client
        .send_message(send("   ".into(), id.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("content is empty"));
    let e = client
        .send_message(send("x".repeat(1001), id.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    assert!(
        e.message().contains("1001") && e.message().contains("max_message_bytes"),
        "{}",
        e.message()
    );
    let e = client
        .start_session(v1::StartSessionRequest {
            route: "gpt-99".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("gpt-99"));
    let e = client
        .list_sessions(v1::ListSessionsRequest {
            status: 77,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = client
        .list_sessions(v1::ListSessionsRequest {
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = client
        .resume_session(v1::ResumeSessionRequest {
            session_id: id.clone(),
            after_seq: 50,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    // A request over the transport limit (server.max_request_bytes, 4 MiB)
    // is refused by tonic's decoder before it reaches Baton; tonic reports
    // that as OUT_OF_RANGE with a message naming the sizes.
    let e = client
        .send_message(send("y".repeat(5 << 20), id.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::OutOfRange);
    assert!(e.message().contains("too large"), "{}", e.message());

    let s = get(&mut client, &id).await;
    assert_eq!(s.last_seq, 1, "refused calls persisted nothing");
    assert_eq!(fake.requests(), 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_policy_enqueue_runs_turns_in_order_and_reject_refuses() {
    let fake = FakeOpenAi::start().await.unwrap();
    fake.set_behavior(Behavior {
        delay: Duration::from_millis(200),
        ..Behavior::default()
    });
    let server = TestServer::start(config(&fake, false)).await.unwrap();
    let mut client = server.client().await.unwrap();
    let id = start(&mut client, "").await;
    let (mut c1, mut c2) = (client.clone(), client.clone());
    let (a, b) = tokio::join!(turn(&mut c1, &id, "one"), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        turn(&mut c2, &id, "two").await
    });
    let a_end = a.last().unwrap().seq;
    assert!(
        b.iter().skip(1).all(|e| e.seq > a_end),
        "turn 2 ran only after turn 1: {:?} / {:?}",
        kinds(&a),
        kinds(&b)
    );
    assert_eq!(
        texts(&get(&mut client, &id).await),
        vec!["one", "echo: one", "two", "echo: two"]
    );
    server.stop().await;

    let mut cfg = config(&fake, false);
    cfg.sessions.busy_policy = BusyPolicy::Reject;
    fake.set_behavior(Behavior {
        delay: Duration::from_secs(30),
        ..Behavior::default()
    });
    let server = TestServer::start(cfg).await.unwrap();
    let mut client = server.client().await.unwrap();
    let id = start(&mut client, "").await;
    let mut first = send(&mut client, &id, "slow").await;
    read_until(&mut first, |e| e.kind.name() == "model_call_started").await;
    let e = client
        .send_message(v1::SendMessageRequest {
            session_id: id.clone(),
            content: "impatient".into(),
            review: false,
            images: Vec::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    let c = client
        .cancel_turn(v1::CancelTurnRequest {
            session_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(c.cancelled);
    assert_eq!(c.turn, 1);
    let rest = read_until(&mut first, |e| e.ends_turn()).await;
    assert_eq!(rest.last().unwrap().kind.name(), "turn_cancelled");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_passivate_and_rehydrate_over_grpc() {
    let fake = FakeOpenAi::start().await.unwrap();
    let mut cfg = config(&fake, false);
    cfg.sessions.passivate_after_ms = 100;
    let server = TestServer::start(cfg).await.unwrap();
    let mut client = server.client().await.unwrap();
    let ids = [start(&mut client, "").await, start(&mut client, "").await];
    for id in &ids {
        turn(&mut client, id, "keep this").await;
    }
    assert_eq!(server.runtime.stats().await.unwrap().live_sessions, 2);
    for _ in 0..300 {
        if server.runtime.stats().await.unwrap().live_sessions == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = server.runtime.stats().await.unwrap();
    assert_eq!(stats.live_sessions, 0, "idle sessions were passivated");
    assert!(stats.passivations_total >= 2);
    // Listing reads storage and leaves them passivated.
    let list = client
        .list_sessions(v1::ListSessionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.sessions.len(), 2);
    assert_eq!(server.runtime.stats().await.unwrap().live_sessions, 0);
    // The next message rehydrates with the full conversation.
    let t = turn(&mut client, &ids[0], "and this").await;
    // SessionStarted + 5 records of the first turn (with its routing decision).
    assert_eq!(t[0].seq, 7);
    assert_eq!(
        texts(&get(&mut client, &ids[0]).await),
        vec!["keep this", "echo: keep this", "and this", "echo: and this"]
    );
    let body = fake.received().last().cloned().unwrap();
    assert_eq!(
        body["messages"].as_array().unwrap().len(),
        3,
        "the model saw the whole conversation"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_v1_and_v1alpha_work_without_protos() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let fake = FakeOpenAi::start().await.unwrap();
    let server = TestServer::start(config(&fake, false)).await.unwrap();
    let channel = server.channel().await.unwrap();
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "baton.v1.Sessions".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, 1, "SERVING");

    use futures::StreamExt;
    {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut s = ServerReflectionClient::new(channel.clone())
            .server_reflection_info(futures::stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        let resp = s.next().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
            panic!("no list")
        };
        let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
        assert!(
            names.contains(&"baton.v1.Sessions") && names.contains(&"grpc.health.v1.Health"),
            "{names:?}"
        );
    }
    {
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "baton.v1.Sessions".into(),
            )),
        };
        let mut s = ServerReflectionClient::new(channel)
            .server_reflection_info(futures::stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        let resp = s.next().await.unwrap().unwrap();
        let Some(MessageResponse::FileDescriptorResponse(fd)) = resp.message_response else {
            panic!("no descriptor")
        };
        assert!(!fd.file_descriptor_proto.is_empty());
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_yields_the_same_session() {
    let fake = FakeOpenAi::start().await.unwrap();
    let server = TestServer::start(config(&fake, false)).await.unwrap();
    let mut client = server.client().await.unwrap();
    let req = v1::StartSessionRequest {
        idempotency_key: "ticket-7".into(),
        ..Default::default()
    };
    let a = client
        .start_session(req.clone())
        .await
        .unwrap()
        .into_inner();
    let b = client
        .start_session(req.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(a.created && !b.created);
    assert_eq!(a.session_id, b.session_id);
    // The same key with other parameters is refused, naming the key.
    for other in [
        v1::StartSessionRequest {
            system_prompt: "something else".into(),
            ..req.clone()
        },
        v1::StartSessionRequest {
            max_steps: 3,
            ..req.clone()
        },
        v1::StartSessionRequest {
            metadata: [("k".to_string(), "v".to_string())].into(),
            ..req.clone()
        },
    ] {
        let e = client.start_session(other).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(
            e.message().contains("ticket-7") && e.message().contains(&a.session_id),
            "{}",
            e.message()
        );
    }
    client
        .delete_session(v1::DeleteSessionRequest {
            session_id: a.session_id.clone(),
        })
        .await
        .unwrap();
    let e = client
        .get_session(v1::GetSessionRequest {
            session_id: a.session_id,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    server.stop().await;
}
