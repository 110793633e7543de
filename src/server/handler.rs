//! The shape every handler shares: what a listener reads ([`ListenerContext`]), what one
//! request brings ([`RequestContext`]), how it ended ([`Outcome`]), and the one finishing
//! step that records it.
//!
//! The finishing step, the same for the three listeners:
//! - `sts_broker_requests_total{endpoint, role, status}` and the endpoint's latency histogram,
//!   `role` being the configured role the handler counted the request under (else `""`);
//! - an audit record, when the handler marked the request as a credentials request and the
//!   trail is on;
//! - a `debug` line for a refused ECS or IMDS request (status 400 and up) saying who asked,
//!   never a secret: a relative-URI path is logged as `/v2/credentials/(redacted)`. Admin
//!   refusals (a probe's 503 from `/readyz`) are not logged.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::audit::{AuditLog, AuditRecord};
use crate::cache::session::CallerSessions;
use crate::cache::{CredentialCache, RoleSlot, Served};
use crate::clock;
use crate::config::relative_uri;
use crate::identity::{SocketOwner, Unattributed, Workload};
use crate::metrics::Metrics;
use crate::server::Endpoint;
use crate::server::response::Body;
use crate::state::Snapshot;

/// What every listener's handler reads, shared by its connections.
#[derive(Debug, Clone)]
pub struct ListenerContext {
    /// The configuration snapshot, swapped whole on reload.
    pub state: Arc<ArcSwap<Snapshot>>,
    /// The credentials: the only thing a handler reads that a refresh writes.
    pub cache: Arc<CredentialCache>,
    /// Where the finishing step counts requests.
    pub metrics: Arc<Metrics>,
    /// The audit trail, when `[audit]` is configured.
    pub audit: Option<AuditLog>,
    /// Per-caller STS sessions of roles with a per-caller `session_scope` (ECS serves them,
    /// admin counts and drops them).
    pub sessions: Arc<CallerSessions>,
}

/// One request as its handler sees it, consistent from start to finish.
#[derive(Debug)]
pub struct RequestContext<'a> {
    /// The request head (credential routes take no body).
    pub request: &'a Request<Incoming>,
    /// The client's address.
    pub peer: SocketAddr,
    /// The snapshot loaded once for this request: a reload mid-request changes nothing.
    pub snapshot: &'a Snapshot,
    /// The client socket's owner, on listeners that may attribute callers to it.
    pub owner: Option<&'a SocketOwner>,
}

impl RequestContext<'_> {
    /// How long the request waits for a role with nothing cached: the STS timeout and a
    /// second, so the fetch's own timeout answers first.
    pub fn cache_wait(&self) -> Duration {
        self.snapshot.config.sts.timeout + Duration::from_secs(1)
    }
}

/// One listener's protocol: answers a request and says what to record about it.
pub trait Handler: Send + Sync + 'static {
    /// The listener this handler serves (metric label, audit and log field).
    const ENDPOINT: Endpoint;

    /// What the handler reads.
    fn context(&self) -> &ListenerContext;

    /// The response, with what the finishing step records about the request.
    fn answer(&self, request: &RequestContext<'_>) -> impl Future<Output = Outcome> + Send;
}

/// Who called, as far as the request showed: for the audit trail and the refusal log.
#[derive(Debug, Default)]
pub struct Caller {
    /// The first 8 bytes of the SHA-256 of the presented token (or relative-URI path id).
    pub token_fingerprint: Option<[u8; 8]>,
    /// The client socket's owner, when the kernel told it.
    pub uid: Option<u32>,
    /// That owner's user name, when it is a configured local user.
    pub user: Option<Arc<str>>,
    /// Why the socket's owner could not be vouched for, when that decided the answer.
    pub unattributed: Option<Unattributed>,
    /// The verified Kubernetes workload, when the token was a service-account token.
    pub workload: Option<Arc<Workload>>,
}

/// How a request ended: the response, and what the finishing step records.
#[derive(Debug, Default)]
pub struct Outcome {
    /// What the client gets.
    pub response: Response<Body>,
    /// The configured role the request is counted under (the `role` label and the audit
    /// record's role); `None` counts it under `role=""`, so unknown names never become labels.
    pub role: Option<Arc<RoleSlot>>,
    /// Who asked.
    pub caller: Caller,
    /// Whether this was a credentials request, which the audit trail records.
    pub audited: bool,
    /// The credentials served, on success.
    pub credentials: Option<Arc<Served>>,
}

impl Outcome {
    /// An outcome that only answers: counted under no role, not audited.
    pub fn answered(response: Response<Body>) -> Outcome {
        Outcome {
            response,
            ..Outcome::default()
        }
    }
}

/// Answers one request on `handler`'s listener: loads the snapshot, asks the handler, and
/// records the outcome.
pub async fn handle<H: Handler>(
    handler: Arc<H>,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let started = clock::instant();
    let context = handler.context();
    let snapshot = context.state.load_full();
    let owner = request.extensions().get::<Arc<SocketOwner>>().cloned();
    let outcome = handler
        .answer(&RequestContext {
            request: &request,
            peer,
            snapshot: &snapshot,
            owner: owner.as_deref(),
        })
        .await;
    finish(H::ENDPOINT, context, &request, peer, started, outcome)
}

/// The finishing step: metrics, audit record, refusal log; returns the response.
fn finish(
    endpoint: Endpoint,
    context: &ListenerContext,
    request: &Request<Incoming>,
    peer: SocketAddr,
    started: Instant,
    outcome: Outcome,
) -> Response<Body> {
    let status = outcome.response.status().as_u16();
    let role = outcome
        .role
        .as_ref()
        .map_or("", |slot| slot.config.name.as_str());
    context
        .metrics
        .observe_request(endpoint, role, status, started.elapsed());
    if status >= 400 && endpoint != Endpoint::Admin {
        log_refusal(endpoint, request, peer, role, status, &outcome.caller);
    }
    if let Some(audit) = &context.audit
        && outcome.audited
    {
        audit.record(AuditRecord {
            time: clock::now(),
            endpoint,
            peer,
            token_fingerprint: outcome.caller.token_fingerprint,
            uid: outcome.caller.uid,
            user: outcome.caller.user,
            role: outcome.role,
            credentials: outcome.credentials,
            status,
            workload: outcome.caller.workload,
        });
    }
    outcome.response
}

/// Says at `debug` why a request was refused and who asked. A Kubernetes caller is named by
/// its workload, anyone else by path and socket owner.
fn log_refusal(
    endpoint: Endpoint,
    request: &Request<Incoming>,
    peer: SocketAddr,
    role: &str,
    status: u16,
    caller: &Caller,
) {
    if let Some(w) = &caller.workload {
        tracing::debug!(
            %peer, role, status, namespace = %w.namespace,
            service_account = %w.service_account, pod = %w.pod_name,
            "{endpoint} request refused"
        );
        return;
    }
    tracing::debug!(
        %peer,
        role,
        status,
        path = loggable_path(request.uri().path()),
        uid = caller.uid,
        user = caller.user.as_deref(),
        unattributed = caller.unattributed.map(Unattributed::as_str),
        "{endpoint} request refused"
    );
}

/// The path as logs may show it: a relative-URI path is a secret.
fn loggable_path(path: &str) -> &str {
    if path.starts_with(relative_uri::PREFIX) {
        "/v2/credentials/(redacted)"
    } else {
        path
    }
}

#[cfg(test)]
mod tests {
    use super::loggable_path;

    #[test]
    fn relative_uri_paths_never_reach_the_log() {
        assert_eq!(
            loggable_path("/v2/credentials/5e3c1d0f-secret"),
            "/v2/credentials/(redacted)"
        );
        assert_eq!(loggable_path("/v1/credentials/app"), "/v1/credentials/app");
        assert_eq!(loggable_path("/latest/api/token"), "/latest/api/token");
    }
}
