//! The `baton` command line.
//!
//! * `baton serve` — run the server (gRPC Sessions API, health, reflection)
//!   on a RocksDB data dir, with the echo model by default.
//! * `baton session start|send|resume|get|list|cancel|delete` — a client of a
//!   running server that prints streamed events readably (`--json` for tools).
//! * `baton gates list|show|approve|reject|edit` — review human-in-the-loop
//!   gates of a running server.
//! * `baton inspect actors|session|journal|at|fork|replay` — look inside a
//!   running server: its actor tree, a session's state and journal, time
//!   travel, forks and replays.
//! * `baton backup --to DIR` — an online backup taken by the running server;
//!   `baton restore --from DIR --data-dir DIR` puts one in place, offline.
//! * `baton audit verify|export|pubkey` — check a signed audit log offline,
//!   export its records with their hashes and signatures, print its key.
//! * `baton export --subject S [--field KEY]` — everything held about a data
//!   subject as JSON (subject access), offline.
//! * `baton demo` — run a short conversation on an embedded runtime, no server.

mod audit;
mod client;
mod demo;
mod export;
mod flows;
mod gates;
mod inspect;
mod keys;
mod ops;
mod print;
mod serve;
mod settings;

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
    /// Flows and their runs: list, start, get, runs, watch, cancel, signal,
    /// resolve, reload.
    Flows {
        #[command(flatten)]
        conn: client::Conn,
        #[command(subcommand)]
        command: flows::FlowCommand,
    },
    /// Look inside a running server: actors, state, journal, time travel,
    /// forks, replays.
    Inspect {
        #[command(flatten)]
        conn: client::Conn,
        #[command(subcommand)]
        command: inspect::InspectCommand,
    },
    /// API keys: create, list, revoke, rotate.
    Keys {
        #[command(flatten)]
        conn: client::Conn,
        #[command(subcommand)]
        command: keys::KeyCommand,
    },
    /// Erase a data subject by crypto-shredding (admin; needs [privacy]
    /// encryption): its keys are destroyed, so its content cannot be read
    /// anywhere again, then its live sessions are deleted.
    Erase {
        #[command(flatten)]
        conn: client::Conn,
        /// A value of [privacy] subject_field (e.g. a customer id), or
        /// session:<id>.
        #[arg(long)]
        subject: String,
        /// The tenant the subject belongs to [default: the default tenant].
        #[arg(long, default_value = "")]
        tenant: String,
    },
    /// Ask a running server for a consistent online backup.
    Backup {
        #[command(flatten)]
        conn: client::Conn,
        /// A directory that does not exist yet, inside the server's store.backup_dir
        /// (a relative path is taken relative to it).
        #[arg(long)]
        to: PathBuf,
    },
    /// Put a backup in place as a data dir (offline: no server on it).
    Restore {
        /// The backup directory (made by `baton backup`).
        #[arg(long)]
        from: PathBuf,
        /// The config `baton serve` uses, for the data dir to restore into
        /// (store.data_dir; `--data-dir` overrides it). It must be missing
        /// or empty unless --force.
        #[command(flatten)]
        config: settings::ConfigArgs,
        /// Replace a non-empty data dir.
        #[arg(long)]
        force: bool,
        /// Print JSON instead of readable text.
        #[arg(long)]
        json: bool,
    },
    /// Copy a RocksDB data dir into the PostgreSQL database the config's
    /// [store.postgres] names (offline: no server on either; the database
    /// must hold no Baton data yet). Then set store.backend = "postgres".
    MigrateStore {
        /// The RocksDB data dir to copy [default: the config's store.data_dir].
        #[arg(long)]
        from: Option<PathBuf>,
        #[command(flatten)]
        config: settings::ConfigArgs,
        /// Print JSON instead of readable text.
        #[arg(long)]
        json: bool,
    },
    /// Verify or export a signed audit log, or print its public key
    /// (offline: reads the files, no server needed).
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Everything held about a data subject (a session, or every session
    /// with a metadata value) as JSON: metadata, journal, gates and audit
    /// records (offline: the server must be stopped).
    Export(export::ExportArgs),
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
            Command::Flows { conn, command } => flows::run(conn, command).await,
            Command::Inspect { conn, command } => inspect::run(conn, command).await,
            Command::Keys { conn, command } => keys::run(conn, command).await,
            Command::Backup { conn, to } => ops::backup(conn, to).await,
            Command::Erase {
                conn,
                subject,
                tenant,
            } => ops::erase(conn, subject, tenant).await,
            Command::Restore {
                from,
                config,
                force,
                json,
            } => ops::restore(from, config, force, json).await,
            Command::MigrateStore { from, config, json } => {
                ops::migrate_store(from, config, json).await
            }
            Command::Audit { command } => audit::run(command),
            Command::Export(args) => export::run(args).await,
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
