//! The store contract: the embedded `MemoryStore` and the cluster's `RedisStore` (against a real
//! `redis-server`, and against a real six-node Redis Cluster with its sharded keyspace) give the
//! same answers to the same sequence of calls. Each scenario runs on all three
//! (`<scenario>::memory`, `<scenario>::redis`, `<scenario>::redis_cluster`), so neither the
//! embedded default nor the cluster keyspace can drift from the single primary's semantics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use vizora_gateway::config::{ClusterConfig, RedisConfig, RedisTls};
use vizora_gateway::store::memory::MemoryStore;
use vizora_gateway::store::redis::RedisStore;
use vizora_gateway::store::{
    HeartbeatOutcome, HeartbeatWrite, LiveLease, OfflineNotice, PresenceStore, Queued,
    RefreshOutcome, Released, StateStore, StoreResult, SweepGuard, TakeQueued, now_ms,
};
use vizora_gateway_tests::{RedisCluster, RedisServer, eventually};

/// Both traits on one value, as the gateway wires them (one Redis, or one in-process store).
trait Store: PresenceStore + StateStore {}
impl<T: PresenceStore + StateStore> Store for T {}

/// Keeps the redis-server (or the cluster) alive for the scenario's duration.
struct Fixture {
    store: Arc<dyn Store>,
    _redis: Option<RedisServer>,
    _cluster: Option<RedisCluster>,
}

/// The gateway's configuration for a test cluster.
pub fn cluster_config(cluster: &RedisCluster) -> RedisConfig {
    RedisConfig::Cluster(ClusterConfig {
        nodes: cluster
            .seeds_env()
            .split(',')
            .map(|a| {
                let (h, p) = a.rsplit_once(':').unwrap();
                (h.to_string(), p.parse().unwrap())
            })
            .collect(),
        username: None,
        password: None,
        tls: RedisTls::Off,
    })
}

async fn fixture(kind: &str) -> Fixture {
    match kind {
        "memory" => Fixture {
            store: Arc::new(MemoryStore::new()),
            _redis: None,
            _cluster: None,
        },
        "cluster" => {
            let cluster = RedisCluster::start().await;
            Fixture {
                store: Arc::new(RedisStore::from_config(&cluster_config(&cluster)).unwrap()),
                _redis: None,
                _cluster: Some(cluster),
            }
        }
        _ => {
            let redis = RedisServer::start().await;
            Fixture {
                store: Arc::new(RedisStore::new(&redis.url()).unwrap()),
                _redis: Some(redis),
                _cluster: None,
            }
        }
    }
}

/// One test per store for a scenario.
macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn memory() {
                let f = super::fixture("memory").await;
                super::$name(&*f.store).await
            }
            #[tokio::test]
            async fn redis() {
                let f = super::fixture("redis").await;
                super::$name(&*f.store).await
            }
            #[tokio::test]
            async fn redis_cluster() {
                let f = super::fixture("cluster").await;
                super::$name(&*f.store).await
            }
        }
    )*};
}

on_every_store!(
    newer_connection_wins_and_older_release_is_a_no_op,
    a_lease_is_pending_until_its_socket_confirms,
    sweep_expires_once_and_refresh_revives,
    commands_are_fifo_bounded_and_drained_once,
    a_superseded_socket_heartbeat_writes_and_drains_nothing,
    screenshot_request_is_single_use,
    offline_notice_cancelled_by_return_or_fired_once,
    statuses_follow_the_lease_steps,
    a_lock_has_one_holder_until_it_expires,
    an_older_stored_epoch_is_restored_by_refresh,
    an_older_stored_epoch_never_supersedes_a_heartbeat,
    a_release_over_an_older_stored_epoch_is_the_offline_transition,
    a_release_after_an_older_lease_was_swept_since_the_socket_came_online_announces_nothing,
    a_retried_release_leaves_the_offline_to_the_sweep,
    a_revived_lease_cancels_the_offline_notice_of_its_sweep,
    the_first_sweep_after_a_gap_waits_out_the_grace,
    a_refresh_claim_is_won_once_and_the_grace_dropped_only_by_its_owner,
    a_heartbeat_bound_to_another_token_is_stale_and_takes_nothing,
    a_due_heartbeat_reports_a_held_refresh_cooldown,
    pending_deliveries_are_taken_once,
    a_socket_whose_lease_is_gone_takes_nothing_queued,
    suspended_organisations_are_shared,
    load_records_are_exchanged_and_forgotten,
);

fn live(device: &str, sid: &str, epoch: u64) -> LiveLease {
    LiveLease {
        device_id: device.into(),
        org: "o".into(),
        sid: sid.into(),
        epoch,
        pending: false,
    }
}

async fn newer_connection_wins_and_older_release_is_a_no_op(s: &dyn Store) {
    let a = s.acquire("d", "o", "r1", "s1", 30_000).await.unwrap();
    assert!(a.came_online);
    let b = s.acquire("d", "o", "r2", "s2", 30_000).await.unwrap();
    assert!(!b.came_online);
    assert!(b.epoch > a.epoch);
    assert_eq!(b.previous.unwrap().sid, "s1");
    assert!(
        s.release("d", "o", a.epoch, 60_000).await.unwrap() == Released::Nothing,
        "old socket's release must change nothing"
    );
    let r = s
        .refresh("r1", &[live("d", "s1", a.epoch)], 30_000)
        .await
        .unwrap();
    assert_eq!(r, vec![RefreshOutcome::Stale]);
    assert_eq!(s.online(&["d".into()]).await.unwrap(), vec![true]);
    assert_eq!(
        s.release("d", "o", b.epoch, 60_000).await.unwrap(),
        Released::Offline
    );
    assert_eq!(s.online(&["d".into()]).await.unwrap(), vec![false]);
}

async fn a_lease_is_pending_until_its_socket_confirms(s: &dyn Store) {
    s.acquire("d", "o", "r", "s1", 30_000).await.unwrap();
    assert!(s.lease("d").await.unwrap().unwrap().pending);
    s.confirm("d", "other").await.unwrap();
    assert!(
        s.lease("d").await.unwrap().unwrap().pending,
        "only the lease's own socket confirms"
    );
    s.confirm("d", "s1").await.unwrap();
    let l = s.lease("d").await.unwrap().unwrap();
    assert!(!l.pending);
    assert_eq!(
        (l.sid.as_str(), l.replica.as_str(), l.org.as_str()),
        ("s1", "r", "o")
    );
}

async fn sweep_expires_once_and_refresh_revives(s: &dyn Store) {
    let a = s.acquire("d", "o", "r1", "s1", 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let swept = s.sweep(100, 60_000, SweepGuard::NONE).await.unwrap();
    assert_eq!(swept.len(), 1);
    assert_eq!(
        (swept[0].device_id.as_str(), swept[0].epoch),
        ("d", a.epoch)
    );
    assert!(
        s.sweep(100, 60_000, SweepGuard::NONE)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.release("d", "o", a.epoch, 60_000).await.unwrap() == Released::Nothing,
        "swept lease: no second offline transition"
    );
    let r = s
        .refresh("r1", &[live("d", "s1", a.epoch)], 30_000)
        .await
        .unwrap();
    assert_eq!(
        r,
        vec![RefreshOutcome::Revived {
            notice_fired: false
        }]
    );
    assert_eq!(s.online(&["d".into()]).await.unwrap(), vec![true]);
}

async fn commands_are_fifo_bounded_and_drained_once(s: &dyn Store) {
    for i in 0..5 {
        s.enqueue_command("d", &format!("{i}"), 3, 60_000)
            .await
            .unwrap();
    }
    assert_eq!(
        beat(s, "d", 1, "{}", "{}").await.unwrap(),
        HeartbeatOutcome::Live(vec!["2".into(), "3".into(), "4".into()]),
        "the oldest beyond the bound are dropped; the rest come oldest first"
    );
    assert_eq!(
        s.take_queued(&take("d", 1)).await.unwrap(),
        Queued::default()
    );
}

/// A socket whose lease a newer connection holds must not overwrite the live socket's status,
/// nor take the commands queued for it.
async fn a_superseded_socket_heartbeat_writes_and_drains_nothing(s: &dyn Store) {
    let old = s.acquire("d", "o", "r1", "old", 30_000).await.unwrap();
    let new = s.acquire("d", "o", "r2", "new", 30_000).await.unwrap();
    s.enqueue_command("d", "cmd", 10, 60_000).await.unwrap();
    let before = s.status("d").await.unwrap();
    assert_eq!(
        beat(s, "d", old.epoch, r#"{"socketId":"old"}"#, "{}")
            .await
            .unwrap(),
        HeartbeatOutcome::Superseded
    );
    assert_eq!(s.status("d").await.unwrap(), before, "status untouched");
    assert_eq!(
        beat(s, "d", new.epoch, r#"{"socketId":"new"}"#, "{}")
            .await
            .unwrap(),
        HeartbeatOutcome::Live(vec!["cmd".into()]),
        "the live socket still gets the command"
    );
    assert_eq!(
        s.status("d").await.unwrap().as_deref(),
        Some(r#"{"socketId":"new"}"#)
    );
    // Without any lease (Redis restarted and lost it) a heartbeat counts as live.
    assert_eq!(
        beat(s, "nolease", 1, "{}", "{}").await.unwrap(),
        HeartbeatOutcome::Live(vec![])
    );
}

async fn screenshot_request_is_single_use(s: &dyn Store) {
    s.put_screenshot_request("d", "r1", 60_000).await.unwrap();
    assert!(!s.take_screenshot_request("d", "other").await.unwrap());
    assert!(!s.take_screenshot_request("other", "r1").await.unwrap());
    assert!(s.take_screenshot_request("d", "r1").await.unwrap());
    assert!(!s.take_screenshot_request("d", "r1").await.unwrap());
}

async fn offline_notice_cancelled_by_return_or_fired_once(s: &dyn Store) {
    let n = OfflineNotice {
        device_id: "d".into(),
        device_name: "D".into(),
        organization_id: "o".into(),
        scheduled_for: now_ms() - 1,
        disconnected_at: now_ms() - 10,
    };
    s.schedule_offline_notice(&n).await.unwrap();
    let claimed = s.claim_due_notices(10).await.unwrap();
    assert_eq!(claimed, vec![n.clone()]);
    assert!(s.claim_due_notices(10).await.unwrap().is_empty());
    let a = s.acquire("d", "o", "r", "s", 30_000).await.unwrap();
    assert!(
        a.offline_notice_fired,
        "the return owes a back-online notice"
    );
    s.release("d", "o", a.epoch, 60_000).await.unwrap();
    s.schedule_offline_notice(&OfflineNotice {
        scheduled_for: now_ms() + 60_000,
        ..n
    })
    .await
    .unwrap();
    let b = s.acquire("d", "o", "r", "s2", 30_000).await.unwrap();
    assert!(!b.offline_notice_fired);
    assert!(
        s.claim_due_notices(10).await.unwrap().is_empty(),
        "a return before the due time cancels the notice"
    );
}

/// The status JSON each lease step leaves, read singly and in a batch.
async fn statuses_follow_the_lease_steps(s: &dyn Store) {
    let field = |raw: &Option<String>, k: &str| -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(raw.as_deref().unwrap()).unwrap()[k].clone()
    };
    let a = s.acquire("d", "o", "r", "s1", 30_000).await.unwrap();
    let ids = ["d".to_string(), "never".to_string()];
    let st = s.statuses(&ids).await.unwrap();
    assert_eq!(st.len(), 2);
    assert_eq!(field(&st[0], "status"), "online");
    assert_eq!(field(&st[0], "socketId"), "s1");
    assert!(field(&st[0], "lastHeartbeat").as_i64().unwrap() > 0);
    assert_eq!(st[1], None);
    s.release("d", "o", a.epoch, 60_000).await.unwrap();
    let st = s.status("d").await.unwrap();
    assert_eq!(field(&st, "status"), "offline");
    assert_eq!(field(&st, "socketId"), serde_json::Value::Null);
    assert!(s.statuses(&[]).await.unwrap().is_empty());
}

async fn a_lock_has_one_holder_until_it_expires(s: &dyn Store) {
    assert!(s.try_lock("job", "r1", 200).await.unwrap());
    assert!(!s.try_lock("job", "r2", 200).await.unwrap());
    assert!(
        s.try_lock("other", "r2", 200).await.unwrap(),
        "locks are per name"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(s.try_lock("job", "r2", 200).await.unwrap());
}

/// The state a rolled-back Redis (an older snapshot or AOF, a promoted lagging replica) shows a
/// live socket: the epoch and lease of an OLDER connection of the same device.
async fn rolled_back(s: &dyn Store) -> (u64, u64) {
    let older = s.acquire("d", "o", "r1", "old", 30_000).await.unwrap();
    // The newer socket's epoch as its replica remembers it; the store still holds the older one.
    let mine = older.epoch + 1_000_000;
    (older.epoch, mine)
}

async fn an_older_stored_epoch_is_restored_by_refresh(s: &dyn Store) {
    let (older, mine) = rolled_back(s).await;
    let r = s
        .refresh("r2", &[live("d", "new", mine)], 30_000)
        .await
        .unwrap();
    assert_eq!(r, vec![RefreshOutcome::Restored], "never stale");
    let l = s.lease("d").await.unwrap().unwrap();
    assert_eq!((l.epoch(), l.sid.as_str()), (mine, "new"), "re-asserted");
    assert_eq!(
        s.refresh("r2", &[live("d", "new", mine)], 30_000)
            .await
            .unwrap(),
        vec![RefreshOutcome::Fresh]
    );
    // The older socket, had it survived, is the one superseded now.
    assert_eq!(
        s.refresh("r1", &[live("d", "old", older)], 30_000)
            .await
            .unwrap(),
        vec![RefreshOutcome::Stale]
    );
    // Numbers, not strings: an epoch with more digits is newer, not "smaller".
    let r = s
        .refresh("r2", &[live("d", "new", mine * 10)], 30_000)
        .await
        .unwrap();
    assert_eq!(r, vec![RefreshOutcome::Restored]);
    assert_eq!(
        s.refresh("r2", &[live("d", "new", mine)], 30_000)
            .await
            .unwrap(),
        vec![RefreshOutcome::Stale]
    );
}

async fn an_older_stored_epoch_never_supersedes_a_heartbeat(s: &dyn Store) {
    let (older, mine) = rolled_back(s).await;
    s.enqueue_command("d", "cmd", 10, 60_000).await.unwrap();
    assert_eq!(
        beat(s, "d", mine, r#"{"socketId":"new"}"#, "{}")
            .await
            .unwrap(),
        HeartbeatOutcome::Live(vec!["cmd".into()]),
        "a lease naming an older socket and epoch is no reason to stop"
    );
    assert_eq!(
        s.status("d").await.unwrap().as_deref(),
        Some(r#"{"socketId":"new"}"#)
    );
    // Once re-asserted, the older socket's heartbeat is the superseded one.
    s.refresh("r2", &[live("d", "new", mine)], 30_000)
        .await
        .unwrap();
    assert_eq!(
        beat(s, "d", older, "{}", "{}").await.unwrap(),
        HeartbeatOutcome::Superseded
    );
}

async fn a_release_over_an_older_stored_epoch_is_the_offline_transition(s: &dyn Store) {
    let (older, mine) = rolled_back(s).await;
    assert!(
        s.release("d", "o", mine, 60_000).await.unwrap() == Released::Offline,
        "the latest socket left: offline, although Redis remembers an older connection"
    );
    assert_eq!(s.online(&["d".into()]).await.unwrap(), vec![false]);
    assert!(
        s.lease("d").await.unwrap().is_none(),
        "the ghost lease is gone"
    );
    let st: serde_json::Value =
        serde_json::from_str(&s.status("d").await.unwrap().unwrap()).unwrap();
    assert_eq!(st["status"], "offline");
    assert!(
        s.release("d", "o", mine, 60_000).await.unwrap() == Released::Nothing,
        "exactly once"
    );
    assert!(
        s.release("d", "o", older, 60_000).await.unwrap() == Released::Nothing,
        "the older socket's release changes nothing"
    );
    assert!(
        s.sweep(100, 60_000, SweepGuard::NONE)
            .await
            .unwrap()
            .is_empty(),
        "nothing left to sweep"
    );
}

/// Redis rolled back to an older connection's lease while the newer socket lived, the newer
/// socket left before its replica re-asserted it, and its release failed (Redis was away): the
/// sweep then expired the older lease and announced the offline. The retried release must not
/// announce it again; it only brings the database to its epoch.
async fn a_release_after_an_older_lease_was_swept_since_the_socket_came_online_announces_nothing(
    s: &dyn Store,
) {
    let older = s.acquire("d", "o", "r1", "old", 1).await.unwrap();
    // The newer socket came online just after the older one (epochs are acquire times in µs).
    let mine = older.epoch + 1;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        s.sweep(100, 60_000, SweepGuard::NONE).await.unwrap().len(),
        1,
        "the older lease expires: the offline is announced"
    );
    assert_eq!(
        s.release("d", "o", mine, 60_000).await.unwrap(),
        Released::AlreadyAnnounced
    );
    assert_eq!(s.online(&["d".into()]).await.unwrap(), vec![false]);
    assert_eq!(
        s.release("d", "o", mine, 60_000).await.unwrap(),
        Released::Nothing,
        "the epoch is the socket's now"
    );

    // The other order: the stored offline predates the socket (the snapshot's own, followed by
    // this socket's online): its release is the transition.
    let older = s.acquire("e", "o", "r1", "old", 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        s.sweep(100, 60_000, SweepGuard::NONE).await.unwrap().len(),
        1
    );
    let came_online_after_the_sweep = older.epoch + 10_000_000;
    assert_eq!(
        s.release("e", "o", came_online_after_the_sweep, 60_000)
            .await
            .unwrap(),
        Released::Offline
    );
}

/// What one sweep (no grace) expires: (device, epoch, org).
async fn swept_now(s: &dyn Store) -> Vec<(String, u64, String)> {
    s.sweep(100, 60_000, SweepGuard::NONE)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.device_id, e.epoch, e.org))
        .collect()
}

/// A release that failed is retried as "due now, the sweep decides": the sweep announces the
/// offline of a socket that really left, but a newer socket's refresh that comes first (the
/// store rolled back to the older epoch meanwhile) wins, and nobody is reported offline.
async fn a_retried_release_leaves_the_offline_to_the_sweep(s: &dyn Store) {
    // The socket left: the sweep announces it, at its epoch.
    let a = s.acquire("d", "o", "r1", "s1", 30_000).await.unwrap();
    assert_eq!(
        s.retire("d", "o", a.epoch, "r1").await.unwrap(),
        Released::LeftToSweep
    );
    assert_eq!(swept_now(s).await, vec![("d".into(), a.epoch, "o".into())]);
    assert_eq!(
        s.retire("d", "o", a.epoch, "r1").await.unwrap(),
        Released::Nothing,
        "its lease is gone: once"
    );

    // Rolled back to the older epoch while the newer socket lives elsewhere: the older socket's
    // retry lands first, the newer socket's refresh re-asserts, and the sweep finds nothing.
    let (older, newer) = {
        let older = s.acquire("e", "o", "r1", "old", 30_000).await.unwrap();
        (older.epoch, older.epoch + 1_000_000)
    };
    assert_eq!(
        s.retire("e", "o", older, "r1").await.unwrap(),
        Released::LeftToSweep
    );
    let r = s
        .refresh("r2", &[live("e", "new", newer)], 30_000)
        .await
        .unwrap();
    assert_eq!(r, vec![RefreshOutcome::Restored]);
    assert!(
        swept_now(s).await.is_empty(),
        "the live socket is nobody's offline"
    );
    assert_eq!(s.lease("e").await.unwrap().unwrap().epoch(), newer);
    assert_eq!(
        s.retire("e", "o", older, "r1").await.unwrap(),
        Released::Nothing,
        "a newer epoch owns it"
    );

    // The store lost the device altogether: the retry is the only record that it left.
    let lost = a.epoch + 5_000_000;
    assert_eq!(
        s.retire("f", "o", lost, "r1").await.unwrap(),
        Released::LeftToSweep
    );
    assert_eq!(swept_now(s).await, vec![("f".into(), lost, "o".into())]);
}

async fn a_revived_lease_cancels_the_offline_notice_of_its_sweep(s: &dyn Store) {
    let a = s.acquire("d", "o", "r1", "s1", 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(s.sweep(100, 0, SweepGuard::NONE).await.unwrap().len(), 1);
    let r = s
        .refresh("r1", &[live("d", "s1", a.epoch)], 30_000)
        .await
        .unwrap();
    assert_eq!(
        r,
        vec![RefreshOutcome::Revived {
            notice_fired: false
        }]
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        s.claim_due_notices(10).await.unwrap().is_empty(),
        "the false sweep's offline notice is cancelled"
    );
    // Swept again, and this time the notice fires before the lease is revived: the return owes
    // the matching "back online" notice, once.
    s.refresh("r1", &[live("d", "s1", a.epoch)], 1)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(s.sweep(100, 0, SweepGuard::NONE).await.unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(s.claim_due_notices(10).await.unwrap().len(), 1);
    assert_eq!(
        s.refresh("r1", &[live("d", "s1", a.epoch)], 30_000)
            .await
            .unwrap(),
        vec![RefreshOutcome::Revived { notice_fired: true }]
    );
    let a2 = s.acquire("d", "o", "r1", "s2", 30_000).await.unwrap();
    assert!(!a2.offline_notice_fired, "owed once only");
}

async fn the_first_sweep_after_a_gap_waits_out_the_grace(s: &dyn Store) {
    let guard = SweepGuard {
        stall_ms: 300,
        grace_ms: 1_500,
    };
    s.acquire("d", "o", "r1", "s1", 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    // No sweep tick yet (a fresh, restarted or rolled-back store): the grace starts, and
    // regular sweeps sweep nothing until it ends; then the expired lease goes.
    assert!(s.sweep(100, 60_000, guard).await.unwrap().is_empty());
    assert!(s.sweep(100, 60_000, guard).await.unwrap().is_empty());
    let swept = eventually(
        Duration::from_secs(10),
        "the sweep after the grace",
        || async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Some(s.sweep(100, 60_000, guard).await.unwrap()).filter(|v| !v.is_empty())
        },
    )
    .await;
    assert_eq!(swept.len(), 1);
    // A gap longer than stall_ms (a stall) starts a new grace.
    s.acquire("e", "o", "r1", "t1", 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(s.sweep(100, 60_000, guard).await.unwrap().is_empty());
    assert!(s.sweep(100, 60_000, guard).await.unwrap().is_empty());
}

/// Redis restarted without persistence loses every epoch and lease. A release retried after that
/// is the device's offline transition (nobody connected since), while a device that reconnected
/// first keeps its newer epoch against the old socket's release.
#[tokio::test]
async fn a_release_after_redis_lost_its_state_is_the_offline_transition() {
    let redis = RedisServer::start().await;
    let s = RedisStore::new(&redis.url()).unwrap();
    let a = s.acquire("d", "o", "r", "s1", 30_000).await.unwrap();
    let b = s.acquire("e", "o", "r", "t1", 30_000).await.unwrap();
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();
    // "e" reconnects before its old socket's release is retried.
    let b2 = s.acquire("e", "o", "r", "t2", 30_000).await.unwrap();
    assert!(b2.epoch > b.epoch);
    assert_eq!(
        s.release("d", "o", a.epoch, 60_000).await.unwrap(),
        Released::Offline
    );
    assert!(s.release("e", "o", b.epoch, 60_000).await.unwrap() == Released::Nothing);
    assert_eq!(
        s.online(&["d".into(), "e".into()]).await.unwrap(),
        vec![false, true]
    );
    assert!(
        redis
            .get("device:status:d")
            .await
            .unwrap()
            .contains("offline")
    );
    assert!(
        redis.exists("notify:offline:d").await,
        "the offline notice is scheduled"
    );
    assert!(
        s.release("d", "o", a.epoch, 60_000).await.unwrap() == Released::Nothing,
        "only once"
    );
}

/// Redis that lost its script cache (restart, failover, `SCRIPT FLUSH`) answers the refresh
/// pipeline's EVALSHAs with NOSCRIPT: recognised by the error kind, the script is loaded and the
/// pipeline replayed, so the refresh succeeds instead of failing every lease.
#[tokio::test]
async fn a_refresh_after_the_script_cache_was_flushed_loads_the_script_and_succeeds() {
    let redis = RedisServer::start().await;
    let s = RedisStore::new(&redis.url()).unwrap();
    let a = s.acquire("d", "o", "r", "s1", 30_000).await.unwrap();
    let leases = [live("d", "s1", a.epoch)];
    assert_eq!(
        s.refresh("r", &leases, 30_000).await.unwrap(),
        vec![RefreshOutcome::Fresh]
    );
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();
    assert_eq!(
        s.refresh("r", &leases, 30_000).await.unwrap(),
        vec![RefreshOutcome::Fresh],
        "NOSCRIPT is answered by loading the script"
    );
}

/// The impression outbox's consumer group vanished with Redis's data (NOGROUP, recognised by the
/// server's error code): the next claim creates it again and the stream works.
#[tokio::test]
async fn an_outbox_whose_group_vanished_creates_it_again() {
    use vizora_gateway::store::outbox::{ImpressionOutbox, RedisOutbox};
    let redis = RedisServer::start().await;
    let s = RedisStore::new(&redis.url()).unwrap();
    let outbox = RedisOutbox::new(s.pool(), s.keyspace());
    let row = vizora_gateway::store::outbox::OutboxImpression {
        id: "i1".into(),
        organization_id: "o".into(),
        content_id: "c".into(),
        device_id: "d".into(),
        playlist_id: None,
        duration: None,
        completion_percentage: None,
        timestamp: vizora_gateway::db::now(),
        hour: 0,
    };
    let stale = Duration::from_secs(60);
    outbox.append(&row, "2026-01-01").await.unwrap();
    assert_eq!(outbox.claim("r", 10, stale).await.unwrap().len(), 1);
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();
    assert!(outbox.claim("r", 10, stale).await.unwrap().is_empty());
    // The stream is back without its group (XADD makes the stream, not the group).
    let _: () = redis::cmd("DEL")
        .arg("impressions:outbox")
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();
    outbox.append(&row, "2026-01-01").await.unwrap();
    let claimed = outbox.claim("r", 10, stale).await.unwrap();
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    assert_eq!(claimed[0].row.as_ref().map(|r| r.id.as_str()), Some("i1"));
}

async fn a_refresh_claim_is_won_once_and_the_grace_dropped_only_by_its_owner(s: &dyn Store) {
    let g1 = r#"{"prev":"a","next":"b"}"#;
    assert!(s.claim_token_refresh("d", g1, 600, 3600).await.unwrap());
    assert!(
        !s.claim_token_refresh("d", r#"{"prev":"a","next":"c"}"#, 600, 3600)
            .await
            .unwrap()
    );
    assert_eq!(
        s.token_grace("d").await.unwrap().as_deref(),
        Some(g1),
        "the loser wrote nothing"
    );
    s.drop_token_grace("d", r#"{"prev":"x","next":"y"}"#, false)
        .await
        .unwrap();
    assert_eq!(
        s.token_grace("d").await.unwrap().as_deref(),
        Some(g1),
        "not ours: kept"
    );
    s.drop_token_grace("d", g1, true).await.unwrap();
    assert_eq!(s.token_grace("d").await.unwrap(), None);
    assert!(
        s.claim_token_refresh("d", g1, 600, 3600).await.unwrap(),
        "cooldown released"
    );
}

/// A heartbeat through the production step, `device_heartbeat.lua` on Redis: only its outcome.
async fn beat(
    s: &dyn Store,
    device: &str,
    epoch: u64,
    status_json: &str,
    latest_json: &str,
) -> StoreResult<HeartbeatOutcome> {
    let mut w = hb_at(device, "s", epoch, None, false);
    w.status_json = status_json;
    w.latest_json = latest_json;
    Ok(s.device_heartbeat(&w).await?.outcome)
}

fn hb<'a>(device: &'a str, sid: &'a str, bound: Option<&'a str>, take: bool) -> HeartbeatWrite<'a> {
    hb_at(device, sid, 0, bound, take)
}

fn hb_at<'a>(
    device: &'a str,
    sid: &'a str,
    epoch: u64,
    bound: Option<&'a str>,
    take: bool,
) -> HeartbeatWrite<'a> {
    HeartbeatWrite {
        device,
        sid,
        epoch,
        status_json: "{}",
        latest_json: "{}",
        bound,
        take_pending_playlist: take,
        delivery_ack: false,
        refresh_due: false,
    }
}

/// A heartbeat of a socket whose token is due for a refresh learns, in the same round trip,
/// whether another connection's refresh holds the cooldown; one that is not due is told nothing.
async fn a_due_heartbeat_reports_a_held_refresh_cooldown(s: &dyn Store) {
    let due = HeartbeatWrite {
        refresh_due: true,
        ..hb("d", "s", None, false)
    };
    assert!(!s.device_heartbeat(&due).await.unwrap().refresh_cooldown);
    assert!(s.claim_token_refresh("d", "{}", 60, 3_600).await.unwrap());
    assert!(s.device_heartbeat(&due).await.unwrap().refresh_cooldown);
    let not_due = hb("d", "s", None, false);
    assert!(!s.device_heartbeat(&not_due).await.unwrap().refresh_cooldown);
    s.drop_token_grace("d", "{}", true).await.unwrap();
    assert!(!s.device_heartbeat(&due).await.unwrap().refresh_cooldown);
}

async fn a_heartbeat_bound_to_another_token_is_stale_and_takes_nothing(s: &dyn Store) {
    s.enqueue_command("d", "c1", 10, 60_000).await.unwrap();
    // No marker: any binding is live.
    let f = s
        .device_heartbeat(&hb("d", "s", Some("h1"), false))
        .await
        .unwrap();
    assert_eq!(f.outcome, HeartbeatOutcome::Live(vec!["c1".into()]));
    s.enqueue_command("d", "c2", 10, 60_000).await.unwrap();
    s.set_token_marker("d", Some("h2"), 60, false)
        .await
        .unwrap();
    let f = s
        .device_heartbeat(&hb("d", "s", Some("h1"), false))
        .await
        .unwrap();
    assert_eq!(f.outcome, HeartbeatOutcome::Stale);
    let f = s
        .device_heartbeat(&hb("d", "s", Some(""), false))
        .await
        .unwrap();
    assert_eq!(
        f.outcome,
        HeartbeatOutcome::Stale,
        "an unbound socket after a re-pair"
    );
    let f = s
        .device_heartbeat(&hb("d", "s", Some("h2"), false))
        .await
        .unwrap();
    assert_eq!(
        f.outcome,
        HeartbeatOutcome::Live(vec!["c2".into()]),
        "kept for the bound socket"
    );
    // A rotation only rewrites a marker that exists.
    s.set_token_marker("d", Some("h3"), 60, true).await.unwrap();
    let f = s
        .device_heartbeat(&hb("d", "s", Some("h3"), false))
        .await
        .unwrap();
    assert_eq!(f.outcome, HeartbeatOutcome::Live(vec![]));
    s.set_token_marker("d", None, 60, false).await.unwrap();
    s.set_token_marker("d", Some("h4"), 60, true).await.unwrap();
    let f = s
        .device_heartbeat(&hb("d", "s", Some("h1"), false))
        .await
        .unwrap();
    assert_eq!(
        f.outcome,
        HeartbeatOutcome::Live(vec![]),
        "no marker, no check"
    );
}

/// A connecting socket's take of everything queued, playlist included.
fn take(device: &str, epoch: u64) -> TakeQueued<'_> {
    TakeQueued {
        device,
        epoch,
        playlist: true,
        ack_sid: None,
    }
}

/// A take or a heartbeat that ran late — frozen in a partition, run after the heal, its caller
/// long gone — must not swallow what the device's next socket is owed: a socket whose lease was
/// swept (the store still holding its epoch) or that a newer epoch superseded takes nothing
/// queued. Once its refresh revives the lease, it takes everything.
async fn a_socket_whose_lease_is_gone_takes_nothing_queued(s: &dyn Store) {
    let a = s.acquire("d", "o", "r", "s1", 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        s.sweep(100, 60_000, SweepGuard::NONE).await.unwrap().len(),
        1
    );
    s.enqueue_command("d", "c1", 10, 60_000).await.unwrap();
    s.set_pending_playlist("d", "p1", 1800).await.unwrap();

    assert_eq!(
        s.take_queued(&take("d", a.epoch)).await.unwrap(),
        Queued::default()
    );
    let f = s
        .device_heartbeat(&hb_at("d", "s1", a.epoch, None, true))
        .await
        .unwrap();
    assert_eq!(
        (f.outcome, f.pending_playlist),
        (HeartbeatOutcome::Live(vec![]), None),
        "the heartbeat still counts, but takes nothing"
    );

    let r = s
        .refresh("r", &[live("d", "s1", a.epoch)], 30_000)
        .await
        .unwrap();
    assert!(matches!(r[..], [RefreshOutcome::Revived { .. }]));
    let q = s.take_queued(&take("d", a.epoch)).await.unwrap();
    assert_eq!(
        (q.commands, q.playlist.as_deref()),
        (vec!["c1".to_string()], Some("p1")),
        "the revived socket takes it all"
    );

    // A superseded socket takes nothing either; the newer one does.
    let b = s.acquire("d", "o", "r", "s2", 30_000).await.unwrap();
    s.enqueue_command("d", "c2", 10, 60_000).await.unwrap();
    assert_eq!(
        s.take_queued(&take("d", a.epoch)).await.unwrap(),
        Queued::default()
    );
    assert_eq!(
        s.take_queued(&take("d", b.epoch)).await.unwrap().commands,
        vec!["c2".to_string()]
    );
}

async fn pending_deliveries_are_taken_once(s: &dyn Store) {
    s.enqueue_command("d", "c1", 10, 60_000).await.unwrap();
    s.set_pending_playlist("d", r#"{"playlist":1}"#, 1800)
        .await
        .unwrap();
    let first = TakeQueued {
        ack_sid: Some("s1"),
        ..take("d", 1)
    };
    let q = s.take_queued(&first).await.unwrap();
    assert_eq!(
        (q.commands, q.playlist.as_deref()),
        (vec!["c1".to_string()], Some(r#"{"playlist":1}"#))
    );
    assert_eq!(
        s.take_queued(&take("d", 1)).await.unwrap(),
        Queued::default()
    );
    // The acknowledging socket is known only while the lease names it.
    assert_eq!(s.lease_and_ack("d").await.unwrap(), (None, false));
    s.acquire("d", "o", "r", "s1", 30_000).await.unwrap();
    assert!(s.lease_and_ack("d").await.unwrap().1);
    let a2 = s.acquire("d", "o", "r", "s2", 30_000).await.unwrap();
    assert!(
        !s.lease_and_ack("d").await.unwrap().1,
        "a newer, older-generation socket"
    );
    s.set_pending_playlist("d", "p2", 1800).await.unwrap();
    let f = s
        .device_heartbeat(&hb_at("d", "s2", a2.epoch, None, false))
        .await
        .unwrap();
    assert_eq!(f.pending_playlist, None, "only taken when asked");
    let f = s
        .device_heartbeat(&hb_at("d", "s2", a2.epoch, None, true))
        .await
        .unwrap();
    assert_eq!(f.pending_playlist.as_deref(), Some("p2"));
    let f = s
        .device_heartbeat(&hb_at("d", "s2", a2.epoch, None, true))
        .await
        .unwrap();
    assert_eq!(f.pending_playlist, None);
}

async fn suspended_organisations_are_shared(s: &dyn Store) {
    s.set_suspended("o1", true).await.unwrap();
    s.set_suspended("o2", true).await.unwrap();
    s.set_suspended("o2", false).await.unwrap();
    assert_eq!(s.suspended_orgs().await.unwrap(), vec!["o1".to_string()]);
}

async fn load_records_are_exchanged_and_forgotten(s: &dyn Store) {
    let sorted = |mut v: Vec<(String, String)>| {
        v.sort();
        v
    };
    let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        s.exchange_load("r1", "{\"devices\":1}").await.unwrap(),
        vec![pair("r1", "{\"devices\":1}")]
    );
    let all = sorted(s.exchange_load("r2", "{\"devices\":2}").await.unwrap());
    assert_eq!(
        all,
        vec![pair("r1", "{\"devices\":1}"), pair("r2", "{\"devices\":2}")]
    );
    // A replica's record is replaced, not added to.
    let all = sorted(s.exchange_load("r1", "{\"devices\":3}").await.unwrap());
    assert_eq!(
        all,
        vec![pair("r1", "{\"devices\":3}"), pair("r2", "{\"devices\":2}")]
    );
    s.forget_loads(&["r1".to_string()]).await.unwrap();
    s.forget_loads(&[]).await.unwrap();
    assert_eq!(
        s.exchange_load("r2", "{\"devices\":4}").await.unwrap(),
        vec![pair("r2", "{\"devices\":4}")]
    );
}
