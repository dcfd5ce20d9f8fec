//! The error body: `{"error": {"message", "type", "param", "code"}}`, as an
//! HTTP error's body or as the event that ends a stream.

use serde::{Deserialize, Serialize};

/// `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorObject,
}

/// What went wrong. `param` and `code` are sent as `null` when unknown, as
/// OpenAI does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorObject {
    pub message: String,
    /// `invalid_request_error`, `server_error`, `insufficient_quota`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The request field at fault, e.g. `messages[2].content[0].image_url.url`.
    pub param: Option<String>,
    pub code: Option<String>,
}
