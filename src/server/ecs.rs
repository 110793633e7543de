//! The ECS container-credentials endpoint (`AWS_CONTAINER_CREDENTIALS_FULL_URI`).
//!
//! `GET /v1/credentials/{role}` with `Authorization: <token>` (the raw token, no `Bearer`), or
//! with no `Authorization` at all from a same-host process whose socket belongs to one of the
//! role's `local_users` (DESIGN §10).
//!
//! `GET /v1/credentials` without a role (the EKS Pod Identity shape) answers with the one role
//! the caller may use. With `[kubernetes]`, the token may be a projected service-account token
//! (a JWT) that `identity` verifies (DESIGN §7).
//!
//! | status | when | `Code` |
//! |---|---|---|
//! | 200 | credentials: `AccessKeyId`, `SecretAccessKey`, `Token`, `Expiration`, `RoleArn`, `AccountId` | — |
//! | 401 | no `Authorization` (and no `local_users` match), or a token the broker does not know | `Unauthorized` |
//! | 401 | a service-account token refused; the message names the reason class, never the token | `InvalidToken` |
//! | 403 | a known token, a local user or a service account not allowed this role (or, role-less, not exactly one role); a `Host` that fails the rebinding check | `AccessDenied`, `InvalidHost` |
//! | 404 | unknown role or path | `NotFound` |
//! | 405 | a method other than `GET` | `MethodNotAllowed` |
//! | 400 | a request body | `BodyNotAllowed` |
//! | 503 | nothing servable: STS failing and cached credentials below `min_remaining` | `CredentialsUnavailable` |
//!
//! `GET /v2/credentials/{id}` (no header) serves the role whose secret path id it is: the shape
//! of `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`, for SDKs that know nothing else. Unknown ids
//! are 404; the path is never logged.
//!
//! The token is checked before the role is looked up, so an unauthenticated caller learns
//! nothing about which roles exist. Errors are `{"Code","Message"}` JSON. A request for a
//! role with nothing cached waits for the one in-flight fetch, bounded by `[sts].timeout`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use hyper::{Method, Request, Response, StatusCode};

use crate::audit::{AuditLog, AuditRecord};
use crate::cache::session::{CallerSessions, SessionCaller};
use crate::cache::{CacheError, CredentialCache, RenderedCredentials, RoleSlot};
use crate::clock;
use crate::config::kubernetes::WorkloadFacts;
use crate::config::relative_uri;
use crate::identity::socket_owner::Local;
use crate::identity::{self, Workload};
use crate::identity::{SocketOwner, Unattributed};
use crate::metrics::Metrics;
use crate::server::http::{self, Body};
use crate::state::{Access, Snapshot, TokenIndex};

/// Path prefix of the credentials route.
pub const PREFIX: &str = "/v1/credentials/";
/// The role-less route (EKS Pod Identity's URL path).
pub const ROLELESS: &str = "/v1/credentials";
const ENDPOINT: &str = "ecs";

/// What the ECS handler reads.
#[derive(Debug, Clone)]
pub struct EcsContext {
    pub state: Arc<ArcSwap<Snapshot>>,
    pub cache: Arc<CredentialCache>,
    pub metrics: Arc<Metrics>,
    pub audit: Option<AuditLog>,
    /// Per-caller STS sessions of roles with a per-caller `session_scope`.
    pub sessions: Arc<CallerSessions>,
}

/// How a request ended: the response and what the metrics and the audit trail record.
struct Outcome {
    resp: Response<Body>,
    /// The configured role the request named (only once the token is known).
    slot: Option<Arc<RoleSlot>>,
    served: Option<Arc<RenderedCredentials>>,
    /// Set once the request reached the credentials route with a token.
    fingerprint: Option<[u8; 8]>,
    /// Whether this was a credentials request at all (audited) or a stray path.
    credentials_route: bool,
    /// The client socket's owner, when known; the user name when it is a local user.
    uid: Option<u32>,
    user: Option<Arc<str>>,
    unattributed: Option<Unattributed>,
    /// The verified Kubernetes caller, if the token was a service-account token.
    workload: Option<Arc<Workload>>,
}

impl Outcome {
    fn refused(resp: Response<Body>) -> Outcome {
        Outcome {
            resp,
            slot: None,
            served: None,
            fingerprint: None,
            credentials_route: false,
            uid: None,
            user: None,
            unattributed: None,
            workload: None,
        }
    }
}

/// Answers one request.
pub async fn handle(
    ctx: Arc<EcsContext>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let started = clock::instant();
    let snap = ctx.state.load_full();
    let owner = req.extensions().get::<Arc<SocketOwner>>().cloned();
    let out = answer(&ctx, &snap, &req, owner.as_deref()).await;
    let status = out.resp.status().as_u16();
    let role = out.slot.as_ref().map_or("", |s| s.config.name.as_str());
    ctx.metrics
        .observe_request(ENDPOINT, role, status, started.elapsed());
    if status != 200 {
        match &out.workload {
            Some(w) => tracing::debug!(
                %peer, role, status, namespace = %w.namespace,
                service_account = %w.service_account, pod = %w.pod_name,
                "ecs request refused"
            ),
            None => {
                // A relative-URI path is a secret: never logged.
                let path = req.uri().path();
                let path = if path.starts_with(relative_uri::PREFIX) {
                    "/v2/credentials/(redacted)"
                } else {
                    path
                };
                tracing::debug!(
                    %peer,
                    role,
                    status,
                    path,
                    uid = out.uid,
                    user = out.user.as_deref(),
                    unattributed = out.unattributed.map(Unattributed::as_str),
                    "ecs request refused"
                );
            }
        }
    }
    if let Some(audit) = &ctx.audit
        && out.credentials_route
    {
        audit.record(AuditRecord {
            time: clock::now(),
            endpoint: ENDPOINT,
            peer,
            token_fingerprint: out.fingerprint,
            uid: out.uid,
            user: out.user,
            slot: out.slot,
            served: out.served,
            status,
            workload: out.workload,
        });
    }
    out.resp
}

async fn answer(
    ctx: &EcsContext,
    snap: &Snapshot,
    req: &Request<Incoming>,
    owner: Option<&SocketOwner>,
) -> Outcome {
    if !http::host_allowed(req, &snap.config.ecs.allowed_hosts) {
        return Outcome::refused(http::forbidden_host());
    }
    if let Some(id) = req.uri().path().strip_prefix(relative_uri::PREFIX) {
        return relative(ctx, snap, req, id).await;
    }
    let path = req.uri().path();
    let name = if path == ROLELESS {
        None
    } else {
        let Some(name) = path
            .strip_prefix(PREFIX)
            .filter(|n| !n.is_empty() && !n.contains('/'))
        else {
            return Outcome::refused(http::not_found());
        };
        Some(name)
    };
    if req.method() != Method::GET {
        return Outcome::refused(http::method_not_allowed("GET"));
    }
    if http::has_body(req) {
        return Outcome::refused(http::body_not_allowed());
    }
    // Every path below sets the response; start from an empty one (building a 404 here
    // was a fifth of the hot path's instructions).
    let mut out = Outcome::refused(Response::default());
    out.credentials_route = true;
    let Some(token) = req.headers().get(AUTHORIZATION) else {
        return match local_caller(snap, name, owner, &mut out) {
            Some(slot) => serve(ctx, snap, &slot.config.name, slot, out).await,
            None => out,
        };
    };
    // A token decides; the owner is recorded when the kernel was already asked.
    out.uid = owner.and_then(SocketOwner::known_uid);
    let digest = TokenIndex::digest(token.as_bytes());
    out.fingerprint = Some(digest[..8].try_into().expect("8 of 32 bytes"));
    // A JWT unless it is one of the static tokens (which may happen to have the same shape).
    if let Some(k8s) = &snap.kubernetes
        && identity::looks_like_jwt(token.as_bytes())
        && snap.tokens.roles_of(&digest).is_empty()
    {
        match k8s.verifier.verify(token.as_bytes(), &digest).await {
            Ok(w) => return answer_workload(ctx, snap, name, w, out).await,
            Err(reason) => {
                out.resp = http::error_response(
                    StatusCode::UNAUTHORIZED,
                    "InvalidToken",
                    &format!(
                        "the service-account token was refused ({}): {}",
                        reason.as_str(),
                        reason.message()
                    ),
                );
                return out;
            }
        }
    }
    // Role-less with a static token: the one role it may fetch.
    let name: &str = match name {
        Some(n) => n,
        None => match snap.tokens.roles_of(&digest) {
            [] => "",
            [one] => one,
            several => {
                out.resp = http::error_response(
                    StatusCode::FORBIDDEN,
                    "AccessDenied",
                    &format!(
                        "the authorization token may fetch {} roles; name one: /v1/credentials/{{role}}",
                        several.len()
                    ),
                );
                return out;
            }
        },
    };
    let access = snap.tokens.check_digest(&digest, name);
    if access == Access::Unknown {
        out.resp = http::error_response(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "the authorization token is not valid",
        );
        return out;
    }
    let Some(slot) = snap.roles.get(name) else {
        out.resp = http::error_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("no role named {name:?}"),
        );
        return out;
    };
    out.slot = Some(Arc::clone(slot));
    if access == Access::WrongRole {
        out.resp = http::error_response(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            &format!("the authorization token is not allowed role {name:?}"),
        );
        return out;
    }
    serve(ctx, snap, name, slot, out).await
}

/// A request without `Authorization`: the role's slot when the socket's owner is one of its
/// `local_users`, else `None` with the refusal in `out`. Like a token, a local user is told
/// which roles exist (404) and which it may not fetch (403); anyone else learns nothing (401).
fn local_caller<'a>(
    snap: &'a Snapshot,
    name: Option<&str>,
    owner: Option<&SocketOwner>,
    out: &mut Outcome,
) -> Option<&'a Arc<RoleSlot>> {
    let local = snap.local.caller(owner);
    out.uid = local.uid();
    let caller = match local {
        Local::Caller(c) => c,
        Local::Unlisted(_) | Local::Unattributed(_) => {
            if let Local::Unattributed(why) = local {
                out.unattributed = Some(why);
            }
            out.resp = http::error_response(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "missing Authorization header (set AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE)",
            );
            return None;
        }
    };
    out.user = caller.user.clone();
    // Role-less (`/v1/credentials`): the local user's own role.
    let name: &str = name.unwrap_or(&caller.role);
    let Some(slot) = snap.roles.get(name) else {
        out.resp = http::error_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("no role named {name:?}"),
        );
        return None;
    };
    out.slot = Some(Arc::clone(slot));
    if *caller.role != *name {
        let who = caller
            .user
            .as_deref()
            .map_or_else(|| format!("UID {}", caller.uid), |u| format!("user {u:?}"));
        out.resp = http::error_response(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            &format!("local {who} is not allowed role {name:?}"),
        );
        return None;
    }
    Some(slot)
}

/// Reads the cache for an allowed request.
async fn serve(
    ctx: &EcsContext,
    snap: &Snapshot,
    name: &str,
    slot: &Arc<RoleSlot>,
    mut out: Outcome,
) -> Outcome {
    let wait = snap.config.sts.timeout + Duration::from_secs(1);
    match ctx.cache.get(slot, wait).await {
        Ok(served) => {
            out.resp = http::json_response(StatusCode::OK, served.ecs_body.clone());
            out.served = Some(served);
        }
        Err(e) => out.resp = unavailable(name, &e),
    }
    out
}

/// `GET /v2/credentials/{id}`: the shape SDKs that know only
/// `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` ask for, with no `Authorization` header. The id is
/// the secret (see `config::relative_uri`); an unknown one is 404 like any other path, so
/// probing learns nothing. Audited with the id's fingerprint in place of a token's.
async fn relative(ctx: &EcsContext, snap: &Snapshot, req: &Request<Incoming>, id: &str) -> Outcome {
    if req.method() != Method::GET {
        return Outcome::refused(http::method_not_allowed("GET"));
    }
    if http::has_body(req) {
        return Outcome::refused(http::body_not_allowed());
    }
    let digest = TokenIndex::digest(id.as_bytes());
    let Some(slot) = snap
        .tokens
        .role_for_path_id(&digest)
        .and_then(|name| snap.roles.get(name))
    else {
        return Outcome::refused(http::not_found());
    };
    let mut out = Outcome::refused(Response::default());
    out.credentials_route = true;
    out.fingerprint = Some(digest[..8].try_into().expect("8 of 32 bytes"));
    out.slot = Some(Arc::clone(slot));
    let wait = snap.config.sts.timeout + Duration::from_secs(1);
    match ctx.cache.get(slot, wait).await {
        Ok(served) => {
            out.resp = http::json_response(StatusCode::OK, served.ecs_body.clone());
            out.served = Some(served);
        }
        Err(e) => out.resp = unavailable(&slot.config.name, &e),
    }
    out
}

/// The rest of a request whose token is a verified service-account token: pick the role
/// (named, or the one the service account maps to), check it admits the caller, then serve
/// the caller's session.
async fn answer_workload(
    ctx: &EcsContext,
    snap: &Snapshot,
    name: Option<&str>,
    w: Arc<Workload>,
    mut out: Outcome,
) -> Outcome {
    let sa = w.service_account_ref();
    out.workload = Some(Arc::clone(&w));
    let slot = match name {
        Some(name) => {
            let Some(slot) = snap.roles.get(name) else {
                out.resp = http::error_response(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("no role named {name:?}"),
                );
                return out;
            };
            if !identity::role_admits(&slot.config, &w) {
                out.slot = Some(Arc::clone(slot));
                out.resp = http::error_response(
                    StatusCode::FORBIDDEN,
                    "AccessDenied",
                    &format!("service account {sa} is not allowed role {name:?}"),
                );
                return out;
            }
            slot
        }
        None => {
            let mut allowed = snap
                .config
                .roles
                .iter()
                .filter(|r| identity::role_admits(r, &w));
            match (allowed.next(), allowed.next()) {
                (Some(r), None) => match snap.roles.get(&r.name) {
                    Some(slot) => slot,
                    None => {
                        out.resp = http::not_found();
                        return out;
                    }
                },
                (None, _) => {
                    out.resp = http::error_response(
                        StatusCode::FORBIDDEN,
                        "AccessDenied",
                        &format!("service account {sa} is not allowed any role"),
                    );
                    return out;
                }
                (Some(a), Some(b)) => {
                    out.resp = http::error_response(
                        StatusCode::FORBIDDEN,
                        "AccessDenied",
                        &format!(
                            "service account {sa} may use several roles ({}, {}, ...); name one: /v1/credentials/{{role}}",
                            a.name, b.name
                        ),
                    );
                    return out;
                }
            }
        }
    };
    let caller = SessionCaller {
        facts: WorkloadFacts {
            namespace: &w.namespace,
            service_account: &w.service_account,
            pod_name: &w.pod_name,
            pod_uid: &w.pod_uid,
        },
        cluster: snap
            .kubernetes
            .as_ref()
            .and_then(|k| k.verifier.config().cluster_name.as_deref()),
        service_account_key: &w.service_account_key,
        pod_key: &w.pod_key,
    };
    let session = ctx.sessions.slot_for(slot, &caller, &ctx.metrics);
    out.slot = Some(Arc::clone(&session));
    let wait = snap.config.sts.timeout + Duration::from_secs(1);
    match ctx.cache.get(&session, wait).await {
        Ok(served) => {
            out.resp = http::json_response(StatusCode::OK, served.ecs_body.clone());
            out.served = Some(served);
        }
        Err(e) => out.resp = unavailable(&slot.config.name, &e),
    }
    out
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
