//! Who is calling: the authenticated principal every API action is taken
//! by, its tenant and its roles.

use serde::{Deserialize, Serialize};

use crate::wire::wire_enum;

/// The tenant of a zero-config server and of sessions that predate tenants.
pub const DEFAULT_TENANT: &str = "default";

wire_enum! {
    /// What a principal may do. `admin` holds every other role, in every
    /// tenant; the others are independent and confined to the principal's
    /// tenant.
    pub enum AccessRole: "role" {
        /// Start, drive and resume its tenant's sessions; submit tool results.
        Client = "client",
        /// List and decide its tenant's gates, within its reviewer groups.
        Reviewer = "reviewer",
        /// Inspect, fork and replay its tenant's sessions.
        Operator = "operator",
        /// Everything, in every tenant: keys, backup, all data.
        Admin = "admin",
    }
}

wire_enum! {
    /// How a principal proved who it is.
    pub enum AuthMethod: "authentication method" {
        /// A Baton API key (`authorization: Bearer bk_...`).
        ApiKey = "api_key",
        /// A JWT from the configured identity provider.
        Jwt = "jwt",
        /// A client certificate (mutual TLS).
        Certificate = "certificate",
        /// No authentication configured, loopback only: the local operator.
        Local = "local",
        /// The embedding program, calling the Rust API directly.
        Embedded = "embedded",
        /// A flow trigger Baton checked itself: an HMAC-signed webhook, a
        /// schedule, a queue (`trigger:webhook:<name>`).
        Trigger = "trigger",
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// How it authenticated.
    pub via: AuthMethod,
    /// Its stable id: the key id (`bk_3fa9c1d2`), the JWT subject, the
    /// certificate's subject; `local` or `embedded` otherwise.
    pub id: String,
    /// The tenant it acts in.
    pub tenant: String,
    /// What it may do.
    pub roles: Vec<AccessRole>,
    /// The reviewer groups it decides gates for (empty: none, unless admin).
    #[serde(default)]
    pub groups: Vec<String>,
}

impl Principal {
    /// The embedding program: an admin in the default tenant.
    pub fn embedded() -> Self {
        Self {
            via: AuthMethod::Embedded,
            id: "embedded".into(),
            tenant: DEFAULT_TENANT.into(),
            roles: vec![AccessRole::Admin],
            groups: Vec::new(),
        }
    }

    /// The caller of a server with no authentication configured (loopback
    /// only): an admin in the default tenant.
    pub fn local() -> Self {
        Self {
            via: AuthMethod::Local,
            id: "local".into(),
            tenant: DEFAULT_TENANT.into(),
            roles: vec![AccessRole::Admin],
            groups: Vec::new(),
        }
    }

    /// Whether it holds `role` (admins hold every role).
    pub fn has(&self, role: AccessRole) -> bool {
        self.roles
            .iter()
            .any(|r| *r == role || *r == AccessRole::Admin)
    }

    /// Whether it is an admin (every tenant, every operation).
    pub fn is_admin(&self) -> bool {
        self.roles.contains(&AccessRole::Admin)
    }

    /// Whether it may see and act on data of `tenant`.
    pub fn sees_tenant(&self, tenant: &str) -> bool {
        self.is_admin() || self.tenant == tenant
    }

    /// Whether it may decide a gate for `group` (admins decide any).
    pub fn in_group(&self, group: &str) -> bool {
        self.is_admin() || self.groups.iter().any(|g| g == group)
    }

    /// `method:id` (e.g. `api_key:bk_3fa9c1d2`): how it is named in
    /// journal records, gate outcomes and the audit trail.
    pub fn label(&self) -> String {
        format!("{}:{}", self.via, self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_holds_every_role_and_tenant_others_only_their_own() {
        let admin = Principal::local();
        for role in <AccessRole as crate::WireEnum>::ALL {
            assert!(admin.has(*role));
        }
        assert!(admin.sees_tenant("acme"));
        assert!(admin.in_group("finance"));
        let reviewer = Principal {
            via: AuthMethod::ApiKey,
            id: "bk_00000000".into(),
            tenant: "acme".into(),
            roles: vec![AccessRole::Reviewer],
            groups: vec!["finance".into()],
        };
        assert!(reviewer.has(AccessRole::Reviewer));
        assert!(!reviewer.has(AccessRole::Client));
        assert!(!reviewer.has(AccessRole::Admin));
        assert!(reviewer.sees_tenant("acme"));
        assert!(!reviewer.sees_tenant("globex"));
        assert!(reviewer.in_group("finance"));
        assert!(!reviewer.in_group("legal"));
        assert_eq!(reviewer.label(), "api_key:bk_00000000");
    }
}
