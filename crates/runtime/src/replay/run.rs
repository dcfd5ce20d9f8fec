//! The replay itself: a new session fed the recording's turns and actions,
//! then compared with it.

use baton_types::{EventKind, SessionId, SessionStatus, now_unix_ms};

use std::collections::{HashMap, VecDeque};

use super::recording::{Apply, Feeder, Next, RecordingReader, normalized};
use super::source::ReplaySource;
use super::{Divergence, ReplayReport};
use crate::error::{Error, Result};
use crate::handle::RuntimeHandle;
use crate::sessions::NewSession;
use crate::state::PendingTool;

/// How long a replay waits for its session's next record before it gives up.
const REPLAY_RECORD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Records of a journal read at a time.
const PAGE: u64 = 256;

impl RuntimeHandle {
    /// Re-run a recorded session deterministically: a new session (kept,
    /// with `replay_of` set) gets the recording's turns in order, its model
    /// calls are answered with the recorded answers in order and its tool
    /// calls with the recorded results — no model or tool is called. What
    /// was done to the recording from outside is done again, in the
    /// recording's order and at the same point: each gate the replay opens
    /// is decided as the recording's gate with the same turn, kind, point,
    /// tool call and order was (through [`RuntimeHandle::decide_gate`], with
    /// the recorded decision, reviewer, reason and edit; a gate the
    /// recording's timeout decided is decided by reviewer `timeout` with the
    /// recorded reason), client-side tool calls get the recorded results
    /// (through [`RuntimeHandle::submit_tool_result`]) and a turn cancelled
    /// at a gate is cancelled. The runtime's current code and configuration
    /// decide everything else (steps, tool selection, which gates open,
    /// limits). The replay stops early when it opens a gate the recording
    /// does not have or did not decide, or waits for anything the recording
    /// does not give; its open turn is then cancelled once compared. The
    /// two journals are compared record by record (without timings,
    /// attempts, routing, deltas, gate ids and escalations) and the first
    /// difference is reported.
    pub async fn replay(&self, id: SessionId) -> Result<ReplayReport> {
        self.replay_by(id, crate::sessions::embedded()).await
    }

    /// [`Self::replay`] by principal `by`: the replay session is started by
    /// `by`, in the recording's tenant.
    pub(crate) async fn replay_by(&self, id: SessionId, by: String) -> Result<ReplayReport> {
        // New work, as a start is: refused while draining or unwritable.
        self.inner.shared.admit()?;
        let store = &self.inner.shared.store;
        let Some(meta) = store.load_meta(id).await? else {
            return Err(Error::SessionNotFound(id));
        };
        // The recording as it is now: a live session may write on.
        let upto = store.last_seq(id).await?;
        let Some(first) = store.read_journal_range(id, 0, 1).await?.into_iter().next() else {
            return Err(Error::FailedPrecondition(format!(
                "session {id} has an empty journal"
            )));
        };
        let mut started = first.kind;
        let EventKind::SessionStarted {
            route,
            system_prompt,
            replay_of,
            by: started_by,
            ..
        } = &mut started
        else {
            return Err(Error::FailedPrecondition(format!(
                "session {id}'s journal does not start with SessionStarted"
            )));
        };
        // Everything the recording started with, so fields added later
        // carry over without a change here.
        *replay_of = Some(id.to_string());
        *started_by = by.clone();
        let (route, system_prompt) = (route.clone(), system_prompt.clone());
        // One pass over the recording, a page at a time: what it did from
        // outside, where its turns and tool results are. Their content is
        // read again when the replay needs it, so it is never all held.
        let mut recording = RecordingReader::default();
        let mut turns: Vec<(u64, bool)> = Vec::new();
        let mut tools: HashMap<String, u64> = HashMap::new();
        let mut after = 0;
        while after < upto {
            let page = store
                .read_journal_range(id, after, upto.min(after + PAGE))
                .await?;
            let Some(last) = page.last().map(|e| e.seq) else {
                break;
            };
            after = last;
            for e in &page {
                recording.push(e);
                match &e.kind {
                    EventKind::TurnAccepted { review, .. } => turns.push((e.seq, *review)),
                    EventKind::ToolResult { call_id, .. } => {
                        tools.insert(call_id.clone(), e.seq);
                    }
                    _ => {}
                }
            }
        }
        let mut feeder = Feeder::new(recording.finish());
        let mut metadata = meta.metadata.clone();
        metadata.insert("replay_of".into(), id.to_string());
        // The replay session (its actor starts at its first turn, after its
        // recording is registered).
        let replay_id = self
            .create_session(NewSession {
                route,
                system_prompt,
                metadata,
                idempotency_key: None,
                status: SessionStatus::Idle,
                records: vec![(now_unix_ms(), started)],
                copy_from: None,
                audit: (
                    "replay_session",
                    serde_json::json!({ "source": id.to_string() }),
                ),
                tenant: meta.tenant.clone(),
                by,
            })
            .await?
            .id;
        self.inner.shared.replays_insert(
            replay_id,
            std::sync::Arc::new(ReplaySource::new(store.clone(), id, upto, tools)),
        );
        let outcome = async {
            let mut replayed_turns = 0u64;
            let mut stopped = None;
            'turns: for (seq, review) in turns {
                let message = turn_message(store, id, seq).await?;
                let mut events = self.send_message(replay_id, message, review).await?;
                replayed_turns += 1;
                use futures::StreamExt;
                loop {
                    let e = match tokio::time::timeout(REPLAY_RECORD_TIMEOUT, events.next()).await {
                        Ok(Some(Ok(e))) => e,
                        Ok(Some(Err(e))) => return Err(e),
                        Ok(None) => break,
                        Err(_) => {
                            stopped = Some(format!(
                                "the replay wrote nothing for {} s",
                                REPLAY_RECORD_TIMEOUT.as_secs()
                            ));
                            break 'turns;
                        }
                    };
                    if let Err(why) = feeder.observe(&e) {
                        stopped = Some(why);
                        break 'turns;
                    }
                    if e.ends_turn() {
                        break;
                    }
                    if let Err(why) = self.feed_replay(replay_id, &mut feeder).await {
                        stopped = Some(why);
                        break 'turns;
                    }
                }
            }
            Ok::<_, Error>((replayed_turns, stopped))
        }
        .await;
        self.inner.shared.replays_remove(replay_id);
        let (replayed_turns, stopped) = match outcome {
            Ok(o) => o,
            Err(e) => {
                self.end_replay_turn(replay_id).await;
                return Err(e);
            }
        };
        // Compared page by page as the replay's journal is read (before a
        // stopped replay's cancellation: those records are the replay's
        // own, not the recording's), so neither journal is held twice.
        let compared = compare(store, id, upto, replay_id).await;
        if let Some(why) = &stopped {
            tracing::info!(source = %id, replay = %replay_id, "replay stopped early: {why}");
            self.end_replay_turn(replay_id).await;
        }
        let (compared, divergence) = compared?;
        Ok(ReplayReport {
            source: id,
            replay: replay_id,
            turns: replayed_turns,
            compared,
            divergence,
            stopped,
        })
    }

    /// Apply every recorded action the replay session is ready for. An
    /// error ends the replay, saying why.
    async fn feed_replay(
        &self,
        replay: SessionId,
        feeder: &mut Feeder,
    ) -> std::result::Result<(), String> {
        loop {
            let mut next = feeder.next(false);
            if matches!(next, Next::Wait)
                && feeder.holds_open()
                && self.replay_is_stuck(replay, feeder.seen_seq).await
            {
                next = feeder.next(true);
            }
            let apply = match next {
                Next::Wait => return Ok(()),
                Next::Stop(why) => return Err(why),
                Next::Apply(apply) => apply,
            };
            let (what, result) = match apply {
                Apply::Decide {
                    gate_id,
                    decision,
                    reviewer,
                    reason,
                } => (
                    format!("{} by {reviewer} of gate {gate_id}", decision.as_str()),
                    self.decide_gate(&gate_id.to_string(), decision, reviewer, reason)
                        .await
                        .map(drop),
                ),
                Apply::Submit { call_id, outcome } => (
                    format!("result of tool call {call_id}"),
                    self.submit_tool_result(replay, call_id, outcome)
                        .await
                        .map(drop),
                ),
                Apply::Cancel => (
                    "cancellation".to_string(),
                    self.cancel(replay).await.map(drop),
                ),
            };
            match result {
                // Decided or answered already (by the replay's own gate or
                // client-tool timeout): the comparison shows how.
                Ok(()) | Err(Error::FailedPrecondition(_)) => feeder.applied(),
                Err(e) => return Err(format!("the recorded {what} was refused: {e}")),
            }
        }
    }

    /// Whether the replay session wrote everything up to `seen_seq` and can
    /// go no further without a gate decision or a client's tool result: no
    /// model call open, and every tool call without a result is held by a
    /// gate or is the client's.
    async fn replay_is_stuck(&self, replay: SessionId, seen_seq: u64) -> bool {
        let Ok(view) = self.session_state(replay).await else {
            return false;
        };
        if !view.live || view.state.last_seq > seen_seq {
            return false;
        }
        let Some(c) = &view.state.current else {
            return false;
        };
        let held = |t: &PendingTool| {
            t.client_side || t.attention.is_some() || c.gates.iter().any(|g| g.call_id == t.call_id)
        };
        let mut open = c.tools.iter().filter(|t| t.result.is_none());
        !c.model_call_open
            && open.clone().all(held)
            && (!c.gates.is_empty() || open.any(|t| t.client_side))
    }

    /// Cancel the replay session's open turn, if any, so that nobody is
    /// asked to decide a replay's gate; returns once the cancellation is
    /// written (or after a few seconds).
    async fn end_replay_turn(&self, replay: SessionId) {
        let after = self.inner.shared.store.last_seq(replay).await.unwrap_or(0);
        let turn = match self.cancel(replay).await {
            Ok(Some(turn)) => turn,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(replay = %replay, error = %e, "cannot cancel the replay's open turn");
                return;
            }
        };
        let Ok(mut events) = self.resume(replay, after).await else {
            return;
        };
        use futures::StreamExt;
        let ended = async {
            while let Some(Ok(e)) = events.next().await {
                if e.ends_turn() && e.turn() == Some(turn) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), ended).await;
    }
}

/// The message of the recording's `TurnAccepted` at `seq`.
async fn turn_message(
    store: &baton_store::Store,
    id: SessionId,
    seq: u64,
) -> Result<baton_types::Message> {
    let page = store
        .read_journal_range(id, seq.saturating_sub(1), seq)
        .await?;
    page.into_iter()
        .find_map(|e| match e.kind {
            EventKind::TurnAccepted { message, .. } => Some(message),
            _ => None,
        })
        .ok_or_else(|| {
            Error::Internal(format!(
                "session {id}'s record {seq} is no longer the turn it was"
            ))
        })
}

/// A journal's compared records ([`normalized`]) in order, read a page at
/// a time.
struct Compared<'a> {
    store: &'a baton_store::Store,
    id: SessionId,
    upto: u64,
    after: u64,
    page: VecDeque<(u64, serde_json::Value)>,
}

impl<'a> Compared<'a> {
    fn new(store: &'a baton_store::Store, id: SessionId, upto: u64) -> Self {
        Compared {
            store,
            id,
            upto,
            after: 0,
            page: VecDeque::new(),
        }
    }

    async fn next(&mut self) -> Result<Option<(u64, serde_json::Value)>> {
        while self.page.is_empty() && self.after < self.upto {
            let page = self
                .store
                .read_journal_range(
                    self.id,
                    self.after,
                    self.upto.min(self.after.saturating_add(PAGE)),
                )
                .await?;
            let Some(last) = page.last().map(|e| e.seq) else {
                break;
            };
            self.after = last;
            self.page.extend(
                page.iter()
                    .filter_map(|e| normalized(&e.kind).map(|v| (e.seq, v))),
            );
        }
        Ok(self.page.pop_front())
    }
}

/// The recording's (up to `upto`) and the replay's compared records in
/// order, both read a page at a time: how many matched, and the first
/// difference.
async fn compare(
    store: &baton_store::Store,
    source: SessionId,
    upto: u64,
    replay: SessionId,
) -> Result<(u64, Option<Divergence>)> {
    let mut expected = Compared::new(store, source, upto);
    let mut actual = Compared::new(store, replay, u64::MAX);
    let mut compared = 0u64;
    loop {
        let a = actual.next().await?;
        let x = expected.next().await?;
        match (x, a) {
            (None, None) => return Ok((compared, None)),
            (Some(x), Some(a)) if x.1 == a.1 => compared += 1,
            (x, a) => {
                return Ok((
                    compared,
                    Some(Divergence {
                        index: compared,
                        source_seq: x.as_ref().map(|v| v.0),
                        replay_seq: a.as_ref().map(|v| v.0),
                        expected: x.map(|v| v.1.to_string()).unwrap_or_default(),
                        actual: a.map(|v| v.1.to_string()).unwrap_or_default(),
                    }),
                ));
            }
        }
    }
}
