//! `[auth.jwt]`: which identity provider's tokens to accept and how their
//! claims map to a principal.

use std::path::PathBuf;

use baton_types::AccessRole;
use jsonwebtoken::Algorithm;
use serde::Deserialize;

/// The algorithms a token may be signed with: asymmetric only, since the
/// keys come from a published JWKS.
pub const SUPPORTED_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// JWT bearer tokens from an external identity provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSettings {
    /// The `iss` a token must carry.
    pub issuer: String,
    /// The `aud` a token must carry (alone or among others).
    pub audience: String,
    /// A JWKS file (`{"keys": [...]}`), read once at startup.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL, fetched at startup, every `refresh_secs`, and when a
    /// token names a key id the set does not have (at most once per 30 s).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// The `alg`s accepted (default `RS256`, `ES256`, `EdDSA`).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// The claim holding the principal id (default `sub`).
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// The claim holding the tenant (default `tenant`).
    #[serde(default = "default_tenant_claim")]
    pub tenant_claim: String,
    /// The claim holding the roles: a string of names separated by spaces or
    /// commas, or an array of names (default `roles`).
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// The claim holding the reviewer groups: one name, or an array of names
    /// (default `groups`).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// The tenant of a token without the tenant claim; without it, such a
    /// token is refused.
    #[serde(default)]
    pub default_tenant: Option<String>,
    /// The roles of a token without the roles claim (default none).
    #[serde(default)]
    pub default_roles: Vec<AccessRole>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds (default 30).
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
    /// How often a JWKS URL is fetched again, in seconds (default 300).
    #[serde(default = "default_refresh_secs")]
    pub refresh_secs: u64,
}

fn default_algorithms() -> Vec<String> {
    ["RS256", "ES256", "EdDSA"].map(String::from).to_vec()
}
fn default_subject_claim() -> String {
    "sub".into()
}
fn default_tenant_claim() -> String {
    "tenant".into()
}
fn default_roles_claim() -> String {
    "roles".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_leeway_secs() -> u64 {
    30
}
fn default_refresh_secs() -> u64 {
    300
}

impl JwtSettings {
    /// Settings with every default and no key source yet: set `jwks_file`
    /// or `jwks_url` before use.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            jwks_file: None,
            jwks_url: None,
            algorithms: default_algorithms(),
            subject_claim: default_subject_claim(),
            tenant_claim: default_tenant_claim(),
            roles_claim: default_roles_claim(),
            groups_claim: default_groups_claim(),
            default_tenant: None,
            default_roles: Vec::new(),
            leeway_secs: default_leeway_secs(),
            refresh_secs: default_refresh_secs(),
        }
    }

    /// Checks what serde cannot; the error names the field
    /// (`auth.jwt.<field>: <problem>`).
    pub fn validate(&self) -> Result<(), String> {
        let field = |name: &str, problem: &str| Err(format!("auth.jwt.{name}: {problem}"));
        if self.issuer.trim().is_empty() {
            return field("issuer", "must not be empty");
        }
        if self.audience.trim().is_empty() {
            return field("audience", "must not be empty");
        }
        match (&self.jwks_file, &self.jwks_url) {
            (None, None) => {
                return field(
                    "jwks_file",
                    "set exactly one of jwks_file and jwks_url (neither is set)",
                );
            }
            (Some(_), Some(_)) => {
                return field(
                    "jwks_url",
                    "set exactly one of jwks_file and jwks_url (both are set)",
                );
            }
            (Some(path), None) if path.as_os_str().is_empty() => {
                return field("jwks_file", "must not be empty");
            }
            (None, Some(url)) if !(url.starts_with("https://") || url.starts_with("http://")) => {
                return field("jwks_url", "must be an http:// or https:// URL");
            }
            _ => {}
        }
        self.parsed_algorithms()?;
        for (name, claim) in [
            ("subject_claim", &self.subject_claim),
            ("tenant_claim", &self.tenant_claim),
            ("roles_claim", &self.roles_claim),
            ("groups_claim", &self.groups_claim),
        ] {
            if claim.is_empty() {
                return field(name, "must not be empty");
            }
        }
        if self.default_tenant.as_ref().is_some_and(|t| t.is_empty()) {
            return field("default_tenant", "must not be empty when set");
        }
        if self.refresh_secs == 0 {
            return field("refresh_secs", "must be at least 1");
        }
        Ok(())
    }

    /// The accepted algorithms, in order, without duplicates.
    pub(crate) fn parsed_algorithms(&self) -> Result<Vec<Algorithm>, String> {
        if self.algorithms.is_empty() {
            return Err("auth.jwt.algorithms: must name at least one algorithm".into());
        }
        let mut parsed = Vec::with_capacity(self.algorithms.len());
        for name in &self.algorithms {
            let algorithm = SUPPORTED_ALGORITHMS
                .contains(&name.as_str())
                .then(|| name.parse::<Algorithm>().ok())
                .flatten()
                .ok_or_else(|| {
                    format!(
                        "auth.jwt.algorithms: unsupported algorithm {name:?}: expected one of {}",
                        SUPPORTED_ALGORITHMS.join(", ")
                    )
                })?;
            if !parsed.contains(&algorithm) {
                parsed.push(algorithm);
            }
        }
        Ok(parsed)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn from_toml(text: &str) -> Result<JwtSettings, String> {
        toml::from_str::<JwtSettings>(text).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_fill_everything_but_issuer_audience_and_source() {
        let s = from_toml(
            r#"
            issuer = "https://idp"
            audience = "baton"
            jwks_url = "https://idp/jwks"
            "#,
        )
        .unwrap();
        assert_eq!(s.algorithms, ["RS256", "ES256", "EdDSA"]);
        assert_eq!(
            (
                &*s.subject_claim,
                &*s.tenant_claim,
                &*s.roles_claim,
                &*s.groups_claim
            ),
            ("sub", "tenant", "roles", "groups")
        );
        assert_eq!((s.leeway_secs, s.refresh_secs), (30, 300));
        assert!(s.default_tenant.is_none() && s.default_roles.is_empty());
        s.validate().unwrap();
    }

    #[test]
    fn unknown_fields_and_roles_are_refused_when_parsing() {
        let e = from_toml("issuer = 'i'\naudience = 'a'\njwks_url = 'https://x'\nissuers = []")
            .unwrap_err();
        assert!(e.contains("unknown field `issuers`"), "{e}");
        let e = from_toml(
            "issuer = 'i'\naudience = 'a'\njwks_url = 'https://x'\ndefault_roles = ['root']",
        )
        .unwrap_err();
        assert!(
            e.contains("root") && e.contains("client, reviewer, operator, admin"),
            "{e}"
        );
    }

    #[test]
    fn validate_names_the_field() {
        let base = || {
            let mut s = JwtSettings::new("https://idp", "baton");
            s.jwks_url = Some("https://idp/jwks".into());
            s
        };
        let cases: Vec<(JwtSettings, &str)> = vec![
            (
                JwtSettings::new("https://idp", "baton"),
                "auth.jwt.jwks_file: set exactly one of jwks_file and jwks_url (neither",
            ),
            (
                {
                    let mut s = base();
                    s.jwks_file = Some("/etc/jwks.json".into());
                    s
                },
                "auth.jwt.jwks_url: set exactly one of jwks_file and jwks_url (both",
            ),
            (
                {
                    let mut s = base();
                    s.jwks_url = Some("ftp://idp/jwks".into());
                    s
                },
                "auth.jwt.jwks_url: must be an http",
            ),
            (
                {
                    let mut s = base();
                    s.issuer = " ".into();
                    s
                },
                "auth.jwt.issuer: must not be empty",
            ),
            (
                {
                    let mut s = base();
                    s.algorithms = vec!["HS256".into()];
                    s
                },
                "auth.jwt.algorithms: unsupported algorithm \"HS256\"",
            ),
            (
                {
                    let mut s = base();
                    s.algorithms.clear();
                    s
                },
                "auth.jwt.algorithms: must name at least one",
            ),
            (
                {
                    let mut s = base();
                    s.tenant_claim.clear();
                    s
                },
                "auth.jwt.tenant_claim: must not be empty",
            ),
            (
                {
                    let mut s = base();
                    s.refresh_secs = 0;
                    s
                },
                "auth.jwt.refresh_secs: must be at least 1",
            ),
        ];
        for (settings, expected) in cases {
            let e = settings.validate().unwrap_err();
            assert!(e.starts_with(expected), "{e}");
        }
    }

    #[test]
    fn algorithms_parse_in_order_without_duplicates() {
        let mut s = JwtSettings::new("i", "a");
        s.algorithms = ["ES256", "EdDSA", "ES256", "PS512"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            s.parsed_algorithms().unwrap(),
            [Algorithm::ES256, Algorithm::EdDSA, Algorithm::PS512]
        );
    }
}
