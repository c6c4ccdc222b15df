//! The internal API bodies over real HTTP: whatever the body, each route answers 201 or the
//! contract's error (`{statusCode, message: "<field>: <problem>", error}`), never a 5xx; valid
//! bodies are accepted with the contract's response.

use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};
use vizora_gateway_tests::*;

use super::{CASES, KNOWN_KEYS, config, embedded_gateway, id, json, json_object};

/// Every internal route that takes a body.
const ROUTES: &[&str] = &[
    "/api/push/playlist",
    "/api/push/content",
    "/api/push/qr-overlay",
    "/api/push/broadcast",
    "/api/internal/command",
    "/api/commands/broadcast",
    "/api/internal/device-revoked",
    "/api/internal/tenant-entitlement",
    "/api/notifications/broadcast",
];

/// A body: mostly JSON objects with the routes' field names, sometimes any JSON or raw bytes.
#[derive(Clone, Debug)]
enum Body {
    Json(Value),
    Raw(Vec<u8>),
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        6 => json_object().prop_map(Body::Json),
        2 => json().prop_map(Body::Json),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Body::Raw),
    ]
}

struct Api {
    rt: tokio::runtime::Runtime,
    api: api::Api,
    gw: Gateway,
    _dir: tempfile::TempDir,
}

impl Api {
    fn start() -> Api {
        let (rt, gw, dir) = embedded_gateway();
        Api {
            rt,
            api: gw.api(),
            gw,
            _dir: dir,
        }
    }

    fn post(&self, path: &str, body: &Body) -> (u16, Value) {
        let bytes = match body {
            Body::Json(v) => v.to_string().into_bytes(),
            Body::Raw(b) => b.clone(),
        };
        self.rt.block_on(self.api.post_raw(path, bytes))
    }
}

/// The field named by a 400: `body`, or a path of the routes' field names (`deviceIds[3]` too).
fn known_field(field: &str) -> bool {
    field == "body"
        || field.split('.').all(|part| {
            let name = part.split_once('[').map_or(part, |(n, _)| n);
            KNOWN_KEYS.contains(&name)
        })
}

#[test]
fn any_body_gets_201_or_the_documented_error() {
    let api = Api::start();
    let mut runner = TestRunner::new(config(CASES * 2));
    runner
        .run(&(prop::sample::select(ROUTES), body()), |(route, body)| {
            let (status, res) = api.post(route, &body);
            match status {
                201 => prop_assert!(res.is_object(), "{route} {body:?}: {res}"),
                400 => {
                    let message = res["message"].as_str().unwrap_or_default().to_string();
                    prop_assert_eq!(
                        &res,
                        &json!({"statusCode": 400, "message": message, "error": "Bad Request"}),
                        "{} {:?}",
                        route,
                        body
                    );
                    let (field, problem) = message.split_once(": ").unwrap_or(("", ""));
                    prop_assert!(
                        known_field(field) && !problem.is_empty(),
                        "{route}: a 400 names the field: {message}"
                    );
                    if let Body::Json(v) = &body
                        && !v.is_object()
                    {
                        prop_assert_eq!(message, "body: must be a JSON object");
                    }
                }
                _ => prop_assert!(false, "{route} {body:?}: {status} {res}"),
            }
            Ok(())
        })
        .unwrap();
    api.rt.block_on(crate::common::assert_alive(
        &api.gw,
        "after arbitrary bodies",
    ));
}

fn command() -> impl Strategy<Value = Value> {
    let kind = "[A-Za-z0-9_:-]{1,64}";
    prop_oneof![
        kind.prop_map(Value::from),
        (kind, prop::option::of(json_object())).prop_map(|(t, p)| match p {
            Some(p) => json!({"type": t, "payload": p}),
            None => json!({"type": t}),
        }),
    ]
}

#[test]
fn valid_bodies_are_accepted() {
    let api = Api::start();
    let mut runner = TestRunner::new(config(CASES));
    runner
        .run(
            &(
                id(),
                command(),
                prop::collection::vec(id(), 1..5),
                "[a-z0-9:_-]{1,64}",
            ),
            |(dev, cmd, ids, event)| {
                let (status, res) = api.post(
                    "/api/internal/command",
                    &Body::Json(json!({"deviceId": dev, "command": cmd})),
                );
                prop_assert_eq!(status, 201, "{}", res);
                prop_assert_eq!(&res["success"], &json!(true));
                prop_assert!(
                    res["commandId"].as_str().is_some_and(|c| !c.is_empty()),
                    "{res}"
                );
                prop_assert_eq!(&res["delivery"], &json!("queued"), "nobody is connected");

                let (status, res) = api.post(
                    "/api/commands/broadcast",
                    &Body::Json(json!({"deviceIds": ids, "command": cmd})),
                );
                prop_assert_eq!(status, 201, "{}", res);
                let mut unique = ids.clone();
                unique.sort();
                unique.dedup();
                let named: Vec<String> = res["commandIds"]
                    .as_object()
                    .map(|m| m.keys().cloned().collect())
                    .unwrap_or_default();
                prop_assert_eq!(named, unique, "one command id per distinct device");
                prop_assert_eq!(
                    &res["queued"],
                    &json!(res["commandIds"].as_object().map_or(0, |m| m.len()))
                );

                let (status, res) = api.post(
                    "/api/push/broadcast",
                    &Body::Json(json!({"organizationId": ORG_A, "event": event, "data": {"n": 1}})),
                );
                prop_assert_eq!(status, 201, "{}", res);
                Ok(())
            },
        )
        .unwrap();
}

#[test]
fn device_ids_of_the_wrong_type_are_refused_naming_the_field() {
    let api = Api::start();
    let mut runner = TestRunner::new(config(CASES));
    let wrong = prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        Just(json!([])),
        Just(json!({})),
    ];
    runner
        .run(&(prop::sample::select(ROUTES), wrong), |(route, v)| {
            let key = match route {
                "/api/commands/broadcast" => "deviceIds",
                "/api/push/broadcast"
                | "/api/internal/tenant-entitlement"
                | "/api/notifications/broadcast" => "organizationId",
                _ => "deviceId",
            };
            let (status, res) = api.post(route, &Body::Json(json!({key: v})));
            prop_assert_eq!(status, 400, "{} {}", route, res);
            let want = if key == "deviceIds" {
                match &v {
                    Value::Array(_) => "deviceIds: must not be empty",
                    _ => "deviceIds: must be an array of device ids",
                }
            } else {
                match key {
                    "deviceId" => "deviceId: must be a string",
                    _ => "organizationId: must be a string",
                }
            };
            prop_assert_eq!(&res["message"], &json!(want), "{}", route);
            Ok(())
        })
        .unwrap();
}
