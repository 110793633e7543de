//! The listeners: bind every configured address first ([`Bound::bind`]: a port that is taken
//! fails start-up before any STS call), then serve the ECS, IMDS and admin handlers on them
//! ([`Bound::serve`]). Their limits are fixed for the life of the process (a reload that
//! changes them is rejected, `reload.rs`).

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::AuditLog;
use crate::broker::{SHUTDOWN_GRACE, StartError};
use crate::config::{self, Config};
use crate::fdlimit;
use crate::metrics::Metrics;
use crate::server::{self, Endpoint, admin, ecs, http, imds};
use crate::state::Snapshot;
use crate::supervisor::RoleSupervisor;

/// Bound sockets with their limits, not yet serving.
#[derive(Debug)]
pub struct Bound {
    ecs: Vec<TcpListener>,
    admin: Vec<TcpListener>,
    imds: Vec<TcpListener>,
    ecs_limits: http::Limits,
    admin_limits: http::Limits,
    /// `Some` exactly when `[imds]` is configured.
    imds_limits: Option<http::Limits>,
}

/// The serving listeners and the addresses they are bound to (port 0 resolved).
#[derive(Debug)]
pub struct Listeners {
    stop: CancellationToken,
    tasks: TaskTracker,
    /// Where the ECS listeners are bound.
    pub ecs: Vec<SocketAddr>,
    /// Where the admin listeners are bound.
    pub admin: Vec<SocketAddr>,
    /// Where the IMDS listeners are bound (empty without `[imds]`).
    pub imds: Vec<SocketAddr>,
}

impl Bound {
    /// Binds every listener of `config` and works out its limits (file descriptor budgets,
    /// the IMDS hop limit).
    ///
    /// # Errors
    /// When an address cannot be bound or the hop limit cannot be set.
    pub async fn bind(config: &Config) -> Result<Bound, StartError> {
        let ecs = bind_all(Endpoint::Ecs, &config.ecs.listen).await?;
        let admin = bind_all(Endpoint::Admin, &config.admin.listen).await?;
        let imds = match &config.imds {
            Some(i) => bind_all(Endpoint::Imds, &i.listener.listen).await?,
            None => Vec::new(),
        };
        let hop_limit = config.imds.as_ref().map(|i| i.hop_limit);
        let budgets = fdlimit::raise_nofile().map(|limit| {
            let b = fdlimit::budgets(limit, admin.len(), ecs.len() + imds.len());
            tracing::info!(
                nofile = limit,
                admin_budget = b.admin,
                listener_budget = b.data,
                "file descriptor budgets"
            );
            b
        });
        let ecs_limits = limits(Endpoint::Ecs, &config.ecs, None, budgets.map(|b| b.data));
        let admin_limits = limits(
            Endpoint::Admin,
            &config.admin,
            None,
            budgets.map(|b| b.admin),
        );
        let imds_limits = config.imds.as_ref().map(|i| {
            limits(
                Endpoint::Imds,
                &i.listener,
                hop_limit,
                budgets.map(|b| b.data),
            )
        });
        for l in &imds {
            let v6 = l.local_addr().is_ok_and(|a| a.is_ipv6());
            if let Some(hops) = hop_limit
                && let Err(source) = http::set_hop_limit(socket2::SockRef::from(l), v6, hops)
            {
                return Err(StartError::Bind {
                    endpoint: Endpoint::Imds,
                    addr: l.local_addr().unwrap_or_else(|_| ([0, 0, 0, 0], 0).into()),
                    source,
                });
            }
        }
        Ok(Bound {
            ecs,
            admin,
            imds,
            ecs_limits,
            admin_limits,
            imds_limits,
        })
    }

    /// Starts serving: the handlers read `roles`' snapshot and cache.
    pub fn serve(
        self,
        roles: &RoleSupervisor,
        metrics: &Arc<Metrics>,
        audit: Option<&AuditLog>,
    ) -> Listeners {
        let out = Listeners {
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            ecs: local_addrs(&self.ecs),
            admin: local_addrs(&self.admin),
            imds: local_addrs(&self.imds),
        };
        let context = server::ListenerContext {
            state: Arc::clone(roles.state()),
            cache: Arc::clone(roles.cache()),
            metrics: Arc::clone(metrics),
            audit: audit.cloned(),
            sessions: Arc::clone(roles.sessions()),
        };
        let mut ecs_limits = self.ecs_limits;
        ecs_limits.attribution = attribution(roles.state());
        let ecs = Arc::new(ecs::Ecs::new(context.clone()));
        for l in self.ecs {
            out.spawn(l, ecs_limits.clone(), Arc::clone(&ecs));
        }
        let imds = Arc::new(imds::Imds::new(context.clone()));
        for l in self.imds {
            let mut limits = self
                .imds_limits
                .clone()
                .expect("IMDS listeners only with [imds]");
            limits.attribution = attribution(roles.state());
            out.spawn(l, limits, Arc::clone(&imds));
        }
        let admin = Arc::new(admin::Admin::new(context));
        for l in self.admin {
            out.spawn(l, self.admin_limits.clone(), Arc::clone(&admin));
        }
        out
    }
}

impl Listeners {
    fn spawn<H: server::Handler>(
        &self,
        listener: TcpListener,
        limits: http::Limits,
        handler: Arc<H>,
    ) {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(endpoint = %H::ENDPOINT, %addr, "listening");
        }
        self.tasks.spawn(http::serve(
            listener,
            handler,
            self.stop.clone(),
            SHUTDOWN_GRACE,
            limits,
        ));
    }

    /// Stops accepting; open connections get [`SHUTDOWN_GRACE`] to finish.
    pub fn stop(&self) {
        self.stop.cancel();
        self.tasks.close();
    }

    /// Waits until every listener has drained (after [`Self::stop`]).
    pub async fn wait(&self) {
        self.tasks.wait().await;
    }
}

async fn bind_all(
    endpoint: Endpoint,
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

/// The fixed limits of a listener: its configured `max_connections`, lowered to its share of
/// the file descriptors (`budget`) when that is smaller.
fn limits(
    endpoint: Endpoint,
    l: &config::ListenerConfig,
    hop_limit: Option<u32>,
    budget: Option<usize>,
) -> http::Limits {
    let max_connections = match budget {
        // Admin's share is an eighth by design (probes and scrapes need few connections):
        // lowering it is expected, not worth a warning.
        Some(b) if b < l.max_connections && endpoint == Endpoint::Admin => {
            tracing::info!(
                %endpoint,
                configured = l.max_connections,
                budget = b,
                "max_connections set to the admin share of the file descriptor limit"
            );
            b
        }
        Some(b) if b < l.max_connections => {
            tracing::warn!(
                %endpoint,
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
