//! Seed data and tokens shared by the integration tests: two organisations, devices, contents, a
//! playlist with a layout whose zones point at another playlist and a content.

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend};
use serde_json::json;
use vizora_gateway::auth::mint;

pub const DEVICE_SECRET: &str = "test-device-secret-test-device-secret-0001";
pub const USER_SECRET: &str = "test-user-secret-test-user-secret-test-0002";
pub const INTERNAL_KEY: &str = "test-internal-key-test-internal-key-000003";
pub const API_BASE: &str = "http://api.test";

pub const ORG_A: &str = "org-a";
pub const ORG_B: &str = "org-b";
/// Device with the main playlist and a QR overlay.
pub const DEV_A1: &str = "dev-a1";
/// Devices without playlist.
pub const DEV_A2: &str = "dev-a2";
pub const DEV_A3: &str = "dev-a3";
/// A device of the other organisation.
pub const DEV_B1: &str = "dev-b1";
pub const PLAYLIST_MAIN: &str = "pl-main";
pub const PLAYLIST_ZONE: &str = "pl-zone";

/// Extra devices `load-000..` for load-ish tests.
pub fn load_device(i: usize) -> String {
    format!("load-{i:04}")
}

fn js(backend: DbBackend, v: serde_json::Value) -> String {
    let s = v.to_string().replace('\'', "''");
    if backend == DbBackend::Postgres {
        format!("'{s}'::jsonb")
    } else {
        format!("'{s}'")
    }
}

/// Inserts the fixture rows (the schema must exist). `load_devices` extra devices join org A.
pub async fn seed(db: &DatabaseConnection, load_devices: usize) {
    let b = db.get_database_backend();
    let mut sql = vec![
        format!(r#"INSERT INTO organizations ("id","name","updatedAt") VALUES ('{ORG_A}','Org A',CURRENT_TIMESTAMP),('{ORG_B}','Org B',CURRENT_TIMESTAMP)"#),
        r#"INSERT INTO "Content" ("id","name","type","url","mimeType","duration","organizationId","updatedAt") VALUES
            ('c-img','Welcome','image','minio://bucket/welcome.png','image/png',10,'org-a',CURRENT_TIMESTAMP),
            ('c-vid','Promo','video','https://cdn.test/promo.mp4','video/mp4',30,'org-a',CURRENT_TIMESTAMP),
            ('c-zone','Zone image','image','minio://bucket/zone.png','image/png',10,'org-a',CURRENT_TIMESTAMP)"#
            .to_string(),
        format!(
            r#"INSERT INTO "Content" ("id","name","type","url","duration","metadata","organizationId","updatedAt") VALUES
            ('c-layout','Split','layout','',10,{},'org-a',CURRENT_TIMESTAMP)"#,
            js(
                b,
                json!({"layoutType": "split-horizontal", "gridTemplate": {"columns": "1fr 1fr", "rows": "1fr"}, "gap": 8,
                       "zones": [{"id": "left", "name": "Left", "gridArea": "left", "playlistId": PLAYLIST_ZONE},
                                 {"id": "right", "name": "Right", "gridArea": "right", "contentId": "c-zone"}]})
            )
        ),
        format!(
            r#"INSERT INTO "Playlist" ("id","name","organizationId","updatedAt") VALUES
            ('{PLAYLIST_MAIN}','Lobby','org-a',CURRENT_TIMESTAMP),('{PLAYLIST_ZONE}','Zone','org-a',CURRENT_TIMESTAMP)"#
        ),
        format!(
            r#"INSERT INTO "PlaylistItem" ("id","order","duration","playlistId","contentId") VALUES
            ('it-2',2,NULL,'{PLAYLIST_MAIN}','c-layout'),('it-0',0,NULL,'{PLAYLIST_MAIN}','c-img'),
            ('it-1',1,20,'{PLAYLIST_MAIN}','c-vid'),('it-z',0,0,'{PLAYLIST_ZONE}','c-zone')"#
        ),
        format!(
            r#"INSERT INTO devices ("id","organizationId","deviceIdentifier","nickname","currentPlaylistId","metadata","updatedAt") VALUES
            ('{DEV_A1}','{ORG_A}','mac-a1','Lobby screen','{PLAYLIST_MAIN}',{},CURRENT_TIMESTAMP)"#,
            js(b, json!({"qrOverlay": {"enabled": true, "url": "https://vizora.test/qr", "position": "bottom-right"}}))
        ),
        format!(
            r#"INSERT INTO devices ("id","organizationId","deviceIdentifier","updatedAt") VALUES
            ('{DEV_A2}','{ORG_A}','mac-a2',CURRENT_TIMESTAMP),('{DEV_A3}','{ORG_A}','mac-a3',CURRENT_TIMESTAMP),
            ('{DEV_B1}','{ORG_B}','mac-b1',CURRENT_TIMESTAMP)"#
        ),
    ];
    if load_devices > 0 {
        let rows: Vec<String> = (0..load_devices)
            .map(|i| {
                format!(
                    "('{}','{ORG_A}','mac-{}',CURRENT_TIMESTAMP)",
                    load_device(i),
                    load_device(i)
                )
            })
            .collect();
        for chunk in rows.chunks(500) {
            sql.push(format!(r#"INSERT INTO devices ("id","organizationId","deviceIdentifier","updatedAt") VALUES {}"#, chunk.join(",")));
        }
    }
    for s in sql {
        db.execute_unprepared(&s)
            .await
            .unwrap_or_else(|e| panic!("seeding failed: {e}\n{s}"));
    }
}

pub fn device_token(device: &str, org: &str) -> String {
    mint::device_token(DEVICE_SECRET, device, &format!("mac-{device}"), org, 3600).unwrap()
}

pub fn user_token(user: &str, org: &str) -> String {
    mint::user_token(USER_SECRET, user, org, "admin", 3600).unwrap()
}

/// A device of org A connected over websocket (panics if refused).
pub async fn ws_device(
    opts: vizora_sioclient::ClientOptions,
    dev: &str,
) -> vizora_sioclient::Client {
    vizora_sioclient::connect(
        opts.transport(vizora_sioclient::Transport::Websocket)
            .auth(json!({"token": device_token(dev, ORG_A)})),
    )
    .await
    .unwrap_or_else(|e| panic!("device {dev} must connect: {e}"))
}

/// A dashboard user of `org` connected over websocket (panics if refused).
pub async fn ws_dashboard(
    opts: vizora_sioclient::ClientOptions,
    org: &str,
) -> vizora_sioclient::Client {
    vizora_sioclient::connect(
        opts.transport(vizora_sioclient::Transport::Websocket)
            .auth(json!({"token": user_token("ops", org)})),
    )
    .await
    .unwrap_or_else(|e| panic!("dashboard must connect: {e}"))
}
