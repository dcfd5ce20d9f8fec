//! Quality scoring and drift alerts (`[quality]`).
//!
//! * **Scoring.** A configured share of final answers per route, and every
//!   answer an output policy flagged, is scored by an evaluator route
//!   against a rubric (by default factuality against the context given,
//!   relevance and coherence, each 0–1 with a reason). Sessions hand jobs
//!   to a bounded queue and never wait for them: a full queue drops the job
//!   (counted). A worker scores them, at most [`WORKERS`] at a time, and
//!   the session journals the score (`QualityScored`), rehydrated if it
//!   passivated meanwhile. Scores are exported as
//!   `baton_quality_score{route, endpoint, model, criterion}`.
//! * **Drift.** Every settled model attempt (the router tells us) and every
//!   score feeds a per-endpoint watch: a baseline (its first `baseline`
//!   observations) and a rolling window (its latest `window`). When the
//!   window's mean score, error rate or latency P95 degrades past the
//!   configured threshold against the baseline, one alert is raised: a
//!   structured log event (target `baton::quality`), a metric, and a
//!   webhook when configured. It is raised again only after the signal
//!   recovered (half-way back) and degraded again. Watches live in memory:
//!   a restart learns the baseline anew.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use baton_models::ModelRequest;
use baton_routing::{AttemptSeen, OwnKeys, RouteCall};
use baton_types::{EventKind, Message, QualityScore, Role, SessionId, now_unix_ms};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::error::ConfigError;

/// Scoring calls in flight at most.
pub(crate) const WORKERS: usize = 4;

/// Characters of conversation context an evaluator gets at most (the latest).
const CONTEXT_CHARS: usize = 12_000;

/// `[quality]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QualityConfig {
    /// The evaluator route that scores answers; none: nothing is scored.
    pub evaluator: Option<String>,
    /// The share (0 to 1) of final answers scored on every route.
    pub sample: f64,
    /// Shares per route, overriding `sample`.
    pub routes: BTreeMap<String, f64>,
    /// Score every answer an output policy flagged, whatever the share.
    pub score_flagged: bool,
    /// The criteria the evaluator scores, each 0 to 1 with a reason.
    pub criteria: Vec<String>,
    /// Replaces the scoring instructions (the context, question, answer and
    /// the JSON shape to answer in follow).
    pub rubric: Option<String>,
    /// Scoring jobs waiting at most; past it, new ones are dropped.
    pub queue: usize,
    /// Observations an endpoint's baseline is made of (its first ones).
    pub baseline: usize,
    /// Observations the rolling window holds (the latest ones).
    pub window: usize,
    /// Alert when an endpoint's rolling mean score (of all criteria) falls
    /// this far below its baseline.
    pub score_drop: Option<f64>,
    /// Alert when an endpoint's rolling error rate rises this far above its
    /// baseline (0.2: twenty points).
    pub error_rate_rise: Option<f64>,
    /// Alert when an endpoint's rolling latency P95 exceeds its baseline
    /// P95 times this.
    pub latency_p95_ratio: Option<f64>,
    /// POST each alert here as JSON too.
    pub webhook: Option<String>,
}

impl Default for QualityConfig {
    fn default() -> Self {
        QualityConfig {
            evaluator: None,
            sample: 0.0,
            routes: BTreeMap::new(),
            score_flagged: true,
            criteria: vec!["factuality".into(), "relevance".into(), "coherence".into()],
            rubric: None,
            queue: 1024,
            baseline: 50,
            window: 20,
            score_drop: None,
            error_rate_rise: None,
            latency_p95_ratio: None,
            webhook: None,
        }
    }
}

/// Check `[quality]`; errors name the key.
pub(crate) fn validate(c: &QualityConfig, route_names: &[String]) -> Result<(), ConfigError> {
    let share = |field: String, v: f64| {
        if (0.0..=1.0).contains(&v) {
            Ok(())
        } else {
            Err(ConfigError::new(field, "must be between 0 and 1"))
        }
    };
    let known = |field: String, route: &str| {
        if route_names.iter().any(|r| r == route) {
            Ok(())
        } else {
            Err(ConfigError::new(
                field,
                format!(
                    "{route:?} is not a route or model endpoint (have: {})",
                    route_names.join(", ")
                ),
            ))
        }
    };
    if let Some(e) = &c.evaluator {
        known("quality.evaluator".into(), e)?;
    }
    share("quality.sample".into(), c.sample)?;
    for (route, v) in &c.routes {
        known(format!("quality.routes.{route}"), route)?;
        share(format!("quality.routes.{route}"), *v)?;
    }
    let samples = c.sample > 0.0 || c.routes.values().any(|v| *v > 0.0);
    if samples && c.evaluator.is_none() {
        return Err(ConfigError::new(
            "quality.evaluator",
            "required to score a sample of answers",
        ));
    }
    if c.criteria.is_empty()
        || c.criteria
            .iter()
            .any(|k| k.is_empty() || !k.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'))
    {
        return Err(ConfigError::new(
            "quality.criteria",
            "one or more names in lower case (a-z, _)",
        ));
    }
    if !(1..=100_000).contains(&c.queue) {
        return Err(ConfigError::new("quality.queue", "must be 1 to 100000"));
    }
    for (field, v) in [
        ("quality.baseline", c.baseline),
        ("quality.window", c.window),
    ] {
        if !(3..=100_000).contains(&v) {
            return Err(ConfigError::new(field, "must be 3 to 100000"));
        }
    }
    for (field, v) in [
        ("quality.score_drop", c.score_drop),
        ("quality.error_rate_rise", c.error_rate_rise),
    ] {
        if let Some(v) = v
            && !(v > 0.0 && v <= 1.0)
        {
            return Err(ConfigError::new(field, "must be above 0 and at most 1"));
        }
    }
    if let Some(r) = c.latency_p95_ratio
        && !(r > 1.0 && r.is_finite())
    {
        return Err(ConfigError::new(
            "quality.latency_p95_ratio",
            "must be above 1",
        ));
    }
    if let Some(url) = &c.webhook {
        match reqwest::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => {
                return Err(ConfigError::new(
                    "quality.webhook",
                    format!("{:?} is not an http(s) URL", baton_types::redact_url(url)),
                ));
            }
        }
    }
    Ok(())
}

/// An answer to score.
pub(crate) struct ScoreJob {
    pub session: SessionId,
    pub turn: u64,
    pub route: String,
    pub endpoint: String,
    pub model: String,
    /// The request the answer was written for, as sent (pseudonymised).
    pub request: Arc<ModelRequest>,
    /// The user's question, as sent.
    pub question: String,
    /// The answer, as the model wrote it (pseudonymised).
    pub answer: String,
    pub data_classes: Vec<String>,
    pub own_keys: Option<Arc<OwnKeys>>,
}

/// One signal of an endpoint: its baseline and rolling window.
#[derive(Default)]
struct Signal {
    baseline: Vec<f64>,
    recent: VecDeque<f64>,
    alerted: bool,
}

impl Signal {
    /// Add an observation; the (baseline, window) values once both are full.
    fn push(&mut self, v: f64, baseline: usize, window: usize) -> Option<(&[f64], &VecDeque<f64>)> {
        if self.baseline.len() < baseline {
            self.baseline.push(v);
            return None;
        }
        self.recent.push_back(v);
        if self.recent.len() > window {
            self.recent.pop_front();
        }
        (self.recent.len() == window).then_some((&self.baseline, &self.recent))
    }
}

fn mean<'a>(v: impl IntoIterator<Item = &'a f64>) -> f64 {
    let (sum, n) = v
        .into_iter()
        .fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 { 0.0 } else { sum / n as f64 }
}

fn p95<'a>(v: impl IntoIterator<Item = &'a f64>) -> f64 {
    let mut all: Vec<f64> = v.into_iter().copied().collect();
    if all.is_empty() {
        return 0.0;
    }
    all.sort_by(f64::total_cmp);
    let rank = ((all.len() as f64) * 0.95).ceil() as usize;
    all[rank.clamp(1, all.len()) - 1]
}

/// What an endpoint is watched on.
#[derive(Default)]
struct Watch {
    model: String,
    score: Signal,
    errors: Signal,
    latency: Signal,
}

/// A degradation, as logged, counted and posted.
#[derive(Debug, Clone, serde::Serialize)]
struct Alert {
    alert: &'static str,
    endpoint: String,
    model: String,
    /// `score`, `error_rate` or `latency_p95`.
    signal: &'static str,
    baseline: f64,
    current: f64,
    threshold: f64,
    at_unix_ms: u64,
}

/// The quality monitor: scoring queue and drift watches.
pub(crate) struct Quality {
    cfg: QualityConfig,
    tx: mpsc::Sender<ScoreJob>,
    rx: Mutex<Option<mpsc::Receiver<ScoreJob>>>,
    watches: Mutex<HashMap<String, Watch>>,
    http: reqwest::Client,
}

impl Quality {
    pub(crate) fn new(cfg: QualityConfig) -> Quality {
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        Quality {
            cfg,
            tx,
            rx: Mutex::new(Some(rx)),
            watches: Mutex::new(HashMap::new()),
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }

    /// Whether any answer may be scored.
    pub(crate) fn scores(&self) -> bool {
        self.cfg.evaluator.is_some()
    }

    /// Whether drift is watched at all.
    pub(crate) fn watches(&self) -> bool {
        self.cfg.score_drop.is_some()
            || self.cfg.error_rate_rise.is_some()
            || self.cfg.latency_p95_ratio.is_some()
    }

    /// Whether turn `turn` of `session` on `route` is scored: flagged by
    /// an output policy (with `score_flagged`), or in the route's sample (a
    /// hash of the session and turn, so the choice is stable).
    pub(crate) fn wants(&self, route: &str, session: SessionId, turn: u64, flagged: bool) -> bool {
        if !self.scores() {
            return false;
        }
        if flagged && self.cfg.score_flagged {
            return true;
        }
        let share = self
            .cfg
            .routes
            .get(route)
            .copied()
            .unwrap_or(self.cfg.sample);
        if share <= 0.0 {
            return false;
        }
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        session.hash(&mut h);
        turn.hash(&mut h);
        (h.finish() as f64 / u64::MAX as f64) < share
    }

    /// Queue a job; never waits. False (and counted) when the queue is full.
    pub(crate) fn submit(&self, job: ScoreJob) -> bool {
        let route = job.route.clone();
        match self.tx.try_send(job) {
            Ok(()) => true,
            Err(_) => {
                baton_metrics::metrics().quality_scored(&route, "", "", "dropped");
                false
            }
        }
    }

    /// The queue's receiving end, for the worker (once).
    pub(crate) fn take_jobs(&self) -> Option<mpsc::Receiver<ScoreJob>> {
        self.rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// A settled model attempt (from the router).
    pub(crate) fn observe_attempt(&self, a: &AttemptSeen<'_>) {
        if !self.watches() {
            return;
        }
        let (baseline, window) = (self.cfg.baseline, self.cfg.window);
        let mut alerts = Vec::new();
        {
            let mut all = self.watches.lock().unwrap_or_else(PoisonError::into_inner);
            let w = all.entry(a.endpoint.to_string()).or_default();
            if w.model.is_empty() {
                w.model = a.model.to_string();
            }
            if let Some(rise) = self.cfg.error_rate_rise
                && let Some((base, recent)) =
                    w.errors
                        .push(if a.ok { 0.0 } else { 1.0 }, baseline, window)
            {
                let (b, c) = (mean(base), mean(recent));
                let degraded = c > b + rise;
                let recovered = c <= b + rise / 2.0;
                alerts.extend(
                    flip(&mut w.errors, degraded, recovered)
                        .then(|| alert(a.endpoint, &w.model, "error_rate", b, c, b + rise)),
                );
            }
            if a.ok
                && let Some(ratio) = self.cfg.latency_p95_ratio
                && let Some((base, recent)) = w.latency.push(a.secs, baseline, window)
            {
                let (b, c) = (p95(base), p95(recent));
                let degraded = c > b * ratio;
                let recovered = c <= b * (1.0 + (ratio - 1.0) / 2.0);
                alerts.extend(
                    flip(&mut w.latency, degraded, recovered)
                        .then(|| alert(a.endpoint, &w.model, "latency_p95", b, c, b * ratio)),
                );
            }
        }
        for a in alerts {
            self.raise(a);
        }
    }

    /// A score of an answer by `endpoint` (the mean of its criteria).
    fn observe_score(&self, endpoint: &str, model: &str, score: f64) {
        let Some(drop) = self.cfg.score_drop else {
            return;
        };
        let mut alerts = Vec::new();
        {
            let mut all = self.watches.lock().unwrap_or_else(PoisonError::into_inner);
            let w = all.entry(endpoint.to_string()).or_default();
            if w.model.is_empty() {
                w.model = model.to_string();
            }
            if let Some((base, recent)) = w.score.push(score, self.cfg.baseline, self.cfg.window) {
                let (b, c) = (mean(base), mean(recent));
                let degraded = c < b - drop;
                let recovered = c >= b - drop / 2.0;
                alerts.extend(
                    flip(&mut w.score, degraded, recovered)
                        .then(|| alert(endpoint, &w.model, "score", b, c, b - drop)),
                );
            }
        }
        for a in alerts {
            self.raise(a);
        }
    }

    /// Log, count and post an alert.
    fn raise(&self, a: Alert) {
        tracing::warn!(
            target: "baton::quality",
            alert = a.alert,
            endpoint = %a.endpoint,
            model = %a.model,
            signal = a.signal,
            baseline = a.baseline,
            current = a.current,
            threshold = a.threshold,
            "quality alert: {} {} degraded from {:.4} to {:.4} (threshold {:.4})",
            a.endpoint, a.signal, a.baseline, a.current, a.threshold
        );
        baton_metrics::metrics().quality_alert(&a.endpoint, a.signal);
        if let Some(url) = self.cfg.webhook.clone()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let http = self.http.clone();
            rt.spawn(async move {
                match http.post(&url).json(&a).send().await {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => tracing::warn!(target: "baton::quality", status = %r.status(), "quality alert webhook refused the alert"),
                    Err(e) => tracing::warn!(target: "baton::quality", error = %e, "quality alert webhook failed"),
                }
            });
        }
    }

    /// Score one answer: the record its session journals, or none (the
    /// evaluator failed, or answered no scores; counted and logged).
    pub(crate) async fn score(
        &self,
        router: &baton_routing::Router,
        job: &ScoreJob,
    ) -> Option<EventKind> {
        let evaluator = self.cfg.evaluator.as_deref()?;
        let metrics = baton_metrics::metrics();
        let mut request = ModelRequest::new(vec![Message::user(self.prompt(job))]);
        request.temperature = Some(0.0);
        let call = RouteCall {
            route: evaluator.to_string(),
            request: Arc::new(request),
            needs_vision: false,
            data_classes: job.data_classes.clone(),
            deltas: None,
            events: None,
            cancel: tokio_util::sync::CancellationToken::new(),
            deadline: None,
            session_budget: None,
            own_keys: job.own_keys.clone(),
        };
        let routed = match router.call(call).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(target: "baton::quality", session = %job.session, turn = job.turn, error = %e.message, "quality scoring failed");
                metrics.quality_scored(&job.route, &job.endpoint, &job.model, "failed");
                return None;
            }
        };
        let Some(scores) = parse_scores(&routed.response.message.content, &self.cfg.criteria)
        else {
            tracing::warn!(target: "baton::quality", session = %job.session, turn = job.turn, "the quality evaluator answered no scores");
            metrics.quality_scored(&job.route, &job.endpoint, &job.model, "invalid");
            return None;
        };
        metrics.quality_scored(&job.route, &job.endpoint, &job.model, "scored");
        for s in &scores {
            metrics.quality_score(&job.route, &job.endpoint, &job.model, &s.criterion, s.score);
        }
        let avg = mean(scores.iter().map(|s| &s.score));
        self.observe_score(&job.endpoint, &job.model, avg);
        Some(EventKind::QualityScored {
            turn: job.turn,
            endpoint: job.endpoint.clone(),
            model: job.model.clone(),
            evaluator: evaluator.to_string(),
            scores,
            cost_usd: routed.cost_usd,
        })
    }

    /// The evaluator's prompt for a job.
    fn prompt(&self, job: &ScoreJob) -> String {
        let mut context = String::new();
        for m in &job.request.messages {
            let role = match m.role {
                Role::System => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
                Role::Tool => "tool",
            };
            context.push_str(role);
            context.push_str(": ");
            context.push_str(&m.content);
            context.push('\n');
        }
        if context.len() > CONTEXT_CHARS {
            let mut cut = context.len() - CONTEXT_CHARS;
            while !context.is_char_boundary(cut) {
                cut += 1;
            }
            context = format!("[…]{}", &context[cut..]);
        }
        let criteria = &self.cfg.criteria;
        let instructions = self.cfg.rubric.clone().unwrap_or_else(|| {
            let mut r = String::from(
                "You are grading an AI assistant's answer for a quality report. Score it on each criterion from 0 (worst) to 1 (best):\n",
            );
            for c in criteria {
                let what = match c.as_str() {
                    "factuality" => "every claim is supported by the context given; 0 when it contradicts it or invents facts",
                    "relevance" => "it answers the question asked",
                    "coherence" => "it is clear, consistent and well organised",
                    _ => "as the criterion's name says",
                };
                r.push_str(&format!("- {c}: {what}\n"));
            }
            r
        });
        let shape: Vec<String> = criteria
            .iter()
            .map(|c| format!("\"{c}\": {{\"score\": 0.0, \"reason\": \"one sentence\"}}"))
            .collect();
        format!(
            "{instructions}\nContext:\n{context}\nQuestion:\n{}\n\nAnswer:\n{}\n\nReply with JSON only, in this shape: {{{}}}",
            job.question,
            job.answer,
            shape.join(", ")
        )
    }
}

/// Flip a signal's alert state: true when it just degraded.
fn flip(s: &mut Signal, degraded: bool, recovered: bool) -> bool {
    if degraded && !s.alerted {
        s.alerted = true;
        return true;
    }
    if s.alerted && recovered {
        s.alerted = false;
    }
    false
}

fn alert(
    endpoint: &str,
    model: &str,
    signal: &'static str,
    baseline: f64,
    current: f64,
    threshold: f64,
) -> Alert {
    Alert {
        alert: "quality_degraded",
        endpoint: endpoint.to_string(),
        model: model.to_string(),
        signal,
        baseline,
        current,
        threshold,
        at_unix_ms: now_unix_ms(),
    }
}

/// The evaluator's scores: a JSON object (or one in a code fence) with
/// `{"score": 0..1, "reason": "..."}` (or a bare number) per criterion.
/// None when no criterion has a valid score.
pub(crate) fn parse_scores(text: &str, criteria: &[String]) -> Option<Vec<QualityScore>> {
    let v = baton_governance::json::answer_json(text)?;
    let obj = v.as_object()?;
    let scores: Vec<QualityScore> = criteria
        .iter()
        .filter_map(|c| {
            let entry = obj.get(c)?;
            let (score, reason) = match entry {
                serde_json::Value::Number(n) => (n.as_f64()?, String::new()),
                serde_json::Value::Object(o) => (
                    o.get("score")?.as_f64()?,
                    o.get("reason")
                        .and_then(|r| r.as_str())
                        .unwrap_or_default()
                        .chars()
                        .take(300)
                        .collect(),
                ),
                _ => return None,
            };
            (0.0..=1.0).contains(&score).then(|| QualityScore {
                criterion: c.clone(),
                score,
                reason,
            })
        })
        .collect();
    (!scores.is_empty()).then_some(scores)
}

impl crate::handle::RuntimeHandle {
    /// Start the scoring worker when answers may be scored.
    pub(crate) fn spawn_quality(&self) {
        let shared = self.inner.shared.clone();
        if !shared.quality.scores() {
            return;
        }
        let Some(mut jobs) = shared.quality.take_jobs() else {
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        let permits = Arc::new(tokio::sync::Semaphore::new(WORKERS));
        tokio::spawn(async move {
            while let Some(job) = jobs.recv().await {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let Some(inner) = weak.upgrade() else { return };
                let handle = crate::handle::RuntimeHandle { inner };
                if handle.inner.stop.is_cancelled() {
                    return;
                }
                tokio::spawn(async move {
                    let shared = handle.inner.shared.clone();
                    if let Some(kind) = shared.quality.score(&shared.router, &job).await
                        && let Err(e) = handle
                            .ask(job.session, |reply| crate::session::SessionMsg::Record {
                                kind: Box::new(kind),
                                reply,
                            })
                            .await
                    {
                        tracing::debug!(target: "baton::quality", session = %job.session, error = %e, "score not recorded");
                    }
                    drop(permit);
                });
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_read_from_json_and_bad_ones_left_out() {
        let criteria: Vec<String> = ["factuality", "relevance", "coherence"]
            .map(String::from)
            .to_vec();
        let s = parse_scores(
            "```json\n{\"factuality\": {\"score\": 0.5, \"reason\": \"half\"}, \"relevance\": 1, \"coherence\": {\"score\": 7}}\n```",
            &criteria,
        )
        .unwrap();
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!((s[0].criterion.as_str(), s[0].score), ("factuality", 0.5));
        assert_eq!(s[0].reason, "half");
        assert_eq!(s[1].score, 1.0);
        assert!(parse_scores("great answer", &criteria).is_none());
        assert!(parse_scores("{\"other\": 1}", &criteria).is_none());
    }

    #[test]
    fn a_degrading_signal_alerts_once_until_it_recovers() {
        let q = Quality::new(QualityConfig {
            evaluator: Some("judge".into()),
            baseline: 4,
            window: 3,
            score_drop: Some(0.3),
            ..QualityConfig::default()
        });
        let alerted = |q: &Quality| {
            q.watches
                .lock()
                .unwrap()
                .get("e")
                .map(|w| w.score.alerted)
                .unwrap_or(false)
        };
        for _ in 0..4 {
            q.observe_score("e", "m", 0.9);
        }
        for _ in 0..3 {
            q.observe_score("e", "m", 0.85);
        }
        assert!(!alerted(&q), "a small dip is no alert");
        for _ in 0..3 {
            q.observe_score("e", "m", 0.2);
        }
        assert!(alerted(&q));
        // Back half-way: the alert clears, and can be raised again.
        for _ in 0..3 {
            q.observe_score("e", "m", 0.9);
        }
        assert!(!alerted(&q));
    }

    #[test]
    fn errors_and_latency_are_watched_per_endpoint() {
        let q = Quality::new(QualityConfig {
            baseline: 5,
            window: 5,
            error_rate_rise: Some(0.5),
            latency_p95_ratio: Some(2.0),
            ..QualityConfig::default()
        });
        let seen = |ok: bool, secs: f64| AttemptSeen {
            endpoint: "e",
            model: "m",
            route: "r",
            ok,
            secs,
        };
        let state = |q: &Quality| {
            let all = q.watches.lock().unwrap();
            let w = all.get("e").unwrap();
            (w.errors.alerted, w.latency.alerted)
        };
        for _ in 0..10 {
            q.observe_attempt(&seen(true, 0.1));
        }
        assert_eq!(state(&q), (false, false));
        // Slower answers: latency alerts, errors do not.
        for _ in 0..5 {
            q.observe_attempt(&seen(true, 0.5));
        }
        assert_eq!(state(&q), (false, true));
        // Failing: the error rate alerts.
        for _ in 0..4 {
            q.observe_attempt(&seen(false, 0.0));
        }
        assert_eq!(state(&q), (true, true));
        // Another endpoint is watched on its own.
        q.observe_attempt(&AttemptSeen {
            endpoint: "other",
            ..seen(false, 9.0)
        });
        assert!(!q.watches.lock().unwrap()["other"].errors.alerted);
        // Nothing is watched without a threshold.
        let off = Quality::new(QualityConfig::default());
        off.observe_attempt(&seen(false, 1.0));
        assert!(off.watches.lock().unwrap().is_empty());
    }

    #[test]
    fn bad_quality_settings_are_named() {
        let routes = vec!["main".to_string(), "judge".to_string()];
        let err = |c: QualityConfig| validate(&c, &routes).unwrap_err().to_string();
        assert!(
            err(QualityConfig {
                evaluator: Some("nope".into()),
                ..QualityConfig::default()
            })
            .starts_with("quality.evaluator: \"nope\" is not a route")
        );
        assert_eq!(
            err(QualityConfig {
                sample: 0.5,
                ..QualityConfig::default()
            }),
            "quality.evaluator: required to score a sample of answers"
        );
        assert_eq!(
            err(QualityConfig {
                evaluator: Some("judge".into()),
                routes: BTreeMap::from([("main".to_string(), 1.5)]),
                ..QualityConfig::default()
            }),
            "quality.routes.main: must be between 0 and 1"
        );
        assert_eq!(
            err(QualityConfig {
                webhook: Some("ftp://x".into()),
                ..QualityConfig::default()
            }),
            "quality.webhook: \"ftp://x\" is not an http(s) URL"
        );
        assert_eq!(
            err(QualityConfig {
                latency_p95_ratio: Some(0.5),
                ..QualityConfig::default()
            }),
            "quality.latency_p95_ratio: must be above 1"
        );
        assert!(validate(&QualityConfig::default(), &routes).is_ok());
    }

    #[test]
    fn sampling_is_stable_and_proportional() {
        let q = Quality::new(QualityConfig {
            evaluator: Some("judge".into()),
            sample: 0.25,
            routes: BTreeMap::from([("all".to_string(), 1.0), ("none".to_string(), 0.0)]),
            ..QualityConfig::default()
        });
        let id = SessionId::new();
        let picked = (0..4000).filter(|t| q.wants("main", id, *t, false)).count();
        assert!((800..1200).contains(&picked), "{picked}");
        assert_eq!(q.wants("main", id, 7, false), q.wants("main", id, 7, false));
        assert!((0..100).all(|t| q.wants("all", id, t, false)));
        assert!(!(0..100).any(|t| q.wants("none", id, t, false)));
        assert!(q.wants("none", id, 1, true), "flagged answers are scored");
        assert!(p95(&[1.0, 2.0, 3.0, 100.0]) == 100.0);
        assert_eq!(p95(&(1..=100).map(f64::from).collect::<Vec<_>>()), 95.0);
    }
}
