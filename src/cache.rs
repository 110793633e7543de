//! The credential cache: ready-to-send response bodies per role, and single-flight loads.
//!
//! - Entries are [`RenderedCredentials`]: the bodies rendered once per refresh
//!   ([`wire`](crate::wire)), so the hot path clones a `Bytes` and writes it. Each entry
//!   expires (moka per-entry expiry) when its credentials reach `min_remaining`, so a stale
//!   entry can never be served.
//! - [`CredentialCache::load`] is the only way credentials get in. Concurrent loads for a
//!   role share one in-flight fetch (a spawned task behind a shared future): N cold requests
//!   cause exactly one STS call, the others await the same result — no polling — and a
//!   client that disconnects does not cancel the fetch the others are waiting on.
//! - The cache does not know STS: it calls the [`Fetch`] implementation handed to it
//!   ([`refresh::Fetcher`](crate::refresh::Fetcher) in the broker).
//! - Per-role state ([`RoleSlot`], [`RoleStatus`], the back-off gate) lives in [`slot`]; the
//!   fetcher writes it, the admin endpoint reads it. The hot path touches neither its lock
//!   nor STS.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

use crate::clock;
use crate::config::RoleConfig;
use crate::creds::{Credentials, ErrorClass, FetchError};
use crate::wire::{CredentialBodies, Principal};

pub mod session;
pub mod slot;

pub use slot::{RoleKey, RoleSlot, RoleStatus, SlotUses};

/// Credentials rendered for sending: what the cache holds per role and the handlers write.
pub struct RenderedCredentials {
    /// The ECS response body. Backed by zeroizing memory: wiped when the last clone drops.
    pub ecs_body: Bytes,
    /// The IMDS bodies — `security-credentials/{name}`, and `-extended/{name}` with
    /// `AccountId` (same zeroizing backing) — for the one role `[imds]` exposes only.
    pub imds_bodies: Option<(Bytes, Bytes)>,
    /// Safe to log and to show; joins our logs to CloudTrail.
    pub access_key_id: String,
    /// The credentials themselves (redacting, zeroizing), kept only for roles that are some
    /// role's `source_role`: what the chained role signs with.
    pub credentials: Option<Credentials>,
    /// When the credentials expire.
    pub expiration: SystemTime,
    /// When the broker received them.
    pub issued: SystemTime,
    /// Not served after this instant: `expiration - min_remaining`.
    pub serve_until: SystemTime,
}

impl fmt::Debug for RenderedCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RenderedCredentials")
            .field("bodies", &crate::creds::REDACTED)
            .field("access_key_id", &self.access_key_id)
            .field(
                "expiration",
                &format_args!("{}", humantime::format_rfc3339_seconds(self.expiration)),
            )
            .finish_non_exhaustive()
    }
}

impl RenderedCredentials {
    /// Renders `creds` for `role`; `min_remaining` decides `serve_until`.
    pub fn render(
        role: &RoleConfig,
        creds: &Credentials,
        now: SystemTime,
        min_remaining: Duration,
        uses: SlotUses,
    ) -> RenderedCredentials {
        // The configured account, else the one in the ARN STS answered with.
        let account_id = role.spec.account_id.as_deref().or_else(|| {
            creds
                .assumed_arn
                .as_deref()
                .and_then(|a| a.split(':').nth(4))
                .filter(|a| a.len() == 12)
        });
        let principal = Principal {
            role_arn: role.spec.arn.as_deref(),
            account_id,
        };
        let bodies = CredentialBodies::render(creds, principal, now, uses.imds);
        RenderedCredentials {
            ecs_body: bodies.ecs,
            imds_bodies: bodies.imds,
            access_key_id: creds.access_key_id.clone(),
            credentials: uses.source.then(|| creds.clone()),
            expiration: creds.expiration,
            issued: now,
            serve_until: creds
                .expiration
                .checked_sub(min_remaining)
                .unwrap_or(SystemTime::UNIX_EPOCH),
        }
    }

    /// Lifetime left at `now` (zero once expired).
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.expiration.duration_since(now).unwrap_or_default()
    }

    /// Whether it may still be served at `now`.
    pub fn servable(&self, now: SystemTime) -> bool {
        now < self.serve_until
    }
}

/// A forced refresh within this of the last forced fetch returns its credentials: repeated
/// clicks, scripts in a loop or a forged request cost no STS call.
pub const FORCED_REFRESH_COALESCE: Duration = Duration::from_secs(10);

/// What a forced refresh produced.
#[derive(Debug)]
pub struct ForcedRefresh {
    /// The credentials now cached.
    pub served: Arc<RenderedCredentials>,
    /// Answered by a fetch already in flight or just finished, not by a call of its own.
    pub coalesced: bool,
}

/// A role's load in flight, which every concurrent load of the role awaits.
type InflightLoad = Shared<BoxFuture<'static, Result<Arc<RenderedCredentials>, FetchError>>>;

/// Obtains fresh credentials for a role: what the cache calls on a miss, a refresh or a forced
/// refresh, so that it needs to know nothing of STS. The broker's is
/// [`refresh::Fetcher`](crate::refresh::Fetcher) (back-off gate, signer, STS call,
/// bookkeeping); tests hand in their own.
pub trait Fetch: Send + Sync + 'static {
    /// Fetches `slot`'s credentials. It gets the cache so that a chained role can read (or
    /// single-flight) its source role's. Called at most once at a time per slot.
    fn fetch<'a>(
        &'a self,
        cache: &'a Arc<CredentialCache>,
        slot: &'a Arc<RoleSlot>,
    ) -> BoxFuture<'a, Result<Credentials, FetchError>>;
}

/// Why a request could not be answered from the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheError {
    /// Fetching failed (or is backing off after a failure).
    Fetch(FetchError),
    /// The in-flight fetch did not finish within the wait bound.
    TimedOut,
}

/// The cache of servable credentials.
pub struct CredentialCache {
    entries: moka::future::Cache<RoleKey, Arc<RenderedCredentials>>,
    fetch: Arc<dyn Fetch>,
    min_remaining_ms: AtomicU64,
}

impl fmt::Debug for CredentialCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialCache")
            .field("entries", &self.entries.entry_count())
            .finish_non_exhaustive()
    }
}

/// Expires each entry when its credentials may no longer be served.
struct ServeUntil;

impl moka::Expiry<RoleKey, Arc<RenderedCredentials>> for ServeUntil {
    fn expire_after_create(
        &self,
        _key: &RoleKey,
        value: &Arc<RenderedCredentials>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(
            value
                .serve_until
                .duration_since(clock::now())
                .unwrap_or_default(),
        )
    }

    fn expire_after_update(
        &self,
        key: &RoleKey,
        value: &Arc<RenderedCredentials>,
        updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, value, updated_at)
    }
}

impl CredentialCache {
    /// `capacity` bounds the number of roles held (one entry per role generation).
    pub fn new(
        fetch: Arc<dyn Fetch>,
        min_remaining: Duration,
        capacity: u64,
    ) -> Arc<CredentialCache> {
        Arc::new(CredentialCache {
            entries: moka::future::Cache::builder()
                .max_capacity(capacity)
                .expire_after(ServeUntil)
                .build(),
            fetch,
            min_remaining_ms: AtomicU64::new(duration_ms(min_remaining)),
        })
    }

    /// Applies a reloaded `[refresh].min_remaining` to future renders and reads.
    pub fn set_min_remaining(&self, d: Duration) {
        self.min_remaining_ms
            .store(duration_ms(d), Ordering::Relaxed);
    }

    fn min_remaining(&self) -> Duration {
        Duration::from_millis(self.min_remaining_ms.load(Ordering::Relaxed))
    }

    /// The current servable entry, if any. Never waits for STS.
    pub async fn peek(&self, key: &RoleKey) -> Option<Arc<RenderedCredentials>> {
        let served = self.entries.get(key).await?;
        served.servable(clock::now()).then_some(served)
    }

    /// The hot path: the cached entry, or — when there is none — the result of the one
    /// in-flight fetch, awaited for at most `wait`.
    pub async fn get(
        self: &Arc<Self>,
        slot: &Arc<RoleSlot>,
        wait: Duration,
    ) -> Result<Arc<RenderedCredentials>, CacheError> {
        if let Some(served) = self.peek(&slot.key).await {
            return Ok(served);
        }
        match tokio::time::timeout(wait, self.load(slot)).await {
            Ok(Ok(served)) if served.servable(clock::now()) => Ok(served),
            Ok(Ok(_)) => Err(CacheError::Fetch(FetchError::new(
                ErrorClass::Transient,
                None,
                "STS issued credentials that are already below min_remaining",
            ))),
            Ok(Err(e)) => Err(CacheError::Fetch(e)),
            Err(_) => Err(CacheError::TimedOut),
        }
    }

    /// Fetches new credentials for `slot` and caches them; joins the fetch already in
    /// flight for the role if there is one. The current entry keeps being served meanwhile.
    pub async fn load(
        self: &Arc<Self>,
        slot: &Arc<RoleSlot>,
    ) -> Result<Arc<RenderedCredentials>, FetchError> {
        let inflight = slot
            .inflight
            .lock()
            .expect("inflight lock poisoned")
            .get_or_insert_with(|| self.spawn_load(slot))
            .clone();
        inflight.await
    }

    /// Starts the one fetch of `slot` in a task of its own, so that a waiter that gives up
    /// (a client disconnects) does not cancel it for the others.
    fn spawn_load(self: &Arc<Self>, slot: &Arc<RoleSlot>) -> InflightLoad {
        let task = tokio::spawn(Arc::clone(self).fetch_and_store(Arc::clone(slot)));
        async move {
            task.await.unwrap_or_else(|_| {
                Err(FetchError::new(
                    ErrorClass::Transient,
                    None,
                    "the fetch task was cancelled",
                ))
            })
        }
        .boxed()
        .shared()
    }

    /// Fetches, renders and caches `slot`'s credentials, then lets the next load start a
    /// fetch of its own.
    async fn fetch_and_store(
        self: Arc<Self>,
        slot: Arc<RoleSlot>,
    ) -> Result<Arc<RenderedCredentials>, FetchError> {
        let result = self.fetch.fetch(&self, &slot).await.map(|c| {
            Arc::new(RenderedCredentials::render(
                &slot.config,
                &c,
                clock::now(),
                self.min_remaining(),
                slot.uses,
            ))
        });
        if let Ok(served) = &result {
            self.entries
                .insert(slot.key.clone(), Arc::clone(served))
                .await;
        }
        *slot.inflight.lock().expect("inflight lock poisoned") = None;
        result
    }

    /// Fetches new credentials now (the operator's answer to a session revocation) without
    /// throwing the current ones away: they keep being served until the new ones are in, and
    /// stay when STS fails. Concurrent forced refreshes join the fetch in flight; one within
    /// [`FORCED_REFRESH_COALESCE`] of the start of the last forced fetch answers with the
    /// credentials it got, and a role in back-off answers with its last error: none of these
    /// costs an STS call.
    pub async fn force_refresh(
        self: &Arc<Self>,
        slot: &Arc<RoleSlot>,
    ) -> Result<ForcedRefresh, FetchError> {
        let in_flight = slot
            .inflight
            .lock()
            .expect("inflight lock poisoned")
            .is_some();
        // Only credentials fetched after an earlier forced refresh started count: a
        // scheduled refresh from before a revocation must not answer for it.
        let last_forced = slot.status().last_forced;
        if !in_flight
            && let Some(forced) = last_forced
            && clock::now()
                .duration_since(forced)
                .is_ok_and(|age| age < FORCED_REFRESH_COALESCE)
            && let Some(served) = self.peek(&slot.key).await
            && served.issued >= forced
        {
            return Ok(ForcedRefresh {
                served,
                coalesced: true,
            });
        }
        if !in_flight {
            slot.update_status(|s| s.last_forced = Some(clock::now()));
        }
        // The fetcher's back-off gate answers without calling STS while it is closed.
        let result = self.load(slot).await;
        if result.is_ok() {
            slot.wake.notify_one();
        }
        result.map(|served| ForcedRefresh {
            served,
            coalesced: in_flight,
        })
    }

    /// Forgets a role generation (removed or changed by a reload).
    pub async fn remove(&self, key: &RoleKey) {
        self.entries.invalidate(key).await;
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
