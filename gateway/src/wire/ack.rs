//! The original's ack envelope: `{success:true, data?, timestamp}` or `{success:false, error, timestamp}`,
//! and the `data` a service answers with.

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::iso_now;
use super::outgoing::Command;

pub fn ok(data: Option<Value>) -> Value {
    let mut m = Map::new();
    m.insert("success".into(), Value::Bool(true));
    if let Some(d) = data {
        m.insert("data".into(), d);
    }
    m.insert("timestamp".into(), Value::String(iso_now()));
    Value::Object(m)
}

/// `ok` with `data`'s fields also at the top level: the shipped players read
/// `response.commands` there.
pub fn ok_mirrored(data: Value) -> Value {
    let mut env = ok(Some(data.clone()));
    if let (Some(m), Some(d)) = (env.as_object_mut(), data.as_object()) {
        for (k, v) in d {
            m.insert(k.clone(), v.clone());
        }
    }
    env
}

pub fn err(message: impl Into<String>) -> Value {
    json!({"success": false, "error": message.into(), "timestamp": iso_now()})
}

/// `data` of a service answer, as JSON.
pub fn data<T: Serialize>(d: &T) -> Value {
    super::to_value(d)
}

/// A heartbeat's `data`: when to beat next, and the queued commands (always `[]` for clients
/// that sent `auth.capabilities`: theirs travel as events).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatAck {
    pub next_heartbeat_in: u64,
    pub commands: Vec<Command>,
}

/// A stored screenshot's `data`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScreenshotSaved {
    pub saved: bool,
    pub url: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_serialize_as_the_old_json_literals() {
        let hb = HeartbeatAck {
            next_heartbeat_in: 15_000,
            commands: Vec::new(),
        };
        assert_eq!(
            data(&hb).to_string(),
            json!({"nextHeartbeatIn": 15_000u64, "commands": []}).to_string()
        );
        let s = ScreenshotSaved {
            saved: true,
            url: "u".into(),
        };
        assert_eq!(
            data(&s).to_string(),
            json!({"saved": true, "url": "u"}).to_string()
        );
    }
}
