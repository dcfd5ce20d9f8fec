//! Readable one-line descriptions of journal records, shared by the CLI
//! and the web console.

use crate::EventKind;

/// The settings that differ from the defaults, as ", name value" parts.
fn describe_generation(g: &crate::Generation) -> String {
    use crate::ToolChoice;
    let mut d = String::new();
    if let Some(t) = g.temperature {
        d.push_str(&format!(", temperature {t}"));
    }
    if let Some(p) = g.top_p {
        d.push_str(&format!(", top_p {p}"));
    }
    if let Some(m) = g.max_output_tokens {
        d.push_str(&format!(", max output tokens {m}"));
    }
    if !g.stop.is_empty() {
        d.push_str(&format!(", stop {:?}", g.stop));
    }
    match &g.tool_choice {
        ToolChoice::Auto => {}
        ToolChoice::None => d.push_str(", no tool calls"),
        ToolChoice::Required => d.push_str(", a tool call required"),
        ToolChoice::Tool(name) => d.push_str(&format!(", tool {name} required")),
    }
    if g.json_schema.is_some() {
        d.push_str(", structured output (JSON Schema)");
    }
    d
}

/// " [image URL]" per image; a data URL as its media type and size.
pub fn images_note(images: &[crate::Image]) -> String {
    images
        .iter()
        .map(|i| match i.data() {
            Some((media_type, data)) => {
                format!(" [image {media_type}, {} bytes base64]", data.len())
            }
            None => format!(" [image {}]", i.url),
        })
        .collect()
}

/// `  (by api_key:bk_…)` when a principal is named.
fn by_note(by: &str) -> String {
    if by.is_empty() {
        String::new()
    } else {
        format!("  (by {by})")
    }
}

impl EventKind {
    /// One readable line for the record (without its seq): the CLI's
    /// `baton session` and `inspect` lines and the console's timeline.
    pub fn describe(&self) -> String {
        match self {
            EventKind::SessionStarted {
                route,
                system_prompt,
                allowed_tools,
                client_tools,
                max_steps,
                budget_usd,
                data_classes,
                one_shot,
                history,
                generation,
                replay_of,
                tenant,
                by,
            } => {
                let mut d = format!("session started on route {route}");
                if !tenant.is_empty() && tenant != crate::DEFAULT_TENANT {
                    d.push_str(&format!(", tenant {tenant}"));
                }
                d.push_str(&describe_generation(generation));
                if let Some(b) = budget_usd {
                    d.push_str(&format!(", budget ${b:.4}"));
                }
                if !data_classes.is_empty() {
                    d.push_str(&format!(", data classes: {}", data_classes.join(" ")));
                }
                if *one_shot {
                    d.push_str(", one-shot");
                }
                if !history.is_empty() {
                    d.push_str(&format!(", {} history messages", history.len()));
                }
                if let Some(src) = replay_of {
                    d.push_str(&format!(", replay of {src}"));
                }
                if !system_prompt.is_empty() {
                    d.push_str(&format!(", system prompt: {}", one_line(system_prompt)));
                }
                if !allowed_tools.is_empty() {
                    d.push_str(&format!(", tools: {}", allowed_tools.join(" ")));
                }
                if !client_tools.is_empty() {
                    let names: Vec<_> = client_tools.iter().map(|t| t.name.as_str()).collect();
                    d.push_str(&format!(", client tools: {}", names.join(" ")));
                }
                if *max_steps > 0 {
                    d.push_str(&format!(", max steps {max_steps}"));
                }
                d.push_str(&by_note(by));
                d
            }
            EventKind::TurnAccepted {
                turn,
                message,
                review,
                by,
            } => {
                let review = if *review {
                    "  [answer held for review]"
                } else {
                    ""
                };
                format!(
                    "turn {turn} accepted  user: {}{}{review}{}",
                    one_line(&message.content),
                    images_note(&message.images),
                    by_note(by)
                )
            }
            EventKind::ModelCallStarted {
                turn,
                attempt,
                endpoint,
                reason,
            } => {
                format!("turn {turn} model call to {endpoint} (attempt {attempt}, {reason})")
            }
            EventKind::OutputDelta { turn, text, .. } => {
                format!("turn {turn} delta: {}", one_line(text))
            }
            EventKind::AssistantMessage {
                turn,
                message,
                usage,
                endpoint,
                model,
                finish_reason,
                latency_ms,
                cost_usd,
                attempts,
                schema_validated,
                output_resumed,
            } => {
                let cost = cost_usd.map(|c| format!(", ${c:.6}")).unwrap_or_default();
                let tries = if *attempts > 1 {
                    format!(", {attempts} attempts")
                } else {
                    String::new()
                };
                let schema = if *schema_validated { ", schema ok" } else { "" };
                let resumed = match output_resumed {
                    crate::OutputResume::None => String::new(),
                    r => format!(", stream resumed: {r}"),
                };
                let mut s = format!(
                    "turn {turn} assistant [{endpoint}/{model}, {latency_ms} ms, {}→{} tokens{cost}{tries}{schema}{resumed}, {}]: {}",
                    usage.input_tokens,
                    usage.output_tokens,
                    finish_reason.as_str(),
                    one_line(&message.content)
                );
                for c in &message.tool_calls {
                    s.push_str(&format!(
                        "\n      tool call {} {}({})",
                        c.id, c.name, c.arguments
                    ));
                }
                s
            }
            EventKind::TurnCompleted { turn, usage } => {
                format!("turn {turn} completed ({} tokens)", usage.total())
            }
            EventKind::TurnFailed { turn, reason, code } => {
                if *code == crate::TurnFailureCode::Unspecified {
                    format!("turn {turn} FAILED: {reason}")
                } else {
                    format!("turn {turn} FAILED [{code}]: {reason}")
                }
            }
            EventKind::ToolCallRequested {
                turn,
                call_id,
                name,
                arguments,
                client_side,
            } => format!(
                "turn {turn} tool call {call_id}: {name}({}){}",
                one_line(arguments),
                if *client_side {
                    "  [client-side: answer with submit-tool-result]"
                } else {
                    ""
                }
            ),
            EventKind::ToolCallStarted {
                turn,
                call_id,
                name,
                attempt,
            } => format!("turn {turn} tool {name} running ({call_id}, attempt {attempt})"),
            EventKind::ToolResult {
                turn,
                call_id,
                name,
                output,
                is_error,
                latency_ms,
                by,
            } => format!(
                "turn {turn} tool {name} {} ({call_id}, {latency_ms} ms): {}{}",
                if *is_error { "ERROR" } else { "result" },
                one_line(output),
                by_note(by)
            ),
            EventKind::NeedsAttention {
                turn,
                call_id,
                reason,
            } => format!("turn {turn} NEEDS ATTENTION at {call_id}: {reason}"),
            EventKind::GateOpened {
                turn,
                gate_id,
                kind,
                point,
                policy,
                reason,
                reviewers,
                subject,
                call_id,
                deadline_unix_ms,
                on_timeout,
            } => {
                let mut d = format!(
                    "turn {turn} GATE OPENED {gate_id} ({kind} at {point}, policy {policy}) for {reviewers}: {}",
                    one_line(reason)
                );
                if !call_id.is_empty() {
                    d.push_str(&format!("\n      holds tool call {call_id}"));
                }
                if !subject.is_empty() {
                    d.push_str(&format!("\n      subject: {}", one_line(subject)));
                }
                if *deadline_unix_ms > 0 {
                    d.push_str(&format!(
                        "\n      {on_timeout} {}",
                        until(*deadline_unix_ms, crate::now_unix_ms())
                    ));
                }
                d
            }
            EventKind::GateDecided {
                turn,
                gate_id,
                decision,
                reviewer,
                reason,
                edited,
                by_timeout,
            } => {
                let who = if *by_timeout {
                    "by timeout".to_string()
                } else {
                    format!("by {reviewer}")
                };
                let mut d = format!("turn {turn} gate {gate_id} decided: {decision} {who}");
                if !reason.is_empty() {
                    d.push_str(&format!(" ({})", one_line(reason)));
                }
                if !edited.is_empty() {
                    d.push_str(&format!("\n      edited: {}", one_line(edited)));
                }
                d
            }
            EventKind::GateEscalated {
                turn,
                gate_id,
                reviewers,
                deadline_unix_ms,
                on_timeout,
            } => {
                let mut d = format!("turn {turn} gate {gate_id} ESCALATED to {reviewers}");
                if *deadline_unix_ms > 0 {
                    d.push_str(&format!(
                        "; {on_timeout} {}",
                        until(*deadline_unix_ms, crate::now_unix_ms())
                    ));
                }
                d
            }
            EventKind::TurnCancelled { turn, by } => {
                format!("turn {turn} cancelled{}", by_note(by))
            }
            EventKind::SessionFailed { reason } => format!("session FAILED: {reason}"),
            EventKind::RoutingDecided { turn, decision } => {
                let skipped: Vec<String> = decision
                    .candidates
                    .iter()
                    .filter(|c| !c.eligible)
                    .map(|c| format!("{} ({})", c.endpoint, c.note))
                    .collect();
                let mut d = format!(
                    "turn {turn} routed attempt {} to {} [{} {}]",
                    decision.attempt, decision.chosen, decision.strategy, decision.rule
                );
                if !decision.reason.is_empty() {
                    d.push_str(&format!(": {}", one_line(&decision.reason)));
                }
                if !skipped.is_empty() {
                    d.push_str(&format!("; skipped {}", skipped.join(", ")));
                }
                d
            }
            EventKind::AttemptFailed { turn, failure } => {
                let mut d = format!(
                    "turn {turn} attempt {} on {} failed [{}]: {}",
                    failure.attempt,
                    failure.endpoint,
                    failure.kind,
                    one_line(&failure.message)
                );
                if let Some(ms) = failure.retry_in_ms {
                    d.push_str(&format!(" (next in {ms} ms)"));
                }
                if failure.streamed {
                    d.push_str(" (after its text was streamed)");
                }
                d
            }
            EventKind::OutputRetracted {
                turn,
                attempt,
                reason,
            } => {
                format!(
                    "turn {turn} output so far RETRACTED (continues as attempt {attempt}): {reason}"
                )
            }
            EventKind::QualityScored {
                turn,
                endpoint,
                model,
                evaluator,
                scores,
                cost_usd,
            } => {
                let scores: Vec<String> = scores
                    .iter()
                    .map(|s| format!("{} {:.2} ({})", s.criterion, s.score, s.reason))
                    .collect();
                let cost = cost_usd.map(|c| format!(", ${c:.6}")).unwrap_or_default();
                format!(
                    "turn {turn} quality of {endpoint} ({model}) by {evaluator}{cost}: {}",
                    scores.join("; ")
                )
            }
            EventKind::PolicyEvaluated {
                turn,
                stage,
                hits,
                cost_usd,
            } => {
                let hits: Vec<String> = hits
                    .iter()
                    .map(|h| {
                        let at: Vec<String> = h
                            .matches
                            .iter()
                            .map(|m| format!("{} {}..{}", m.kind, m.start, m.end))
                            .collect();
                        format!(
                            "{}/{} {} [{}]",
                            h.policy,
                            h.rule,
                            h.outcome.as_str().to_uppercase(),
                            at.join(", ")
                        )
                    })
                    .collect();
                let hits = if hits.is_empty() {
                    "no rule matched".to_string()
                } else {
                    hits.join("; ")
                };
                match cost_usd {
                    Some(usd) => {
                        format!("turn {turn} policies at {stage}: {hits} (checks ${usd:.6})")
                    }
                    None => format!("turn {turn} policies at {stage}: {hits}"),
                }
            }
        }
    }
}

/// When a deadline falls, relative to `now`: "in 5m" or "5m ago".
pub fn until(deadline_unix_ms: u64, now_unix_ms: u64) -> String {
    if deadline_unix_ms >= now_unix_ms {
        format!("in {}", duration(deadline_unix_ms - now_unix_ms))
    } else {
        format!("{} ago", duration(now_unix_ms - deadline_unix_ms))
    }
}

/// A duration, short: `850ms`, `42s`, `5m`, `3h`, `2d`.
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

pub fn one_line(s: &str) -> String {
    let flat = s.replace('\n', " ⏎ ");
    if flat.chars().count() > 200 {
        format!("{}…", flat.chars().take(200).collect::<String>())
    } else {
        flat
    }
}
