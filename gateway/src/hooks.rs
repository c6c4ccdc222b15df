//! Test-only fault injection: random delays between the steps of the lease protocol, compiled
//! only with the `test-hooks` feature and active only when `VIZORA_TEST_LEASE_DELAY_MS` or
//! `VIZORA_TEST_RELEASE_DELAY_MS` is set.

use std::time::Duration;

#[derive(Clone, Debug, Default)]
pub struct Hooks {
    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    max_delay: Option<Duration>,
    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    release_delay: Option<Duration>,
}

impl Hooks {
    #[cfg(feature = "test-hooks")]
    pub fn from_env() -> Hooks {
        let max_delay = std::env::var("VIZORA_TEST_LEASE_DELAY_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|v| *v > 0)
            .map(Duration::from_millis);
        let release_delay = std::env::var("VIZORA_TEST_RELEASE_DELAY_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|v| *v > 0)
            .map(Duration::from_millis);
        Hooks {
            max_delay,
            release_delay,
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

    /// Sleeps a random time up to the configured maximum (no-op in normal builds).
    pub async fn pause(&self) {
        #[cfg(feature = "test-hooks")]
        if let Some(max) = self.max_delay {
            let ms = rand::random_range(0..=max.as_millis() as u64);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }
}
