//! The `baton.v1.Admin` service: API keys (admins only, per
//! [`crate::auth::GRPC_ACCESS`]).

use baton_proto::v1::{self, admin_server::Admin};
use baton_runtime::{ApiKeyRecord, RuntimeHandle};
use baton_types::{AccessRole, now_unix_ms};
use tonic::{Request, Response, Status};

use crate::auth::{hex_encode, principal};
use crate::status::status;

/// The Admin service over a runtime.
#[derive(Clone)]
pub struct AdminService {
    runtime: RuntimeHandle,
}

impl AdminService {
    pub fn new(runtime: RuntimeHandle) -> Self {
        Self { runtime }
    }
}

/// A new key record and its secret (shown once): the one way keys are
/// made, for the RPC and for `baton keys create --data-dir` alike.
pub fn new_key(
    name: String,
    tenant: String,
    roles: Vec<AccessRole>,
    groups: Vec<String>,
    expires_at_unix_ms: u64,
    created_by: String,
) -> Result<(ApiKeyRecord, String), baton_auth::AuthError> {
    let key = baton_auth::keys::generate()?;
    let record = ApiKeyRecord {
        id: key.id.clone(),
        hash: hex_encode(&key.hash),
        name,
        tenant,
        roles,
        groups,
        created_at_unix_ms: now_unix_ms(),
        expires_at_unix_ms,
        revoked_at_unix_ms: 0,
        created_by,
        rotated_from: String::new(),
    };
    Ok((record, key.plaintext))
}

/// Roles from their wire strings, each error naming the value.
pub fn parse_roles(roles: &[String]) -> Result<Vec<AccessRole>, String> {
    if roles.is_empty() {
        return Err("roles: at least one of client, reviewer, operator, admin".into());
    }
    roles
        .iter()
        .map(|r| AccessRole::parse(r).map_err(|e| format!("roles: {e}")))
        .collect()
}

pub fn key_to_proto(r: &ApiKeyRecord) -> v1::ApiKey {
    v1::ApiKey {
        id: r.id.clone(),
        name: r.name.clone(),
        tenant: r.tenant.clone(),
        roles: r.roles.iter().map(|x| x.as_str().to_string()).collect(),
        groups: r.groups.clone(),
        created_at_unix_ms: r.created_at_unix_ms,
        expires_at_unix_ms: r.expires_at_unix_ms,
        revoked_at_unix_ms: r.revoked_at_unix_ms,
        created_by: r.created_by.clone(),
        rotated_from: r.rotated_from.clone(),
    }
}

fn key_id(id: &str) -> Result<&str, Status> {
    if id.trim().is_empty() {
        return Err(Status::invalid_argument(
            "id is required (e.g. bk_3fa9c1d2)",
        ));
    }
    Ok(id)
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_key(
        &self,
        req: Request<v1::CreateKeyRequest>,
    ) -> Result<Response<v1::CreatedKey>, Status> {
        let by = principal(&req)?.label();
        let r = req.into_inner();
        if r.tenant.trim().is_empty() {
            return Err(Status::invalid_argument("tenant is required"));
        }
        let roles = parse_roles(&r.roles).map_err(Status::invalid_argument)?;
        if r.expires_at_unix_ms != 0 && r.expires_at_unix_ms <= now_unix_ms() {
            return Err(Status::invalid_argument(
                "expires_at_unix_ms is in the past",
            ));
        }
        let (record, secret) = new_key(
            r.name,
            r.tenant,
            roles,
            r.groups,
            r.expires_at_unix_ms,
            by.clone(),
        )
        .map_err(|e| Status::unavailable(e.to_string()))?;
        let record = self
            .runtime
            .add_api_key(record, &by)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(v1::CreatedKey {
            key: Some(key_to_proto(&record)),
            secret,
        }))
    }

    async fn list_keys(
        &self,
        req: Request<v1::ListKeysRequest>,
    ) -> Result<Response<v1::ListKeysResponse>, Status> {
        let r = req.into_inner();
        let keys = self
            .runtime
            .api_keys()
            .iter()
            .filter(|k| r.tenant.is_empty() || k.tenant == r.tenant)
            .map(key_to_proto)
            .collect();
        Ok(Response::new(v1::ListKeysResponse { keys }))
    }

    async fn revoke_key(
        &self,
        req: Request<v1::RevokeKeyRequest>,
    ) -> Result<Response<v1::ApiKey>, Status> {
        let by = principal(&req)?.label();
        let r = req.into_inner();
        let record = self
            .runtime
            .revoke_api_key(key_id(&r.id)?, &by)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(key_to_proto(&record)))
    }

    async fn rotate_key(
        &self,
        req: Request<v1::RotateKeyRequest>,
    ) -> Result<Response<v1::CreatedKey>, Status> {
        let by = principal(&req)?.label();
        let r = req.into_inner();
        let id = key_id(&r.id)?;
        let old = self
            .runtime
            .api_key(id)
            .ok_or_else(|| Status::not_found(format!("API key {id} not found")))?;
        if old.revoked_at_unix_ms != 0 {
            return Err(Status::failed_precondition(format!(
                "API key {id} is revoked; create a new key instead"
            )));
        }
        let expires = if r.expires_at_unix_ms != 0 {
            r.expires_at_unix_ms
        } else {
            old.expires_at_unix_ms
        };
        let (mut record, secret) = new_key(
            old.name.clone(),
            old.tenant.clone(),
            old.roles.clone(),
            old.groups.clone(),
            expires,
            by.clone(),
        )
        .map_err(|e| Status::unavailable(e.to_string()))?;
        record.rotated_from = old.id.clone();
        let record = self
            .runtime
            .add_api_key(record, &by)
            .await
            .map_err(|e| status(&e))?;
        if !r.keep_old {
            self.runtime
                .revoke_api_key(&old.id, &by)
                .await
                .map_err(|e| status(&e))?;
        }
        Ok(Response::new(v1::CreatedKey {
            key: Some(key_to_proto(&record)),
            secret,
        }))
    }
}
