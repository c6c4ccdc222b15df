//! The internal HTTP API from a test's point of view.

use serde_json::Value;

use crate::fixture::INTERNAL_KEY;

pub struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str) -> Api {
        Api {
            base: base.to_string(),
            http: reqwest::Client::new(),
        }
    }

    /// POST with the internal key; returns status and JSON body.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.post_with_key(path, body, Some(INTERNAL_KEY)).await
    }

    pub async fn post_with_key(&self, path: &str, body: Value, key: Option<&str>) -> (u16, Value) {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(&body);
        if let Some(k) = key {
            req = req.header("x-internal-api-key", k);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("x-internal-api-key", INTERNAL_KEY)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .header("x-internal-api-key", INTERNAL_KEY)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Waits (up to 10 s) until the presence route reports `device` offline.
    pub async fn wait_offline(&self, device: &str) {
        crate::eventually(
            std::time::Duration::from_secs(10),
            &format!("{device} offline"),
            || async {
                let (_, p) = self
                    .get(&format!("/api/internal/devices/{device}/presence"))
                    .await;
                (p["online"] == false).then_some(())
            },
        )
        .await;
    }

    pub async fn get_text(&self, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let mut req = self.http.get(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }

    /// Sends a command to a device (`POST /api/internal/command`).
    pub async fn command(&self, device: &str, kind: &str, payload: Option<Value>) -> (u16, Value) {
        let mut body = serde_json::json!({"deviceId": device, "command": kind});
        if let Some(p) = payload {
            body["payload"] = p;
        }
        self.post("/api/internal/command", body).await
    }
}
