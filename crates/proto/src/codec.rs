//! The one table per format between domain events ([`baton_types::EventKind`])
//! and their protobuf messages.
//!
//! Each format (the `baton.v1` API here, the `baton.journal.v1` journal in
//! `baton-store`) declares its mapping once with [`event_codec!`]: a line per
//! event kind naming the domain variant, the wire message and the fields. The
//! macro writes both directions from that line, so a new event kind (or a
//! new field) is added in one place per format, and the compiler refuses a
//! table that forgets a variant or a domain field.
//!
//! A field converts through the format's field trait (`Field<W>`: `enc`
//! from the domain value, `dec` back, given the format's context), found by
//! the field's domain type and the wire field's type. A field whose wire
//! shape is not one wire field of the same name (flattened, renamed, built
//! from other fields) names a module with `via`: `module::enc(value, &mut
//! wire, cx)` sets the wire fields and `module::dec(&mut wire, cx)` takes
//! them back. Fields are encoded in table order, so a `via` encoder may read
//! wire fields set before it.

/// Declares `encode` and `decode` between [`baton_types::EventKind`] and a
/// protobuf `oneof` (see the module docs).
///
/// ```text
/// event_codec! {
///     field = Field, wire = pb, kind = Kind, error = Error,
///     encode = encode_kind(Enc<'_>), decode = decode_kind(Dec<'_>),
///     {
///         TurnAccepted => TurnAccepted { turn, message, review },
///         ToolResult => ToolResult { turn, call_id, name, output via tool_output, is_error, latency_ms },
///     }
/// }
/// ```
#[macro_export]
macro_rules! event_codec {
    (
        field = $Field:ident,
        wire = $pb:ident,
        kind = $Kind:ident,
        error = $Err:ty,
        encode = $enc:ident($EncCx:ty),
        decode = $dec:ident($DecCx:ty),
        {
            $(
                $V:ident => $W:ident { $( $f:ident $(via $via:ident)? ),* $(,)? }
            ),* $(,)?
        }
    ) => {
        /// The wire form of a domain event (one arm per kind, from the table).
        #[allow(clippy::field_reassign_with_default, unused_variables)]
        fn $enc(kind: &::baton_types::EventKind, cx: &mut $EncCx) -> $Kind {
            match kind {
                $(
                    ::baton_types::EventKind::$V { $($f),* } => {
                        let mut w = <$pb::$W>::default();
                        $( $crate::__codec_enc!(w, cx, $Field, $f $(, $via)?); )*
                        $Kind::$W(w)
                    }
                )*
            }
        }

        /// The domain event of a wire form (one arm per kind, from the table).
        #[allow(unused_mut, unused_variables)]
        fn $dec(kind: $Kind, cx: &mut $DecCx) -> ::std::result::Result<::baton_types::EventKind, $Err> {
            Ok(match kind {
                $(
                    $Kind::$W(mut w) => {
                        $( let $f = $crate::__codec_dec!(w, cx, $Field, $f $(, $via)?); )*
                        ::baton_types::EventKind::$V { $($f),* }
                    }
                )*
            })
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __codec_enc {
    ($w:ident, $cx:ident, $Field:ident, $f:ident) => {
        $w.$f = $Field::enc($f, $cx)
    };
    ($w:ident, $cx:ident, $Field:ident, $f:ident, $via:ident) => {
        $via::enc($f, &mut $w, $cx)
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __codec_dec {
    ($w:ident, $cx:ident, $Field:ident, $f:ident) => {
        $Field::dec(::std::mem::take(&mut $w.$f), $cx)?
    };
    ($w:ident, $cx:ident, $Field:ident, $f:ident, $via:ident) => {
        $via::dec(&mut $w, $cx)?
    };
}

/// The `PolicyEvaluated.hits` field of a wire format (`wire` = the prost
/// module) whose `PolicyHit` and `PolicyMatch` messages mirror
/// [`baton_types::PolicyHit`] (both the API and the journal do). An unknown
/// outcome is `malformed`.
#[macro_export]
macro_rules! policy_hits {
    (
        field = $Field:ident, wire = $pb:ident, enc = $Enc:ty, dec = $Dec:ty, error = $Err:ty,
        malformed = |$cx:ident, $reason:ident| $err:expr $(,)?
    ) => {
        impl $Field<Vec<$pb::PolicyHit>> for Vec<::baton_types::PolicyHit> {
            fn enc(&self, _: &mut $Enc) -> Vec<$pb::PolicyHit> {
                self.iter()
                    .map(|h| $pb::PolicyHit {
                        policy: h.policy.clone(),
                        rule: h.rule.clone(),
                        outcome: h.outcome.as_str().to_string(),
                        message: h.message.clone(),
                        matches: h
                            .matches
                            .iter()
                            .map(|m| $pb::PolicyMatch {
                                kind: m.kind.clone(),
                                start: m.start,
                                end: m.end,
                            })
                            .collect(),
                    })
                    .collect()
            }
            #[allow(unused_variables)]
            fn dec(w: Vec<$pb::PolicyHit>, $cx: &mut $Dec) -> ::std::result::Result<Self, $Err> {
                w.into_iter()
                    .map(|h| {
                        let outcome =
                            ::baton_types::PolicyOutcome::parse(&h.outcome).map_err(|e| {
                                let $reason = format!("{e} (written by a newer version?)");
                                $err
                            })?;
                        Ok(::baton_types::PolicyHit {
                            policy: h.policy,
                            rule: h.rule,
                            outcome,
                            message: h.message,
                            matches: h
                                .matches
                                .into_iter()
                                .map(|m| ::baton_types::PolicyMatch {
                                    kind: m.kind,
                                    start: m.start,
                                    end: m.end,
                                })
                                .collect(),
                        })
                    })
                    .collect()
            }
        }
    };
}

/// The `QualityScored.scores` field of a wire format (`wire` = the prost
/// module) whose `QualityScore` message mirrors
/// [`baton_types::QualityScore`] (both the API and the journal do).
#[macro_export]
macro_rules! quality_scores {
    (field = $Field:ident, wire = $pb:ident, enc = $Enc:ty, dec = $Dec:ty, error = $Err:ty $(,)?) => {
        impl $Field<Vec<$pb::QualityScore>> for Vec<::baton_types::QualityScore> {
            fn enc(&self, _: &mut $Enc) -> Vec<$pb::QualityScore> {
                self.iter()
                    .map(|s| $pb::QualityScore {
                        criterion: s.criterion.clone(),
                        score: s.score,
                        reason: s.reason.clone(),
                    })
                    .collect()
            }
            fn dec(w: Vec<$pb::QualityScore>, _: &mut $Dec) -> ::std::result::Result<Self, $Err> {
                Ok(w.into_iter()
                    .map(|s| ::baton_types::QualityScore {
                        criterion: s.criterion,
                        score: s.score,
                        reason: s.reason,
                    })
                    .collect())
            }
        }
    };
}

/// The `via` modules `routing_decision` and `attempt_failure`, for a format
/// whose `RoutingDecided` and `AttemptFailed` messages hold the fields of
/// [`baton_types::RoutingDecision`] and [`baton_types::AttemptFailure`]
/// flattened (both the API and the journal do).
#[macro_export]
macro_rules! flattened_routing {
    (wire = $pb:ident, enc = $Enc:ty, dec = $Dec:ty, error = $Err:ty) => {
        /// `RoutingDecided.decision`: flattened into the wire message.
        mod routing_decision {
            use super::*;
            use ::baton_types::{RouteCandidate, RoutingDecision};

            pub(super) fn enc(d: &RoutingDecision, w: &mut $pb::RoutingDecided, _: &mut $Enc) {
                w.route = d.route.clone();
                w.strategy = d.strategy.clone();
                w.candidates = d
                    .candidates
                    .iter()
                    .map(|c| $pb::RouteCandidate {
                        endpoint: c.endpoint.clone(),
                        eligible: c.eligible,
                        score: c.score,
                        note: c.note.clone(),
                    })
                    .collect();
                w.chosen = d.chosen.clone();
                w.rule = d.rule.clone();
                w.reason = d.reason.clone();
                w.attempt = d.attempt;
            }

            pub(super) fn dec(
                w: &mut $pb::RoutingDecided,
                _: &mut $Dec,
            ) -> ::std::result::Result<RoutingDecision, $Err> {
                let w = ::std::mem::take(w);
                Ok(RoutingDecision {
                    route: w.route,
                    strategy: w.strategy,
                    candidates: w
                        .candidates
                        .into_iter()
                        .map(|c| RouteCandidate {
                            endpoint: c.endpoint,
                            eligible: c.eligible,
                            score: c.score,
                            note: c.note,
                        })
                        .collect(),
                    chosen: w.chosen,
                    rule: w.rule,
                    reason: w.reason,
                    attempt: w.attempt,
                })
            }
        }

        /// `AttemptFailed.failure`: flattened into the wire message.
        mod attempt_failure {
            use super::*;
            use ::baton_types::AttemptFailure;

            pub(super) fn enc(f: &AttemptFailure, w: &mut $pb::AttemptFailed, _: &mut $Enc) {
                w.endpoint = f.endpoint.clone();
                w.attempt = f.attempt;
                w.kind = f.kind.clone();
                w.message = f.message.clone();
                w.retry_in_ms = f.retry_in_ms;
                w.streamed = f.streamed;
            }

            pub(super) fn dec(
                w: &mut $pb::AttemptFailed,
                _: &mut $Dec,
            ) -> ::std::result::Result<AttemptFailure, $Err> {
                let w = ::std::mem::take(w);
                Ok(AttemptFailure {
                    endpoint: w.endpoint,
                    attempt: w.attempt,
                    kind: w.kind,
                    message: w.message,
                    retry_in_ms: w.retry_in_ms,
                    streamed: w.streamed,
                })
            }
        }
    };
}

/// The field conversions every format shares, as impls of the format's
/// field trait (see [`event_codec!`]): plain values as themselves, the
/// vocabulary enums, `GateId`s and finish reasons as their wire strings, an
/// optional string as a string that is empty for `None`. `malformed` turns
/// a problem (text) into the format's error, given the decode context.
#[macro_export]
macro_rules! common_fields {
    (
        field = $Field:ident, enc = $Enc:ty, dec = $Dec:ty, error = $Err:ty,
        malformed = |$cx:ident, $reason:ident| $err:expr $(,)?
    ) => {
        $crate::common_fields!(@same $Field, $Enc, $Dec, $Err; u64, u32, bool, String, Option<f64>, Vec<String>);
        $crate::common_fields!(@wire $Field, $Enc, $Dec, $Err, |$cx, $reason| $err;
            ::baton_types::GateKind, ::baton_types::GatePoint, ::baton_types::TimeoutAction,
            ::baton_types::Decision, ::baton_types::ModelCallReason, ::baton_types::TurnFailureCode,
            ::baton_types::PolicyStage, ::baton_types::OutputResume);

        impl $Field<String> for Option<String> {
            fn enc(&self, _: &mut $Enc) -> String {
                self.clone().unwrap_or_default()
            }
            fn dec(w: String, _: &mut $Dec) -> ::std::result::Result<Self, $Err> {
                Ok((!w.is_empty()).then_some(w))
            }
        }

        impl $Field<String> for ::baton_types::GateId {
            fn enc(&self, _: &mut $Enc) -> String {
                self.to_string()
            }
            #[allow(unused_variables)]
            fn dec(w: String, $cx: &mut $Dec) -> ::std::result::Result<Self, $Err> {
                w.parse().map_err(|e: ::baton_types::ParseIdError| {
                    let $reason = e.to_string();
                    $err
                })
            }
        }

        impl $Field<String> for ::baton_types::FinishReason {
            fn enc(&self, _: &mut $Enc) -> String {
                self.as_str().to_string()
            }
            fn dec(w: String, _: &mut $Dec) -> ::std::result::Result<Self, $Err> {
                Ok(::baton_types::FinishReason::from_provider(&w))
            }
        }
    };
    (@same $Field:ident, $Enc:ty, $Dec:ty, $Err:ty; $($t:ty),*) => {$(
        impl $Field<$t> for $t {
            fn enc(&self, _: &mut $Enc) -> $t {
                self.clone()
            }
            fn dec(w: $t, _: &mut $Dec) -> ::std::result::Result<Self, $Err> {
                Ok(w)
            }
        }
    )*};
    (@wire $Field:ident, $Enc:ty, $Dec:ty, $Err:ty, |$cx:ident, $reason:ident| $err:expr; $($t:ty),*) => {$(
        impl $Field<String> for $t {
            fn enc(&self, _: &mut $Enc) -> String {
                self.as_str().to_string()
            }
            #[allow(unused_variables)]
            fn dec(w: String, $cx: &mut $Dec) -> ::std::result::Result<Self, $Err> {
                <$t>::parse(&w).map_err(|e| {
                    let $reason = format!("{e} (written by a newer version?)");
                    $err
                })
            }
        }
    )*};
}
