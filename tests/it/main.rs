//! Integration tests: the real server (in-process on port 0, or the real
//! binary as a child process) with a temporary RocksDB dir and a fake
//! OpenAI-compatible model server speaking real HTTP on loopback.

// Test helpers outside #[test] functions panic on purpose when a step fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod access;
mod audit;
mod cli;
mod cluster;
mod common;
mod console;
mod console_oidc;
mod crash;
mod disk_full;
mod drain;
mod embeddings;
mod flow_examples;
mod flow_triggers;
mod flows;
mod fork_crash;
mod front_door;
mod gate_crash;
mod gates_api;
mod governance;
mod grpc_api;
mod inspect;
mod layout;
mod output_records;
mod owner_console;
mod owner_flows;
mod owner_ledgers;
mod owner_mtls;
mod owners;
mod privacy;
mod provider_keys;
mod python_clients;
mod quality;
mod responses;
mod retention;
mod routing;
mod snapshots;
mod stream_resume;
mod tls_auth;
mod tool_crash;
mod tools;
mod webdriver;
