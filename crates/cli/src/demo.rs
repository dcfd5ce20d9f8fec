//! `baton demo`: a conversation on an embedded runtime with the echo model.

use std::path::PathBuf;

use baton_runtime::{Runtime, RuntimeConfig, StartSession};
use futures::StreamExt;

use crate::print::Printer;

pub async fn run(data_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let temp = std::env::temp_dir().join(format!("baton-demo-{}", std::process::id()));
    let dir = data_dir.clone().unwrap_or_else(|| temp.clone());
    let mut config = RuntimeConfig::with_data_dir(&dir);
    let mut echo = baton_models::echo_default();
    echo.echo.prefix = "echo: ".into();
    echo.echo.chunk_chars = 6;
    config.models = vec![echo];
    let runtime = Runtime::builder(config).start().await?;
    println!("embedded runtime on {} (durability: sync)", dir.display());
    let session = runtime
        .start_session(StartSession {
            system_prompt: "You are a helpful assistant.".into(),
            ..Default::default()
        })
        .await?;
    println!("session {}", session.id);
    let mut printer = Printer::new(false);
    for text in [
        "Hello, Baton!",
        "Every step I take is journaled.",
        "And survives a crash.",
    ] {
        let mut events = runtime.send(session.id, text.into()).await?;
        while let Some(e) = events.next().await {
            printer.event(&e?);
        }
        printer.finish();
    }
    let view = runtime.get(session.id).await?;
    println!(
        "session holds {} messages, {} turns completed, {} tokens; last seq {}",
        view.messages.len(),
        view.turns_completed,
        view.usage.total(),
        view.last_seq
    );
    runtime.shutdown().await;
    if data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    Ok(())
}
