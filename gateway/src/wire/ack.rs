//! The original's ack envelope: `{success:true, data?, timestamp}` or `{success:false, error, timestamp}`.

use serde_json::{Map, Value, json};

use super::iso_now;

pub fn ok(data: Option<Value>) -> Value {
    let mut m = Map::new();
    m.insert("success".into(), Value::Bool(true));
    if let Some(d) = data {
        m.insert("data".into(), d);
    }
    m.insert("timestamp".into(), Value::String(iso_now()));
    Value::Object(m)
}

pub fn err(message: impl Into<String>) -> Value {
    json!({"success": false, "error": message.into(), "timestamp": iso_now()})
}
