//! `baton audit verify|export|pubkey`: offline checks of a signed audit log
//! (see the `baton-audit` crate for the format). No server needed.

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use baton_audit::{ExportFilter, VerifyingKey};
use clap::{Args, Subcommand};

use crate::settings::ConfigArgs;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check every record, the hash chain, the signatures and the signed
    /// head; or, with --export, check an exported file.
    Verify {
        #[command(flatten)]
        log: LogArgs,
        /// Check this exported file (from `baton audit export`) instead of
        /// the log: every record's hash and signature, its order, and the
        /// chain between adjacent records. Needs only the public key.
        #[arg(long)]
        export: Option<PathBuf>,
        /// With --export: also require the whole log up to its last record
        /// (seq 1 onwards, no gaps), as an unfiltered export has.
        #[arg(long, requires = "export")]
        complete: bool,
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
        #[command(flatten)]
        config: ConfigArgs,
        /// The signing key file [default: audit.key_file of the config, else
        /// audit.key in the audit directory].
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
}

/// Where the log is: `--dir`, else the audit directory of the config `baton
/// serve` uses (`audit.dir`, else `<store.data_dir>/audit`).
#[derive(Debug, Args)]
pub struct LogArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The audit directory, holding audit.log and audit.head [default: the
    /// config's audit directory].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The public key, as 64 hex digits.
    #[arg(long, conflicts_with = "public_key_file")]
    public_key: Option<String>,
    /// A file holding the public key [default: <dir>/audit.key.pub, or the
    /// config's key file with `.pub` appended].
    #[arg(long)]
    public_key_file: Option<PathBuf>,
}

impl LogArgs {
    fn dir(&self) -> anyhow::Result<PathBuf> {
        match &self.dir {
            Some(d) => Ok(d.clone()),
            None => Ok(self.config.audit()?.path),
        }
    }

    fn key(&self) -> anyhow::Result<VerifyingKey> {
        if let Some(hex) = &self.public_key {
            return Ok(baton_audit::parse_public_key_hex(hex)?);
        }
        let file = match (&self.public_key_file, &self.dir) {
            (Some(f), _) => f.clone(),
            (None, Some(dir)) => dir.join("audit.key.pub"),
            (None, None) => baton_audit::public_key_path(&self.config.audit()?.key_file),
        };
        Ok(baton_audit::read_public_key(&file)?)
    }
}

pub fn run(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify {
            log,
            export: Some(file),
            complete,
        } => {
            let key = log.key()?;
            let f = File::open(&file).with_context(|| format!("cannot open {}", file.display()))?;
            let report = baton_audit::verify_export(io::BufReader::new(f), &key);
            println!("{report}");
            if !report.ok() {
                bail!("export {} failed verification", file.display());
            }
            if complete && !report.complete() {
                bail!(
                    "export {} is not the whole log: it starts at seq {} and has {} gaps",
                    file.display(),
                    report.first_seq.unwrap_or(0),
                    report.gaps
                );
            }
            Ok(())
        }
        AuditCommand::Verify { log, .. } => {
            let dir = log.dir()?;
            let report = baton_audit::verify(&dir, &log.key()?);
            println!("{report}");
            if !report.ok() {
                bail!("audit log in {} failed verification", dir.display());
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
            let dir = log.dir()?;
            let key = log.key()?;
            let filter = ExportFilter {
                session_id: session,
                since_ms: since,
                until_ms: until,
            };
            let count = match &out {
                Some(path) => export_to_file(&dir, &key, &filter, path)?,
                None => baton_audit::export(
                    &dir,
                    &key,
                    &filter,
                    &mut BufWriter::new(io::stdout().lock()),
                )?,
            };
            eprintln!("exported {count} records");
            Ok(())
        }
        AuditCommand::Pubkey { config, key_file } => {
            let key_file = match key_file {
                Some(k) => k,
                None => config.audit()?.key_file,
            };
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
