//! What authentication and authorization add to one call on the server's
//! hot path: the `authorization` header read, the API key parsed and hashed,
//! its record found and compared in constant time, the role requirement
//! checked, the rate limiter consulted and the call counted against the
//! principal's open calls — everything the access layer does before a
//! handler runs (`Authenticator::authorize`), against a real runtime
//! holding 1,000 keys. JWTs (cached and first-seen) are measured in
//! `cargo bench -p baton-auth --bench verify`.
//!
//! Run with: cargo bench --bench auth -- [--calls N]

use std::time::Instant;

use anyhow::Result;
use baton_runtime::{Runtime, RuntimeConfig};
use baton_server::auth::{Authenticator, GRPC_ACCESS};
use baton_server::{AuthSection, new_key};
use baton_types::AccessRole;

fn percentile(sorted: &[u128], p: f64) -> u128 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut calls = 200_000usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--calls" {
            calls = args.next().unwrap_or_default().parse()?;
        }
    }
    let dir = tempfile::tempdir()?;
    let mut config = RuntimeConfig::with_data_dir(dir.path().join("data"));
    config.tenants = vec![serde_json::from_value(serde_json::json!({
        "name": "acme", "key_requests_per_second": 1e9, "key_burst": 1000000,
        "requests_per_second": 1e9, "burst": 1000000,
    }))?];
    let runtime = Runtime::builder(config).start().await?;
    let mut secret = String::new();
    for i in 0..1000 {
        let (record, s) = new_key(
            format!("k{i}"),
            "acme".into(),
            vec![AccessRole::Client],
            Vec::new(),
            0,
            "bench".into(),
        )?;
        runtime.add_api_key(record, "bench").await?;
        secret = s;
    }
    let section: AuthSection = serde_json::from_value(serde_json::json!({ "enabled": true }))?;
    let auth = Authenticator::new(runtime.clone(), &section)
        .await
        .map_err(anyhow::Error::msg)?;
    let need = GRPC_ACCESS[0].1;
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {secret}").parse()?,
    );
    let mut times = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        let admitted = auth
            .authorize(need, &headers, None)
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        drop(admitted);
        times.push(t.elapsed().as_nanos());
    }
    times.sort_unstable();
    println!(
        "API key, {calls} calls: p50 {:.2} µs  p99 {:.2} µs  max {:.2} µs",
        percentile(&times, 0.5) as f64 / 1000.0,
        percentile(&times, 0.99) as f64 / 1000.0,
        *times.last().unwrap_or(&0) as f64 / 1000.0,
    );
    runtime.shutdown().await;
    Ok(())
}
