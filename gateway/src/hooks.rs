//! Test-only fault injection: random delays between the steps of the lease protocol and a lagging
//! transition writer, compiled only with the `test-hooks` feature and active only when
//! `VIZORA_TEST_LEASE_DELAY_MS`, `VIZORA_TEST_RELEASE_DELAY_MS` or
//! `VIZORA_TEST_TRANSITION_DELAY_MS` is set; and `VIZORA_TEST_FENCE_RULE` (`never`: the fence
//! rule never fences; `always`: it fences without asking the witness), with which the partition
//! tests are shown to fail.

use std::time::Duration;

// The hooks slow the lease protocol down on purpose. Cargo unifies features across the packages
// of one build, so a release build that happens to include the test harness would get them:
// refuse to compile instead (the tests' gateway is a debug build).
#[cfg(all(feature = "test-hooks", not(debug_assertions)))]
compile_error!(
    "the `test-hooks` feature is for the tests' debug builds only; build the release with \
     `cargo build --release -p vizora-gateway`"
);

#[derive(Clone, Debug, Default)]
pub struct Hooks {
    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    max_delay: Option<Duration>,
    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    release_delay: Option<Duration>,
    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    transition_delay: Option<Duration>,
    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    fence_rule: Option<bool>,
}

#[cfg(feature = "test-hooks")]
fn delay_from_env(name: &str) -> Option<Duration> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|v| *v > 0)
        .map(Duration::from_millis)
}

impl Hooks {
    #[cfg(feature = "test-hooks")]
    pub fn from_env() -> Hooks {
        Hooks {
            max_delay: delay_from_env("VIZORA_TEST_LEASE_DELAY_MS"),
            release_delay: delay_from_env("VIZORA_TEST_RELEASE_DELAY_MS"),
            transition_delay: delay_from_env("VIZORA_TEST_TRANSITION_DELAY_MS"),
            fence_rule: match std::env::var("VIZORA_TEST_FENCE_RULE").as_deref() {
                Ok("never") => Some(false),
                Ok("always") => Some(true),
                _ => None,
            },
        }
    }

    #[cfg(not(feature = "test-hooks"))]
    pub fn from_env() -> Hooks {
        Hooks::default()
    }

    /// Sleeps a fixed time before a disconnect's release (`VIZORA_TEST_RELEASE_DELAY_MS`):
    /// a slow disconnect handler racing a reconnect elsewhere.
    pub async fn before_release(&self) {
        #[cfg(feature = "test-hooks")]
        if let Some(d) = self.release_delay {
            tokio::time::sleep(d).await;
        }
    }

    /// Sleeps a fixed time before each database transition write
    /// (`VIZORA_TEST_TRANSITION_DELAY_MS`): a database that lags behind Redis.
    pub async fn before_transition_write(&self) {
        #[cfg(feature = "test-hooks")]
        if let Some(d) = self.transition_delay {
            tokio::time::sleep(d).await;
        }
    }

    /// `VIZORA_TEST_FENCE_RULE`: Some(false) to never fence, Some(true) to fence whatever the
    /// witness says (None in normal builds).
    pub fn fence_rule(&self) -> Option<bool> {
        #[cfg(feature = "test-hooks")]
        return self.fence_rule;
        #[cfg(not(feature = "test-hooks"))]
        None
    }

    /// Sleeps a random time up to the configured maximum (no-op in normal builds).
    pub async fn pause(&self) {
        #[cfg(feature = "test-hooks")]
        if let Some(max) = self.max_delay {
            let ms = rand::random_range(0..=max.as_millis() as u64);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }
}
