//! Run with: cargo run -p baton-audit --example append_and_verify -- [DIR]
//!
//! Appends a few events to the audit log in DIR (default
//! `./baton-data/audit`, key in `DIR/audit.key`), then verifies the log and
//! prints the report. Run it twice to see the chain continue across reopen;
//! `baton audit verify --dir DIR` checks the same files.

use baton_audit::{AuditConfig, AuditEvent, AuditLog};
use serde_json::json;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), baton_audit::AuditError> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "./baton-data/audit".into());
    let log = AuditLog::open(AuditConfig::in_dir(&dir))?;
    log.append(
        AuditEvent::new("model_call", json!({"model": "echo", "tokens": 12}))
            .session("demo")
            .actor("agent"),
    );
    log.append(
        AuditEvent::new(
            "tool_call",
            json!({"tool": "search", "args": {"q": "baton"}}),
        )
        .session("demo")
        .actor("agent"),
    );
    log.append(AuditEvent::new("admin_action", json!({"action": "demo"})).actor("admin"));
    log.flush().await?;
    let key = log.public_key();
    println!("public key: {}", log.public_key_hex());
    log.close()?;
    println!("{}", baton_audit::verify(dir.as_ref(), &key));
    Ok(())
}
