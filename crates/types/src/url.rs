//! URLs in text a person reads (errors, logs, statuses) without what may be
//! secret in them.

/// `url` without user info, query or fragment: `https://u:k@h/p?key=x#f`
/// shows as `https://h/p`. Works on any string, a malformed URL included,
/// so a value rejected by validation can still be named safely.
pub fn redact_url(url: &str) -> String {
    let cut = url.find(['?', '#']).map_or(url, |end| &url[..end]);
    let (scheme, rest) = match cut.find("://") {
        Some(at) => cut.split_at(at + 3),
        None => ("", cut),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let host = authority
        .rfind('@')
        .map_or(authority, |at| &authority[at + 1..]);
    format!("{scheme}{host}{path}")
}

/// `text` with every occurrence of `url` replaced by its [`redact_url`] form
/// (an error message of a library that quotes the URL it was given).
pub fn redact_url_in(text: &str, url: &str) -> String {
    if url.is_empty() {
        return text.to_owned();
    }
    text.replace(url, &redact_url(url))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_query_and_fragment_are_dropped() {
        for (given, shown) in [
            (
                "https://u:k@h.example/v1?key=s3cret#frag",
                "https://h.example/v1",
            ),
            ("http://127.0.0.1:8080/v1", "http://127.0.0.1:8080/v1"),
            ("https://hooks.example/x?token=t", "https://hooks.example/x"),
            ("user:pass@host/v1", "host/v1"),
            ("api.example.com/v1?k=1", "api.example.com/v1"),
            ("https://a@b@c/p@q", "https://c/p@q"),
            ("", ""),
            ("?only=query", ""),
        ] {
            assert_eq!(redact_url(given), shown, "{given}");
        }
    }

    #[test]
    fn occurrences_in_text_are_replaced() {
        let url = "https://u:k@h/p?key=s";
        let text = format!("error sending request for url ({url}): refused");
        assert_eq!(
            redact_url_in(&text, url),
            "error sending request for url (https://h/p): refused"
        );
        assert_eq!(redact_url_in("no url here", ""), "no url here");
    }
}
