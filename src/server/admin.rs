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

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::cache::{CredentialCache, RoleSlot};
use crate::clock;
use crate::metrics::Metrics;
use crate::server::http::{self, Body};
use crate::state::Snapshot;
use crate::wire::rfc3339;

const ENDPOINT: &str = "admin";

/// What the admin handler reads.
#[derive(Debug, Clone)]
pub struct AdminContext {
    /// Per-caller sessions, counted per role in `/v1/roles`.
    pub sessions: Arc<crate::cache::session::CallerSessions>,
    pub state: Arc<ArcSwap<Snapshot>>,
    pub cache: Arc<CredentialCache>,
    pub metrics: Arc<Metrics>,
}

/// Answers one request.
pub async fn handle(
    ctx: Arc<AdminContext>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let started = clock::instant();
    let snap = ctx.state.load_full();
    let resp = route(&ctx, &snap, &req, peer).await;
    ctx.metrics
        .observe_request(ENDPOINT, "", resp.status().as_u16(), started.elapsed());
    resp
}

async fn route(
    ctx: &AdminContext,
    snap: &Snapshot,
    req: &Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    if !http::host_allowed(req, &snap.config.admin.allowed_hosts) {
        return http::forbidden_host();
    }
    if from_browser(req) {
        return http::error_response(
            StatusCode::FORBIDDEN,
            "BrowserRequest",
            "requests sent by a web browser (Origin or Sec-Fetch-Site headers) are refused",
        );
    }
    let path = req.uri().path();
    let loopback = peer.ip().to_canonical().is_loopback();
    if !loopback && path.starts_with("/v1/") {
        return http::error_response(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "role status and forced refresh are for loopback peers only",
        );
    }
    let get_only = |resp: Response<Body>| {
        if req.method() == Method::GET || req.method() == Method::HEAD {
            resp
        } else {
            http::method_not_allowed("GET")
        }
    };
    match path {
        "/healthz" => get_only(http::json_response(
            StatusCode::OK,
            Bytes::from_static(b"{\"status\":\"ok\"}"),
        )),
        "/readyz" => get_only(readyz(ctx, snap).await),
        "/metrics" => get_only(metrics(ctx, snap).await),
        "/v1/roles" => get_only(roles(ctx, snap).await),
        _ => match path
            .strip_prefix("/v1/roles/")
            .and_then(|rest| rest.strip_suffix("/refresh"))
            .filter(|n| !n.is_empty() && !n.contains('/'))
        {
            Some(name) if req.method() == Method::POST => refresh(ctx, snap, name, peer).await,
            Some(_) => http::method_not_allowed("POST"),
            None => http::not_found(),
        },
    }
}

/// Whether a browser sent the request for a web page (cross-site request forgery): every
/// browser sets `Origin` on a `POST` and `Sec-Fetch-Site` on every request; only `none`
/// (typed into the address bar) is not a page's doing. Tools (curl, probes, Prometheus)
/// send neither.
fn from_browser<B>(req: &Request<B>) -> bool {
    let h = req.headers();
    h.contains_key(hyper::header::ORIGIN)
        || h.get_all("sec-fetch-site")
            .iter()
            .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"none"))
}

async fn readyz(ctx: &AdminContext, snap: &Snapshot) -> Response<Body> {
    let waiting = snap.unready_roles(&ctx.cache).await;
    ctx.metrics.set_ready(waiting.is_empty());
    if waiting.is_empty() {
        http::json_response(StatusCode::OK, Bytes::from_static(b"{\"ready\":true}"))
    } else {
        http::error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "NotReady",
            &format!("no servable credentials yet for: {}", waiting.join(", ")),
        )
    }
}

async fn metrics(ctx: &AdminContext, snap: &Snapshot) -> Response<Body> {
    let now = clock::now();
    for (name, slot) in &snap.roles {
        let left = match ctx.cache.peek(&slot.key).await {
            Some(served) => i64::try_from(served.remaining(now).as_secs()).unwrap_or(i64::MAX),
            None => 0,
        };
        ctx.metrics.set_expiry(name, left);
    }
    ctx.metrics
        .set_ready(snap.unready_roles(&ctx.cache).await.is_empty());
    let mut resp = Response::new(http_body_util::Full::new(Bytes::from(ctx.metrics.render())));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// One role's public status. Never holds a secret.
async fn role_json(ctx: &AdminContext, slot: &RoleSlot) -> Value {
    let status = slot.status();
    let served = ctx.cache.peek(&slot.key).await;
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

async fn roles(ctx: &AdminContext, snap: &Snapshot) -> Response<Body> {
    let mut names: Vec<&String> = snap.roles.keys().collect();
    names.sort();
    let sessions = ctx.sessions.count_by_role();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let mut role = role_json(ctx, &snap.roles[name]).await;
        let slot = &snap.roles[name];
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
    http::json_response(StatusCode::OK, Bytes::from(Value::Array(out).to_string()))
}

async fn refresh(
    ctx: &AdminContext,
    snap: &Snapshot,
    name: &str,
    peer: SocketAddr,
) -> Response<Body> {
    let Some(slot) = snap.roles.get(name) else {
        return http::error_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("no role named {name:?}"),
        );
    };
    tracing::info!(role = name, %peer, "forced refresh requested");
    // Kubernetes caller sessions of the role go too: the next request of each caller assumes
    // the role anew.
    ctx.sessions.remove_role(&slot.key);
    // Whether the back-off gate is closed now: then the answer below costs no STS call.
    let backing_off = slot
        .status()
        .retry_not_before
        .is_some_and(|t| t > clock::instant());
    match ctx.cache.force_refresh(slot).await {
        Ok(forced) => {
            let mut body = role_json(ctx, slot).await;
            body["coalesced"] = Value::Bool(forced.coalesced);
            body["access_key_id"] = Value::String(forced.served.access_key_id.clone());
            http::json_response(StatusCode::OK, Bytes::from(body.to_string()))
        }
        Err(e) => {
            let kept = match ctx.cache.peek(&slot.key).await {
                Some(served) => format!(
                    "; the current credentials ({}, expiring {}) keep being served",
                    served.access_key_id,
                    rfc3339(served.expiration)
                ),
                None => "; no credentials are held for this role".to_string(),
            };
            tracing::warn!(role = name, error = %e.message, "forced refresh failed{kept}");
            http::error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "RefreshFailed",
                &format!(
                    "role {name:?} was not refreshed: {e}{kept}{}",
                    if backing_off {
                        " (backing off after the last failure: this answer cost no STS call)"
                    } else {
                        ""
                    }
                ),
            )
        }
    }
}
