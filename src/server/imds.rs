//! The IMDSv2-compatible endpoint: what an SDK looking for EC2 instance credentials asks.
//!
//! | request | answer |
//! |---|---|
//! | `PUT /latest/api/token` + `X-aws-ec2-metadata-token-ttl-seconds: 1..21600` | a session token (`text/plain`), TTL capped by `max_token_ttl` and echoed in the same header; missing, non-numeric or out-of-range TTL → 400 |
//! | `GET /latest/meta-data/iam/security-credentials/` | the role's configured name, one line, no newline |
//! | `GET /latest/meta-data/iam/security-credentials/{name}` | `Code`, `LastUpdated`, `Type`, `AccessKeyId`, `SecretAccessKey`, `Token`, `Expiration` |
//! | `GET /latest/meta-data/iam/security-credentials-extended/{name}` | the same plus `AccountId` (Ruby, Java v2, PHP try it first) |
//! | `GET /latest/meta-data/iam/info` | `Code`, `LastUpdated`, `InstanceProfileArn`, `InstanceProfileId` |
//!
//! Paths work with and without a trailing slash. Any request carrying `X-Forwarded-For` or
//! `Forwarded` → 403
//! (a proxy is relaying it: IMDS must not be reachable that way). A `GET` without a valid,
//! unexpired `X-aws-ec2-metadata-token` → 401 unless `allow_v1`; with a valid token every
//! other path is 404 (never 401/403, so SDK probes such as the region fall through fast), as
//! is an unknown role name. Nothing servable (STS failing, credentials below the IMDS
//! `min_remaining`) → 503. Other methods → 405; a request body → 400.
//!
//! Tokens are stateless: `hex(expiry_ms ‖ nonce ‖ HMAC-SHA256(key, expiry_ms ‖ nonce)[..16])`
//! with a key drawn at start-up and 8 random nonce bytes per token (two clients never share
//! one); a token lives exactly the TTL granted, to the millisecond. A flood of `PUT`s costs CPU, never memory; a restart invalidates
//! tokens, and SDKs answer the 401 by fetching a new one.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{KeyInit, Mac};
use hyper::header::HeaderValue;
use hyper::{Method, Response, StatusCode};
use subtle::ConstantTimeEq;

use crate::cache::{CacheError, RenderedCredentials, RoleSlot};
use crate::clock;
use crate::config::ImdsConfig;
use crate::identity::socket_owner::Local;
use crate::server::Endpoint;
use crate::server::handler::{Handler, ListenerContext, Outcome, RequestContext};
use crate::server::http;
use crate::server::response::Body;
use crate::server::response::{JsonError, Refused, text_response, with_content_type};
use crate::wire::rfc3339;

/// The request header carrying the requested token TTL, and the response header granting it.
pub const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
/// The request header carrying the session token.
pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
const TOKEN_PATH: &str = "/latest/api/token";
const CREDS_PREFIX: &str = "/latest/meta-data/iam/security-credentials";
const EXTENDED_PREFIX: &str = "/latest/meta-data/iam/security-credentials-extended";
const INFO_PATH: &str = "/latest/meta-data/iam/info";
/// The TTL range IMDS accepts.
const MAX_TTL_SECONDS: u64 = 21_600;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Issues and verifies stateless session tokens.
pub struct TokenSigner {
    key: [u8; 32],
    /// The HMAC state after absorbing the key: cloned per token instead of re-keying, which
    /// halves the SHA-256 work per IMDS request.
    keyed: HmacSha256,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner { key: ** redacted ** }")
    }
}

impl Drop for TokenSigner {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

impl TokenSigner {
    /// A signer with a fresh random key (tokens do not survive a restart).
    pub fn generate() -> TokenSigner {
        let key: [u8; 32] = rand::random();
        TokenSigner {
            keyed: HmacSha256::new_from_slice(&key).expect("HMAC takes any key length"),
            key,
        }
    }

    fn mac(&self, expiry_ms: u64, nonce: &[u8; 8]) -> [u8; 16] {
        let mut mac = self.keyed.clone();
        mac.update(&expiry_ms.to_be_bytes());
        mac.update(nonce);
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }

    /// A token valid until `expiry_ms` (milliseconds since the epoch: a 1-second token lives
    /// a whole second, not until the next second boundary). Eight random bytes make every
    /// token distinct, even two issued in the same millisecond.
    pub fn issue(&self, expiry_ms: u64) -> String {
        let nonce: [u8; 8] = rand::random();
        let mut raw = [0u8; TOKEN_BYTES];
        raw[..8].copy_from_slice(&expiry_ms.to_be_bytes());
        raw[8..16].copy_from_slice(&nonce);
        raw[16..].copy_from_slice(&self.mac(expiry_ms, &nonce));
        hex::encode(raw)
    }

    /// Whether `token` was issued by this signer and is unexpired at `now_ms`.
    pub fn verify(&self, token: &[u8], now_ms: u64) -> bool {
        let mut raw = [0u8; TOKEN_BYTES];
        if token.len() != 2 * TOKEN_BYTES || hex::decode_to_slice(token, &mut raw).is_err() {
            return false;
        }
        let expiry = u64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
        let nonce: [u8; 8] = raw[8..16].try_into().expect("8 bytes");
        let genuine: bool = self.mac(expiry, &nonce).ct_eq(&raw[16..]).into();
        genuine && now_ms < expiry
    }
}

/// Expiry (8) ‖ nonce (8) ‖ truncated HMAC (16), sent as 64 hex digits.
const TOKEN_BYTES: usize = 32;

/// The IMDS listener's handler.
#[derive(Debug)]
pub struct Imds {
    context: ListenerContext,
    /// Issues and checks the `PUT /latest/api/token` session tokens.
    session_tokens: TokenSigner,
}

impl Imds {
    /// A handler reading `context`, with a fresh session-token key.
    pub fn new(context: ListenerContext) -> Imds {
        Imds {
            context,
            session_tokens: TokenSigner::generate(),
        }
    }
}

/// Why an IMDS request got no answer; `Display` is the `text/plain` body (the listener-wide
/// refusals keep their JSON bodies).
#[derive(Debug, thiserror::Error)]
enum ImdsError {
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("requests relayed by a proxy are refused")]
    Relayed,
    #[error("requests must not carry a body")]
    BodyNotAllowed,
    #[error("missing or invalid X-aws-ec2-metadata-token-ttl-seconds (1..21600)")]
    InvalidTtl,
    #[error("a valid X-aws-ec2-metadata-token is required (PUT /latest/api/token first)")]
    TokenRequired,
    #[error("not found")]
    NotFound,
    #[error("credentials are below the IMDS min_remaining and could not be refreshed yet")]
    BelowMinRemaining,
    #[error("credentials unavailable: {}", unavailable_reason(.0))]
    Unavailable(CacheError),
    #[error("credentials for the IMDS role are being prepared; retry")]
    NotRendered,
}

impl ImdsError {
    fn status(&self) -> StatusCode {
        match self {
            ImdsError::Refused(r) => r.status(),
            ImdsError::Relayed => StatusCode::FORBIDDEN,
            ImdsError::BodyNotAllowed | ImdsError::InvalidTtl => StatusCode::BAD_REQUEST,
            ImdsError::TokenRequired => StatusCode::UNAUTHORIZED,
            ImdsError::NotFound => StatusCode::NOT_FOUND,
            ImdsError::BelowMinRemaining | ImdsError::Unavailable(_) | ImdsError::NotRendered => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    fn response(&self) -> Response<Body> {
        match self {
            ImdsError::Refused(r) => r.response(),
            other => text_response(other.status(), &other.to_string()),
        }
    }
}

fn unavailable_reason(why: &CacheError) -> String {
    match why {
        CacheError::Fetch(f) => f.to_string(),
        CacheError::TimedOut => "STS did not answer in time".to_string(),
    }
}

/// What a successful IMDS request gets, and how it is counted.
enum Answer {
    /// Not counted under a role.
    Anonymous(Response<Body>),
    /// About the caller's role (its name, its instance profile): counted under it.
    AboutRole(Response<Body>, Arc<RoleSlot>),
    /// The role's credentials: counted and audited.
    Credentials(Arc<RenderedCredentials>, bool),
}

fn epoch_ms(t: SystemTime) -> u64 {
    u64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()).unwrap_or(u64::MAX)
}

impl Handler for Imds {
    const ENDPOINT: Endpoint = Endpoint::Imds;

    fn context(&self) -> &ListenerContext {
        &self.context
    }

    async fn answer(&self, request: &RequestContext<'_>) -> Outcome {
        let Some(imds) = &request.snapshot.config.imds else {
            return Outcome::answered(ImdsError::NotFound.response());
        };
        let mut out = Outcome::default();
        out.response = match self.route(request, imds, &mut out).await {
            Ok(Answer::Anonymous(resp)) => resp,
            Ok(Answer::AboutRole(resp, role)) => {
                out.role = Some(role);
                resp
            }
            Ok(Answer::Credentials(credentials, extended)) => {
                let resp = credentials_response(&credentials, extended);
                out.credentials = Some(credentials);
                resp
            }
            Err(e) => e.response(),
        };
        out
    }
}

impl Imds {
    /// The answer to one request; the caller (and, for credentials, the role and the audit
    /// mark) go into `out` on the way.
    async fn route(
        &self,
        rc: &RequestContext<'_>,
        imds: &ImdsConfig,
        out: &mut Outcome,
    ) -> Result<Answer, ImdsError> {
        let (req, snapshot) = (rc.request, rc.snapshot);
        // `Forwarded` (RFC 7239) is the standard spelling of the same relay.
        if req.headers().contains_key("x-forwarded-for") || req.headers().contains_key("forwarded")
        {
            return Err(ImdsError::Relayed);
        }
        if !http::host_allowed(req, &imds.listener.allowed_hosts) {
            return Err(Refused::InvalidHost.into());
        }
        if http::has_body(req) {
            return Err(ImdsError::BodyNotAllowed);
        }
        let path = req.uri().path();
        let path = path.strip_suffix('/').unwrap_or(path);
        if path == TOKEN_PATH {
            if req.method() != Method::PUT {
                return Err(Refused::MethodNotAllowed("PUT").into());
            }
            return self.issue_token(imds, req).map(Answer::Anonymous);
        }
        if req.method() != Method::GET {
            return Err(Refused::MethodNotAllowed("GET").into());
        }
        let now = clock::now();
        let token_ok = req
            .headers()
            .get(TOKEN_HEADER)
            .is_some_and(|t| self.session_tokens.verify(t.as_bytes(), epoch_ms(now)));
        if !token_ok && !imds.allow_v1 {
            return Err(ImdsError::TokenRequired);
        }
        // The caller's role: its socket owner's `local_users` role, else the instance's role.
        let local = snapshot.local.caller(rc.owner);
        out.caller.uid = local.uid();
        let role = match local {
            Local::Caller(c) => {
                out.caller.user = c.user.clone();
                Some(&*c.role)
            }
            Local::Unattributed(why) => {
                out.caller.unattributed = Some(why);
                imds.role.as_deref()
            }
            Local::Unlisted(_) => imds.role.as_deref(),
        };
        // No role for this caller: an instance without a profile.
        let role = role.ok_or(ImdsError::NotFound)?;
        let slot = snapshot.roles.get(role);
        if path == CREDS_PREFIX || path == INFO_PATH {
            let resp = if path == CREDS_PREFIX {
                text_response(StatusCode::OK, role)
            } else {
                info(slot, role, now)
            };
            return Ok(match slot {
                Some(slot) => Answer::AboutRole(resp, Arc::clone(slot)),
                None => Answer::Anonymous(resp),
            });
        }
        let (name, extended) = if let Some(n) = path.strip_prefix(EXTENDED_PREFIX) {
            (n, true)
        } else if let Some(n) = path.strip_prefix(CREDS_PREFIX) {
            (n, false)
        } else {
            return Err(ImdsError::NotFound);
        };
        if name.strip_prefix('/') != Some(role) {
            return Err(ImdsError::NotFound);
        }
        let slot = slot.ok_or(ImdsError::NotFound)?;
        out.role = Some(Arc::clone(slot));
        out.audited = true;
        match self.context.cache.get(slot, rc.cache_wait()).await {
            Ok(s) if s.remaining(now) >= imds.min_remaining => Ok(Answer::Credentials(s, extended)),
            Ok(_) => Err(ImdsError::BelowMinRemaining),
            Err(e) => Err(ImdsError::Unavailable(e)),
        }
    }

    fn issue_token(
        &self,
        imds: &ImdsConfig,
        req: &hyper::Request<hyper::body::Incoming>,
    ) -> Result<Response<Body>, ImdsError> {
        let requested = req
            .headers()
            .get(TTL_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|ttl| (1..=MAX_TTL_SECONDS).contains(ttl))
            .ok_or(ImdsError::InvalidTtl)?;
        let granted = requested.min(imds.max_token_ttl.as_secs().max(1));
        let token = self
            .session_tokens
            .issue(epoch_ms(clock::now()).saturating_add(granted * 1000));
        let mut resp = text_response(StatusCode::OK, &token);
        resp.headers_mut()
            .insert(TTL_HEADER, HeaderValue::from(granted));
        Ok(resp)
    }
}

/// The pre-rendered credentials body: `security-credentials/{name}`, or `-extended/{name}`.
fn credentials_response(served: &RenderedCredentials, extended: bool) -> Response<Body> {
    let Some((plain, with_account)) = &served.imds_bodies else {
        // Rendered before this role became the IMDS role; the next refresh renders them.
        return ImdsError::NotRendered.response();
    };
    let body = if extended {
        with_account.clone()
    } else {
        plain.clone()
    };
    with_content_type(StatusCode::OK, body, "text/plain")
}

/// `iam/info`: the instance profile named after the role, in the role's account.
fn info(slot: Option<&Arc<RoleSlot>>, role: &str, now: SystemTime) -> Response<Body> {
    let Some(slot) = slot else {
        return ImdsError::NotFound.response();
    };
    let spec = &slot.config.spec;
    // Only role kinds have an instance profile to show.
    let (Some(arn), Some(account)) = (&spec.arn, &spec.account_id) else {
        return ImdsError::NotFound.response();
    };
    let role_name = arn.rsplit('/').next().unwrap_or(role);
    let partition = arn.split(':').nth(1).unwrap_or("aws");
    let profile_arn = format!("arn:{partition}:iam::{account}:instance-profile/{role_name}");
    // A stable ID in the shape IAM uses for instance profiles (AIPA + 17 characters).
    let digest = <sha2::Sha256 as sha2::Digest>::digest(profile_arn.as_bytes());
    let id: String = hex::encode_upper(&digest[..9]).chars().take(17).collect();
    let body = serde_json::json!({
        "Code": "Success",
        "LastUpdated": rfc3339(now),
        "InstanceProfileArn": profile_arn,
        "InstanceProfileId": format!("AIPA{id}"),
    })
    .to_string();
    text_response(StatusCode::OK, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_until_expiry_and_resist_forgery() {
        let signer = TokenSigner::generate();
        let token = signer.issue(1_000_000);
        assert_eq!(token.len(), 64);
        assert!(signer.verify(token.as_bytes(), 999_999));
        assert!(
            !signer.verify(token.as_bytes(), 1_000_000),
            "expired at its expiry"
        );
        // Another key's token, a stretched expiry, a changed nonce, garbage, wrong lengths.
        assert!(!TokenSigner::generate().verify(token.as_bytes(), 0));
        let mut stretched = hex::decode(&token).unwrap();
        stretched[..8].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(!signer.verify(hex::encode(stretched).as_bytes(), 0));
        let mut renonced = hex::decode(&token).unwrap();
        renonced[8] ^= 1;
        assert!(!signer.verify(hex::encode(renonced).as_bytes(), 0));
        assert!(!signer.verify(b"not-a-token", 0));
        assert!(!signer.verify(&token.as_bytes()[..63], 0));
        assert!(!signer.verify("z".repeat(64).as_bytes(), 0));
        assert!(!format!("{signer:?}").contains(&hex::encode(signer.key)));
    }

    #[test]
    fn tokens_are_distinct_and_live_the_whole_ttl() {
        let signer = TokenSigner::generate();
        let now = epoch_ms(clock::now());
        // Same expiry, same millisecond: still two different tokens.
        let a = signer.issue(now + 1000);
        let b = signer.issue(now + 1000);
        assert_ne!(a, b);
        // A 1-second token issued at .950 is valid until 1.950, not until 1.000.
        let issued = 1_000_950;
        let t = signer.issue(issued + 1000);
        assert!(signer.verify(t.as_bytes(), issued + 999));
        assert!(!signer.verify(t.as_bytes(), issued + 1000));
    }
}
