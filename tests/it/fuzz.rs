//! Mutation fuzzing that runs as ordinary tests: config parsing, and request parsing and
//! routing on every listener of a live broker.
//!
//! Each target first replays its corpus (`tests/fuzz/corpus/<target>/`: interesting inputs,
//! and every input that ever found a bug — the regression tests), then mutates corpus
//! entries for `STS_BROKER_FUZZ_SECONDS` (default 3; `scripts/test.sh` runs 45 per target).
//! A failing input is written to `target/fuzz-failures/` and named in the panic message;
//! add it to the corpus once fixed. `STS_BROKER_FUZZ_SEED` replays one run.
//!
//! Properties checked:
//! - config: `Config::parse` never panics, whatever the bytes;
//! - http: every answer is a well-formed HTTP/1.x response (or a closed connection), never a
//!   500; the broker keeps serving valid clients; and an ECS 200 carrying role `app`'s
//!   credentials only ever answers a request whose (first) `Authorization` header is exactly
//!   app's token — no input tricks the broker into handing out the wrong role.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::fake_sts::FakeSts;
use crate::helpers::*;

/// app's token; `other` has its own.
const OTHER_TOKEN: &str = "other-token-0123456789";

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    let inputs: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    assert!(!inputs.is_empty(), "empty corpus {}", dir.display());
    inputs
}

fn budget() -> Duration {
    let secs = std::env::var("STS_BROKER_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(secs)
}

/// xorshift64*: small, fast, reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn seeded() -> (Rng, u64) {
        let seed = std::env::var("STS_BROKER_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        (Rng(seed), seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Fragments that reach deeper than random bytes.
const DICTIONARY: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b"\"",
    b"'''",
    b"=",
    b"[[role]]\n",
    b"[imds]\n",
    b"{",
    b"}",
    b"[",
    b"]",
    b"%2F",
    b"%2e%2e",
    b"..",
    b"/",
    b"//",
    b"?x=1",
    b"#",
    b"Host: evil.example\r\n",
    b"Authorization: ",
    b"Content-Length: 9999\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"X-Forwarded-For: 1.2.3.4\r\n",
    b"X-aws-ec2-metadata-token: ",
    b" HTTP/1.1",
    b"\x00",
    b"\xff\xfe",
    b"\xe2\x98\x83",
    b"source_role = \"app\"\n",
    b"kind = \"saml\"\n",
    b"1h",
    b"66%",
    b"-1",
    b"99999999999999999999",
    b"client-token-0123456789abcdef",
    b"other-token-0123456789",
    b"/v1/credentials/",
    b"/latest/meta-data/iam/security-credentials/",
];

/// One random edit of `input`, sometimes splicing in a piece of `other`.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        let pos = rng.below(out.len() + 1);
        match rng.below(7) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 => out.insert(pos, rng.next() as u8),
            2 if !out.is_empty() => {
                let end = (pos + rng.below(16)).min(out.len());
                out.drain(pos.min(end)..end);
            }
            3 => {
                let d = DICTIONARY[rng.below(DICTIONARY.len())];
                out.splice(pos..pos, d.iter().copied());
            }
            4 if !out.is_empty() => {
                let start = rng.below(out.len());
                let end = (start + rng.below(64)).min(out.len());
                let piece = out[start..end].to_vec();
                out.splice(pos..pos, piece);
            }
            5 if !other.is_empty() => {
                let start = rng.below(other.len());
                let end = (start + rng.below(128)).min(other.len());
                out.splice(pos..pos, other[start..end].iter().copied());
            }
            _ => {
                let n = rng.below(3000);
                out.splice(pos..pos, std::iter::repeat_n(b'A', n));
            }
        }
    }
    out.truncate(64 * 1024);
    out
}

/// Saves a failing input and returns its path.
fn save_failure(target: &str, input: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/fuzz-failures")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{:016x}", fnv(input)));
    std::fs::write(&p, input).unwrap();
    p
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[test]
fn fuzz_config_parsing() {
    let ctx = sts_broker::config::LoadContext {
        hostname: "fuzz-host".into(),
    };
    let inputs = corpus("config");
    let (mut rng, seed) = Rng::seeded();
    let check = |input: &[u8]| {
        let text = String::from_utf8_lossy(input);
        let outcome = std::panic::catch_unwind(|| {
            let _ = sts_broker::config::Config::parse(&text, "fuzz.toml", &ctx);
        });
        if outcome.is_err() {
            let p = save_failure("config", input);
            panic!("Config::parse panicked on {} (seed {seed})", p.display());
        }
    };
    for input in &inputs {
        check(input);
    }
    let deadline = Instant::now() + budget();
    let mut runs = 0u64;
    while Instant::now() < deadline {
        let a = &inputs[rng.below(inputs.len())];
        let b = &inputs[rng.below(inputs.len())];
        check(&mutate(&mut rng, a, b));
        runs += 1;
    }
    eprintln!("fuzz config: {runs} inputs, seed {seed}");
}

/// Sends `input` as is, half-closes, and reads the answer (bounded).
async fn exchange(addr: SocketAddr, input: &[u8]) -> Vec<u8> {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        panic!("the broker stopped accepting connections on {addr}");
    };
    let _ = s.write_all(input).await;
    let _ = s.shutdown().await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(12), s.read_to_end(&mut out)).await;
    out
}

/// The value of the first `Authorization` header of a raw request head.
fn first_authorization(input: &[u8]) -> Option<Vec<u8>> {
    // Empty lines before the request line are skipped, as RFC 9112 §2.2 lets a server (and
    // hyper) do; otherwise this would read the first request's head as empty.
    let start = input
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(input.len());
    let input = &input[start..];
    let head_end = input
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(input.len());
    input[..head_end]
        .split(|b| *b == b'\n')
        .skip(1)
        .find_map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let colon = line.iter().position(|b| *b == b':')?;
            line[..colon]
                .eq_ignore_ascii_case(b"authorization")
                .then(|| line[colon + 1..].trim_ascii().to_vec())
        })
}

/// Checks one answer; `Err` describes the violation.
fn check_answer(input: &[u8], answer: &[u8], ecs: bool) -> Result<(), String> {
    if answer.is_empty() {
        return Ok(()); // closed without an answer: acceptable for garbage
    }
    let status = answer
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| answer.strip_prefix(b"HTTP/1.0 "))
        .and_then(|r| r.get(..3))
        .and_then(|c| std::str::from_utf8(c).ok())
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or("not an HTTP/1.x response")?;
    if status == 500 {
        return Err("500 Internal Server Error".into());
    }
    let text = String::from_utf8_lossy(answer);
    if ecs && status == 200 && text.contains("arn:aws:iam::123456789012:role/app\"") {
        let auth = first_authorization(input);
        if auth.as_deref() != Some(TOKEN.as_bytes()) {
            return Err(format!(
                "served role app's credentials for Authorization {:?}",
                auth.map(|a| String::from_utf8_lossy(&a).into_owned())
            ));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzz_requests_on_every_listener() {
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let config = config_head(&sts.url())
        + &role("app", "")
        + &format!(
            "\n[[role]]\nname = \"other\"\narn = \"arn:aws:iam::123456789012:role/other\"\ntokens = [\"{OTHER_TOKEN}\"]\n"
        )
        + "\n[imds]\nlisten = \"127.0.0.1:0\"\nrole = \"app\"\n";
    let broker = TestBroker::start(&dir, &config).await;
    broker.wait_ready(Duration::from_secs(10)).await;
    let listeners = [
        (broker.ecs, true),
        (broker.imds.unwrap(), false),
        (broker.admin, false),
    ];
    let inputs = corpus("http");
    let (mut rng, seed) = Rng::seeded();
    let mut runs = 0u64;
    let run = async |input: Vec<u8>, which: usize| {
        let (addr, ecs) = listeners[which];
        let answer = exchange(addr, &input).await;
        if let Err(why) = check_answer(&input, &answer, ecs) {
            let p = save_failure("http", &input);
            panic!(
                "{why} (input {}, listener {addr}, seed {seed}); answer:\n{}",
                p.display(),
                String::from_utf8_lossy(&answer)
            );
        }
    };
    for input in &inputs {
        for which in 0..listeners.len() {
            run(input.clone(), which).await;
        }
    }
    let deadline = Instant::now() + budget();
    while Instant::now() < deadline {
        let a = &inputs[rng.below(inputs.len())];
        let b = &inputs[rng.below(inputs.len())];
        let input = mutate(&mut rng, a, b);
        let which = rng.below(listeners.len());
        run(input, which).await;
        runs += 1;
    }
    eprintln!("fuzz http: {runs} inputs, seed {seed}");
    // Still serving valid clients correctly.
    let ok = broker.ecs_get("app", Some(TOKEN)).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["RoleArn"], "arn:aws:iam::123456789012:role/app");
    assert_eq!(broker.ecs_get("other", Some(TOKEN)).await.status, 403);
    assert_eq!(broker.admin_get("/healthz").await.status, 200);
}

/// The service-account token parser and verifier (`identity::jwt`), in process, against a
/// JWKS of freshly generated keys. Properties: it never panics, and nothing but the exact
/// tokens the issuer signed verifies — no edit of a valid token (header, claims, signature,
/// `alg`, `kid`) is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzz_service_account_tokens() {
    use crate::issuer::{Pod, SigningKey, jwks_of};
    use jsonwebtoken::Algorithm;
    use std::sync::Arc;

    let keys = [
        Arc::new(SigningKey::generate("rsa-1", Algorithm::RS256)),
        Arc::new(SigningKey::generate("ec-1", Algorithm::ES256)),
    ];
    let dir = ConfigDir::new();
    let jwks = dir.write("jwks.json", &jwks_of(&keys));
    let issuer = "https://issuer.fuzz";
    let config = sts_broker::config::Config::parse(
        &format!(
            "[sts]\nregion = \"us-east-1\"\n[kubernetes]\nissuer = \"{issuer}\"\naudiences = [\"{}\"]\njwks = {:?}\n[[role]]\nname = \"a\"\narn = \"arn:aws:iam::123456789012:role/a\"\nservice_accounts = [\"ns/*\"]\n",
            crate::issuer::AUDIENCE,
            jwks.display().to_string()
        ),
        "fuzz.toml",
        &sts_broker::config::LoadContext {
            hostname: "fuzz-host".into(),
        },
    )
    .unwrap();
    let k8s = config.kubernetes.clone().unwrap();
    let metrics = Arc::new(sts_broker::metrics::Metrics::new());
    let store = sts_broker::identity::jwks::Jwks::new(&k8s, Arc::clone(&metrics));
    store.refetch_for_unknown_kid().await;
    let verifier = sts_broker::identity::jwt::Verifier::new(k8s, store, metrics);

    // Valid tokens minted now, plus the corpus (shapes: none, HS256, legacy, nested JSON).
    let mut valid = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let pod = Pod::new("ns", "sa", &format!("pod-{i}"));
        let mut claims = serde_json::json!({});
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        claims["iss"] = issuer.into();
        claims["aud"] = serde_json::json!([crate::issuer::AUDIENCE]);
        claims["exp"] = (now + 3600).into();
        claims["iat"] = now.into();
        claims["sub"] = "system:serviceaccount:ns:sa".into();
        claims["kubernetes.io"] = serde_json::json!({
            "namespace": pod.namespace,
            "serviceaccount": {"name": "sa", "uid": "u"},
            "pod": {"name": pod.name, "uid": pod.uid},
        });
        valid.push(crate::issuer::sign_with(k, &claims).into_bytes());
    }
    let mut inputs = corpus("jwt");
    inputs.extend(valid.iter().cloned());
    let (mut rng, seed) = Rng::seeded();
    let mut accepted = 0u64;
    let mut check = async |input: &[u8]| {
        let digest = sha_digest(input);
        let outcome = verifier.verify(input, &digest).await;
        if outcome.is_ok() {
            if !valid.iter().any(|v| v == input) {
                let p = save_failure("jwt", input);
                panic!(
                    "a token the issuer never signed was accepted: {} (seed {seed})",
                    p.display()
                );
            }
            accepted += 1;
        }
    };
    for input in &inputs {
        check(input).await;
    }
    let deadline = Instant::now() + budget();
    let mut runs = 0u64;
    while Instant::now() < deadline {
        let a = &inputs[rng.below(inputs.len())];
        let b = &inputs[rng.below(inputs.len())];
        let mut m = mutate(&mut rng, a, b);
        // Mostly edits that keep the JWT alphabet, so the mutant reaches the verifier.
        if rng.below(4) != 0 {
            m.retain(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c));
        }
        check(&m).await;
        runs += 1;
    }
    assert!(accepted >= 2, "the valid tokens verify");
    eprintln!("fuzz jwt: {runs} inputs, seed {seed}");
}

fn sha_digest(b: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}
