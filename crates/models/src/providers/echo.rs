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
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use tokio::sync::mpsc;
    use tokio::time::Instant;

    use super::*;
    use crate::echo_default;

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
