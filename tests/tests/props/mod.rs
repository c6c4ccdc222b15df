//! Property tests for every decoder the gateway puts between the network and its services:
//! device event payloads and the join/leave bodies (`decoders`), tokens (`tokens`), the internal
//! API bodies over real HTTP (`internal_api`), and Engine.IO / Socket.IO frames over a real
//! websocket (`framing`). The properties: nothing panics or kills the replica; valid input is
//! accepted and comes back unchanged; invalid input is refused with the documented error.
//!
//! Case counts are modest (`CASES`) so the suite stays fast; `PROPTEST_CASES` raises them for a
//! longer local run.

mod decoders;
mod framing;
mod internal_api;
mod tokens;

use proptest::prelude::*;
use serde_json::{Map, Value};

/// Cases per property unless `PROPTEST_CASES` says otherwise.
const CASES: u32 = 128;

fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        // A failing case is reported as found: shrinking against a live server takes long.
        max_shrink_iters: 64,
        // Failing cases are printed; no regression files appear in the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A runtime of the property's own (proptest drives cases synchronously) and an embedded
/// gateway started on it; the directory holds its database.
fn embedded_gateway() -> (
    tokio::runtime::Runtime,
    vizora_gateway_tests::Gateway,
    tempfile::TempDir,
) {
    use vizora_gateway_tests::{GatewayOptions, gateway};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (gw, dir) = rt.block_on(async {
        let (db, _pg, dir) = gateway::seeded_db("sqlite", 0).await;
        (
            vizora_gateway_tests::Gateway::start(GatewayOptions::new(db)).await,
            dir,
        )
    });
    (rt, gw, dir)
}

/// Field names the decoders look for: random objects use them often, so the generated
/// payloads reach past the first check of each decoder.
const KNOWN_KEYS: &[&str] = &[
    "metrics",
    "cpuUsage",
    "memoryUsage",
    "diskUsage",
    "networkLatency",
    "temperature",
    "currentContent",
    "contentId",
    "playlistId",
    "playbackPosition",
    "status",
    "uptime",
    "appVersion",
    "screenState",
    "playbackSource",
    "contentVersion",
    "timestamp",
    "duration",
    "completionPercentage",
    "errorType",
    "errorMessage",
    "errorCode",
    "context",
    "lastKnownVersion",
    "forceRefresh",
    "requestId",
    "imageData",
    "width",
    "height",
    "organizationId",
    "room",
    "deviceId",
    "displayId",
    "deviceIds",
    "playlist",
    "content",
    "command",
    "type",
    "payload",
    "qrOverlay",
    "event",
    "data",
    "reason",
    "state",
    "notification",
    "userId",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(KNOWN_KEYS).prop_map(str::to_string),
        1 => "[a-zA-Z_]{1,10}",
    ]
}

/// Strings around the decoders' limits (32, 64, 128, 200, 2000 characters) and odd ones.
fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9_.:-]{0,16}",
        "\\PC{0,24}",
        (prop::sample::select(&[31usize, 32, 33, 63, 64, 65, 127, 128, 129, 200, 201, 2001][..]))
            .prop_map(|n| "x".repeat(n)),
        Just("é".repeat(128)),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        (-10i64..200).prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        (-1.0f64..101.0).prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
    ]
}

/// Any JSON value, nested a few levels, with objects keyed mostly by known field names.
pub fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            object_of(inner),
        ]
    })
}

/// A JSON object whose values come from `values`.
pub fn object_of(values: impl Strategy<Value = Value>) -> impl Strategy<Value = Value> {
    prop::collection::vec((key(), values), 0..8)
        .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<String, Value>>()))
}

/// Any JSON object (the shape every decoder expects at the top).
pub fn json_object() -> impl Strategy<Value = Value> {
    object_of(json())
}

/// Ids the gateway accepts (`valid_id`): `[A-Za-z0-9._-]{1,128}`.
pub fn id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,128}"
}
