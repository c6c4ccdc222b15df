//! Wire shapes: the ack envelope, typed validation of device payloads, event names, and one type
//! per server event (`outgoing`). Only this module and `socket/` know JSON payload shapes of
//! Socket.IO events: the emitter accepts nothing but `outgoing::Outgoing`.

pub mod ack;
pub mod events;
pub mod outgoing;
pub mod playlist;
pub mod validate;

/// A wire type as JSON. The types here serialize infallibly (string keys, no maps keyed by
/// anything else); should one ever fail, the client gets `null` and the failure is logged.
pub fn to_value<T: serde::Serialize>(t: &T) -> serde_json::Value {
    serde_json::to_value(t).unwrap_or_else(|e| {
        tracing::error!(error = %e, "A wire type did not serialize.");
        serde_json::Value::Null
    })
}

/// ISO-8601 with milliseconds and `Z`, like JavaScript's `toISOString()`.
pub fn iso_now() -> String {
    iso(chrono::Utc::now())
}

pub fn iso(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

pub fn iso_naive(t: chrono::NaiveDateTime) -> String {
    iso(t.and_utc())
}
