//! What follows a failed attempt: retry the same endpoint after a backoff,
//! fail over, upgrade to a larger context window, start another pass over
//! the candidates, or give up with the reason (see docs/routing.md,
//! "Supervision of calls").

use std::collections::HashMap;
use std::time::Duration;

use baton_models::ProviderErrorKind;
use tokio::time::Instant;

use super::attempt::AttemptError;
use super::backoff::backoff_delay;
use super::call_loop::{CallLoop, Step};
use super::candidates::{Cand, Want};
use super::state::lock;
use super::types::RouteErrorKind;
use crate::config::FirstTokenTimeout;

impl CallLoop<'_> {
    /// What to do after attempt `idx` failed with `err`.
    pub(super) fn plan_after_failure(&mut self, idx: usize, err: &AttemptError) -> Step {
        let route = self.ctx.route;
        let name = self.ctx.name(idx).to_string();
        // An endpoint that refused to continue the text the caller holds
        // (its `continuation` setting does not fit the server) is asked
        // again for the whole answer, matched against that text.
        if self.continuing == Some(idx)
            && let AttemptError::Provider(e) = err
            && matches!(
                e.kind,
                ProviderErrorKind::InvalidRequest | ProviderErrorKind::Client { .. }
            )
            && self.progress.attempt < route.max_attempts
        {
            self.no_continuation.push(idx);
            return Step::Next {
                want: Want::Retry {
                    idx,
                    reason: format!(
                        "{name} refused to continue the streamed text ({}); asking it for the whole answer",
                        e.message
                    ),
                },
                delay: Duration::ZERO,
            };
        }
        let want = match err {
            AttemptError::Cancelled => {
                return self.give_up(RouteErrorKind::Cancelled, "call cancelled".into());
            }
            AttemptError::Deadline => {
                return self.give_up(
                    RouteErrorKind::DeadlineExceeded,
                    format!(
                        "route {}: deadline exceeded during attempt {} on {name}",
                        route.name(),
                        self.progress.attempt
                    ),
                );
            }
            AttemptError::Provider(e) => match &e.kind {
                ProviderErrorKind::ContentPolicy => {
                    return self.give_up(RouteErrorKind::ContentPolicy, e.message.clone());
                }
                ProviderErrorKind::InvalidRequest => {
                    return self.give_up(RouteErrorKind::InvalidRequest, e.message.clone());
                }
                ProviderErrorKind::Client { status } if *status != 404 => {
                    return self.give_up(RouteErrorKind::InvalidRequest, e.message.clone());
                }
                ProviderErrorKind::ContextLength => {
                    let window = |i: usize| self.ctx.config(i).and_then(|c| c.context_window);
                    let failed = window(idx);
                    for i in 0..self.cands.excluded.len() {
                        let larger = matches!((window(i), failed), (Some(w), Some(f)) if w > f);
                        if !larger && self.cands.excluded[i].is_none() {
                            self.cands.excluded[i] = Some(format!(
                                "context window not larger than {name}'s ({})",
                                failed.map_or("unknown".to_string(), |f| f.to_string())
                            ));
                        }
                    }
                    let any = self.evaluate_now().iter().any(|c| c.eligible);
                    if !any {
                        return self.give_up(
                            RouteErrorKind::ContextLength,
                            format!(
                                "{}; no endpoint of route {} with a larger context window is available",
                                e.message,
                                route.name()
                            ),
                        );
                    }
                    return Step::Next {
                        want: Want::Upgrade {
                            reason: format!("{name} refused the request: context length exceeded"),
                        },
                        delay: Duration::ZERO,
                    };
                }
                ProviderErrorKind::Auth | ProviderErrorKind::Client { .. } => {
                    self.cands.excluded[idx] = Some(format!("misconfigured: {}", e.class()));
                    Want::Failover {
                        reason: format!("{name} failed: {} ({})", e.class(), e.message),
                    }
                }
                _ => {
                    if let Some(ra) = e.retry_after() {
                        self.cands.pass_retry_after =
                            Some(self.cands.pass_retry_after.map_or(ra, |x| x.min(ra)));
                    }
                    // A silent upstream fails over at once when another
                    // candidate can take the call (unless the route says to
                    // retry it first).
                    let fail_over_now = e.kind == ProviderErrorKind::FirstTokenTimeout
                        && route.cfg.first_token_timeout == FirstTokenTimeout::Failover
                        && self.another_candidate(idx);
                    if !fail_over_now
                        && let Some(retry) =
                            self.retry_same(idx, e.class(), &e.message, e.retry_after())
                    {
                        return retry;
                    }
                    self.cands.failed[idx] = Some(format!("failed: {}", e.class()));
                    Want::Failover {
                        reason: format!("{name} failed: {} ({})", e.class(), e.message),
                    }
                }
            },
            AttemptError::Schema(m) => {
                // A quality failure, retried and failed over like a
                // transient one: another sample, or another model, may
                // answer in the shape asked for.
                if let Some(retry) = self.retry_same(idx, err.class(), m, None) {
                    return retry;
                }
                self.cands.failed[idx] = Some(format!("failed: {}", err.class()));
                Want::Failover {
                    reason: format!("{name} failed: {} ({m})", err.class()),
                }
            }
            AttemptError::Stopped(m) => {
                self.cands.excluded[idx] = Some("stopped".into());
                Want::Failover {
                    reason: format!("{name} failed: {m}"),
                }
            }
            AttemptError::Overloaded(m) | AttemptError::WorkerFailed(m) => {
                self.cands.failed[idx] = Some(format!("failed: {}", err.class()));
                Want::Failover {
                    reason: format!("{name} failed: {m}"),
                }
            }
        };
        // Fail over at once if anyone is left, else pass again or give up.
        let cands = self.evaluate_now();
        if self.progress.attempt < route.max_attempts && cands.iter().any(|c| c.eligible) {
            return Step::Next {
                want,
                delay: Duration::ZERO,
            };
        }
        self.after_no_candidate(&cands)
    }

    /// A transient failure of attempt `idx`: retry the same endpoint after
    /// a backoff if it has attempts left, the wait fits the deadline and its
    /// breaker is still closed; `None` to fail over instead.
    fn retry_same(
        &self,
        idx: usize,
        class: &str,
        message: &str,
        retry_after: Option<Duration>,
    ) -> Option<Step> {
        let name = self.ctx.name(idx);
        let retry = self
            .ctx
            .config(idx)
            .map(|c| c.retry.clone())
            .unwrap_or_default();
        let tries = self.cands.tries[idx];
        if tries >= retry.max_attempts || self.progress.attempt >= self.ctx.route.max_attempts {
            return None;
        }
        let delay = backoff_delay(&retry, tries, retry_after);
        let healthy = self
            .ctx
            .health(idx)
            .is_some_and(|h| lock(&h.breaker).would_admit(Instant::now()));
        (self.ctx.fits(delay) && healthy).then(|| Step::Next {
            want: Want::Retry {
                idx,
                reason: format!(
                    "retry {} of {} on {name} after {class}: {message}",
                    tries + 1,
                    retry.max_attempts,
                ),
            },
            delay,
        })
    }

    /// A candidate other than `idx` is eligible now.
    pub(super) fn another_candidate(&self, idx: usize) -> bool {
        self.evaluate_now()
            .iter()
            .enumerate()
            .any(|(i, c)| i != idx && c.eligible)
    }

    /// Every candidate as a selection would see it now.
    fn evaluate_now(&self) -> Vec<Cand> {
        self.cands.evaluate(
            self.ctx.call.session_budget.as_ref(),
            self.session_extra(),
            &HashMap::new(),
        )
    }

    /// Nothing is eligible now: pass again after a backoff, or give up.
    pub(super) fn after_no_candidate(&mut self, cands: &[Cand]) -> Step {
        let route = self.ctx.route;
        let progress = &self.progress;
        let any_failed = self.cands.failed.iter().any(Option::is_some);
        if any_failed && progress.attempt < route.max_attempts {
            // Would anything be eligible in a new pass?
            let saved_failed = self.cands.failed.clone();
            let saved_tries = self.cands.tries.clone();
            let saved_ra = self.cands.pass_retry_after;
            self.cands.new_pass();
            let again = self.evaluate_now();
            self.cands.failed = saved_failed;
            self.cands.tries = saved_tries;
            self.cands.pass_retry_after = saved_ra;
            if again.iter().any(|c| c.eligible) {
                let retry = self
                    .cands
                    .order
                    .first()
                    .and_then(|i| self.ctx.config(*i))
                    .map(|c| c.retry.clone())
                    .unwrap_or_default();
                let delay = backoff_delay(&retry, self.pass, self.cands.pass_retry_after);
                if self.ctx.fits(delay) {
                    return Step::Next {
                        want: Want::NewPass {
                            pass: self.pass + 1,
                        },
                        delay,
                    };
                }
                let (ep, err) = self.progress.last_error.clone().unwrap_or_default();
                return self.give_up(
                    RouteErrorKind::Exhausted,
                    format!(
                        "route {}: every candidate failed and the backoff of {} ms before another pass would pass the deadline; last error from {ep}: {err}",
                        route.name(),
                        delay.as_millis()
                    ),
                );
            }
        }
        let progress = &self.progress;
        if progress.attempt >= route.max_attempts
            && let Some((ep, err)) = &progress.last_error
        {
            return self.give_up(
                RouteErrorKind::Exhausted,
                format!(
                    "route {}: all {} attempts failed; last error from {ep}: {err}",
                    route.name(),
                    progress.attempt
                ),
            );
        }
        if let Some(rej) = cands.iter().find_map(|c| c.budget.clone()) {
            return self.give_up(RouteErrorKind::BudgetExhausted, rej.to_string());
        }
        if let Some((ep, err)) = &progress.last_error {
            return self.give_up(
                RouteErrorKind::Exhausted,
                format!(
                    "route {}: no candidate left after {} attempt(s) ({}); last error from {ep}: {err}",
                    route.name(),
                    progress.attempt,
                    self.cands.summary(cands)
                ),
            );
        }
        Step::Done(Err(progress.error(self.cands.no_candidate_error(cands))))
    }
}
