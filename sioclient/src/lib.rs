//! A small Socket.IO v4 client (Engine.IO protocol 4, text packets only) over
//! websocket, HTTP long-polling, or polling upgraded to websocket.
//!
//! Built for integration tests and simulated screens: server events are
//! buffered in arrival order and read with [`Client::next_event`] /
//! [`Client::wait_for`]; nothing the server sends can make it panic.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use vizora_sioclient::{ClientOptions, Transport, connect};
//!
//! let client = connect(
//!     ClientOptions::new("http://127.0.0.1:3002")
//!         .transport(Transport::PollingUpgrade)
//!         .auth(serde_json::json!({ "token": "..." })),
//! )
//! .await?;
//! let reply = client.emit_with_ack("ping", serde_json::json!({}), Duration::from_secs(5)).await?;
//! let _ = (reply, client.wait_for("content", Duration::from_secs(5)).await);
//! client.disconnect().await;
//! # Ok(()) }
//! ```

mod client;
mod connect;
mod cookies;
mod driver;
mod error;
mod options;
pub mod packet;
mod transport;

pub use client::{Client, CloseReason, Event};
pub use connect::connect;
pub use error::{ClientError, ConnectError};
pub use options::{ClientOptions, Transport};
