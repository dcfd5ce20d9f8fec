//! The OpenAI-compatible front door: `POST /v1/chat/completions` and
//! `GET /v1/models`, so existing OpenAI SDK clients talk to Baton unchanged
//! (point their base URL at `http://HOST:PORT/v1`).
//!
//! Each chat completion is one *one-shot* Baton session, journaled like any
//! other: the request's `model` names a Baton route, system and developer
//! messages become the system prompt, every other message but the last
//! becomes the session's starting history, and the last (user) message is
//! sent as its one turn. The turn ends with the model's answer; tool calls the
//! model asks for are returned to the caller (finish reason `tool_calls`), as
//! OpenAI does, not run by Baton. The session id is returned in the
//! `x-baton-session-id` header (and in the response id, `chatcmpl-<id>`), so
//! the journal of any call can be inspected over gRPC or with `baton session`.
//!
//! Streaming (`"stream": true`) sends `chat.completion.chunk` events: a first
//! chunk with the role, the text as Baton streams it, the tool calls (one
//! chunk, an index per call), a chunk with the finish reason, a usage chunk
//! when `stream_options.include_usage` is set, then `data: [DONE]`.
//!
//! **Retraction.** A model call whose stream broke after its text was sent
//! is resumed by the router (a continuation, or a retry whose answer begins
//! with the text sent), invisibly to the client. When the new answer does
//! not begin with the text sent, the gRPC API tells clients to discard it
//! (`OutputRetracted`); the OpenAI stream format has no way to take text
//! back, so when output was already sent to the client, the stream ends with
//! an error event (`"code": "stream_retracted"`, "re-issue the request") and
//! no `[DONE]`. When nothing was sent yet the retry is invisible. The same
//! applies when the recorded answer does not extend the text already sent
//! (for example, a reviewer edited it at a gate). The session's turn still
//! completes in Baton; its answer is in the journal.
//!
//! Requests, responses, chunks and errors are OpenAI's wire shapes as serde
//! types ([`types`]). A request body is parsed into a
//! [`types::ChatCompletionRequest`] whose fields Baton reads are
//! [`types::Lenient`], so a field of the wrong kind does not fail the parse
//! with serde's message; [`parse_request`] then checks every field and names
//! the one at fault as OpenAI does (`messages[2].content[0].image_url.url:
//! must be a non-empty string`). Fields Baton ignores, and unknown ones, are
//! accepted.
//!
//! Errors have OpenAI's shape (`{"error": {"message", "type", "param",
//! "code"}}`); [`turn_failed_error`] is the one place a failed turn's code
//! becomes an HTTP status and error type. A failure before any output is an
//! HTTP error even when streaming; one after output was sent ends the stream
//! with an error event.
//!
//! | file | what |
//! |---|---|
//! | `handlers.rs` | the two endpoints: parse, start the session, send the turn, answer |
//! | `responses.rs` | `POST /v1/responses`: a response is a turn; `previous_response_id` continues the session (in place or branched) |
//! | `responses_request.rs` | the Responses body, translated to the chat shape and checked by `request.rs` |
//! | `responses_stream.rs` | a turn's events as a `response` object and as `response.*` SSE events |
//! | `embeddings.rs` | `POST /v1/embeddings`: the request checked, the vectors as floats or base64 |
//! | `request.rs` | the request body and Baton's headers, checked, as a [`ChatRequest`] |
//! | `response.rs` | a finished turn as a `chat.completion` |
//! | `stream.rs` | session events as `chat.completion.chunk` SSE frames |
//! | `error.rs` | [`ApiError`] and the one mapping of failures onto HTTP statuses |
//! | `turn.rs` | what the response and the stream share about a turn in flight |
//! | `headers.rs` | Baton's request and response headers |
//! | [`types`] | OpenAI's wire shapes as serde types |

mod embeddings;
mod error;
mod handlers;
mod headers;
mod request;
mod response;
mod responses;
mod responses_request;
mod responses_stream;
mod stream;
mod turn;
pub mod types;

pub use embeddings::{CALL_HEADER, EmbeddingsRequest, embeddings, parse_embeddings};
pub use error::{ApiError, RETRACTED_MESSAGE, runtime_error, turn_failed_error};
pub use handlers::{chat_completions, model_json, models};
pub use headers::{
    ATTEMPTS_HEADER, BUDGET_HEADER, COST_HEADER, DATA_CLASSES_HEADER, ENDPOINT_HEADER,
    SESSION_HEADER,
};
pub use request::{ChatRequest, parse_request};
pub use responses::responses;
pub use responses_request::{ResponsesRequest, parse_response_id, parse_responses, response_id};
