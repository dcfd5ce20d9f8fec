//! `echo`: a deterministic local model for tests, demos and key-less setups.

use std::time::Duration;

use baton_types::{FinishReason, Message, Role, Usage};

use crate::{
    Delta, DeltaSink, EndpointConfig, ModelRequest, ModelResponse, Provider, ProviderError,
    count_words,
};

/// Replies `{prefix}{last user message}` after `delay_ms`, streaming it in
/// chunks of `chunk_chars` characters; never calls tools (the request's tool
/// definitions are ignored). Usage counts whitespace-separated
/// words: input over all messages, output over the reply.
#[derive(Debug, Clone)]
pub struct EchoProvider {
    prefix: String,
    delay: Duration,
    chunk_chars: usize,
    model: String,
}

impl EchoProvider {
    pub fn new(cfg: &EndpointConfig) -> Self {
        Self {
            prefix: cfg.echo.prefix.clone(),
            delay: Duration::from_millis(cfg.echo.delay_ms),
            chunk_chars: cfg.echo.chunk_chars,
            model: if cfg.model.is_empty() {
                "echo".to_string()
            } else {
                cfg.model.clone()
            },
        }
    }
}

/// Split `text` into pieces of `n` characters (one piece when `n` is 0).
pub(crate) fn chunks(text: &str, n: usize) -> Vec<String> {
    if n == 0 || text.is_empty() {
        return vec![text.to_string()];
    }
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(n).map(|c| c.iter().collect()).collect()
}

#[async_trait::async_trait]
impl Provider for EchoProvider {
    fn kind(&self) -> &'static str {
        "echo"
    }

    async fn complete(
        &self,
        req: &ModelRequest,
        deltas: Option<&DeltaSink>,
    ) -> Result<ModelResponse, ProviderError> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let last_user = req
            .messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.content.as_str())
            .unwrap_or("");
        let reply = format!("{}{last_user}", self.prefix);
        if let Some(sink) = deltas
            && !reply.is_empty()
        {
            for piece in chunks(&reply, self.chunk_chars) {
                let _ = sink.send(Delta::Text(piece));
            }
        }
        let input_tokens = req.messages.iter().map(|m| count_words(&m.content)).sum();
        Ok(ModelResponse {
            usage: Usage {
                input_tokens,
                output_tokens: count_words(&reply),
            },
            message: Message::assistant(reply),
            finish_reason: FinishReason::Stop,
            model: self.model.clone(),
            attempts: 1,
            confidence: None,
            embeddings: None,
        })
    }

    /// Vectors of [`ECHO_DIMENSIONS`] (or the requested number of)
    /// dimensions by feature hashing: each word adds ±1 to one dimension
    /// chosen by its hash, then the vector is scaled to unit length. Texts
    /// sharing words point the same way; the same text always gets the same
    /// vector.
    async fn embed(&self, req: &ModelRequest) -> Result<ModelResponse, ProviderError> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let Some(input) = &req.embed else {
            return Err(ProviderError::new(
                crate::ProviderErrorKind::InvalidRequest,
                "not an embeddings request",
            ));
        };
        let dims = input.dimensions.map_or(ECHO_DIMENSIONS, |d| d as usize);
        let vectors: Vec<Vec<f32>> = input.input.iter().map(|t| hashed(t, dims)).collect();
        Ok(ModelResponse {
            usage: Usage {
                input_tokens: input.input.iter().map(|t| count_words(t)).sum(),
                output_tokens: 0,
            },
            message: Message::assistant(String::new()),
            finish_reason: FinishReason::Stop,
            model: self.model.clone(),
            attempts: 1,
            confidence: None,
            embeddings: Some(std::sync::Arc::new(vectors)),
        })
    }
}

/// The length of an `echo` endpoint's vectors when a request names none.
pub const ECHO_DIMENSIONS: usize = 8;

/// `text` as a unit vector of `dims` dimensions (all zeros for no words).
fn hashed(text: &str, dims: usize) -> Vec<f32> {
    let mut v = vec![0f32; dims];
    if dims == 0 {
        return v;
    }
    for word in text.split_whitespace() {
        // FNV-1a, so that the vectors are the same on every machine.
        let h = word
            .to_lowercase()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        let i = (h % dims as u64) as usize;
        v[i] += if h >> 63 == 0 { 1.0 } else { -1.0 };
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use tokio::sync::mpsc;
    use tokio::time::Instant;

    use super::*;
    use crate::echo_default;

    #[tokio::test]
    async fn echo_vectors_are_unit_length_stable_and_of_the_asked_length() {
        let p = EchoProvider::new(&echo_default());
        let req = ModelRequest::embeddings(
            vec!["red apple".into(), "red apple".into(), "blue sky".into()],
            None,
        );
        let r = p.embed(&req).await.unwrap();
        let v = r.embeddings.unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].len(), ECHO_DIMENSIONS);
        assert_eq!(v[0], v[1]);
        assert_ne!(v[0], v[2]);
        let norm: f32 = v[2].iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        assert_eq!(r.usage.input_tokens, 6);
        let r = p
            .embed(&ModelRequest::embeddings(vec!["a".into()], Some(32)))
            .await
            .unwrap();
        assert_eq!(r.embeddings.unwrap()[0].len(), 32);
        // Completions are unchanged, and a provider without embeddings refuses.
        assert!(
            p.complete(&request(), None)
                .await
                .unwrap()
                .embeddings
                .is_none()
        );
    }

    fn request() -> ModelRequest {
        ModelRequest::new(vec![
            Message::system("be brief"),
            Message::user("first question"),
            Message::assistant("first answer"),
            Message::user("héllo wörld again"),
        ])
    }

    #[tokio::test(start_paused = true)]
    async fn echoes_the_last_user_message_deterministically() {
        let mut cfg = echo_default();
        cfg.echo.prefix = "you said: ".into();
        cfg.echo.delay_ms = 250;
        let p = EchoProvider::new(&cfg);
        let start = Instant::now();
        let a = p.complete(&request(), None).await.unwrap();
        assert_eq!(start.elapsed(), std::time::Duration::from_millis(250));
        let b = p.complete(&request(), None).await.unwrap();
        assert_eq!(a, b);
        // Tools are ignored.
        let tools = vec![baton_types::ToolDefinition {
            name: "calculator".into(),
            description: "adds".into(),
            parameters: "not even json".into(),
        }];
        let c = p
            .complete(&request().with_tools(tools), None)
            .await
            .unwrap();
        assert_eq!(a, c);
        assert_eq!(a.message.role, Role::Assistant);
        assert_eq!(a.message.content, "you said: héllo wörld again");
        assert_eq!(a.model, "echo");
        assert_eq!(a.finish_reason, FinishReason::Stop);
        assert_eq!(a.confidence, None);
        // 2 + 2 + 2 + 3 words in, 5 out.
        assert_eq!(
            a.usage,
            Usage {
                input_tokens: 9,
                output_tokens: 5
            }
        );
    }

    #[tokio::test]
    async fn streams_chunks_of_chunk_chars_characters() {
        let mut cfg = echo_default();
        cfg.echo.chunk_chars = 4;
        cfg.model = "parrot".into();
        let p = EchoProvider::new(&cfg);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let resp = p.complete(&request(), Some(&tx)).await.unwrap();
        drop(tx);
        let mut pieces = Vec::new();
        while let Some(Delta::Text(t)) = rx.recv().await {
            pieces.push(t);
        }
        assert_eq!(pieces, vec!["héll", "o wö", "rld ", "agai", "n"]);
        assert_eq!(pieces.concat(), resp.message.content);
        assert_eq!(resp.model, "parrot");

        // chunk_chars = 0: one delta.
        let p = EchoProvider::new(&echo_default());
        let (tx, mut rx) = mpsc::unbounded_channel();
        p.complete(&request(), Some(&tx)).await.unwrap();
        drop(tx);
        assert_eq!(
            rx.recv().await,
            Some(Delta::Text("héllo wörld again".into()))
        );
        assert_eq!(rx.recv().await, None);
    }
}
