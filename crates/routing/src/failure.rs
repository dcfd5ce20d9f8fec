//! How a failed routed call ends a turn: the one mapping from
//! [`RouteErrorKind`] to the journaled [`TurnFailureCode`].

use baton_types::TurnFailureCode;

use crate::{RouteError, RouteErrorKind};

impl RouteError {
    /// The turn failure code this error is journaled with.
    pub fn failure_code(&self) -> TurnFailureCode {
        match self.kind {
            RouteErrorKind::UnknownRoute => TurnFailureCode::UnknownRoute,
            RouteErrorKind::NoEligibleEndpoint => TurnFailureCode::NoEligibleEndpoint,
            RouteErrorKind::BudgetExhausted => TurnFailureCode::BudgetExhausted,
            RouteErrorKind::DeadlineExceeded => TurnFailureCode::DeadlineExceeded,
            RouteErrorKind::ContentPolicy => TurnFailureCode::ContentPolicy,
            RouteErrorKind::ContextLength => TurnFailureCode::ContextLength,
            RouteErrorKind::InvalidRequest => TurnFailureCode::InvalidRequest,
            RouteErrorKind::Exhausted => TurnFailureCode::ModelError,
            RouteErrorKind::Cancelled => TurnFailureCode::Cancelled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_codes_match_the_labels() {
        use RouteErrorKind::*;
        for kind in [
            UnknownRoute,
            NoEligibleEndpoint,
            BudgetExhausted,
            DeadlineExceeded,
            ContentPolicy,
            ContextLength,
            InvalidRequest,
            Exhausted,
            Cancelled,
        ] {
            let e = RouteError {
                kind,
                message: String::new(),
                attempts: 0,
                endpoint: None,
                cost_usd: None,
            };
            assert_eq!(e.failure_code().as_str(), e.label());
        }
    }
}
