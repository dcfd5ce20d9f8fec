//! The pure parts of endpoint selection: request size, capability needs,
//! complexity scores, weighted picks and the power of two choices.

use baton_models::{Capability, EndpointConfig, ModelRequest};
use baton_types::Role;
use regex::Regex;

/// Estimated input tokens of a request: one token per 4 characters of the
/// message contents and tool-call arguments, plus 4 per message.
pub fn estimate_input_tokens(req: &ModelRequest) -> u64 {
    req.estimated_input_tokens()
}

/// The capabilities a request needs from an endpoint: tools when it offers
/// tools, json_schema for structured output, vision when a message carries
/// an image (or the caller says so). Streaming is never a hard requirement:
/// a non-streaming endpoint answers at the end.
pub fn required_capabilities(req: &ModelRequest, needs_vision: bool) -> Vec<Capability> {
    let needs_vision = needs_vision || req.messages.iter().any(|m| !m.images.is_empty());
    let mut caps = Vec::new();
    if !req.tools.is_empty() {
        caps.push(Capability::Tools);
    }
    if req.json_schema.is_some() {
        caps.push(Capability::JsonSchema);
    }
    if needs_vision {
        caps.push(Capability::Vision);
    }
    if req.embed.is_some() {
        caps.push(Capability::Embeddings);
    }
    caps
}

/// Why `cfg` cannot take the request at all, or `None` when it can:
/// capabilities, context window, data classes.
pub fn static_exclusion(
    cfg: &EndpointConfig,
    req: &ModelRequest,
    needs: &[Capability],
    input_tokens: u64,
    data_classes: &[String],
) -> Option<String> {
    for cap in needs {
        if !cfg.capabilities.contains(cap) {
            return Some(format!("lacks capability {}", cap.as_str()));
        }
    }
    if req.embed.is_none() && cfg.capabilities == [Capability::Embeddings] {
        // Declared with `embeddings` alone: an embedding model, which
        // cannot answer a conversation.
        return Some("an embeddings-only endpoint".into());
    }
    if let Some(window) = cfg.context_window {
        let output = u64::from(req.max_output_tokens.or(cfg.max_output_tokens).unwrap_or(0));
        let needed = input_tokens.saturating_add(output);
        if needed > u64::from(window) {
            return Some(format!("context window {window} < {needed} needed"));
        }
    }
    for class in data_classes {
        if !cfg.data_classes.contains(class) {
            return Some(format!("not certified for {class}"));
        }
    }
    None
}

/// The last user message's text, empty when there is none.
pub fn last_user_message(req: &ModelRequest) -> &str {
    req.messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map_or("", |m| m.content.as_str())
}

/// A request's complexity score in `[0, 1]` and how it was reached.
#[derive(Debug, Clone, PartialEq)]
pub struct Complexity {
    pub score: f64,
    pub tier: usize,
    /// E.g. `score 0.55 = tokens 800/4000 (0.20) + signal "prove" (0.15) + tools (0.20) -> tier 1 (<= 0.60)`.
    pub breakdown: String,
}

/// Score = clamp(tokens / tokens_for_max + the weights of the signals that
/// match the last user message + tools_weight when the request offers
/// tools, 0, 1); tier = the first `i` with `score <= thresholds[i]`, else
/// the last.
pub fn complexity(
    req: &ModelRequest,
    input_tokens: u64,
    tokens_for_max: u64,
    signals: &[(Regex, f64)],
    tools_weight: f64,
    thresholds: &[f64],
) -> Complexity {
    let token_part = input_tokens as f64 / tokens_for_max.max(1) as f64;
    let mut raw = token_part;
    let mut parts = vec![format!(
        "tokens {input_tokens}/{tokens_for_max} ({token_part:.2})"
    )];
    let text = last_user_message(req);
    for (re, w) in signals {
        if re.is_match(text) {
            raw += w;
            parts.push(format!("signal {:?} ({w:.2})", re.as_str()));
        }
    }
    if !req.tools.is_empty() {
        raw += tools_weight;
        parts.push(format!("tools ({tools_weight:.2})"));
    }
    let score = raw.clamp(0.0, 1.0);
    let tier = thresholds
        .iter()
        .position(|t| score <= *t)
        .unwrap_or(thresholds.len());
    let bound = match thresholds.get(tier) {
        Some(t) => format!("<= {t:.2}"),
        None => match thresholds.last() {
            Some(t) => format!("> {t:.2}"),
            None => "only tier".to_string(),
        },
    };
    Complexity {
        score,
        tier,
        breakdown: format!(
            "score {score:.2} = {} -> tier {tier} ({bound})",
            parts.join(" + ")
        ),
    }
}

/// Pick one of `items` (id, weight) at random in proportion to the weights;
/// `None` when every weight is 0.
pub fn weighted_pick(rng: &mut fastrand::Rng, items: &[(usize, u32)]) -> Option<usize> {
    let total: u64 = items.iter().map(|(_, w)| u64::from(*w)).sum();
    if total == 0 {
        return None;
    }
    let mut x = rng.u64(0..total);
    for (id, w) in items {
        let w = u64::from(*w);
        if x < w {
            return Some(*id);
        }
        x -= w;
    }
    None
}

/// Power of two choices: sample two distinct items (id, load) and take the
/// less loaded; ties go to the first sampled. `None` when `items` is empty.
pub fn p2c(rng: &mut fastrand::Rng, items: &[(usize, f64)]) -> Option<(usize, Option<usize>)> {
    match items.len() {
        0 => None,
        1 => Some((items[0].0, None)),
        n => {
            let a = rng.usize(0..n);
            let mut b = rng.usize(0..n - 1);
            if b >= a {
                b += 1;
            }
            let (ia, la) = items[a];
            let (ib, lb) = items[b];
            if lb < la {
                Some((ib, Some(ia)))
            } else {
                Some((ia, Some(ib)))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use baton_models::echo_default;
    use baton_types::{Message, ToolDefinition};

    use super::*;

    fn signals(list: &[(&str, f64)]) -> Vec<(Regex, f64)> {
        list.iter()
            .map(|(p, w)| (Regex::new(p).unwrap(), *w))
            .collect()
    }

    fn tool() -> ToolDefinition {
        ToolDefinition {
            name: "t".into(),
            description: "d".into(),
            parameters: "{}".into(),
        }
    }

    #[test]
    fn input_tokens_are_a_quarter_of_the_characters_plus_four_per_message() {
        let req = ModelRequest::new(vec![Message::system("abcd"), Message::user("héllo")]);
        // ceil(9 / 4) + 2 * 4
        assert_eq!(estimate_input_tokens(&req), 3 + 8);
        assert_eq!(estimate_input_tokens(&ModelRequest::default()), 0);
    }

    #[test]
    fn complexity_adds_tokens_signals_and_tools_and_clamps() {
        let sig = signals(&[("(?i)prove|theorem", 0.3), ("(?i)step by step", 0.2)]);
        let thresholds = [0.3, 0.6];
        // 36 chars + 1 message: ceil(36/4) + 4 = 13 tokens.
        let req = ModelRequest::new(vec![Message::user("please prove this theorem, carefully")]);
        let c = complexity(
            &req,
            estimate_input_tokens(&req),
            100,
            &sig,
            0.25,
            &thresholds,
        );
        assert!((c.score - (0.13 + 0.3)).abs() < 1e-9, "{c:?}");
        assert_eq!(c.tier, 1);
        assert!(
            c.breakdown.contains("tokens 13/100 (0.13)"),
            "{}",
            c.breakdown
        );
        assert!(c.breakdown.contains("signal"), "{}", c.breakdown);
        assert!(
            c.breakdown.ends_with("-> tier 1 (<= 0.60)"),
            "{}",
            c.breakdown
        );

        // Tools push it into the last tier.
        let with_tools = req.clone().with_tools(vec![tool()]);
        let c = complexity(&with_tools, 13, 100, &sig, 0.25, &thresholds);
        assert!((c.score - 0.68).abs() < 1e-9, "{c:?}");
        assert_eq!(c.tier, 2);
        assert!(c.breakdown.contains("tools (0.25)"));
        assert!(c.breakdown.contains("(> 0.60)"), "{}", c.breakdown);

        // A plain short question stays in tier 0; a score at a threshold is in it.
        let easy = ModelRequest::new(vec![Message::user("hi")]);
        let c = complexity(&easy, 30, 100, &sig, 0.25, &thresholds);
        assert_eq!((c.score, c.tier), (0.3, 0));

        // Clamped to [0, 1] both ways.
        let c = complexity(&easy, 10_000, 100, &sig, 0.25, &thresholds);
        assert_eq!((c.score, c.tier), (1.0, 2));
        let neg = signals(&[("hi", -5.0)]);
        let c = complexity(&easy, 10, 100, &neg, 0.25, &thresholds);
        assert_eq!((c.score, c.tier), (0.0, 0));
    }

    #[test]
    fn weighted_picks_follow_the_weights() {
        let mut rng = fastrand::Rng::with_seed(7);
        let items = [(0, 1), (1, 3), (2, 0), (3, 6)];
        let mut counts = [0u32; 4];
        let n = 20_000;
        for _ in 0..n {
            counts[weighted_pick(&mut rng, &items).unwrap()] += 1;
        }
        assert_eq!(counts[2], 0, "zero weight is never picked");
        for (i, expected) in [(0, 0.1), (1, 0.3), (3, 0.6)] {
            let share = f64::from(counts[i]) / f64::from(n);
            assert!(
                (share - expected).abs() < 0.03,
                "endpoint {i}: {share} vs {expected} ({counts:?})"
            );
        }
        assert_eq!(weighted_pick(&mut rng, &[(0, 0), (1, 0)]), None);
        assert_eq!(weighted_pick(&mut rng, &[]), None);
    }

    #[test]
    fn p2c_prefers_the_less_loaded() {
        let mut rng = fastrand::Rng::with_seed(11);
        // Two endpoints: every sample compares both, so the idle one always wins.
        for _ in 0..100 {
            let (pick, other) = p2c(&mut rng, &[(0, 9.0), (1, 2.0)]).unwrap();
            assert_eq!((pick, other), (1, Some(0)));
        }
        // Many: the most loaded is never picked; the least loaded most often.
        let items: Vec<(usize, f64)> = (0..5).map(|i| (i, i as f64)).collect();
        let mut counts = [0u32; 5];
        for _ in 0..10_000 {
            counts[p2c(&mut rng, &items).unwrap().0] += 1;
        }
        assert_eq!(counts[4], 0, "{counts:?}");
        assert!(counts[0] > counts[1] && counts[1] > counts[2] && counts[2] > counts[3]);
        // Expected share of the least loaded: it wins whenever sampled, 2/5.
        assert!(
            (f64::from(counts[0]) / 10_000.0 - 0.4).abs() < 0.03,
            "{counts:?}"
        );
        assert_eq!(p2c(&mut rng, &[(3, 1.0)]), Some((3, None)));
        assert_eq!(p2c(&mut rng, &[]), None);
    }

    #[test]
    fn static_exclusions_name_the_reason() {
        let mut cfg = echo_default();
        let req = ModelRequest::new(vec![Message::user("x")]).with_tools(vec![tool()]);
        let needs = required_capabilities(&req, true);
        assert_eq!(needs, vec![Capability::Tools, Capability::Vision]);
        assert_eq!(
            static_exclusion(&cfg, &req, &needs, 10, &[]).as_deref(),
            Some("lacks capability vision")
        );
        cfg.capabilities.push(Capability::Vision);
        assert_eq!(static_exclusion(&cfg, &req, &needs, 10, &[]), None);
        cfg.context_window = Some(100);
        cfg.max_output_tokens = Some(95);
        assert_eq!(
            static_exclusion(&cfg, &req, &needs, 10, &[]).as_deref(),
            Some("context window 100 < 105 needed")
        );
        cfg.max_output_tokens = None;
        assert_eq!(static_exclusion(&cfg, &req, &needs, 10, &[]), None);
        let pii = vec!["pii".to_string()];
        assert_eq!(
            static_exclusion(&cfg, &req, &needs, 10, &pii).as_deref(),
            Some("not certified for pii")
        );
        cfg.data_classes = pii.clone();
        assert_eq!(static_exclusion(&cfg, &req, &needs, 10, &pii), None);
    }
}
