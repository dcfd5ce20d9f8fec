//! Baton's shared vocabulary.
//!
//! Every other Baton crate speaks in these types: session ids, the normalised
//! message / tool-call / usage shape that all model providers are mapped into,
//! the events a session emits, and the error codes that the server maps onto
//! gRPC status codes. The crate depends on little more than `serde` so that it
//! can be used by embedders and tools without pulling in the runtime.
//!
//! ```
//! use baton_types::{Message, SessionId};
//!
//! let id = SessionId::new();
//! let parsed: SessionId = id.to_string().parse().unwrap();
//! assert_eq!(id, parsed);
//! let m = Message::user("hello");
//! assert_eq!(m.text(), "hello");
//! ```

pub mod describe;
mod error;
mod event;
mod gate;
mod generation;
mod id;
mod message;
mod policy;
mod principal;
mod routing;
mod turn;
mod url;
mod wire;

pub use error::ErrorCode;
pub use event::{EventKind, SessionEvent, SessionStatus, TurnOutcome};
pub use gate::{Decision, GateKind, GateOutcome, GatePoint, GateRecord, GateStatus, TimeoutAction};
pub use generation::{Generation, MAX_STOP_SEQUENCES, ToolChoice};
pub use id::{GateId, ParseIdError, SessionId};
pub use message::{
    FinishReason, IMAGE_MEDIA_TYPES, Image, Message, Role, ToolCall, ToolDefinition, Usage,
};
pub use policy::{PolicyHit, PolicyMatch, PolicyOutcome, PolicyStage, QualityScore};
pub use principal::{AccessRole, AuthMethod, DEFAULT_TENANT, Principal};
pub use routing::{AttemptFailure, OutputResume, RouteCandidate, RoutingDecision};
pub use turn::{ModelCallReason, TurnFailureCode};
pub use url::{redact_url, redact_url_in};
pub use wire::{UnknownValue, WireEnum};

/// The UTC calendar date `(year, month, day)` of milliseconds since the
/// Unix epoch (Howard Hinnant's days-to-civil algorithm).
pub fn utc_date(unix_ms: u64) -> (i64, i64, i64) {
    let days = (unix_ms / 86_400_000) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Milliseconds since the Unix epoch, as stored in journal records and events.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
