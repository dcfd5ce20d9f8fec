//! Spend as the store keeps it: routes' totals (one a lone node writes,
//! or each node's own part where several write at once) and tenants'
//! spend per session and period.

use std::collections::HashMap;

use baton_types::SessionId;

use crate::{Batch, CF_INDEXES, Result, Store, keys};

impl Store {
    /// Every route's recorded total spend in USD: the one total a node
    /// alone writes, plus each node's own part where several serve at once
    /// ([`Batch::put_node_route_spend`]).
    pub async fn route_spends(&self) -> Result<HashMap<String, f64>> {
        let mut out = HashMap::new();
        for (route, _, usd) in self.route_spend_parts().await? {
            *out.entry(route).or_insert(0.0) += usd;
        }
        Ok(out)
    }

    /// Node `node`'s own parts of the routes' spend in USD.
    pub async fn route_spends_of(&self, node: &str) -> Result<HashMap<String, f64>> {
        Ok(self
            .route_spend_parts()
            .await?
            .into_iter()
            .filter(|(_, n, _)| n.as_deref() == Some(node))
            .map(|(route, _, usd)| (route, usd))
            .collect())
    }

    /// Every recorded route spend: (route, the node whose part it is, USD).
    async fn route_spend_parts(&self) -> Result<Vec<(String, Option<String>, f64)>> {
        self.blocking(|db| {
            let prefix = [keys::ROUTE_SPEND_PREFIX];
            let mut out = Vec::new();
            for item in db.walk_prefix(CF_INDEXES, &prefix)? {
                let (k, v) = item?;
                let Ok(bytes) = <[u8; 8]>::try_from(&v[..]) else {
                    continue;
                };
                let rest = &k[1..];
                // A node id holds no NUL (postgres::check_node_id).
                let (route, node) = match rest.iter().rposition(|b| *b == 0) {
                    Some(i) => (&rest[..i], Some(&rest[i + 1..])),
                    None => (rest, None),
                };
                let (Ok(route), Ok(node)) = (
                    std::str::from_utf8(route),
                    node.map(std::str::from_utf8).transpose(),
                ) else {
                    continue;
                };
                out.push((
                    route.to_string(),
                    node.map(str::to_string),
                    f64::from_be_bytes(bytes),
                ));
            }
            Ok(out)
        })
        .await
    }

    /// What `session` of `tenant` spent in `period`, as recorded.
    pub async fn tenant_spend_of(
        &self,
        tenant: &str,
        period: &str,
        session: SessionId,
    ) -> Result<Option<f64>> {
        let key = keys::tenant_spend_key(tenant, period, &session);
        self.blocking(move |db| {
            Ok(db
                .get(CF_INDEXES, &key)?
                .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
                .map(f64::from_be_bytes))
        })
        .await
    }

    /// Every recorded tenant spend: (tenant, period, session, USD).
    pub async fn tenant_spends(&self) -> Result<Vec<(String, String, SessionId, f64)>> {
        self.blocking(|db| {
            let prefix = [keys::TENANT_SPEND_PREFIX];
            let mut out = Vec::new();
            for item in db.walk_prefix(CF_INDEXES, &prefix)? {
                let (k, v) = item?;
                let rest = &k[1..];
                let Some(t) = rest.iter().position(|b| *b == 0) else {
                    continue;
                };
                let after = &rest[t + 1..];
                let Some(p) = after.iter().position(|b| *b == 0) else {
                    continue;
                };
                let (Some(session), Ok(bytes)) = (
                    keys::session_from_slice(&after[p + 1..]),
                    <[u8; 8]>::try_from(&v[..]),
                ) else {
                    continue;
                };
                out.push((
                    String::from_utf8_lossy(&rest[..t]).into_owned(),
                    String::from_utf8_lossy(&after[..p]).into_owned(),
                    session,
                    f64::from_be_bytes(bytes),
                ));
            }
            Ok(out)
        })
        .await
    }

    /// Every node's part of every tenant's spend in `period`, as
    /// (tenant, node, USD) ([`Batch::put_tenant_node_spend`]).
    pub async fn tenant_node_spends(&self, period: &str) -> Result<Vec<(String, String, f64)>> {
        let prefix = keys::tenant_node_spend_prefix(period);
        self.blocking(move |db| {
            let mut out = Vec::new();
            for item in db.walk_prefix(CF_INDEXES, &prefix)? {
                let (k, v) = item?;
                let rest = &k[prefix.len()..];
                let (Some(t), Ok(bytes)) = (
                    rest.iter().position(|b| *b == 0),
                    <[u8; 8]>::try_from(&v[..]),
                ) else {
                    continue;
                };
                out.push((
                    String::from_utf8_lossy(&rest[..t]).into_owned(),
                    String::from_utf8_lossy(&rest[t + 1..]).into_owned(),
                    f64::from_be_bytes(bytes),
                ));
            }
            Ok(out)
        })
        .await
    }

    /// Every node's token use in the last minute, as (node, meter, meter
    /// key, tokens, counted at unix ms) ([`Batch::put_node_tokens`]).
    pub async fn node_tokens(&self) -> Result<Vec<(String, u8, String, u64, u64)>> {
        self.blocking(|db| {
            let prefix = [keys::NODE_TOKENS_PREFIX];
            let mut out = Vec::new();
            for item in db.walk_prefix(CF_INDEXES, &prefix)? {
                let (k, v) = item?;
                let rest = &k[1..];
                let Some(n) = rest.iter().position(|b| *b == 0) else {
                    continue;
                };
                let (Some(meter), Ok(tokens), Ok(at)) = (
                    rest.get(n + 1).copied(),
                    v.get(..8)
                        .unwrap_or_default()
                        .try_into()
                        .map(u64::from_be_bytes),
                    v.get(8..16)
                        .unwrap_or_default()
                        .try_into()
                        .map(u64::from_be_bytes),
                ) else {
                    continue;
                };
                out.push((
                    String::from_utf8_lossy(&rest[..n]).into_owned(),
                    meter,
                    String::from_utf8_lossy(&rest[n + 2..]).into_owned(),
                    tokens,
                    at,
                ));
            }
            Ok(out)
        })
        .await
    }

    /// Under the writer lease: fold the parts of each route's spend that
    /// nodes owning sessions wrote into the one total a lone node keeps
    /// (one batch), so that the total it writes from here on is not added
    /// to them again. Nothing when there are none.
    pub async fn fold_route_spends(&self) -> Result<()> {
        let parts = self.route_spend_parts().await?;
        if parts.iter().all(|(_, node, _)| node.is_none()) {
            return Ok(());
        }
        let mut totals: HashMap<String, f64> = HashMap::new();
        let mut batch = Batch::new();
        for (route, node, usd) in parts {
            *totals.entry(route.clone()).or_insert(0.0) += usd;
            if let Some(node) = node {
                batch.delete_node_route_spend(&route, &node);
            }
        }
        for (route, total) in totals {
            batch.put_route_spend(&route, total);
        }
        self.write(batch).await
    }
}
