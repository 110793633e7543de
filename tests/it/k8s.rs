//! Kubernetes workload identity (DESIGN.md §7): projected service-account tokens minted by
//! a real test issuer ([`crate::issuer`]), verified by the broker, per-caller sessions
//! against the fake STS (exact tags, transitive keys, session names), every refusal, JWKS
//! sources (file, discovery, API server over HTTPS), static stability, rotation, scale.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::json;

use crate::clients::{as_rust_child, run_ok};
use crate::fake_sts::{FakeSts, RecordedRequest};
use crate::helpers::*;
use crate::inproc::spawn_broker;
use crate::issuer::{AUDIENCE, NODE, Pod, TestIssuer, raw_token, sign_with};
use crate::test_config::{Role, TestConfig};

/// A static client token with the three-part shape of a JWT.
const JWT_SHAPED_STATIC: &str = "static-part1.static-part2.static-part3";

/// What most tests here start from: the fake STS, a test issuer, a config dir holding the
/// issuer's keys (the JWKS file, its path last).
async fn cluster() -> (FakeSts, TestIssuer, ConfigDir, std::path::PathBuf) {
    let sts = FakeSts::start().await;
    let issuer = TestIssuer::start().await;
    let dir = ConfigDir::new();
    let jwks = dir.write("jwks.json", &issuer.jwks());
    (sts, issuer, dir, jwks)
}

/// The test config with `[kubernetes]` for `issuer`, keys from `jwks` (a file path,
/// "discovery" or "api_server"), on node [`NODE`]. No roles.
pub fn k8s_config(sts_url: &str, issuer: &TestIssuer, jwks: &str) -> TestConfig {
    TestConfig::new(sts_url).kubernetes(&issuer.url, AUDIENCE, jwks, NODE)
}

/// A role for `accounts` (and the static `TOKEN` too).
pub fn sa_role(name: &str, accounts: &[&str]) -> Role {
    Role::new(name).service_accounts(accounts)
}

/// The binary on `config`, with `node_name` from the environment (`${NODE_NAME}`, expanded
/// at load) as a pod's manifest sets it.
pub async fn start_broker(dir: &ConfigDir, config: TestConfig, log: &str) -> TestBroker {
    let config = config
        .set("kubernetes", "node_name", "${NODE_NAME}")
        .render();
    TestBroker::start_wrapped(dir, &config, log, &[], &[("NODE_NAME", NODE)]).await
}

/// The path of a file in `dir`, as a config value.
fn path_of(p: &std::path::Path) -> String {
    p.display().to_string()
}

/// `GET /v1/credentials/{role}` as `pod`, with a fresh token signed by `kid`.
async fn as_pod(
    broker: &Endpoints,
    issuer: &TestIssuer,
    role: &str,
    pod: &Pod,
    kid: &str,
) -> HttpResponse {
    ecs(
        broker,
        &format!("/v1/credentials/{role}"),
        &issuer.token(pod, kid),
    )
    .await
}

/// `GET path` on the ECS listener with `token`.
pub async fn ecs(broker: &Endpoints, path: &str, token: &str) -> HttpResponse {
    request(broker.ecs, "GET", path, &[("Authorization", token)]).await
}

/// The session tags and transitive keys of one AssumeRole request.
fn tags_of(r: &RecordedRequest) -> (BTreeMap<String, String>, Vec<String>) {
    let mut tags = BTreeMap::new();
    for i in 1.. {
        let (Some(k), Some(v)) = (
            r.param(&format!("Tags.member.{i}.Key")),
            r.param(&format!("Tags.member.{i}.Value")),
        ) else {
            break;
        };
        tags.insert(k.to_string(), v.to_string());
    }
    let mut transitive: Vec<String> = (1..)
        .map_while(|i| r.param(&format!("TransitiveTagKeys.member.{i}")))
        .map(str::to_string)
        .collect();
    transitive.sort();
    (tags, transitive)
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_per_scope_carry_eks_tags_and_names() {
    let (sts, issuer, dir, jwks) = cluster().await;
    let audit = dir.path().join("audit.jsonl");
    let config = k8s_config(&sts.url(), &issuer, &path_of(&jwks))
        .role(
            sa_role("payments", &["payments/api", "batch/*"])
                .lazy()
                .set("tags", json!({"team": "pay"}))
                .set("transitive_tag_keys", json!(["team"]))
                .tokens(&[TOKEN, JWT_SHAPED_STATIC]),
        )
        .role(
            sa_role("per-pod", &["jobs/runner"])
                .lazy()
                .set("session_scope", "pod")
                .set("session_name", "{cluster}.{pod}"),
        )
        .role(
            sa_role("shared", &["shared/app"])
                .lazy()
                .set("session_scope", "role")
                .set("session_name", "shared-{cluster}"),
        )
        .audit(&audit);
    let broker = spawn_broker(&dir, &config).await;

    // Two pods of one service account: one session, one STS call.
    let api1 = Pod::new("payments", "api", "api-1");
    let api2 = Pod::new("payments", "api", "api-2");
    for (pod, kid) in [(&api1, "rsa-1"), (&api2, "ec-1")] {
        let r = ecs(&broker, "/v1/credentials/payments", &issuer.token(pod, kid)).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // Another service account of the same role (wildcard), by the role-less URL.
    let batch = Pod::new("batch", "nightly", "nightly-1");
    let r = ecs(&broker, "/v1/credentials", &issuer.token(&batch, "rsa-1")).await;
    assert_eq!(r.status, 200, "role-less: {}", r.body);
    // Pod scope: one session per pod.
    for name in ["runner-1", "runner-2"] {
        let pod = Pod::new("jobs", "runner", name);
        let r = as_pod(&broker, &issuer, "per-pod", &pod, "ec-1").await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // Role scope: callers share the role's own session, no caller tags.
    let r = as_pod(
        &broker,
        &issuer,
        "shared",
        &Pod::new("shared", "app", "s-1"),
        "rsa-1",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // A static token still works beside the JWTs, for the role's own session, even one
    // that has a JWT's shape.
    let r = ecs(&broker, "/v1/credentials/payments", TOKEN).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = ecs(&broker, "/v1/credentials/payments", JWT_SHAPED_STATIC).await;
    assert_eq!(r.status, 200, "{}", r.body);

    let reqs = sts.requests();
    let by_name: BTreeMap<String, &RecordedRequest> = reqs
        .iter()
        .map(|r| (r.param("RoleSessionName").unwrap().to_string(), r))
        .collect();
    assert_eq!(reqs.len(), 6, "one call per session: {:#?}", by_name.keys());
    let sa_keys = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "eks-cluster-name",
            "kubernetes-namespace",
            "kubernetes-service-account",
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
        v.sort();
        v
    };
    let (tags, transitive) = tags_of(by_name["payments.api"]);
    assert_eq!(
        tags,
        map(&[
            ("team", "pay"),
            ("kubernetes-namespace", "payments"),
            ("kubernetes-service-account", "api"),
            ("eks-cluster-name", "test-cluster"),
        ])
    );
    assert_eq!(transitive, sa_keys(&["team"]));
    assert_eq!(
        by_name["payments.api"].param("RoleArn"),
        Some("arn:aws:iam::123456789012:role/payments")
    );
    let (tags, _) = tags_of(by_name["batch.nightly"]);
    assert_eq!(tags["kubernetes-namespace"], "batch");
    assert_eq!(tags["kubernetes-service-account"], "nightly");
    for pod in ["runner-1", "runner-2"] {
        let r = by_name[&format!("test-cluster.{pod}")];
        let (tags, transitive) = tags_of(r);
        assert_eq!(
            tags,
            map(&[
                ("kubernetes-namespace", "jobs"),
                ("kubernetes-service-account", "runner"),
                ("eks-cluster-name", "test-cluster"),
                ("kubernetes-pod-name", pod),
                ("kubernetes-pod-uid", &format!("uid-{pod}")),
            ])
        );
        assert_eq!(
            transitive,
            sa_keys(&["kubernetes-pod-name", "kubernetes-pod-uid"])
        );
    }
    let (tags, transitive) = tags_of(by_name["shared-test-cluster"]);
    assert!(tags.is_empty() && transitive.is_empty(), "{tags:?}");
    // The static token used the role's own session (its default name).
    assert!(
        by_name.keys().any(|n| n.starts_with("sts-broker-")),
        "{:?}",
        by_name.keys()
    );

    // Sessions per role, no per-pod labels.
    let roles = broker.roles().await;
    let sessions =
        |name: &str| roles.iter().find(|r| r["name"] == name).unwrap()["sessions"].clone();
    assert_eq!(sessions("payments"), json!(2));
    assert_eq!(sessions("per-pod"), json!(2));
    assert_eq!(sessions("shared"), json!(0));
    assert_eq!(
        broker
            .metric("sts_broker_caller_sessions{role=\"per-pod\"}")
            .await,
        Some(2.0)
    );
    let metrics = broker.admin_get("/metrics").await.body;
    assert!(!metrics.contains("runner-1"), "no per-pod labels");
    assert!(
        broker
            .metric("sts_broker_token_verifications_total{outcome=\"ok\"}")
            .await
            >= Some(6.0)
    );
    assert!(broker.metric("sts_broker_jwks_age_seconds").await >= Some(0.0));
    assert_eq!(broker.metric("sts_broker_jwks_keys").await, Some(2.0));

    // A cached hit costs no verification (counted as cached).
    let again = as_pod(&broker, &issuer, "payments", &api1, "rsa-1").await;
    assert_eq!(again.status, 200);
    let tok = issuer.token(&api1, "rsa-1");
    for _ in 0..3 {
        assert_eq!(
            ecs(&broker, "/v1/credentials/payments", &tok).await.status,
            200
        );
    }
    assert!(
        broker
            .metric("sts_broker_token_verifications_total{outcome=\"cached\"}")
            .await
            >= Some(3.0)
    );
    assert_eq!(sts.calls(), 6, "cached sessions: no STS call");

    // A forced refresh (revocation) drops the role's caller sessions too.
    let r = broker.admin_post("/v1/roles/per-pod/refresh").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let calls = sts.calls();
    let pod = Pod::new("jobs", "runner", "runner-1");
    let r = as_pod(&broker, &issuer, "per-pod", &pod, "ec-1").await;
    assert_eq!(r.status, 200);
    assert_eq!(sts.calls(), calls + 1, "the session was assumed anew");

    // The audit trail names the caller.
    assert!(
        eventually(Duration::from_secs(5), || async {
            std::fs::read_to_string(&audit).is_ok_and(|t| t.contains("\"pod\":\"runner-2\""))
        })
        .await
    );
    let trail = std::fs::read_to_string(&audit).unwrap();
    let line: serde_json::Value = serde_json::from_str(
        trail
            .lines()
            .find(|l| l.contains("\"pod\":\"runner-2\""))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(line["namespace"], "jobs");
    assert_eq!(line["service_account"], "runner");
    assert_eq!(line["session_name"], "test-cluster.runner-2");
    assert_eq!(line["role"], "per-pod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_has_its_status_and_reason_and_no_token_in_logs() {
    let (sts, issuer, dir, jwks) = cluster().await;
    let config = k8s_config(&sts.url(), &issuer, &path_of(&jwks))
        .set("kubernetes", "leeway", "5s")
        .role(sa_role("payments", &["payments/api"]).lazy())
        .role(sa_role("other", &["other/x"]).lazy())
        .role(sa_role("twin-a", &["twins/x"]).lazy())
        .role(sa_role("twin-b", &["twins/x"]).lazy());
    let broker = start_broker(&dir, config, "debug").await;
    let pod = Pod::new("payments", "api", "api-1");
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = issuer.claims(&pod);
        f(&mut c);
        issuer.sign(&c, "rsa-1")
    };
    let rsa = issuer.key("rsa-1");
    // Another key published under a kid the issuer uses (EC: generated fresh, so surely not
    // the issuer's).
    let stranger = crate::issuer::SigningKey::generate("ec-1", Algorithm::ES256);
    let unknown_kid = crate::issuer::SigningKey::generate("nobody", Algorithm::ES256);
    let good = issuer.token(&pod, "rsa-1");
    // One character in the middle of the signature changed (the last one may carry only
    // padding bits, which a decoder may ignore or refuse as malformed).
    let bad_sig = {
        let mut b = good.clone().into_bytes();
        let i = b.len() - 20;
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        String::from_utf8(b).unwrap()
    };
    let legacy = {
        let claims = json!({
            "iss": "kubernetes/serviceaccount",
            "sub": "system:serviceaccount:payments:api",
            "kubernetes.io/serviceaccount/namespace": "payments",
            "kubernetes.io/serviceaccount/service-account.name": "api",
        });
        sign_with(&rsa, &claims)
    };
    let hs256 = {
        let mut h = jsonwebtoken::Header::new(Algorithm::HS256);
        h.kid = Some("rsa-1".into());
        jsonwebtoken::encode(
            &h,
            &issuer.claims(&pod),
            &jsonwebtoken::EncodingKey::from_secret(rsa.public_pem.as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let none = raw_token(
        &json!({"alg": "none", "kid": "rsa-1"}),
        &issuer.claims(&pod),
        b"",
    );
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "expired",
            with(&|c| c["exp"] = json!(now - 60)),
            401,
            "(expired)",
        ),
        (
            "not yet valid",
            with(&|c| c["nbf"] = json!(now + 600)),
            401,
            "(not_yet_valid)",
        ),
        (
            "issued in the future",
            with(&|c| c["iat"] = json!(now + 600)),
            401,
            "(not_yet_valid)",
        ),
        (
            "wrong issuer",
            with(&|c| c["iss"] = json!("https://evil.example")),
            401,
            "(issuer)",
        ),
        (
            "wrong audience",
            with(&|c| c["aud"] = json!(["sts.amazonaws.com"])),
            401,
            "(audience)",
        ),
        ("bad signature", bad_sig, 401, "(signature)"),
        (
            "signed by another key with a known kid",
            sign_with(&stranger, &issuer.claims(&pod)),
            401,
            "(signature)",
        ),
        (
            "unknown kid after a refetch",
            sign_with(&unknown_kid, &issuer.claims(&pod)),
            401,
            "(unknown_kid)",
        ),
        ("alg none", none, 401, "(algorithm)"),
        ("HS256 with the public key", hs256, 401, "(algorithm)"),
        (
            "no pod binding",
            with(&|c| {
                c["kubernetes.io"].as_object_mut().unwrap().remove("pod");
            }),
            401,
            "(pod_binding)",
        ),
        (
            "another node",
            with(&|c| c["kubernetes.io"]["node"]["name"] = json!("node-b")),
            401,
            "(node)",
        ),
        (
            "no node binding while node_name is set",
            with(&|c| {
                c["kubernetes.io"].as_object_mut().unwrap().remove("node");
            }),
            401,
            "(node)",
        ),
        (
            "sub disagrees with kubernetes.io",
            with(&|c| c["sub"] = json!("system:serviceaccount:kube-system:admin")),
            401,
            "(subject)",
        ),
        ("legacy secret-based token", legacy, 401, "(legacy)"),
        (
            "malformed base64",
            "eyJhbGciOiJSUzI1NiJ9.A.abc".to_string(),
            401,
            "(malformed)",
        ),
        (
            "malformed JSON",
            format!(
                "{}.{}.{}",
                URL_SAFE_NO_PAD.encode("{\"alg\":\"RS256\""),
                URL_SAFE_NO_PAD.encode("{}"),
                URL_SAFE_NO_PAD.encode("x")
            ),
            401,
            "(malformed)",
        ),
        (
            "service account not mapped",
            issuer.token(&Pod::new("payments", "intruder", "i-1"), "rsa-1"),
            403,
            "service account payments/intruder is not allowed role \"payments\"",
        ),
    ];
    let mut secrets = Vec::new();
    for (what, token, status, needle) in &cases {
        let r = ecs(&broker, "/v1/credentials/payments", token).await;
        assert_eq!(r.status, *status, "{what}: {}", r.body);
        let code = if *status == 401 {
            "InvalidToken"
        } else {
            "AccessDenied"
        };
        if !needle.is_empty() {
            assert_eq!(r.json()["Code"], code, "{what}: {}", r.body);
            assert!(
                r.json()["Message"].as_str().unwrap().contains(needle),
                "{what}: {}",
                r.body
            );
        }
        assert!(!r.body.contains(token.as_str()), "{what}: token echoed");
        secrets.push(token.clone());
    }
    // Another role than the service account's; role-less with none or several roles.
    let r = ecs(&broker, "/v1/credentials/other", &good).await;
    assert_eq!(r.status, 403);
    let msg = r.json()["Message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("payments/api") && msg.contains("\"other\""),
        "{msg}"
    );
    let r = ecs(
        &broker,
        "/v1/credentials",
        &issuer.token(&Pod::new("nobody", "x", "n-1"), "rsa-1"),
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(
        r.body.contains("nobody/x is not allowed any role"),
        "{}",
        r.body
    );
    let r = ecs(
        &broker,
        "/v1/credentials",
        &issuer.token(&Pod::new("twins", "x", "t-1"), "rsa-1"),
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(r.body.contains("several roles"), "{}", r.body);
    // The trailing-slash path stays a 404; an unknown role with a good token is a 404.
    assert_eq!(ecs(&broker, "/v1/credentials/", &good).await.status, 404);
    assert_eq!(
        ecs(&broker, "/v1/credentials/nope", &good).await.status,
        404
    );
    // Oversize: the request head limit refuses it before any parsing.
    let huge = format!("{good}{}", "A".repeat(17 * 1024));
    assert_eq!(
        ecs(&broker, "/v1/credentials/payments", &huge).await.status,
        431
    );
    // And the good token is fine throughout.
    let r = ecs(&broker, "/v1/credentials/payments", &good).await;
    assert_eq!(r.status, 200, "{}", r.body);
    secrets.push(good);

    for reason in [
        "expired",
        "not_yet_valid",
        "issuer",
        "audience",
        "signature",
        "unknown_kid",
        "algorithm",
        "pod_binding",
        "node",
        "subject",
        "legacy",
        "malformed",
    ] {
        assert!(
            broker
                .metric(&format!(
                    "sts_broker_token_verifications_total{{outcome=\"{reason}\"}}"
                ))
                .await
                >= Some(1.0),
            "no refusal counted as {reason}"
        );
    }
    let logs = broker.logs();
    for t in &secrets {
        // Each token's signature part is unique to it; the payload of many is shared.
        let sig = t.rsplit('.').next().unwrap();
        if sig.len() > 16 {
            assert!(!logs.contains(sig), "a token reached the logs");
        }
    }
    assert!(
        logs.contains("\"service_account\":\"intruder\""),
        "refusals name the caller"
    );
}

/// In-process on a paused clock: the refetch budget (one per 10 s) and the periodic refresh
/// pass in simulated time.
#[tokio::test(start_paused = true)]
async fn api_server_jwks_over_https_survives_outages_and_follows_rotation() {
    let _clock = sts_broker::clock::follow_tokio_time();
    // Polls once a simulated second: each poll verifies (or signs) a token, real CPU.
    const SECOND: Duration = Duration::from_secs(1);
    let (logs, _logging) = crate::inproc::capture_logs();
    let sts = FakeSts::start().await;
    let issuer = TestIssuer::start().await;
    let dir = ConfigDir::new();
    let ca = dir.write("ca.crt", &issuer.ca_pem);
    let sa_token = dir.token_file("sa-token", "broker-own-sa-token-1");
    issuer.require_bearer("broker-own-sa-token-1");
    let config = k8s_config(&sts.url(), &issuer, "api_server")
        .set("kubernetes", "api_server_url", issuer.url.as_str())
        .set("kubernetes", "api_server_token_file", path_of(&sa_token))
        .set("kubernetes", "api_server_ca_file", path_of(&ca))
        .set("kubernetes", "jwks_refresh", "10s")
        .role(sa_role("payments", &["payments/api"]));
    let broker = spawn_broker(&dir, &config).await;
    let pod = Pod::new("payments", "api", "api-1");
    let r = as_pod(&broker, &issuer, "payments", &pod, "rsa-1").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        issuer
            .jwks_fetches
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1
    );

    // The broker's own token is re-read per fetch: the kubelet rotates it too.
    std::fs::write(&sa_token, "broker-own-sa-token-2").unwrap();
    issuer.require_bearer("broker-own-sa-token-2");
    // Rotation: a new key signs new tokens; the unknown kid makes the broker refetch.
    issuer.add_key("rsa-2", Algorithm::RS256);
    let rotated = issuer.token(&pod, "rsa-2");
    // The unknown kid triggers a refetch, at most one per 10 s (the first request of the
    // test may just have used that budget): SDKs retry, so does this test.
    let started = tokio::time::Instant::now();
    assert!(
        eventually_every(SECOND, Duration::from_secs(25), || async {
            ecs(&broker, "/v1/credentials/payments", &rotated)
                .await
                .status
                == 200
        })
        .await,
        "rotated key accepted without a restart"
    );
    assert!(started.elapsed() < Duration::from_secs(20));

    // The source goes down: the keys held keep verifying new tokens (static stability).
    issuer.set_down(true);
    let pod2 = Pod::new("payments", "api", "api-2");
    let r = as_pod(&broker, &issuer, "payments", &pod2, "ec-1").await;
    assert_eq!(
        r.status, 200,
        "held keys while the source is down: {}",
        r.body
    );
    // A kid nobody published is refused, after (at most) one refetch attempt.
    let stranger = crate::issuer::SigningKey::generate("ec-9", Algorithm::ES256);
    let r = ecs(
        &broker,
        "/v1/credentials/payments",
        &sign_with(&stranger, &issuer.claims(&pod2)),
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(r.body.contains("(unknown_kid)"), "{}", r.body);
    assert!(
        eventually_every(SECOND, Duration::from_secs(40), || async {
            broker
                .metric("sts_broker_jwks_fetches_total{outcome=\"error\"}")
                .await
                >= Some(1.0)
        })
        .await,
        "failed fetches are counted"
    );
    assert!(
        logs.text().contains("keeping the keys held"),
        "the outage is logged"
    );
    // Still serving a known caller during the outage.
    let r = as_pod(&broker, &issuer, "payments", &pod, "rsa-1").await;
    assert_eq!(r.status, 200);

    // Back up: the periodic refresh drops a retired key.
    issuer.remove_key("rsa-1");
    issuer.set_down(false);
    assert!(
        eventually_every(SECOND, Duration::from_secs(30), || async {
            let pod3 = Pod::new("payments", "api", &format!("p-{}", rand_suffix()));
            let mut c = issuer.claims(&pod3);
            c["jti"] = json!(rand_suffix());
            let t = sign_with(&issuer.key("rsa-2"), &c);
            ecs(&broker, "/v1/credentials/payments", &t).await.status == 200
                && broker.metric("sts_broker_jwks_keys").await == Some(2.0)
        })
        .await,
        "keys refreshed after the outage"
    );
    assert_eq!(
        issuer
            .refused_bearer
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_and_file_sources() {
    let sts = FakeSts::start().await;
    let issuer = TestIssuer::start().await;
    let dir = ConfigDir::new();
    let ca = dir.write("ca.crt", &issuer.ca_pem);
    // Discovery: https issuer → jwks_uri, trusting the test CA.
    let config = k8s_config(&sts.url(), &issuer, "discovery")
        .set("kubernetes", "discovery_ca_file", path_of(&ca))
        .role(sa_role("payments", &["payments/api"]));
    let broker = spawn_broker(&dir, &config).await;
    let pod = Pod::new("payments", "api", "api-1");
    let r = as_pod(&broker, &issuer, "payments", &pod, "ec-1").await;
    assert_eq!(r.status, 200, "discovery: {}", r.body);
    broker.shutdown().await;

    // A file: re-read when it changes (rotation with no restart, no refetch needed).
    let dir = ConfigDir::new();
    let jwks = dir.write("jwks.json", &issuer.jwks());
    let config = k8s_config(&sts.url(), &issuer, &path_of(&jwks))
        .role(sa_role("payments", &["payments/api"]));
    let broker = spawn_broker(&dir, &config).await;
    let r = as_pod(&broker, &issuer, "payments", &pod, "rsa-1").await;
    assert_eq!(r.status, 200, "file: {}", r.body);
    issuer.add_key("ec-2", Algorithm::ES256);
    issuer.remove_key("rsa-1");
    std::fs::write(&jwks, issuer.jwks()).unwrap();
    assert!(
        eventually(Duration::from_secs(15), || async {
            broker
                .metric("sts_broker_jwks_fetches_total{outcome=\"ok\"}")
                .await
                >= Some(2.0)
        })
        .await
    );
    let pod2 = Pod::new("payments", "api", "api-2");
    let r = as_pod(&broker, &issuer, "payments", &pod2, "ec-2").await;
    assert_eq!(r.status, 200, "new key from the rewritten file: {}", r.body);
    // A broken file keeps the keys held.
    std::fs::write(&jwks, "{ not json").unwrap();
    assert!(
        broker
            .wait_for_metric("sts_broker_jwks_fetches_total{outcome=\"error\"}", 1.0)
            .await
    );
    let pod3 = Pod::new("payments", "api", "api-3");
    let r = as_pod(&broker, &issuer, "payments", &pod3, "ec-2").await;
    assert_eq!(r.status, 200, "held keys with a broken file: {}", r.body);
}

/// Real time, not paused: a session's idleness is moka's `time_to_idle`, which reads moka's
/// own clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_are_dropped_and_stop_calling_sts() {
    let sts = FakeSts::start().await;
    // Credentials that live 100 s and are refreshed at 95 % of their life: a session in
    // use would call STS every ~5 s.
    sts.set_lifetime(Duration::from_secs(100));
    let issuer = TestIssuer::start().await;
    let dir = ConfigDir::new();
    let jwks = dir.write("jwks.json", &issuer.jwks());
    let config = k8s_config(&sts.url(), &issuer, &path_of(&jwks))
        .refresh("lead", "95%")
        .refresh("min_remaining", "30s")
        .set("kubernetes", "session_idle", "2s")
        .role(
            sa_role("payments", &["payments/*"])
                .set("session_scope", "pod")
                .lazy(),
        );
    let broker = spawn_broker(&dir, &config).await;
    for i in 0..3 {
        let pod = Pod::new("payments", "api", &format!("api-{i}"));
        let r = as_pod(&broker, &issuer, "payments", &pod, "ec-1").await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(
        broker
            .metric("sts_broker_caller_sessions{role=\"payments\"}")
            .await,
        Some(3.0)
    );
    // Nobody asks again: the sessions go, and with them their refreshes.
    assert!(
        eventually(Duration::from_secs(15), || async {
            broker
                .metric("sts_broker_caller_sessions{role=\"payments\"}")
                .await
                == Some(0.0)
        })
        .await,
        "idle sessions dropped"
    );
    let calls = sts.calls();
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(sts.calls(), calls, "no STS call for sessions that are gone");
    assert_eq!(
        calls, 3,
        "each session was assumed once and never refreshed"
    );
    let roles = broker.roles().await;
    assert_eq!(roles[0]["sessions"], json!(0));
    // A pod that comes back gets a new session.
    let pod = Pod::new("payments", "api", "api-0");
    let r = as_pod(&broker, &issuer, "payments", &pod, "ec-1").await;
    assert_eq!(r.status, 200);
    assert_eq!(sts.calls(), 4);
}

/// The binary, on real time: in-process, the 1,000 clients would share the broker's two
/// runtime threads, and a paused clock would skip past the kernel's SYN retransmits when the
/// listen backlog overflows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_start_burst_of_1000_tokens_in_20_service_accounts_makes_20_sts_calls() {
    let sts = FakeSts::start().await;
    sts.set_delay(Duration::from_millis(200));
    let issuer = TestIssuer::start().await;
    let dir = ConfigDir::new();
    let jwks = dir.write("jwks.json", &issuer.jwks());
    let config = k8s_config(&sts.url(), &issuer, &path_of(&jwks))
        .role(sa_role("payments", &["burst/*"]).lazy());
    let broker = start_broker(&dir, config, "info").await;
    let tokens: Vec<String> = (0..1000)
        .map(|i| {
            let pod = Pod::new("burst", &format!("sa-{}", i % 20), &format!("pod-{i}"));
            issuer.token(&pod, if i % 2 == 0 { "rsa-1" } else { "ec-1" })
        })
        .collect();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for t in tokens {
        let addr = broker.ecs;
        tasks.spawn(async move {
            request(
                addr,
                "GET",
                "/v1/credentials/payments",
                &[("Authorization", &t)],
            )
            .await
            .status
        });
    }
    let mut statuses = BTreeMap::new();
    while let Some(s) = tasks.join_next().await {
        *statuses.entry(s.unwrap()).or_insert(0) += 1;
    }
    let took = started.elapsed();
    assert_eq!(statuses, BTreeMap::from([(200, 1000)]), "all 200");
    assert_eq!(
        sts.calls_for("AssumeRole"),
        20,
        "one STS call per service account"
    );
    assert_eq!(
        broker
            .metric("sts_broker_caller_sessions{role=\"payments\"}")
            .await,
        Some(20.0)
    );
    eprintln!(
        "burst: 1000 pods / 20 service accounts: first request to last 200 in {took:?} (fake STS latency 200 ms)"
    );
}

/// Real SDKs read a projected token FILE that the test rewrites between calls (as the
/// kubelet rotates it), from the role URL and from the role-less EKS Pod Identity URL, and
/// prove the credentials on moto: the assumed-role ARN carries the session name built from
/// namespace and service account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_clients_read_a_rotating_projected_token_file() {
    let moto = Moto::start().await;
    let issuer = TestIssuer::start().await;
    let dir = ConfigDir::new();
    let jwks = dir.write("jwks.json", &issuer.jwks());
    let config = k8s_config(&moto.url, &issuer, &path_of(&jwks))
        .role(sa_role("payments", &["payments/api"]).lazy());
    let broker = start_broker(&dir, config, "info").await;
    let token_file = dir.path().join("eks-pod-identity-token");
    let mut n = 0;
    let mut rotate = || {
        n += 1;
        let pod = Pod::new("payments", "api", &format!("api-{n}"));
        // Written like the kubelet: the whole new token, no trailing newline.
        let kid = if n % 2 == 0 { "ec-1" } else { "rsa-1" };
        std::fs::write(&token_file, issuer.token(&pod, kid)).unwrap();
    };
    let expected = "arn:aws:sts::123456789012:assumed-role/payments/payments.api";
    let role_url = format!("http://{}/v1/credentials/payments", broker.ecs);
    let roleless_url = format!("http://{}/v1/credentials", broker.ecs);
    let client = |program: &std::path::Path, url: &str| {
        let mut cmd = clean_client(program, dir.path());
        cmd.env("AWS_CONTAINER_CREDENTIALS_FULL_URI", url)
            .env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", &token_file);
        cmd
    };
    // boto3, role URL.
    rotate();
    let script = "import boto3, sys\n\
                  s = boto3.session.Session()\n\
                  print(s.get_credentials().method)\n\
                  print(s.client('sts', endpoint_url=sys.argv[1]).get_caller_identity()['Arn'])\n";
    let out = run_ok(client(&venv_bin("python"), &role_url).args(["-c", script, &moto.url]));
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["container-role", expected]
    );

    // The AWS CLI, role-less URL (EKS Pod Identity shape).
    rotate();
    let out = run_ok(client(&venv_bin("aws"), &roleless_url).args([
        "sts",
        "get-caller-identity",
        "--endpoint-url",
        &moto.url,
        "--output",
        "json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["Arn"], expected, "AWS CLI via the role-less URL");

    // The JavaScript SDK v3 (fromHttp), role URL.
    rotate();
    let js = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    let mut cmd = client(std::path::Path::new("/usr/bin/node"), &role_url);
    cmd.current_dir(&js)
        .args(["client.mjs", "fromHttp", &moto.url]);
    let out = run_ok(&mut cmd);
    assert!(out.contains(&format!("ARN={expected}")), "JS: {out}");

    // aws-config's ECS provider (this test binary as a child), role-less URL.
    rotate();
    let exe = std::env::current_exe().unwrap();
    let mut cmd = client(&exe, &roleless_url);
    let out = run_ok(as_rust_child(&mut cmd, &moto.url, "ecs"));
    assert!(out.contains(&format!("ARN={expected}")), "Rust: {out}");

    // Four different pod tokens, one service account: one session, one AssumeRole.
    assert_eq!(
        broker
            .metric("sts_broker_token_verifications_total{outcome=\"ok\"}")
            .await,
        Some(4.0)
    );
    assert_eq!(
        broker
            .metric(
                "sts_broker_sts_calls_total{api=\"AssumeRole\",outcome=\"ok\",role=\"payments\"}"
            )
            .await,
        Some(1.0)
    );
}

/// `[kubernetes]` reloads (as on SIGHUP): a bad table is refused with the old one serving; a
/// good change takes effect (new keys verifier, sessions anew); `session_idle` needs a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_table_reloads_and_bad_reloads_keep_serving() {
    let (sts, issuer, dir, jwks) = cluster().await;
    let good = k8s_config(&sts.url(), &issuer, &path_of(&jwks))
        .role(sa_role("payments", &["payments/api"]));
    let broker = spawn_broker(&dir, &good).await;
    let token = issuer.token(&Pod::new("payments", "api", "api-1"), "rsa-1");
    let status = || async {
        ecs(&broker, "/v1/credentials/payments", &token)
            .await
            .status
    };
    assert_eq!(status().await, 200);

    // A broken table: every problem reported (what the log says), the old configuration
    // keeps serving.
    let bad = good.clone().set("kubernetes", "audiences", json!([]));
    let e = broker.reload(&bad).await.unwrap_err().to_string();
    assert!(e.contains("key \"audiences\""), "{e}");
    assert_eq!(broker.reloads("error").await, Some(1.0));
    assert_eq!(status().await, 200);

    // session_idle cannot change live.
    let idle = good.clone().set("kubernetes", "session_idle", "5m");
    let e = broker.reload(&idle).await.unwrap_err().to_string();
    assert!(e.contains("session_idle"), "{e}");
    assert_eq!(broker.reloads("rejected").await, Some(1.0));

    // A good change: another audience. The remembered token is not trusted blindly: the new
    // table verifies anew and refuses it.
    let other = good
        .clone()
        .set("kubernetes", "audiences", json!(["pods.eks.amazonaws.com"]));
    broker.reload(&other).await.unwrap();
    assert_eq!(broker.reloads("ok").await, Some(1.0));
    let r = ecs(&broker, "/v1/credentials/payments", &token).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("(audience)"), "{}", r.body);
    let mut claims = issuer.claims(&Pod::new("payments", "api", "api-1"));
    claims["aud"] = json!(["pods.eks.amazonaws.com"]);
    let eks = issuer.sign(&claims, "ec-1");
    let r = ecs(&broker, "/v1/credentials/payments", &eks).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Sessions started anew with the new table: a second AssumeRole for the same caller.
    let caller_calls = sts
        .requests()
        .iter()
        .filter(|r| r.param("RoleSessionName") == Some("payments.api"))
        .count();
    assert_eq!(caller_calls, 2);
}

/// Memory of pod-scope sessions: each holds its verified token, a slot, a derived config, the
/// rendered credentials and a refresh task. Measured here at 2,000 sessions against a bound
/// (debug build); `bench/k8s.sh` measures 10,000 with the release build (BENCHMARKS.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_scope_sessions_stay_within_a_memory_bound() {
    const WARM: usize = 100;
    const N: usize = 2_000;
    const BOUND_PER_SESSION: u64 = 16 * 1024;
    let (sts, issuer, dir, jwks) = cluster().await;
    let config = k8s_config(&sts.url(), &issuer, &path_of(&jwks))
        .sts("max_calls_per_second", 5000)
        .role(
            sa_role("pods", &["mem/*"])
                .set("session_scope", "pod")
                .lazy(),
        );
    let broker = start_broker(&dir, config, "warn,sts_broker=info").await;
    let tokens: Vec<String> = (0..WARM + N)
        .map(|i| {
            issuer.token(
                &Pod::new("mem", &format!("sa-{}", i % 20), &format!("p-{i}")),
                "ec-1",
            )
        })
        .collect();
    let send = |batch: Vec<String>| async {
        let limit = Arc::new(tokio::sync::Semaphore::new(64));
        let mut tasks = tokio::task::JoinSet::new();
        for t in batch {
            let (addr, limit) = (broker.ecs, Arc::clone(&limit));
            tasks.spawn(async move {
                let _permit = limit.acquire().await.unwrap();
                request(
                    addr,
                    "GET",
                    "/v1/credentials/pods",
                    &[("Authorization", &t)],
                )
                .await
                .status
            });
        }
        let mut ok = 0;
        while let Some(s) = tasks.join_next().await {
            ok += usize::from(s.unwrap() == 200);
        }
        ok
    };
    assert_eq!(send(tokens[..WARM].to_vec()).await, WARM);
    let before = broker.rss_kib();
    assert_eq!(send(tokens[WARM..].to_vec()).await, N);
    let after = broker.rss_kib();
    assert_eq!(
        broker
            .metric("sts_broker_caller_sessions{role=\"pods\"}")
            .await,
        Some((WARM + N) as f64)
    );
    assert_eq!(sts.calls_for("AssumeRole"), WARM + N);
    let per_session = (after.saturating_sub(before) * 1024) / N as u64;
    eprintln!("{N} pod sessions: RSS {before} KiB -> {after} KiB, {per_session} bytes per session");
    assert!(
        per_session < BOUND_PER_SESSION,
        "{per_session} bytes per session (bound {BOUND_PER_SESSION})"
    );
}
