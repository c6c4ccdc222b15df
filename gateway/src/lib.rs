//! Vizora Gateway: a realtime Socket.IO gateway for digital-signage fleets.
//!
//! See ARCHITECTURE.md for the bird's-eye view. `cli::main` is the binary's entry point and
//! `app::run` the testable server.

// The stores' connect futures nested in their async fns are deeper than the default limit.
#![recursion_limit = "256"]

pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod db;
pub mod emitter;
pub mod healthcheck;
pub mod hooks;
pub mod http;
pub mod limits;
pub mod net;
pub mod proxies;
pub mod seed;
pub mod service;
pub mod shutdown;
pub mod socket;
pub mod storage;
pub mod store;
pub mod telemetry;
pub mod wire;
