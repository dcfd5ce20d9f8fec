//! From a verified token's claims to a [`Principal`]: pure, no I/O.

use baton_types::{AccessRole, AuthMethod, Principal};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::{AuthError, Result};

/// The claims of a token, as the identity provider wrote them. Claim names
/// are configured, so this is a map rather than a struct.
pub(crate) type Claims = Map<String, Value>;

/// A claim that is one string or a list of strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum Names {
    One(String),
    Many(Vec<String>),
}

/// Which claims hold what, and the fallbacks for absent ones.
#[derive(Debug, Clone)]
pub(crate) struct ClaimRules {
    pub(crate) subject: String,
    pub(crate) tenant: String,
    pub(crate) roles: String,
    pub(crate) groups: String,
    pub(crate) default_tenant: Option<String>,
    pub(crate) default_roles: Vec<AccessRole>,
}

impl ClaimRules {
    /// The principal a verified token stands for.
    pub(crate) fn principal(&self, claims: &Claims) -> Result<Principal> {
        let id = string(claims, &self.subject)?.ok_or_else(|| missing(&self.subject, ""))?;
        let tenant = match string(claims, &self.tenant)? {
            Some(tenant) => tenant,
            None => self
                .default_tenant
                .clone()
                .ok_or_else(|| missing(&self.tenant, " and no default_tenant is configured"))?,
        };
        let roles = match names(claims, &self.roles)? {
            Some(names) => roles(&self.roles, names)?,
            None => self.default_roles.clone(),
        };
        let groups = match names(claims, &self.groups)? {
            Some(Names::One(group)) => vec![group],
            Some(Names::Many(groups)) => groups,
            None => Vec::new(),
        }
        .into_iter()
        .filter(|g| !g.is_empty())
        .collect();
        Ok(Principal {
            via: AuthMethod::Jwt,
            id,
            tenant,
            roles,
            groups,
        })
    }
}

/// A non-empty string claim; `None` when absent, null or empty.
fn string(claims: &Claims, name: &str) -> Result<Option<String>> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(AuthError::Invalid(format!(
            "claim `{name}` must be a string"
        ))),
    }
}

fn names(claims: &Claims, name: &str) -> Result<Option<Names>> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => Names::deserialize(value).map(Some).map_err(|_| {
            AuthError::Invalid(format!(
                "claim `{name}` must be a string or an array of strings"
            ))
        }),
    }
}

/// Roles from a string (names separated by spaces or commas, as in OAuth's
/// `scope`) or an array of names; an unknown name is an error naming it.
fn roles(claim: &str, names: Names) -> Result<Vec<AccessRole>> {
    let names: Vec<String> = match names {
        Names::One(text) => text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect(),
        Names::Many(list) => list,
    };
    let mut roles = Vec::with_capacity(names.len());
    for name in names {
        let role = AccessRole::parse(&name)
            .map_err(|e| AuthError::Invalid(format!("claim `{claim}`: {e}")))?;
        if !roles.contains(&role) {
            roles.push(role);
        }
    }
    Ok(roles)
}

fn missing(claim: &str, why: &str) -> AuthError {
    AuthError::Invalid(format!("missing claim `{claim}`{why}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use baton_types::DEFAULT_TENANT;
    use serde_json::json;

    use super::*;

    fn rules() -> ClaimRules {
        ClaimRules {
            subject: "sub".into(),
            tenant: "tenant".into(),
            roles: "roles".into(),
            groups: "groups".into(),
            default_tenant: None,
            default_roles: Vec::new(),
        }
    }

    fn claims(value: Value) -> Claims {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    fn invalid(result: Result<Principal>) -> String {
        match result {
            Err(AuthError::Invalid(m)) => m,
            other => panic!("expected an invalid error, got {other:?}"),
        }
    }

    #[test]
    fn roles_and_groups_come_as_strings_or_arrays() {
        let p = rules()
            .principal(&claims(json!({
                "sub": "alice", "tenant": "acme",
                "roles": "client, reviewer operator,client", "groups": "finance"
            })))
            .unwrap();
        assert_eq!(p.via, AuthMethod::Jwt);
        assert_eq!((&*p.id, &*p.tenant), ("alice", "acme"));
        assert_eq!(
            p.roles,
            [
                AccessRole::Client,
                AccessRole::Reviewer,
                AccessRole::Operator
            ]
        );
        assert_eq!(p.groups, ["finance"]);

        let p = rules()
            .principal(&claims(json!({
                "sub": "bob", "tenant": "acme", "roles": ["admin"], "groups": ["a", "b"]
            })))
            .unwrap();
        assert_eq!(p.roles, [AccessRole::Admin]);
        assert_eq!(p.groups, ["a", "b"]);
    }

    #[test]
    fn configured_claim_names_are_read() {
        let rules = ClaimRules {
            subject: "email".into(),
            tenant: "org".into(),
            roles: "scp".into(),
            groups: "teams".into(),
            ..rules()
        };
        let p = rules
            .principal(&claims(json!({
                "sub": "ignored", "email": "c@acme", "org": "acme", "scp": "operator", "teams": ["x"]
            })))
            .unwrap();
        assert_eq!((&*p.id, &*p.tenant), ("c@acme", "acme"));
        assert_eq!(p.roles, [AccessRole::Operator]);
        assert_eq!(p.groups, ["x"]);
    }

    #[test]
    fn absent_claims_fall_back_or_fail_naming_the_claim() {
        let m = invalid(rules().principal(&claims(json!({"sub": "a"}))));
        assert_eq!(
            m,
            "missing claim `tenant` and no default_tenant is configured"
        );
        let m = invalid(rules().principal(&claims(json!({"tenant": "acme"}))));
        assert_eq!(m, "missing claim `sub`");

        let rules = ClaimRules {
            default_tenant: Some(DEFAULT_TENANT.into()),
            default_roles: vec![AccessRole::Client],
            ..rules()
        };
        let p = rules.principal(&claims(json!({"sub": "a"}))).unwrap();
        assert_eq!(p.tenant, DEFAULT_TENANT);
        assert_eq!(p.roles, [AccessRole::Client]);
        assert!(p.groups.is_empty());
        // A present claim wins over the defaults, even an empty role list.
        let p = rules
            .principal(&claims(json!({"sub": "a", "tenant": "t", "roles": []})))
            .unwrap();
        assert_eq!(p.tenant, "t");
        assert!(p.roles.is_empty());
    }

    #[test]
    fn wrong_types_and_unknown_roles_are_refused() {
        let m = invalid(rules().principal(&claims(
            json!({"sub": "a", "tenant": "t", "roles": "client superuser"}),
        )));
        assert!(
            m.starts_with("claim `roles`: unknown role \"superuser\""),
            "{m}"
        );
        assert!(m.contains("client, reviewer, operator, admin"), "{m}");
        let m = invalid(rules().principal(&claims(json!({"sub": 7, "tenant": "t"}))));
        assert_eq!(m, "claim `sub` must be a string");
        let m =
            invalid(rules().principal(&claims(json!({"sub": "a", "tenant": "t", "groups": [1]}))));
        assert_eq!(m, "claim `groups` must be a string or an array of strings");
    }
}
