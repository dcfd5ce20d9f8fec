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
            RouteErrorKind::SchemaViolation => TurnFailureCode::SchemaViolation,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_code() {
        use RouteErrorKind::*;
        let codes: std::collections::HashSet<_> = [
            UnknownRoute,
            NoEligibleEndpoint,
            BudgetExhausted,
            DeadlineExceeded,
            ContentPolicy,
            ContextLength,
            InvalidRequest,
            Exhausted,
            Cancelled,
            SchemaViolation,
        ]
        .into_iter()
        .map(|kind| {
            RouteError {
                kind,
                message: String::new(),
                attempts: 0,
                endpoint: None,
                cost_usd: None,
            }
            .failure_code()
        })
        .collect();
        assert_eq!(codes.len(), 10);
        assert!(!codes.contains(&TurnFailureCode::Unspecified));
    }
}
