//! Waiting on a condition with a deadline, never sleep-and-hope.
use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `condition` every 20 ms until it holds or `limit` has passed.
pub fn wait_blocking(limit: Duration, mut condition: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("condition not met within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Async version of [`wait_blocking`]: polls until `condition` resolves to
/// true or `limit` has passed, and panics with `what` if it never does.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if condition().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
