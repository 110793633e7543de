//! The refresh schedule: refresh ahead of expiry with jitter, back off on failure, and keep
//! every STS call under the broker-wide rate limit.
//!
//! The maths are pure functions ([`refresh_due`], [`backoff`]) with the randomness passed
//! in; [`role_loop`] is the thin loop around them, one task per role.
//!
//! Worked example with the defaults (`lead = "40m"`, `jitter = "30s"`, `duration = "1h"`):
//! credentials issued at 12:00 expire at 13:00 and are refreshed between 12:19:30 and
//! 12:20:00. While refreshes fail the 12:00 credentials keep being served until 12:45
//! (`min_remaining = "15m"`), then requests get 503.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use futures_util::FutureExt;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::cache::{CacheError, CredentialCache, Fetch, RoleSlot};
use crate::clock;
use crate::config::{Config, RefreshConfig};
use crate::creds::{Credentials, ErrorClass, FetchError};
use crate::metrics::Metrics;
use crate::source;
use crate::sts::Sts;
use crate::sts::rate::AdaptiveRate;

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

/// What the fetch function needs; swapped whole on reload.
#[derive(Debug)]
pub struct Upstream {
    pub sts: Sts,
    /// Broker-wide call rate (adaptive under Throttling when configured).
    pub limiter: AdaptiveRate,
}

/// Builds the cache's fetch function: back-off gate, rate limit, STS call, checks on what
/// came back, status bookkeeping, metrics and logs.
pub fn fetcher(
    upstream: Arc<ArcSwap<Upstream>>,
    config: Arc<ArcSwap<Config>>,
    metrics: Arc<Metrics>,
) -> Fetch {
    Arc::new(move |cache: Arc<CredentialCache>, slot: Arc<RoleSlot>| {
        let upstream = upstream.load_full();
        let config = config.load_full();
        let metrics = Arc::clone(&metrics);
        async move {
            let role = slot.config.name.as_str();
            // The back-off gate: while it is closed, answer with the last error, no STS call.
            if let Some(e) = slot.backoff_gate() {
                return Err(e);
            }
            let api = Sts::api_for(&slot.config.spec.kind);
            let result = async {
                // Role chaining: the source role's current credentials (single-flight
                // through the cache when it has none yet) sign this call.
                let signer = match &slot.base {
                    Some(base) => {
                        let wait = config.sts.timeout * 2 + Duration::from_secs(1);
                        let served = Box::pin(cache.get(base, wait)).await.map_err(|e| match e {
                            CacheError::Fetch(f) => FetchError::new(
                                f.class,
                                f.code,
                                format!("source role {:?}: {}", base.config.name, f.message),
                            ),
                            CacheError::TimedOut => FetchError::new(
                                ErrorClass::Transient,
                                None,
                                format!("source role {:?} did not get credentials in time", base.config.name),
                            ),
                        })?;
                        let creds = served.credentials.clone().ok_or_else(|| {
                            FetchError::new(
                                ErrorClass::Transient,
                                None,
                                format!(
                                    "internal: source role {:?} keeps no credentials",
                                    base.config.name
                                ),
                            )
                        })?;
                        Some(creds)
                    }
                    None => None,
                };
                // The SDK call's future is large (~6 KB); boxing it (and the input
                // gathering) keeps the thousands of fetches that wait for their rate-limit
                // slot at start-up small.
                let mut inputs = Box::pin(source::gather_inputs(&slot.config, signer)).await?;
                // Cold: a client waits for this call, so it may be hedged.
                inputs.cold = Box::pin(cache.peek(&slot.key))
                    .await
                    .is_none_or(|s| !s.servable(clock::now()));
                upstream.limiter.acquire().await;
                let started = clock::instant();
                let sent = clock::tokio_instant();
                let obtained = Box::pin(upstream.sts.obtain(&slot.config, inputs)).await;
                adapt_rate(&upstream.limiter, &obtained, sent, &metrics);
                let result = obtained
                    .and_then(|c| c.validated(slot.config.spec.duration, clock::now()))
                    .and_then(|c| check_lifetime(c, config.refresh.min_remaining));
                metrics.observe_sts_call(role, api, &result, started.elapsed());
                result
            }
            .await;
            let now = clock::now();
            match &result {
                Ok(c) => {
                    slot.record_success(c, now);
                    metrics.set_consecutive_failures(role, 0);
                    tracing::info!(
                        role,
                        access_key_id = %c.access_key_id,
                        expiration = %humantime::format_rfc3339_seconds(c.expiration),
                        expires_in_s = c.expiration.duration_since(now).unwrap_or_default().as_secs(),
                        "credentials refreshed"
                    );
                    // A lazy role that just got its first credentials starts being kept warm.
                    slot.wake.notify_one();
                }
                Err(e) => {
                    let (failures, wait) = slot.record_failure(e, |failures| {
                        backoff(failures, e.class, &config.refresh, rand::rng().random())
                    });
                    metrics.set_consecutive_failures(role, failures);
                    tracing::warn!(
                        role,
                        class = %e.class,
                        code = e.code.as_deref().unwrap_or(""),
                        error = %e.message,
                        retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                        "refresh failed; serving the last good credentials while they last"
                    );
                }
            }
            result
        }
        .boxed()
    })
}

/// Feeds a call's outcome to the adaptive rate: Throttling lowers it, a success lets it
/// recover; the gauge follows.
fn adapt_rate(
    limiter: &AdaptiveRate,
    result: &Result<Credentials, FetchError>,
    sent: tokio::time::Instant,
    metrics: &Metrics,
) {
    let changed = match result {
        Ok(_) => limiter.succeeded(),
        Err(e) if e.class == ErrorClass::Throttled => {
            let r = limiter.throttled(sent);
            if let Some(rate) = r {
                tracing::warn!(
                    calls_per_second = rate,
                    "STS throttles: lowering the broker's call rate"
                );
            }
            r
        }
        Err(_) => None,
    };
    if let Some(rate) = changed {
        metrics.set_sts_rate(rate);
    }
}

/// Credentials that are already too close to expiry are a failure, not a success.
fn check_lifetime(c: Credentials, min_remaining: Duration) -> Result<Credentials, FetchError> {
    let left = c
        .expiration
        .duration_since(clock::now())
        .unwrap_or_default();
    if left <= min_remaining {
        return Err(FetchError::new(
            ErrorClass::Transient,
            None,
            format!(
                "STS issued credentials that expire in {}s, not more than min_remaining ({}s)",
                left.as_secs(),
                min_remaining.as_secs()
            ),
        ));
    }
    Ok(c)
}

/// Keeps one role's credentials fresh until `cancel` fires.
///
/// Prefetched roles start after `first_delay` (the role's share of `startup_spread`, zero
/// after start-up); lazy (`prefetch = false`) roles wait for their first request to
/// succeed, then are kept warm the same way.
pub async fn role_loop(
    cache: Arc<CredentialCache>,
    slot: Arc<RoleSlot>,
    config: Arc<ArcSwap<Config>>,
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
        let refresh = config.load().refresh.clone();
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
        // Failures are recorded (status, back-off gate, log) by the fetch function.
        let _ = Box::pin(cache.load(&slot)).await;
    }
}

#[cfg(test)]
mod tests;
