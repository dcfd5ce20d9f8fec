//! Reversible pseudonymisation: detected values replaced with stable
//! placeholders (`<EMAIL_1>`), and placeholders in a model's answer put
//! back.
//!
//! Placeholders are numbered per tag in order of first appearance, so the
//! same conversation pseudonymised again (the next model call sends the
//! whole history) gets the same placeholders, and the same value always
//! gets the same one: the model can refer to "<EMAIL_1>" across turns.

use std::collections::HashMap;

use crate::detect::Finding;

/// The placeholders of one conversation and the values behind them.
#[derive(Default, Clone)]
pub struct Pseudonyms {
    by_value: HashMap<(String, String), String>,
    by_placeholder: HashMap<String, String>,
    counters: HashMap<String, u32>,
}

impl std::fmt::Debug for Pseudonyms {
    /// Placeholders only, never the values.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.by_placeholder.keys().collect();
        names.sort();
        f.debug_struct("Pseudonyms")
            .field("placeholders", &names)
            .finish()
    }
}

impl Pseudonyms {
    pub fn is_empty(&self) -> bool {
        self.by_placeholder.is_empty()
    }

    pub fn len(&self) -> usize {
        self.by_placeholder.len()
    }

    /// The placeholder of `value` found by a detector of `tag`, made on
    /// first sight.
    pub fn placeholder(&mut self, tag: &str, value: &str) -> String {
        let key = (tag.to_string(), value.to_string());
        if let Some(p) = self.by_value.get(&key) {
            return p.clone();
        }
        let n = self.counters.entry(tag.to_string()).or_insert(0);
        *n += 1;
        let p = format!("<{tag}_{n}>");
        self.by_placeholder.insert(p.clone(), value.to_string());
        self.by_value.insert(key, p.clone());
        p
    }

    /// `text` with each of `findings` (positions into `text`, in order,
    /// without overlaps, as [`DetectorSet::detect`](crate::DetectorSet::detect)
    /// returns them) replaced by its placeholder.
    pub fn redact(&mut self, text: &str, findings: &[Finding]) -> String {
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for f in findings {
            if f.start < at || f.end > text.len() || !text.is_char_boundary(f.start) {
                continue;
            }
            out.push_str(&text[at..f.start]);
            out.push_str(&self.placeholder(&f.kind.tag(), &text[f.start..f.end]));
            at = f.end;
        }
        out.push_str(&text[at..]);
        out
    }

    /// `text` with every placeholder of this conversation replaced by its
    /// value; anything else that looks like a placeholder is left as is.
    pub fn restore(&self, text: &str) -> String {
        if self.by_placeholder.is_empty() || !text.contains('<') {
            return text.to_string();
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(open) = rest.find('<') {
            out.push_str(&rest[..open]);
            let tail = &rest[open..];
            match tail.find('>').map(|close| &tail[..=close]) {
                Some(candidate) if self.by_placeholder.contains_key(candidate) => {
                    out.push_str(&self.by_placeholder[candidate]);
                    rest = &tail[candidate.len()..];
                }
                _ => {
                    out.push('<');
                    rest = &tail[1..];
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// A restorer for an answer that arrives in pieces.
    pub fn streaming(self: &std::sync::Arc<Self>) -> StreamRestorer {
        StreamRestorer {
            names: self.clone(),
            held: String::new(),
        }
    }
}

/// The longest placeholder a stream holds back for: `<` + tag + `_` + n + `>`.
const MAX_PLACEHOLDER: usize = 48;

/// Restores placeholders in a streamed answer: a piece that ends inside
/// what may be a placeholder (`… <EMA`) is held back until the rest comes.
#[derive(Debug)]
pub struct StreamRestorer {
    names: std::sync::Arc<Pseudonyms>,
    held: String,
}

impl StreamRestorer {
    /// The restored text that can be released after `piece`.
    pub fn push(&mut self, piece: &str) -> String {
        self.held.push_str(piece);
        // Hold back from the last '<' that has no '>' after it, if it is
        // recent enough to still become a placeholder.
        let cut = match self.held.rfind('<') {
            Some(i) if !self.held[i..].contains('>') && self.held.len() - i < MAX_PLACEHOLDER => i,
            _ => self.held.len(),
        };
        let ready: String = self.held.drain(..cut).collect();
        self.names.restore(&ready)
    }

    /// Whatever is still held, restored (the end of the answer).
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.held);
        self.names.restore(&rest)
    }

    /// Drop what is held (the attempt that streamed it failed).
    pub fn reset(&mut self) {
        self.held.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{Builtin, DetectorSet};

    #[test]
    fn the_same_value_gets_the_same_placeholder_and_comes_back() {
        let set = DetectorSet::new(&[Builtin::Email, Builtin::Phone], &[], "US").unwrap();
        let mut p = Pseudonyms::default();
        let first = "mail jane@example.com or bob@example.org";
        let second = "again: jane@example.com, call +1 201 555 0123";
        let r1 = p.redact(first, &set.detect(first));
        let r2 = p.redact(second, &set.detect(second));
        assert_eq!(r1, "mail <EMAIL_1> or <EMAIL_2>");
        assert_eq!(r2, "again: <EMAIL_1>, call <PHONE_1>");
        assert_eq!(p.restore(&r1), first);
        assert_eq!(p.restore(&r2), second);
        // Unknown placeholders and stray brackets are left alone.
        assert_eq!(p.restore("<EMAIL_9> a < b > c"), "<EMAIL_9> a < b > c");
        assert!(!format!("{p:?}").contains("jane"));
        // Redacting the same conversation again numbers it the same way.
        let mut q = Pseudonyms::default();
        assert_eq!(q.redact(first, &set.detect(first)), r1);
    }

    #[test]
    fn a_stream_holds_back_a_split_placeholder() {
        let mut p = Pseudonyms::default();
        p.placeholder("EMAIL", "jane@example.com");
        let p = std::sync::Arc::new(p);
        let mut s = p.streaming();
        let mut out = String::new();
        for piece in [
            "Write to <EM",
            "AIL_1",
            "> today",
            " (a < b)",
            " <EMAIL_2>",
            " <",
        ] {
            out.push_str(&s.push(piece));
        }
        out.push_str(&s.finish());
        assert_eq!(out, "Write to jane@example.com today (a < b) <EMAIL_2> <");
    }
}
