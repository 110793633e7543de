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
use crate::cache::{CredentialCache, RenderedCredentials, RoleSlot};
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
    /// The cached credentials: refresh tasks write them, handlers only read.
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
    pub credentials: Option<Arc<RenderedCredentials>>,
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
    let recorders = Recorders {
        metrics: &context.metrics,
        audit: context.audit.as_ref(),
    };
    recorders.finish(H::ENDPOINT, &request, peer, started, outcome)
}

/// Where the finishing step writes.
struct Recorders<'a> {
    metrics: &'a Metrics,
    audit: Option<&'a AuditLog>,
}

impl Recorders<'_> {
    /// The finishing step: metrics, audit record, refusal log; returns the response.
    fn finish<B>(
        &self,
        endpoint: Endpoint,
        request: &Request<B>,
        peer: SocketAddr,
        started: Instant,
        outcome: Outcome,
    ) -> Response<Body> {
        let status = outcome.response.status().as_u16();
        let role = outcome
            .role
            .as_ref()
            .map_or("", |slot| slot.config.name.as_str());
        self.metrics
            .observe_request(endpoint, role, status, started.elapsed());
        if status >= 400 && endpoint != Endpoint::Admin {
            log_refusal(endpoint, request, peer, role, status, &outcome.caller);
        }
        if let Some(audit) = self.audit
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
}

/// Says at `debug` why a request was refused and who asked. A Kubernetes caller is named by
/// its workload, anyone else by path and socket owner.
fn log_refusal<B>(
    endpoint: Endpoint,
    request: &Request<B>,
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
    use super::*;
    use crate::cache::SlotUses;
    use crate::config::{Config, LoadContext};
    use hyper::StatusCode;

    fn app_role() -> Arc<RoleSlot> {
        let config = Config::parse(
            "[sts]\nregion = \"us-east-1\"\n[[role]]\nname = \"app\"\narn = \"arn:aws:iam::123456789012:role/app\"\ntokens = [\"tok-0123456789abcdef\"]\n",
            "t.toml",
            &LoadContext { hostname: "h".into() },
        )
        .unwrap();
        RoleSlot::new(Arc::clone(&config.roles[0]), 1, None, SlotUses::default())
    }

    fn outcome(status: StatusCode, role: Option<Arc<RoleSlot>>, audited: bool) -> Outcome {
        let mut response = Response::<Body>::default();
        *response.status_mut() = status;
        Outcome {
            response,
            role,
            caller: Caller {
                token_fingerprint: Some([0x9f, 0x86, 0xd0, 0x81, 0x88, 0x4c, 0x7d, 0x65]),
                uid: Some(2001),
                ..Caller::default()
            },
            audited,
            credentials: None,
        }
    }

    /// The one finishing step counts every listener the same way and audits only what its
    /// handler marked, with the fields the trail documents.
    #[tokio::test]
    async fn the_finishing_step_counts_and_audits_every_listener_alike() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let metrics = Arc::new(Metrics::new());
        let audit = AuditLog::open(&path, Arc::clone(&metrics)).await.unwrap();
        let recorders = Recorders {
            metrics: &metrics,
            audit: Some(&audit),
        };
        let request = Request::builder()
            .uri("/v2/credentials/secret-path-id")
            .body(())
            .unwrap();
        let peer: SocketAddr = "127.0.0.1:40312".parse().unwrap();
        let started = clock::instant();
        let cases = [
            (Endpoint::Ecs, StatusCode::OK, Some(app_role()), true),
            (Endpoint::Imds, StatusCode::NOT_FOUND, None, false),
            (
                Endpoint::Imds,
                StatusCode::SERVICE_UNAVAILABLE,
                Some(app_role()),
                true,
            ),
            (Endpoint::Admin, StatusCode::OK, None, false),
        ];
        for (endpoint, status, role, audited) in cases {
            let resp = recorders.finish(
                endpoint,
                &request,
                peer,
                started,
                outcome(status, role, audited),
            );
            assert_eq!(resp.status(), status, "the response is the handler's");
        }
        audit.close().await;

        let text = String::from_utf8(metrics.render()).unwrap();
        for series in [
            "sts_broker_requests_total{endpoint=\"ecs\",role=\"app\",status=\"200\"} 1",
            "sts_broker_requests_total{endpoint=\"imds\",role=\"\",status=\"404\"} 1",
            "sts_broker_requests_total{endpoint=\"imds\",role=\"app\",status=\"503\"} 1",
            "sts_broker_requests_total{endpoint=\"admin\",role=\"\",status=\"200\"} 1",
            "sts_broker_request_duration_seconds_count{endpoint=\"imds\"} 2",
            "sts_broker_audit_records_total{outcome=\"written\"} 2",
        ] {
            assert!(text.contains(series), "{series} missing from\n{text}");
        }
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(
            (
                &lines[0]["endpoint"],
                &lines[0]["role"],
                &lines[0]["status"]
            ),
            (&"ecs".into(), &"app".into(), &200.into())
        );
        assert_eq!(lines[0]["token_fingerprint"], "9f86d081884c7d65");
        assert_eq!(lines[0]["uid"], 2001);
        assert_eq!(lines[0]["peer"], "127.0.0.1:40312");
        assert_eq!(
            (
                &lines[1]["endpoint"],
                &lines[1]["status"],
                &lines[1]["access_key_id"]
            ),
            (&"imds".into(), &503.into(), &serde_json::Value::Null)
        );
    }

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
