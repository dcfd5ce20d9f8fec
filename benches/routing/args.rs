//! The benchmark's command-line options.

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;

const HELP: &str = "\
Baton routing benchmark

Run with: cargo bench --bench routing -- [options]

Options (default in brackets; --quick values in braces):
  --quick               small smoke run, a few seconds; its figures mean little
  --json                print the results as JSON on stdout (the report goes to stderr)
  --decisions N         timed Router::decide calls per case [200000] {20000}
  --warmup N            untimed decisions per case before the first round [20000] {2000}
  --batch N             decisions per timed batch [50]
  --rounds N            rounds over all decide cases (noise spreads evenly) [4] {2}
  --calls N             calls per side, Router::call vs ExecutorHandle::call [20000] {2000}
  --requests N          requests of the cascade workload [1000] {100}
  --hard-share F        share of hard requests in the workload, 0 to 1 [0.3]
  --seed N              seed of the workload [42]
  --cheap-delay-ms N    the cheap fake model's delay before answering [0]
  --strong-delay-ms N   the strong fake model's delay before answering [0]
  --phases LIST         comma-separated subset of decide,call,cascade [all]
";

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Args {
    pub(crate) quick: bool,
    pub(crate) json: bool,
    pub(crate) decisions: usize,
    pub(crate) warmup: usize,
    pub(crate) batch: usize,
    pub(crate) rounds: usize,
    pub(crate) calls: usize,
    pub(crate) requests: usize,
    pub(crate) hard_share: f64,
    pub(crate) seed: u64,
    pub(crate) cheap_delay_ms: u64,
    pub(crate) strong_delay_ms: u64,
    pub(crate) phases: Vec<String>,
}

impl Args {
    pub(crate) fn defaults(quick: bool) -> Self {
        let mut a = Args {
            quick,
            json: false,
            decisions: 200_000,
            warmup: 20_000,
            batch: 50,
            rounds: 4,
            calls: 20_000,
            requests: 1000,
            hard_share: 0.3,
            seed: 42,
            cheap_delay_ms: 0,
            strong_delay_ms: 0,
            phases: ["decide", "call", "cascade"].map(String::from).to_vec(),
        };
        if quick {
            a.decisions = 20_000;
            a.warmup = 2000;
            a.rounds = 2;
            a.calls = 2000;
            a.requests = 100;
        }
        a
    }

    pub(crate) fn parse() -> Result<Args> {
        let raw: Vec<String> = std::env::args().skip(1).collect();
        let mut a = Args::defaults(raw.iter().any(|x| x == "--quick"));
        let mut it = raw.into_iter();
        while let Some(arg) = it.next() {
            let (key, inline) = match arg.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (arg, None),
            };
            let mut value = || -> Result<String> {
                inline
                    .clone()
                    .or_else(|| it.next())
                    .ok_or_else(|| anyhow!("{key} needs a value"))
            };
            match key.as_str() {
                // `cargo bench` passes --bench to harness-less benches.
                "--bench" | "--quick" => {}
                "--json" => a.json = true,
                "--decisions" => a.decisions = positive(&value()?, &key)?,
                "--warmup" => a.warmup = number(&value()?, &key)?,
                "--batch" => a.batch = positive(&value()?, &key)?,
                "--rounds" => a.rounds = positive(&value()?, &key)?,
                "--calls" => a.calls = positive(&value()?, &key)?,
                "--requests" => a.requests = positive(&value()?, &key)?,
                "--hard-share" => {
                    let v = value()?;
                    let f: f64 = v
                        .parse()
                        .with_context(|| format!("{key}: {v:?} is not a number"))?;
                    if !(0.0..=1.0).contains(&f) {
                        bail!("{key}: must be between 0 and 1");
                    }
                    a.hard_share = f;
                }
                "--seed" => a.seed = number(&value()?, &key)? as u64,
                "--cheap-delay-ms" => a.cheap_delay_ms = number(&value()?, &key)? as u64,
                "--strong-delay-ms" => a.strong_delay_ms = number(&value()?, &key)? as u64,
                "--phases" => {
                    a.phases = value()?.split(',').map(|s| s.trim().to_string()).collect();
                    for p in &a.phases {
                        if !["decide", "call", "cascade"].contains(&p.as_str()) {
                            bail!("--phases: unknown phase {p:?} (decide, call, cascade)");
                        }
                    }
                }
                "-h" | "--help" => {
                    print!("{HELP}");
                    std::process::exit(0);
                }
                other => bail!("unknown option {other:?}; see --help"),
            }
        }
        Ok(a)
    }

    pub(crate) fn has(&self, phase: &str) -> bool {
        self.phases.iter().any(|p| p == phase)
    }
}

fn number(v: &str, key: &str) -> Result<usize> {
    v.parse()
        .with_context(|| format!("{key}: {v:?} is not a number"))
}

fn positive(v: &str, key: &str) -> Result<usize> {
    let n = number(v, key)?;
    if n == 0 {
        bail!("{key}: must be greater than 0");
    }
    Ok(n)
}
