//! The one place the broker asks what time it is.
//!
//! Everything in `src/` reads the wall clock through [`now`] and the monotonic clock through
//! [`instant`]; `clippy.toml` bans the direct calls (`SystemTime::now`, `Instant::now`), as
//! linkerd2-proxy and smithy-rs do, so no code path escapes a test's clock.
//!
//! - [`instant`] is tokio's clock: on a runtime whose time is paused
//!   (`#[tokio::test(start_paused = true)]`) it advances only as timers fire, so a test waits
//!   out a 15-minute back-off in microseconds.
//! - [`now`] is the system's wall clock: credentials expire in wall time and a host that was
//!   suspended must see them as expired. A test that runs the broker on a paused runtime calls
//!   [`follow_tokio_time`] first: from then on, on that thread, the wall clock starts at the
//!   real time and advances exactly as tokio's clock does, so credential expiry, refresh-ahead
//!   and back-off all move together. A current-thread runtime runs every task on the test's
//!   thread, so the whole broker sees the same clock; other tests (other threads) are untouched.

use std::cell::Cell;
use std::time::{Instant, SystemTime};

thread_local! {
    /// `(wall, at)`: on this thread, the wall clock read `wall` when tokio's clock read `at`.
    static FOLLOWING: Cell<Option<(SystemTime, tokio::time::Instant)>> = const { Cell::new(None) };
}

/// The wall-clock time: when credentials expire, when they were issued, audit timestamps.
pub fn now() -> SystemTime {
    match FOLLOWING.with(Cell::get) {
        None => system_now(),
        Some((wall, at)) => wall + tokio_now().saturating_duration_since(at),
    }
}

/// The monotonic time: deadlines, rate limits, latencies. Follows a paused tokio clock.
pub fn instant() -> Instant {
    tokio_now().into_std()
}

/// [`instant`] as tokio's type, for `sleep_until` deadlines.
pub fn tokio_instant() -> tokio::time::Instant {
    tokio_now()
}

/// Makes [`now`] on this thread start at the real time and advance with tokio's clock, until
/// the returned guard drops. For tests that run the broker on a paused current-thread runtime.
#[must_use = "the wall clock follows tokio's only while the guard lives"]
pub fn follow_tokio_time() -> FollowGuard {
    let previous = FOLLOWING.with(|f| f.replace(Some((system_now(), tokio_now()))));
    FollowGuard { previous }
}

/// Restores the thread's previous clock when dropped.
#[derive(Debug)]
pub struct FollowGuard {
    previous: Option<(SystemTime, tokio::time::Instant)>,
}

impl Drop for FollowGuard {
    fn drop(&mut self) {
        FOLLOWING.with(|f| f.set(self.previous));
    }
}

#[allow(clippy::disallowed_methods)] // the one sanctioned call
fn system_now() -> SystemTime {
    SystemTime::now()
}

#[allow(clippy::disallowed_methods)] // the one sanctioned call
fn tokio_now() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_wall_clock_follows_a_paused_tokio_clock_only_while_asked() {
        let guard = follow_tokio_time();
        let (wall, mono) = (now(), instant());
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(
            now().duration_since(wall).unwrap(),
            Duration::from_secs(3600)
        );
        assert_eq!(instant() - mono, Duration::from_secs(3600));
        drop(guard);
        // Back on the system clock: the simulated hour is gone.
        assert!(now() < wall + Duration::from_secs(60));
    }

    #[test]
    fn without_following_the_wall_clock_is_the_systems() {
        let before = system_now();
        let t = now();
        assert!(t >= before && t <= system_now());
    }
}
