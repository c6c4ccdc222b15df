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

/// `ok_mirrored` as a type: serialized straight into the packet, without a JSON tree (the
/// heartbeat's ack, on the hot path). `D` must serialize as an object: its fields are repeated
/// at the top level.
pub struct OkMirrored<D> {
    data: D,
    timestamp: String,
}

impl<D: Serialize> OkMirrored<D> {
    pub fn new(data: D) -> Self {
        OkMirrored {
            data,
            timestamp: iso_now(),
        }
    }
}

impl<D: Serialize> Serialize for OkMirrored<D> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wire<'a, D> {
            success: bool,
            data: &'a D,
            timestamp: &'a str,
            #[serde(flatten)]
            mirrored: &'a D,
        }
        Wire {
            success: true,
            data: &self.data,
            timestamp: &self.timestamp,
            mirrored: &self.data,
        }
        .serialize(s)
    }
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
        let typed = serde_json::to_value(OkMirrored::new(hb.clone())).unwrap_or_default();
        let mut tree = ok_mirrored(data(&hb));
        tree["timestamp"] = typed["timestamp"].clone();
        assert_eq!(
            typed, tree,
            "the typed ack is the envelope ok_mirrored builds"
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
