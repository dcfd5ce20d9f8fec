//! `POST /v1/embeddings`: OpenAI's Embeddings API over
//! [`Caller::embed`](baton_runtime::Caller::embed) — routed like a chat
//! turn to endpoints with the `embeddings` capability, with the caller's
//! limits, the input policies, cost and one audit record per call.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use baton_runtime::{Caller, EmbedCall, SessionsConfig};
use serde_json::{Value, json};

use super::error::{ApiError, body_error, runtime_error, turn_failed_error};
use super::headers::{ATTEMPTS_HEADER, COST_HEADER, ENDPOINT_HEADER};
use super::request::baton_headers;
use super::turn::header_value;

/// Texts one request may carry (OpenAI's limit).
pub const MAX_INPUTS: usize = 2048;
/// The largest `dimensions` a request may ask for.
pub const MAX_DIMENSIONS: u64 = 16_384;

/// Header: the call's id in the audit trail.
pub const CALL_HEADER: &str = "x-baton-call-id";

/// An embeddings request, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingsRequest {
    pub model: String,
    pub input: Vec<String>,
    pub dimensions: Option<u32>,
    /// `base64` (little-endian f32s) rather than JSON numbers.
    pub base64: bool,
}

/// `POST /v1/embeddings`.
pub async fn embeddings(
    runtime: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match embed(runtime, headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn embed(
    runtime: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(body_error)?;
    let req = parse_embeddings(&body, &runtime.runtime().config().sessions)?;
    let routes = runtime.routes();
    if !routes.contains(&req.model) {
        return Err(ApiError::model_not_found(&req.model, &routes));
    }
    let (budget_usd, data_classes) = baton_headers(&headers)?;
    let done = runtime
        .embed(EmbedCall {
            route: req.model.clone(),
            input: req.input,
            dimensions: req.dimensions,
            data_classes,
            budget_usd,
        })
        .await
        .map_err(|e| runtime_error(&e))?
        .map_err(|e| turn_failed_error(e.failure_code(), &e.message))?;
    let data: Vec<Value> = done
        .vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if req.base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let body = json!({
        "object": "list",
        "data": data,
        "model": done.model,
        "usage": {
            "prompt_tokens": done.usage.input_tokens,
            "total_tokens": done.usage.input_tokens,
        },
    });
    let mut resp = (StatusCode::OK, axum::Json(body)).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    for (name, value) in [
        (CALL_HEADER, Some(done.id.to_string())),
        (ENDPOINT_HEADER, Some(done.endpoint.clone())),
        (ATTEMPTS_HEADER, Some(done.attempts.to_string())),
        (COST_HEADER, done.cost_usd.map(|c| format!("{c:.8}"))),
    ] {
        if let Some(v) = value.as_deref().and_then(header_value) {
            h.insert(name, v);
        }
    }
    Ok(resp)
}

/// Parse and check an embeddings body; each error names the parameter.
pub fn parse_embeddings(
    body: &[u8],
    limits: &SessionsConfig,
) -> Result<EmbeddingsRequest, ApiError> {
    let o = &ApiError::json_object(body)?;
    let model = match o.get("model") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        None => return Err(ApiError::invalid("model", "is required")),
        _ => return Err(ApiError::invalid("model", "must be a non-empty string")),
    };
    let input = match o.get("input") {
        None => return Err(ApiError::invalid("input", "is required")),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            if items.is_empty() {
                return Err(ApiError::invalid("input", "must hold at least one text"));
            }
            if items.len() > MAX_INPUTS {
                return Err(ApiError::invalid(
                    "input",
                    format!(
                        "holds {} texts; at most {MAX_INPUTS} per request",
                        items.len()
                    ),
                ));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(_) | Value::Array(_) => Err(ApiError::invalid(
                        format!("input[{i}]"),
                        "token arrays are not supported: send the text (Baton routes to models whose tokenizers differ)",
                    )),
                    _ => Err(ApiError::invalid(format!("input[{i}]"), "must be a string")),
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "input",
                "must be a string or an array of strings",
            ));
        }
    };
    for (i, text) in input.iter().enumerate() {
        if text.is_empty() {
            return Err(ApiError::invalid(
                format!("input[{i}]"),
                "must not be empty",
            ));
        }
        if text.len() > limits.max_message_bytes {
            return Err(ApiError::invalid(
                format!("input[{i}]"),
                format!(
                    "is {} bytes; the limit is {} (sessions.max_message_bytes)",
                    text.len(),
                    limits.max_message_bytes
                ),
            )
            .status(StatusCode::PAYLOAD_TOO_LARGE)
            .code("request_too_large"));
        }
    }
    let dimensions = match o.get("dimensions") {
        None | Some(Value::Null) => None,
        Some(d) => match d.as_u64() {
            Some(n) if (1..=MAX_DIMENSIONS).contains(&n) => u32::try_from(n).ok(),
            _ => {
                return Err(ApiError::invalid(
                    "dimensions",
                    format!("must be an integer from 1 to {MAX_DIMENSIONS}"),
                ));
            }
        },
    };
    let base64 = match o.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) if s == "float" => false,
        Some(Value::String(s)) if s == "base64" => true,
        Some(_) => {
            return Err(ApiError::invalid(
                "encoding_format",
                "must be \"float\" or \"base64\"",
            ));
        }
    };
    match o.get("user") {
        None | Some(Value::Null | Value::String(_)) => {}
        Some(_) => return Err(ApiError::invalid("user", "must be a string")),
    }
    Ok(EmbeddingsRequest {
        model,
        input,
        dimensions,
        base64,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn parse(body: Value) -> Result<EmbeddingsRequest, ApiError> {
        parse_embeddings(body.to_string().as_bytes(), &SessionsConfig::default())
    }

    #[test]
    fn a_string_or_strings_with_options_are_read() {
        let r = parse(json!({"model": "m", "input": "hi"})).unwrap();
        assert_eq!(r.input, vec!["hi"]);
        assert!(!r.base64);
        let r = parse(json!({"model": "m", "input": ["a", "b"], "dimensions": 4,
            "encoding_format": "base64", "user": "u"}))
        .unwrap();
        assert_eq!((r.input.len(), r.dimensions, r.base64), (2, Some(4), true));
    }

    #[test]
    fn bad_bodies_are_refused_naming_the_parameter() {
        for (body, param) in [
            (json!({"input": "x"}), "model"),
            (json!({"model": "m"}), "input"),
            (json!({"model": "m", "input": []}), "input"),
            (json!({"model": "m", "input": 5}), "input"),
            (json!({"model": "m", "input": ["a", 3]}), "input[1]"),
            (json!({"model": "m", "input": [[1, 2]]}), "input[0]"),
            (json!({"model": "m", "input": ["a", ""]}), "input[1]"),
            (
                json!({"model": "m", "input": "a", "dimensions": 0}),
                "dimensions",
            ),
            (
                json!({"model": "m", "input": "a", "dimensions": 1.5}),
                "dimensions",
            ),
            (
                json!({"model": "m", "input": "a", "encoding_format": "hex"}),
                "encoding_format",
            ),
            (json!({"model": "m", "input": "a", "user": 1}), "user"),
        ] {
            let e = parse(body.clone()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{body}");
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
        }
        let many: Vec<String> = (0..=MAX_INPUTS).map(|i| i.to_string()).collect();
        let e = parse(json!({"model": "m", "input": many})).unwrap_err();
        assert!(e.message.contains("at most 2048"), "{}", e.message);
        let e = parse_embeddings(b"[1]", &SessionsConfig::default()).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }
}
