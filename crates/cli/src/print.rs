//! Readable (or JSON) rendering of session events and sessions.

use std::io::Write;

use baton_proto::convert;
use baton_proto::v1;
use baton_types::{EventKind, SessionEvent};

/// Renders a stream of events; remembers whether a delta line is open.
#[derive(Default)]
pub struct Printer {
    pub json: bool,
    in_delta: bool,
}

impl Printer {
    pub fn new(json: bool) -> Self {
        Self {
            json,
            in_delta: false,
        }
    }

    pub fn proto_event(&mut self, e: v1::SessionEvent) {
        let seq = e.seq;
        match convert::event_from_proto(e) {
            Some(e) => self.event(&e),
            None => println!("#{seq} (an event of a kind this client does not know)"),
        }
    }

    pub fn event(&mut self, e: &SessionEvent) {
        if self.json {
            match serde_json::to_string(e) {
                Ok(s) => println!("{s}"),
                Err(err) => eprintln!("cannot render event {}: {err}", e.seq),
            }
            return;
        }
        if let EventKind::OutputDelta { text, .. } = &e.kind {
            if !self.in_delta {
                print!("   … ");
                self.in_delta = true;
            }
            print!("{text}");
            let _ = std::io::stdout().flush();
            return;
        }
        if self.in_delta {
            println!();
            self.in_delta = false;
        }
        println!("{}", describe(e));
    }

    pub fn finish(&mut self) {
        if self.in_delta {
            println!();
            self.in_delta = false;
        }
    }
}

/// The settings that differ from the defaults, as ", name value" parts.
fn describe_generation(g: &baton_types::Generation) -> String {
    use baton_types::ToolChoice;
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
fn images_note(images: &[baton_types::Image]) -> String {
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

/// One readable line for an event.
pub fn describe(e: &SessionEvent) -> String {
    let body = match &e.kind {
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
            if !tenant.is_empty() && tenant != baton_types::DEFAULT_TENANT {
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
                baton_types::OutputResume::None => String::new(),
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
            if *code == baton_types::TurnFailureCode::Unspecified {
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
                    until(*deadline_unix_ms, baton_types::now_unix_ms())
                ));
            }
            d.push_str(&format!(
                "\n      decide with: baton gates approve|reject|edit {gate_id} --reviewer NAME"
            ));
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
                    until(*deadline_unix_ms, baton_types::now_unix_ms())
                ));
            }
            d
        }
        EventKind::TurnCancelled { turn, by } => format!("turn {turn} cancelled{}", by_note(by)),
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
                Some(usd) => format!("turn {turn} policies at {stage}: {hits} (checks ${usd:.6})"),
                None => format!("turn {turn} policies at {stage}: {hits}"),
            }
        }
    };
    format!("#{:<4} {body}", e.seq)
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

pub fn status_name(status: i32) -> &'static str {
    match convert::status_from_proto(status) {
        Ok(Some(s)) => s.as_str(),
        _ => "unknown",
    }
}

pub fn session(s: &v1::Session, json: bool) {
    let messages: Vec<_> = s
        .messages
        .iter()
        .cloned()
        .filter_map(convert::message_from_proto)
        .collect();
    if json {
        let usage = convert::usage_from_proto(s.usage);
        let v = serde_json::json!({
            "session_id": s.session_id,
            "status": status_name(s.status),
            "status_reason": s.status_reason,
            "route": s.route,
            "system_prompt": s.system_prompt,
            "metadata": s.metadata,
            "created_at_unix_ms": s.created_at_unix_ms,
            "messages": messages,
            "current_turn": s.current_turn,
            "queued_turns": s.queued_turns,
            "usage": usage,
            "last_seq": s.last_seq,
            "turns_completed": s.turns_completed,
            "live": s.live,
            "pending_tool_calls": s.pending_tool_calls.iter().map(|t| serde_json::json!({
                "call_id": t.call_id, "name": t.name, "arguments": t.arguments,
                "client_side": t.client_side, "started": t.started, "needs_attention": t.needs_attention,
            })).collect::<Vec<_>>(),
            "allowed_tools": s.allowed_tools,
            "max_steps": s.max_steps,
        });
        println!("{v}");
        return;
    }
    println!("session   {}", s.session_id);
    let reason = if s.status_reason.is_empty() {
        String::new()
    } else {
        format!(" ({})", s.status_reason)
    };
    println!("status    {}{reason}", status_name(s.status));
    println!("route     {}", s.route);
    if !s.system_prompt.is_empty() {
        println!("system    {}", one_line(&s.system_prompt));
    }
    for (k, v) in &s.metadata {
        println!("meta      {k} = {v}");
    }
    let usage = convert::usage_from_proto(s.usage);
    println!(
        "turns     {} completed, current {}, {} queued; last seq {}; {} tokens in, {} out; {}",
        s.turns_completed,
        if s.current_turn == 0 {
            "none".to_string()
        } else {
            s.current_turn.to_string()
        },
        s.queued_turns,
        s.last_seq,
        usage.input_tokens,
        usage.output_tokens,
        if s.live { "live" } else { "passivated" }
    );
    for m in messages {
        let mut line = one_line(&m.content);
        for c in &m.tool_calls {
            line.push_str(&format!(
                " [calls {} {}({})]",
                c.id,
                c.name,
                one_line(&c.arguments)
            ));
        }
        if let Some(id) = &m.tool_call_id {
            line = format!("[{id}] {line}");
        }
        line.push_str(&images_note(&m.images));
        println!("  {:>9}: {}", m.role.as_str(), line);
    }
    for t in &s.pending_tool_calls {
        let state = if t.needs_attention {
            "NEEDS ATTENTION"
        } else if t.client_side {
            "waiting for the client"
        } else if t.started {
            "running"
        } else {
            "queued"
        };
        println!(
            "  pending  {} {}({}) — {state}",
            t.call_id,
            t.name,
            one_line(&t.arguments)
        );
    }
}
