//! Quality scoring and drift alerts on the real binary: every answer of a
//! route is scored by a fake "judge" model off the turn's path (a judge
//! that hangs does not hold the next turn back), the scores are journaled
//! with the calls and exported as metrics, a model whose scores degrade
//! against its baseline raises exactly one alert (log, metric, webhook),
//! and the scores survive a SIGKILL, neither lost nor duplicated.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton::proto::v1;
use baton::types::{EventKind, SessionEvent};
use baton_testkit::fake_openai::{Fault, ScriptedReply};
use baton_testkit::{BatonProcess, FakeOpenAi, process::write_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

/// A webhook receiver on loopback: every request body it got.
async fn webhook() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/alerts", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = bodies.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    let Some((head, body)) = text.split_once("\r\n\r\n") else {
                        continue;
                    };
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    if body.len() < len {
                        continue;
                    }
                    seen.lock().unwrap().push(body.to_string());
                    let _ = sock
                        .write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    return;
                }
            });
        }
    });
    (url, bodies)
}

fn scores(level: f64) -> ScriptedReply {
    ScriptedReply::Text(format!(
        "```json\n{{\"factuality\": {{\"score\": {level}, \"reason\": \"checked\"}}, \
         \"relevance\": {{\"score\": {level}, \"reason\": \"on topic\"}}, \
         \"coherence\": {{\"score\": {level}, \"reason\": \"clear\"}}}}\n```"
    ))
}

/// The session's `QualityScored` records, by turn.
async fn scored(c: &mut Client, id: &str) -> Vec<(u64, f64)> {
    let last = c
        .get_session(v1::GetSessionRequest {
            session_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .last_seq;
    let mut s = c
        .resume_session(v1::ResumeSessionRequest {
            session_id: id.into(),
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let events = read_until(&mut s, |e| e.seq >= last).await;
    events
        .iter()
        .filter_map(|e: &SessionEvent| match &e.kind {
            EventKind::QualityScored { turn, scores, .. } => Some((
                *turn,
                scores.iter().map(|s| s.score).sum::<f64>() / scores.len() as f64,
            )),
            _ => None,
        })
        .collect()
}

/// Wait until `n` scores are journaled.
async fn until_scored(c: &mut Client, id: &str, n: usize) -> Vec<(u64, f64)> {
    for _ in 0..600 {
        let s = scored(c, id).await;
        if s.len() >= n {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{n} scores were not recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scores_are_sampled_off_the_turn_and_a_degrading_model_alerts_once() {
    let fake = FakeOpenAi::start().await.unwrap();
    let judge = FakeOpenAi::start().await.unwrap();
    let (hook, posted) = webhook().await;
    let toml = format!(
        r#"
[sessions]
default_route = "fake"

[[models]]
name = "fake"
provider = "openai"
base_url = {fake:?}
model = "fake-model"

[[models]]
name = "judge"
provider = "openai"
base_url = {judge:?}
model = "judge-model"
timeout_ms = 3000
price_input_per_mtok = 1000.0
[models.retry]
max_attempts = 1

[quality]
evaluator = "judge"
routes = {{ fake = 1.0 }}
baseline = 3
window = 3
score_drop = 0.3
webhook = {hook:?}
"#,
        fake = fake.base_url(),
        judge = judge.base_url(),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &dir.path().join("data"), &toml).unwrap();
    let server = BatonProcess::start(bin(), &path).await.unwrap();
    let mut c = server.client().await.unwrap();
    let id = c
        .start_session(v1::StartSessionRequest::default())
        .await
        .unwrap()
        .into_inner()
        .session_id;

    // The judge hangs on the first score; the next turn runs meanwhile.
    judge.push_fault(Fault::Hang);
    let t = turn(&mut c, &id, "question 1").await;
    assert_eq!(kinds(&t).last(), Some(&"turn_completed"));
    for _ in 0..600 {
        if judge.requests() >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(judge.requests(), 1, "the first answer is being scored");
    judge.push_reply(scores(0.9));
    let t = turn(&mut c, &id, "question 2").await;
    assert_eq!(
        kinds(&t).last(),
        Some(&"turn_completed"),
        "a turn does not wait for a hanging score"
    );
    let s = until_scored(&mut c, &id, 1).await;
    assert_eq!(s[0].0, 2, "turn 2 scored while turn 1's score hangs");

    // Five more at the baseline's level, then the model degrades.
    for (i, level) in [0.9, 0.9, 0.9, 0.9, 0.9, 0.2, 0.2, 0.2, 0.2, 0.2]
        .into_iter()
        .enumerate()
    {
        judge.push_reply(scores(level));
        turn(&mut c, &id, &format!("question {}", i + 3)).await;
        until_scored(&mut c, &id, i + 2).await;
    }
    let all = until_scored(&mut c, &id, 11).await;
    let turns: Vec<u64> = all.iter().map(|(t, _)| *t).collect();
    assert_eq!(turns, (2..=12).collect::<Vec<_>>(), "turn 1's score failed");
    assert_eq!(
        metric(
            &server,
            "baton_quality_alerts_total{endpoint=\"fake\",signal=\"score\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &server,
            "baton_quality_scored_total{route=\"fake\",endpoint=\"fake\",model=\"fake-model\",outcome=\"scored\"}"
        )
        .await,
        11.0
    );
    // The hung score times out (timeout_ms = 3000) and is counted failed.
    let failed = "baton_quality_scored_total{route=\"fake\",endpoint=\"fake\",model=\"fake-model\",outcome=\"failed\"}";
    for _ in 0..300 {
        if metric(&server, failed).await > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&server, failed).await, 1.0, "the hung score failed");
    assert_eq!(
        metric(
            &server,
            "baton_quality_score_count{route=\"fake\",endpoint=\"fake\",model=\"fake-model\",criterion=\"factuality\"}"
        )
        .await,
        11.0
    );
    for _ in 0..200 {
        if !posted.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let alerts = posted.lock().unwrap().clone();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a: serde_json::Value = serde_json::from_str(&alerts[0]).unwrap();
    assert_eq!(a["signal"], "score");
    assert_eq!(a["endpoint"], "fake");
    assert_eq!(a["model"], "fake-model");
    assert!(a["current"].as_f64().unwrap() < a["threshold"].as_f64().unwrap());
    assert_eq!(server.log().matches("quality alert:").count(), 1);
    // The scorer's calls are priced and journaled with the scores.
    let mut r = c
        .resume_session(v1::ResumeSessionRequest {
            session_id: id.clone(),
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let events = read_until(&mut r, |e| {
        matches!(e.kind, EventKind::QualityScored { turn: 12, .. })
    })
    .await;
    assert!(events.iter().all(|e| match &e.kind {
        EventKind::QualityScored { cost_usd, .. } => cost_usd.is_some_and(|c| c > 0.0),
        _ => true,
    }));

    // After a SIGKILL every score is still there, once.
    server.kill9().await.unwrap();
    let server = BatonProcess::start(bin(), &path).await.unwrap();
    let mut c = server.client().await.unwrap();
    assert_eq!(scored(&mut c, &id).await, all);
    let out = std::process::Command::new(bin())
        .args([
            "inspect",
            "journal",
            &id,
            "--all",
            "--server",
            &server.url(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.matches("quality of fake (fake-model) by judge")
            .count(),
        11,
        "{text}"
    );
    server.terminate().await.unwrap();
}
