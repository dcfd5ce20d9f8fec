//! Hedged attempts (`hedge_after_ms`): when an attempt has produced no
//! output that long, a second one starts on another candidate. The first to
//! produce output (or its whole answer) wins; the other is cancelled, billed
//! for the input its provider had started on, and journaled as `hedge_lost`.
//! A failure of one while the other runs is journaled and the other goes on.
//! Only the winner's text reaches a streaming caller.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use baton_models::Delta;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::attempt::{AttemptError, AttemptOutcome, run_attempt};
use super::call_loop::{CallLoop, Prepared, Step};
use super::candidates::Want;
use super::splice::Splice;
use crate::config::Strategy;

type Running = Pin<Box<dyn Future<Output = AttemptOutcome> + Send>>;

/// One attempt in flight: its outcome to come, its text as it arrives, and
/// how to stop it.
struct Flight<'a> {
    p: Prepared<'a>,
    outcome: Running,
    text: mpsc::UnboundedReceiver<Delta>,
    cancel: CancellationToken,
    /// Its text reached the caller.
    forwarded: bool,
}

impl<'a> Flight<'a> {
    fn launch(
        p: Prepared<'a>,
        call_cancel: &CancellationToken,
        deadline: Option<tokio::time::Instant>,
    ) -> Self {
        let (tx, text) = mpsc::unbounded_channel();
        let cancel = call_cancel.child_token();
        let (handle, request, token) = (p.handle.clone(), p.request.clone(), cancel.clone());
        let outcome = Box::pin(
            async move {
                run_attempt(
                    &handle,
                    &request,
                    Some(&tx as &dyn super::attempt::TextSink),
                    &token,
                    deadline,
                )
                .await
            }
            .instrument(p.span.clone()),
        );
        Flight {
            p,
            outcome,
            text,
            cancel,
            forwarded: false,
        }
    }

    /// Pass `d` on to the caller (when it streams).
    fn pass_on(&mut self, d: Delta, forward: Option<&Splice>) {
        if let (Delta::Text(t), Some(splice)) = (d, forward) {
            self.forwarded |= splice.push(t);
        }
    }

    /// Pass on whatever text is left after its outcome arrived.
    fn drain(&mut self, forward: Option<&Splice>) {
        while let Ok(d) = self.text.try_recv() {
            self.pass_on(d, forward);
        }
    }

    /// Stop it and wait for its outcome.
    async fn cancel(mut self) -> (Prepared<'a>, AttemptOutcome) {
        self.cancel.cancel();
        let outcome = (&mut self.outcome).await;
        (self.p, outcome)
    }
}

impl<'a> CallLoop<'a> {
    /// The hedge delay, when attempt `idx` is to be hedged: the route sets
    /// one, is not a cascade (whose steps are sequential by design), no
    /// attempt is resuming text the caller already has, and another
    /// candidate could take the second attempt.
    pub(super) fn hedge_after(&self, idx: usize) -> Option<Duration> {
        let ms = self.ctx.route.cfg.hedge_after_ms?;
        let resuming = self.splice.as_ref().is_some_and(|s| s.holds_text());
        (self.ctx.route.cfg.strategy != Strategy::Cascade
            && !resuming
            && self.another_candidate(idx))
        .then(|| Duration::from_millis(ms))
    }

    /// Make attempt `first`, hedged after `after`.
    pub(super) async fn attempt_hedged(&mut self, first: Prepared<'a>, after: Duration) -> Step {
        let call = self.ctx.call;
        let deadline = self.ctx.deadline;
        let splice = self.forward(first.last_step);
        let forward = splice.as_deref();
        let mut a = Flight::launch(first, &call.cancel, deadline);

        // Alone until its first text, its outcome, or the hedge delay.
        let timer = tokio::time::sleep(after);
        tokio::pin!(timer);
        tokio::select! {
            outcome = &mut a.outcome => return self.land(a, outcome, forward).await,
            Some(d) = a.text.recv() => {
                a.pass_on(d, forward);
                return self.run_out(a, forward).await;
            }
            () = &mut timer => {}
        }

        // No output yet: a second attempt on another candidate.
        let reason = format!(
            "{} produced no output within hedge_after_ms = {}",
            a.p.name,
            after.as_millis()
        );
        let saved = self.cands.failed[a.p.idx].replace(format!("hedged: {reason}"));
        let picked = self.pick(&Want::Hedge { reason });
        self.cands.failed[a.p.idx] = saved;
        let b = match picked.map(|p| self.prepare(p)) {
            Ok(Ok(b)) => b,
            // Nobody to hedge with after all (budget, breakers): wait on it.
            _ => return self.run_out(a, forward).await,
        };
        let mut b = Flight::launch(b, &call.cancel, deadline);

        // Both run: the first with text or an answer wins. (A branch whose
        // text channel closed is skipped; the outcomes always arrive.)
        tokio::select! {
            outcome = &mut a.outcome => match self.race_end(a, outcome, b, forward).await {
                Ok(step) => step,
                Err(left) => self.run_out(left, forward).await,
            },
            outcome = &mut b.outcome => match self.race_end(b, outcome, a, forward).await {
                Ok(step) => step,
                Err(left) => self.run_out(left, forward).await,
            },
            Some(d) = a.text.recv() => {
                a.pass_on(d, forward);
                let (lost, outcome) = b.cancel().await;
                self.lose(lost, outcome, &a.p.name);
                self.run_out(a, forward).await
            }
            Some(d) = b.text.recv() => {
                b.pass_on(d, forward);
                let (lost, outcome) = a.cancel().await;
                self.lose(lost, outcome, &b.p.name);
                self.run_out(b, forward).await
            }
        }
    }

    /// `done` ended with `outcome` while `other` still runs. An answer wins
    /// (the other is cancelled); the whole call's cancellation or deadline
    /// ends both; any other failure is booked and `Err(other)` goes on alone.
    async fn race_end(
        &mut self,
        mut done: Flight<'a>,
        outcome: AttemptOutcome,
        other: Flight<'a>,
        forward: Option<&Splice>,
    ) -> Result<Step, Flight<'a>> {
        match outcome.result {
            Ok(_) => {
                let (lost, lost_outcome) = other.cancel().await;
                self.lose(lost, lost_outcome, &done.p.name);
                done.drain(forward);
                Ok(self.land_drained(done, outcome).await)
            }
            Err(AttemptError::Cancelled | AttemptError::Deadline) => {
                let (p, o) = other.cancel().await;
                if let Err(e) = o.result {
                    self.failed_beside(p, e, o.elapsed, &done.p.name);
                }
                Ok(self.land(done, outcome, forward).await)
            }
            Err(e) => {
                self.failed_beside(done.p, e, outcome.elapsed, &other.p.name);
                Err(other)
            }
        }
    }

    /// The loser of a race: cancelled, unless it ended on its own first.
    fn lose(&mut self, p: Prepared<'a>, outcome: AttemptOutcome, winner: &str) {
        match outcome.result {
            Err(AttemptError::Cancelled) | Ok(_) => self.settle_lost(p, outcome.elapsed, winner),
            Err(e) => self.failed_beside(p, e, outcome.elapsed, winner),
        }
    }

    /// Wait for `f` alone, passing its text on, and settle it.
    async fn run_out(&mut self, mut f: Flight<'a>, forward: Option<&Splice>) -> Step {
        loop {
            tokio::select! {
                outcome = &mut f.outcome => return self.land(f, outcome, forward).await,
                Some(d) = f.text.recv() => f.pass_on(d, forward),
            }
        }
    }

    /// Settle `f`, whose outcome arrived, after passing on its last text.
    async fn land(
        &mut self,
        mut f: Flight<'a>,
        outcome: AttemptOutcome,
        forward: Option<&Splice>,
    ) -> Step {
        f.drain(forward);
        self.land_drained(f, outcome).await
    }

    async fn land_drained(&mut self, f: Flight<'a>, outcome: AttemptOutcome) -> Step {
        let outcome = AttemptOutcome {
            emitted: f.forwarded,
            ..outcome
        };
        self.settle(f.p, outcome).await
    }
}
