//! Token usage, as OpenAI reports it.

use serde::{Deserialize, Serialize};

/// The `usage` of a completion, or of the last chunk of a stream that asked
/// for it (`stream_options.include_usage`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl From<baton_types::Usage> for Usage {
    fn from(u: baton_types::Usage) -> Self {
        Self {
            prompt_tokens: u.input_tokens,
            completion_tokens: u.output_tokens,
            total_tokens: u.input_tokens.saturating_add(u.output_tokens),
        }
    }
}
