//! sts-broker: assumes IAM roles through AWS STS ahead of expiry and serves the credentials
//! to local workloads over the ECS container-credentials endpoint.
//!
//! # Layout
//! - [`config`]: the TOML model and validation (a leaf: plain data);
//! - [`creds`]: secret-bearing types that redact and zeroize themselves;
//! - [`sts`]: the one module that talks to STS (endpoint failover and health in
//!   [`sts::endpoints`], the adaptive call rate in [`sts::rate`]); [`source`]: the broker's
//!   own credentials;
//! - [`identity`]: who is calling (service-account JWTs, the socket's owner);
//! - [`wire`]: the ECS and IMDS credential bodies and timestamps (a leaf);
//! - [`cache`]: pre-rendered responses per role and caller session, single-flight loads;
//!   per-role state in [`cache::slot`];
//! - [`refresh`]: the schedule (refresh ahead, jitter, back-off, rate limit) and the
//!   [`refresh::Fetcher`] the cache calls;
//! - [`server`]: the ECS and admin listeners (read the cache, never STS);
//! - [`state`]: the snapshot handlers read; [`metrics`], [`signals`], [`commands`],
//!   [`audit`], [`iam`], [`fdlimit`], [`systemd`], [`logging`];
//! - this file wires it together: [`Broker`] and [`run`].
//!
//! Imports run one way: `config` ← `sts`/`source` ← `refresh` → `cache` ← `server`.

#![forbid(unsafe_code)]

pub mod audit;
pub mod cache;
pub mod clock;
pub mod commands;
pub mod config;
pub mod creds;
pub mod fdlimit;
pub mod iam;
pub mod identity;
pub mod logging;
pub mod metrics;
pub mod refresh;
pub mod server;
pub mod signals;
pub mod source;
pub mod state;
pub mod sts;
pub mod systemd;
pub mod wire;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::session::{CallerSessions, SpawnLoop};
use crate::cache::{CredentialCache, RoleKey, RoleSlot, SlotUses};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::refresh::Upstream;
use crate::server::{admin, ecs, http, imds};
use crate::state::{Snapshot, TokenIndex};
use crate::sts::rate::AdaptiveRate;

/// How long open connections get to finish after shutdown starts.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Most role generations the cache holds at once.
const CACHE_CAPACITY: u64 = 100_000;

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({endpoint}): {source}")]
    Bind {
        endpoint: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot set up STS: {0}")]
    Sts(sts::SetupError),
    #[error("{0}")]
    OwnUser(String),
    #[error("cannot open the audit trail {path}: {source}")]
    Audit {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Why a reload was not applied. The old configuration keeps serving in every case.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("invalid configuration:\n{0}")]
    Invalid(#[from] config::ConfigErrors),
    #[error("{0} cannot change without a restart")]
    Rejected(&'static str),
    #[error("cannot set up STS with the new configuration: {0}")]
    Sts(sts::SetupError),
    #[error("{0}")]
    OwnUser(String),
}

/// Says loudly when `local_users` cannot work here (no netlink `sock_diag` socket).
fn probe_owner_lookup(config: &Config) {
    if config.roles.iter().all(|r| r.local_users.is_empty()) {
        return;
    }
    if let Err(e) = identity::socket_owner::probe() {
        tracing::error!(
            error = %e,
            "local_users cannot attribute any caller: a netlink sock_diag socket cannot be opened (under systemd, RestrictAddressFamilies= must allow AF_NETLINK)"
        );
    }
}

/// The broker's own user must stay on the real IMDS: with a `default` `[source]` its own
/// credentials come from there, and a redirect of its traffic would loop back to itself.
fn check_own_user(config: &Config) -> Result<(), String> {
    let me = nix::unistd::getuid().as_raw();
    for role in &config.roles {
        if let Some(u) = role.local_users.iter().find(|u| u.uid == me) {
            return Err(format!(
                "role {:?}: key \"local_users\": {} is the broker's own user; it must stay on the real instance metadata service",
                role.name,
                config::describe_user(u)
            ));
        }
    }
    Ok(())
}

/// A running broker: listeners, refresh tasks, cache.
#[derive(Debug)]
pub struct Broker {
    config: Arc<ArcSwap<Config>>,
    state: Arc<ArcSwap<Snapshot>>,
    upstream: Arc<ArcSwap<Upstream>>,
    cache: Arc<CredentialCache>,
    metrics: Arc<Metrics>,
    /// Stops the listeners.
    listeners_stop: CancellationToken,
    /// Stops every refresh task (each also has its own child token).
    refresh_stop: CancellationToken,
    listeners: TaskTracker,
    refreshers: TaskTracker,
    role_tasks: Mutex<HashMap<RoleKey, CancellationToken>>,
    generation: AtomicU64,
    ecs_addrs: Vec<SocketAddr>,
    admin_addrs: Vec<SocketAddr>,
    imds_addrs: Vec<SocketAddr>,
    audit: Option<audit::AuditLog>,
    /// `revoke_before` times that were ahead of the clock → the moment they took effect.
    revoke_clamp: std::sync::Mutex<HashMap<SystemTime, SystemTime>>,
    /// Per-caller sessions (Kubernetes workloads, §7).
    sessions: Arc<CallerSessions>,
    /// The service-account token verifier of the current `[kubernetes]`.
    kubernetes: std::sync::Mutex<Option<Arc<identity::Kubernetes>>>,
}

impl Broker {
    /// Binds every listener, then starts the refresh tasks (listen first, then prefetch:
    /// `/readyz` tells when the credentials are in).
    ///
    /// # Errors
    /// When a listener cannot bind or STS cannot be set up (no region).
    pub async fn start(config: Config) -> Result<Broker, StartError> {
        check_own_user(&config).map_err(StartError::OwnUser)?;
        probe_owner_lookup(&config);
        let metrics = Arc::new(Metrics::new());
        let ecs_listeners = bind_all("ecs", &config.ecs.listen).await?;
        let admin_listeners = bind_all("admin", &config.admin.listen).await?;
        let imds_listeners = match &config.imds {
            Some(i) => bind_all("imds", &i.listener.listen).await?,
            None => Vec::new(),
        };
        let hop_limit = config.imds.as_ref().map(|i| i.hop_limit);
        let budgets = fdlimit::raise_nofile().map(|limit| {
            let b = fdlimit::budgets(
                limit,
                admin_listeners.len(),
                ecs_listeners.len() + imds_listeners.len(),
            );
            tracing::info!(
                nofile = limit,
                admin_budget = b.admin,
                listener_budget = b.data,
                "file descriptor budgets"
            );
            b
        });
        let ecs_limits = limits("ecs", &config.ecs, None, budgets.map(|b| b.data));
        let admin_limits = limits("admin", &config.admin, None, budgets.map(|b| b.admin));
        let imds_limits = config
            .imds
            .as_ref()
            .map(|i| limits("imds", &i.listener, hop_limit, budgets.map(|b| b.data)));
        for l in &imds_listeners {
            let v6 = l.local_addr().is_ok_and(|a| a.is_ipv6());
            if let Some(hops) = hop_limit
                && let Err(source) = http::set_hop_limit(socket2::SockRef::from(l), v6, hops)
            {
                return Err(StartError::Bind {
                    endpoint: "imds",
                    addr: l.local_addr().unwrap_or_else(|_| ([0, 0, 0, 0], 0).into()),
                    source,
                });
            }
        }

        let sts = source::build_sts(&config).await.map_err(StartError::Sts)?;
        let audit = match &config.audit {
            Some(a) => Some(
                audit::AuditLog::open(&a.path, Arc::clone(&metrics))
                    .await
                    .map_err(|source| StartError::Audit {
                        path: a.path.clone(),
                        source,
                    })?,
            ),
            None => None,
        };
        let limiter = AdaptiveRate::new(
            config.sts.max_calls_per_second,
            config.sts.min_calls_per_second,
            config.sts.adaptive_rate,
        );
        metrics.set_sts_rate(limiter.current());
        let upstream = Arc::new(ArcSwap::from_pointee(Upstream {
            sts: sts.with_metrics(Arc::clone(&metrics)),
            limiter,
        }));
        let min_remaining = config.refresh.min_remaining;
        let config = Arc::new(ArcSwap::from_pointee(config));
        let fetch = refresh::Fetcher::new(
            Arc::clone(&upstream),
            Arc::clone(&config),
            Arc::clone(&metrics),
        );
        let cache = CredentialCache::new(fetch, min_remaining, CACHE_CAPACITY);
        let current = config.load_full();
        let state = Arc::new(ArcSwap::from_pointee(Snapshot {
            config: Arc::clone(&current),
            roles: HashMap::new(),
            tokens: TokenIndex::default(),
            local: identity::LocalUsers::default(),
            kubernetes: None,
        }));
        let refresh_stop = CancellationToken::new();
        let refreshers = TaskTracker::new();
        let sessions = {
            let (idle, max) = session_limits(&current);
            let cache = Arc::clone(&cache);
            let config = Arc::clone(&config);
            let tracker = refreshers.clone();
            let parent = refresh_stop.clone();
            // A session's loop ends when the session is dropped (idle, LRU, reload) or at
            // shutdown; its credentials leave the cache with it.
            let spawn: SpawnLoop = Arc::new(move |slot: Arc<RoleSlot>, stop: CancellationToken| {
                let cache = Arc::clone(&cache);
                let config = Arc::clone(&config);
                let parent = parent.clone();
                tracker.spawn(async move {
                    tokio::select! {
                        () = refresh::role_loop(Arc::clone(&cache), Arc::clone(&slot), config, stop.clone(), Duration::ZERO) => {}
                        () = parent.cancelled() => {}
                    }
                    cache.remove(&slot.key).await;
                });
            });
            CallerSessions::new(idle, max, spawn, Arc::clone(&metrics))
        };
        {
            let sessions = Arc::clone(&sessions);
            let stop = refresh_stop.clone();
            refreshers.spawn(async move {
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(sessions.sweep_every()) => sessions.sweep(),
                        () = stop.cancelled() => return,
                    }
                }
            });
        }

        let broker = Broker {
            config,
            state,
            upstream,
            cache,
            metrics,
            listeners_stop: CancellationToken::new(),
            refresh_stop,
            listeners: TaskTracker::new(),
            refreshers,
            role_tasks: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            ecs_addrs: local_addrs(&ecs_listeners),
            admin_addrs: local_addrs(&admin_listeners),
            imds_addrs: local_addrs(&imds_listeners),
            audit,
            revoke_clamp: std::sync::Mutex::new(HashMap::new()),
            sessions,
            kubernetes: std::sync::Mutex::new(None),
        };
        broker
            .apply_roles(&current, &HashMap::new(), current.refresh.startup_spread)
            .await;

        let context = server::ListenerContext {
            state: Arc::clone(&broker.state),
            cache: Arc::clone(&broker.cache),
            metrics: Arc::clone(&broker.metrics),
            audit: broker.audit.clone(),
            sessions: Arc::clone(&broker.sessions),
        };
        let mut ecs_limits = ecs_limits;
        ecs_limits.attribution = attribution(&broker.state);
        let ecs = Arc::new(ecs::Ecs::new(context.clone()));
        for l in ecs_listeners {
            broker.spawn_listener(l, ecs_limits.clone(), Arc::clone(&ecs));
        }
        let imds = Arc::new(imds::Imds::new(context.clone()));
        for l in imds_listeners {
            let mut limits = imds_limits
                .clone()
                .expect("IMDS listeners only with [imds]");
            limits.attribution = attribution(&broker.state);
            broker.spawn_listener(l, limits, Arc::clone(&imds));
        }
        let admin = Arc::new(admin::Admin::new(context));
        for l in admin_listeners {
            broker.spawn_listener(l, admin_limits.clone(), Arc::clone(&admin));
        }
        Ok(broker)
    }

    fn spawn_listener<H: server::Handler>(
        &self,
        listener: TcpListener,
        limits: http::Limits,
        handler: Arc<H>,
    ) {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(endpoint = %H::ENDPOINT, %addr, "listening");
        }
        self.listeners.spawn(http::serve(
            listener,
            handler,
            self.listeners_stop.clone(),
            SHUTDOWN_GRACE,
            limits,
        ));
    }

    /// Addresses the ECS listeners are bound to (port 0 resolved).
    pub fn ecs_addrs(&self) -> &[SocketAddr] {
        &self.ecs_addrs
    }

    /// Addresses the admin listeners are bound to (port 0 resolved).
    pub fn admin_addrs(&self) -> &[SocketAddr] {
        &self.admin_addrs
    }

    /// Addresses the IMDS listeners are bound to (empty without `[imds]`).
    pub fn imds_addrs(&self) -> &[SocketAddr] {
        &self.imds_addrs
    }

    /// Prefetched roles still without servable credentials (empty: ready).
    pub async fn unready_roles(&self) -> Vec<String> {
        self.state.load_full().unready_roles(&self.cache).await
    }

    /// The token files of the configuration now serving (what `--watch-config` polls).
    pub fn token_files(&self) -> Vec<std::path::PathBuf> {
        self.config
            .load()
            .roles
            .iter()
            .flat_map(|r| r.token_files.iter().cloned())
            .collect()
    }

    /// The metrics registry (tests and embedding programs).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
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

    /// Makes the snapshot match `config.roles`: keeps the slot (and cached credentials) of
    /// every role whose spec — and source role, when chained — is unchanged and whose
    /// credentials were not obtained before its `revoke_before`, starts new, changed and
    /// revoked roles (prefetched ones fetch at once, or after their share of `spread`; lazy
    /// ones on their next request), stops removed ones. Source roles are placed before the
    /// roles chained from them (`Config::in_dependency_order`).
    async fn apply_roles(
        &self,
        config: &Arc<Config>,
        old: &HashMap<String, Arc<RoleSlot>>,
        spread: Duration,
    ) {
        let mut revoked: std::collections::HashSet<&str> = std::collections::HashSet::new();
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
        let mut roles: HashMap<String, Arc<RoleSlot>> = HashMap::new();
        let mut tasks = self.role_tasks.lock().await;
        let sources: std::collections::HashSet<&str> = config
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
                    let stop = self.refresh_stop.child_token();
                    tasks.insert(slot.key.clone(), stop.clone());
                    let first_delay = spread.mul_f64(rand::random::<f64>());
                    self.refreshers.spawn(refresh::role_loop(
                        Arc::clone(&self.cache),
                        Arc::clone(&slot),
                        Arc::clone(&self.config),
                        stop,
                        first_delay,
                    ));
                    slot
                }
            };
            roles.insert(role.name.clone(), slot);
        }
        // Keep the verifier (and the keys it holds) unless [kubernetes] changed.
        let kubernetes = {
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
        };
        // Publish first: requests move to the new slots before the old ones are dropped.
        self.state.store(Arc::new(Snapshot {
            config: Arc::clone(config),
            roles: roles.clone(),
            tokens: TokenIndex::build(config),
            local: identity::LocalUsers::build(config),
            kubernetes,
        }));
        for (name, slot) in old {
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

    /// Applies a new configuration, or leaves the running one untouched and says why.
    /// Counted in `sts_broker_config_reloads_total{outcome}`.
    ///
    /// # Errors
    /// A changed listen address (needs a restart) or an STS set-up failure.
    pub async fn reload(&self, new: Config) -> Result<(), ReloadError> {
        let result = self.try_reload(new).await;
        let outcome = match &result {
            Ok(()) => "ok",
            Err(ReloadError::Rejected(_)) => "rejected",
            Err(_) => "error",
        };
        self.metrics.observe_reload(outcome);
        result
    }

    async fn try_reload(&self, new: Config) -> Result<(), ReloadError> {
        check_own_user(&new).map_err(ReloadError::OwnUser)?;
        probe_owner_lookup(&new);
        let current = self.config.load_full();
        // What the listeners were built with; `allowed_hosts` is read per request.
        let fixed = |l: &config::ListenerConfig| {
            (
                l.listen.clone(),
                l.max_connections,
                l.per_peer_rate_limit,
                l.allowed_sources.clone(),
            )
        };
        if fixed(&new.ecs) != fixed(&current.ecs) {
            return Err(ReloadError::Rejected(
                "[ecs] listen / max_connections / per_peer_rate_limit / allowed_sources",
            ));
        }
        if fixed(&new.admin) != fixed(&current.admin) {
            return Err(ReloadError::Rejected(
                "[admin] listen / max_connections / per_peer_rate_limit / allowed_sources",
            ));
        }
        if new.audit != current.audit {
            return Err(ReloadError::Rejected(
                "[audit] (adding, removing or moving the trail)",
            ));
        }
        let imds_fixed = |c: &Config| c.imds.as_ref().map(|i| (fixed(&i.listener), i.hop_limit));
        if imds_fixed(&new) != imds_fixed(&current) {
            return Err(ReloadError::Rejected(
                "[imds] listen / hop_limit / limits (or adding/removing [imds])",
            ));
        }
        if session_limits(&new) != session_limits(&current) {
            return Err(ReloadError::Rejected(
                "[kubernetes] session_idle / max_sessions",
            ));
        }
        // A new broker-wide revoke_before also drops the SDK's cached [source] credentials
        // (a revoked IRSA / instance role session of the broker itself).
        let revoke_source = new.refresh.revoke_before.is_some()
            && new.refresh.revoke_before != current.refresh.revoke_before;
        if new.sts != current.sts || new.source != current.source || revoke_source {
            let sts = source::build_sts(&new).await.map_err(ReloadError::Sts)?;
            // A rate lowered by Throttling stays lowered across the reload.
            let limiter = AdaptiveRate::starting_at(
                new.sts.max_calls_per_second,
                new.sts.min_calls_per_second,
                new.sts.adaptive_rate,
                self.upstream.load().limiter.current(),
            );
            self.metrics.set_sts_rate(limiter.current());
            self.upstream.store(Arc::new(Upstream {
                sts: sts.with_metrics(Arc::clone(&self.metrics)),
                limiter,
            }));
        }
        for w in &new.warnings {
            tracing::warn!(warning = %w, "configuration warning");
        }
        let new = Arc::new(new);
        self.cache.set_min_remaining(new.refresh.min_remaining);
        self.config.store(Arc::clone(&new));
        let old = self.state.load_full().roles.clone();
        self.apply_roles(&new, &old, Duration::ZERO).await;
        tracing::info!(roles = new.roles.len(), "configuration reloaded");
        Ok(())
    }

    /// Reopens the audit trail file (SIGHUP after logrotate moved it away).
    pub async fn reopen_audit(&self) {
        if let Some(a) = &self.audit {
            a.reopen().await;
        }
    }

    /// Stops accepting, lets open requests finish (bounded by [`SHUTDOWN_GRACE`]) and stops
    /// the refresh tasks.
    pub async fn shutdown(self) {
        self.sessions.clear();
        self.listeners_stop.cancel();
        self.refresh_stop.cancel();
        self.listeners.close();
        self.refreshers.close();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(1), async {
            self.listeners.wait().await;
            self.refreshers.wait().await;
        })
        .await;
        if let Some(a) = &self.audit {
            a.close().await;
        }
        tracing::info!("stopped");
    }
}

async fn bind_all(
    endpoint: &'static str,
    addrs: &[SocketAddr],
) -> Result<Vec<TcpListener>, StartError> {
    let mut out = Vec::with_capacity(addrs.len());
    for &addr in addrs {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind {
                endpoint,
                addr,
                source,
            })?;
        out.push(l);
    }
    Ok(out)
}

/// `[kubernetes]` `session_idle` and `max_sessions` (defaults without the table): fixed
/// for the life of the process.
fn session_limits(c: &Config) -> (Duration, u64) {
    c.kubernetes
        .as_ref()
        .map_or((Duration::from_secs(2 * 3600), 10_000), |k| {
            (k.session_idle, k.max_sessions)
        })
}

/// The fixed limits of a listener: its configured `max_connections`, lowered to its share of
/// the file descriptors (`budget`) when that is smaller.
fn limits(
    endpoint: &'static str,
    l: &config::ListenerConfig,
    hop_limit: Option<u32>,
    budget: Option<usize>,
) -> http::Limits {
    let max_connections = match budget {
        // Admin's share is an eighth by design (probes and scrapes need few connections):
        // lowering it is expected, not worth a warning.
        Some(b) if b < l.max_connections && endpoint == "admin" => {
            tracing::info!(
                endpoint,
                configured = l.max_connections,
                budget = b,
                "max_connections set to the admin share of the file descriptor limit"
            );
            b
        }
        Some(b) if b < l.max_connections => {
            tracing::warn!(
                endpoint,
                configured = l.max_connections,
                budget = b,
                "max_connections lowered to this listener's share of the file descriptor limit (raise LimitNOFILE / ulimit -n)"
            );
            b
        }
        _ => l.max_connections,
    };
    http::Limits {
        max_connections,
        per_peer: l
            .per_peer_rate_limit
            .map(|rate| Arc::new(http::PeerLimiter::new(rate))),
        hop_limit,
        allowed_sources: l.allowed_sources.clone().into(),
        attribution: None,
    }
}

/// Callers on this listener may be attributed to their socket's owner; the kernel is asked at
/// accept while some role has `local_users`.
fn attribution(state: &Arc<ArcSwap<Snapshot>>) -> Option<http::Attribution> {
    let state = Arc::clone(state);
    Some(http::Attribution {
        ask_at_accept: Arc::new(move || !state.load().local.is_empty()),
    })
}

fn local_addrs(listeners: &[TcpListener]) -> Vec<SocketAddr> {
    listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect()
}

/// Runs a broker with `config` until `shutdown` completes, then drains and returns.
///
/// # Errors
/// When the broker cannot start.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let broker = Broker::start(config).await?;
    shutdown.await;
    broker.shutdown().await;
    Ok(())
}
