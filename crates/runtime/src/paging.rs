//! Page sizes and page tokens of the listing APIs.

use crate::error::{Error, Result};

/// A page size: 0 means 50; more than 1,000 is refused.
pub(crate) fn page_size(n: u32) -> Result<usize> {
    match n {
        0 => Ok(50),
        n if n > 1000 => Err(Error::InvalidArgument(format!(
            "page_size {n} exceeds the maximum of 1000"
        ))),
        n => Ok(n as usize),
    }
}

/// A page token this server issued (empty: the first page).
pub(crate) fn page_token<T>(
    token: Option<&str>,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>> {
    match token {
        None | Some("") => Ok(None),
        Some(t) => parse(t).map(Some).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "page_token {t:?} is not a token this server issued"
            ))
        }),
    }
}
