//! The `baton` command line.
//!
//! * `baton serve` — run the server (gRPC Sessions API, health, reflection)
//!   on a RocksDB data dir, with the echo model by default.
//! * `baton session start|send|resume|get|list|cancel|delete` — a client of a
//!   running server that prints streamed events readably (`--json` for tools).
//! * `baton gates list|show|approve|reject|edit` — review human-in-the-loop
//!   gates of a running server.
//! * `baton demo` — run a short conversation on an embedded runtime, no server.

mod client;
mod demo;
mod gates;
mod print;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "baton",
    version,
    about = "Baton: a durable, actor-based runtime for stateful AI agents"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the Baton server.
    Serve(serve::ServeArgs),
    /// Talk to a running server's Sessions API.
    Session {
        #[command(flatten)]
        conn: client::Conn,
        #[command(subcommand)]
        command: client::SessionCommand,
    },
    /// Review a running server's gates: list, show, approve, reject, edit.
    Gates {
        #[command(flatten)]
        conn: client::Conn,
        #[command(subcommand)]
        command: gates::GateCommand,
    },
    /// Run a short conversation on an embedded runtime (no server needed).
    Demo {
        /// Data directory (default: a temporary one, removed afterwards).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

/// Entry point of the `baton` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Session { conn, command } => client::run(conn, command).await,
            Command::Gates { conn, command } => gates::run(conn, command).await,
            Command::Demo { data_dir } => demo::run(data_dir).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
