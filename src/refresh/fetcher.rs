//! The [`Fetcher`]: how the broker obtains one role's credentials when the cache asks
//! ([`Fetch`]): back-off gate, signer, STS call, bookkeeping, each a method of its own.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use rand::Rng;

use super::backoff;
use crate::cache::{CacheError, CredentialCache, Fetch, RoleSlot};
use crate::clock;
use crate::config::{Config, RefreshConfig};
use crate::creds::{Credentials, ErrorClass, FetchError};
use crate::metrics::Metrics;
use crate::source;
use crate::state::Snapshot;
use crate::sts::Sts;
use crate::sts::rate::AdaptiveRate;

/// What the fetcher calls STS with; swapped whole on reload.
#[derive(Debug)]
pub struct Upstream {
    /// The STS client of the current `[sts]` and `[source]`.
    pub sts: Sts,
    /// Broker-wide call rate (adaptive under Throttling when configured).
    pub limiter: AdaptiveRate,
}

/// Obtains fresh credentials for a role, in four named steps. One per broker, shared by every
/// role and caller session.
///
/// 1. `gate`: while the role's back-off gate is closed, answer with the error that closed it;
///    no STS call.
/// 2. `signer`: which credentials sign the call — the broker's `[source]` (inside the STS
///    client), or for a chained role its `source_role`'s current credentials, read (or
///    single-flighted) through the cache.
/// 3. `call`: gather the call's inputs (token file, MFA code, SAML assertion), wait for a slot
///    of the broker-wide rate limit, call STS, check what came back. The rate limit is taken
///    last, right before the request: a fetch that fails earlier (no source role credentials,
///    no token file) spends none of it.
/// 4. `record`: the role's status and back-off gate, the failure gauge, the log line; a lazy
///    role that got its first credentials is woken to be kept warm.
///
/// The cache renders and stores what comes back (it owns `min_remaining` and the entry
/// shape); requests and the audit trail are recorded by the handlers, not here.
#[derive(Debug)]
pub struct Fetcher {
    /// The configuration snapshot: the STS client and the settings of each fetch.
    state: Arc<ArcSwap<Snapshot>>,
    metrics: Arc<Metrics>,
}

/// What one fetch reads from the broker's current configuration, taken once at its start so
/// that a reload in the middle of a fetch never mixes two configurations.
struct Settings {
    upstream: Arc<Upstream>,
    config: Arc<Config>,
}

impl Settings {
    /// How long a chained role waits for its source role's credentials: the source role's
    /// own STS call, plus a margin.
    fn source_wait(&self) -> Duration {
        self.config.sts.timeout * 2 + Duration::from_secs(1)
    }

    /// Credentials with this little left are a failure, not a success.
    fn min_remaining(&self) -> Duration {
        self.config.refresh.min_remaining
    }

    /// The back-off schedule.
    fn refresh(&self) -> &RefreshConfig {
        &self.config.refresh
    }
}

impl Fetch for Fetcher {
    fn fetch<'a>(
        &'a self,
        cache: &'a Arc<CredentialCache>,
        slot: &'a Arc<RoleSlot>,
    ) -> BoxFuture<'a, Result<Credentials, FetchError>> {
        self.fetch_role(cache, slot).boxed()
    }
}

impl Fetcher {
    /// A fetcher that reads the STS client and the configuration current at each fetch, from
    /// the one snapshot a reload swaps.
    pub fn new(state: Arc<ArcSwap<Snapshot>>, metrics: Arc<Metrics>) -> Arc<Fetcher> {
        Arc::new(Fetcher { state, metrics })
    }

    /// The broker's current STS client and configuration (one snapshot: never half of each).
    fn settings(&self) -> Settings {
        let snapshot = self.state.load();
        Settings {
            upstream: Arc::clone(&snapshot.upstream),
            config: Arc::clone(&snapshot.config),
        }
    }

    /// The four steps in order. A closed gate answers without recording anything: nothing
    /// was attempted.
    async fn fetch_role(
        &self,
        cache: &Arc<CredentialCache>,
        slot: &Arc<RoleSlot>,
    ) -> Result<Credentials, FetchError> {
        let settings = self.settings();
        Self::gate(slot)?;
        let result = async {
            let signer = Self::signer(cache, slot, settings.source_wait()).await?;
            self.call(&settings, cache, slot, signer).await
        }
        .await;
        self.record(slot, &result, settings.refresh());
        result
    }

    /// Step 1, the back-off gate: while it is closed, the last error, and no STS call.
    fn gate(slot: &RoleSlot) -> Result<(), FetchError> {
        match slot.backoff_gate() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Step 2, who signs: `None` for the broker's own `[source]` credentials (the STS client
    /// holds them); for a chained role, its source role's current credentials, single-flight
    /// through the cache when it has none yet.
    async fn signer(
        cache: &Arc<CredentialCache>,
        slot: &RoleSlot,
        wait: Duration,
    ) -> Result<Option<Credentials>, FetchError> {
        let Some(base) = &slot.base else {
            return Ok(None);
        };
        let name = &base.config.name;
        let served = Box::pin(cache.get(base, wait)).await.map_err(|e| match e {
            CacheError::Fetch(f) => FetchError::new(
                f.class,
                f.code,
                format!("source role {name:?}: {}", f.message),
            ),
            CacheError::TimedOut => FetchError::new(
                ErrorClass::Transient,
                None,
                format!("source role {name:?} did not get credentials in time"),
            ),
        })?;
        let creds = served.credentials.clone().ok_or_else(|| {
            FetchError::new(
                ErrorClass::Transient,
                None,
                format!("internal: source role {name:?} keeps no credentials"),
            )
        })?;
        Ok(Some(creds))
    }

    /// Step 3, the STS call: inputs, rate limit, the call itself (its latency and outcome
    /// counted), then the checks on what came back.
    async fn call(
        &self,
        settings: &Settings,
        cache: &Arc<CredentialCache>,
        slot: &RoleSlot,
        signer: Option<Credentials>,
    ) -> Result<Credentials, FetchError> {
        let role = &slot.config;
        let upstream = &settings.upstream;
        // The SDK call's future is large (~6 KB); boxing it (and the input gathering) keeps
        // the thousands of fetches that wait for their rate-limit slot at start-up small.
        let mut inputs = Box::pin(source::gather_inputs(role, signer)).await?;
        // Cold: a client waits for this call, so it may be hedged.
        inputs.cold = Box::pin(cache.peek(&slot.key))
            .await
            .is_none_or(|s| !s.servable(clock::now()));
        upstream.limiter.acquire().await;
        let started = clock::tokio_instant();
        let obtained = Box::pin(upstream.sts.obtain(role, inputs)).await;
        adapt_rate(&upstream.limiter, &obtained, started, &self.metrics);
        let result = obtained
            .and_then(|c| c.validated(role.spec.duration, clock::now()))
            .and_then(|c| check_lifetime(c, settings.min_remaining()));
        self.metrics.observe_sts_call(
            &role.name,
            Sts::api_for(&role.spec.kind),
            &result,
            clock::tokio_instant().duration_since(started),
        );
        result
    }

    /// Step 4, bookkeeping: the status and back-off gate, the failure gauge, the log line.
    fn record(
        &self,
        slot: &RoleSlot,
        result: &Result<Credentials, FetchError>,
        refresh: &RefreshConfig,
    ) {
        let role = slot.config.name.as_str();
        match result {
            Ok(c) => {
                let now = clock::now();
                slot.record_success(c, now);
                self.metrics.set_consecutive_failures(role, 0);
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
                    backoff(failures, e.class, refresh, rand::rng().random())
                });
                self.metrics.set_consecutive_failures(role, failures);
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
    }
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
