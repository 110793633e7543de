//! A running broker: the [`Listeners`] and the [`RoleSupervisor`], wired together at start-up
//! (listen first, then prefetch: `/readyz` tells when the credentials are in) and drained
//! together at shutdown. Reloading lives in `reload.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aws_credential_types::provider::SharedCredentialsProvider;

use crate::audit::AuditLog;
use crate::config::{self, Config};
use crate::identity;
use crate::listeners::{Bound, Listeners};
use crate::metrics::Metrics;
use crate::refresh::Upstream;
use crate::source;
use crate::sts::rate::AdaptiveRate;
use crate::sts::{self, Sts};
use crate::supervisor::RoleSupervisor;

/// How long open connections get to finish after shutdown starts.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listen address is taken or not local.
    #[error("cannot listen on {addr} ({endpoint}): {source}")]
    Bind {
        /// The listener (`ecs`, `admin` or `imds` in the message).
        endpoint: crate::server::Endpoint,
        /// The configured address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// No region, or a bad endpoint set.
    #[error("cannot set up STS: {0}")]
    Sts(sts::SetupError),
    /// `local_users` names the broker's own user.
    #[error("{0}")]
    OwnUser(String),
    /// The audit trail cannot be opened for appending.
    #[error("cannot open the audit trail {path}: {source}")]
    Audit {
        /// `[audit] path`.
        path: std::path::PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// What a program that embeds the broker (or a test) may supply instead of the configuration.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Signs the broker's STS calls instead of what `[source]` names (which reads the process
    /// environment, the profile files or a token file). Kept across reloads.
    pub source_credentials: Option<SharedCredentialsProvider>,
}

/// A running broker: listeners, refresh tasks, cache.
#[derive(Debug)]
pub struct Broker {
    pub(crate) roles: RoleSupervisor,
    pub(crate) listeners: Listeners,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) audit: Option<AuditLog>,
    pub(crate) options: Options,
}

impl Broker {
    /// Binds every listener, then starts the refresh tasks.
    ///
    /// # Errors
    /// When a listener cannot bind or STS cannot be set up (no region).
    pub async fn start(config: Config) -> Result<Broker, StartError> {
        Broker::start_with(config, Options::default()).await
    }

    /// [`Broker::start`] with `options`.
    ///
    /// # Errors
    /// When a listener cannot bind or STS cannot be set up (no region).
    pub async fn start_with(config: Config, options: Options) -> Result<Broker, StartError> {
        preflight(&config).map_err(StartError::OwnUser)?;
        let metrics = Arc::new(Metrics::new());
        let bound = Bound::bind(&config).await?;
        let sts = build_sts(&config, &options)
            .await
            .map_err(StartError::Sts)?;
        let audit = match &config.audit {
            Some(a) => Some(
                AuditLog::open(&a.path, Arc::clone(&metrics))
                    .await
                    .map_err(|source| StartError::Audit {
                        path: a.path.clone(),
                        source,
                    })?,
            ),
            None => None,
        };
        let upstream = upstream(&config, sts, &metrics, None);
        let config = Arc::new(config);
        let roles = RoleSupervisor::new(
            Arc::clone(&config),
            Arc::clone(&upstream),
            Arc::clone(&metrics),
        );
        let spread = config.refresh.startup_spread;
        roles.apply(config, upstream, spread).await;
        let listeners = bound.serve(&roles, &metrics, audit.as_ref());
        Ok(Broker {
            roles,
            listeners,
            metrics,
            audit,
            options,
        })
    }

    /// Addresses the ECS listeners are bound to (port 0 resolved).
    pub fn ecs_addrs(&self) -> &[SocketAddr] {
        &self.listeners.ecs
    }

    /// Addresses the admin listeners are bound to (port 0 resolved).
    pub fn admin_addrs(&self) -> &[SocketAddr] {
        &self.listeners.admin
    }

    /// Addresses the IMDS listeners are bound to (empty without `[imds]`).
    pub fn imds_addrs(&self) -> &[SocketAddr] {
        &self.listeners.imds
    }

    /// Prefetched roles still without servable credentials (empty: ready).
    pub async fn unready_roles(&self) -> Vec<String> {
        self.roles.unready_roles().await
    }

    /// The token files of the configuration now serving (what `--watch-config` polls).
    pub fn token_files(&self) -> Vec<std::path::PathBuf> {
        self.roles.token_files()
    }

    /// The metrics registry (tests and embedding programs).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
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
        self.roles.clear_sessions();
        self.listeners.stop();
        self.roles.stop();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(1), async {
            self.listeners.wait().await;
            self.roles.wait().await;
        })
        .await;
        if let Some(a) = &self.audit {
            a.close().await;
        }
        tracing::info!("stopped");
    }
}

/// Checks a configuration must pass before it runs (at start-up and on reload): the broker's
/// own user is not a local user; says loudly when `local_users` cannot work here.
pub(crate) fn preflight(config: &Config) -> Result<(), String> {
    check_own_user(config)?;
    probe_owner_lookup(config);
    Ok(())
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

/// The STS client for `config`, signing with `[source]` or the embedding program's credentials.
pub(crate) async fn build_sts(config: &Config, options: &Options) -> Result<Sts, sts::SetupError> {
    match &options.source_credentials {
        None => source::build_sts(config).await,
        Some(provider) => {
            let base = sts::base_sdk_config(&config.sts, None).await;
            Sts::new(&base, &config.sts, Some(provider.clone()))
        }
    }
}

/// What the fetcher calls STS with: `sts` and the `[sts]` call rate, starting where
/// `previous` left it (a rate lowered by Throttling stays lowered across a reload).
pub(crate) fn upstream(
    config: &Config,
    sts: Sts,
    metrics: &Arc<Metrics>,
    previous: Option<&AdaptiveRate>,
) -> Arc<Upstream> {
    let c = &config.sts;
    let limiter = match previous {
        None => AdaptiveRate::new(
            c.max_calls_per_second,
            c.min_calls_per_second,
            c.adaptive_rate,
        ),
        Some(p) => AdaptiveRate::starting_at(
            c.max_calls_per_second,
            c.min_calls_per_second,
            c.adaptive_rate,
            p.current(),
        ),
    };
    metrics.set_sts_rate(limiter.current());
    Arc::new(Upstream {
        sts: sts.with_metrics(Arc::clone(metrics)),
        limiter,
    })
}
