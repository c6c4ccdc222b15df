//! Helpers shared by the integration tests (modules of `main.rs`; each uses it as `crate::common`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};
use serde_json::{Value, json};
use vizora_gateway_tests::*;
use vizora_sioclient::{Client, ConnectError, Transport, connect};

/// Generous bound for anything that should happen "at once".
pub const T: Duration = Duration::from_secs(5);

/// The transports every device scenario runs over.
pub const TRANSPORTS: [Transport; 2] = [Transport::Websocket, Transport::Polling];

/// Connects a device with its token in `auth.token`.
pub async fn device(gw: &Gateway, dev: &str, org: &str, t: Transport) -> Client {
    connect(
        gw.client()
            .transport(t)
            .auth(json!({"token": device_token(dev, org)})),
    )
    .await
    .unwrap_or_else(|e| panic!("device {dev} should connect over {t:?}: {e}"))
}

/// Connects a dashboard with a user token in `auth.token`.
pub async fn dashboard(gw: &Gateway, user: &str, org: &str, t: Transport) -> Client {
    connect(
        gw.client()
            .transport(t)
            .auth(json!({"token": user_token(user, org)})),
    )
    .await
    .unwrap_or_else(|e| panic!("dashboard {user} should connect over {t:?}: {e}"))
}

/// Asserts a connect attempt is refused with a `connect_error` whose message is exactly `msg`.
pub fn assert_refused(r: Result<Client, ConnectError>, msg: &str, what: &str) {
    match r {
        Err(ConnectError::Refused { message, .. }) => {
            assert_eq!(message, msg, "{what}: connect_error message")
        }
        Err(e) => panic!("{what}: expected connect_error {msg:?}, got {e:?}"),
        Ok(c) => panic!("{what}: expected connect_error {msg:?}, but connected ({c:?})"),
    }
}

/// ISO-8601 with milliseconds and `Z`, like JavaScript's `toISOString()`.
pub fn is_iso_ms(v: &Value) -> bool {
    let Some(s) = v.as_str() else { return false };
    let b = s.as_bytes();
    b.len() == 24
        && b[23] == b'Z'
        && b[19] == b'.'
        && b[10] == b'T'
        && chrono::DateTime::parse_from_rfc3339(s).is_ok()
}

pub fn assert_iso_ms(v: &Value, what: &str) {
    assert!(
        is_iso_ms(v),
        "{what}: {v} is not an ISO-8601 timestamp with ms and Z"
    );
}

/// A success ack in the original envelope (`{success:true, data?, timestamp}`).
pub fn assert_ok_ack(ack: &Value, what: &str) {
    assert_eq!(ack["success"], true, "{what}: {ack}");
    assert!(ack.get("error").is_none(), "{what}: {ack}");
    assert_iso_ms(&ack["timestamp"], what);
}

/// An error ack (`{success:false, error, timestamp}`, no `data`); returns the error string.
pub fn assert_err_ack(ack: &Value, what: &str) -> String {
    assert_eq!(ack["success"], false, "{what}: {ack}");
    assert!(ack.get("data").is_none(), "{what}: {ack}");
    assert_iso_ms(&ack["timestamp"], what);
    ack["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: error must be a string: {ack}"))
        .to_string()
}

/// A direct connection to the test database.
pub async fn db_conn(db: &DbTarget) -> DatabaseConnection {
    Database::connect(db.url()).await.unwrap()
}

/// Runs `sql` (written with `$n` placeholders) and returns all rows as JSON objects of strings
/// (every selected column must be CAST to TEXT by the caller where types differ by backend).
pub async fn rows(conn: &DatabaseConnection, sql: &str, values: Vec<sea_orm::Value>) -> Vec<Value> {
    let backend = conn.get_database_backend();
    let sql = if backend == DbBackend::Sqlite {
        sql.replace('$', "?")
    } else {
        sql.to_string()
    };
    let res = conn
        .query_all_raw(Statement::from_sql_and_values(backend, &sql, values))
        .await
        .unwrap_or_else(|e| panic!("query failed: {e}\n{sql}"));
    res.iter()
        .map(|r| {
            let mut m = serde_json::Map::new();
            for col in r.column_names() {
                let v: Option<String> = r.try_get("", &col).unwrap_or(None);
                m.insert(col, v.map(Value::String).unwrap_or(Value::Null));
            }
            Value::Object(m)
        })
        .collect()
}

/// `SELECT COUNT(*)` as an integer.
pub async fn count(conn: &DatabaseConnection, sql: &str, values: Vec<sea_orm::Value>) -> i64 {
    let backend = conn.get_database_backend();
    let sql = if backend == DbBackend::Sqlite {
        sql.replace('$', "?")
    } else {
        sql.to_string()
    };
    let r = conn
        .query_one_raw(Statement::from_sql_and_values(backend, &sql, values))
        .await
        .unwrap()
        .unwrap();
    r.try_get_by_index::<i64>(0).unwrap()
}

/// `devices.status` of one device.
pub async fn device_status(conn: &DatabaseConnection, dev: &str) -> String {
    let r = rows(
        conn,
        r#"SELECT "status" AS st FROM devices WHERE "id" = $1"#,
        vec![dev.into()],
    )
    .await;
    r[0]["st"].as_str().unwrap().to_string()
}

/// Waits until `devices.status` of `dev` is `want`.
pub async fn wait_status(conn: &DatabaseConnection, dev: &str, want: &str) {
    eventually(
        Duration::from_secs(10),
        &format!("devices.status of {dev} to be {want}"),
        || async { (device_status(conn, dev).await == want).then_some(()) },
    )
    .await;
}

/// Waits for the next event named `ev` and panics if it does not come.
pub async fn expect_event(c: &Client, ev: &str, what: &str) -> Value {
    c.wait_for(ev, T)
        .await
        .unwrap_or_else(|| panic!("{what}: no `{ev}` event (buffered: {:?})", c.drain_events()))
}

/// A round trip that proves the socket is alive and validation did not break it.
pub async fn assert_heartbeat_works(c: &Client, what: &str) {
    assert!(c.is_connected(), "{what}: socket must stay connected");
    let ack = c
        .emit_with_ack("heartbeat", json!({"metrics": {"cpuUsage": 1}}), T)
        .await
        .unwrap_or_else(|e| panic!("{what}: heartbeat after it failed: {e}"));
    assert_ok_ack(&ack, what);
    assert_eq!(ack["data"]["nextHeartbeatIn"], 15000, "{what}");
}

/// Waits until `/api/health/live` answers 200.
pub async fn assert_alive(gw: &Gateway, what: &str) {
    let (status, body) = gw.api().get_text("/api/health/live", &[]).await;
    assert_eq!(status, 200, "{what}: gateway must stay alive: {body}");
}

/// The sum of the samples in a Prometheus exposition whose line starts with `line_start` (a
/// metric name, or a name and the start of its labels); `None` when no line does.
pub fn metric_sum(text: &str, line_start: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(line_start))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// A replica's `/metrics` (tests run on loopback, where no token is asked for).
pub async fn metrics_text(gw: &Gateway) -> String {
    let (status, text) = gw.api().get_text("/metrics", &[]).await;
    assert_eq!(status, 200, "/metrics: {text}");
    text
}

/// The sum of a metric's samples whose line starts with `name` and carries `label` (e.g.
/// `event="fence"`, or `""` for all).
pub async fn metric(gw: &Gateway, name: &str, label: &str) -> f64 {
    metrics_text(gw)
        .await
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
