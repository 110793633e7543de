//! Mints Kubernetes-shaped projected service-account tokens for the benchmarks (bench/k8s.sh):
//! an RS256 key (committed, test-only: `tests/keys/`) and a fresh ES256 key, the JWKS document,
//! and one token per pod.
//!
//! ```text
//! cargo run --release --example k8s_tokens -- DIR ISSUER AUDIENCE NAMESPACE ACCOUNTS PODS
//! ```
//! writes `DIR/jwks.json` and `DIR/tokens.txt` (one token per line; pod `i` runs as service
//! account `sa-{i % ACCOUNTS}`, alternating RS256 and ES256).

use std::io::Write;
use std::time::UNIX_EPOCH;

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

fn key(kid: &str, alg: Algorithm) -> (EncodingKey, serde_json::Value) {
    let kp = match alg {
        // A committed test-only key: RSA generation needs aws-lc, which the tree does not have.
        Algorithm::RS256 => rcgen::KeyPair::from_pem(include_str!("../tests/keys/rsa-1.pem")),
        _ => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
    }
    .expect("key generation");
    let pem = kp.serialize_pem();
    let enc = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(pem.as_bytes()),
        _ => EncodingKey::from_ec_pem(pem.as_bytes()),
    }
    .expect("PEM key");
    let mut jwk = serde_json::to_value(Jwk::from_encoding_key(&enc, alg).expect("JWK")).unwrap();
    jwk["kid"] = json!(kid);
    jwk["use"] = json!("sig");
    (enc, jwk)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, issuer, audience, namespace, accounts, pods] = args.as_slice() else {
        eprintln!("usage: k8s_tokens DIR ISSUER AUDIENCE NAMESPACE ACCOUNTS PODS");
        std::process::exit(2);
    };
    let accounts: usize = accounts.parse().expect("ACCOUNTS");
    let pods: usize = pods.parse().expect("PODS");
    let keys = [
        (
            "bench-rsa",
            Algorithm::RS256,
            key("bench-rsa", Algorithm::RS256),
        ),
        (
            "bench-ec",
            Algorithm::ES256,
            key("bench-ec", Algorithm::ES256),
        ),
    ];
    let jwks = json!({"keys": keys.iter().map(|(_, _, (_, j))| j.clone()).collect::<Vec<_>>()});
    std::fs::write(format!("{dir}/jwks.json"), jwks.to_string()).expect("write jwks.json");
    let now = sts_broker::clock::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(format!("{dir}/tokens.txt")).expect("tokens.txt"),
    );
    for i in 0..pods {
        let sa = format!("sa-{}", i % accounts);
        let pod = format!("pod-{i}");
        let claims = json!({
            "iss": issuer, "aud": [audience], "exp": now + 6 * 3600, "iat": now, "nbf": now,
            "sub": format!("system:serviceaccount:{namespace}:{sa}"),
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": sa, "uid": format!("uid-{sa}")},
                "pod": {"name": pod, "uid": format!("uid-{pod}")},
            },
        });
        let (kid, alg, (enc, _)) = &keys[i % 2];
        let mut h = Header::new(*alg);
        h.kid = Some((*kid).to_string());
        let t = jsonwebtoken::encode(&h, &claims, enc).expect("sign");
        writeln!(out, "{t}").unwrap();
    }
}
