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

use hyper::header::AUTHORIZATION;
use hyper::{Method, StatusCode};
use std::sync::Arc;

use crate::cache::session::SessionCaller;
use crate::cache::{CacheError, RenderedCredentials, RoleSlot};
use crate::config::kubernetes::WorkloadFacts;
use crate::config::relative_uri;
use crate::identity::socket_owner::Local;
use crate::identity::{self, LocalCaller, Reason, SocketOwner, Workload};
use crate::server::Endpoint;
use crate::server::handler::{Handler, ListenerContext, Outcome, RequestContext};
use crate::server::http;
use crate::server::response::{JsonError, Refused, json_response};
use crate::state::{Access, Snapshot, TokenIndex};

/// Path prefix of the credentials route.
pub const PREFIX: &str = "/v1/credentials/";
/// The role-less route (EKS Pod Identity's URL path).
pub const ROLELESS: &str = "/v1/credentials";

/// The ECS listener's handler.
#[derive(Debug)]
pub struct Ecs {
    context: ListenerContext,
}

impl Ecs {
    /// A handler reading `context`.
    pub fn new(context: ListenerContext) -> Ecs {
        Ecs { context }
    }
}

impl Handler for Ecs {
    const ENDPOINT: Endpoint = Endpoint::Ecs;

    fn context(&self) -> &ListenerContext {
        &self.context
    }

    async fn answer(&self, request: &RequestContext<'_>) -> Outcome {
        let mut out = Outcome::default();
        out.response = match self.credentials(request, &mut out).await {
            Ok(credentials) => {
                let resp = json_response(StatusCode::OK, credentials.ecs_body.clone());
                out.credentials = Some(credentials);
                resp
            }
            Err(e) => e.response(),
        };
        out
    }
}

/// Why an ECS request got no credentials; `Display` is the `Message`.
#[derive(Debug, thiserror::Error)]
enum EcsError<'a> {
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("missing Authorization header (set AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE)")]
    MissingAuthorization,
    #[error("the authorization token is not valid")]
    UnknownToken,
    #[error("the service-account token was refused ({}): {}", .0.as_str(), .0.message())]
    TokenRefused(Reason),
    #[error("no role named {0:?}")]
    UnknownRole(&'a str),
    #[error("the authorization token may fetch {0} roles; name one: /v1/credentials/{{role}}")]
    TokenHasSeveralRoles(usize),
    #[error("the authorization token is not allowed role {0:?}")]
    TokenNotAllowed(&'a str),
    #[error("local {} is not allowed role {role:?}", describe_local(caller))]
    LocalUserNotAllowed {
        caller: &'a LocalCaller,
        role: &'a str,
    },
    #[error("service account {account} is not allowed role {role:?}")]
    WorkloadNotAllowed { account: Arc<str>, role: &'a str },
    #[error("service account {0} is not allowed any role")]
    WorkloadHasNoRole(Arc<str>),
    #[error(
        "service account {account} may use several roles ({first}, {second}, ...); name one: /v1/credentials/{{role}}"
    )]
    WorkloadHasSeveralRoles {
        account: Arc<str>,
        first: &'a str,
        second: &'a str,
    },
    #[error(
        "credentials for role {role:?} are unavailable: {}",
        unavailable_reason(why)
    )]
    Unavailable { role: &'a str, why: CacheError },
}

impl JsonError for EcsError<'_> {
    fn status(&self) -> StatusCode {
        match self {
            EcsError::Refused(r) => r.status(),
            EcsError::MissingAuthorization | EcsError::UnknownToken | EcsError::TokenRefused(_) => {
                StatusCode::UNAUTHORIZED
            }
            EcsError::UnknownRole(_) => StatusCode::NOT_FOUND,
            EcsError::TokenHasSeveralRoles(_)
            | EcsError::TokenNotAllowed(_)
            | EcsError::LocalUserNotAllowed { .. }
            | EcsError::WorkloadNotAllowed { .. }
            | EcsError::WorkloadHasNoRole(_)
            | EcsError::WorkloadHasSeveralRoles { .. } => StatusCode::FORBIDDEN,
            EcsError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            EcsError::Refused(r) => r.code(),
            EcsError::MissingAuthorization | EcsError::UnknownToken => "Unauthorized",
            EcsError::TokenRefused(_) => "InvalidToken",
            EcsError::UnknownRole(_) => "NotFound",
            EcsError::TokenHasSeveralRoles(_)
            | EcsError::TokenNotAllowed(_)
            | EcsError::LocalUserNotAllowed { .. }
            | EcsError::WorkloadNotAllowed { .. }
            | EcsError::WorkloadHasNoRole(_)
            | EcsError::WorkloadHasSeveralRoles { .. } => "AccessDenied",
            EcsError::Unavailable { .. } => "CredentialsUnavailable",
        }
    }

    fn header(&self) -> Option<(hyper::header::HeaderName, &'static str)> {
        match self {
            EcsError::Refused(r) => r.header(),
            _ => None,
        }
    }
}

/// `user "name"` or `UID n`, as the 403 names a local caller.
fn describe_local(caller: &LocalCaller) -> String {
    caller
        .user
        .as_deref()
        .map_or_else(|| format!("UID {}", caller.uid), |u| format!("user {u:?}"))
}

/// Why the cache could not serve, and whether retrying soon can help.
fn unavailable_reason(why: &CacheError) -> String {
    match why {
        CacheError::Fetch(f) => format!(
            "{f} ({})",
            if f.class.retryable() {
                "a retry may succeed"
            } else {
                "retrying will not help until the IAM or broker configuration changes"
            }
        ),
        CacheError::TimedOut => "STS did not answer in time (a retry may succeed)".to_string(),
    }
}

/// The first 8 bytes of a token's (or path id's) digest: what logs and the audit trail show.
fn fingerprint(digest: &[u8; 32]) -> [u8; 8] {
    digest[..8].try_into().expect("8 of 32 bytes")
}

impl Ecs {
    /// The credentials a request may have, recording in `out` what it showed on the way.
    async fn credentials<'a>(
        &self,
        rc: &RequestContext<'a>,
        out: &mut Outcome,
    ) -> Result<Arc<RenderedCredentials>, EcsError<'a>> {
        let (req, snapshot) = (rc.request, rc.snapshot);
        if !http::host_allowed(req, &snapshot.config.ecs.allowed_hosts) {
            return Err(Refused::InvalidHost.into());
        }
        let path = req.uri().path();
        if let Some(id) = path.strip_prefix(relative_uri::PREFIX) {
            return self.relative(rc, id, out).await;
        }
        let name = if path == ROLELESS {
            None
        } else {
            let name = path
                .strip_prefix(PREFIX)
                .filter(|n| !n.is_empty() && !n.contains('/'))
                .ok_or(Refused::NotFound)?;
            Some(name)
        };
        if req.method() != Method::GET {
            return Err(Refused::MethodNotAllowed("GET").into());
        }
        if http::has_body(req) {
            return Err(Refused::BodyNotAllowed.into());
        }
        out.audited = true;
        let Some(token) = req.headers().get(AUTHORIZATION) else {
            let slot = local_caller(snapshot, name, rc.owner, out)?;
            return self.serve(rc, slot, slot).await;
        };
        // A token decides; the owner is recorded when the kernel was already asked.
        out.caller.uid = rc.owner.and_then(SocketOwner::known_uid);
        let digest = TokenIndex::digest(token.as_bytes());
        out.caller.token_fingerprint = Some(fingerprint(&digest));
        // A JWT unless it is one of the static tokens (which may happen to have the same shape).
        if let Some(k8s) = &snapshot.kubernetes
            && identity::looks_like_jwt(token.as_bytes())
            && snapshot.tokens.roles_of(&digest).is_empty()
        {
            let workload = k8s
                .verifier
                .verify(token.as_bytes(), &digest)
                .await
                .map_err(EcsError::TokenRefused)?;
            out.caller.workload = Some(Arc::clone(&workload));
            return self.workload(rc, name, &workload, out).await;
        }
        // Role-less with a static token: the one role it may fetch.
        let name: &str = match name {
            Some(n) => n,
            None => match snapshot.tokens.roles_of(&digest) {
                [] => "",
                [one] => one,
                several => return Err(EcsError::TokenHasSeveralRoles(several.len())),
            },
        };
        let access = snapshot.tokens.check_digest(&digest, name);
        if access == Access::Unknown {
            return Err(EcsError::UnknownToken);
        }
        let slot = snapshot
            .roles
            .get(name)
            .ok_or(EcsError::UnknownRole(name))?;
        out.role = Some(Arc::clone(slot));
        if access == Access::WrongRole {
            return Err(EcsError::TokenNotAllowed(name));
        }
        self.serve(rc, slot, slot).await
    }

    /// Reads the cache for an allowed request: `session` (the role's slot, or a caller's
    /// session of it), reported as `role` when it cannot be served.
    async fn serve<'a>(
        &self,
        rc: &RequestContext<'_>,
        role: &'a RoleSlot,
        session: &Arc<RoleSlot>,
    ) -> Result<Arc<RenderedCredentials>, EcsError<'a>> {
        self.context
            .cache
            .get(session, rc.cache_wait())
            .await
            .map_err(|why| EcsError::Unavailable {
                role: &role.config.name,
                why,
            })
    }

    /// `GET /v2/credentials/{id}`: the shape SDKs that know only
    /// `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` ask for, with no `Authorization` header. The
    /// id is the secret (see `config::relative_uri`); an unknown one is 404 like any other
    /// path, so probing learns nothing. Audited with the id's fingerprint in place of a
    /// token's.
    async fn relative<'a>(
        &self,
        rc: &RequestContext<'a>,
        id: &str,
        out: &mut Outcome,
    ) -> Result<Arc<RenderedCredentials>, EcsError<'a>> {
        let (req, snapshot) = (rc.request, rc.snapshot);
        if req.method() != Method::GET {
            return Err(Refused::MethodNotAllowed("GET").into());
        }
        if http::has_body(req) {
            return Err(Refused::BodyNotAllowed.into());
        }
        let digest = TokenIndex::digest(id.as_bytes());
        let slot = snapshot
            .tokens
            .role_for_path_id(&digest)
            .and_then(|name| snapshot.roles.get(name))
            .ok_or(Refused::NotFound)?;
        out.audited = true;
        out.caller.token_fingerprint = Some(fingerprint(&digest));
        out.role = Some(Arc::clone(slot));
        self.serve(rc, slot, slot).await
    }

    /// The rest of a request whose token is a verified service-account token: pick the role
    /// (named, or the one the service account maps to), check it admits the caller, then
    /// serve the caller's session.
    async fn workload<'a>(
        &self,
        rc: &RequestContext<'a>,
        name: Option<&'a str>,
        workload: &Workload,
        out: &mut Outcome,
    ) -> Result<Arc<RenderedCredentials>, EcsError<'a>> {
        let snapshot = rc.snapshot;
        let account = || Arc::clone(&workload.service_account_key);
        let slot = match name {
            Some(name) => {
                let slot = snapshot
                    .roles
                    .get(name)
                    .ok_or(EcsError::UnknownRole(name))?;
                if !identity::role_admits(&slot.config, workload) {
                    out.role = Some(Arc::clone(slot));
                    return Err(EcsError::WorkloadNotAllowed {
                        account: account(),
                        role: name,
                    });
                }
                slot
            }
            None => {
                let mut allowed = snapshot
                    .config
                    .roles
                    .iter()
                    .filter(|r| identity::role_admits(r, workload));
                match (allowed.next(), allowed.next()) {
                    (Some(r), None) => snapshot.roles.get(&r.name).ok_or(Refused::NotFound)?,
                    (None, _) => return Err(EcsError::WorkloadHasNoRole(account())),
                    (Some(a), Some(b)) => {
                        return Err(EcsError::WorkloadHasSeveralRoles {
                            account: account(),
                            first: &a.name,
                            second: &b.name,
                        });
                    }
                }
            }
        };
        let caller = SessionCaller {
            facts: WorkloadFacts {
                namespace: &workload.namespace,
                service_account: &workload.service_account,
                pod_name: &workload.pod_name,
                pod_uid: &workload.pod_uid,
            },
            cluster: snapshot
                .kubernetes
                .as_ref()
                .and_then(|k| k.verifier.config().cluster_name.as_deref()),
            service_account_key: &workload.service_account_key,
            pod_key: &workload.pod_key,
        };
        let session = self
            .context
            .sessions
            .slot_for(slot, &caller, &self.context.metrics);
        out.role = Some(Arc::clone(&session));
        self.serve(rc, slot, &session).await
    }
}

/// A request without `Authorization`: the role's slot when the socket's owner is one of its
/// `local_users`. Like a token, a local user is told which roles exist (404) and which it may
/// not fetch (403); anyone else learns nothing (401).
fn local_caller<'a>(
    snapshot: &'a Snapshot,
    name: Option<&'a str>,
    owner: Option<&SocketOwner>,
    out: &mut Outcome,
) -> Result<&'a Arc<RoleSlot>, EcsError<'a>> {
    let local = snapshot.local.caller(owner);
    out.caller.uid = local.uid();
    let caller = match local {
        Local::Caller(c) => c,
        Local::Unlisted(_) => return Err(EcsError::MissingAuthorization),
        Local::Unattributed(why) => {
            out.caller.unattributed = Some(why);
            return Err(EcsError::MissingAuthorization);
        }
    };
    out.caller.user = caller.user.clone();
    // Role-less (`/v1/credentials`): the local user's own role.
    let name: &str = name.unwrap_or(&caller.role);
    let slot = snapshot
        .roles
        .get(name)
        .ok_or(EcsError::UnknownRole(name))?;
    out.role = Some(Arc::clone(slot));
    if *caller.role != *name {
        return Err(EcsError::LocalUserNotAllowed { caller, role: name });
    }
    Ok(slot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::creds::{ErrorClass, FetchError};

    #[test]
    fn refusal_messages_and_codes_are_the_documented_ones() {
        let caller = LocalCaller {
            uid: 2001,
            user: Some(Arc::from("alice")),
            role: Arc::from("billing"),
        };
        let uid_only = LocalCaller {
            user: None,
            ..caller.clone()
        };
        let account: Arc<str> = Arc::from("team-a/web");
        let cases: Vec<(EcsError<'_>, u16, &str, &str)> = vec![
            (
                EcsError::MissingAuthorization,
                401,
                "Unauthorized",
                "missing Authorization header (set AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE)",
            ),
            (
                EcsError::UnknownToken,
                401,
                "Unauthorized",
                "the authorization token is not valid",
            ),
            (
                EcsError::TokenRefused(Reason::Expired),
                401,
                "InvalidToken",
                "the service-account token was refused (expired): ",
            ),
            (
                EcsError::UnknownRole("x"),
                404,
                "NotFound",
                "no role named \"x\"",
            ),
            (
                EcsError::TokenHasSeveralRoles(3),
                403,
                "AccessDenied",
                "the authorization token may fetch 3 roles; name one: /v1/credentials/{role}",
            ),
            (
                EcsError::TokenNotAllowed("app"),
                403,
                "AccessDenied",
                "the authorization token is not allowed role \"app\"",
            ),
            (
                EcsError::LocalUserNotAllowed {
                    caller: &caller,
                    role: "app",
                },
                403,
                "AccessDenied",
                "local user \"alice\" is not allowed role \"app\"",
            ),
            (
                EcsError::LocalUserNotAllowed {
                    caller: &uid_only,
                    role: "app",
                },
                403,
                "AccessDenied",
                "local UID 2001 is not allowed role \"app\"",
            ),
            (
                EcsError::WorkloadNotAllowed {
                    account: Arc::clone(&account),
                    role: "app",
                },
                403,
                "AccessDenied",
                "service account team-a/web is not allowed role \"app\"",
            ),
            (
                EcsError::WorkloadHasNoRole(Arc::clone(&account)),
                403,
                "AccessDenied",
                "service account team-a/web is not allowed any role",
            ),
            (
                EcsError::WorkloadHasSeveralRoles {
                    account,
                    first: "a",
                    second: "b",
                },
                403,
                "AccessDenied",
                "service account team-a/web may use several roles (a, b, ...); name one: /v1/credentials/{role}",
            ),
            (
                EcsError::Unavailable {
                    role: "app",
                    why: CacheError::TimedOut,
                },
                503,
                "CredentialsUnavailable",
                "credentials for role \"app\" are unavailable: STS did not answer in time (a retry may succeed)",
            ),
            (
                EcsError::Refused(Refused::NotFound),
                404,
                "NotFound",
                "no such path",
            ),
        ];
        for (error, status, code, message) in cases {
            assert_eq!(error.status().as_u16(), status, "{error:?}");
            assert_eq!(error.code(), code, "{error:?}");
            assert!(error.to_string().starts_with(message), "{error}");
        }
        let denied = FetchError::new(
            ErrorClass::AccessDenied,
            Some("AccessDenied".into()),
            "not allowed",
        );
        let message = EcsError::Unavailable {
            role: "app",
            why: CacheError::Fetch(denied),
        }
        .to_string();
        assert!(
            message.starts_with("credentials for role \"app\" are unavailable: ")
                && message.ends_with(
                    " (retrying will not help until the IAM or broker configuration changes)"
                ),
            "{message}"
        );
        assert_eq!(
            EcsError::from(Refused::MethodNotAllowed("GET"))
                .response()
                .headers()[hyper::header::ALLOW],
            "GET"
        );
    }
}
