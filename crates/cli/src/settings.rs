//! The configuration every command that reads local files uses: the same
//! layers as `baton serve` (defaults → config file → `BATON_*` environment
//! variables), so `baton audit …` and `baton restore` find the data dir and
//! the audit log the server uses.

use std::path::{Path, PathBuf};

use baton_server::BatonConfig;

/// The config file `baton serve` reads when none is named (if it exists).
pub const DEFAULT_CONFIG: &str = "config/baton.toml";

/// `--config` (or `BATON_CONFIG`) and `--data-dir`, for offline commands.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArgs {
    /// Config file, as for `baton serve` [default: config/baton.toml when it
    /// exists]; `BATON_*` variables apply on top.
    #[arg(long, env = "BATON_CONFIG")]
    pub config: Option<PathBuf>,
    /// The data dir (overrides store.data_dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Load the config: `path` (it must exist), else the default file when it
/// exists, else defaults; then the environment.
pub fn load(path: Option<&Path>) -> anyhow::Result<BatonConfig> {
    let path = match path {
        Some(p) => Some(p.to_path_buf()),
        None => {
            let p = PathBuf::from(DEFAULT_CONFIG);
            p.exists().then_some(p)
        }
    };
    Ok(BatonConfig::load(path.as_deref())?)
}

impl ConfigArgs {
    /// The config with `--data-dir` applied.
    pub fn load(&self) -> anyhow::Result<BatonConfig> {
        let mut config = load(self.config.as_deref())?;
        if let Some(d) = &self.data_dir {
            config.store.data_dir = d.clone();
        }
        Ok(config)
    }

    /// The audit log's settings (directory and key file) of that config.
    pub fn audit(&self) -> anyhow::Result<baton_audit::AuditConfig> {
        let config = self.load()?;
        Ok(config.audit.resolve(&config.store.data_dir))
    }
}
