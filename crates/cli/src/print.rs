//! Readable (or JSON) rendering of session events and sessions.

use std::io::Write;

use baton_proto::convert;
use baton_proto::v1;
pub use baton_types::describe::{duration, images_note, one_line, until};
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

/// One readable line for an event: `#seq` and [`EventKind::describe`]; an
/// opened gate with how to decide it from here.
pub fn describe(e: &SessionEvent) -> String {
    let mut d = format!("#{:<4} {}", e.seq, e.kind.describe());
    if let EventKind::GateOpened { gate_id, .. } = &e.kind {
        d.push_str(&format!(
            "\n      decide with: baton gates approve|reject|edit {gate_id} --reviewer NAME"
        ));
    }
    d
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
