//! The session actor: one per live session.
//!
//! It owns the session's state, assigns every journal record its `seq`,
//! hands records to the store's group-commit writer, and releases the
//! matching events to subscribers only once the record is durable. Model
//! calls and tool calls go to the session's [`StepSource`] (the router and
//! the tool executor, or a recording when replaying) on tasks of their own;
//! their results come back as messages, so the actor never waits on a model
//! and always answers `Get`, `Cancel` and `Subscribe` promptly.
//!
//! Files: `actor` (lifecycle, dispatch), `ctx` (the actor's state, by
//! concern), `write` (stage, flush, release: the write-ahead rules),
//! `outbox` (pending events, subscribers, acknowledgements), `load`
//! (rehydration from snapshot + journal, passivation), `requests` (send,
//! subscribe, cancel, delete), `turn` (the turn state machine and model
//! calls), `tools` (tool calls), `gates` (gates held by the session),
//! `hold` (hold sessions: turns that are a gate, for flows' `gate` steps),
//! `policy` (governance at each stage), `checks` (policies' classifiers and
//! evaluators), `redaction` (governance data: pseudonyms, caches).
//!
//! [`StepSource`]: crate::source::StepSource

mod actor;
mod checks;
mod ctx;
mod gates;
mod hold;
mod load;
mod msg;
mod outbox;
mod policy;
mod redaction;
mod requests;
mod tools;
mod turn;
mod view;
mod write;

pub(crate) use actor::{SessionActor, SessionArgs};
pub(crate) use msg::{Notice, Notify, SessionMsg};
pub(crate) use outbox::{Queued, Subscription};
pub(crate) use policy::mask;
pub use view::SessionView;
