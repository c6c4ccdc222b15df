//! Every integration test in one binary: each file here is a module, so the gateway and the
//! harness are linked once instead of once per file (see README, "Tests", for the figures).
//! Run one file's tests with `cargo test -p vizora-gateway-tests --test main <module>::`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

// One module per file of tests/tests/ (a new file is listed here, or it is never compiled).
mod cli;
mod cluster;
mod cluster_faults;
mod compat_js;
mod credentials;
mod dashboard;
mod delivery;
mod deploy;
mod drain;
mod drain_deadline;
mod edge;
mod existing_db;
mod hot_path;
mod impressions;
mod internal_api;
mod load_balancer;
mod partition;
mod paused;
mod persistence;
mod props;
mod protocol;
mod readiness;
mod rebalance;
mod redis_cluster;
mod redis_cluster_harness;
mod redis_failover;
mod redis_faults;
mod screenshots;
mod smoke;
mod storage_s3;
mod stores;
