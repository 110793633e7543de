//! The ECS container-credentials endpoint (`AWS_CONTAINER_CREDENTIALS_FULL_URI`).
//!
//! `GET /v1/credentials/{role}` with `Authorization: <token>` (the raw token, no `Bearer`).
//!
//! | status | when | `Code` |
//! |---|---|---|
//! | 200 | credentials: `AccessKeyId`, `SecretAccessKey`, `Token`, `Expiration`, `RoleArn`, `AccountId` | — |
//! | 401 | no `Authorization`, or a token the broker does not know | `Unauthorized` |
//! | 403 | a known token not allowed this role; a `Host` that fails the rebinding check | `AccessDenied`, `InvalidHost` |
//! | 404 | unknown role or path | `NotFound` |
//! | 405 | a method other than `GET` | `MethodNotAllowed` |
//! | 503 | nothing servable: STS failing and cached credentials below `min_remaining` | `CredentialsUnavailable` |
//!
//! The token is checked before the role is looked up, so an unauthenticated caller learns
//! nothing about which roles exist. Errors are `{"Code","Message"}` JSON. A request for a
//! role with nothing cached waits for the one in-flight fetch, bounded by `[sts].timeout`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use hyper::{Method, Request, Response, StatusCode};

use crate::cache::{CacheError, CredentialCache};
use crate::metrics::Metrics;
use crate::server::http::{self, Body};
use crate::state::{Access, Snapshot};

/// Path prefix of the credentials route.
pub const PREFIX: &str = "/v1/credentials/";
const ENDPOINT: &str = "ecs";

/// What the ECS handler reads.
#[derive(Debug, Clone)]
pub struct EcsContext {
    pub state: Arc<ArcSwap<Snapshot>>,
    pub cache: Arc<CredentialCache>,
    pub metrics: Arc<Metrics>,
}

/// Answers one request.
pub async fn handle(
    ctx: Arc<EcsContext>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let started = Instant::now();
    let snap = ctx.state.load_full();
    let (resp, role) = answer(&ctx, &snap, &req).await;
    let status = resp.status().as_u16();
    ctx.metrics
        .observe_request(ENDPOINT, role, status, started.elapsed());
    if status != 200 {
        tracing::debug!(%peer, role, status, path = req.uri().path(), "ecs request refused");
    }
    resp
}

/// The response, and the role label it is counted under (`""` unless a configured role).
async fn answer<'a>(
    ctx: &EcsContext,
    snap: &'a Snapshot,
    req: &Request<Incoming>,
) -> (Response<Body>, &'a str) {
    if !http::host_allowed(req, &snap.config.ecs.allowed_hosts) {
        return (http::forbidden_host(), "");
    }
    let Some(name) = req
        .uri()
        .path()
        .strip_prefix(PREFIX)
        .filter(|n| !n.is_empty() && !n.contains('/'))
    else {
        return (http::not_found(), "");
    };
    if req.method() != Method::GET {
        return (http::method_not_allowed("GET"), "");
    }
    let Some(token) = req.headers().get(AUTHORIZATION) else {
        return (
            http::error_response(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "missing Authorization header (set AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE)",
            ),
            "",
        );
    };
    let access = snap.tokens.check(token.as_bytes(), name);
    if access == Access::Unknown {
        return (
            http::error_response(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "the authorization token is not valid",
            ),
            "",
        );
    }
    let Some((role, slot)) = snap.roles.get_key_value(name) else {
        return (
            http::error_response(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("no role named {name:?}"),
            ),
            "",
        );
    };
    if access == Access::WrongRole {
        return (
            http::error_response(
                StatusCode::FORBIDDEN,
                "AccessDenied",
                &format!("the authorization token is not allowed role {name:?}"),
            ),
            role,
        );
    }
    let wait = snap.config.sts.timeout + Duration::from_secs(1);
    match ctx.cache.get(slot, wait).await {
        Ok(served) => (
            http::json_response(StatusCode::OK, served.ecs_body.clone()),
            role,
        ),
        Err(e) => (unavailable(name, &e), role),
    }
}

/// 503 saying why, and whether retrying soon can help.
pub fn unavailable(role: &str, e: &CacheError) -> Response<Body> {
    let message = match e {
        CacheError::Fetch(f) => format!(
            "credentials for role {role:?} are unavailable: {f} ({})",
            if f.class.retryable() {
                "a retry may succeed"
            } else {
                "retrying will not help until the IAM or broker configuration changes"
            }
        ),
        CacheError::TimedOut => format!(
            "credentials for role {role:?} are unavailable: STS did not answer in time (a retry may succeed)"
        ),
    };
    http::error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "CredentialsUnavailable",
        &message,
    )
}
