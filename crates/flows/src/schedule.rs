//! Schedule triggers: a run of a flow at every fire of a cron expression
//! in a time zone, exactly one run per fire across restarts.
//!
//! Each schedule's last handled fire is kept in the store (`c/<name>` in
//! the run index); a fire starts its run with the delivery id
//! `schedule:<name>` / `<fire time>`, so a crash between the start and
//! the bookkeeping cannot start it twice. At start, fires missed while the
//! server was down are skipped or run once (`missed`).

use std::sync::Arc;
use std::time::Duration;

use baton_store::Batch;
use baton_types::{AccessRole, AuthMethod, Principal, now_unix_ms};
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use serde_json::Value;

use crate::config::{Missed, ScheduleConfig};
use crate::deps::{Deps, StartRun};
use crate::error::{Error, Result};

/// A schedule, checked at start.
#[derive(Debug)]
pub struct Schedule {
    pub config: ScheduleConfig,
    cron: Cron,
    tz: jiff::tz::TimeZone,
}

/// The principal runs of a trigger act as.
pub fn trigger_principal(kind: &str, name: &str, tenant: &str) -> Principal {
    Principal {
        via: AuthMethod::Trigger,
        id: format!("{kind}:{name}"),
        tenant: tenant.to_string(),
        roles: vec![AccessRole::Client],
        groups: Vec::new(),
    }
}

fn state_key(name: &str) -> Vec<u8> {
    format!("c/{name}").into_bytes()
}

impl Schedule {
    pub fn new(config: ScheduleConfig) -> Result<Schedule> {
        let field = |f: &str| format!("flows.schedules[{}].{f}", config.name);
        crate::def::check_name(&config.name)
            .map_err(|p| Error::InvalidArgument(format!("{}: {p}", field("name"))))?;
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(&config.cron)
            .map_err(|e| Error::InvalidArgument(format!("{}: {e}", field("cron"))))?;
        let tz = jiff::tz::TimeZone::get(&config.timezone).map_err(|e| {
            Error::InvalidArgument(format!("{}: {:?}: {e}", field("timezone"), config.timezone))
        })?;
        Ok(Schedule { config, cron, tz })
    }

    fn zoned(&self, ms: u64) -> Result<jiff::Zoned> {
        jiff::Timestamp::from_millisecond(ms as i64)
            .map(|t| t.to_zoned(self.tz.clone()))
            .map_err(|e| Error::Internal(format!("time {ms}: {e}")))
    }

    /// The first fire strictly after `after_ms`.
    pub fn next_after(&self, after_ms: u64) -> Result<u64> {
        let z = self
            .cron
            .find_next_occurrence(&self.zoned(after_ms)?, false)
            .map_err(|e| Error::Internal(format!("schedule {}: {e}", self.config.name)))?;
        Ok(z.timestamp().as_millisecond().max(0) as u64)
    }

    /// The last fire at or before `at_ms`.
    pub fn last_at_or_before(&self, at_ms: u64) -> Result<u64> {
        let z = self
            .cron
            .find_previous_occurrence(&self.zoned(at_ms)?, true)
            .map_err(|e| Error::Internal(format!("schedule {}: {e}", self.config.name)))?;
        Ok(z.timestamp().as_millisecond().max(0) as u64)
    }
}

async fn load_state(deps: &Deps, name: &str) -> Result<Option<u64>> {
    Ok(deps
        .store
        .get_run_index(state_key(name))
        .await?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map(u64::from_be_bytes))
}

async fn save_state(deps: &Deps, name: &str, at: u64) -> Result<()> {
    let mut b = Batch::new();
    b.put_run_index(state_key(name), at.to_be_bytes().to_vec());
    deps.store.write(b).await?;
    Ok(())
}

/// Start the run of fire `at`. `Ok(false)`: the flow is at its limit; try
/// this fire again later.
async fn fire(deps: &Deps, s: &Schedule, at: u64) -> Result<bool> {
    let Some(starter) = deps.starter() else {
        return Err(Error::Internal("the flows service is stopping".into()));
    };
    let mut input = s.config.input.clone();
    if let Value::Object(o) = &mut input {
        o.insert("fired_at_unix_ms".into(), at.into());
    }
    let name = &s.config.name;
    let req = StartRun {
        flow: s.config.flow.clone(),
        input,
        idempotency_key: None,
        trigger: format!("schedule:{name}"),
        parent: None,
        delivery: Some((format!("schedule:{name}"), at.to_string())),
    };
    match starter
        .start(req, trigger_principal("schedule", name, &s.config.tenant))
        .await
    {
        Ok(started) => {
            tracing::info!(schedule = %name, fire = at, run = %started.id, created = started.created, "schedule fired");
            Ok(true)
        }
        Err(Error::ResourceExhausted { .. }) => Ok(false),
        Err(e) => {
            // A fire that cannot start (the flow is gone, its input does
            // not check) is skipped, not retried forever.
            tracing::warn!(schedule = %name, fire = at, error = %e, "a schedule's fire could not start a run; skipped");
            Ok(true)
        }
    }
}

/// Run the schedules until the service stops.
pub async fn run(deps: Arc<Deps>, schedules: Vec<Schedule>) {
    if schedules.is_empty() {
        return;
    }
    let mut last = Vec::with_capacity(schedules.len());
    let now = now_unix_ms();
    for s in &schedules {
        let name = &s.config.name;
        let state = match load_state(&deps, name).await {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(schedule = %name, error = %e, "cannot read a schedule's state");
                None
            }
        };
        let mut at = state.unwrap_or(now);
        // Fires missed while down.
        if state.is_some()
            && let Ok(next) = s.next_after(at)
            && next <= now
        {
            match s.config.missed {
                Missed::Skip => {
                    tracing::info!(schedule = %name, "fires missed while down are skipped");
                }
                Missed::RunOnce => {
                    if let Ok(latest) = s.last_at_or_before(now) {
                        match fire(&deps, s, latest).await {
                            Ok(true) => {}
                            Ok(false) => {
                                tracing::warn!(schedule = %name, "the missed fire found its flow at its limit; skipped")
                            }
                            Err(e) => {
                                tracing::warn!(schedule = %name, error = %e, "the missed fire failed")
                            }
                        }
                    }
                }
            }
            at = now;
        }
        if state != Some(at)
            && let Err(e) = save_state(&deps, name, at).await
        {
            tracing::error!(schedule = %name, error = %e, "cannot save a schedule's state");
        }
        last.push(at);
    }
    loop {
        let now = now_unix_ms();
        let mut wait = 1000u64;
        for (i, s) in schedules.iter().enumerate() {
            let Ok(next) = s.next_after(last[i]) else {
                continue;
            };
            if next > now {
                wait = wait.min(next - now);
                continue;
            }
            match fire(&deps, s, next).await {
                Ok(true) => {
                    last[i] = next;
                    if let Err(e) = save_state(&deps, &s.config.name, next).await {
                        tracing::error!(schedule = %s.config.name, error = %e, "cannot save a schedule's state");
                    }
                    wait = 0;
                }
                // Backpressure: this fire waits.
                Ok(false) => wait = wait.min(1000),
                Err(e) => {
                    tracing::warn!(schedule = %s.config.name, error = %e, "schedule");
                    wait = wait.min(1000);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(wait.max(5))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(cron: &str, tz: &str) -> Schedule {
        Schedule::new(ScheduleConfig {
            name: "s".into(),
            flow: "f".into(),
            cron: cron.into(),
            timezone: tz.into(),
            input: Value::Null,
            missed: Missed::Skip,
            tenant: "default".into(),
        })
        .expect("schedule")
    }

    #[test]
    fn fires_follow_the_time_zone() {
        // 09:00 every day in Paris is 08:00 UTC in winter.
        let s = schedule("0 9 * * *", "Europe/Paris");
        let jan1 = jiff::Timestamp::from_second(1_704_067_200).expect("ts"); // 2024-01-01T00:00Z
        let next = s.next_after(jan1.as_millisecond() as u64).expect("next");
        assert_eq!(next, 1_704_067_200_000 + 8 * 3_600_000);
        // Seconds are allowed as a sixth, leading field.
        let s = schedule("*/10 * * * * *", "UTC");
        assert_eq!(s.next_after(1_000_000).expect("next"), 1_010_000);
        assert_eq!(s.last_at_or_before(1_015_000).expect("prev"), 1_010_000);
    }

    #[test]
    fn bad_expressions_and_zones_are_refused_naming_the_field() {
        let e = Schedule::new(ScheduleConfig {
            name: "s".into(),
            flow: "f".into(),
            cron: "61 * * * *".into(),
            timezone: "UTC".into(),
            input: Value::Null,
            missed: Missed::Skip,
            tenant: "default".into(),
        })
        .expect_err("cron");
        assert!(e.to_string().starts_with("flows.schedules[s].cron"), "{e}");
        let e = Schedule::new(ScheduleConfig {
            name: "s".into(),
            flow: "f".into(),
            cron: "* * * * *".into(),
            timezone: "Mars/Olympus".into(),
            input: Value::Null,
            missed: Missed::Skip,
            tenant: "default".into(),
        })
        .expect_err("tz");
        assert!(
            e.to_string().starts_with("flows.schedules[s].timezone"),
            "{e}"
        );
    }
}
