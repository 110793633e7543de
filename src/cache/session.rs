//! Per-caller STS sessions (DESIGN.md §7): one [`RoleSlot`] per role and caller scope
//! (namespace/service account, or pod), with the caller's session tags and name.
//!
//! - Created on first use, single-flight per key (moka's `get_with`): 1,000 pods of 20
//!   service accounts starting together make 20 slots, and each slot's first fetch is itself
//!   single-flight in [`CredentialCache`](super::CredentialCache), so 20 STS calls.
//! - Each session is kept warm by its own refresh loop (started by the spawn function the
//!   broker hands in) while it is used; one nobody asked for during `session_idle` is
//!   dropped — its loop stops, so a pod that is gone causes no more STS calls.
//! - At most `max_sessions` are held; beyond that the least recently used goes first.
//! - No per-pod metric labels: `sts_broker_caller_sessions{role}` counts them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{RoleKey, RoleSlot, SlotUses};
use crate::config::kubernetes::{
    TAG_CLUSTER, TAG_NAMESPACE, TAG_POD_NAME, TAG_POD_UID, TAG_SERVICE_ACCOUNT, WorkloadFacts,
    render_session_name,
};
use crate::config::{RoleConfig, RoleKind, SessionScope};
use crate::metrics::Metrics;

/// Session slots get generations from the top half of the range, so they never collide
/// with the role generations the broker counts up from 0.
const SESSION_GENERATION_BASE: u64 = 1 << 63;

/// Starts the refresh loop of a session slot; the loop ends when the token is cancelled.
pub type SpawnLoop = Arc<dyn Fn(Arc<RoleSlot>, CancellationToken) + Send + Sync>;

/// A role generation and the caller scope within it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SessionKey {
    /// The configured role's generation: a reload that changes the role drops its sessions.
    pub role: RoleKey,
    /// `namespace/service_account` or `namespace/service_account/pod-uid`.
    pub scope: Arc<str>,
}

/// The caller a session is for.
#[derive(Debug, Clone)]
pub struct SessionCaller<'a> {
    /// Who the verified token says is calling (namespace, service account, pod).
    pub facts: WorkloadFacts<'a>,
    /// `[kubernetes].cluster_name`, tagged `eks-cluster-name` on the session when set.
    pub cluster: Option<&'a str>,
    /// `namespace/service_account` (scope `service_account`).
    pub service_account_key: &'a Arc<str>,
    /// `namespace/service_account/pod-uid` (scope `pod`).
    pub pod_key: &'a Arc<str>,
}

struct Session {
    slot: Arc<RoleSlot>,
    stop: CancellationToken,
}

/// Every caller session held.
pub struct CallerSessions {
    sessions: moka::sync::Cache<SessionKey, Arc<Session>>,
    next_generation: AtomicU64,
    spawn: SpawnLoop,
    idle: Duration,
}

impl std::fmt::Debug for CallerSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallerSessions")
            .field("sessions", &self.sessions.entry_count())
            .finish_non_exhaustive()
    }
}

impl CallerSessions {
    /// Holds at most `max_sessions`, drops one unused for `idle`; `spawn` starts a new
    /// session's refresh loop.
    pub fn new(
        idle: Duration,
        max_sessions: u64,
        spawn: SpawnLoop,
        metrics: Arc<Metrics>,
    ) -> Arc<CallerSessions> {
        let sessions = moka::sync::Cache::builder()
            .max_capacity(max_sessions)
            .time_to_idle(idle)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .support_invalidation_closures()
            .eviction_listener(move |key: Arc<SessionKey>, s: Arc<Session>, cause| {
                s.stop.cancel();
                metrics.add_caller_sessions(&key.role.name, -1);
                tracing::debug!(role = %key.role.name, session = %key.scope, ?cause, "caller session dropped");
            })
            .build();
        Arc::new(CallerSessions {
            sessions,
            next_generation: AtomicU64::new(SESSION_GENERATION_BASE),
            spawn,
            idle,
        })
    }

    /// The session slot of `role` (a slot of the configured role) for `caller`, created on
    /// first use. With `session_scope = "role"` the role's own slot is the session.
    pub fn slot_for(
        &self,
        role: &Arc<RoleSlot>,
        caller: &SessionCaller<'_>,
        metrics: &Metrics,
    ) -> Arc<RoleSlot> {
        let scope = match role.config.spec.workload.as_ref().map(|w| w.scope) {
            None | Some(SessionScope::Role) => return Arc::clone(role),
            Some(s) => s,
        };
        let scope_key = match scope {
            SessionScope::Pod => caller.pod_key,
            _ => caller.service_account_key,
        };
        let key = SessionKey {
            role: role.key.clone(),
            scope: Arc::clone(scope_key),
        };
        let session = self.sessions.get_with(key, || {
            let config = Arc::new(session_config(&role.config, scope, caller));
            let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
            let slot = RoleSlot::new(config, generation, role.base.clone(), SlotUses::default());
            let stop = CancellationToken::new();
            (self.spawn)(Arc::clone(&slot), stop.clone());
            metrics.add_caller_sessions(&role.config.name, 1);
            Arc::new(Session { slot, stop })
        });
        Arc::clone(&session.slot)
    }

    /// Drops every session of a role generation (removed or changed by a reload).
    pub fn remove_role(&self, role: &RoleKey) {
        let role = role.clone();
        let _ = self
            .sessions
            .invalidate_entries_if(move |k, _| k.role == role);
        self.sessions.run_pending_tasks();
    }

    /// Drops every session (shutdown, or `[kubernetes]` session settings changed).
    pub fn clear(&self) {
        self.sessions.invalidate_all();
        self.sessions.run_pending_tasks();
    }

    /// Evicts idle sessions now. Called periodically: without it an idle cache is only
    /// swept on its next use.
    pub fn sweep(&self) {
        self.sessions.run_pending_tasks();
    }

    /// How often [`sweep`](Self::sweep) should run.
    pub fn sweep_every(&self) -> Duration {
        (self.idle / 4).clamp(Duration::from_millis(250), Duration::from_secs(30))
    }

    /// Sessions held per role name.
    pub fn count_by_role(&self) -> std::collections::HashMap<String, u64> {
        let mut out = std::collections::HashMap::new();
        for (k, _) in &self.sessions {
            *out.entry(k.role.name.to_string()).or_insert(0) += 1;
        }
        out
    }

    /// Sessions held.
    pub fn len(&self) -> u64 {
        self.sessions.run_pending_tasks();
        self.sessions.entry_count()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The role's configuration as one caller's session: the session name rendered from the
/// template, the caller tags added to the role's own and made transitive (as EKS Pod
/// Identity does, so they follow role chaining), not prefetched, no client tokens.
pub fn session_config(
    role: &RoleConfig,
    scope: SessionScope,
    caller: &SessionCaller<'_>,
) -> RoleConfig {
    let f = &caller.facts;
    let mut cfg = role.clone();
    cfg.tokens.clear();
    cfg.spec.prefetch = false;
    if let Some(t) = role
        .spec
        .workload
        .as_ref()
        .and_then(|w| w.session_template.as_deref())
    {
        cfg.spec.session_name = Some(render_session_name(t, f));
    }
    if let RoleKind::AssumeRole {
        tags,
        transitive_tag_keys,
        ..
    } = &mut cfg.spec.kind
    {
        let mut add = |k: &str, v: &str| {
            tags.push((k.to_string(), v.to_string()));
            transitive_tag_keys.push(k.to_string());
        };
        add(TAG_NAMESPACE, f.namespace);
        add(TAG_SERVICE_ACCOUNT, f.service_account);
        if let Some(c) = caller.cluster {
            add(TAG_CLUSTER, c);
        }
        if scope == SessionScope::Pod {
            add(TAG_POD_NAME, f.pod_name);
            add(TAG_POD_UID, f.pod_uid);
        }
    }
    cfg
}
