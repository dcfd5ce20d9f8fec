//! One line of plain text per journal record for the timeline: what a
//! reader looks for first (who, which endpoint and why, what it cost, what
//! failed), the whole record staying one click away as JSON. The caller
//! escapes the text.

use baton_types::{EventKind, RoutingDecision};

/// At most this many characters of a message, argument or output.
const SNIPPET: usize = 160;

fn snippet(s: &str) -> String {
    let s = s.trim();
    if s.chars().count() <= SNIPPET {
        return s.to_string();
    }
    let mut t: String = s.chars().take(SNIPPET).collect();
    t.push('…');
    t
}

fn cost(c: Option<f64>) -> String {
    c.map(|c| format!(", ${c:.6}")).unwrap_or_default()
}

fn by(who: &str) -> String {
    if who.is_empty() {
        String::new()
    } else {
        format!(" by {who}")
    }
}

fn routing(d: &RoutingDecision) -> String {
    let candidates: Vec<String> = d
        .candidates
        .iter()
        .map(|c| {
            let mut s = c.endpoint.clone();
            if !c.eligible {
                s.push_str(" (excluded");
                if !c.note.is_empty() {
                    s.push_str(": ");
                    s.push_str(&c.note);
                }
                s.push(')');
            } else if let Some(score) = c.score {
                s.push_str(&format!(" ({score:.2})"));
            }
            s
        })
        .collect();
    let mut out = format!(
        "route {} ({}) → {} by {}, attempt {}",
        d.route, d.strategy, d.chosen, d.rule, d.attempt
    );
    if !d.reason.is_empty() {
        out.push_str(": ");
        out.push_str(&d.reason);
    }
    if !candidates.is_empty() {
        out.push_str("; candidates: ");
        out.push_str(&candidates.join(", "));
    }
    out
}

/// The record's line.
pub(crate) fn summary(kind: &EventKind) -> String {
    match kind {
        EventKind::SessionStarted {
            route,
            tenant,
            by: who,
            one_shot,
            replay_of,
            ..
        } => {
            let mut s = format!("route {route}, tenant {tenant}{}", by(who));
            if *one_shot {
                s.push_str(", one-shot");
            }
            if let Some(r) = replay_of {
                s.push_str(&format!(", replay of {r}"));
            }
            s
        }
        EventKind::TurnAccepted {
            message,
            by: who,
            review,
            ..
        } => {
            format!(
                "{}{}: {}",
                message.role.as_str(),
                by(who),
                snippet(&message.content)
            ) + if *review { " (review asked)" } else { "" }
        }
        EventKind::ModelCallStarted {
            attempt,
            endpoint,
            reason,
            ..
        } => format!("attempt {attempt} to {endpoint} ({})", reason.as_str()),
        EventKind::OutputDelta { text, .. } => snippet(text),
        EventKind::AssistantMessage {
            message,
            usage,
            endpoint,
            model,
            latency_ms,
            cost_usd,
            attempts,
            ..
        } => {
            let mut s = format!(
                "{endpoint} ({model}) in {latency_ms} ms, {} attempt{}, {} in / {} out tokens{}",
                attempts,
                if *attempts == 1 { "" } else { "s" },
                usage.input_tokens,
                usage.output_tokens,
                cost(*cost_usd)
            );
            if !message.content.is_empty() {
                s.push_str(": ");
                s.push_str(&snippet(&message.content));
            }
            for c in &message.tool_calls {
                s.push_str(&format!("; calls {}", c.name));
            }
            s
        }
        EventKind::RoutingDecided { decision, .. } => routing(decision),
        EventKind::AttemptFailed { failure, .. } => {
            let mut s = format!(
                "attempt {} at {} failed: {}: {}",
                failure.attempt,
                failure.endpoint,
                failure.kind,
                snippet(&failure.message)
            );
            if let Some(ms) = failure.retry_in_ms {
                s.push_str(&format!("; next in {ms} ms"));
            }
            s
        }
        EventKind::OutputRetracted {
            attempt, reason, ..
        } => format!("output retracted, continuing from attempt {attempt}: {reason}"),
        EventKind::PolicyEvaluated {
            stage,
            hits,
            cost_usd,
            ..
        } => {
            let hits: Vec<String> = hits
                .iter()
                .map(|h| {
                    let kinds: Vec<&str> = h.matches.iter().map(|m| m.kind.as_str()).collect();
                    format!(
                        "{}/{} {} ({})",
                        h.policy,
                        h.rule,
                        h.outcome.as_str(),
                        kinds.join(", ")
                    )
                })
                .collect();
            format!(
                "{} policies: {}{}",
                stage.as_str(),
                if hits.is_empty() {
                    "no rule matched".to_string()
                } else {
                    hits.join("; ")
                },
                cost(*cost_usd)
            )
        }
        EventKind::QualityScored {
            endpoint,
            evaluator,
            scores,
            cost_usd,
            ..
        } => {
            let scores: Vec<String> = scores
                .iter()
                .map(|q| format!("{} {:.2}", q.criterion, q.score))
                .collect();
            format!(
                "{endpoint}'s answer scored by {evaluator}: {}{}",
                scores.join(", "),
                cost(*cost_usd)
            )
        }
        EventKind::ToolCallRequested {
            call_id,
            name,
            arguments,
            client_side,
            ..
        } => format!(
            "{name} ({call_id}){}: {}",
            if *client_side { ", client side" } else { "" },
            snippet(arguments)
        ),
        EventKind::ToolCallStarted {
            call_id,
            name,
            attempt,
            ..
        } => format!("{name} ({call_id}) runs, attempt {attempt}"),
        EventKind::ToolResult {
            call_id,
            name,
            output,
            is_error,
            latency_ms,
            by: who,
            ..
        } => format!(
            "{name} ({call_id}) {} in {latency_ms} ms{}: {}",
            if *is_error { "failed" } else { "answered" },
            by(who),
            snippet(output)
        ),
        EventKind::NeedsAttention {
            call_id, reason, ..
        } => format!("waits at {call_id}: {reason}"),
        EventKind::GateOpened {
            gate_id,
            kind,
            point,
            policy,
            reason,
            reviewers,
            ..
        } => format!(
            "gate {gate_id} ({}, {} at {}) for {}: {reason}",
            policy,
            kind.as_str(),
            point.as_str(),
            if reviewers.is_empty() {
                "anyone"
            } else {
                reviewers
            }
        ),
        EventKind::GateDecided {
            gate_id,
            decision,
            reviewer,
            reason,
            by_timeout,
            ..
        } => {
            let mut s = format!(
                "gate {gate_id}: {} by {}",
                decision.as_str(),
                if *by_timeout {
                    "its timeout"
                } else {
                    reviewer.as_str()
                }
            );
            if !reason.is_empty() {
                s.push_str(": ");
                s.push_str(&snippet(reason));
            }
            s
        }
        EventKind::GateEscalated {
            gate_id, reviewers, ..
        } => format!("gate {gate_id} escalated to {reviewers}"),
        EventKind::TurnCompleted { usage, .. } => format!(
            "{} in / {} out tokens",
            usage.input_tokens, usage.output_tokens
        ),
        EventKind::TurnFailed { reason, code, .. } => {
            format!("{}: {}", code.as_str(), snippet(reason))
        }
        EventKind::TurnCancelled { by: who, .. } => format!("cancelled{}", by(who)),
        EventKind::SessionFailed { reason } => snippet(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_types::RouteCandidate;

    #[test]
    fn a_routing_decision_names_the_choice_the_reason_and_the_candidates() {
        let k = EventKind::RoutingDecided {
            turn: 1,
            decision: RoutingDecision {
                route: "main".into(),
                strategy: "fallback".into(),
                candidates: vec![
                    RouteCandidate {
                        endpoint: "a".into(),
                        eligible: false,
                        score: None,
                        note: "breaker open".into(),
                    },
                    RouteCandidate {
                        endpoint: "b".into(),
                        eligible: true,
                        score: None,
                        note: String::new(),
                    },
                ],
                chosen: "b".into(),
                rule: "failover".into(),
                reason: "a failed".into(),
                attempt: 2,
            },
        };
        assert_eq!(
            summary(&k),
            "route main (fallback) → b by failover, attempt 2: a failed; candidates: a (excluded: breaker open), b"
        );
    }

    #[test]
    fn long_text_is_cut() {
        let k = EventKind::SessionFailed {
            reason: "x".repeat(500),
        };
        assert_eq!(summary(&k).chars().count(), SNIPPET + 1);
    }
}
