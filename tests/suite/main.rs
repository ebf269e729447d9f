//! The integration tests, one binary (zero2prod's `tests/api/main.rs`): the crate is linked
//! once, and each module is one area of behaviour. `common` holds what they share.

#![allow(clippy::unwrap_used)] // a failed unwrap fails the test, naming its place

mod common;

mod accounts;
mod api_contract;
mod architecture;
mod attempts;
mod cleanup;
mod cli;
mod console;
mod console_browser;
mod console_load;
mod conversion;
mod crash_safety;
mod exhaustion;
mod faults;
mod group_commit;
mod group_copies;
mod group_views;
mod groups;
mod hammr;
mod harness;
mod hostile_cloud;
mod idempotency;
mod image_store;
mod listener;
mod many_hosts;
mod operations;
mod publish_e2e;
mod query_plans;
mod rabbitmq_cluster;
mod real_clouds;
mod refusal_order;
mod retention;
mod scale_out;
mod schema;
mod security;
mod server_side_copies;
mod signed_requests;
mod slots;
mod state_changes;
mod status_cache;
mod uforge_catalog;
