//! The admin endpoint: health, readiness, metrics, role status, forced refresh.
//!
//! | route | answer |
//! |---|---|
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 when every prefetched role holds credentials with at least `min_remaining` left, else 503 naming the roles |
//! | `GET /metrics` | Prometheus text |
//! | `GET /v1/roles` | JSON array: `name`, `arn`, `expiration`, `last_refresh`, `consecutive_failures`, `last_error`, … — never secrets |
//! | `POST /v1/roles/{name}/refresh` | drop the cached credentials and re-assume now (how to act on a session revocation); loopback peers only (403 otherwise) |
//!
//! Readiness is computed per request, not latched: a role that falls below `min_remaining`
//! while STS fails makes the broker unready again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::cache::{CacheError, CredentialCache, RoleSlot, rfc3339};
use crate::metrics::Metrics;
use crate::server::ecs::unavailable;
use crate::server::http::{self, Body};
use crate::state::Snapshot;

const ENDPOINT: &str = "admin";

/// What the admin handler reads.
#[derive(Debug, Clone)]
pub struct AdminContext {
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
    let started = Instant::now();
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
    let path = req.uri().path();
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
    let now = SystemTime::now();
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
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        out.push(role_json(ctx, &snap.roles[name]).await);
    }
    http::json_response(StatusCode::OK, Bytes::from(Value::Array(out).to_string()))
}

async fn refresh(
    ctx: &AdminContext,
    snap: &Snapshot,
    name: &str,
    peer: SocketAddr,
) -> Response<Body> {
    if !peer.ip().to_canonical().is_loopback() {
        return http::error_response(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "forced refresh is allowed from loopback only",
        );
    }
    let Some(slot) = snap.roles.get(name) else {
        return http::error_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("no role named {name:?}"),
        );
    };
    tracing::info!(role = name, %peer, "forced refresh requested");
    match ctx.cache.force_refresh(slot).await {
        Ok(_) => http::json_response(
            StatusCode::OK,
            Bytes::from(role_json(ctx, slot).await.to_string()),
        ),
        Err(e) => unavailable(name, &CacheError::Fetch(e)),
    }
}
