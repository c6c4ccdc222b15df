//! `vizora-gateway demo`: the embedded gateway (SQLite, in-process presence, local storage) with a
//! seeded organisation and a handful of simulated screens that connect over real sockets,
//! heartbeat, obey commands and answer screenshot requests with a generated PNG. It prints a
//! dashboard token and ready-to-paste `curl` commands.
//!
//! A module of the binary, not of the library: the simulated screens need a Socket.IO client,
//! PNG encoding and random secrets, none of which a server needs. (The tests' gateway binary
//! includes this same file.)

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use vizora_gateway::auth::mint;
use vizora_gateway::config::Config;
use vizora_sioclient::{Client, ClientOptions, Transport};

const ORG: &str = "demo-org";

fn secret() -> String {
    (0..48)
        .map(|_| format!("{:x}", rand::random_range(0..16u8)))
        .collect()
}

/// Seeds the demo organisation (idempotent).
async fn seed(db: &vizora_gateway::db::Db, screens: usize) -> anyhow::Result<()> {
    let conn = db.connection();
    let mut stmts = vec![
        format!(r#"INSERT INTO organizations ("id","name","updatedAt") VALUES ('{ORG}','Demo Signage Co',CURRENT_TIMESTAMP) ON CONFLICT DO NOTHING"#),
        r#"INSERT INTO "Content" ("id","name","type","url","mimeType","duration","organizationId","updatedAt") VALUES
            ('demo-welcome','Welcome','image','minio://vizora-content/welcome.png','image/png',10,'demo-org',CURRENT_TIMESTAMP),
            ('demo-menu','Menu board','url','https://example.com/menu','text/html',15,'demo-org',CURRENT_TIMESTAMP)
            ON CONFLICT DO NOTHING"#
            .to_string(),
        r#"INSERT INTO "Content" ("id","name","type","url","duration","metadata","organizationId","updatedAt") VALUES
            ('demo-layout','Split screen','layout','',10,'{"layoutType":"split-horizontal","gridTemplate":{"columns":"2fr 1fr","rows":"1fr"},"gap":0,"zones":[{"id":"main","name":"Main","gridArea":"main","playlistId":"demo-zone"},{"id":"side","name":"Side","gridArea":"side","contentId":"demo-menu"}]}','demo-org',CURRENT_TIMESTAMP)
            ON CONFLICT DO NOTHING"#
            .to_string(),
        r#"INSERT INTO "Playlist" ("id","name","organizationId","updatedAt") VALUES
            ('demo-lobby','Lobby loop','demo-org',CURRENT_TIMESTAMP),('demo-zone','Zone loop','demo-org',CURRENT_TIMESTAMP)
            ON CONFLICT DO NOTHING"#
            .to_string(),
        r#"INSERT INTO "PlaylistItem" ("id","order","duration","playlistId","contentId") VALUES
            ('demo-i0',0,NULL,'demo-lobby','demo-welcome'),('demo-i1',1,20,'demo-lobby','demo-layout'),
            ('demo-z0',0,8,'demo-zone','demo-welcome') ON CONFLICT DO NOTHING"#
            .to_string(),
    ];
    for i in 1..=screens {
        stmts.push(format!(
            r#"INSERT INTO devices ("id","organizationId","deviceIdentifier","nickname","currentPlaylistId","updatedAt")
               VALUES ('demo-screen-{i}','{ORG}','demo-mac-{i}','Demo screen {i}','demo-lobby',CURRENT_TIMESTAMP) ON CONFLICT DO NOTHING"#
        ));
    }
    for s in stmts {
        conn.execute_unprepared(&s).await?;
    }
    Ok(())
}

/// A 320×180 PNG with a colour band per screen, as a base64 string.
fn screenshot_png(seed: usize) -> anyhow::Result<(String, u32, u32)> {
    let (w, h) = (320u32, 180u32);
    let mut pixels = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let band = ((x / 40) as usize + seed) % 3;
            let v = (y * 255 / h) as u8;
            pixels.extend_from_slice(&match band {
                0 => [v, 40, 120],
                1 => [30, v, 90],
                _ => [200, 60, v],
            });
        }
    }
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    let mut wr = enc.write_header()?;
    wr.write_image_data(&pixels)?;
    wr.finish()?;
    Ok((base64::engine::general_purpose::STANDARD.encode(out), w, h))
}

/// One simulated screen: heartbeats, obeys commands, answers screenshots.
async fn screen(url: String, device: String, token: String, n: usize, stop: CancellationToken) {
    let opts = ClientOptions::new(url)
        .transport(Transport::Websocket)
        .auth(json!({"token": token}));
    let client = loop {
        match vizora_sioclient::connect(opts.clone()).await {
            Ok(c) => break c,
            Err(e) => {
                eprintln!("[{device}] connect failed ({e}); retrying");
                tokio::select! { _ = tokio::time::sleep(Duration::from_secs(2)) => {}, _ = stop.cancelled() => return }
            }
        }
    };
    eprintln!("[{device}] connected");
    let mut beat = tokio::time::interval(Duration::from_secs(15));
    loop {
        tokio::select! {
            _ = stop.cancelled() => { client.disconnect().await; return }
            _ = beat.tick() => {
                let hb = json!({"timestamp": chrono::Utc::now().timestamp_millis(), "status": "online",
                                "metrics": {"cpuUsage": 10 + n, "memoryUsage": 40}, "currentContent": {"contentId": "demo-welcome"}});
                match client.emit_with_ack("heartbeat", hb, Duration::from_secs(5)).await {
                    Ok(ack) => for cmd in ack["commands"].as_array().cloned().unwrap_or_default() {
                        obey(&client, &device, n, cmd).await;
                    },
                    Err(e) => { eprintln!("[{device}] heartbeat failed: {e:?}"); return }
                }
            }
            ev = client.next_event(Duration::from_secs(1)) => match ev {
                Some(e) if e.name == "command" => obey(&client, &device, n, e.args.first().cloned().unwrap_or(Value::Null)).await,
                Some(e) if e.name == "playlist:update" => eprintln!("[{device}] playlist \"{}\" received", e.args[0]["playlist"]["name"].as_str().unwrap_or("?")),
                Some(_) => {}
                None if !client.is_connected() => { eprintln!("[{device}] disconnected"); return }
                None => {}
            }
        }
    }
}

async fn obey(client: &Client, device: &str, n: usize, cmd: Value) {
    let kind = cmd["type"].as_str().unwrap_or("?");
    eprintln!(
        "[{device}] command {kind} (id {})",
        cmd["id"].as_str().unwrap_or("-")
    );
    if kind == "screenshot" {
        let Ok((data, w, h)) = screenshot_png(n) else {
            return;
        };
        let resp = json!({"requestId": cmd["payload"]["requestId"], "imageData": data, "width": w, "height": h,
                          "timestamp": chrono::Utc::now().to_rfc3339()});
        match client
            .emit_with_ack("screenshot:response", resp, Duration::from_secs(10))
            .await
        {
            Ok(ack) if ack["success"] == true => eprintln!(
                "[{device}] screenshot uploaded: {}",
                ack["data"]["url"].as_str().unwrap_or("")
            ),
            Ok(ack) => eprintln!("[{device}] screenshot refused: {}", ack["error"]),
            Err(e) => eprintln!("[{device}] screenshot failed: {e:?}"),
        }
    }
}

pub async fn run(screens: usize) -> anyhow::Result<()> {
    let dir = std::env::current_dir()?.join("vizora-demo");
    std::fs::create_dir_all(&dir)?;
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3002);
    let env: HashMap<String, String> = [
        ("PORT", port.to_string()),
        (
            "DATABASE_URL",
            format!("sqlite://{}?mode=rwc", dir.join("demo.sqlite").display()),
        ),
        ("STORAGE_DIR", dir.join("storage").display().to_string()),
        ("DEVICE_JWT_SECRET", secret()),
        ("JWT_SECRET", secret()),
        ("INTERNAL_API_SECRET", secret()),
        ("REPLICA_ID", "demo".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let cfg = Config::from_map(&env).map_err(|e| anyhow::anyhow!("{e}"))?;
    let db = vizora_gateway::app::open_database(&cfg).await?;
    seed(&db, screens).await?;
    drop(db);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let url = format!("http://127.0.0.1:{port}");
    let stop = CancellationToken::new();
    let server = tokio::spawn(vizora_gateway::shutdown::until_signal(
        stop.clone(),
        vizora_gateway::app::run(cfg.clone(), listener, stop.clone()),
    ));

    let dashboard = mint::user_token(&cfg.jwt_secret, "demo-admin", ORG, "admin", 86_400)?;
    let key = &cfg.internal_api_secret;
    println!(
        "\nVizora Gateway demo on {url} (embedded: SQLite + in-process presence, files in {})\n",
        dir.display()
    );
    println!("Dashboard token (Socket.IO auth.token, org {ORG}):\n  {dashboard}\n");
    println!(
        "Reload screen 1:\n  curl -s -XPOST {url}/api/internal/command -H 'x-internal-api-key: {key}' -H 'content-type: application/json' \\\n    -d '{{\"deviceId\":\"demo-screen-1\",\"command\":\"reload\"}}'\n"
    );
    println!(
        "Ask screen 2 for a screenshot (the link appears in this log and as screenshot:ready):\n  curl -s -XPOST {url}/api/internal/command -H 'x-internal-api-key: {key}' -H 'content-type: application/json' \\\n    -d '{{\"deviceId\":\"demo-screen-2\",\"command\":\"screenshot\"}}'\n"
    );
    println!(
        "Presence of screen 1:\n  curl -s {url}/api/internal/devices/demo-screen-1/presence -H 'x-internal-api-key: {key}'\n"
    );
    println!(
        "Health and metrics:\n  curl -s {url}/api/health\n  curl -s {url}/metrics\n\nCtrl-C stops the demo.\n"
    );

    let mut tasks = tokio::task::JoinSet::new();
    for i in 1..=screens {
        let device = format!("demo-screen-{i}");
        let token = mint::device_token(
            &cfg.device_jwt_secret,
            &device,
            &format!("demo-mac-{i}"),
            ORG,
            86_400,
        )?;
        tasks.spawn(screen(url.clone(), device, token, i, stop.clone()));
    }
    let result = server.await?;
    stop.cancel();
    tasks.join_all().await;
    result
}
