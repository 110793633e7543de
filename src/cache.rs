//! The credential cache: ready-to-send response bodies per role, and single-flight loads.
//!
//! - Entries are [`Served`]: the ECS JSON body pre-rendered once per refresh, so the hot path
//!   clones a `Bytes` and writes it. Each entry expires (moka per-entry expiry) when its
//!   credentials reach `min_remaining`, so a stale entry can never be served.
//! - [`CredentialCache::load`] is the only way credentials get in. Concurrent loads for a
//!   role share one in-flight fetch (a spawned task behind a shared future): N cold requests
//!   cause exactly one STS call, the others await the same result — no polling — and a
//!   client that disconnects does not cancel the fetch the others are waiting on.
//! - The cache does not know STS: it calls the [`Fetch`] function handed to it by `refresh`.
//! - Per-role bookkeeping ([`RoleStatus`]) lives in the [`RoleSlot`]; the fetch function
//!   writes it, the admin endpoint reads it. The hot path touches neither its lock nor STS.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use tokio::sync::Notify;
use zeroize::Zeroizing;

use crate::clock;
use crate::config::RoleConfig;
use crate::creds::{Credentials, ErrorClass, FetchError};

/// Identifies one generation of a role: a reload that changes a role's spec gives it a new
/// generation, so a fetch still in flight for the old spec can never be served for the new.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RoleKey {
    pub name: Arc<str>,
    pub generation: u64,
}

/// Credentials rendered for sending.
pub struct Served {
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
    pub expiration: SystemTime,
    /// When the broker received them.
    pub issued: SystemTime,
    /// Not served after this instant: `expiration - min_remaining`.
    pub serve_until: SystemTime,
}

impl fmt::Debug for Served {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Served")
            .field("bodies", &crate::creds::REDACTED)
            .field("access_key_id", &self.access_key_id)
            .field(
                "expiration",
                &format_args!("{}", humantime::format_rfc3339_seconds(self.expiration)),
            )
            .finish_non_exhaustive()
    }
}

impl Served {
    /// Renders `creds` for `role`; `min_remaining` decides `serve_until`.
    pub fn render(
        role: &RoleConfig,
        creds: &Credentials,
        now: SystemTime,
        min_remaining: Duration,
        uses: SlotUses,
    ) -> Served {
        #[derive(serde::Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct EcsBody<'a> {
            access_key_id: &'a str,
            secret_access_key: &'a str,
            token: &'a str,
            expiration: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            role_arn: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            account_id: Option<&'a str>,
        }
        /// The field order of real IMDS; `AccountId` only on the extended path.
        #[derive(serde::Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct ImdsBody<'a> {
            code: &'a str,
            last_updated: &'a str,
            #[serde(rename = "Type")]
            kind: &'a str,
            access_key_id: &'a str,
            secret_access_key: &'a str,
            token: &'a str,
            expiration: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            account_id: Option<&'a str>,
        }
        let expiration = rfc3339(creds.expiration);
        let last_updated = rfc3339(now);
        // The configured account, else the one in the ARN STS answered with.
        let account_id = role.spec.account_id.as_deref().or_else(|| {
            creds
                .assumed_arn
                .as_deref()
                .and_then(|a| a.split(':').nth(4))
                .filter(|a| a.len() == 12)
        });
        let ecs = EcsBody {
            access_key_id: &creds.access_key_id,
            secret_access_key: creds.secret_access_key.expose(),
            token: creds.session_token.expose(),
            expiration: &expiration,
            role_arn: role.spec.arn.as_deref(),
            account_id,
        };
        let mut imds = ImdsBody {
            code: "Success",
            last_updated: &last_updated,
            kind: "AWS-HMAC",
            access_key_id: &creds.access_key_id,
            secret_access_key: creds.secret_access_key.expose(),
            token: creds.session_token.expose(),
            expiration: &expiration,
            account_id: None,
        };
        let imds_bodies = uses.imds.then(|| {
            let plain = zeroizing_json(&imds);
            imds.account_id = account_id;
            (plain, zeroizing_json(&imds))
        });
        Served {
            ecs_body: zeroizing_json(&ecs),
            imds_bodies,
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

/// `YYYY-MM-DDTHH:MM:SSZ`, the only timestamp shape every SDK parses.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Serializes into memory that is wiped when the last `Bytes` clone drops.
///
/// The buffer is sized exactly (a counting pass first): with thousands of roles, spare
/// capacity in three bodies per role is most of the broker's memory, and growing a buffer
/// would leave unwiped copies of the secret behind.
fn zeroizing_json(value: &impl serde::Serialize) -> Bytes {
    /// Counts what would be written.
    struct Len(usize);
    impl std::io::Write for Len {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut len = Len(0);
    serde_json::to_writer(&mut len, value).expect("serializing plain strings cannot fail");
    let mut buf = Zeroizing::new(Vec::with_capacity(len.0));
    serde_json::to_writer(&mut *buf, value).expect("serializing plain strings cannot fail");
    debug_assert_eq!(buf.len(), buf.capacity());
    Bytes::from_owner(ZeroizingBytes(buf))
}

/// Owner for `Bytes::from_owner` that wipes the buffer when the last `Bytes` clone drops.
struct ZeroizingBytes(Zeroizing<Vec<u8>>);

impl AsRef<[u8]> for ZeroizingBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// What the admin endpoint and metrics show about a role. Never holds secrets.
#[derive(Clone, Debug, Default)]
pub struct RoleStatus {
    pub last_refresh: Option<SystemTime>,
    pub expiration: Option<SystemTime>,
    pub access_key_id: Option<String>,
    pub consecutive_failures: u32,
    pub last_error: Option<FetchError>,
    /// Back-off gate: no STS call for this role before this instant (forced ones included).
    pub retry_not_before: Option<Instant>,
    /// When the last forced refresh started its own fetch (coalescing window).
    pub last_forced: Option<SystemTime>,
}

/// A forced refresh within this of the last forced fetch returns its credentials: repeated
/// clicks, scripts in a loop or a forged request cost no STS call.
pub const FORCED_REFRESH_COALESCE: Duration = Duration::from_secs(10);

/// What a forced refresh produced.
#[derive(Debug)]
pub struct ForcedRefresh {
    pub served: Arc<Served>,
    /// Answered by a fetch already in flight or just finished, not by a call of its own.
    pub coalesced: bool,
}

type InflightFetch = Shared<BoxFuture<'static, Result<Arc<Served>, FetchError>>>;

/// What a role's credentials are used for besides the ECS endpoint; decides what is kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotUses {
    /// It is the role `[imds]` exposes: render the IMDS bodies too.
    pub imds: bool,
    /// It is some role's `source_role`: keep the raw credentials to sign with.
    pub source: bool,
}

/// One configured role (one generation of it) and its bookkeeping.
pub struct RoleSlot {
    pub config: Arc<RoleConfig>,
    pub key: RoleKey,
    /// Role chaining: the slot of `source_role`, whose credentials sign this role's calls.
    pub base: Option<Arc<RoleSlot>>,
    pub uses: SlotUses,
    status: Mutex<RoleStatus>,
    inflight: Mutex<Option<InflightFetch>>,
    /// Wakes the role's refresh task: first activation of a lazy role, forced refresh.
    pub wake: Notify,
}

impl fmt::Debug for RoleSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoleSlot")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl RoleSlot {
    pub fn new(
        config: Arc<RoleConfig>,
        generation: u64,
        base: Option<Arc<RoleSlot>>,
        uses: SlotUses,
    ) -> Arc<RoleSlot> {
        Arc::new(RoleSlot {
            base,
            uses,
            key: RoleKey {
                name: Arc::from(config.name.as_str()),
                generation,
            },
            config,
            status: Mutex::new(RoleStatus::default()),
            inflight: Mutex::new(None),
            wake: Notify::new(),
        })
    }

    /// A copy of the current status.
    pub fn status(&self) -> RoleStatus {
        self.status.lock().expect("status lock poisoned").clone()
    }

    /// Updates the status under its lock.
    pub fn update_status<R>(&self, f: impl FnOnce(&mut RoleStatus) -> R) -> R {
        f(&mut self.status.lock().expect("status lock poisoned"))
    }
}

/// Obtains fresh credentials for a role (STS, rate limit, back-off, status bookkeeping). It
/// gets the cache so that a chained role can read (or single-flight) its source role's.
pub type Fetch = Arc<
    dyn Fn(
            Arc<CredentialCache>,
            Arc<RoleSlot>,
        ) -> BoxFuture<'static, Result<Credentials, FetchError>>
        + Send
        + Sync,
>;

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
    entries: moka::future::Cache<RoleKey, Arc<Served>>,
    fetch: Fetch,
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

impl moka::Expiry<RoleKey, Arc<Served>> for ServeUntil {
    fn expire_after_create(
        &self,
        _key: &RoleKey,
        value: &Arc<Served>,
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
        value: &Arc<Served>,
        updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, value, updated_at)
    }
}

impl CredentialCache {
    /// `capacity` bounds the number of roles held (one entry per role generation).
    pub fn new(fetch: Fetch, min_remaining: Duration, capacity: u64) -> Arc<CredentialCache> {
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
    pub async fn peek(&self, key: &RoleKey) -> Option<Arc<Served>> {
        let served = self.entries.get(key).await?;
        served.servable(clock::now()).then_some(served)
    }

    /// The hot path: the cached entry, or — when there is none — the result of the one
    /// in-flight fetch, awaited for at most `wait`.
    pub async fn get(
        self: &Arc<Self>,
        slot: &Arc<RoleSlot>,
        wait: Duration,
    ) -> Result<Arc<Served>, CacheError> {
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
    pub async fn load(self: &Arc<Self>, slot: &Arc<RoleSlot>) -> Result<Arc<Served>, FetchError> {
        let fut = {
            let mut inflight = slot.inflight.lock().expect("inflight lock poisoned");
            match &*inflight {
                Some(f) => f.clone(),
                None => {
                    let cache = Arc::clone(self);
                    let task_slot = Arc::clone(slot);
                    let task = tokio::spawn(async move {
                        let result = (cache.fetch)(Arc::clone(&cache), Arc::clone(&task_slot))
                            .await
                            .map(|c| {
                                let served = Served::render(
                                    &task_slot.config,
                                    &c,
                                    clock::now(),
                                    cache.min_remaining(),
                                    task_slot.uses,
                                );
                                Arc::new(served)
                            });
                        if let Ok(served) = &result {
                            cache
                                .entries
                                .insert(task_slot.key.clone(), Arc::clone(served))
                                .await;
                        }
                        *task_slot.inflight.lock().expect("inflight lock poisoned") = None;
                        result
                    });
                    let shared = async move {
                        task.await.unwrap_or_else(|_| {
                            Err(FetchError::new(
                                ErrorClass::Transient,
                                None,
                                "the fetch task was cancelled",
                            ))
                        })
                    }
                    .boxed()
                    .shared();
                    *inflight = Some(shared.clone());
                    shared
                }
            }
        };
        fut.await
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
            && forced
                .elapsed()
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
        // The fetch function's back-off gate answers without calling STS while it is closed.
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

pub mod session;

#[cfg(test)]
mod tests;
