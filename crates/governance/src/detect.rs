//! Detectors: find personal data, payment data and secrets in text.
//!
//! Built-ins with a literal to jump to (email's `@`, an SSN's `-`) run as
//! regexes of their own; every other pattern, configured ones included, is
//! in one `RegexSet`, so a text with nothing in it costs one pass over
//! them, and only the patterns that matched are then run for positions.
//! Each candidate is confirmed by its own check (an IBAN's mod-97 checksum via `iban_validate`, a card's Luhn
//! digit and issuer prefix, a phone number parsed and validated by
//! `phonenumber` with libphonenumber's metadata, an IP address parsed by
//! the standard library, a token's Shannon entropy).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use regex::{Regex, RegexSet};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A built-in detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Builtin {
    /// Secrets and API keys: common key formats and high-entropy tokens.
    Secret,
    Email,
    /// An IBAN whose mod-97 checksum holds.
    Iban,
    /// A payment card number: 13 to 19 digits, an issuer prefix, Luhn.
    PaymentCard,
    /// A US Social Security number (`123-45-6789`, valid area/group/serial).
    UsSsn,
    /// A UK National Insurance number (`QQ 12 34 56 C`).
    UkNino,
    /// An IPv4 or IPv6 address.
    IpAddress,
    /// A phone number valid for its country (international form, or the
    /// set's default region).
    Phone,
}

impl Builtin {
    /// Every built-in, in the order overlapping matches are preferred.
    pub const ALL: [Builtin; 8] = [
        Builtin::Secret,
        Builtin::Email,
        Builtin::Iban,
        Builtin::PaymentCard,
        Builtin::UsSsn,
        Builtin::UkNino,
        Builtin::IpAddress,
        Builtin::Phone,
    ];

    /// The name in config and in journal records.
    pub fn as_str(self) -> &'static str {
        match self {
            Builtin::Secret => "secret",
            Builtin::Email => "email",
            Builtin::Iban => "iban",
            Builtin::PaymentCard => "payment_card",
            Builtin::UsSsn => "us_ssn",
            Builtin::UkNino => "uk_nino",
            Builtin::IpAddress => "ip_address",
            Builtin::Phone => "phone",
        }
    }

    /// The tag of its placeholders (`<EMAIL_1>`).
    pub fn tag(self) -> &'static str {
        match self {
            Builtin::Secret => "SECRET",
            Builtin::Email => "EMAIL",
            Builtin::Iban => "IBAN",
            Builtin::PaymentCard => "CARD",
            Builtin::UsSsn => "SSN",
            Builtin::UkNino => "NINO",
            Builtin::IpAddress => "IP",
            Builtin::Phone => "PHONE",
        }
    }

    /// The data class a hit adds to a call (routing then picks only
    /// endpoints certified for it).
    pub fn data_class(self) -> &'static str {
        match self {
            Builtin::Secret => "secret",
            Builtin::Iban | Builtin::PaymentCard => "financial",
            Builtin::Email
            | Builtin::UsSsn
            | Builtin::UkNino
            | Builtin::IpAddress
            | Builtin::Phone => "pii",
        }
    }

    pub fn parse(s: &str) -> Option<Builtin> {
        Builtin::ALL.into_iter().find(|b| b.as_str() == s)
    }

    /// The candidate pattern; each candidate is confirmed by [`check`](Self::check).
    fn pattern(self) -> &'static str {
        match self {
            Builtin::Secret => concat!(
                r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
                r"|(?-u:\b)AKIA[0-9A-Z]{16}(?-u:\b)",
                r"|(?-u:\b)gh[pousr]_[A-Za-z0-9]{36,}(?-u:\b)",
                r"|(?-u:\b)github_pat_[A-Za-z0-9_]{40,}(?-u:\b)",
                r"|(?-u:\b)sk-(?:ant-|proj-)?[A-Za-z0-9_-]{20,}",
                r"|(?-u:\b)(?:sk|rk|pk)_live_[A-Za-z0-9]{20,}(?-u:\b)",
                r"|(?-u:\b)xox[abposr]-[A-Za-z0-9-]{10,}(?-u:\b)",
                r"|(?-u:\b)AIza[0-9A-Za-z_-]{35}(?-u:\b)",
                r"|(?-u:\b)bk_[0-9a-f]{8}_[A-Za-z0-9_-]{20,}",
                r"|(?-u:\b)eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
                r"|[A-Za-z0-9+/_-]{32,}={0,2}",
            ),
            Builtin::Email => {
                r"(?i)(?-u:\b)[a-z0-9][a-z0-9._%+-]{0,63}@[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*\.[a-z]{2,24}(?-u:\b)"
            }
            Builtin::Iban => r"(?-u:\b)[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}(?-u:\b)",
            Builtin::PaymentCard => r"(?-u:\b)[0-9](?:[ -]?[0-9]){12,18}(?-u:\b)",
            Builtin::UsSsn => r"(?-u:\b)[0-9]{3}-[0-9]{2}-[0-9]{4}(?-u:\b)",
            Builtin::UkNino => {
                r"(?i)(?-u:\b)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D](?-u:\b)"
            }
            Builtin::IpAddress => {
                r"(?-u:\b)(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?-u:\b)|(?i)(?:[0-9a-f]{0,4}:){2,7}[0-9a-f]{0,4}"
            }
            Builtin::Phone => {
                r"(?:\+|(?-u:\b)00|\(|(?-u:\b))[0-9](?:[ .()-]{0,2}[0-9]){6,16}(?-u:\b)"
            }
        }
    }

    /// Whether it runs on its own rather than in the detector set's
    /// `RegexSet` pass: patterns with a literal the regex engine's
    /// prefilter jumps to (`@`, `-`) scan 4 KiB in about a microsecond
    /// alone, which no set can; the others cost about as much alone as
    /// all of them together in one set (measured in the bench).
    fn alone(self) -> bool {
        matches!(self, Builtin::Email | Builtin::UsSsn)
    }

    /// How much of a candidate really is one (its confirmed length), if any.
    fn check(self, s: &str, region: phonenumber::country::Id) -> Option<usize> {
        let whole = |ok: bool| ok.then_some(s.len());
        match self {
            Builtin::Secret => whole(is_secret(s)),
            Builtin::Email => Some(s.len()),
            Builtin::Iban => iban_prefix(s),
            Builtin::PaymentCard => whole(is_card(s)),
            Builtin::UsSsn => whole(is_ssn(s)),
            Builtin::UkNino => whole(is_nino(s)),
            Builtin::IpAddress => whole(Ipv4Addr::from_str(s).is_ok() || is_ipv6(s)),
            Builtin::Phone => whole(is_phone(s, region)),
        }
    }
}

/// The longest prefix of a candidate, ending at a group boundary, that is
/// an IBAN with a valid checksum: a candidate may run on into a following
/// capitalised word (`… 0130 00 BIC`).
fn iban_prefix(s: &str) -> Option<usize> {
    let mut ends: Vec<usize> = s.match_indices(' ').map(|(i, _)| i).collect();
    ends.push(s.len());
    ends.into_iter().rev().find(|&end| {
        let compact: String = s[..end].chars().filter(|c| *c != ' ').collect();
        compact.len() >= 15 && iban::Iban::from_str(&compact).is_ok()
    })
}

/// Key formats recognised outright.
static KNOWN_KEY: std::sync::LazyLock<Option<Regex>> = std::sync::LazyLock::new(|| {
    Regex::new(concat!(
        r"^(?:-----BEGIN|AKIA[0-9A-Z]{16}$|gh[pousr]_|github_pat_|sk-|(?:sk|rk|pk)_live_",
        r"|xox[abposr]-|AIza|bk_[0-9a-f]{8}_|eyJ[A-Za-z0-9_-]+\.eyJ)"
    ))
    .ok()
});

/// Known key formats match outright; a long token only when it looks
/// random: more than 4.2 bits of entropy per character (more than any hex
/// string can have), with digits, upper and lower case letters.
fn is_secret(s: &str) -> bool {
    if KNOWN_KEY.as_ref().is_some_and(|k| k.is_match(s)) {
        return true;
    }
    let has_digit = s.bytes().any(|b| b.is_ascii_digit());
    let has_upper = s.bytes().any(|b| b.is_ascii_uppercase());
    let has_lower = s.bytes().any(|b| b.is_ascii_lowercase());
    has_digit && has_upper && has_lower && shannon_bits(s) >= 4.2
}

/// Shannon entropy of `s` in bits per byte.
pub fn shannon_bits(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[usize::from(b)] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = f64::from(*c) / n;
            -p * p.log2()
        })
        .sum()
}

/// 13–19 digits with a known issuer prefix and a valid Luhn check digit.
fn is_card(s: &str) -> bool {
    let digits: Vec<u8> = s
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| b - b'0')
        .collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let prefix = |n: usize| {
        digits[..n]
            .iter()
            .fold(0u32, |acc, d| acc * 10 + u32::from(*d))
    };
    let issuer = digits[0] == 4 // Visa
        || (51..=55).contains(&prefix(2)) || (2221..=2720).contains(&prefix(4)) // Mastercard
        || matches!(prefix(2), 34 | 37) // Amex
        || prefix(4) == 6011 || prefix(2) == 65 || (644..=649).contains(&prefix(3)) // Discover
        || (3528..=3589).contains(&prefix(4)) // JCB
        || matches!(prefix(2), 36 | 38) || (300..=305).contains(&prefix(3)) // Diners
        || matches!(prefix(2), 50 | 56..=69) // Maestro and others
        || prefix(2) == 62; // UnionPay
    issuer && luhn(&digits)
}

/// The Luhn check over `digits`, check digit last.
pub fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(*d);
            if !i.is_multiple_of(2) {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Area 001–899 but not 666, group not 00, serial not 0000.
fn is_ssn(s: &str) -> bool {
    let mut parts = s.split('-');
    let (Some(a), Some(g), Some(n)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let (Ok(a), Ok(g), Ok(n)) = (a.parse::<u16>(), g.parse::<u16>(), n.parse::<u16>()) else {
        return false;
    };
    a != 0 && a != 666 && a < 900 && g != 0 && n != 0
}

/// Not one of the prefixes HMRC never issues.
fn is_nino(s: &str) -> bool {
    let prefix: String = s.chars().take(2).collect::<String>().to_ascii_uppercase();
    !matches!(
        prefix.as_str(),
        "BG" | "GB" | "NK" | "KN" | "TN" | "NT" | "ZZ"
    )
}

/// A valid IPv6 address with at least three groups, or two with one of
/// four digits (`fe80::1`): `std::fmt` (`d::f`) is not one.
fn is_ipv6(s: &str) -> bool {
    let groups: Vec<&str> = s.split(':').filter(|g| !g.is_empty()).collect();
    (groups.len() >= 3 || (groups.len() == 2 && groups.iter().any(|g| g.len() == 4)))
        && Ipv6Addr::from_str(s).is_ok()
}

/// A number valid for its country: in international form (`+44 …`,
/// `0044 …`) for any country, otherwise for `region`.
fn is_phone(s: &str, region: phonenumber::country::Id) -> bool {
    let digits = s.bytes().filter(u8::is_ascii_digit).count();
    if !(7..=15).contains(&digits) {
        return false;
    }
    let s = match s.strip_prefix("00") {
        Some(rest) => std::borrow::Cow::Owned(format!("+{rest}")),
        None => std::borrow::Cow::Borrowed(s),
    };
    let default = if s.starts_with('+') {
        None
    } else {
        Some(region)
    };
    phonenumber::parse(default, s.as_ref()).is_ok_and(|n| phonenumber::is_valid(&n))
}

/// What a [`DetectorSet`] looks for: built-ins, and named custom patterns.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Kind {
    Builtin(Builtin),
    /// A configured regex or keyword list, by its name.
    Custom(String),
}

impl Kind {
    pub fn as_str(&self) -> &str {
        match self {
            Kind::Builtin(b) => b.as_str(),
            Kind::Custom(name) => name,
        }
    }

    /// The tag of its placeholders: `EMAIL`, or the custom name upper-cased.
    pub fn tag(&self) -> String {
        match self {
            Kind::Builtin(b) => b.tag().to_string(),
            Kind::Custom(name) => name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_uppercase()
                    } else {
                        '_'
                    }
                })
                .collect(),
        }
    }
}

/// One hit: what was found and where (byte offsets into the text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub kind: Kind,
    pub start: usize,
    pub end: usize,
}

/// A custom pattern: a regex, or a keyword list (whole words, any case).
#[derive(Debug, Clone)]
pub struct CustomPattern {
    pub name: String,
    pub regex: String,
}

impl CustomPattern {
    /// Whole-word, case-insensitive matching of any of `words`.
    pub fn keywords(name: impl Into<String>, words: &[String]) -> Self {
        let alts: Vec<String> = words.iter().map(|w| regex::escape(w.trim())).collect();
        CustomPattern {
            name: name.into(),
            regex: format!(r"(?i)(?-u:\b)(?:{})(?-u:\b)", alts.join("|")),
        }
    }
}

struct Pattern {
    kind: Kind,
    builtin: Option<Builtin>,
    regex: Regex,
}

/// A compiled set of detectors. Cheap to share (`Arc`); `detect` takes `&self`.
pub struct DetectorSet {
    /// One pass over the patterns that run as a set (see [`Builtin::alone`]),
    /// telling which of them match at all.
    set: Option<RegexSet>,
    /// Indexes into `patterns` of the set's members, in set order.
    in_set: Vec<usize>,
    /// Indexes of the patterns that always run on their own.
    alone: Vec<usize>,
    /// Built-ins first (in preference order), then custom patterns.
    patterns: Vec<Pattern>,
    region: phonenumber::country::Id,
}

impl std::fmt::Debug for DetectorSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DetectorSet")
            .field(
                "kinds",
                &self
                    .patterns
                    .iter()
                    .map(|p| p.kind.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Most bytes a pattern's compiled program may take (a guard against a
/// configured regex that would blow up).
const REGEX_SIZE_LIMIT: usize = 4 << 20;

impl DetectorSet {
    /// Compile `builtins` and `custom` patterns; phone numbers without an
    /// international prefix are read as numbers of `region` (ISO 3166
    /// alpha-2, e.g. `US`). An invalid custom regex or region is an error
    /// naming it.
    pub fn new(builtins: &[Builtin], custom: &[CustomPattern], region: &str) -> Result<Self> {
        let region = phonenumber::country::Id::from_str(&region.to_ascii_uppercase())
            .map_err(|_| Error::Invalid(format!("unknown phone region {region:?}")))?;
        let mut builtins = builtins.to_vec();
        builtins.sort();
        builtins.dedup();
        let mut patterns = Vec::new();
        for b in builtins {
            patterns.push(Pattern {
                kind: Kind::Builtin(b),
                builtin: Some(b),
                regex: Regex::new(b.pattern()).map_err(|e| Error::Invalid(e.to_string()))?,
            });
        }
        for c in custom {
            let regex = regex::RegexBuilder::new(&c.regex)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| Error::Invalid(format!("pattern {:?}: {e}", c.name)))?;
            patterns.push(Pattern {
                kind: Kind::Custom(c.name.clone()),
                builtin: None,
                regex,
            });
        }
        let (alone, in_set): (Vec<usize>, Vec<usize>) =
            (0..patterns.len()).partition(|i| patterns[*i].builtin.is_some_and(Builtin::alone));
        let set = if in_set.len() > 1 {
            Some(
                regex::RegexSetBuilder::new(in_set.iter().map(|i| patterns[*i].regex.as_str()))
                    .size_limit(REGEX_SIZE_LIMIT * 4)
                    .build()
                    .map_err(|e| Error::Invalid(e.to_string()))?,
            )
        } else {
            None
        };
        Ok(DetectorSet {
            set,
            in_set,
            alone,
            patterns,
            region,
        })
    }

    /// Every built-in, no custom patterns.
    pub fn builtins(region: &str) -> Result<Self> {
        Self::new(&Builtin::ALL, &[], region)
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Confirmed hits in `text`, in order of position, without overlaps
    /// (of two overlapping hits the one of the earlier kind in
    /// [`Builtin::ALL`] wins, built-ins before custom patterns, then the
    /// longer).
    pub fn detect(&self, text: &str) -> Vec<Finding> {
        let mut found: Vec<(usize, Finding)> = Vec::new();
        // Phone checks (libphonenumber) are the costly ones: each distinct
        // candidate is checked once, and not at all inside a hit of an
        // earlier kind (a card's or an IBAN's digits), which would win.
        let mut phones: std::collections::HashMap<&str, Option<usize>> = Default::default();
        let mut run: Vec<usize> = self.alone.clone();
        match &self.set {
            Some(set) => run.extend(set.matches(text).iter().map(|j| self.in_set[j])),
            None => run.extend(&self.in_set),
        }
        // Preference order, so a costly check can skip what an earlier kind found.
        run.sort_unstable();
        for i in run {
            let p = &self.patterns[i];
            for m in p.regex.find_iter(text) {
                let len = match p.builtin {
                    Some(Builtin::Phone) => {
                        if found
                            .iter()
                            .any(|(_, f)| m.start() < f.end && f.start < m.end())
                        {
                            continue;
                        }
                        *phones
                            .entry(m.as_str())
                            .or_insert_with(|| Builtin::Phone.check(m.as_str(), self.region))
                    }
                    Some(b) => b.check(m.as_str(), self.region),
                    None => Some(m.len()),
                };
                if let Some(len) = len.filter(|l| *l > 0) {
                    found.push((
                        i,
                        Finding {
                            kind: p.kind.clone(),
                            start: m.start(),
                            end: m.start() + len,
                        },
                    ));
                }
            }
        }
        // Preference: pattern order, then length.
        found.sort_by(|(ia, a), (ib, b)| {
            ia.cmp(ib)
                .then((b.end - b.start).cmp(&(a.end - a.start)))
                .then(a.start.cmp(&b.start))
        });
        let mut kept: Vec<Finding> = Vec::with_capacity(found.len());
        for (_, f) in found {
            if kept.iter().all(|k| f.end <= k.start || f.start >= k.end) {
                kept.push(f);
            }
        }
        kept.sort_by_key(|f| f.start);
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(set: &DetectorSet, text: &str) -> Vec<(String, String)> {
        set.detect(text)
            .into_iter()
            .map(|f| {
                (
                    f.kind.as_str().to_string(),
                    text[f.start..f.end].to_string(),
                )
            })
            .collect()
    }

    fn only(b: Builtin) -> DetectorSet {
        DetectorSet::new(&[b], &[], "US").unwrap()
    }

    fn hits(b: Builtin, text: &str) -> Vec<String> {
        kinds(&only(b), text).into_iter().map(|(_, s)| s).collect()
    }

    #[test]
    fn emails() {
        assert_eq!(
            hits(
                Builtin::Email,
                "write to jane.doe+x@mail.example.co.uk today"
            ),
            ["jane.doe+x@mail.example.co.uk"]
        );
        assert!(hits(Builtin::Email, "not an email: jane@localhost, @handle, a@b").is_empty());
    }

    #[test]
    fn ibans_need_their_checksum() {
        assert_eq!(
            hits(Builtin::Iban, "pay DE89 3704 0044 0532 0130 00 now"),
            ["DE89 3704 0044 0532 0130 00"]
        );
        assert_eq!(
            hits(Builtin::Iban, "GB82WEST12345698765432"),
            ["GB82WEST12345698765432"]
        );
        assert_eq!(
            hits(
                Builtin::Iban,
                "IBAN DE89 3704 0044 0532 0130 00 BIC COBADEFFXXX"
            ),
            ["DE89 3704 0044 0532 0130 00"]
        );
        // One digit off: the checksum fails.
        assert!(hits(Builtin::Iban, "DE89 3704 0044 0532 0130 01").is_empty());
        assert!(hits(Builtin::Iban, "GB82WEST12345698765433").is_empty());
    }

    #[test]
    fn cards_need_luhn_and_an_issuer() {
        assert_eq!(
            hits(Builtin::PaymentCard, "card 4111 1111 1111 1111 exp 12/29"),
            ["4111 1111 1111 1111"]
        );
        assert_eq!(
            hits(Builtin::PaymentCard, "5500-0000-0000-0004"),
            ["5500-0000-0000-0004"]
        );
        assert_eq!(
            hits(Builtin::PaymentCard, "378282246310005"),
            ["378282246310005"]
        );
        // Luhn fails.
        assert!(hits(Builtin::PaymentCard, "4111 1111 1111 1112").is_empty());
        // Luhn holds but no issuer starts with 1.
        assert!(hits(Builtin::PaymentCard, "1234567812345670").is_empty());
        assert!(luhn(&[7, 9, 9, 2, 7, 3, 9, 8, 7, 1, 3]));
    }

    #[test]
    fn us_ssns() {
        assert_eq!(hits(Builtin::UsSsn, "ssn 123-45-6789."), ["123-45-6789"]);
        for bad in [
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "123-00-4567",
            "123-45-0000",
        ] {
            assert!(hits(Builtin::UsSsn, bad).is_empty(), "{bad}");
        }
    }

    #[test]
    fn uk_national_insurance_numbers() {
        assert_eq!(
            hits(Builtin::UkNino, "NI: AB 12 34 56 C"),
            ["AB 12 34 56 C"]
        );
        assert_eq!(hits(Builtin::UkNino, "ab123456d"), ["ab123456d"]);
        // D, F, I, Q, U, V never first; O never second; GB never a prefix.
        for bad in ["DA123456A", "AO123456A", "GB123456A", "AB123456E"] {
            assert!(hits(Builtin::UkNino, bad).is_empty(), "{bad}");
        }
    }

    #[test]
    fn ip_addresses() {
        assert_eq!(
            hits(
                Builtin::IpAddress,
                "from 192.168.1.20 and 2001:db8::ff00:42:8329"
            ),
            ["192.168.1.20", "2001:db8::ff00:42:8329"]
        );
        assert_eq!(hits(Builtin::IpAddress, "gateway fe80::1"), ["fe80::1"]);
        assert!(
            hits(
                Builtin::IpAddress,
                "version 1.2.3 at 999.1.1.1, 12:30:45, std::fmt"
            )
            .is_empty()
        );
    }

    #[test]
    fn phone_numbers_are_validated_by_libphonenumber() {
        assert_eq!(
            hits(Builtin::Phone, "call +44 20 7946 0958 or (201) 555-0123"),
            ["+44 20 7946 0958", "(201) 555-0123"]
        );
        // Too short, and a number no country issues.
        assert!(hits(Builtin::Phone, "order 12345, ref +999 123 456 789").is_empty());
        // A UK number without +44 is not valid for the US region.
        let gb = DetectorSet::new(&[Builtin::Phone], &[], "GB").unwrap();
        assert_eq!(kinds(&gb, "ring 020 7946 0958").len(), 1);
    }

    #[test]
    fn secrets_by_format_and_by_entropy() {
        let aws = "AKIAIOSFODNN7EXAMPLE";
        let gh = "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";
        let random = "q7Xk2LmP9vRt4ZsW8nB3cY6hJ1dF5gA0eKuT";
        for s in [aws, gh, random, "sk-proj-abcdefghijklmnopqrstu12345"] {
            assert_eq!(hits(Builtin::Secret, &format!("key={s};")), [s], "{s}");
        }
        // A git sha (hex: at most 4 bits per char) and prose are not secrets.
        for s in [
            "commit 3f786850e387550fdab836ed7e6dc881de23001b",
            "the_quick_brown_fox_jumps_over_the_lazy_dog_again",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ] {
            assert!(hits(Builtin::Secret, s).is_empty(), "{s}");
        }
    }

    #[test]
    fn overlaps_keep_the_stronger_kind_and_custom_patterns_join_the_set() {
        let set = DetectorSet::new(
            &Builtin::ALL,
            &[
                CustomPattern {
                    name: "order_id".into(),
                    regex: r"\bORD-[0-9]{6}\b".into(),
                },
                CustomPattern::keywords("competitor", &["Globex".into(), "Initech".into()]),
            ],
            "US",
        )
        .unwrap();
        let text = "Card 4111111111111111, ORD-123456, ask initech; mail a@b.io";
        assert_eq!(
            kinds(&set, text),
            [
                ("payment_card".to_string(), "4111111111111111".to_string()),
                ("order_id".into(), "ORD-123456".into()),
                ("competitor".into(), "initech".into()),
                ("email".into(), "a@b.io".into()),
            ]
        );
        assert!(set.detect("nothing to see here").is_empty());
        let err = DetectorSet::new(
            &[],
            &[CustomPattern {
                name: "bad".into(),
                regex: "(".into(),
            }],
            "US",
        )
        .unwrap_err();
        assert!(err.to_string().contains("\"bad\""), "{err}");
        assert!(DetectorSet::new(&[], &[], "XX").is_err());
    }
}
