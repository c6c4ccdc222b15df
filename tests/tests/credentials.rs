//! The original's latest players (issue 7, contract §10): near-expiry token refresh with its
//! grace record and cooldown (also racing on two replicas), token binding at the handshake and
//! on the next heartbeat, revocation across replicas, tenant suspension, the dashboard session
//! sweep, notification broadcasts, acknowledged delivery with replay, queued commands as events
//! for capabilities clients, and the content URL path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::Duration;

use common::*;
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use vizora_gateway::auth::{mint, token_hash};
use vizora_gateway_tests::*;
use vizora_sioclient::{Client, CloseReason, Transport, connect};

const DAY: i64 = 86_400;

/// A 90-day pairing token of org A with `ttl_secs` of validity left.
fn token_with_ttl(dev: &str, ttl_secs: i64) -> String {
    let now = chrono::Utc::now().timestamp();
    let exp = now + ttl_secs;
    mint::device_token_at(
        DEVICE_SECRET,
        dev,
        &format!("mac-{dev}"),
        ORG_A,
        exp - 90 * DAY,
        exp,
    )
    .unwrap()
}

/// Connects a device with an explicit auth payload.
async fn device_with(gw: &Gateway, auth: Value, manual_acks: bool) -> Client {
    let mut opts = gw.client().transport(Transport::Websocket).auth(auth);
    opts = if manual_acks {
        opts.manual_acks()
    } else {
        opts.auto_ack(vec![json!({"ok": true})])
    };
    connect(opts).await.expect("device connects")
}

async fn try_device(gw: &Gateway, token: &str) -> Result<Client, vizora_sioclient::ConnectError> {
    connect(
        gw.client()
            .transport(Transport::Websocket)
            .auth(json!({"token": token})),
    )
    .await
}

async fn exec(db: &DbTarget, sql: &str) {
    let conn = db_conn(db).await;
    conn.execute_unprepared(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Binds the device's row to `value` (`devices."jwtToken"`), as a pairing would.
async fn bind_row(db: &DbTarget, dev: &str, value: &str) {
    exec(
        db,
        &format!(r#"UPDATE devices SET "jwtToken" = '{value}' WHERE "id" = '{dev}'"#),
    )
    .await;
}

async fn jwt_token(db: &DbTarget, dev: &str) -> Option<String> {
    let conn = db_conn(db).await;
    let r = rows(
        &conn,
        r#"SELECT "jwtToken" AS t FROM devices WHERE "id" = $1"#,
        vec![dev.into()],
    )
    .await;
    r[0]["t"].as_str().map(str::to_string)
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

async fn ttl(redis: &RedisServer, key: &str) -> i64 {
    redis::cmd("TTL")
        .arg(key)
        .query_async(&mut redis.conn().await)
        .await
        .unwrap()
}

async fn redis_set(redis: &RedisServer, key: &str, value: &str) {
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();
}

/// A gateway on SQLite with its own redis-server.
async fn redis_gateway(
    tweak: impl Fn(GatewayOptions) -> GatewayOptions,
) -> (Gateway, RedisServer, DbTarget, tempfile::TempDir) {
    let redis = RedisServer::start().await;
    let (db, _pg, dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(tweak(GatewayOptions::new(db.clone()).redis(&redis.url()))).await;
    (gw, redis, db, dir)
}

#[tokio::test]
async fn near_expiry_token_is_refreshed_with_grace_and_cooldown() {
    let (gw, redis, db, _dir) = redis_gateway(|o| o).await;
    let old = token_with_ttl(DEV_A2, 10 * DAY);

    let c = device_with(&gw, json!({"token": old}), false).await;
    let fresh = expect_event(&c, "token:refresh", "near-expiry connect").await;
    let new = fresh["token"].as_str().unwrap().to_string();
    let (o, n) = (claims(&old), claims(&new));
    for k in ["sub", "deviceIdentifier", "organizationId", "type"] {
        assert_eq!(o[k], n[k], "claim {k} kept");
    }
    let lifetime = n["exp"].as_i64().unwrap() - chrono::Utc::now().timestamp();
    assert!(
        (89 * DAY..=90 * DAY).contains(&lifetime),
        "90-day token: {lifetime}"
    );

    // The row is rotated to the new token's SHA-256, lowercase hex.
    assert_eq!(jwt_token(&db, DEV_A2).await, Some(token_hash(&new)));
    let h = token_hash(&new);
    assert!(
        h.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    // The grace record bridges old → new for as long as the old token lives.
    let grace: Value = serde_json::from_str(
        &redis
            .get(&format!("device:token:grace:{DEV_A2}"))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        grace,
        json!({"prev": token_hash(&old), "next": token_hash(&new)})
    );
    let grace_ttl = ttl(&redis, &format!("device:token:grace:{DEV_A2}")).await;
    assert!(
        (10 * DAY - 120..=10 * DAY).contains(&grace_ttl),
        "grace TTL {grace_ttl}"
    );
    let cooldown = ttl(&redis, &format!("device:token:refresh-cooldown:{DEV_A2}")).await;
    assert!((3500..=3600).contains(&cooldown), "cooldown TTL {cooldown}");
    c.disconnect().await;
    gw.api().wait_offline(DEV_A2).await;

    // The device reconnects on its old token before storing the new one: the grace admits it,
    // and the cooldown keeps a second token from being minted (connect and heartbeat).
    let again = device_with(&gw, json!({"token": old}), false).await;
    assert_heartbeat_works(&again, "old token within grace").await;
    assert_heartbeat_works(&again, "old token within grace").await;
    assert_eq!(
        jwt_token(&db, DEV_A2).await,
        Some(token_hash(&new)),
        "one rotation"
    );
    assert!(
        again
            .drain_events()
            .iter()
            .all(|e| e.name != "token:refresh"),
        "no second token within the cooldown"
    );
    again.disconnect().await;
    gw.api().wait_offline(DEV_A2).await;

    // The new token works; a far-from-expiry token is never refreshed, and neither is a
    // short-lived one (operators' and load tests' tokens).
    let short = device(&gw, DEV_A3, ORG_A, Transport::Websocket).await;
    assert_heartbeat_works(&short, "1-hour token").await;
    assert!(
        short
            .drain_events()
            .iter()
            .all(|e| e.name != "token:refresh")
    );
    assert_eq!(
        jwt_token(&db, DEV_A3).await,
        None,
        "no rotation for a short-lived token"
    );
    short.disconnect().await;
    let newc = device_with(&gw, json!({"token": new}), false).await;
    assert_heartbeat_works(&newc, "new token").await;
    assert!(
        newc.drain_events()
            .iter()
            .all(|e| e.name != "token:refresh")
    );
    newc.disconnect().await;
    gw.api().wait_offline(DEV_A2).await;

    // Re-paired meanwhile (another token bound): both old tokens are refused for good.
    let other = token_with_ttl(DEV_A2, 90 * DAY);
    bind_row(&db, DEV_A2, &token_hash(&other)).await;
    assert_refused(
        try_device(&gw, &old).await,
        "unauthorized: device_revoked",
        "old token after re-pair",
    );
    assert_refused(
        try_device(&gw, &new).await,
        "unauthorized: device_revoked",
        "refreshed token after re-pair",
    );
    let ok = try_device(&gw, &other)
        .await
        .expect("the re-paired token connects");
    ok.disconnect().await;
}

/// The refresh rides on heartbeats too: a near-expiry device whose connect found the cooldown
/// taken (another replica rotating, or the hour not over) gets its token on the first heartbeat
/// after the cooldown ends, without reconnecting.
#[tokio::test]
async fn a_near_expiry_device_is_refreshed_on_a_heartbeat_once_the_cooldown_ends() {
    let (gw, redis, db, _dir) = redis_gateway(|o| o).await;
    let old = token_with_ttl(DEV_A1, 3 * DAY);
    let cooldown = format!("device:token:refresh-cooldown:{DEV_A1}");
    redis_set(&redis, &cooldown, "1").await;

    let c = device_with(&gw, json!({"token": old}), false).await;
    // The connect's own attempt runs in its connect handler, beside the first events: wait until
    // it has met the cooldown, so only a heartbeat can issue the token below.
    eventually(
        T,
        "the connect's refresh attempt met the cooldown",
        || async {
            let text = common::metrics_text(&gw).await;
            let cooldowns = text
                .lines()
                .filter(|l| l.starts_with("vizora_gateway_events_total{"))
                .filter(|l| {
                    l.contains(r#"event="token:refresh""#) && l.contains(r#"result="cooldown""#)
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>();
            (cooldowns >= 1.0).then_some(())
        },
    )
    .await;
    assert!(
        c.drain_events().iter().all(|e| e.name != "token:refresh"),
        "no token while the cooldown holds"
    );
    assert_eq!(jwt_token(&db, DEV_A1).await, None, "row not rotated yet");

    let _: () = redis::cmd("DEL")
        .arg(&cooldown)
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();
    assert_heartbeat_works(&c, "after the cooldown").await;
    let fresh = expect_event(&c, "token:refresh", "heartbeat after the cooldown").await;
    let new = fresh["token"].as_str().unwrap();
    assert_eq!(claims(new)["sub"], DEV_A1);
    assert_eq!(jwt_token(&db, DEV_A1).await, Some(token_hash(new)));
    assert!((3500..=3600).contains(&ttl(&redis, &cooldown).await));
}

#[tokio::test]
async fn null_raw_and_hashed_rows_connect_and_a_foreign_hash_is_refused() {
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(GatewayOptions::new(db.clone())).await;
    let token = token_with_ttl(DEV_A3, 30 * DAY);
    for (what, stored) in [
        ("NULL row", None),
        ("raw-token row", Some(token.clone())),
        ("hash row", Some(token_hash(&token))),
        (
            "upper-case hash row",
            Some(token_hash(&token).to_ascii_uppercase()),
        ),
    ] {
        let v = stored.map(|s| format!("'{s}'")).unwrap_or("NULL".into());
        exec(
            &db,
            &format!(r#"UPDATE devices SET "jwtToken" = {v} WHERE "id" = '{DEV_A3}'"#),
        )
        .await;
        let c = try_device(&gw, &token)
            .await
            .unwrap_or_else(|e| panic!("{what} must connect: {e}"));
        assert_heartbeat_works(&c, what).await;
        c.disconnect().await;
        gw.api().wait_offline(DEV_A3).await;
    }
    bind_row(&db, DEV_A3, &token_hash("some-other-token")).await;
    // The middleware re-pairs and tells the gateway; the replica's cached row is dropped, and a
    // mismatch is always re-read from the database rather than decided on the cache.
    let (st, _) = gw
        .api()
        .post("/api/internal/device-revoked", json!({"deviceId": DEV_A3}))
        .await;
    assert!((200..300).contains(&st));
    assert_refused(
        try_device(&gw, &token).await,
        "unauthorized: device_revoked",
        "foreign hash",
    );
}

#[tokio::test]
async fn a_refresh_racing_on_two_replicas_yields_one_token() {
    let cluster = Cluster::start(2, 0, |o| o).await;
    let (r0, r1) = (&cluster.replicas[0], &cluster.replicas[1]);
    let old = token_with_ttl(DEV_A2, 5 * DAY);
    // Two sockets of one device reach two replicas at once; both replicas try to refresh.
    let (a, b) = tokio::join!(
        device_with(r0, json!({"token": old}), false),
        device_with(r1, json!({"token": old}), false)
    );
    let got = eventually(T, "a token:refresh on either socket", || async {
        for c in [&a, &b] {
            // A superseded socket's attempt releases its claim; the survivor's next heartbeat
            // (the players beat every 15 s) retries.
            if c.is_connected() {
                let _ = c.emit_with_ack("heartbeat", json!({}), T).await;
            }
            if let Some(v) = c.wait_for("token:refresh", Duration::from_millis(20)).await {
                return Some(v);
            }
        }
        None
    })
    .await;
    let new = got["token"].as_str().unwrap().to_string();
    eventually(T, "the rotated row", || async {
        (jwt_token(&cluster.db, DEV_A2).await == Some(token_hash(&new))).then_some(())
    })
    .await;
    // Whichever socket survived heartbeats (each one a refresh attempt): still one token.
    let live = if a.is_connected() { &a } else { &b };
    assert_heartbeat_works(live, "surviving socket").await;
    assert_heartbeat_works(live, "surviving socket").await;
    let more: usize = [&a, &b]
        .iter()
        .map(|c| {
            c.drain_events()
                .iter()
                .filter(|e| e.name == "token:refresh")
                .count()
        })
        .sum();
    assert_eq!(more, 0, "exactly one token minted cluster-wide");
    assert_eq!(jwt_token(&cluster.db, DEV_A2).await, Some(token_hash(&new)));
    let grace: Value = serde_json::from_str(
        &cluster
            .redis
            .get(&format!("device:token:grace:{DEV_A2}"))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(grace["next"], token_hash(&new));
}

#[tokio::test]
async fn revocation_reaches_a_device_on_another_replica() {
    let cluster = Cluster::start(2, 0, |o| o).await;
    let (r0, r1) = (&cluster.replicas[0], &cluster.replicas[1]);
    let c = device(r0, DEV_A1, ORG_A, Transport::Websocket).await;
    let (st, body) = r1
        .api()
        .post(
            "/api/internal/device-revoked",
            json!({"deviceId": DEV_A1, "reason": "deleted"}),
        )
        .await;
    assert!((200..300).contains(&st), "{st} {body}");
    assert_eq!(body["success"], true);
    assert!(body["message"].is_string());
    let ev = expect_event(&c, "device:revoked", "revoked on r1, socket on r0").await;
    assert_eq!(ev, json!({"reason": "deleted"}));
    assert_eq!(c.closed(T).await, Some(CloseReason::ServerDisconnect));

    // Default reason; 2xx also when the device is not connected.
    let c = device(r1, DEV_A2, ORG_A, Transport::Polling).await;
    let (st, _) = r0
        .api()
        .post("/api/internal/device-revoked", json!({"deviceId": DEV_A2}))
        .await;
    assert!((200..300).contains(&st));
    assert_eq!(
        expect_event(&c, "device:revoked", "default reason").await,
        json!({"reason": "revoked"})
    );
    let (st, body) = r0
        .api()
        .post(
            "/api/internal/device-revoked",
            json!({"deviceId": "dev-not-connected"}),
        )
        .await;
    assert!((200..300).contains(&st), "{body}");
    assert_eq!(body["success"], true);
    let (st, body) = r0
        .api()
        .post("/api/internal/device-revoked", json!({"reason": "x"}))
        .await;
    assert_eq!(st, 400);
    assert!(
        body["message"].as_str().unwrap().starts_with("deviceId"),
        "{body}"
    );
}

/// A replica whose 30-s row cache still holds the old binding refuses a token revoked through
/// another replica: the revocation's marker sends it back to the database.
#[tokio::test]
async fn a_replica_with_a_warm_cache_refuses_a_token_revoked_elsewhere() {
    let cluster = Cluster::start(2, 0, |o| o).await;
    let (r0, r1) = (&cluster.replicas[0], &cluster.replicas[1]);
    let token = token_with_ttl(DEV_A3, 60 * DAY);
    bind_row(&cluster.db, DEV_A3, &token_hash(&token)).await;
    // r1 caches the row (30 s) with the device's current token.
    let c = try_device(r1, &token).await.unwrap();
    c.disconnect().await;
    r1.api().wait_offline(DEV_A3).await;
    // The screen is re-paired; the middleware tells the gateway through r0.
    bind_row(&cluster.db, DEV_A3, &token_hash("re-paired")).await;
    let (st, _) = r0
        .api()
        .post("/api/internal/device-revoked", json!({"deviceId": DEV_A3}))
        .await;
    assert!((200..300).contains(&st));
    for (r, which) in [(r1, "r1, warm cache"), (r0, "r0")] {
        assert_refused(
            try_device(r, &token).await,
            "unauthorized: device_revoked",
            which,
        );
    }
}

/// A socket whose binding goes stale while it is connected, and that no revocation disconnect
/// reached (its replica was cut off from the adapter when the route ran), is caught by its next
/// heartbeat: the error ack, `error {message:"device_token_stale"}`, then a server disconnect.
#[tokio::test]
async fn a_stale_binding_is_caught_on_the_next_heartbeat() {
    let (gw, redis, db, _dir) = redis_gateway(|o| o).await;
    let token = token_with_ttl(DEV_A3, 60 * DAY);
    bind_row(&db, DEV_A3, &token_hash(&token)).await;
    let c = try_device(&gw, &token).await.unwrap();
    assert_heartbeat_works(&c, "bound token").await;

    // Re-paired: the row and the marker say another token (what the revocation route writes,
    // without its disconnect).
    let other = token_hash("re-paired");
    bind_row(&db, DEV_A3, &other).await;
    redis_set(&redis, &format!("device:token:current:{DEV_A3}"), &other).await;

    let ack = c.emit_with_ack("heartbeat", json!({}), T).await.unwrap();
    assert_eq!(
        assert_err_ack(&ack, "stale heartbeat"),
        "device_token_stale"
    );
    let err = expect_event(&c, "error", "stale socket").await;
    assert_eq!(err, json!({"message": "device_token_stale"}));
    assert_eq!(c.closed(T).await, Some(CloseReason::ServerDisconnect));
    assert_refused(
        try_device(&gw, &token).await,
        "unauthorized: device_revoked",
        "the stale token",
    );
}

#[tokio::test]
async fn tenant_suspension_is_announced_refuses_handshakes_and_resumes() {
    let cluster = Cluster::start(2, 0, |o| o).await;
    let (r0, r1) = (&cluster.replicas[0], &cluster.replicas[1]);
    let dev = device(r1, DEV_A1, ORG_A, Transport::Websocket).await;
    let dash = dashboard(r1, "ops", ORG_A, Transport::Websocket).await;
    let other = dashboard(r1, "ops-b", ORG_B, Transport::Websocket).await;

    let (st, body) = r0
        .api()
        .post(
            "/api/internal/tenant-entitlement",
            json!({"organizationId": ORG_A, "state": "paused"}),
        )
        .await;
    assert_eq!(st, 400);
    assert!(
        body["message"].as_str().unwrap().starts_with("state"),
        "{body}"
    );

    let (st, body) = r0
        .api()
        .post(
            "/api/internal/tenant-entitlement",
            json!({"organizationId": ORG_A, "state": "suspended", "reason": "payment_failed"}),
        )
        .await;
    assert!((200..300).contains(&st), "{body}");
    assert_eq!(body["success"], true);
    for (c, what) in [(&dev, "device"), (&dash, "dashboard")] {
        let ev = expect_event(c, "tenant:suspended", what).await;
        assert_eq!(ev["reason"], "payment_failed", "{what}");
    }
    // Every replica refuses new device handshakes of the suspended organisation.
    for r in [r0, r1] {
        eventually(T, "suspension known to the replica", || async {
            match try_device(r, &device_token(DEV_A2, ORG_A)).await {
                Err(vizora_sioclient::ConnectError::Refused { message, .. }) => {
                    eprintln!("suspension probe: {message}");
                    (message == "unauthorized: tenant_suspended").then_some(())
                }
                Ok(c) => {
                    c.disconnect().await;
                    None
                }
                Err(e) => {
                    eprintln!("suspension probe: {e:?}");
                    None
                }
            }
        })
        .await;
    }
    let b = device(r0, DEV_B1, ORG_B, Transport::Websocket).await;
    assert_heartbeat_works(&b, "other organisation").await;
    assert_heartbeat_works(&dev, "connected devices are not cut off").await;

    let (st, _) = r0
        .api()
        .post(
            "/api/internal/tenant-entitlement",
            json!({"organizationId": ORG_A, "state": "resumed"}),
        )
        .await;
    assert!((200..300).contains(&st));
    assert_eq!(
        expect_event(&dev, "tenant:resumed", "device").await["reason"],
        Value::Null
    );
    expect_event(&dash, "tenant:resumed", "dashboard").await;
    for r in [r0, r1] {
        eventually(T, "resumption known to the replica", || async {
            match try_device(r, &device_token(DEV_A2, ORG_A)).await {
                Ok(c) => {
                    c.disconnect().await;
                    Some(())
                }
                Err(_) => None,
            }
        })
        .await;
    }
    assert!(
        other
            .drain_events()
            .iter()
            .all(|e| !e.name.starts_with("tenant:")),
        "another organisation hears nothing"
    );
}

#[tokio::test]
async fn subscription_status_column_suspends_where_it_exists() {
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    exec(
        &db,
        r#"ALTER TABLE organizations ADD COLUMN "subscriptionStatus" TEXT"#,
    )
    .await;
    exec(
        &db,
        &format!(
            r#"UPDATE organizations SET "subscriptionStatus" = 'suspended' WHERE "id" = '{ORG_B}'"#
        ),
    )
    .await;
    let gw = Gateway::start(GatewayOptions::new(db)).await;
    assert_refused(
        try_device(&gw, &device_token(DEV_B1, ORG_B)).await,
        "unauthorized: tenant_suspended",
        "suspended subscription",
    );
    let ok = device(&gw, DEV_A1, ORG_A, Transport::Websocket).await;
    assert_heartbeat_works(&ok, "active subscription").await;
}

#[tokio::test]
async fn dashboard_sessions_expire_for_both_reasons_within_two_sweeps() {
    let sweep = Duration::from_millis(1000);
    let (gw, redis, _db, _dir) =
        redis_gateway(|o| o.env("SESSION_SWEEP_INTERVAL_MS", sweep.as_millis())).await;
    let revoked = dashboard(&gw, "u-revoked", ORG_A, Transport::Websocket).await;
    let changed = dashboard(&gw, "u-changed", ORG_A, Transport::Polling).await;
    let kept = dashboard(&gw, "u-kept", ORG_A, Transport::Websocket).await;

    let now = chrono::Utc::now().timestamp();
    redis_set(&redis, "user_revoked:u-revoked", "1").await;
    redis_set(&redis, "pwd_changed:u-changed", &(now + 5).to_string()).await;
    // A password change older than the token keeps the session.
    redis_set(&redis, "pwd_changed:u-kept", &(now - 60).to_string()).await;

    let within = sweep * 2 + Duration::from_millis(500);
    for (c, reason) in [(&revoked, "revoked"), (&changed, "password_changed")] {
        let ev = c
            .wait_for("session:expired", within)
            .await
            .unwrap_or_else(|| panic!("{reason}: no session:expired within two sweeps"));
        assert_eq!(ev, json!({"reason": reason}));
        assert_eq!(
            c.closed(T).await,
            Some(CloseReason::ServerDisconnect),
            "{reason}"
        );
    }
    // Sweeps went by; the third dashboard is still served.
    let ack = kept
        .emit_with_ack("join:organization", json!({"organizationId": ORG_A}), T)
        .await
        .unwrap();
    assert_eq!(ack["success"], true);
    assert!(
        kept.drain_events()
            .iter()
            .all(|e| e.name != "session:expired")
    );

    // The same checks refuse such dashboards at the handshake.
    for user in ["u-revoked", "u-changed"] {
        let r = connect(
            gw.client()
                .transport(Transport::Websocket)
                .auth(json!({"token": user_token(user, ORG_A)})),
        )
        .await;
        assert_refused(r, "unauthorized: auth_invalid", user);
    }
    dashboard(&gw, "u-kept", ORG_A, Transport::Websocket).await;
}

#[tokio::test]
async fn notification_broadcast_reaches_the_org_dashboards_or_one_user() {
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(GatewayOptions::new(db)).await;
    let u1 = dashboard(&gw, "u1", ORG_A, Transport::Websocket).await;
    let u2 = dashboard(&gw, "u2", ORG_A, Transport::Polling).await;
    let b = dashboard(&gw, "ub", ORG_B, Transport::Websocket).await;
    let dev = device(&gw, DEV_A1, ORG_A, Transport::Websocket).await;
    let api = gw.api();

    let (st, body) = api
        .post(
            "/api/notifications/broadcast",
            json!({"organizationId": ORG_A, "notification": {"id": "n1", "title": "Hello"}}),
        )
        .await;
    assert!((200..300).contains(&st), "{body}");
    assert_eq!(body["success"], true);
    for c in [&u1, &u2] {
        let n = expect_event(c, "notification:new", "org-wide").await;
        assert_eq!(n["id"], "n1");
        assert_iso_ms(&n["timestamp"], "notification timestamp");
    }

    let (st, _) = api
        .post(
            "/api/notifications/broadcast",
            json!({"organizationId": ORG_A, "notification": {"id": "n2", "userId": "u2"}}),
        )
        .await;
    assert!((200..300).contains(&st));
    assert_eq!(
        expect_event(&u2, "notification:new", "per-user").await["id"],
        "n2"
    );
    // A later org-wide one is the next u1 sees: the per-user one never reached it.
    api.post(
        "/api/notifications/broadcast",
        json!({"organizationId": ORG_A, "notification": {"id": "n3"}}),
    )
    .await;
    assert_eq!(
        expect_event(&u1, "notification:new", "after per-user").await["id"],
        "n3"
    );
    assert_eq!(
        expect_event(&u2, "notification:new", "after per-user").await["id"],
        "n3"
    );
    assert!(
        b.drain_events()
            .iter()
            .all(|e| e.name != "notification:new"),
        "org B"
    );
    assert!(
        dev.drain_events()
            .iter()
            .all(|e| e.name != "notification:new"),
        "devices"
    );

    let (st, body) = api
        .post(
            "/api/notifications/broadcast",
            json!({"organizationId": ORG_A}),
        )
        .await;
    assert_eq!(st, 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("notification"),
        "{body}"
    );
}

/// Heartbeats (as the players do, every few seconds here) until a replayed `name` arrives.
async fn replayed_on_heartbeat(c: &Client, name: &str, what: &str) -> (Value, u64) {
    eventually(T, what, || async {
        let ack = c.emit_with_ack("heartbeat", json!({}), T).await.ok()?;
        assert_eq!(ack["commands"], json!([]), "{what}: never in the ack");
        let e = c.wait_for_event(name, Duration::from_millis(200)).await?;
        let id = e.ack_id.expect("replayed with an ack request");
        Some((e.args.into_iter().next().unwrap_or(Value::Null), id))
    })
    .await
}

/// Waits for the next `name` event that requests an ack.
async fn acked_event(c: &Client, name: &str, what: &str) -> (Value, u64) {
    let e = c
        .wait_for_event(name, T)
        .await
        .unwrap_or_else(|| panic!("{what}: no {name} (buffered {:?})", c.drain_events()));
    let id = e
        .ack_id
        .unwrap_or_else(|| panic!("{what}: {name} was sent without an ack request"));
    (e.args.into_iter().next().unwrap_or(Value::Null), id)
}

#[tokio::test]
async fn a_negative_or_timed_out_ack_ends_in_a_replay_never_a_loss() {
    let (gw, redis, _db, _dir) = redis_gateway(|o| o.env("DELIVERY_ACK_TIMEOUT_MS", 1000)).await;
    let api = gw.api();
    let auth = json!({"token": device_token(DEV_A1, ORG_A), "capabilities": {"deliveryAck": true}});
    let c = device_with(&gw, auth.clone(), true).await;
    let (_, id) = acked_event(&c, "playlist:update", "connect-time playlist").await;
    c.ack(id, vec![json!({"ok": true})]).await.unwrap();

    // Negative ack: the API says queued, the next heartbeat replays it as an event.
    let call = tokio::spawn({
        let api = gw.api();
        async move { api.command(DEV_A1, "reload", None).await }
    });
    let (cmd, id) = acked_event(&c, "command", "first delivery").await;
    c.ack(id, vec![json!({"ok": false, "error": "busy"})])
        .await
        .unwrap();
    let (st, body) = call.await.unwrap();
    assert_eq!(st, 201);
    assert_eq!(
        body["delivery"], "queued",
        "a refused delivery is not `delivered`"
    );
    let ack = c.emit_with_ack("heartbeat", json!({}), T).await.unwrap();
    assert_eq!(
        ack["commands"],
        json!([]),
        "capabilities clients never get commands in the ack"
    );
    let (again, id) = acked_event(&c, "command", "replay after a negative ack").await;
    assert_eq!(again["id"], cmd["id"]);
    // A replay refused again goes back again.
    c.ack(id, vec![json!({"ok": false})]).await.unwrap();
    // The re-queue follows the refusal asynchronously: the players' next heartbeats pick it up.
    let (again, id) = replayed_on_heartbeat(&c, "command", "second replay").await;
    assert_eq!(again["id"], cmd["id"]);
    c.ack(id, vec![json!({"ok": true})]).await.unwrap();

    // Timeout: no answer at all; replayed on the next heartbeat.
    let call = tokio::spawn({
        let api = gw.api();
        async move { api.command(DEV_A1, "screenshot", None).await }
    });
    let (cmd, _ignored) = acked_event(&c, "command", "unanswered delivery").await;
    let (st, body) = call.await.unwrap();
    assert_eq!((st, body["delivery"].clone()), (201, json!("queued")));
    let (again, id) = replayed_on_heartbeat(&c, "command", "replay after a timeout").await;
    assert_eq!(again["id"], cmd["id"]);
    c.ack(id, vec![json!({"ok": true})]).await.unwrap();

    // An acknowledged command is `delivered` and not replayed.
    let call = tokio::spawn({
        let api = gw.api();
        async move { api.command(DEV_A1, "reload", Some(json!({"n": 3}))).await }
    });
    let (_, id) = acked_event(&c, "command", "acknowledged").await;
    c.ack(id, vec![json!({"ok": true})]).await.unwrap();
    assert_eq!(call.await.unwrap().1["delivery"], "delivered");

    // A playlist nobody acknowledges is kept and replayed on reconnect.
    let call = tokio::spawn({
        let api = gw.api();
        async move {
            api.post(
                "/api/push/playlist",
                json!({"deviceId": DEV_A1, "playlist": {"id": "pushed", "name": "Pushed", "items": []}}),
            )
            .await
        }
    });
    let (pl, _ignored) = acked_event(&c, "playlist:update", "pushed playlist").await;
    assert_eq!(pl["playlist"]["id"], "pushed");
    let (st, body) = call.await.unwrap();
    assert_eq!(
        (st, body["delivery"].clone()),
        (201, json!("queued")),
        "{body}"
    );
    assert!(
        redis
            .exists(&format!("device:pending-playlist:{DEV_A1}"))
            .await
    );
    let pending_ttl = ttl(&redis, &format!("device:pending-playlist:{DEV_A1}")).await;
    assert!(
        (1700..=1800).contains(&pending_ttl),
        "pending playlist TTL {pending_ttl}"
    );
    c.disconnect().await;
    api.wait_offline(DEV_A1).await;
    let c = device_with(&gw, auth, true).await;
    let (pl, id) = acked_event(&c, "playlist:update", "replayed on reconnect").await;
    assert_eq!(pl["playlist"]["id"], "pushed");
    c.ack(id, vec![json!({"ok": true})]).await.unwrap();
    assert_heartbeat_works(&c, "after the replay").await;
    assert!(
        !redis
            .exists(&format!("device:pending-playlist:{DEV_A1}"))
            .await
    );
}

#[tokio::test]
async fn a_queued_command_reaches_a_capabilities_client_as_an_event_despite_an_immediate_heartbeat()
{
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(GatewayOptions::new(db)).await;
    let api = gw.api();
    for (i, caps) in [json!({"deliveryAck": true}), json!(["deliveryAck"])]
        .into_iter()
        .enumerate()
    {
        let (st, body) = api
            .command(DEV_A2, "reload", Some(json!({"round": i})))
            .await;
        assert_eq!((st, body["delivery"].clone()), (201, json!("queued")));
        let c = device_with(
            &gw,
            json!({"token": device_token(DEV_A2, ORG_A), "capabilities": caps}),
            false,
        )
        .await;
        // The latest players heartbeat at once on connect, racing the connect-time drain.
        let ack = c.emit_with_ack("heartbeat", json!({}), T).await.unwrap();
        assert_eq!(ack["commands"], json!([]), "{caps}");
        assert_eq!(ack["data"]["commands"], json!([]), "{caps}");
        let cmd = expect_event(&c, "command", "queued command as an event").await;
        assert_eq!(cmd["id"], body["commandId"]);
        assert_eq!(cmd["payload"]["round"], i);
        let ack = c.emit_with_ack("heartbeat", json!({}), T).await.unwrap();
        assert_eq!(ack["commands"], json!([]));
        assert!(
            c.drain_events().iter().all(|e| e.name != "command"),
            "delivered once"
        );
        c.disconnect().await;
        api.wait_offline(DEV_A2).await;
    }
    // Older clients keep getting queued commands in the ack (or on connect), once.
    let (_, body) = api.command(DEV_A2, "reload", None).await;
    let c = device(&gw, DEV_A2, ORG_A, Transport::Websocket).await;
    let ack = c.emit_with_ack("heartbeat", json!({}), T).await.unwrap();
    let in_ack = ack["commands"].as_array().unwrap().len();
    let as_event = c
        .drain_events()
        .iter()
        .filter(|e| e.name == "command")
        .count();
    assert_eq!(in_ack + as_event, 1, "{body}: exactly once");
}

#[tokio::test]
async fn content_url_path_is_configurable() {
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(
        GatewayOptions::new(db).env("CONTENT_URL_PATH", "/api/v1/device-content/{id}/file"),
    )
    .await;
    let c = device(&gw, DEV_A1, ORG_A, Transport::Websocket).await;
    let pl = expect_event(&c, "playlist:update", "connect").await;
    let urls: Vec<&str> = pl["playlist"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["content"]["url"].as_str())
        .collect();
    assert!(
        urls.contains(&"http://api.test/api/v1/device-content/c-img/file"),
        "{urls:?}"
    );
}
