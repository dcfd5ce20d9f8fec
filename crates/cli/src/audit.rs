//! `baton audit verify|export|pubkey`: offline checks of a signed audit log
//! (see the `baton-audit` crate for the format). No server needed.

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use baton_audit::{ExportFilter, VerifyingKey};
use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check every record, the hash chain, the signatures and the signed head.
    Verify {
        #[command(flatten)]
        log: LogArgs,
    },
    /// Verify the log and write its records as JSONL, each with its hash and
    /// signature so that others can re-check them.
    Export {
        #[command(flatten)]
        log: LogArgs,
        /// Only records of this session.
        #[arg(long)]
        session: Option<String>,
        /// Only records at or after this time (Unix milliseconds).
        #[arg(long)]
        since: Option<u64>,
        /// Only records before this time (Unix milliseconds).
        #[arg(long)]
        until: Option<u64>,
        /// Write here instead of stdout (removed again if the log is bad).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the hex public key of a key file.
    Pubkey {
        /// The signing key file.
        #[arg(long, default_value = "./baton-data/audit/audit.key")]
        key_file: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// The audit directory, holding audit.log and audit.head.
    #[arg(long, default_value = "./baton-data/audit")]
    dir: PathBuf,
    /// The public key, as 64 hex digits.
    #[arg(long, conflicts_with = "public_key_file")]
    public_key: Option<String>,
    /// A file holding the public key [default: <dir>/audit.key.pub].
    #[arg(long)]
    public_key_file: Option<PathBuf>,
}

impl LogArgs {
    fn key(&self) -> anyhow::Result<VerifyingKey> {
        if let Some(hex) = &self.public_key {
            return Ok(baton_audit::parse_public_key_hex(hex)?);
        }
        let file = self
            .public_key_file
            .clone()
            .unwrap_or_else(|| self.dir.join("audit.key.pub"));
        Ok(baton_audit::read_public_key(&file)?)
    }
}

pub fn run(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify { log } => {
            let report = baton_audit::verify(&log.dir, &log.key()?);
            println!("{report}");
            if !report.ok() {
                bail!("audit log in {} failed verification", log.dir.display());
            }
            Ok(())
        }
        AuditCommand::Export {
            log,
            session,
            since,
            until,
            out,
        } => {
            let key = log.key()?;
            let filter = ExportFilter {
                session_id: session,
                since_ms: since,
                until_ms: until,
            };
            let count = match &out {
                Some(path) => export_to_file(&log.dir, &key, &filter, path)?,
                None => baton_audit::export(
                    &log.dir,
                    &key,
                    &filter,
                    &mut BufWriter::new(io::stdout().lock()),
                )?,
            };
            eprintln!("exported {count} records");
            Ok(())
        }
        AuditCommand::Pubkey { key_file } => {
            let key = baton_audit::read_public_key(&key_file)?;
            println!("{}", baton_audit::public_key_hex(&key));
            Ok(())
        }
    }
}

fn export_to_file(
    dir: &Path,
    key: &VerifyingKey,
    filter: &ExportFilter,
    path: &Path,
) -> anyhow::Result<u64> {
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = BufWriter::new(file);
    let result = baton_audit::export(dir, key, filter, &mut out);
    drop(out);
    if result.is_err() {
        // Best effort: a partial export must not pass for a whole one.
        let _ = std::fs::remove_file(path);
    }
    let count = result?;
    Ok(count)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use baton_audit::{AuditConfig, AuditEvent, AuditLog};
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: AuditCommand,
    }

    fn parse(args: &[&str]) -> AuditCommand {
        Cli::try_parse_from(std::iter::once("audit").chain(args.iter().copied()))
            .unwrap()
            .command
    }

    #[tokio::test]
    async fn verify_export_and_pubkey_on_a_real_log() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let log = AuditLog::open(AuditConfig::in_dir(&dir)).unwrap();
        for i in 0..4u64 {
            log.append(AuditEvent::new("tool_call", serde_json::json!({"i": i})).session("s"));
        }
        let hex = log.public_key_hex();
        log.close().unwrap();
        let d = dir.to_str().unwrap();

        run(parse(&["verify", "--dir", d])).unwrap();
        run(parse(&["verify", "--dir", d, "--public-key", &hex])).unwrap();
        let key_file = dir.join("audit.key");
        run(parse(&["pubkey", "--key-file", key_file.to_str().unwrap()])).unwrap();

        let out = tmp.path().join("out.jsonl");
        let o = out.to_str().unwrap();
        run(parse(&["export", "--dir", d, "--session", "s", "--out", o])).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 4);

        let wrong = "11".repeat(32);
        assert!(run(parse(&["verify", "--dir", d, "--public-key", &wrong])).is_err());
        assert!(parse_err(&[
            "verify",
            "--public-key",
            &hex,
            "--public-key-file",
            "x"
        ]));

        // A tampered log: verify fails and export leaves no partial file.
        let log_path = dir.join("audit.log");
        let mut bytes = std::fs::read(&log_path).unwrap();
        bytes[3] ^= 1;
        std::fs::write(&log_path, bytes).unwrap();
        assert!(run(parse(&["verify", "--dir", d])).is_err());
        assert!(run(parse(&["export", "--dir", d, "--out", o])).is_err());
        assert!(!out.exists());
    }

    fn parse_err(args: &[&str]) -> bool {
        Cli::try_parse_from(std::iter::once("audit").chain(args.iter().copied())).is_err()
    }
}
