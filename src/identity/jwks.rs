//! The cluster's signing keys (JWKS): fetched from the API server, by OIDC discovery or from
//! a file; refreshed periodically and, on an unknown `kid`, at most every [`REFETCH_EVERY`].
//!
//! Static stability: a fetch that fails (source down, garbage, no usable key) leaves the keys
//! already held in place, so a JWKS outage never turns into refused callers. Rotation needs
//! no restart: a new `kid` triggers a refetch, and the periodic refresh drops retired keys.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::config::file::{MAX_SECRET_FILE_BYTES, read_bounded_async};
use crate::config::{JwksSource, KubernetesConfig};
use crate::creds::Secret;
use crate::metrics::Metrics;

/// An unknown `kid` refetches the keys at most this often.
pub const REFETCH_EVERY: Duration = Duration::from_secs(10);
/// A JWKS or discovery document larger than this is refused.
const MAX_DOCUMENT: usize = 1 << 20;
/// Bound on one fetch (connect, TLS, response).
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Retry interval after a failed periodic fetch (capped by `jwks_refresh`).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);
/// How often a file source is checked for changes (a `stat`, no read).
const FILE_POLL: Duration = Duration::from_secs(2);

/// Algorithms a key may verify: the asymmetric JOSE ones. Never `none` or HMAC.
pub const ALLOWED: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// One verification key and the algorithm it is for.
pub struct Key {
    /// The key ID (`kid`) tokens name it by; a token without a `kid` is tried against every
    /// key of its algorithm.
    pub kid: Option<String>,
    /// The one algorithm this key verifies (a token naming another is refused).
    pub alg: Algorithm,
    /// The public key.
    pub key: DecodingKey,
}

/// The keys held now.
#[derive(Default)]
pub struct KeySet {
    /// Every usable key of the document, in its order.
    pub keys: Vec<Arc<Key>>,
}

impl KeySet {
    /// The keys that may verify a token with header `kid` and `alg`: the one with that `kid`,
    /// or — for a token without `kid` — every key of that algorithm.
    pub fn candidates(&self, kid: Option<&str>, alg: Algorithm) -> Vec<Arc<Key>> {
        self.keys
            .iter()
            .filter(|k| k.alg == alg && (kid.is_none() || k.kid.as_deref() == kid))
            .cloned()
            .collect()
    }
}

/// Parses a JWKS document. Keys that are not for signing, of an algorithm outside
/// [`ALLOWED`] (HMAC `oct` keys included) or malformed are skipped, not fatal.
pub fn parse_jwks(doc: &[u8]) -> Result<KeySet, String> {
    let value: serde_json::Value =
        serde_json::from_slice(doc).map_err(|e| format!("not JSON: {e}"))?;
    let Some(keys) = value.get("keys").and_then(|k| k.as_array()) else {
        return Err("no \"keys\" array".to_string());
    };
    let mut out = Vec::new();
    for k in keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(k.clone()) else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let alg = match jwk.common.key_algorithm {
            Some(a) => match a.to_string().parse::<Algorithm>() {
                Ok(a) => a,
                Err(_) => continue,
            },
            None => match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(p) => match p.curve {
                    EllipticCurve::P256 => Algorithm::ES256,
                    EllipticCurve::P384 => Algorithm::ES384,
                    _ => continue,
                },
                AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                _ => continue,
            },
        };
        if !ALLOWED.contains(&alg) {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        out.push(Arc::new(Key {
            kid: jwk.common.key_id.clone(),
            alg,
            key,
        }));
    }
    if out.is_empty() {
        return Err("no usable signing key (RS*, PS*, ES256/384, EdDSA)".to_string());
    }
    Ok(KeySet { keys: out })
}

/// The key store and its fetcher.
pub struct Jwks {
    source: JwksSource,
    issuer: String,
    refresh: Duration,
    keys: ArcSwap<KeySet>,
    metrics: Arc<Metrics>,
    /// Serializes fetches; holds when the last unknown-`kid` refetch started.
    fetch_lock: tokio::sync::Mutex<Option<Instant>>,
    /// (modified, length) of the file last read, for a file source.
    file_stamp: Mutex<Option<(SystemTime, u64)>>,
    /// Unix seconds of the last successful fetch (0: never).
    last_ok: AtomicU64,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("source", &self.source)
            .field("keys", &self.keys.load().keys.len())
            .finish_non_exhaustive()
    }
}

impl Jwks {
    /// A key holder for `cfg`'s key source, holding no keys yet (`run` fetches them).
    pub fn new(cfg: &KubernetesConfig, metrics: Arc<Metrics>) -> Arc<Jwks> {
        Arc::new(Jwks {
            source: cfg.jwks.clone(),
            issuer: cfg.issuer.clone(),
            refresh: cfg.jwks_refresh,
            keys: ArcSwap::from_pointee(KeySet::default()),
            metrics,
            fetch_lock: tokio::sync::Mutex::new(None),
            file_stamp: Mutex::new(None),
            last_ok: AtomicU64::new(0),
        })
    }

    /// The keys held now.
    pub fn keys(&self) -> Arc<KeySet> {
        self.keys.load_full()
    }

    /// Seconds since the keys were last fetched successfully (`None`: never).
    pub fn age(&self) -> Option<Duration> {
        match self.last_ok.load(Ordering::Relaxed) {
            0 => None,
            t => Some(
                clock::now()
                    .duration_since(SystemTime::UNIX_EPOCH + Duration::from_secs(t))
                    .unwrap_or_default(),
            ),
        }
    }

    /// Refetches because a token names a `kid` the store does not hold. Callers arriving
    /// together share one fetch; none happens if one started within [`REFETCH_EVERY`].
    pub async fn refetch_for_unknown_kid(&self) {
        let mut last = self.fetch_lock.lock().await;
        if last.is_some_and(|t| t.elapsed() < REFETCH_EVERY) {
            return;
        }
        *last = Some(clock::instant());
        let _ = self.fetch_now(true).await;
    }

    /// Fetches (or, for an unchanged file, skips) and swaps the keys in on success.
    async fn fetch_now(&self, force_file: bool) -> Result<(), String> {
        let result =
            match tokio::time::timeout(FETCH_TIMEOUT, self.fetch_document(force_file)).await {
                Ok(Ok(None)) => return Ok(()), // file unchanged
                Ok(Ok(Some(doc))) => parse_jwks(&doc),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(format!("timed out after {}s", FETCH_TIMEOUT.as_secs())),
            };
        match result {
            Ok(set) => {
                let n = set.keys.len();
                let kids: Vec<String> = set
                    .keys
                    .iter()
                    .map(|k| k.kid.clone().unwrap_or_default())
                    .collect();
                self.keys.store(Arc::new(set));
                let now = clock::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                self.last_ok.store(now.max(1), Ordering::Relaxed);
                self.metrics.observe_jwks_fetch(true, Some(n), now);
                tracing::debug!(keys = n, ?kids, "service-account signing keys loaded");
                Ok(())
            }
            Err(e) => {
                self.metrics.observe_jwks_fetch(false, None, 0);
                tracing::warn!(
                    source = %self.describe(),
                    error = %e,
                    held_keys = self.keys.load().keys.len(),
                    "fetching the service-account signing keys failed; keeping the keys held"
                );
                Err(e)
            }
        }
    }

    fn describe(&self) -> String {
        match &self.source {
            JwksSource::ApiServer { url, .. } => format!("api_server {url}"),
            JwksSource::Discovery { .. } => format!("discovery {}", self.issuer),
            JwksSource::File(p) => format!("file {}", p.display()),
        }
    }

    /// The JWKS document, or `None` when a file source has not changed.
    async fn fetch_document(&self, force_file: bool) -> Result<Option<Vec<u8>>, String> {
        match &self.source {
            JwksSource::File(path) => {
                let meta = tokio::fs::metadata(path)
                    .await
                    .map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
                let stamp = (
                    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    meta.len(),
                );
                if !force_file && *self.file_stamp.lock().expect("stamp lock") == Some(stamp) {
                    return Ok(None);
                }
                let doc = read_file(path, MAX_SECRET_FILE_BYTES)
                    .await
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                *self.file_stamp.lock().expect("stamp lock") = Some(stamp);
                Ok(Some(doc))
            }
            JwksSource::ApiServer {
                url,
                token_file,
                ca_file,
            } => {
                let roots = read_ca(ca_file).await?;
                let token = read_bounded_async(token_file, MAX_SECRET_FILE_BYTES)
                    .await
                    .map(Secret::new)
                    .map_err(|e| {
                        format!(
                            "cannot read the broker's service-account token {}: {e}",
                            token_file.display()
                        )
                    })?;
                let doc = https_get(
                    &format!("{url}/openid/v1/jwks"),
                    roots,
                    Some(token.expose().trim_end()),
                )
                .await?;
                Ok(Some(doc))
            }
            JwksSource::Discovery { ca_file } => {
                let mut roots = native_roots();
                if let Some(ca) = ca_file {
                    for c in read_ca(ca).await?.roots {
                        roots.roots.push(c);
                    }
                }
                let base = self.issuer.trim_end_matches('/');
                let doc = https_get(
                    &format!("{base}/.well-known/openid-configuration"),
                    roots.clone(),
                    None,
                )
                .await?;
                let meta: serde_json::Value = serde_json::from_slice(&doc)
                    .map_err(|e| format!("discovery document is not JSON: {e}"))?;
                if meta.get("issuer").and_then(|v| v.as_str()) != Some(self.issuer.as_str()) {
                    return Err(
                        "the discovery document names another issuer than [kubernetes].issuer"
                            .to_string(),
                    );
                }
                let Some(jwks_uri) = meta.get("jwks_uri").and_then(|v| v.as_str()) else {
                    return Err("the discovery document has no jwks_uri".to_string());
                };
                if !jwks_uri.starts_with("https://") {
                    return Err(format!("jwks_uri {jwks_uri:?} is not https"));
                }
                Ok(Some(https_get(jwks_uri, roots, None).await?))
            }
        }
    }

    /// Keeps the keys fresh until `stop`: every `jwks_refresh` (a file: whenever it
    /// changes), sooner after a failure.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        loop {
            // Periodic fetches do not count against the unknown-`kid` rate limit: a pod
            // with a freshly rotated key right after start-up need not wait.
            let ok = {
                let _serialized = self.fetch_lock.lock().await;
                self.fetch_now(false).await.is_ok()
            };
            let wait = match (&self.source, ok) {
                (JwksSource::File(_), _) => FILE_POLL,
                (_, true) => self.refresh,
                (_, false) => RETRY_AFTER_FAILURE.min(self.refresh),
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => return,
            }
        }
    }
}

fn native_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(found.certs);
    roots
}

/// The JWKS and CA files are read like every other file the config names: regular files only,
/// opened without blocking, size-capped (a FIFO or `/dev/zero` there must not wedge the fetcher).
async fn read_file(path: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
    read_bounded_async(path, cap).await.map(String::into_bytes)
}

async fn read_ca(path: &Path) -> Result<rustls::RootCertStore, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let pem = read_file(path, MAX_SECRET_FILE_BYTES)
        .await
        .map_err(|e| format!("cannot read the CA file {}: {e}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("bad PEM in {}: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(roots)
}

/// One HTTPS GET trusting exactly `roots`; the body is capped at [`MAX_DOCUMENT`]. Uses the
/// rustls + hyper stack the AWS SDK already brings.
async fn https_get(
    url: &str,
    roots: rustls::RootCertStore,
    bearer: Option<&str>,
) -> Result<Vec<u8>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    let client: hyper_util::client::legacy::Client<_, Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector);
    let mut req = hyper::Request::get(url).header(hyper::header::ACCEPT, "application/json");
    if let Some(t) = bearer {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(Empty::new())
        .map_err(|e| format!("bad URL {url:?}: {e}"))?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_DOCUMENT)
        .collect()
        .await
        .map_err(|e| format!("GET {url}: reading the body: {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("GET {url}: HTTP {status}"));
    }
    Ok(body.to_vec())
}

/// The error with its causes: hyper's top-level message alone ("client error (Connect)")
/// does not say what went wrong.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Kid → algorithm of the keys held: for tests and the admin endpoint.
pub fn describe_keys(set: &KeySet) -> HashMap<String, String> {
    set.keys
        .iter()
        .map(|k| (k.kid.clone().unwrap_or_default(), format!("{:?}", k.alg)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_and_encryption_keys_are_skipped() {
        let doc = br#"{"keys":[
            {"kty":"oct","k":"c2VjcmV0","alg":"HS256","kid":"h"},
            {"kty":"EC","crv":"P-256","use":"enc","kid":"e",
             "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty":"EC","crv":"P-256","kid":"ok",
             "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty":"RSA","kid":"junk","n":"!!","e":"AQAB"},
            "not even an object"
        ]}"#;
        let set = parse_jwks(doc).unwrap();
        let d = describe_keys(&set);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d["ok"], "ES256");
        assert!(set.candidates(Some("ok"), Algorithm::ES256).len() == 1);
        assert!(set.candidates(Some("ok"), Algorithm::RS256).is_empty());
        assert!(set.candidates(Some("h"), Algorithm::HS256).is_empty());
        assert!(parse_jwks(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).is_err());
        assert!(parse_jwks(b"[]").is_err());
        assert!(parse_jwks(b"garbage").is_err());
    }
}
