//! The device event decoders (`wire::events`): any payload is decided without a panic, what is
//! accepted is within the documented bounds and comes back unchanged, and every refusal names a
//! field with one of the documented problems (the ack's `error` is `"<field> <problem>"`).

use proptest::prelude::*;
use serde_json::{Value, json};
use vizora_gateway::wire::events::{self, ERROR_TYPES, ID_MAX, MAX_IMAGE_SIDE, ROOM_MAX};
use vizora_gateway::wire::validate::{Invalid, is_request_id};

use super::{CASES, KNOWN_KEYS, config, id, json, json_object};

/// Screenshot `imageData` limit used here (the gateway derives it from `SCREENSHOT_MAX_BYTES`).
const MAX_CHARS: usize = 4096;

/// The problems the decoders report, as the contract words them.
fn documented(problem: &str) -> bool {
    const EXACT: &[&str] = &[
        "must be an object",
        "must be a string",
        "is required",
        "must be a number",
        "must be a boolean",
        "must be a whole number",
        "must be an object or a content id string",
        "must be a number or a string",
        "must match [A-Za-z0-9_-]{1,64}",
        "too large",
        "must be a base64 string",
        "must be at most 4096 bytes of JSON",
    ];
    EXACT.contains(&problem)
        || (problem.starts_with("must be at most ") && problem.ends_with(" characters"))
        || problem.starts_with("must be a number between ")
        || problem.starts_with("must be a number >= ")
        || problem == format!("must be one of {}", ERROR_TYPES.join(", "))
}

/// A refusal names the payload itself or a path of known fields, with a documented problem.
fn assert_documented(e: &Invalid, what: &str) {
    let field_ok = e.field == "payload"
        || (!e.field.is_empty() && e.field.split('.').all(|k| KNOWN_KEYS.contains(&k)));
    assert!(field_ok, "{what}: refusal names an unknown field: {e:?}");
    assert!(
        documented(&e.problem),
        "{what}: undocumented problem: {e:?}"
    );
    assert_eq!(e.to_string(), format!("{} {}", e.field, e.problem));
}

fn in_range(v: Option<&Value>, lo: Option<f64>, hi: Option<f64>) -> bool {
    v.is_none_or(|v| {
        v.as_f64()
            .is_some_and(|n| lo.is_none_or(|lo| n >= lo) && hi.is_none_or(|hi| n <= hi))
    })
}

/// Every decoder on one payload: each either accepts within its bounds or refuses as documented.
fn decide_all(v: &Value) {
    match events::heartbeat(v) {
        Ok(hb) => {
            if let Some(m) = &hb.metrics {
                let m = m.as_object().expect("metrics stay an object");
                assert!(in_range(m.get("cpuUsage"), Some(0.0), Some(100.0)), "{v}");
                assert!(
                    in_range(m.get("memoryUsage"), Some(0.0), Some(100.0)),
                    "{v}"
                );
                assert!(in_range(m.get("diskUsage"), Some(0.0), None), "{v}");
                assert!(in_range(m.get("networkLatency"), Some(0.0), None), "{v}");
            }
            if let Some(Value::String(s)) = &hb.current_content {
                assert!(s.chars().count() <= ID_MAX, "{v}");
            }
        }
        Err(e) => assert_documented(&e, "heartbeat"),
    }
    match events::impression(v) {
        Ok(i) => {
            assert!(!i.content_id.is_empty() && i.content_id.chars().count() <= ID_MAX);
            assert_eq!(v["contentId"], json!(i.content_id));
            assert!(
                i.completion_percentage
                    .is_none_or(|p| (0.0..=100.0).contains(&p))
            );
        }
        Err(e) => assert_documented(&e, "content:impression"),
    }
    match events::content_error(v) {
        Ok(ce) => {
            assert!(ERROR_TYPES.contains(&ce.error_type.as_str()), "{v}");
            assert!(ce.context.is_none_or(|c| c.to_string().len() <= 4096));
        }
        Err(e) => assert_documented(&e, "content:error"),
    }
    match events::playlist_request(v) {
        Ok(r) => assert_eq!(r.force_refresh, v["forceRefresh"] == json!(true), "{v}"),
        Err(e) => assert_documented(&e, "playlist:request"),
    }
    match events::screenshot_response(v, MAX_CHARS) {
        Ok(s) => {
            assert!(is_request_id(&s.request_id), "{v}");
            assert!(!s.image_data.is_empty() && s.image_data.len() <= MAX_CHARS);
            for side in [s.width, s.height] {
                assert!((1..=MAX_IMAGE_SIDE as u32).contains(&side), "{v}");
            }
        }
        Err(e) => assert_documented(&e, "screenshot:response"),
    }
    // A refusal is answered "Organization ID required" / "Room name required" (the socket
    // layer's error table, `socket::error`): only for a missing, empty or too long value.
    match events::organization_id(v) {
        Some(o) => assert_eq!(v["organizationId"], json!(o)),
        None => assert!(
            v["organizationId"]
                .as_str()
                .is_none_or(|s| s.is_empty() || s.len() > ID_MAX),
            "{v}"
        ),
    }
    match events::room(v) {
        Some(r) => {
            assert_eq!(v["room"], json!(r));
            assert!(r.len() <= ROOM_MAX);
        }
        None => assert!(
            v["room"]
                .as_str()
                .is_none_or(|s| s.is_empty() || s.len() > ROOM_MAX),
            "{v}"
        ),
    }
}

fn opt<T: std::fmt::Debug>(s: impl Strategy<Value = T>) -> impl Strategy<Value = Option<T>> {
    prop::option::of(s)
}

/// Puts the `Some` fields into an object.
fn object(fields: Vec<(&str, Option<Value>)>) -> Value {
    Value::Object(
        fields
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_string(), v?)))
            .collect(),
    )
}

proptest! {
    #![proptest_config(config(CASES * 4))]

    #[test]
    fn any_payload_is_decided_as_documented(v in json()) {
        decide_all(&v);
    }

    #[test]
    fn any_object_is_decided_as_documented(v in json_object()) {
        decide_all(&v);
    }
}

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn valid_heartbeats_keep_their_metrics(
        cpu in opt(0.0f64..=100.0),
        mem in opt(0.0f64..=100.0),
        disk in opt(0.0f64..1e12),
        temp in opt(-50.0f64..150.0),
        content in opt(prop_oneof![
            id().prop_map(Value::String),
            (id(), id()).prop_map(|(c, p)| json!({"contentId": c, "playlistId": p})),
        ]),
        ts in prop_oneof![Just(Value::Null), any::<i64>().prop_map(Value::from), Just(json!("2026-01-01T00:00:00.000Z"))],
        version in opt("[0-9.]{1,64}"),
    ) {
        let v = object(vec![
            ("metrics", Some(object(vec![
                ("cpuUsage", cpu.map(Value::from)),
                ("memoryUsage", mem.map(Value::from)),
                ("diskUsage", disk.map(Value::from)),
                ("temperature", temp.map(Value::from)),
                // Extras the players send are dropped, not refused.
                ("storageUsed", Some(json!(7))),
            ]))),
            ("currentContent", content.clone()),
            ("timestamp", Some(ts)),
            ("appVersion", version.clone().map(Value::from)),
            ("status", Some(json!("online"))),
        ]);
        let hb = events::heartbeat(&v).unwrap();
        let m = hb.metrics.unwrap();
        for (k, want) in [("cpuUsage", cpu), ("memoryUsage", mem), ("diskUsage", disk), ("temperature", temp)] {
            prop_assert_eq!(m.get(k).and_then(Value::as_f64), want, "{}", k);
        }
        prop_assert!(m.get("storageUsed").is_none());
        prop_assert_eq!(hb.current_content, content);
        prop_assert_eq!(hb.extra.get("appVersion").cloned(), version.map(Value::from));
    }

    #[test]
    fn valid_impressions_come_back_unchanged(
        content in "\\PC{1,128}",
        playlist in opt(id()),
        duration in opt(0.0f64..=i32::MAX as f64),
        completion in opt(0.0f64..=100.0),
    ) {
        let v = object(vec![
            ("contentId", Some(json!(content))),
            ("playlistId", playlist.clone().map(Value::from)),
            ("duration", duration.map(Value::from)),
            ("completionPercentage", completion.map(Value::from)),
            ("timestamp", Some(json!(1_700_000_000_000i64))),
        ]);
        let i = events::impression(&v).unwrap();
        prop_assert_eq!(i, events::Impression {
            content_id: content,
            playlist_id: playlist,
            duration,
            completion_percentage: completion,
        });
    }

    #[test]
    fn valid_content_errors_come_back_unchanged(
        content in id(),
        kind in prop::sample::select(&ERROR_TYPES[..]),
        message in opt("\\PC{0,200}"),
        code in opt("[A-Z_]{1,64}"),
    ) {
        let v = object(vec![
            ("contentId", Some(json!(content))),
            ("errorType", Some(json!(kind))),
            ("errorMessage", message.clone().map(Value::from)),
            ("errorCode", code.clone().map(Value::from)),
        ]);
        let e = events::content_error(&v).unwrap();
        prop_assert_eq!(e.content_id, content);
        prop_assert_eq!(e.error_type, kind);
        prop_assert_eq!(e.error_message, message);
        prop_assert_eq!(e.error_code, code);
    }

    #[test]
    fn valid_screenshots_come_back_unchanged(
        request in "[A-Za-z0-9_-]{1,64}",
        data in "[A-Za-z0-9+/]{1,4096}",
        width in 1u32..=16_384,
        height in 1u32..=16_384,
    ) {
        let v = json!({"requestId": request, "imageData": data, "width": width, "height": height});
        let s = events::screenshot_response(&v, MAX_CHARS).unwrap();
        prop_assert_eq!((s.request_id, s.image_data, s.width, s.height), (request, data, width, height));
    }

    #[test]
    fn join_and_leave_bodies_round_trip(org in id(), room in "[a-z]{1,8}:[A-Za-z0-9._-]{1,120}") {
        prop_assert_eq!(events::organization_id(&json!({"organizationId": org})), Some(org));
        prop_assert_eq!(events::room(&json!({"room": room})), Some(room));
    }

    #[test]
    fn strings_over_their_limit_are_refused_naming_the_field(
        (field, limit) in prop::sample::select(&[
            ("contentId", ID_MAX), ("playlistId", ID_MAX), ("errorMessage", 2000), ("errorCode", 64),
        ][..]),
        extra in 1usize..40,
    ) {
        let long = "y".repeat(limit + extra);
        let mut v = json!({"contentId": "c", "errorType": "timeout"});
        v[field] = json!(long);
        let e = events::content_error(&v).unwrap_err();
        prop_assert_eq!(e.field, field);
        prop_assert_eq!(e.problem, format!("must be at most {limit} characters"));
    }

    #[test]
    fn out_of_range_metrics_are_refused_with_their_bounds(
        field in prop::sample::select(&["cpuUsage", "memoryUsage"][..]),
        n in prop_oneof![-1e9f64..-0.001, 100.001f64..1e9],
    ) {
        let e = events::heartbeat(&json!({"metrics": {field: n}})).unwrap_err();
        prop_assert_eq!(e.to_string(), format!("metrics.{field} must be a number between 0 and 100"));
    }

    #[test]
    fn wrongly_typed_fields_are_refused_naming_the_field(
        v in prop_oneof![Just(json!(true)), Just(json!([1])), Just(json!({"a": 1})), any::<i64>().prop_map(Value::from)],
    ) {
        let e = events::impression(&json!({"contentId": v})).unwrap_err();
        prop_assert_eq!(e.to_string(), "contentId must be a string");
        let e = events::content_error(&json!({"contentId": "c", "errorType": "timeout", "errorMessage": v})).unwrap_err();
        prop_assert_eq!(e.to_string(), "errorMessage must be a string");
    }
}
