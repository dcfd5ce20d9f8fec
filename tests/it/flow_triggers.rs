//! Flow triggers through the real binary: signed webhooks (refused,
//! deduplicated, backpressured), a cron schedule across SIGKILL (each fire
//! one run), and a Redis Streams consumer across SIGKILL (every message
//! one run, none lost, none twice), against a real redis-server.

use std::collections::BTreeMap;
use std::time::Duration;

use baton::flows::sign_webhook;
use baton::proto::v1::{self, flows_client::FlowsClient};
use baton_testkit::{BatonProcess, process::write_config};
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::common::*;

const SECRET: &str = "whsec-0123456789abcdef";

async fn flows_client(server: &BatonProcess) -> FlowsClient<Channel> {
    FlowsClient::connect(server.url()).await.unwrap()
}

async fn all_runs(c: &mut FlowsClient<Channel>, flow: &str) -> Vec<v1::Run> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let r = c
            .list_runs(v1::ListRunsRequest {
                flow: flow.into(),
                status: String::new(),
                page_size: 1000,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        out.extend(r.runs);
        if r.next_page_token.is_empty() {
            return out;
        }
        token = r.next_page_token;
    }
}

async fn input_of(c: &mut FlowsClient<Channel>, id: &str) -> Value {
    let r = c
        .get_run(v1::GetRunRequest {
            run_id: id.into(),
            at_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    serde_json::from_str(&r.input_json).unwrap()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_check_signatures_start_one_run_per_delivery_and_push_back() {
    let dir = tempfile::tempdir().unwrap();
    let flows = dir.path().join("flows");
    std::fs::create_dir_all(&flows).unwrap();
    std::fs::write(
        flows.join("order.toml"),
        "name = \"order\"\nmax_active_runs = 2\n[[steps]]\nid = \"hold\"\nkind = \"wait\"\nsignal = \"go\"\n",
    )
    .unwrap();
    let config = write_config(
        dir.path(),
        &dir.path().join("data"),
        &format!(
            "[[models]]\nname = \"echo\"\nprovider = \"echo\"\n[flows]\ndir = {:?}\n[[flows.webhooks]]\nname = \"orders\"\nflow = \"order\"\nsecret = {{ env = \"ORDERS_HOOK_SECRET\" }}\ninput = \"{{order: .body.id}}\"\n",
            flows.display().to_string()
        ),
    )
    .unwrap();
    let server = BatonProcess::start_with_env(bin(), &config, &[("ORDERS_HOOK_SECRET", SECRET)])
        .await
        .unwrap();
    let url = format!("{}/hooks/orders", server.http_url().unwrap());
    let web = reqwest::Client::new();
    let deliver = |body: Value, delivery: &str, ts: u64, secret: &str| {
        let body = body.to_string();
        web.post(&url)
            .header("content-type", "application/json")
            .header("x-baton-timestamp", ts.to_string())
            .header(
                "x-baton-signature",
                sign_webhook(secret.as_bytes(), ts, body.as_bytes()),
            )
            .header("x-baton-delivery", delivery)
            .body(body)
            .send()
    };
    let mut c = flows_client(&server).await;

    // A wrong secret, and a stale (replayed) delivery: 401, nothing started.
    let r = deliver(json!({"id": 1}), "d-0", now_secs(), "not-the-secret-at-all")
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = deliver(json!({"id": 1}), "d-0", now_secs() - 3600, SECRET)
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("replay"));
    assert!(all_runs(&mut c, "order").await.is_empty());

    // A good one starts a run; its duplicate answers with the same run.
    let r = deliver(json!({"id": 1}), "d-1", now_secs(), SECRET)
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let first: Value = r.json().await.unwrap();
    assert_eq!(first["created"], true);
    let r = deliver(json!({"id": 1}), "d-1", now_secs(), SECRET)
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let again: Value = r.json().await.unwrap();
    assert_eq!(again["run_id"], first["run_id"]);
    assert_eq!(again["created"], false);
    let runs = all_runs(&mut c, "order").await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].trigger, "webhook:orders");
    assert_eq!(runs[0].started_by, "trigger:webhook:orders");
    assert_eq!(input_of(&mut c, &runs[0].run_id).await, json!({"order": 1}));

    // The flow's limit is 2 unfinished runs: the third delivery gets 429.
    let r = deliver(json!({"id": 2}), "d-2", now_secs(), SECRET)
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = deliver(json!({"id": 3}), "d-3", now_secs(), SECRET)
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(all_runs(&mut c, "order").await.len(), 2);
    let r = web
        .post(format!("{}/hooks/nope", server.http_url().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    server.terminate().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_fires_once_per_fire_across_sigkill_and_runs_a_missed_fire_once() {
    let dir = tempfile::tempdir().unwrap();
    let flows = dir.path().join("flows");
    std::fs::create_dir_all(&flows).unwrap();
    std::fs::write(
        flows.join("tick.toml"),
        "name = \"tick\"\n[[steps]]\nid = \"t\"\nkind = \"transform\"\nexpr = \".input.fired_at_unix_ms\"\n",
    )
    .unwrap();
    let config = write_config(
        dir.path(),
        &dir.path().join("data"),
        &format!(
            "[[models]]\nname = \"echo\"\nprovider = \"echo\"\n[flows]\ndir = {:?}\n[[flows.schedules]]\nname = \"every2s\"\nflow = \"tick\"\ncron = \"*/2 * * * * *\"\ntimezone = \"Europe/Paris\"\nmissed = \"run_once\"\ninput = {{ source = \"cron\" }}\n",
            flows.display().to_string()
        ),
    )
    .unwrap();
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut c = flows_client(&server).await;
    for _ in 0..500 {
        if !all_runs(&mut c, "tick").await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill9().await.unwrap();
    let killed_at = now_secs() * 1000;
    // Fires at killed_at+2s and +4s are missed while down.
    tokio::time::sleep(Duration::from_millis(5200)).await;
    let restarted_at = now_secs() * 1000;
    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut c = flows_client(&server).await;
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let runs = all_runs(&mut c, "tick").await;
    let mut fires = Vec::new();
    for r in &runs {
        let input = input_of(&mut c, &r.run_id).await;
        assert_eq!(input["source"], "cron");
        fires.push(input["fired_at_unix_ms"].as_u64().unwrap());
    }
    let mut unique = fires.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        fires.len(),
        "a fire started two runs: {fires:?}"
    );
    assert!(fires.iter().all(|f| f % 2000 == 0), "{fires:?}");
    let missed = fires
        .iter()
        .filter(|f| **f > killed_at + 1000 && **f < restarted_at)
        .count();
    assert_eq!(
        missed, 1,
        "one run for the fires missed while down: {fires:?}"
    );
    assert!(
        fires.iter().any(|f| *f >= restarted_at),
        "fires after the restart: {fires:?}"
    );
    server.terminate().await.unwrap();
}

/// A private redis-server on a free port, stopped on drop.
struct Redis {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn redis() -> Redis {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let child = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
        ])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server (./dev setup installs it)");
    let url = format!("redis://127.0.0.1:{port}");
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Redis {
        child,
        url,
        _dir: dir,
    }
}

fn redis_cli(url: &str, args: &[&str]) -> String {
    let port = url.rsplit(':').next().unwrap();
    let out = std::process::Command::new("redis-cli")
        .args(["-p", port])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_stream_consumer_across_sigkill_runs_every_message_once() {
    let redis = redis().await;
    let dir = tempfile::tempdir().unwrap();
    let flows = dir.path().join("flows");
    std::fs::create_dir_all(&flows).unwrap();
    // Runs last a moment and at most 4 are unfinished: the consumer is
    // held back, so the crash lands mid-stream.
    std::fs::write(
        flows.join("job.toml"),
        "name = \"job\"\nmax_active_runs = 4\n[[steps]]\nid = \"work\"\nkind = \"wait\"\nduration = \"300ms\"\n",
    )
    .unwrap();
    // A queue as an output (no crash here: a publish cut short by one would
    // rightly need an operator).
    std::fs::write(
        flows.join("announce.toml"),
        "name = \"announce\"\n[[steps]]\nid = \"out\"\nkind = \"emit\"\nto = { queue = \"done\" }\npayload = \"{total: .input.total}\"\n",
    )
    .unwrap();
    let config = write_config(
        dir.path(),
        &dir.path().join("data"),
        &format!(
            "[[models]]\nname = \"echo\"\nprovider = \"echo\"\n[flows]\ndir = {:?}\ninline_wait_ms = 1000\n[[flows.queues]]\nname = \"jobs\"\nurl = {url:?}\nstream = \"jobs\"\nflow = \"job\"\nbatch = 4\ninput = \"{{n: .payload.n}}\"\n[[flows.queues]]\nname = \"done\"\nurl = {url:?}\nstream = \"done\"\n",
            flows.display().to_string(),
            url = redis.url
        ),
    )
    .unwrap();
    const N: u64 = 24;
    for n in 0..N {
        redis_cli(
            &redis.url,
            &["XADD", "jobs", "*", "payload", &json!({"n": n}).to_string()],
        );
    }
    redis_cli(&redis.url, &["XADD", "jobs", "*", "payload", "not json {"]);

    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut c = flows_client(&server).await;
    for _ in 0..500 {
        if all_runs(&mut c, "job").await.len() >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill9().await.unwrap();

    let server = BatonProcess::start(bin(), &config).await.unwrap();
    let mut c = flows_client(&server).await;
    let mut runs = Vec::new();
    for _ in 0..1500 {
        runs = all_runs(&mut c, "job").await;
        if runs.len() as u64 >= N && runs.iter().all(|r| r.status == "completed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    for r in &runs {
        assert_eq!(r.status, "completed", "{} {}", r.run_id, r.reason);
        let n = input_of(&mut c, &r.run_id).await["n"].as_u64().unwrap();
        *seen.entry(n).or_default() += 1;
    }
    assert_eq!(seen.len() as u64, N, "every message ran: {seen:?}");
    assert!(seen.values().all(|c| *c == 1), "none twice: {seen:?}");
    assert_eq!(runs.len() as u64, N);
    // Everything acknowledged; the message whose input does not map went
    // to the dead letters with its reason.
    let pending = redis_cli(&redis.url, &["XPENDING", "jobs", "baton"]);
    assert!(pending.starts_with('0'), "pending: {pending}");
    assert_eq!(redis_cli(&redis.url, &["XLEN", "jobs.dead"]), "1");
    let dead = redis_cli(&redis.url, &["XRANGE", "jobs.dead", "-", "+"]);
    assert!(
        dead.contains("input:") && dead.contains("not json {"),
        "{dead}"
    );
    let id = c
        .start_run(v1::StartRunRequest {
            flow: "announce".into(),
            input_json: json!({"total": N}).to_string(),
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .run_id;
    for _ in 0..500 {
        if input_of(&mut c, &id).await.is_object()
            && all_runs(&mut c, "announce").await[0].status == "completed"
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let out = redis_cli(&redis.url, &["XRANGE", "done", "-", "+"]);
    assert!(
        out.contains(&format!("{{\"total\":{N}}}")) && out.contains(&id),
        "{out}"
    );
    server.terminate().await.unwrap();
}
