//! Queue triggers and queue outputs, behind [`QueueSource`] and
//! [`QueueSink`]; Redis Streams implements both.
//!
//! A consumer reads a batch, starts one run per message with the delivery
//! id `queue:<name>` / `<message id>`, and acknowledges a message only
//! once its run is durably started: a crash before the acknowledgement
//! leaves the message pending, it is read again at the next start, and the
//! delivery id finds the run it already started. At a flow's
//! `max_active_runs` the consumer stops acknowledging and waits (the
//! messages stay in the broker). A message that cannot start a run (its
//! input does not check) goes to the dead letters (`<stream>.dead`) with
//! the reason, then is acknowledged.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use redis::aio::ConnectionManager;
use redis::streams::StreamReadReply;
use serde_json::{Value, json};

use crate::broker::{QueueMessage, QueueSink, QueueSource};
use crate::config::QueueConfig;
use crate::deps::{Deps, StartRun};
use crate::error::{Error, Result};
use crate::expr::Expr;
use crate::schedule::trigger_principal;

fn broker(e: redis::RedisError) -> Error {
    Error::Internal(format!("redis: {e}"))
}

/// A Redis stream read in a consumer group.
pub struct RedisSource {
    read: ConnectionManager,
    write: ConnectionManager,
    stream: String,
    group: String,
    consumer: String,
    /// Read this consumer's pending messages before new ones.
    pending_first: bool,
}

impl RedisSource {
    /// Connect and create the group (from the start of the stream, so that
    /// nothing published before the first start is missed).
    pub async fn connect(c: &QueueConfig) -> Result<RedisSource> {
        let client = redis::Client::open(c.url.as_str())
            .map_err(|e| Error::InvalidArgument(format!("flows.queues[{}].url: {e}", c.name)))?;
        let read = ConnectionManager::new(client.clone())
            .await
            .map_err(broker)?;
        let mut write = ConnectionManager::new(client).await.map_err(broker)?;
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&c.stream)
            .arg(&c.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut write)
            .await;
        if let Err(e) = created
            && e.code() != Some("BUSYGROUP")
        {
            return Err(broker(e));
        }
        Ok(RedisSource {
            read,
            write,
            stream: c.stream.clone(),
            group: c.group.clone(),
            consumer: c.consumer.clone(),
            pending_first: true,
        })
    }

    async fn read(
        &mut self,
        max: usize,
        from: &str,
        block: Option<Duration>,
    ) -> Result<Vec<QueueMessage>> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(max.max(1));
        if let Some(b) = block {
            cmd.arg("BLOCK").arg(b.as_millis() as u64);
        }
        cmd.arg("STREAMS").arg(&self.stream).arg(from);
        let reply: Option<StreamReadReply> =
            cmd.query_async(&mut self.read).await.map_err(broker)?;
        let mut out = Vec::new();
        for key in reply.map(|r| r.keys).unwrap_or_default() {
            for id in key.ids {
                let mut fields = BTreeMap::new();
                for (k, v) in id.map {
                    let text: String = redis::from_redis_value(v).unwrap_or_default();
                    fields.insert(k, text);
                }
                out.push(QueueMessage { id: id.id, fields });
            }
        }
        Ok(out)
    }
}

impl QueueSource for RedisSource {
    fn fetch(&mut self, max: usize, block: Duration) -> BoxFuture<'_, Result<Vec<QueueMessage>>> {
        Box::pin(async move {
            if self.pending_first {
                let pending = self.read(max, "0", None).await?;
                if !pending.is_empty() {
                    return Ok(pending);
                }
                self.pending_first = false;
            }
            self.read(max, ">", Some(block)).await
        })
    }

    fn ack<'a>(&'a mut self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let _: i64 = redis::cmd("XACK")
                .arg(&self.stream)
                .arg(&self.group)
                .arg(id)
                .query_async(&mut self.write)
                .await
                .map_err(broker)?;
            Ok(())
        })
    }

    fn dead_letter<'a>(
        &'a mut self,
        msg: &'a QueueMessage,
        error: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("XADD");
            cmd.arg(format!("{}.dead", self.stream))
                .arg("*")
                .arg("source_id")
                .arg(&msg.id)
                .arg("error")
                .arg(error);
            for (k, v) in &msg.fields {
                cmd.arg(k).arg(v);
            }
            let _: String = cmd.query_async(&mut self.write).await.map_err(broker)?;
            Ok(())
        })
    }

    fn rewind(&mut self) {
        self.pending_first = true;
    }
}

/// A Redis stream written with XADD; connects on first use (and again
/// after a failure), so a broker that is down does not stop the server.
pub struct RedisSink {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
    stream: String,
}

impl RedisSink {
    pub fn new(c: &QueueConfig) -> Result<RedisSink> {
        let client = redis::Client::open(c.url.as_str())
            .map_err(|e| Error::InvalidArgument(format!("flows.queues[{}].url: {e}", c.name)))?;
        Ok(RedisSink {
            client,
            conn: tokio::sync::Mutex::new(None),
            stream: c.stream.clone(),
        })
    }
}

impl QueueSink for RedisSink {
    fn publish<'a>(&'a self, payload: &'a Value, key: &'a str) -> BoxFuture<'a, Result<String>> {
        Box::pin(async move {
            let mut conn = {
                let mut g = self.conn.lock().await;
                match g.as_ref() {
                    Some(c) => c.clone(),
                    None => {
                        let c = ConnectionManager::new(self.client.clone())
                            .await
                            .map_err(broker)?;
                        *g = Some(c.clone());
                        c
                    }
                }
            };
            redis::cmd("XADD")
                .arg(&self.stream)
                .arg("*")
                .arg("payload")
                .arg(payload.to_string())
                .arg("key")
                .arg(key)
                .query_async(&mut conn)
                .await
                .map_err(broker)
        })
    }
}

/// Connect to queue `c` (retrying while the broker is away) and consume it.
pub async fn consume_redis(deps: Arc<Deps>, c: QueueConfig, input: Expr) {
    let mut delay = Duration::from_millis(200);
    let source = loop {
        match RedisSource::connect(&c).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(queue = %c.name, error = %e, "cannot connect to the queue; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    };
    consume(deps, c, input, Box::new(source)).await
}

/// Consume `source` for queue `c` until the service stops.
pub async fn consume(
    deps: Arc<Deps>,
    c: QueueConfig,
    input: Expr,
    mut source: Box<dyn QueueSource>,
) {
    let Some(flow) = c.flow.clone() else { return };
    let principal = trigger_principal("queue", &c.name, &c.tenant);
    loop {
        let msgs = match source.fetch(c.batch, Duration::from_secs(1)).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(queue = %c.name, error = %e, "cannot read the queue; retrying");
                source.rewind();
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        for m in msgs {
            let Some(starter) = deps.starter() else {
                return;
            };
            let payload = m
                .fields
                .get("payload")
                .map(|p| serde_json::from_str(p).unwrap_or_else(|_| Value::String(p.clone())))
                .unwrap_or(Value::Null);
            let data = json!({ "id": m.id, "fields": m.fields, "payload": payload });
            let run_input = match input.eval(&data) {
                Ok(v) => v,
                Err(e) => {
                    dead(&mut *source, &c, &m, &format!("input: {e}")).await;
                    continue;
                }
            };
            let req = StartRun {
                flow: flow.clone(),
                input: run_input,
                idempotency_key: None,
                trigger: format!("queue:{}", c.name),
                parent: None,
                delivery: Some((format!("queue:{}", c.name), m.id.clone())),
            };
            match starter.start(req, principal.clone()).await {
                Ok(started) => {
                    tracing::debug!(queue = %c.name, message = %m.id, run = %started.id, "queue message started a run");
                    if let Err(e) = source.ack(&m.id).await {
                        // Read again later; the delivery id finds its run.
                        tracing::warn!(queue = %c.name, message = %m.id, error = %e, "cannot acknowledge");
                        source.rewind();
                    }
                }
                Err(Error::ResourceExhausted {
                    retry_after_secs, ..
                }) => {
                    // Backpressure: stop here, read these again later.
                    source.rewind();
                    tokio::time::sleep(Duration::from_secs(retry_after_secs.max(1))).await;
                    break;
                }
                Err(e @ (Error::InvalidArgument(_) | Error::NotFound(_))) => {
                    dead(&mut *source, &c, &m, &e.to_string()).await;
                }
                Err(e) => {
                    tracing::warn!(queue = %c.name, message = %m.id, error = %e, "cannot start a run; retrying");
                    source.rewind();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break;
                }
            }
        }
    }
}

async fn dead(source: &mut dyn QueueSource, c: &QueueConfig, m: &QueueMessage, error: &str) {
    tracing::warn!(queue = %c.name, message = %m.id, error, "message to the dead letters");
    match source.dead_letter(m, error).await {
        Ok(()) => {
            if let Err(e) = source.ack(&m.id).await {
                tracing::warn!(queue = %c.name, message = %m.id, error = %e, "cannot acknowledge");
            }
        }
        Err(e) => {
            tracing::warn!(queue = %c.name, message = %m.id, error = %e, "cannot write the dead letter; kept");
            source.rewind();
        }
    }
}
