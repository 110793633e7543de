//! The refresh schedule: refresh ahead of expiry with jitter, back off on failure, and keep
//! every STS call under the broker-wide rate limit.
//!
//! The maths are pure functions ([`refresh_due`], [`backoff`]) with the randomness passed
//! in; [`role_loop`] is the thin loop around them, one task per role. The [`Fetcher`] is what
//! the cache calls to obtain a role's credentials (back-off gate, signer, STS call,
//! bookkeeping).
//!
//! Worked example with the defaults (`lead = "40m"`, `jitter = "30s"`, `duration = "1h"`):
//! credentials issued at 12:00 expire at 13:00 and are refreshed between 12:19:30 and
//! 12:20:00. While refreshes fail the 12:00 credentials keep being served until 12:45
//! (`min_remaining = "15m"`), then requests get 503.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::cache::{CredentialCache, RoleSlot};
use crate::clock;
use crate::config::RefreshConfig;
use crate::creds::ErrorClass;
use crate::state::Snapshot;

mod fetcher;

pub use fetcher::{Fetcher, Upstream};

/// When to refresh credentials issued at `issued` that expire at `expiration`.
///
/// `expiration - lead - jitter * u` where `u` in `[0, 1)` is the random draw. If STS granted a
/// shorter lifetime than the lead assumes (a role's MaxSessionDuration, chaining), the
/// refresh falls at half the lifetime instead. Never later than the moment the credentials
/// stop being servable (`expiration - min_remaining`), never before `issued`.
pub fn refresh_due(
    issued: SystemTime,
    expiration: SystemTime,
    cfg: &RefreshConfig,
    u: f64,
) -> SystemTime {
    let lifetime = expiration.duration_since(issued).unwrap_or_default();
    let jitter = cfg.jitter.mul_f64(u.clamp(0.0, 1.0));
    let lead = cfg.lead.for_lifetime(lifetime);
    let due = if lead + jitter < lifetime {
        expiration - lead - jitter
    } else {
        issued + lifetime / 2
    };
    let serve_until = expiration
        .checked_sub(cfg.min_remaining)
        .unwrap_or(issued)
        .max(issued);
    due.min(serve_until).max(issued)
}

/// How long to wait after the `failures`-th consecutive failure of class `class`.
///
/// Exponential from `backoff_min`, doubling per failure (one extra doubling when throttled),
/// "equal jitter" (between half and all of the step, `u` in `[0, 1)`), capped at
/// `backoff_max`. Errors a retry cannot fix (access denied, invalid request) wait
/// `backoff_max` straight away: no hammering STS while IAM is wrong.
pub fn backoff(failures: u32, class: ErrorClass, cfg: &RefreshConfig, u: f64) -> Duration {
    if !class.retryable() {
        return cfg.backoff_max;
    }
    let extra = u32::from(class == ErrorClass::Throttled);
    let exp = failures.saturating_sub(1).saturating_add(extra).min(30);
    let step = cfg
        .backoff_min
        .saturating_mul(1u32 << exp)
        .min(cfg.backoff_max);
    let jittered = step / 2 + (step / 2).mul_f64(u.clamp(0.0, 1.0));
    jittered.clamp(cfg.backoff_min, cfg.backoff_max)
}

/// Keeps one role's credentials fresh until `cancel` fires.
///
/// Prefetched roles start after `first_delay` (the role's share of `startup_spread`, zero
/// after start-up); lazy (`prefetch = false`) roles wait for their first request to
/// succeed, then are kept warm the same way.
pub async fn role_loop(
    cache: Arc<CredentialCache>,
    slot: Arc<RoleSlot>,
    state: Arc<ArcSwap<Snapshot>>,
    cancel: CancellationToken,
    first_delay: Duration,
) {
    if slot.config.spec.prefetch {
        if !first_delay.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(first_delay) => {}
                // A client got there first (cold fetch) or a forced refresh: schedule now.
                () = slot.wake.notified() => {}
                () = cancel.cancelled() => return,
            }
        }
    } else {
        tokio::select! {
            () = slot.wake.notified() => {}
            () = cancel.cancelled() => return,
        }
    }
    loop {
        let now = clock::now();
        let refresh = state.load().config.refresh.clone();
        // Boxed: one of these futures lives per role; keep the idle state small.
        let due = match Box::pin(cache.peek(&slot.key)).await {
            Some(served) => refresh_due(
                served.issued,
                served.expiration,
                &refresh,
                rand::rng().random(),
            ),
            // A lazy role's first fetch wakes this loop before the cache has stored what it
            // obtained: schedule from the status it recorded, not a second STS call now.
            None => match (slot.status().last_refresh, slot.status().expiration) {
                (Some(issued), Some(expiration)) if expiration > now => {
                    refresh_due(issued, expiration, &refresh, rand::rng().random())
                }
                _ => now,
            },
        };
        let mut delay = due.duration_since(now).unwrap_or_default();
        if let Some(t) = slot.status().retry_not_before {
            delay = delay.max(t.saturating_duration_since(clock::instant()));
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            // Forced refresh or a reload: recompute the schedule.
            () = slot.wake.notified() => continue,
            () = cancel.cancelled() => return,
        }
        // Failures are recorded (status, back-off gate, log) by the fetcher.
        let _ = Box::pin(cache.load(&slot)).await;
    }
}

#[cfg(test)]
mod tests;
