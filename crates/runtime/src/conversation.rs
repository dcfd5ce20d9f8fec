//! A conversation as it stood when one of its turns ended: what a client
//! continues from (the OpenAI front door's `previous_response_id`).

use std::collections::BTreeMap;

use baton_types::{AccessRole, EventKind, Message, SessionId};

use crate::access::Caller;
use crate::error::{Error, Result};

/// A session's conversation at the end of one of its turns.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnConversation {
    /// Every message up to and including the turn's answer.
    pub messages: Vec<Message>,
    /// The turn is the session's latest and the session is idle: a new
    /// turn sent to it continues exactly this conversation.
    pub head: bool,
    pub route: String,
    pub system_prompt: String,
    pub metadata: BTreeMap<String, String>,
    /// The data classes the session's content is labelled with.
    pub data_classes: Vec<String>,
    pub budget_usd: Option<f64>,
}

/// Journal records read per page while looking for a turn's end.
const PAGE: usize = 512;

/// The latest records read to find the latest turn's end.
const TAIL: u64 = 16;

impl Caller {
    /// The conversation of session `id` when its turn `turn` completed.
    /// NOT_FOUND for a session or turn the caller cannot see or that does
    /// not exist; FAILED_PRECONDITION for a turn that did not complete
    /// (failed, cancelled, or still running).
    pub async fn conversation_at_turn(&self, id: SessionId, turn: u64) -> Result<TurnConversation> {
        self.require(AccessRole::Client)?;
        let view = self.get(id).await?;
        // Only the caller's own tenant: not even an admin continues (and
        // bills) another tenant's conversation.
        if view.tenant != self.principal().tenant {
            return Err(Error::SessionNotFound(id));
        }
        let idle = view.current_turn == 0 && view.queued_turns == 0;
        if turn == 0 || turn > view.last_turn {
            return Err(Error::NotFoundDetail(format!(
                "session {id} has no turn {turn}"
            )));
        }
        let base = |messages, head| TurnConversation {
            messages,
            head,
            route: view.route.clone(),
            system_prompt: view.system_prompt.clone(),
            metadata: view.metadata.clone(),
            data_classes: view.data_classes.clone(),
            budget_usd: view.budget_usd,
        };
        let rt = self.runtime();
        if turn == view.last_turn && idle {
            // The latest turn: it is the head if it completed, which its
            // last records say (a failed, cancelled or gate-rejected turn
            // falls through to the scan, which refuses it).
            let from = view.last_seq.saturating_sub(TAIL);
            let tail = rt.journal_page(id, from, TAIL as usize + 1).await?;
            let completed = tail
                .events
                .iter()
                .any(|e| matches!(&e.kind, EventKind::TurnCompleted { turn: t, .. } if *t == turn));
            if completed {
                return Ok(base(view.messages.clone(), true));
            }
        }
        // An earlier turn (or the latest, still running or failed): find
        // where it ended and rebuild the state there.
        let mut after = 0;
        let end = loop {
            let page = rt.journal_page(id, after, PAGE).await?;
            let found = page.events.iter().find_map(|e| match &e.kind {
                EventKind::TurnCompleted { turn: t, .. } if *t == turn => Some(Ok(e.seq)),
                EventKind::TurnFailed { turn: t, .. }
                | EventKind::TurnCancelled { turn: t, .. }
                    if *t == turn =>
                {
                    Some(Err(()))
                }
                _ => None,
            });
            match (found, page.next_after_seq) {
                (Some(Ok(seq)), _) => break seq,
                (Some(Err(())), _) => {
                    return Err(Error::FailedPrecondition(format!(
                        "turn {turn} of session {id} did not complete: there is no answer to continue from"
                    )));
                }
                (None, Some(next)) => after = next,
                (None, None) => {
                    return Err(Error::FailedPrecondition(format!(
                        "turn {turn} of session {id} has not completed yet"
                    )));
                }
            }
        };
        let at = rt.state_at(id, end).await?;
        Ok(base(at.state.messages, false))
    }

    /// Continue the conversation of session `id` as its next turn, only
    /// if its last turn is still `turn` and it is idle (what
    /// [`Self::conversation_at_turn`] called the head): FAILED_PRECONDITION
    /// with nothing sent when another request got there first.
    pub async fn continue_after_turn(
        &self,
        id: SessionId,
        turn: u64,
        message: Message,
    ) -> Result<crate::EventStream> {
        self.require(AccessRole::Client)?;
        self.within_budget()?;
        let view_tenant = self.get(id).await?.tenant;
        if view_tenant != self.principal().tenant {
            return Err(Error::SessionNotFound(id));
        }
        self.runtime()
            .send_message_after(id, message, false, self.principal().label(), Some(turn))
            .await
    }
}
