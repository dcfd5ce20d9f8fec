//! `baton session …`: a client of the Sessions API.

use anyhow::{Context, bail};
use baton_proto::v1::{self, sessions_client::SessionsClient};
use futures::StreamExt;
use tonic::transport::Channel;

use crate::print::{self, Printer};

#[derive(Debug, clap::Args)]
pub struct Conn {
    /// Server address.
    #[arg(
        long,
        global = true,
        env = "BATON_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub(crate) server: String,
    /// Print JSON (one object per line) instead of readable text.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// The API key (or JWT) to call with, sent as `authorization: Bearer`;
    /// needed when the server has `[auth] enabled = true`.
    #[arg(long, global = true, env = "BATON_API_KEY", hide_env_values = true)]
    pub(crate) api_key: Option<String>,
    /// PEM CA certificate(s) to trust for a TLS server (`https://` address).
    #[arg(long, global = true, env = "BATON_CA_CERT")]
    pub(crate) ca_cert: Option<std::path::PathBuf>,
    /// PEM client certificate and key, for a server that requires mutual TLS.
    #[arg(
        long,
        global = true,
        env = "BATON_CLIENT_CERT",
        requires = "client_key"
    )]
    pub(crate) client_cert: Option<std::path::PathBuf>,
    #[arg(
        long,
        global = true,
        env = "BATON_CLIENT_KEY",
        requires = "client_cert"
    )]
    pub(crate) client_key: Option<std::path::PathBuf>,
}

/// Adds `authorization: Bearer <key>` to every call.
#[derive(Clone)]
pub(crate) struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A connection to the server, with the caller's credentials.
pub(crate) type Authed = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

/// Connect to the server `conn` names.
pub(crate) async fn connect(conn: &Conn) -> anyhow::Result<Authed> {
    let bearer = match &conn.api_key {
        Some(k) if !k.trim().is_empty() => {
            Some(format!("Bearer {}", k.trim()).parse().map_err(|_| {
                anyhow::anyhow!("--api-key (BATON_API_KEY) is not valid header text")
            })?)
        }
        _ => None,
    };
    let mut endpoint = Channel::from_shared(conn.server.clone())
        .with_context(|| format!("bad server address {:?}", conn.server))?;
    if conn.server.starts_with("https://") || conn.ca_cert.is_some() {
        let read = |p: &std::path::Path| {
            std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
        };
        let mut tls = tonic::transport::ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = &conn.ca_cert {
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
        }
        if let (Some(c), Some(k)) = (&conn.client_cert, &conn.client_key) {
            tls = tls.identity(tonic::transport::Identity::from_pem(read(c)?, read(k)?));
        }
        endpoint = endpoint
            .tls_config(tls)
            .context("TLS settings (--ca-cert, --client-cert, --client-key)")?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", conn.server))?;
    Ok(tonic::service::interceptor::InterceptedService::new(
        channel,
        Bearer(bearer),
    ))
}

#[derive(Debug, clap::Subcommand)]
pub enum SessionCommand {
    /// Create a session; prints its id.
    Start {
        /// Model endpoint / route (default: the server's default route).
        #[arg(long, default_value = "")]
        route: String,
        #[arg(long, default_value = "")]
        system_prompt: String,
        /// A retried start with the same key returns the same session.
        #[arg(long, default_value = "")]
        idempotency_key: String,
        /// Metadata entries, `key=value` (repeatable).
        #[arg(long = "meta", value_parser = parse_kv)]
        meta: Vec<(String, String)>,
        /// Server-side tools the session may use: names or patterns (repeatable).
        #[arg(long = "tool")]
        tools: Vec<String>,
        /// A JSON file with client-side tool definitions:
        /// `[{"name", "description", "parameters": {JSON Schema}}]`.
        #[arg(long)]
        client_tools: Option<std::path::PathBuf>,
        /// Most model calls per turn (0 = the server default).
        #[arg(long, default_value_t = 0)]
        max_steps: u32,
        /// Budget of the session in USD (model calls beyond it are refused).
        #[arg(long)]
        budget_usd: Option<f64>,
        /// A data class the session's content carries, e.g. `pii`
        /// (repeatable): its calls only go to endpoints certified for it.
        #[arg(long = "data-class")]
        data_classes: Vec<String>,
        /// Sampling temperature of every model call, 0 to 2.
        #[arg(long)]
        temperature: Option<f32>,
        /// Nucleus sampling, 0 to 1.
        #[arg(long)]
        top_p: Option<f32>,
        /// Output-token limit per model call.
        #[arg(long)]
        max_output_tokens: Option<u32>,
        /// A stop sequence (repeatable, at most 4).
        #[arg(long = "stop")]
        stop: Vec<String>,
        /// `auto`, `none`, `required`, or the name of the tool the first
        /// model call of each turn must call.
        #[arg(long, default_value = "")]
        tool_choice: String,
        /// A JSON file holding the JSON Schema every answer must satisfy
        /// (structured output).
        #[arg(long)]
        json_schema: Option<std::path::PathBuf>,
    },
    /// Answer a client-side tool call (or one that needs attention).
    SubmitToolResult {
        session_id: String,
        call_id: String,
        /// The tool's output.
        #[arg(long, conflicts_with = "error", required_unless_present = "error")]
        output: Option<String>,
        /// Report a failure to the model instead.
        #[arg(long)]
        error: Option<String>,
    },
    /// Send a message and stream the turn's events.
    Send {
        session_id: String,
        /// The message (words are joined with spaces).
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
        /// Hold the turn's final answer for a reviewer (see `baton gates`).
        #[arg(long)]
        review: bool,
        /// An image to show the model (repeatable): an http(s) URL, a data
        /// URL, or a .png/.jpg/.jpeg/.gif/.webp file (sent as a data URL).
        #[arg(long = "image")]
        images: Vec<String>,
    },
    /// Stream events after a seq; with --follow, keep streaming live events.
    Resume {
        session_id: String,
        #[arg(long, default_value_t = 0)]
        after_seq: u64,
        #[arg(long)]
        follow: bool,
    },
    /// Show a session: status, messages, usage.
    Get { session_id: String },
    /// List sessions.
    List {
        /// idle, running or failed.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        page_size: u32,
        #[arg(long, default_value = "")]
        page_token: String,
        /// Only sessions on this route.
        #[arg(long, default_value = "")]
        route: String,
        /// Only the sessions of this flow's steps.
        #[arg(long, default_value = "")]
        flow: String,
        /// Newest first.
        #[arg(long)]
        newest_first: bool,
    },
    /// Cancel the running turn.
    Cancel { session_id: String },
    /// Delete a session and all its data.
    Delete { session_id: String },
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

pub(crate) fn rpc_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

pub async fn run(conn: Conn, cmd: SessionCommand) -> anyhow::Result<()> {
    let mut client = SessionsClient::new(connect(&conn).await?);
    let json = conn.json;
    match cmd {
        SessionCommand::Start {
            route,
            system_prompt,
            idempotency_key,
            meta,
            tools,
            client_tools,
            max_steps,
            budget_usd,
            data_classes,
            temperature,
            top_p,
            max_output_tokens,
            stop,
            tool_choice,
            json_schema,
        } => {
            let json_schema = match json_schema {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    serde_json::from_str::<serde_json::Value>(&text)
                        .with_context(|| format!("{} is not JSON", path.display()))?;
                    text
                }
                None => String::new(),
            };
            let (tool_choice, tool_name) = match tool_choice.as_str() {
                "" | "auto" | "none" | "required" => (tool_choice, String::new()),
                _ => ("tool".to_string(), tool_choice),
            };
            let generation = v1::Generation {
                temperature,
                top_p,
                max_output_tokens,
                stop,
                tool_choice,
                tool_name,
                json_schema,
            };
            let r = client
                .start_session(v1::StartSessionRequest {
                    idempotency_key,
                    system_prompt,
                    route,
                    metadata: meta.into_iter().collect(),
                    allowed_tools: tools,
                    client_tools: match client_tools {
                        Some(path) => read_client_tools(&path)?,
                        None => Vec::new(),
                    },
                    max_steps,
                    budget_usd,
                    data_classes,
                    generation: Some(generation),
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"session_id": r.session_id, "status": print::status_name(r.status), "created": r.created})
                );
            } else {
                println!("{}", r.session_id);
            }
        }
        SessionCommand::Send {
            session_id,
            text,
            review,
            images,
        } => {
            let images = images
                .iter()
                .map(|i| image_arg(i))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let stream = client
                .send_message(v1::SendMessageRequest {
                    session_id,
                    content: text.join(" "),
                    review,
                    images,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            print_stream(stream, json, None).await?;
        }
        SessionCommand::Resume {
            session_id,
            after_seq,
            follow,
        } => {
            let until = if follow {
                None
            } else {
                let s = client
                    .get_session(v1::GetSessionRequest {
                        session_id: session_id.clone(),
                    })
                    .await
                    .map_err(rpc_error)?
                    .into_inner();
                if s.last_seq <= after_seq {
                    return Ok(());
                }
                Some(s.last_seq)
            };
            let stream = client
                .resume_session(v1::ResumeSessionRequest {
                    session_id,
                    after_seq,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            print_stream(stream, json, until).await?;
        }
        SessionCommand::Get { session_id } => {
            let s = client
                .get_session(v1::GetSessionRequest { session_id })
                .await
                .map_err(rpc_error)?
                .into_inner();
            print::session(&s, json);
        }
        SessionCommand::List {
            status,
            page_size,
            page_token,
            route,
            flow,
            newest_first,
        } => {
            let status = match status.as_deref() {
                None => 0,
                Some(s) => match baton_types::SessionStatus::parse(s) {
                    Some(st) => baton_proto::convert::status_to_proto(st) as i32,
                    None => bail!("unknown status {s:?}: use idle, running or failed"),
                },
            };
            let r = client
                .list_sessions(v1::ListSessionsRequest {
                    status,
                    page_size,
                    page_token,
                    route,
                    flow,
                    newest_first,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            for s in &r.sessions {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"session_id": s.session_id, "status": print::status_name(s.status), "route": s.route,
                            "created_at_unix_ms": s.created_at_unix_ms, "status_reason": s.status_reason})
                    );
                } else {
                    let reason = if s.status_reason.is_empty() {
                        String::new()
                    } else {
                        format!("  ({})", s.status_reason)
                    };
                    println!(
                        "{}  {:<8} {}{reason}",
                        s.session_id,
                        print::status_name(s.status),
                        s.route
                    );
                }
            }
            if !r.next_page_token.is_empty() {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"next_page_token": r.next_page_token})
                    );
                } else {
                    println!("more: --page-token {}", r.next_page_token);
                }
            }
        }
        SessionCommand::Cancel { session_id } => {
            let r = client
                .cancel_turn(v1::CancelTurnRequest { session_id })
                .await
                .map_err(rpc_error)?
                .into_inner();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"cancelled": r.cancelled, "turn": r.turn})
                );
            } else if r.cancelled {
                println!("cancelled turn {}", r.turn);
            } else {
                println!("no turn was running");
            }
        }
        SessionCommand::SubmitToolResult {
            session_id,
            call_id,
            output,
            error,
        } => {
            use v1::submit_tool_result_request::Outcome;
            let outcome = match (output, error) {
                (Some(o), _) => Outcome::Output(o),
                (None, Some(e)) => Outcome::Error(e),
                (None, None) => bail!("give --output or --error"),
            };
            let r = client
                .submit_tool_result(v1::SubmitToolResultRequest {
                    session_id,
                    call_id,
                    outcome: Some(outcome),
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            if json {
                println!("{}", serde_json::json!({"seq": r.seq}));
            } else {
                println!("recorded as seq {}", r.seq);
            }
        }
        SessionCommand::Delete { session_id } => {
            client
                .delete_session(v1::DeleteSessionRequest {
                    session_id: session_id.clone(),
                })
                .await
                .map_err(rpc_error)?;
            if !json {
                println!("deleted {session_id}");
            }
        }
    }
    Ok(())
}

async fn print_stream(
    mut stream: tonic::Streaming<v1::SessionEvent>,
    json: bool,
    until: Option<u64>,
) -> anyhow::Result<()> {
    let mut printer = Printer::new(json);
    while let Some(item) = stream.next().await {
        let e = item.map_err(rpc_error)?;
        let seq = e.seq;
        printer.proto_event(e);
        if until.is_some_and(|u| seq >= u) {
            break;
        }
    }
    printer.finish();
    Ok(())
}

/// `--image`: a URL as given, or a file read into a base64 data URL.
fn image_arg(arg: &str) -> anyhow::Result<v1::Image> {
    let url = if ["http://", "https://", "data:"]
        .iter()
        .any(|p| arg.starts_with(p))
    {
        arg.to_string()
    } else {
        let path = std::path::Path::new(arg);
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        let media_type = match ext.as_str() {
            "png" => "image/png",
            "jpg" | "jpeg" => "image/jpeg",
            "gif" => "image/gif",
            "webp" => "image/webp",
            _ => anyhow::bail!(
                "--image {arg}: not a URL, and not a .png, .jpg, .jpeg, .gif or .webp file"
            ),
        };
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {arg}"))?;
        format!("data:{media_type};base64,{}", base64(&bytes))
    };
    Ok(v1::Image {
        url,
        detail: String::new(),
    })
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn read_client_tools(path: &std::path::Path) -> anyhow::Result<Vec<v1::ToolDefinition>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let items: Vec<serde_json::Value> = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a JSON array of tool definitions", path.display()))?;
    items
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let name = t["name"]
                .as_str()
                .with_context(|| format!("{}: [{i}].name is missing", path.display()))?;
            Ok(v1::ToolDefinition {
                name: name.to_string(),
                description: t["description"].as_str().unwrap_or_default().to_string(),
                parameters_json: t
                    .get("parameters")
                    .cloned()
                    .unwrap_or(serde_json::json!({"type": "object"}))
                    .to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_4648_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain:?}");
        }
        assert_eq!(base64(&[0xff, 0xfe, 0xfd]), "//79");
    }

    #[test]
    fn image_arguments_are_urls_or_image_files() {
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("dot.PNG");
        std::fs::write(&png, [0x89, b'P', b'N', b'G']).unwrap();
        let i = image_arg(png.to_str().unwrap()).unwrap();
        assert_eq!(i.url, "data:image/png;base64,iVBORw==");
        assert_eq!(
            image_arg("https://example.com/a.png").unwrap().url,
            "https://example.com/a.png"
        );
        let txt = dir.path().join("notes.txt");
        std::fs::write(&txt, "x").unwrap();
        let e = image_arg(txt.to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("notes.txt"), "{e}");
        assert!(image_arg("/no/such/file.png").is_err());
    }
}
