//! The admin endpoint: health, readiness, metrics, role status, forced refresh.
//!
//! | route | answer |
//! |---|---|
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 when every prefetched role holds credentials with at least `min_remaining` left, else 503 naming the roles |
//! | `GET /metrics` | Prometheus text |
//! | `GET /v1/roles` | JSON array: `name`, `arn`, `expiration`, `last_refresh`, `consecutive_failures`, `last_error`, … — never secrets |
//! | `POST /v1/roles/{name}/refresh` | re-assume now (how to act on a session revocation); loopback peers only (403 otherwise) |
//!
//! - Requests a browser sends on a web page's behalf are refused (403 `BrowserRequest`): any
//!   `Origin` header, or `Sec-Fetch-Site` other than `none`. A page the user opens could
//!   otherwise `POST` a no-cors "simple" request to the refresh route.
//! - `/v1/roles` and the refresh route (account IDs, access key IDs, a state change) answer
//!   loopback peers only; a pod-IP bind for probes and scraping serves other peers
//!   `/healthz`, `/readyz` and `/metrics`.
//! - A forced refresh fetches first and swaps on success: when STS fails the current
//!   credentials stay (503 says so). Concurrent forced refreshes share one fetch, one within
//!   10 s of the last forced fetch answers with its result, and a role in back-off answers
//!   with its last error — none of those calls STS.
//!
//! Readiness is computed per request, not latched: a role that falls below `min_remaining`
//! while STS fails makes the broker unready again.

use bytes::Bytes;
use hyper::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::cache::RoleSlot;
use crate::clock;
use crate::creds::FetchError;
use crate::server::Endpoint;
use crate::server::handler::{Handler, ListenerContext, Outcome, RequestContext};
use crate::server::http;
use crate::server::response::Body;
use crate::server::response::{JsonError, Refused, json_response, with_content_type};
use crate::state::Snapshot;
use crate::wire::rfc3339;

/// The admin listener's handler.
#[derive(Debug)]
pub struct Admin {
    context: ListenerContext,
}

impl Admin {
    /// A handler reading `context` (its audit trail is never written: nothing here serves
    /// credentials).
    pub fn new(context: ListenerContext) -> Admin {
        Admin { context }
    }
}

impl Handler for Admin {
    const ENDPOINT: Endpoint = Endpoint::Admin;

    fn context(&self) -> &ListenerContext {
        &self.context
    }

    async fn answer(&self, request: &RequestContext<'_>) -> Outcome {
        Outcome::answered(match self.route(request).await {
            Ok(resp) => resp,
            Err(e) => e.response(),
        })
    }
}

/// Why an admin request was refused; `Display` is the `Message`.
#[derive(Debug, thiserror::Error)]
enum AdminError<'a> {
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("requests sent by a web browser (Origin or Sec-Fetch-Site headers) are refused")]
    BrowserRequest,
    #[error("role status and forced refresh are for loopback peers only")]
    LoopbackOnly,
    #[error("no role named {0:?}")]
    UnknownRole(&'a str),
    #[error("no servable credentials yet for: {}", .0.join(", "))]
    NotReady(Vec<String>),
    /// `kept` says what keeps being served; `backing_off` that the answer cost no STS call.
    #[error(
        "role {role:?} was not refreshed: {error}{kept}{}",
        if *backing_off { " (backing off after the last failure: this answer cost no STS call)" } else { "" }
    )]
    RefreshFailed {
        role: &'a str,
        error: FetchError,
        kept: String,
        backing_off: bool,
    },
}

impl JsonError for AdminError<'_> {
    fn status(&self) -> StatusCode {
        match self {
            AdminError::Refused(r) => r.status(),
            AdminError::BrowserRequest | AdminError::LoopbackOnly => StatusCode::FORBIDDEN,
            AdminError::UnknownRole(_) => StatusCode::NOT_FOUND,
            AdminError::NotReady(_) | AdminError::RefreshFailed { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    fn code(&self) -> &'static str {
        match self {
            AdminError::Refused(r) => r.code(),
            AdminError::BrowserRequest => "BrowserRequest",
            AdminError::LoopbackOnly => "AccessDenied",
            AdminError::UnknownRole(_) => "NotFound",
            AdminError::NotReady(_) => "NotReady",
            AdminError::RefreshFailed { .. } => "RefreshFailed",
        }
    }

    fn header(&self) -> Option<(hyper::header::HeaderName, &'static str)> {
        match self {
            AdminError::Refused(r) => r.header(),
            _ => None,
        }
    }
}

impl Admin {
    async fn route<'a>(&self, rc: &RequestContext<'a>) -> Result<Response<Body>, AdminError<'a>> {
        let (req, snapshot) = (rc.request, rc.snapshot);
        if !http::host_allowed(req, &snapshot.config.admin.allowed_hosts) {
            return Err(Refused::InvalidHost.into());
        }
        if from_browser(req) {
            return Err(AdminError::BrowserRequest);
        }
        let path = req.uri().path();
        let loopback = rc.peer.ip().to_canonical().is_loopback();
        if !loopback && path.starts_with("/v1/") {
            return Err(AdminError::LoopbackOnly);
        }
        let read_only = req.method() == Method::GET || req.method() == Method::HEAD;
        let get_only = |answer: Result<Response<Body>, AdminError<'a>>| {
            if read_only {
                answer
            } else {
                Err(Refused::MethodNotAllowed("GET").into())
            }
        };
        match path {
            "/healthz" => get_only(Ok(json_response(
                StatusCode::OK,
                Bytes::from_static(b"{\"status\":\"ok\"}"),
            ))),
            "/readyz" => get_only(self.readyz(snapshot).await),
            "/metrics" => get_only(Ok(self.metrics(snapshot).await)),
            "/v1/roles" => get_only(Ok(self.roles(snapshot).await)),
            _ => match path
                .strip_prefix("/v1/roles/")
                .and_then(|rest| rest.strip_suffix("/refresh"))
                .filter(|n| !n.is_empty() && !n.contains('/'))
            {
                Some(name) if req.method() == Method::POST => self.refresh(rc, name).await,
                Some(_) => Err(Refused::MethodNotAllowed("POST").into()),
                None => Err(Refused::NotFound.into()),
            },
        }
    }
}

/// Whether a browser sent the request for a web page (cross-site request forgery): every
/// browser sets `Origin` on a `POST` and `Sec-Fetch-Site` on every request; only `none`
/// (typed into the address bar) is not a page's doing. Tools (curl, probes, Prometheus)
/// send neither.
fn from_browser<B>(req: &hyper::Request<B>) -> bool {
    let h = req.headers();
    h.contains_key(hyper::header::ORIGIN)
        || h.get_all("sec-fetch-site")
            .iter()
            .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"none"))
}

// === the routes ===

impl Admin {
    async fn readyz<'a>(&self, snapshot: &Snapshot) -> Result<Response<Body>, AdminError<'a>> {
        let waiting = snapshot.unready_roles(&self.context.cache).await;
        self.context.metrics.set_ready(waiting.is_empty());
        if waiting.is_empty() {
            Ok(json_response(
                StatusCode::OK,
                Bytes::from_static(b"{\"ready\":true}"),
            ))
        } else {
            Err(AdminError::NotReady(waiting))
        }
    }

    async fn metrics(&self, snapshot: &Snapshot) -> Response<Body> {
        let ListenerContext { cache, metrics, .. } = &self.context;
        let now = clock::now();
        for (name, slot) in &snapshot.roles {
            let left = match cache.peek(&slot.key).await {
                Some(served) => i64::try_from(served.remaining(now).as_secs()).unwrap_or(i64::MAX),
                None => 0,
            };
            metrics.set_expiry(name, left);
        }
        metrics.set_ready(snapshot.unready_roles(cache).await.is_empty());
        with_content_type(
            StatusCode::OK,
            Bytes::from(metrics.render()),
            "text/plain; version=0.0.4; charset=utf-8",
        )
    }

    /// One role's public status. Never holds a secret.
    async fn role_json(&self, slot: &RoleSlot) -> Value {
        let status = slot.status();
        let served = self.context.cache.peek(&slot.key).await;
        json!({
            "name": slot.config.name,
            "arn": slot.config.spec.arn,
            "session_name": slot.config.spec.session_name,
            "prefetch": slot.config.spec.prefetch,
            "servable": served.is_some(),
            "access_key_id": served.as_ref().map(|s| s.access_key_id.clone()),
            "expiration": served.as_ref().map(|s| rfc3339(s.expiration)),
            "last_refresh": status.last_refresh.map(rfc3339),
            "consecutive_failures": status.consecutive_failures,
            "last_error": status.last_error.as_ref().map(|e| json!({
                "class": e.class.as_str(),
                "code": e.code,
                "message": e.message,
                "retryable": e.class.retryable(),
            })),
        })
    }

    async fn roles(&self, snapshot: &Snapshot) -> Response<Body> {
        let mut names: Vec<&String> = snapshot.roles.keys().collect();
        names.sort();
        let sessions = self.context.sessions.count_by_role();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let slot = &snapshot.roles[name];
            let mut role = self.role_json(slot).await;
            if let Some(w) = &slot.config.spec.workload {
                role["service_accounts"] = json!(
                    w.service_accounts
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                );
                role["session_scope"] = json!(w.scope.as_str());
                role["sessions"] = json!(sessions.get(name.as_str()).copied().unwrap_or(0));
            }
            out.push(role);
        }
        json_response(StatusCode::OK, Bytes::from(Value::Array(out).to_string()))
    }

    async fn refresh<'a>(
        &self,
        rc: &RequestContext<'a>,
        name: &'a str,
    ) -> Result<Response<Body>, AdminError<'a>> {
        let ListenerContext {
            cache, sessions, ..
        } = &self.context;
        let peer = rc.peer;
        let slot = rc
            .snapshot
            .roles
            .get(name)
            .ok_or(AdminError::UnknownRole(name))?;
        tracing::info!(role = name, %peer, "forced refresh requested");
        // Kubernetes caller sessions of the role go too: the next request of each caller
        // assumes the role anew.
        sessions.remove_role(&slot.key);
        // Whether the back-off gate is closed now: then the answer below costs no STS call.
        let backing_off = slot
            .status()
            .retry_not_before
            .is_some_and(|t| t > clock::instant());
        match cache.force_refresh(slot).await {
            Ok(forced) => {
                let mut body = self.role_json(slot).await;
                body["coalesced"] = Value::Bool(forced.coalesced);
                body["access_key_id"] = Value::String(forced.served.access_key_id.clone());
                Ok(json_response(StatusCode::OK, Bytes::from(body.to_string())))
            }
            Err(error) => {
                let kept = match cache.peek(&slot.key).await {
                    Some(served) => format!(
                        "; the current credentials ({}, expiring {}) keep being served",
                        served.access_key_id,
                        rfc3339(served.expiration)
                    ),
                    None => "; no credentials are held for this role".to_string(),
                };
                tracing::warn!(role = name, error = %error.message, "forced refresh failed{kept}");
                Err(AdminError::RefreshFailed {
                    role: name,
                    error,
                    kept,
                    backing_off,
                })
            }
        }
    }
}
