//! A test OIDC issuer on loopback, shaped like a Kubernetes API server's service-account
//! issuer: it mints real signed tokens (RS256 and ES256, keys generated per test) with
//! Kubernetes-shaped claims, and serves the discovery document and the JWKS over HTTPS with
//! a CA the test makes (rcgen). It can rotate keys, require a bearer token (the API server
//! path) and go down. EC keys are generated per test; RSA keys come from a committed pool of
//! test-only keys (`tests/keys/`: RSA generation is not available with ring). EC keys are generated per test; RSA keys come from a committed pool of
//! test-only keys (`tests/keys/`: RSA generation is not available with ring).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The audience the tests configure.
pub const AUDIENCE: &str = "sts-broker";
/// The node the tests' brokers run on (`NODE_NAME`).
pub const NODE: &str = "node-a";

/// A signing key the issuer holds.
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    pub jwk: Value,
    /// The public key in PEM (for the HS256-with-the-public-key attack).
    pub public_pem: String,
}

impl SigningKey {
    /// A key pair: ES256 a fresh P-256 key; RS256 the next RSA-2048 key of the committed
    /// test-only pool (two RS256 keys of one test may be the same key: tests that need a
    /// different key use ES256).
    pub fn generate(kid: &str, alg: Algorithm) -> SigningKey {
        static NEXT_RSA: AtomicUsize = AtomicUsize::new(0);
        let kp = match alg {
            Algorithm::RS256 => {
                let i = NEXT_RSA.fetch_add(1, Ordering::Relaxed) % RSA_POOL.len();
                rcgen::KeyPair::from_pem(RSA_POOL[i]).unwrap()
            }
            Algorithm::ES256 => {
                rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
            }
            other => panic!("no test keys for {other:?}"),
        };
        let pem = kp.serialize_pem();
        let encoding = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
            _ => EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
        };
        let mut jwk =
            serde_json::to_value(Jwk::from_encoding_key(&encoding, alg).unwrap()).unwrap();
        jwk["kid"] = json!(kid);
        jwk["use"] = json!("sig");
        SigningKey {
            kid: kid.to_string(),
            alg,
            encoding,
            jwk,
            public_pem: kp.public_key_pem(),
        }
    }
}

/// Test-only RSA keys (tests/keys/README.md).
pub const RSA_POOL: [&str; 8] = [
    include_str!("../keys/rsa-1.pem"),
    include_str!("../keys/rsa-2.pem"),
    include_str!("../keys/rsa-3.pem"),
    include_str!("../keys/rsa-4.pem"),
    include_str!("../keys/rsa-5.pem"),
    include_str!("../keys/rsa-6.pem"),
    include_str!("../keys/rsa-7.pem"),
    include_str!("../keys/rsa-8.pem"),
];

/// Whom a token is for.
#[derive(Clone, Debug)]
pub struct Pod {
    pub namespace: String,
    pub service_account: String,
    pub name: String,
    pub uid: String,
    pub node: Option<String>,
}

impl Pod {
    pub fn new(namespace: &str, service_account: &str, name: &str) -> Pod {
        Pod {
            namespace: namespace.into(),
            service_account: service_account.into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            node: Some(NODE.into()),
        }
    }
}

struct State {
    keys: Vec<Arc<SigningKey>>,
    /// Bearer token the JWKS path demands (`None`: none needed).
    bearer: Option<String>,
}

/// The issuer: `https://127.0.0.1:PORT`.
pub struct TestIssuer {
    pub url: String,
    pub addr: SocketAddr,
    /// The CA certificate (PEM) that signed the server certificate.
    pub ca_pem: String,
    state: Arc<Mutex<State>>,
    down: Arc<AtomicBool>,
    pub jwks_fetches: Arc<AtomicUsize>,
    pub refused_bearer: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Token times follow `sts_broker::clock::now()`: on a paused test clock, the simulated time.
fn now() -> i64 {
    i64::try_from(
        sts_broker::clock::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

impl TestIssuer {
    /// Starts serving with one RS256 (`rsa-1`) and one ES256 (`ec-1`) key.
    pub async fn start() -> TestIssuer {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sts-broker test cluster CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf_params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let url = format!("https://127.0.0.1:{}", addr.port());
        let state = Arc::new(Mutex::new(State {
            keys: vec![
                Arc::new(SigningKey::generate("rsa-1", Algorithm::RS256)),
                Arc::new(SigningKey::generate("ec-1", Algorithm::ES256)),
            ],
            bearer: None,
        }));
        let down = Arc::new(AtomicBool::new(false));
        let jwks_fetches = Arc::new(AtomicUsize::new(0));
        let refused_bearer = Arc::new(AtomicUsize::new(0));
        let task = {
            let (state, down, fetches, refused, url) = (
                state.clone(),
                down.clone(),
                jwks_fetches.clone(),
                refused_bearer.clone(),
                url.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let acceptor = acceptor.clone();
                    let (state, down, fetches, refused, url) = (
                        state.clone(),
                        down.clone(),
                        fetches.clone(),
                        refused.clone(),
                        url.clone(),
                    );
                    tokio::spawn(async move {
                        if down.load(Ordering::SeqCst) {
                            return; // down: the connection is closed at once
                        }
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                            let resp = serve(&req, &state, &down, &fetches, &refused, &url);
                            async move { Ok::<_, std::convert::Infallible>(resp) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), svc)
                            .await;
                    });
                }
            })
        };
        TestIssuer {
            url,
            addr,
            ca_pem: ca.pem(),
            state,
            down,
            jwks_fetches,
            refused_bearer,
            task,
        }
    }

    /// Demands `Authorization: Bearer <token>` on the JWKS path (the API server does).
    pub fn require_bearer(&self, token: &str) {
        self.state.lock().unwrap().bearer = Some(token.to_string());
    }

    /// Down: connections are closed at once. Up again: served as before.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Publishes a new key (rotation); returns it.
    pub fn add_key(&self, kid: &str, alg: Algorithm) -> Arc<SigningKey> {
        let k = Arc::new(SigningKey::generate(kid, alg));
        self.state.lock().unwrap().keys.push(k.clone());
        k
    }

    /// Stops publishing `kid` (a retired key).
    pub fn remove_key(&self, kid: &str) {
        self.state.lock().unwrap().keys.retain(|k| k.kid != kid);
    }

    pub fn key(&self, kid: &str) -> Arc<SigningKey> {
        self.state
            .lock()
            .unwrap()
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .cloned()
            .unwrap_or_else(|| panic!("no key {kid}"))
    }

    /// The JWKS document as served now.
    pub fn jwks(&self) -> String {
        jwks_of(&self.state.lock().unwrap().keys)
    }

    /// Claims of a valid projected token for `pod`: issuer, audience, an hour of life,
    /// `sub` and `kubernetes.io` agreeing.
    pub fn claims(&self, pod: &Pod) -> Value {
        let t = now();
        let mut k8s = json!({
            "namespace": pod.namespace,
            "serviceaccount": {"name": pod.service_account, "uid": format!("sa-uid-{}", pod.service_account)},
            "pod": {"name": pod.name, "uid": pod.uid},
        });
        if let Some(n) = &pod.node {
            k8s["node"] = json!({"name": n, "uid": format!("node-uid-{n}")});
        }
        json!({
            "iss": self.url,
            "aud": [AUDIENCE],
            "exp": t + 3600,
            "iat": t,
            "nbf": t,
            "sub": format!("system:serviceaccount:{}:{}", pod.namespace, pod.service_account),
            "jti": format!("jti-{}-{}", pod.uid, t),
            "kubernetes.io": k8s,
        })
    }

    /// A valid token for `pod` signed with `kid`.
    pub fn token(&self, pod: &Pod, kid: &str) -> String {
        let claims = self.claims(pod);
        self.sign(&claims, kid)
    }

    /// Signs `claims` with key `kid` (its algorithm, its `kid` in the header).
    pub fn sign(&self, claims: &Value, kid: &str) -> String {
        let k = self.key(kid);
        sign_with(&k, claims)
    }
}

/// Signs `claims` with `k`.
pub fn sign_with(k: &SigningKey, claims: &Value) -> String {
    let mut h = Header::new(k.alg);
    h.kid = Some(k.kid.clone());
    h.typ = None;
    jsonwebtoken::encode(&h, claims, &k.encoding).unwrap()
}

/// A token with an arbitrary header and payload and `sig` as the signature part.
pub fn raw_token(header: &Value, claims: &Value, sig: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(sig)
    )
}

pub fn jwks_of(keys: &[Arc<SigningKey>]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

fn serve(
    req: &Request<hyper::body::Incoming>,
    state: &Mutex<State>,
    down: &AtomicBool,
    fetches: &AtomicUsize,
    refused: &AtomicUsize,
    url: &str,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    if down.load(Ordering::SeqCst) {
        return reply(StatusCode::SERVICE_UNAVAILABLE, "{}".into());
    }
    match req.uri().path() {
        "/.well-known/openid-configuration" => reply(
            StatusCode::OK,
            json!({
                "issuer": url,
                "jwks_uri": format!("{url}/openid/v1/jwks"),
                "response_types_supported": ["id_token"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            })
            .to_string(),
        ),
        "/openid/v1/jwks" => {
            let st = state.lock().unwrap();
            if let Some(b) = &st.bearer {
                let got = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok());
                if got != Some(format!("Bearer {b}").as_str()) {
                    refused.fetch_add(1, Ordering::SeqCst);
                    return reply(StatusCode::UNAUTHORIZED, "{}".into());
                }
            }
            fetches.fetch_add(1, Ordering::SeqCst);
            reply(StatusCode::OK, jwks_of(&st.keys))
        }
        _ => reply(StatusCode::NOT_FOUND, "{}".into()),
    }
}
