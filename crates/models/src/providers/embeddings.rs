//! `POST {base_url}/embeddings` on an OpenAI-compatible server: one
//! embeddings attempt of an `openai` endpoint.

use baton_types::{FinishReason, Message, Usage};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::http::{self, Timeouts, malformed};
use crate::{ModelRequest, ModelResponse, ProviderError, ProviderErrorKind};

/// Where an embeddings request goes.
pub(super) struct Target<'a> {
    pub client: &'a reqwest::Client,
    pub url: &'a reqwest::Url,
    pub model: &'a str,
    /// The bearer token (a tenant's own key, or the endpoint's).
    pub api_key: Option<&'a str>,
    pub timeouts: Timeouts,
    /// The provider's reading of a non-2xx answer (status, body,
    /// `Retry-After`).
    pub status_error: fn(u16, &[u8], Option<std::time::Duration>) -> ProviderError,
}

#[derive(Deserialize)]
struct Wire {
    data: Option<Vec<WireItem>>,
    model: Option<String>,
    usage: Option<WireUsage>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct WireItem {
    embedding: Option<Vec<f32>>,
    index: Option<usize>,
}

#[derive(Deserialize)]
struct WireUsage {
    prompt_tokens: Option<u64>,
}

/// One attempt: the vectors in input order, or the provider's error.
pub(super) async fn call(
    t: Target<'_>,
    req: &ModelRequest,
) -> Result<ModelResponse, ProviderError> {
    let Some(input) = &req.embed else {
        return Err(ProviderError::new(
            ProviderErrorKind::InvalidRequest,
            "not an embeddings request",
        ));
    };
    let mut body = json!({
        "model": t.model,
        "input": input.input,
        "encoding_format": "float",
    });
    if let Some(d) = input.dimensions {
        body["dimensions"] = json!(d);
    }
    let mut rb = t.client.post(t.url.clone()).json(&body);
    if let Some(key) = t.api_key {
        rb = rb.bearer_auth(key);
    }
    let resp = http::send(rb, t.timeouts, Instant::now() + t.timeouts.first_token).await?;
    let status = resp.status();
    if !status.is_success() {
        let retry_after = http::retry_after(resp.headers());
        let body = http::read_error_body(resp, t.timeouts.idle).await;
        return Err((t.status_error)(status.as_u16(), &body, retry_after));
    }
    let bytes = http::read_body(http::byte_stream(resp), t.timeouts.idle).await?;
    parse(&bytes, input.input.len(), t.model)
}

/// The vectors of a response body, in input order: exactly one per input,
/// every index once, all of one length.
fn parse(bytes: &[u8], inputs: usize, model: &str) -> Result<ModelResponse, ProviderError> {
    let wire: Wire = serde_json::from_slice(bytes)
        .map_err(|e| malformed(format!("malformed embeddings body: {e}")))?;
    if let Some(err) = wire.error.filter(|e| !e.is_null()) {
        return Err(malformed(format!(
            "provider answered with an error: {}",
            http::truncate(err.to_string(), http::MAX_ERROR_TEXT)
        )));
    }
    let data = wire
        .data
        .ok_or_else(|| malformed("embeddings body has no data"))?;
    if data.len() != inputs {
        return Err(malformed(format!(
            "{} embeddings for {inputs} inputs",
            data.len()
        )));
    }
    let mut vectors: Vec<Option<Vec<f32>>> = vec![None; inputs];
    for (i, item) in data.into_iter().enumerate() {
        let at = item.index.unwrap_or(i);
        let slot = vectors
            .get_mut(at)
            .ok_or_else(|| malformed(format!("embedding index {at} out of range")))?;
        if slot.is_some() {
            return Err(malformed(format!("embedding index {at} given twice")));
        }
        *slot = Some(
            item.embedding
                .ok_or_else(|| malformed(format!("embedding {at} has no vector")))?,
        );
    }
    let vectors: Vec<Vec<f32>> = vectors.into_iter().flatten().collect();
    if let Some(first) = vectors.first()
        && vectors.iter().any(|v| v.len() != first.len())
    {
        return Err(malformed("embeddings of different lengths"));
    }
    Ok(ModelResponse {
        message: Message::assistant(String::new()),
        usage: Usage {
            input_tokens: wire.usage.and_then(|u| u.prompt_tokens).unwrap_or(0),
            output_tokens: 0,
        },
        finish_reason: FinishReason::Stop,
        model: wire
            .model
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| model.to_string()),
        attempts: 1,
        confidence: None,
        embeddings: Some(std::sync::Arc::new(vectors)),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn vectors_come_back_in_input_order_whatever_the_body_order() {
        let body = br#"{"data":[{"index":1,"embedding":[0.5,0.5]},{"index":0,"embedding":[1,0]}],
            "model":"m-1","usage":{"prompt_tokens":7,"total_tokens":7}}"#;
        let r = parse(body, 2, "m").unwrap();
        let v = r.embeddings.unwrap();
        assert_eq!(*v, vec![vec![1.0, 0.0], vec![0.5, 0.5]]);
        assert_eq!(r.usage.input_tokens, 7);
        assert_eq!(r.model, "m-1");
    }

    #[test]
    fn a_body_that_does_not_answer_every_input_once_is_malformed() {
        for (body, want) in [
            (
                &br#"{"data":[{"index":0,"embedding":[1]}]}"#[..],
                "1 embeddings for 2",
            ),
            (
                br#"{"data":[{"index":0,"embedding":[1]},{"index":0,"embedding":[1]}]}"#,
                "given twice",
            ),
            (
                br#"{"data":[{"index":0,"embedding":[1]},{"index":5,"embedding":[1]}]}"#,
                "out of range",
            ),
            (
                br#"{"data":[{"index":0,"embedding":[1]},{"index":1}]}"#,
                "no vector",
            ),
            (
                br#"{"data":[{"index":0,"embedding":[1]},{"index":1,"embedding":[1,2]}]}"#,
                "different lengths",
            ),
            (br#"{"nope":1}"#, "no data"),
            (b"not json", "malformed embeddings body"),
        ] {
            let e = parse(body, 2, "m").unwrap_err();
            assert_eq!(e.kind, ProviderErrorKind::Malformed);
            assert!(e.message.contains(want), "{}: {}", want, e.message);
        }
    }
}
