//! Per-role state: one [`RoleSlot`] per configured role (per generation of it) and per caller
//! session, holding what the role is, what its credentials are used for, and its bookkeeping.
//!
//! - [`RoleStatus`] is what the admin endpoint and metrics show; it holds no secret.
//! - The back-off gate lives in the status: after a failure no STS call is made for the role
//!   before [`RoleStatus::retry_not_before`] ([`RoleSlot::backoff_gate`]); the fetcher closes
//!   it ([`RoleSlot::record_failure`]) and a success opens it ([`RoleSlot::record_success`]).
//! - The fetch in flight (single-flight, see [`CredentialCache`](super::CredentialCache)) is
//!   held here so that every waiter of a role finds it; only the cache touches it.
//!
//! The hot path reads none of this: it reads the cache entry.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;

use super::InflightLoad;
use crate::clock;
use crate::config::RoleConfig;
use crate::creds::{Credentials, FetchError};

/// Identifies one generation of a role: a reload that changes a role's spec gives it a new
/// generation, so a fetch still in flight for the old spec can never be served for the new.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RoleKey {
    /// The role's configured name.
    pub name: Arc<str>,
    /// Counted up by the broker for roles; caller sessions use the top half of the range.
    pub generation: u64,
}

/// What the admin endpoint and metrics show about a role. Never holds secrets.
#[derive(Clone, Debug, Default)]
pub struct RoleStatus {
    /// When the last successful fetch finished.
    pub last_refresh: Option<SystemTime>,
    /// When the credentials of the last successful fetch expire.
    pub expiration: Option<SystemTime>,
    /// The access key id of the last successful fetch (safe to show).
    pub access_key_id: Option<String>,
    /// Failed fetches since the last success: the back-off exponent.
    pub consecutive_failures: u32,
    /// Why the last fetch failed; what requests get while the back-off gate is closed.
    pub last_error: Option<FetchError>,
    /// Back-off gate: no STS call for this role before this instant (forced ones included).
    pub retry_not_before: Option<Instant>,
    /// When the last forced refresh started its own fetch (coalescing window).
    pub last_forced: Option<SystemTime>,
}

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
    /// The role as configured (for a caller session: with the caller's name and tags).
    pub config: Arc<RoleConfig>,
    /// The cache key of its credentials.
    pub key: RoleKey,
    /// Role chaining: the slot of `source_role`, whose credentials sign this role's calls.
    pub base: Option<Arc<RoleSlot>>,
    /// What its credentials are rendered and kept for.
    pub uses: SlotUses,
    status: Mutex<RoleStatus>,
    /// The fetch in flight, which concurrent loads join (single-flight).
    pub(super) inflight: Mutex<Option<InflightLoad>>,
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
    /// A slot for generation `generation` of `config`, signed by `base` when chained.
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

    /// The back-off gate: while it is closed, the error that closed it (answer with it, make
    /// no STS call); `None` once it is open.
    pub fn backoff_gate(&self) -> Option<FetchError> {
        self.update_status(|s| match (s.retry_not_before, &s.last_error) {
            (Some(t), Some(e)) if clock::instant() < t => Some(e.clone()),
            _ => None,
        })
    }

    /// Records fresh credentials obtained at `now`: the failure count resets and the back-off
    /// gate opens.
    pub fn record_success(&self, creds: &Credentials, now: SystemTime) {
        self.update_status(|s| {
            s.last_refresh = Some(now);
            s.expiration = Some(creds.expiration);
            s.access_key_id = Some(creds.access_key_id.clone());
            s.consecutive_failures = 0;
            s.last_error = None;
            s.retry_not_before = None;
        });
    }

    /// Records a failed fetch: one more consecutive failure, and the back-off gate closed for
    /// `backoff(failures)` from now. Returns the failure count and that wait.
    pub fn record_failure(
        &self,
        error: &FetchError,
        backoff: impl FnOnce(u32) -> Duration,
    ) -> (u32, Duration) {
        self.update_status(|s| {
            s.consecutive_failures = s.consecutive_failures.saturating_add(1);
            let wait = backoff(s.consecutive_failures);
            s.last_error = Some(error.clone());
            s.retry_not_before = Some(clock::instant() + wait);
            (s.consecutive_failures, wait)
        })
    }
}
