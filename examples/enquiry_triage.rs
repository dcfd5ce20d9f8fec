//! Run with: cargo run --example enquiry_triage
//!
//! Customer enquiries triaged by a model, with a human review queue, end to
//! end and offline:
//! * an in-process Baton server (gRPC on a free loopback port) whose model
//!   classifies each enquiry and drafts a reply, replayed by the `scripted`
//!   provider from `examples/scripts/enquiry_triage.json`;
//! * two gate policies: drafts the model is less than 80% sure of wait for
//!   `support-leads`, and drafts that mention a refund wait for `billing`;
//!   every other draft is sent as soon as it is written;
//! * governance policies: emails and phone numbers in an enquiry are
//!   replaced with placeholders (`<EMAIL_1>`) before any model sees them and
//!   restored in the reply; for guest customers (session metadata
//!   `tier = "guest"`), links to sites other than the shop's are removed
//!   from replies before they go out;
//! * a small gRPC client that plays the helpdesk (one session per enquiry)
//!   and then the review queue, with the `Gates` service: it lists pending
//!   gates, reads each draft and its conversation, and approves one, edits
//!   one and rejects one — whose revised draft comes back for review.
//!
//! A scripted endpoint answers by position (a conversation holding *n*
//! assistant messages gets step *n*: the draft, then the revision after a
//! rejection), so each enquiry's session is routed to its own endpoint; the
//! script file maps endpoint names to their steps. Against a real model they
//! would all share one route.

use std::collections::HashMap;

use baton::proto::convert;
use baton::proto::v1::{self, gates_client::GatesClient, sessions_client::SessionsClient};
use baton::types::{Decision, EventKind, ModelCallReason, Role};
use baton::{Runtime, RuntimeConfig};
use futures::StreamExt;
use tonic::Streaming;
use tonic::transport::Channel;

/// What a reviewer does with an enquiry's first draft.
enum Review {
    Approve(&'static str),
    Edit {
        reply: &'static str,
        reason: &'static str,
    },
    Reject(&'static str),
}

struct Enquiry {
    id: &'static str,
    customer: &'static str,
    /// The customer's tier (session metadata `tier`): output policies differ.
    tier: &'static str,
    /// The scripted endpoint (a key of the script file) that answers it.
    endpoint: &'static str,
    text: &'static str,
    /// Used only if a policy holds its draft; a revision is approved.
    review: Review,
}

const ENQUIRIES: &[Enquiry] = &[
    Enquiry {
        id: "E-1041",
        customer: "Priya",
        tier: "platinum",
        endpoint: "order-status",
        text: "Hi, where is my order #8812? It was supposed to arrive on Friday. \
               You can reach me on priya.shah@example.com or +44 20 7946 0958.",
        review: Review::Approve("looks right"),
    },
    Enquiry {
        id: "E-1042",
        customer: "Tom",
        tier: "guest",
        endpoint: "faroe-islands",
        text: "Do you deliver to the Faroe Islands?",
        review: Review::Approve("checked the carrier list: correct"),
    },
    Enquiry {
        id: "E-1043",
        customer: "Ana",
        tier: "gold",
        endpoint: "cracked-lid",
        text: "My kettle arrived with a cracked lid. Can I get my money back?",
        review: Review::Edit {
            reply: "[returns] Hi Ana, I'm sorry the lid arrived cracked! I've emailed you a \
                    prepaid return label; as soon as the courier scans the kettle we'll refund \
                    the full £49.99 to your card. Would you rather have a replacement? Just \
                    reply to this email.",
            reason: "refunds are issued once the return is scanned",
        },
    },
    Enquiry {
        id: "E-1044",
        customer: "Marc",
        tier: "gold",
        endpoint: "double-charge",
        text: "You charged me twice for order #8790!",
        review: Review::Reject(
            "only one payment was captured for #8790; the second entry is a pending \
             authorisation the bank releases itself. Explain that, and offer a refund only \
             if it is still there after 7 days",
        ),
    },
];

const SYSTEM_PROMPT: &str = "You answer customer enquiries for Kettle & Co. Start with the \
    enquiry's category in brackets ([delivery], [returns] or [billing]), then draft the reply.";

/// An enquiry whose turn is still running: its `SendMessage` stream stays
/// open across reviews and ends with the turn.
struct Ticket {
    enquiry: &'static Enquiry,
    events: Streaming<v1::SessionEvent>,
    /// The latest draft seen on the stream.
    draft: String,
    /// Gates decided for it so far.
    reviews: u32,
    /// How it went, for the summary.
    history: Vec<String>,
}

/// Where a turn stands once its stream pauses or ends.
enum Outcome {
    /// `TurnCompleted` with no gate pending: the reply went out.
    Sent,
    /// `GateOpened`: the draft waits in the review queue.
    Queued,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = RuntimeConfig::with_data_dir(dir.path().join("data"));
    // One scripted endpoint per enquiry, each replaying its part of the script.
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/scripts/enquiry_triage.json");
    let scripts: HashMap<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&script)?)?;
    for enquiry in ENQUIRIES {
        let steps = scripts.get(enquiry.endpoint).ok_or_else(|| {
            anyhow::anyhow!("{} has no script {:?}", script.display(), enquiry.endpoint)
        })?;
        let path = dir.path().join(format!("{}.json", enquiry.endpoint));
        std::fs::write(&path, steps.to_string())?;
        config.models.push(baton::models::EndpointConfig::scripted(
            enquiry.endpoint,
            path,
        ));
    }
    config.sessions.default_route = ENQUIRIES[0].endpoint.into();
    // The same as `[[gates.policies]]` tables in baton.toml. Policies are
    // tried in order; the first that fires opens the gate.
    config.gates.policies = serde_json::from_value(serde_json::json!([
        {
            "name": "refunds",
            "kind": "data_rule",
            "pattern": "(?i)refund",
            "applies_to": "output",
            "reviewers": "billing",
        },
        {
            "name": "unsure-drafts",
            "kind": "confidence",
            "min_confidence": 0.8,
            "reviewers": "support-leads",
        },
    ]))?;
    // The same as `[[policies]]` tables in baton.toml (docs/governance.md).
    config.policies = serde_json::from_value(serde_json::json!([
        {
            "name": "pii",
            "stage": "input",
            "rules": [
                {"name": "contacts", "detect": ["email", "phone"], "outcome": "redact"}
            ]
        },
        {
            "name": "guest-replies",
            "stage": "output",
            "when": {"tier": "guest"},
            "rules": [
                {"name": "own-links-only", "allowed_domains": ["kettleandco.example"],
                 "outcome": "redact"}
            ]
        }
    ]))?;
    let runtime = Runtime::builder(config).start().await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(baton::server::serve(
        runtime.clone(),
        listener,
        Default::default(),
        async {
            let _ = stopped.await;
        },
    ));

    // --- the helpdesk: a backend service talking gRPC ---
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut sessions = SessionsClient::new(channel.clone());
    let mut gates = GatesClient::new(channel);

    println!("Drafts mentioning a refund wait for billing; drafts below 0.80 confidence");
    println!("wait for support-leads; the rest are sent straight away.\n");
    heading("Intake");
    // Tickets waiting for a review, by enquiry id.
    let mut open: HashMap<&str, Ticket> = HashMap::new();
    let mut done: Vec<(&str, Vec<String>)> = Vec::new();
    for enquiry in ENQUIRIES {
        println!(
            "{} from {}: {:?}",
            enquiry.id, enquiry.customer, enquiry.text
        );
        let session = sessions
            .start_session(v1::StartSessionRequest {
                system_prompt: SYSTEM_PROMPT.into(),
                route: enquiry.endpoint.into(),
                metadata: [
                    ("enquiry".to_string(), enquiry.id.to_string()),
                    ("tier".to_string(), enquiry.tier.to_string()),
                ]
                .into(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let events = sessions
            .send_message(v1::SendMessageRequest {
                session_id: session.session_id.clone(),
                content: enquiry.text.into(),
                review: false,
                images: Vec::new(),
            })
            .await?
            .into_inner();
        let mut ticket = Ticket {
            enquiry,
            events,
            draft: String::new(),
            reviews: 0,
            history: Vec::new(),
        };
        match follow(&mut ticket).await? {
            Outcome::Queued => {
                open.insert(enquiry.id, ticket);
            }
            Outcome::Sent => {
                ticket.history.push("auto-sent".into());
                print_sent(&mut sessions, &session.session_id, &ticket.draft).await?;
                done.push((enquiry.id, ticket.history));
            }
        }
        println!();
    }

    // --- the review queue: people deciding held drafts ---
    loop {
        let pending = gates
            .list_gates(v1::ListGatesRequest {
                status: v1::GateStatus::Pending as i32,
                ..Default::default()
            })
            .await?
            .into_inner()
            .gates;
        if pending.is_empty() {
            break;
        }
        heading(&format!("Review queue: {} pending", pending.len()));
        for listed in pending {
            let gate = gates
                .get_gate(v1::GetGateRequest {
                    gate_id: listed.gate_id,
                })
                .await?
                .into_inner();
            // The queue knows sessions; the enquiry is in their metadata.
            let metadata = sessions
                .get_session(v1::GetSessionRequest {
                    session_id: gate.session_id.clone(),
                })
                .await?
                .into_inner()
                .metadata;
            let enquiry_id = metadata.get("enquiry").map_or("", String::as_str);
            let ticket = open
                .get_mut(enquiry_id)
                .ok_or_else(|| anyhow::anyhow!("gate {} is for no open enquiry", gate.gate_id))?;
            let enquiry = ticket.enquiry;
            println!("{} for {}, {} gate", enquiry.id, gate.reviewers, gate.kind);
            println!("{}", wrap(&format!("why: {}", gate.reason), "  "));
            println!("  conversation so far:");
            for m in &gate.context {
                let role = convert::role_from_proto(m.role).map_or("?", |r| r.as_str());
                println!("  │ {role:>9}: {}", shorten(&m.content, 60));
            }
            let subject: serde_json::Value = serde_json::from_str(&gate.subject)?;
            let draft = subject["draft"].as_str().unwrap_or_default();
            println!("{}", wrap(&format!("draft: {}", untagged(draft)), "  "));

            let reviewer = match gate.reviewers.as_str() {
                "billing" => "omar (billing)",
                _ => "lena (support-leads)",
            };
            let (decision, reason, edited) = match (&enquiry.review, ticket.reviews) {
                (Review::Edit { reply, reason }, 0) => (v1::GateDecision::Edit, *reason, *reply),
                (Review::Reject(reason), 0) => (v1::GateDecision::Reject, *reason, ""),
                (Review::Approve(reason), 0) => (v1::GateDecision::Approve, *reason, ""),
                _ => (v1::GateDecision::Approve, "the revision is right", ""),
            };
            let decided = gates
                .decide_gate(v1::DecideGateRequest {
                    gate_id: gate.gate_id.clone(),
                    decision: decision as i32,
                    reviewer: reviewer.into(),
                    reason: reason.into(),
                    edited_payload: edited.into(),
                })
                .await?
                .into_inner();
            let verb = match convert::decision_from_proto(decided.decision) {
                Some(Decision::Approve) => "approved",
                Some(Decision::Reject) => "rejected",
                Some(Decision::Edit) => "edited",
                None => "decided",
            };
            let line = format!(
                "→ {verb} by {}: {}",
                decided.reviewer, decided.decision_reason
            );
            println!("{}", wrap(&line, "  "));
            ticket.reviews += 1;
            let who = decided.reviewer.split(' ').next().unwrap_or_default();
            ticket.history.push(format!("{verb} by {who}"));

            if let Outcome::Sent = follow(ticket).await? {
                print_sent(&mut sessions, &gate.session_id, &ticket.draft).await?;
                if let Some(t) = open.remove(enquiry.id) {
                    done.push((enquiry.id, t.history));
                }
            }
            println!();
        }
    }

    heading("Summary");
    done.sort();
    for (id, history) in &done {
        println!("{}", wrap(&format!("{id}  {}", history.join(" → ")), ""));
    }
    anyhow::ensure!(open.is_empty(), "enquiries left undecided: {}", open.len());

    let _ = stop.send(());
    runtime.shutdown().await;
    server.await??;
    Ok(())
}

/// Read a ticket's turn until it completes or waits at a gate, printing
/// drafts and gates as they happen.
async fn follow(ticket: &mut Ticket) -> anyhow::Result<Outcome> {
    let id = ticket.enquiry.id;
    while let Some(event) = ticket.events.next().await {
        let Some(event) = convert::event_from_proto(event?) else {
            continue;
        };
        match event.kind {
            EventKind::ModelCallStarted {
                reason: ModelCallReason::Review,
                ..
            } => {
                println!("  the model revises its draft");
            }
            EventKind::AssistantMessage { message, .. } if !message.content.is_empty() => {
                let (category, text) = classified(&message.content);
                let label = if ticket.reviews == 0 {
                    "draft"
                } else {
                    "revised draft"
                };
                println!("{}", wrap(&format!("{label} ({category}): {text}"), "  "));
                ticket.draft = message.content;
            }
            EventKind::GateOpened {
                reviewers,
                policy,
                subject,
                ..
            } => {
                let confidence = serde_json::from_str::<serde_json::Value>(&subject)?["confidence"]
                    .as_f64()
                    .map(|c| format!(", confidence {c:.2}"))
                    .unwrap_or_default();
                println!("  ⏸ queued for {reviewers} (policy {policy:?}{confidence})");
                ticket.history.push(format!("queued for {reviewers}"));
                return Ok(Outcome::Queued);
            }
            EventKind::PolicyEvaluated { stage, hits, .. } => {
                for h in hits {
                    let kinds: Vec<&str> = h.matches.iter().map(|m| m.kind.as_str()).collect();
                    println!(
                        "  policy {}/{} ({stage}): {} {}",
                        h.policy,
                        h.rule,
                        h.outcome,
                        kinds.join(", ")
                    );
                }
            }
            EventKind::TurnCompleted { .. } => return Ok(Outcome::Sent),
            EventKind::TurnFailed { reason, .. } => {
                anyhow::bail!("{id}: the turn failed: {reason}")
            }
            EventKind::TurnCancelled { .. } => anyhow::bail!("{id}: the turn was cancelled"),
            _ => {}
        }
    }
    anyhow::bail!("{id}: the event stream ended mid-turn")
}

/// Print the reply the customer got: the conversation's last answer (an
/// edit replaces it).
async fn print_sent(
    sessions: &mut SessionsClient<Channel>,
    session_id: &str,
    draft: &str,
) -> anyhow::Result<()> {
    let session = sessions
        .get_session(v1::GetSessionRequest {
            session_id: session_id.into(),
        })
        .await?
        .into_inner();
    let reply = session
        .messages
        .iter()
        .rev()
        .find(|m| convert::role_from_proto(m.role) == Some(Role::Assistant))
        .map(|m| m.content.as_str())
        .unwrap_or_default();
    if reply == draft {
        println!("  ✉ sent to the customer as drafted");
    } else {
        println!(
            "{}",
            wrap(&format!("✉ sent instead: {}", untagged(reply)), "  ")
        );
    }
    Ok(())
}
/// Split a draft into its category tag and the reply text.
fn classified(draft: &str) -> (&str, &str) {
    draft
        .strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
        .map(|(category, text)| (category, text.trim_start()))
        .unwrap_or(("unknown", draft))
}

fn untagged(draft: &str) -> &str {
    classified(draft).1
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let cut: String = text.chars().take(max - 1).collect();
    format!("{cut}…")
}

fn heading(title: &str) {
    println!(
        "── {title} {}",
        "─".repeat(60usize.saturating_sub(title.len()))
    );
}

/// `text` wrapped at 88 columns: lines start with `indent`, continuation
/// lines four spaces further in.
fn wrap(text: &str, indent: &str) -> String {
    const WIDTH: usize = 88;
    let mut out = String::new();
    let mut line = String::from(indent);
    let mut fresh = true;
    for word in text.split_whitespace() {
        if !fresh && line.chars().count() + 1 + word.chars().count() > WIDTH {
            out.push_str(&line);
            out.push('\n');
            line = format!("{indent}    ");
            fresh = true;
        }
        if !fresh {
            line.push(' ');
        }
        line.push_str(word);
        fresh = false;
    }
    out.push_str(&line);
    out
}
