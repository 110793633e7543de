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

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use hmac::{KeyInit, Mac};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use subtle::ConstantTimeEq;

use crate::audit::{AuditLog, AuditRecord};
use crate::cache::{CredentialCache, RenderedCredentials, RoleSlot};
use crate::clock;
use crate::config::ImdsConfig;
use crate::identity::socket_owner::Local;
use crate::identity::{SocketOwner, Unattributed};
use crate::metrics::Metrics;
use crate::server::http::{self, Body};
use crate::state::Snapshot;
use crate::wire::rfc3339;

const ENDPOINT: &str = "imds";
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

/// What the IMDS handler reads.
#[derive(Debug)]
pub struct ImdsContext {
    pub state: Arc<ArcSwap<Snapshot>>,
    pub cache: Arc<CredentialCache>,
    pub metrics: Arc<Metrics>,
    pub signer: TokenSigner,
    pub audit: Option<AuditLog>,
}

/// Answers one request.
pub async fn handle(
    ctx: Arc<ImdsContext>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let started = clock::instant();
    let snap = ctx.state.load_full();
    let owner = req.extensions().get::<Arc<SocketOwner>>().cloned();
    let mut who = Who::default();
    let (resp, counted) = match &snap.config.imds {
        Some(imds) => answer(&ctx, &snap, imds, &req, owner.as_deref(), &mut who).await,
        None => (text(StatusCode::NOT_FOUND, "not found"), Counted::Anonymous),
    };
    let status = resp.status().as_u16();
    let role = match &counted {
        Counted::Role | Counted::Credentials { .. } => who.role.as_deref().unwrap_or(""),
        Counted::Anonymous => "",
    };
    ctx.metrics
        .observe_request(ENDPOINT, role, status, started.elapsed());
    if status >= 400 {
        tracing::debug!(
            %peer,
            status,
            path = req.uri().path(),
            uid = who.uid,
            user = who.user.as_deref(),
            unattributed = who.unattributed.map(Unattributed::as_str),
            "imds request refused"
        );
    }
    if let (Some(audit), Counted::Credentials { slot, served }) = (&ctx.audit, counted) {
        audit.record(AuditRecord {
            workload: None,
            time: clock::now(),
            endpoint: ENDPOINT,
            peer,
            token_fingerprint: None,
            uid: who.uid,
            user: who.user,
            slot: Some(slot),
            served,
            status,
        });
    }
    resp
}

/// Who a credentials request came from, for metrics, logs and the audit trail.
#[derive(Default)]
struct Who {
    /// The role the caller gets: its `local_users` role, else the `[imds] role`.
    role: Option<Arc<str>>,
    uid: Option<u32>,
    user: Option<Arc<str>>,
    unattributed: Option<Unattributed>,
}

/// How a response is counted: under the caller's role label or not, and whether it is a
/// credentials response for the audit trail.
enum Counted {
    Anonymous,
    Role,
    Credentials {
        slot: Arc<RoleSlot>,
        served: Option<Arc<RenderedCredentials>>,
    },
}

fn epoch_ms(t: SystemTime) -> u64 {
    u64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()).unwrap_or(u64::MAX)
}

/// The response, and whether it is counted under the caller's role label; fills `who`.
async fn answer(
    ctx: &ImdsContext,
    snap: &Snapshot,
    imds: &ImdsConfig,
    req: &Request<Incoming>,
    owner: Option<&SocketOwner>,
    who: &mut Who,
) -> (Response<Body>, Counted) {
    // `Forwarded` (RFC 7239) is the standard spelling of the same relay.
    if req.headers().contains_key("x-forwarded-for") || req.headers().contains_key("forwarded") {
        return (
            text(
                StatusCode::FORBIDDEN,
                "requests relayed by a proxy are refused",
            ),
            Counted::Anonymous,
        );
    }
    if !http::host_allowed(req, &imds.listener.allowed_hosts) {
        return (http::forbidden_host(), Counted::Anonymous);
    }
    if http::has_body(req) {
        return (
            text(StatusCode::BAD_REQUEST, "requests must not carry a body"),
            Counted::Anonymous,
        );
    }
    let path = req.uri().path();
    let path = path.strip_suffix('/').unwrap_or(path);
    if path == TOKEN_PATH {
        return if req.method() == Method::PUT {
            (issue_token(ctx, imds, req), Counted::Anonymous)
        } else {
            (http::method_not_allowed("PUT"), Counted::Anonymous)
        };
    }
    if req.method() != Method::GET {
        return (http::method_not_allowed("GET"), Counted::Anonymous);
    }
    let now = clock::now();
    let token_ok = req
        .headers()
        .get(TOKEN_HEADER)
        .is_some_and(|t| ctx.signer.verify(t.as_bytes(), epoch_ms(now)));
    if !token_ok && !imds.allow_v1 {
        return (
            text(
                StatusCode::UNAUTHORIZED,
                "a valid X-aws-ec2-metadata-token is required (PUT /latest/api/token first)",
            ),
            Counted::Anonymous,
        );
    }
    // The caller's role: its socket owner's `local_users` role, else the instance's role.
    let local = snap.local.caller(owner);
    who.uid = local.uid();
    if let Local::Caller(c) = local {
        who.user = c.user.clone();
        who.role = Some(Arc::clone(&c.role));
    } else {
        who.role = imds.role.as_deref().map(Arc::from);
    }
    if let Local::Unattributed(why) = local {
        who.unattributed = Some(why);
    }
    let Some(role) = who.role.clone() else {
        // No role for this caller: an instance without a profile.
        return (text(StatusCode::NOT_FOUND, "not found"), Counted::Anonymous);
    };
    let role = &*role;
    if path == CREDS_PREFIX {
        return (text(StatusCode::OK, role), Counted::Role);
    }
    if path == INFO_PATH {
        return (info(snap, role, now), Counted::Role);
    }
    let (name, extended) = if let Some(n) = path.strip_prefix(EXTENDED_PREFIX) {
        (n, true)
    } else if let Some(n) = path.strip_prefix(CREDS_PREFIX) {
        (n, false)
    } else {
        return (text(StatusCode::NOT_FOUND, "not found"), Counted::Anonymous);
    };
    if name.strip_prefix('/') != Some(role) {
        return (text(StatusCode::NOT_FOUND, "not found"), Counted::Anonymous);
    }
    let Some(slot) = snap.roles.get(role) else {
        return (text(StatusCode::NOT_FOUND, "not found"), Counted::Anonymous);
    };
    let audited = |served: Option<Arc<RenderedCredentials>>| Counted::Credentials {
        slot: Arc::clone(slot),
        served,
    };
    let wait = snap.config.sts.timeout + Duration::from_secs(1);
    let served = match ctx.cache.get(slot, wait).await {
        Ok(s) if s.remaining(now) >= imds.min_remaining => s,
        Ok(_) => {
            return (
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "credentials are below the IMDS min_remaining and could not be refreshed yet",
                ),
                audited(None),
            );
        }
        Err(e) => {
            let why = match e {
                crate::cache::CacheError::Fetch(f) => f.to_string(),
                crate::cache::CacheError::TimedOut => "STS did not answer in time".to_string(),
            };
            return (
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("credentials unavailable: {why}"),
                ),
                audited(None),
            );
        }
    };
    (credentials(&served, extended), audited(Some(served)))
}

fn issue_token(ctx: &ImdsContext, imds: &ImdsConfig, req: &Request<Incoming>) -> Response<Body> {
    let requested = req
        .headers()
        .get(TTL_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ttl| (1..=MAX_TTL_SECONDS).contains(ttl));
    let Some(requested) = requested else {
        return text(
            StatusCode::BAD_REQUEST,
            "missing or invalid X-aws-ec2-metadata-token-ttl-seconds (1..21600)",
        );
    };
    let granted = requested.min(imds.max_token_ttl.as_secs().max(1));
    let token = ctx
        .signer
        .issue(epoch_ms(clock::now()).saturating_add(granted * 1000));
    let mut resp = text(StatusCode::OK, &token);
    resp.headers_mut()
        .insert(TTL_HEADER, HeaderValue::from(granted));
    resp
}

fn credentials(served: &RenderedCredentials, extended: bool) -> Response<Body> {
    let Some((plain, with_account)) = &served.imds_bodies else {
        // Rendered before this role became the IMDS role; the next refresh renders them.
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "credentials for the IMDS role are being prepared; retry",
        );
    };
    let body = if extended {
        with_account.clone()
    } else {
        plain.clone()
    };
    let mut resp = Response::new(Full::new(body));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

/// `iam/info`: the instance profile named after the role, in the role's account.
fn info(snap: &Snapshot, role: &str, now: SystemTime) -> Response<Body> {
    let Some(slot) = snap.roles.get(role) else {
        return text(StatusCode::NOT_FOUND, "not found");
    };
    let spec = &slot.config.spec;
    // Only role kinds have an instance profile to show.
    let (Some(arn), Some(account)) = (&spec.arn, &spec.account_id) else {
        return text(StatusCode::NOT_FOUND, "not found");
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
    text(StatusCode::OK, &body)
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
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
