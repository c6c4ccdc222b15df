//! Issue 19: the Redis Cluster harness itself (tests/src/redis_cluster.rs), before any gateway
//! runs on it: six nodes form a cluster, keys land on the primary the harness names (hash-tagged
//! shard keys spread over every primary), and a SIGKILLed primary's replica takes over with the
//! write it acknowledged.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use vizora_gateway_tests::redis_cluster::RedisCluster;

#[tokio::test]
async fn the_cluster_forms_routes_keys_and_fails_over() {
    let t0 = Instant::now();
    let mut cluster = RedisCluster::start().await;
    let formed = t0.elapsed();

    let seeds: Vec<String> = cluster.seeds_env().split(',').map(String::from).collect();
    assert_eq!(seeds.len(), 6, "{seeds:?}");
    assert!(
        seeds.iter().all(|s| s.starts_with("127.0.0.1:")),
        "{seeds:?}"
    );
    let primaries = cluster.primaries().await;
    assert_eq!(primaries.len(), 3, "three primaries: {primaries:?}");

    // The key is on the node node_for_key names: read there directly (no redirection), while
    // another primary answers MOVED to it.
    let key = "{vz:042}device:lease:screen-1";
    cluster.set_replicated(key, "gw-a").await;
    let owner = cluster.node_for_key(key).await;
    assert!(primaries.contains(&owner));
    let direct: Option<String> = cluster
        .query(owner, redis::cmd("GET").arg(key))
        .await
        .unwrap();
    assert_eq!(direct.as_deref(), Some("gw-a"));
    let other = *primaries.iter().find(|p| **p != owner).unwrap();
    let moved = cluster
        .query::<Option<String>>(other, redis::cmd("GET").arg(key))
        .await
        .unwrap_err();
    let (to, _) = moved.redirect_node().expect("MOVED");
    assert!(to.ends_with(&format!(":{owner}")), "{moved}");
    assert_eq!(cluster.get(key).await.as_deref(), Some("gw-a"));

    // One key per shard tag: the 256 shards spread over all three primaries.
    for shard in 0..256 {
        let k = format!("{{vz:{shard:03}}}presence:deadlines");
        cluster.cmd::<i64>(&["ZADD", k.as_str(), "1", "dev"]).await;
    }
    cluster.sync_replicas().await;
    let per = cluster.keys_per_primary().await;
    assert_eq!(per.iter().map(|(_, n)| n).sum::<u64>(), 257, "{per:?}");
    assert!(per.iter().all(|(_, n)| *n > 40), "shards spread: {per:?}");

    // SIGKILL the key's primary: its replica is promoted and has the acknowledged write.
    let t1 = Instant::now();
    let killed = cluster.kill9_primary_of(key).await;
    assert_eq!(killed, owner);
    cluster.wait_failover(killed).await;
    let failover = t1.elapsed();
    let now = cluster.node_for_key(key).await;
    assert_ne!(now, killed);
    assert!(!cluster.primaries().await.contains(&killed));
    assert_eq!(cluster.primaries().await.len(), 3);
    assert_eq!(cluster.get(key).await.as_deref(), Some("gw-a"));
    assert_eq!(
        cluster
            .keys_per_primary()
            .await
            .iter()
            .map(|(_, n)| n)
            .sum::<u64>(),
        257,
        "nothing acknowledged was lost"
    );
    eprintln!("cluster formed in {formed:?}, failed over in {failover:?}");
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
}
