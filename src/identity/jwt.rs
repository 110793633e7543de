//! Verifying projected service-account tokens (DESIGN.md §7), offline, with `jsonwebtoken`.
//!
//! Order of checks: size (16 KiB), shape and header (`alg` must be asymmetric: `none` and
//! HMAC are refused before any key is looked at, so a public key can never be used as an
//! HMAC secret), legacy shape (no `exp`: secret-based tokens), key by `kid` (one refetch on
//! an unknown `kid`), signature + `iss` + `aud` + `exp`/`nbf` (the crate), `iat`, then the
//! Kubernetes claims: `sub` agreeing with `kubernetes.io`, a pod binding, the node binding.
//!
//! A verified token is remembered by its SHA-256 until it expires (plus leeway), bounded, so
//! the hot path of a known token is one hash and one map read, no signature check.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;

use super::jwks::{ALLOWED, Jwks};
use crate::clock;
use crate::config::KubernetesConfig;
use crate::metrics::Metrics;

/// Longest token accepted.
pub const MAX_TOKEN: usize = 16 * 1024;
/// Most verified tokens remembered.
const VERIFIED_CAPACITY: u64 = 200_000;

/// Why a token was refused: the class named in the 401 body and the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Larger than 16 KiB.
    Oversize,
    /// Not a well-formed JWT.
    Malformed,
    /// An algorithm other than the asymmetric JOSE ones.
    Algorithm,
    /// A legacy (secret-based, non-expiring) service-account token.
    Legacy,
    /// Signed by a key the cluster does not publish.
    UnknownKey,
    /// The signature does not verify.
    Signature,
    /// Past its expiry.
    Expired,
    /// Before its `nbf`.
    NotYetValid,
    /// Another issuer than the configured one.
    Issuer,
    /// No accepted audience.
    Audience,
    /// A `sub` that disagrees with the `kubernetes.io` claims.
    Subject,
    /// Not bound to a pod.
    NoPodBinding,
    /// Bound to another node than this broker's.
    WrongNode,
}

impl Reason {
    /// The class as the 401 body and the `outcome` metric label name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Oversize => "oversize",
            Reason::Malformed => "malformed",
            Reason::Algorithm => "algorithm",
            Reason::Legacy => "legacy",
            Reason::UnknownKey => "unknown_kid",
            Reason::Signature => "signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::Issuer => "issuer",
            Reason::Audience => "audience",
            Reason::Subject => "subject",
            Reason::NoPodBinding => "pod_binding",
            Reason::WrongNode => "node",
        }
    }

    /// What the 401 body says (the class, never the token).
    pub fn message(self) -> &'static str {
        match self {
            Reason::Oversize => "the token is larger than 16 KiB",
            Reason::Malformed => "the token is not a well-formed JWT",
            Reason::Algorithm => {
                "the token's algorithm is not accepted (asymmetric JOSE algorithms only)"
            }
            Reason::Legacy => {
                "legacy service-account tokens (no expiry) are not accepted; mount a projected token"
            }
            Reason::UnknownKey => "the token is signed by a key the cluster does not publish",
            Reason::Signature => "the token's signature does not verify",
            Reason::Expired => "the token has expired",
            Reason::NotYetValid => "the token is not valid yet",
            Reason::Issuer => "the token's issuer is not the configured one",
            Reason::Audience => "the token's audience is not accepted",
            Reason::Subject => "the token's subject does not agree with its kubernetes.io claims",
            Reason::NoPodBinding => "the token is not bound to a pod",
            Reason::WrongNode => "the token is bound to another node",
        }
    }
}

/// A caller proven by a service-account token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// The pod's namespace.
    pub namespace: String,
    /// The service account's name (within the namespace).
    pub service_account: String,
    /// The pod the token is bound to.
    pub pod_name: String,
    /// That pod's UID: a pod recreated under the same name is another caller.
    pub pod_uid: String,
    /// When the token stops being accepted (`exp` + leeway).
    pub valid_until: SystemTime,
    /// `namespace/service_account` and `namespace/service_account/pod-uid`, built once per
    /// token: the keys of its caller sessions, so a cached hit allocates none.
    pub service_account_key: Arc<str>,
    /// `namespace/service_account/pod-uid`.
    pub pod_key: Arc<str>,
}

impl Workload {
    /// `namespace/service_account`, as patterns and messages write it.
    pub fn service_account_ref(&self) -> String {
        self.service_account_key.to_string()
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    iat: Option<i64>,
    #[serde(rename = "kubernetes.io")]
    kubernetes: Option<K8sClaims>,
}

#[derive(Deserialize)]
struct K8sClaims {
    namespace: String,
    serviceaccount: NamedRef,
    pod: Option<NamedRef>,
    node: Option<NamedRef>,
}

#[derive(Deserialize)]
struct NamedRef {
    name: String,
    #[serde(default)]
    uid: String,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    kid: Option<String>,
}

/// Expires remembered tokens when they stop being valid.
struct UntilInvalid;

impl moka::Expiry<[u8; 32], Arc<Workload>> for UntilInvalid {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<Workload>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(
            value
                .valid_until
                .duration_since(clock::now())
                .unwrap_or_default(),
        )
    }
}

/// Hashes a SHA-256 digest key by taking 8 of its bytes: the key is already uniformly
/// distributed, so SipHash over it on every request would be wasted work.
#[derive(Default, Clone, Copy)]
struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 32]` hashes as its length (a usize) then its bytes: keep the first 8 bytes
        // of the digest, mixed with whatever came before.
        let mut b = [0u8; 8];
        let n = bytes.len().min(8);
        b[..n].copy_from_slice(&bytes[..n]);
        self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(b);
    }
}

type DigestHash = std::hash::BuildHasherDefault<DigestHasher>;

/// Verifies tokens against one `[kubernetes]` configuration.
pub struct Verifier {
    cfg: KubernetesConfig,
    jwks: Arc<Jwks>,
    verified: moka::sync::Cache<[u8; 32], Arc<Workload>, DigestHash>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.cfg.issuer)
            .field("remembered", &self.verified.entry_count())
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for `cfg` reading keys from `jwks`.
    pub fn new(cfg: KubernetesConfig, jwks: Arc<Jwks>, metrics: Arc<Metrics>) -> Verifier {
        Verifier {
            cfg,
            jwks,
            verified: moka::sync::Cache::builder()
                .max_capacity(VERIFIED_CAPACITY)
                .expire_after(UntilInvalid)
                .build_with_hasher(DigestHash::default()),
            metrics,
        }
    }

    /// The `[kubernetes]` table this verifier was built for.
    pub fn config(&self) -> &KubernetesConfig {
        &self.cfg
    }

    /// The keys it verifies with.
    pub fn jwks(&self) -> &Arc<Jwks> {
        &self.jwks
    }

    /// Verifies `token` (whose SHA-256 is `digest`), counting the outcome.
    ///
    /// # Errors
    /// The [`Reason`] the token was refused.
    pub async fn verify(&self, token: &[u8], digest: &[u8; 32]) -> Result<Arc<Workload>, Reason> {
        if let Some(w) = self.verified.get(digest)
            && clock::now() < w.valid_until
        {
            self.metrics.observe_verification("cached");
            return Ok(w);
        }
        let result = self.verify_uncached(token).await;
        match &result {
            Ok(w) => {
                self.metrics.observe_verification("ok");
                self.verified.insert(*digest, Arc::clone(w));
            }
            Err(r) => self.metrics.observe_verification(r.as_str()),
        }
        result
    }

    async fn verify_uncached(&self, token: &[u8]) -> Result<Arc<Workload>, Reason> {
        if token.len() > MAX_TOKEN {
            return Err(Reason::Oversize);
        }
        let token = std::str::from_utf8(token).map_err(|_| Reason::Malformed)?;
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(_s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Reason::Malformed);
        };
        let header: RawHeader = decode_part(h)?;
        // `none`, HMAC and anything unknown go before a key is looked at.
        let alg: Algorithm = header.alg.parse().map_err(|_| Reason::Algorithm)?;
        if !ALLOWED.contains(&alg) {
            return Err(Reason::Algorithm);
        }
        let payload: serde_json::Value = decode_part(p)?;
        let Some(obj) = payload.as_object() else {
            return Err(Reason::Malformed);
        };
        // Secret-based tokens: no expiry, issuer "kubernetes/serviceaccount".
        if !obj.contains_key("exp")
            || obj.get("iss").and_then(|v| v.as_str()) == Some("kubernetes/serviceaccount")
        {
            return Err(Reason::Legacy);
        }
        let kid = header.kid.as_deref();
        let mut keys = self.jwks.keys().candidates(kid, alg);
        if keys.is_empty() {
            self.jwks.refetch_for_unknown_kid().await;
            keys = self.jwks.keys().candidates(kid, alg);
        }
        if keys.is_empty() {
            return Err(Reason::UnknownKey);
        }
        let mut v = Validation::new(alg);
        v.algorithms = vec![alg];
        v.set_issuer(&[&self.cfg.issuer]);
        v.set_audience(&self.cfg.audiences);
        v.leeway = self.cfg.leeway.as_secs();
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let mut outcome = Err(Reason::Signature);
        for key in &keys {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &v) {
                Ok(data) => {
                    outcome = Ok(data.claims);
                    break;
                }
                Err(e) => {
                    let r = classify(e.kind());
                    outcome = Err(r);
                    if r != Reason::Signature {
                        break;
                    }
                }
            }
        }
        let claims = outcome?;
        let exp = obj
            .get("exp")
            .and_then(serde_json::Value::as_u64)
            .ok_or(Reason::Malformed)?;
        let now = clock::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let leeway = self.cfg.leeway.as_secs();
        if let Some(iat) = claims.iat
            && iat > i64::try_from(now + leeway).unwrap_or(i64::MAX)
        {
            return Err(Reason::NotYetValid);
        }
        let Some(k) = claims.kubernetes else {
            return Err(Reason::Subject);
        };
        let expected = format!(
            "system:serviceaccount:{}:{}",
            k.namespace, k.serviceaccount.name
        );
        if claims.sub != expected {
            return Err(Reason::Subject);
        }
        let Some(pod) = k.pod else {
            return Err(Reason::NoPodBinding);
        };
        if pod.name.is_empty() || pod.uid.is_empty() {
            return Err(Reason::NoPodBinding);
        }
        if let Some(node) = &self.cfg.node_name
            && k.node.as_ref().is_none_or(|n| &n.name != node)
        {
            return Err(Reason::WrongNode);
        }
        let service_account_key: Arc<str> =
            Arc::from(format!("{}/{}", k.namespace, k.serviceaccount.name));
        let pod_key: Arc<str> = Arc::from(format!("{service_account_key}/{}", pod.uid));
        Ok(Arc::new(Workload {
            service_account_key,
            pod_key,
            namespace: k.namespace,
            service_account: k.serviceaccount.name,
            pod_name: pod.name,
            pod_uid: pod.uid,
            valid_until: SystemTime::UNIX_EPOCH + Duration::from_secs(exp.saturating_add(leeway)),
        }))
    }
}

/// Decodes one base64url JSON part of a JWT.
fn decode_part<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, Reason> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| Reason::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| Reason::Malformed)
}

fn classify(kind: &ErrorKind) -> Reason {
    match kind {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => Reason::Signature,
        ErrorKind::ExpiredSignature => Reason::Expired,
        ErrorKind::ImmatureSignature => Reason::NotYetValid,
        ErrorKind::InvalidIssuer => Reason::Issuer,
        ErrorKind::InvalidAudience => Reason::Audience,
        ErrorKind::InvalidSubject => Reason::Subject,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm => Reason::Algorithm,
        ErrorKind::MissingRequiredClaim(c) => match c.as_str() {
            "exp" => Reason::Legacy,
            "iss" => Reason::Issuer,
            "aud" => Reason::Audience,
            "sub" => Reason::Subject,
            _ => Reason::Malformed,
        },
        _ => Reason::Malformed,
    }
}

/// Whether a header value has the three-part shape of a JWT. Only the dots are counted (a
/// loop the compiler vectorizes: this runs on every request); the alphabet is the verifier's
/// business, which answers `malformed`. Static tokens are looked up before this decides.
pub fn looks_like_jwt(token: &[u8]) -> bool {
    token.first().is_some_and(|b| *b != b'.')
        && token.iter().map(|b| usize::from(*b == b'.')).sum::<usize>() == 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_shape() {
        assert!(looks_like_jwt(b"eyJh.eyJz.c2ln"));
        assert!(looks_like_jwt(b"a-_.b.c"));
        assert!(!looks_like_jwt(b"client-token-0123456789abcdef"));
        assert!(!looks_like_jwt(b"a.b"));
        assert!(!looks_like_jwt(b"a.b.c.d"));
        assert!(!looks_like_jwt(b".b.c"));
        assert!(
            looks_like_jwt(b"a.b c.d"),
            "the alphabet is the verifier's to refuse"
        );
        assert!(!looks_like_jwt(b""));
    }

    #[test]
    fn crate_errors_map_to_reason_classes() {
        assert_eq!(classify(&ErrorKind::ExpiredSignature), Reason::Expired);
        assert_eq!(classify(&ErrorKind::ImmatureSignature), Reason::NotYetValid);
        assert_eq!(classify(&ErrorKind::InvalidSignature), Reason::Signature);
        assert_eq!(classify(&ErrorKind::InvalidIssuer), Reason::Issuer);
        assert_eq!(classify(&ErrorKind::InvalidAudience), Reason::Audience);
        assert_eq!(classify(&ErrorKind::InvalidAlgorithm), Reason::Algorithm);
        assert_eq!(
            classify(&ErrorKind::MissingRequiredClaim("exp".into())),
            Reason::Legacy
        );
        assert_eq!(
            classify(&ErrorKind::MissingRequiredClaim("aud".into())),
            Reason::Audience
        );
        assert_eq!(classify(&ErrorKind::InvalidToken), Reason::Malformed);
        // Every reason has a distinct metric label and a message without placeholders.
        let all = [
            Reason::Oversize,
            Reason::Malformed,
            Reason::Algorithm,
            Reason::Legacy,
            Reason::UnknownKey,
            Reason::Signature,
            Reason::Expired,
            Reason::NotYetValid,
            Reason::Issuer,
            Reason::Audience,
            Reason::Subject,
            Reason::NoPodBinding,
            Reason::WrongNode,
        ];
        let labels: std::collections::HashSet<_> = all.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), all.len());
        assert!(all.iter().all(|r| !r.message().contains('{')));
    }
}
