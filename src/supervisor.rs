//! The role supervisor: owns the [`Snapshot`] everything reads, the credential cache and one
//! refresh task per role (and per caller session). [`RoleSupervisor::apply`] makes the running
//! roles match a configuration — at start-up and on every reload — by keeping, starting and
//! stopping refresh tasks; each started role gets a new generation, so its cache entry never
//! mixes with the one of the role it replaces.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::session::{CallerSessions, SpawnLoop};
use crate::cache::{CredentialCache, RoleKey, RoleSlot, SlotUses};
use crate::clock;
use crate::config::{self, Config};
use crate::identity;
use crate::metrics::Metrics;
use crate::refresh::{self, Upstream};
use crate::state::{Snapshot, TokenIndex};

/// Most role generations the cache holds at once.
const CACHE_CAPACITY: u64 = 100_000;

/// Starts, keeps and stops the refresh tasks, and publishes the snapshot they and the
/// handlers read.
#[derive(Debug)]
pub struct RoleSupervisor {
    /// What handlers, the fetcher and the refresh loops read; swapped whole by [`Self::apply`].
    state: Arc<ArcSwap<Snapshot>>,
    cache: Arc<CredentialCache>,
    metrics: Arc<Metrics>,
    /// Per-caller sessions (Kubernetes workloads, §7), each with its own refresh task.
    sessions: Arc<CallerSessions>,
    /// Stops every refresh task (each role also has its own child token in `role_tasks`).
    stop: CancellationToken,
    /// Every refresh task, the session sweeper and the session loops, waited for at shutdown.
    tasks: TaskTracker,
    /// The stop token of each running role's refresh task.
    role_tasks: Mutex<HashMap<RoleKey, CancellationToken>>,
    /// The next role generation (a started role never shares a cache key with its predecessor).
    generation: AtomicU64,
    /// `revoke_before` times that were ahead of the clock → the moment they took effect.
    revoke_clamp: std::sync::Mutex<HashMap<SystemTime, SystemTime>>,
    /// The service-account token verifier of the current `[kubernetes]`, kept across reloads
    /// that leave the table unchanged (it holds the fetched keys).
    kubernetes: std::sync::Mutex<Option<Arc<identity::Kubernetes>>>,
}

impl RoleSupervisor {
    /// A supervisor with no roles yet: [`Self::apply`] starts them. `config` and `upstream`
    /// make the first snapshot, which the fetcher reads from the first call on.
    pub fn new(config: Arc<Config>, upstream: Arc<Upstream>, metrics: Arc<Metrics>) -> Self {
        let state = Arc::new(ArcSwap::from_pointee(Snapshot::new(
            Arc::clone(&config),
            upstream,
        )));
        let fetch = refresh::Fetcher::new(Arc::clone(&state), Arc::clone(&metrics));
        let cache = CredentialCache::new(fetch, config.refresh.min_remaining, CACHE_CAPACITY);
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let (idle, max) = session_limits(&config);
        let spawn = session_loop_spawner(&cache, &state, &tasks, &stop);
        let sessions = CallerSessions::new(idle, max, spawn, Arc::clone(&metrics));
        {
            let sessions = Arc::clone(&sessions);
            let stop = stop.clone();
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(sessions.sweep_every()) => sessions.sweep(),
                        () = stop.cancelled() => return,
                    }
                }
            });
        }
        RoleSupervisor {
            state,
            cache,
            metrics,
            sessions,
            stop,
            tasks,
            role_tasks: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            revoke_clamp: std::sync::Mutex::new(HashMap::new()),
            kubernetes: std::sync::Mutex::new(None),
        }
    }

    /// The snapshot everything reads.
    pub fn state(&self) -> &Arc<ArcSwap<Snapshot>> {
        &self.state
    }

    /// The credential cache the handlers read and the refresh tasks fill.
    pub fn cache(&self) -> &Arc<CredentialCache> {
        &self.cache
    }

    /// The per-caller sessions.
    pub fn sessions(&self) -> &Arc<CallerSessions> {
        &self.sessions
    }

    /// Prefetched roles still without servable credentials (empty: ready).
    pub async fn unready_roles(&self) -> Vec<String> {
        self.state.load_full().unready_roles(&self.cache).await
    }

    /// The token files of the configuration now serving (what `--watch-config` polls).
    pub fn token_files(&self) -> Vec<std::path::PathBuf> {
        self.state
            .load()
            .config
            .roles
            .iter()
            .flat_map(|r| r.token_files.iter().cloned())
            .collect()
    }

    /// Makes the running roles match `config.roles` and publishes the new snapshot (with
    /// `upstream`): keeps the slot (and cached credentials) of every role whose spec — and
    /// source role, when chained — is unchanged and whose credentials were not obtained before
    /// its `revoke_before`, starts new, changed and revoked roles (prefetched ones fetch at
    /// once, or after their share of `spread`; lazy ones on their next request), stops removed
    /// ones. Source roles are placed before the roles chained from them
    /// (`Config::in_dependency_order`).
    pub async fn apply(&self, config: Arc<Config>, upstream: Arc<Upstream>, spread: Duration) {
        // Held throughout: one apply at a time.
        let mut tasks = self.role_tasks.lock().await;
        let old = self.state.load_full().roles.clone();
        let revoked = self.revoked_roles(&config, &old).await;
        let mut roles: HashMap<String, Arc<RoleSlot>> = HashMap::new();
        let mut started: Vec<Arc<RoleSlot>> = Vec::new();
        let sources: HashSet<&str> = config
            .roles
            .iter()
            .filter_map(|r| r.spec.source_role())
            .collect();
        let imds_role = config.imds.as_ref().and_then(|i| i.role.as_deref());
        let imds_on = config.imds.is_some();
        for role in config.in_dependency_order() {
            let base = role.spec.source_role().and_then(|b| roles.get(b)).cloned();
            let same_base = |slot: &RoleSlot| match (&slot.base, &base) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            };
            let uses = SlotUses {
                imds: imds_role == Some(role.name.as_str())
                    || (imds_on && !role.local_users.is_empty()),
                source: sources.contains(role.name.as_str()),
            };
            let slot = match old.get(&role.name) {
                Some(slot)
                    if slot.config.spec == role.spec
                        && same_base(slot)
                        && slot.uses == uses
                        && !revoked.contains(role.name.as_str()) =>
                {
                    Arc::clone(slot)
                }
                _ => {
                    let generation = self.generation.fetch_add(1, Ordering::Relaxed);
                    let slot = RoleSlot::new(Arc::clone(role), generation, base, uses);
                    started.push(Arc::clone(&slot));
                    slot
                }
            };
            roles.insert(role.name.clone(), slot);
        }
        let kubernetes = self.kubernetes_for(&config);
        // Publish first: requests move to the new slots before the old ones are dropped, and
        // the new roles' first fetch reads the new configuration.
        self.state.store(Arc::new(Snapshot {
            config: Arc::clone(&config),
            upstream,
            roles: roles.clone(),
            tokens: TokenIndex::build(&config),
            local: identity::LocalUsers::build(&config),
            kubernetes,
        }));
        for slot in started {
            let stop = self.stop.child_token();
            tasks.insert(slot.key.clone(), stop.clone());
            let first_delay = spread.mul_f64(rand::random::<f64>());
            self.tasks.spawn(refresh::role_loop(
                Arc::clone(&self.cache),
                slot,
                Arc::clone(&self.state),
                stop,
                first_delay,
            ));
        }
        for (name, slot) in &old {
            if roles.get(name).is_some_and(|s| Arc::ptr_eq(s, slot)) {
                // Kept: let its loop recompute the schedule with the new [refresh]. A lazy
                // role nobody has asked for has no schedule: waking it would assume it (a
                // reload must not turn thousands of lazy roles into a burst of STS calls).
                if slot.config.spec.prefetch || slot.status().last_refresh.is_some() {
                    slot.wake.notify_one();
                }
                continue;
            }
            if let Some(stop) = tasks.remove(&slot.key) {
                stop.cancel();
            }
            self.sessions.remove_role(&slot.key);
            self.cache.remove(&slot.key).await;
            if !roles.contains_key(name) {
                self.metrics.forget_role(name);
            }
        }
    }

    /// The roles whose held credentials were obtained before their `revoke_before`: counted,
    /// logged, and restarted by [`Self::apply`].
    async fn revoked_roles<'c>(
        &self,
        config: &'c Config,
        old: &HashMap<String, Arc<RoleSlot>>,
    ) -> HashSet<&'c str> {
        let mut revoked = HashSet::new();
        for role in &config.roles {
            if let (Some(t), Some(slot)) = (self.revoke_instant(config, role), old.get(&role.name))
                && self
                    .cache
                    .peek(&slot.key)
                    .await
                    .is_some_and(|held| held.issued < t)
            {
                tracing::warn!(
                    role = %role.name,
                    revoke_before = %humantime::format_rfc3339_seconds(t),
                    "revoke_before: credentials obtained before it are dropped and re-assumed"
                );
                self.metrics.observe_revocation(&role.name);
                revoked.insert(role.name.as_str());
            }
        }
        revoked
    }

    /// The instant before which a role's credentials are revoked: the later of
    /// `[refresh] revoke_before` and the role's own. A time ahead of the clock counts as the
    /// moment it was first seen (with a warning), and stays that moment on later reloads, so
    /// re-sending the same config does not revoke again.
    fn revoke_instant(&self, config: &Config, role: &config::RoleConfig) -> Option<SystemTime> {
        let broker_wide = config
            .refresh
            .revoke_before
            .map(|t| self.clamp_revoke(t, "[refresh]"));
        let own = role.revoke_before.map(|t| self.clamp_revoke(t, &role.name));
        broker_wide.max(own)
    }

    /// `t`, or the moment it was first seen when it is ahead of the clock.
    fn clamp_revoke(&self, t: SystemTime, whose: &str) -> SystemTime {
        let now = clock::now();
        if t <= now {
            return t;
        }
        let mut seen = self.revoke_clamp.lock().expect("revoke lock");
        *seen.entry(t).or_insert_with(|| {
            tracing::warn!(
                whose,
                revoke_before = %humantime::format_rfc3339_seconds(t),
                "revoke_before is ahead of this machine's clock: revoking what is held now"
            );
            now
        })
    }

    /// The verifier for `config`'s `[kubernetes]`: the running one (and the keys it holds)
    /// unless the table changed; a changed table also ends every caller session.
    fn kubernetes_for(&self, config: &Config) -> Option<Arc<identity::Kubernetes>> {
        let mut held = self.kubernetes.lock().expect("kubernetes lock poisoned");
        match (&*held, &config.kubernetes) {
            (Some(k), Some(c)) if k.verifier.config() == c => Some(Arc::clone(k)),
            (old, Some(c)) => {
                let k = identity::Kubernetes::start(c, &self.metrics);
                if old.is_some() {
                    // cluster_name, audiences, ...: sessions start anew with the new table.
                    self.sessions.clear();
                }
                *held = Some(Arc::clone(&k));
                Some(k)
            }
            (_, None) => {
                *held = None;
                None
            }
        }
    }

    /// Ends every caller session (their credentials leave the cache with them).
    pub fn clear_sessions(&self) {
        self.sessions.clear();
    }

    /// Tells every refresh task to stop; [`Self::wait`] waits for them.
    pub fn stop(&self) {
        self.stop.cancel();
        self.tasks.close();
    }

    /// Waits until every refresh task has ended (after [`Self::stop`]).
    pub async fn wait(&self) {
        self.tasks.wait().await;
    }
}

/// How a caller session's refresh task is started. A session's loop ends when the session is
/// dropped (idle, LRU, reload) or at shutdown; its credentials leave the cache with it.
fn session_loop_spawner(
    cache: &Arc<CredentialCache>,
    state: &Arc<ArcSwap<Snapshot>>,
    tracker: &TaskTracker,
    parent: &CancellationToken,
) -> SpawnLoop {
    let (cache, state) = (Arc::clone(cache), Arc::clone(state));
    let (tracker, parent) = (tracker.clone(), parent.clone());
    Arc::new(move |slot: Arc<RoleSlot>, stop: CancellationToken| {
        let cache = Arc::clone(&cache);
        let state = Arc::clone(&state);
        let parent = parent.clone();
        tracker.spawn(async move {
            tokio::select! {
                () = refresh::role_loop(Arc::clone(&cache), Arc::clone(&slot), state, stop.clone(), Duration::ZERO) => {}
                () = parent.cancelled() => {}
            }
            cache.remove(&slot.key).await;
        });
    })
}

/// `[kubernetes]` `session_idle` and `max_sessions` (defaults without the table): fixed
/// for the life of the process.
pub(crate) fn session_limits(c: &Config) -> (Duration, u64) {
    c.kubernetes
        .as_ref()
        .map_or((Duration::from_secs(2 * 3600), 10_000), |k| {
            (k.session_idle, k.max_sessions)
        })
}
