//! The IMDSv2-compatible endpoint, on the wire.

use std::time::Duration;

use serde_json::Value;

use crate::fake_sts::{FakeSts, Scenario};
use crate::helpers::*;
use crate::inproc::{InProcBroker, spawn_broker};
use crate::test_config::{Role, TestConfig};

const TTL: &str = "X-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";
const CREDS: &str = "/latest/meta-data/iam/security-credentials";

/// Roles `app` (served on IMDS) and `other`, `[imds]` on loopback with `max_token_ttl = "1h"`
/// plus `imds_extra`.
fn config(sts: &FakeSts, imds_extra: &[(&str, Value)]) -> TestConfig {
    let mut keys = vec![("role", "app".into()), ("max_token_ttl", "1h".into())];
    keys.extend(imds_extra.iter().cloned());
    TestConfig::new(&sts.url())
        .role(Role::new("app"))
        .role(Role::new("other"))
        .imds(&keys)
}

async fn start(sts: &FakeSts, dir: &ConfigDir, imds_extra: &[(&str, Value)]) -> InProcBroker {
    let broker = spawn_broker(dir, &config(sts, imds_extra)).await;
    broker.wait_ready(Duration::from_secs(10)).await;
    broker
}

#[tokio::test]
async fn token_ttl_rules_and_x_forwarded_for() {
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let broker = start(&sts, &dir, &[]).await;

    // (docs, TTL header, status, granted TTL echoed)
    let cases = [
        ("missing", None, 400, None),
        ("zero", Some("0"), 400, None),
        ("too large", Some("21601"), 400, None),
        ("not a number", Some("abc"), 400, None),
        ("negative", Some("-5"), 400, None),
        ("one second", Some("1"), 200, Some("1")),
        (
            "capped by max_token_ttl (1h)",
            Some("21600"),
            200,
            Some("3600"),
        ),
        ("within the cap", Some("300"), 200, Some("300")),
    ];
    for (docs, ttl, status, granted) in cases {
        let headers: Vec<(&str, &str)> = ttl.map(|t| (TTL, t)).into_iter().collect();
        let r = broker
            .imds_request("PUT", "/latest/api/token", &headers)
            .await;
        assert_eq!(r.status, status, "{docs}: {}", r.body);
        assert_eq!(r.header(TTL), granted, "{docs}");
        if status == 200 {
            assert_eq!(r.header("content-type"), Some("text/plain"));
            assert!(
                !r.body.is_empty() && !r.body.contains('\n'),
                "{docs}: {:?}",
                r.body
            );
        }
    }
    // A proxy relaying the request: refused, for PUT and GET.
    let r = broker
        .imds_request(
            "PUT",
            "/latest/api/token",
            &[(TTL, "60"), ("X-Forwarded-For", "10.0.0.1")],
        )
        .await;
    assert_eq!(r.status, 403);
    let token = broker.imds_token("60").await;
    let r = broker
        .imds_request(
            "GET",
            CREDS,
            &[(TOKEN_HEADER, &token), ("X-Forwarded-For", "10.0.0.1")],
        )
        .await;
    assert_eq!(r.status, 403);
    // GET on the token path: 405.
    assert_eq!(
        broker
            .imds_request("GET", "/latest/api/token", &[])
            .await
            .status,
        405
    );
}

#[tokio::test]
async fn credentials_paths_with_a_valid_token() {
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let broker = start(&sts, &dir, &[]).await;
    let token = broker.imds_token("21600").await;
    let t = [(TOKEN_HEADER, token.as_str())];

    for path in [CREDS.to_string(), format!("{CREDS}/")] {
        let r = broker.imds_request("GET", &path, &t).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.body, "app", "{path}: exactly the role name, no newline");
    }
    let ecs_key = broker.ecs_get("app", Some(TOKEN)).await.json()["AccessKeyId"].clone();
    for path in [format!("{CREDS}/app"), format!("{CREDS}/app/")] {
        let r = broker.imds_request("GET", &path, &t).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let v = r.json();
        assert_eq!(v["Code"], "Success");
        assert_eq!(v["Type"], "AWS-HMAC");
        assert_eq!(v["AccessKeyId"], ecs_key, "same cache as ECS");
        assert_fake_secrets(&v, "Token");
        for k in ["LastUpdated", "Expiration"] {
            let ts = v[k].as_str().unwrap();
            assert!(ts.len() == 20 && ts.ends_with('Z'), "{k}: {ts}");
        }
        assert!(v.get("AccountId").is_none(), "{v}");
    }
    let r = broker
        .imds_request(
            "GET",
            "/latest/meta-data/iam/security-credentials-extended/app",
            &t,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["AccountId"], "123456789012");

    let info = broker
        .imds_request("GET", "/latest/meta-data/iam/info", &t)
        .await;
    assert_eq!(info.status, 200);
    let v = info.json();
    assert_eq!(v["Code"], "Success");
    assert_eq!(
        v["InstanceProfileArn"],
        "arn:aws:iam::123456789012:instance-profile/app"
    );
    assert!(v["InstanceProfileId"].as_str().unwrap().starts_with("AIPA"));

    // With a valid token, everything else is 404 (SDK probes fall through fast).
    for path in [
        format!("{CREDS}/other"),
        format!("{CREDS}/nope"),
        format!("{CREDS}/app/extra"),
        "/latest/meta-data/iam/security-credentials-extended/other".to_string(),
        "/latest/meta-data/placement/region".to_string(),
        "/latest/meta-data/instance-id".to_string(),
        "/latest/dynamic/instance-identity/document".to_string(),
        "/".to_string(),
    ] {
        let r = broker.imds_request("GET", &path, &t).await;
        assert_eq!(r.status, 404, "{path}: {}", r.body);
    }
    assert_eq!(
        broker
            .imds_request("POST", &format!("{CREDS}/app"), &t)
            .await
            .status,
        405
    );
    assert_eq!(
        broker
            .imds_request(
                "GET",
                "/latest/meta-data/iam/info",
                &[("Host", "evil.example")]
            )
            .await
            .status,
        403
    );
    assert!(
        broker
            .metric("sts_broker_requests_total{endpoint=\"imds\",role=\"app\",status=\"200\"}")
            .await
            .unwrap()
            >= 6.0
    );
}

/// On a paused clock: the 1-second token expires in simulated time.
#[tokio::test(start_paused = true)]
async fn missing_forged_and_expired_tokens_get_401() {
    let _clock = sts_broker::clock::follow_tokio_time();
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let broker = start(&sts, &dir, &[]).await;
    let path = format!("{CREDS}/app");
    assert_eq!(
        broker.imds_request("GET", &path, &[]).await.status,
        401,
        "IMDSv1 is off"
    );
    let forged = "0".repeat(48);
    assert_eq!(
        broker
            .imds_request("GET", &path, &[(TOKEN_HEADER, &forged)])
            .await
            .status,
        401
    );
    assert_eq!(
        broker
            .imds_request(
                "GET",
                "/latest/meta-data/instance-id",
                &[(TOKEN_HEADER, "x")]
            )
            .await
            .status,
        401
    );
    let short = broker.imds_token("1").await;
    assert_eq!(
        broker
            .imds_request("GET", &path, &[(TOKEN_HEADER, &short)])
            .await
            .status,
        200
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        broker
            .imds_request("GET", &path, &[(TOKEN_HEADER, &short)])
            .await
            .status,
        401,
        "expired"
    );
}

#[tokio::test]
async fn allow_v1_serves_without_a_token() {
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let broker = start(&sts, &dir, &[("allow_v1", true.into())]).await;
    let r = broker
        .imds_request("GET", &format!("{CREDS}/app"), &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["Code"], "Success");
}

#[tokio::test]
async fn imds_min_remaining_is_stricter_than_ecs() {
    // 20 s credentials: ECS serves them (min_remaining 1 s), IMDS (min_remaining 30 s) does not.
    let sts = FakeSts::start().await;
    sts.set_lifetime(Duration::from_secs(20));
    let dir = ConfigDir::new();
    let config = TestConfig::new(&sts.url())
        .refresh("lead", "50%")
        .refresh("min_remaining", "1s")
        .role(Role::new("app"))
        .imds(&[
            ("role", "app".into()),
            ("max_token_ttl", "1h".into()),
            ("min_remaining", "10m".into()),
        ]);
    let broker = spawn_broker(&dir, &config).await;
    // Not "ready": the IMDS role is below the IMDS floor (issue 12), though ECS can answer.
    assert!(
        eventually(Duration::from_secs(10), || async {
            broker.ecs_get("app", Some(TOKEN)).await.status == 200
        })
        .await
    );
    assert_eq!(broker.admin_get("/readyz").await.status, 503);
    sts.set_scenario(Scenario::Throttle);
    assert_eq!(broker.ecs_get("app", Some(TOKEN)).await.status, 200);
    let token = broker.imds_token("60").await;
    let r = broker
        .imds_request("GET", &format!("{CREDS}/app"), &[(TOKEN_HEADER, &token)])
        .await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(!r.body.contains("fake-secret"));
}

#[tokio::test]
async fn a_flood_of_token_requests_leaves_memory_flat() {
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    // The binary: its resident set is what is measured.
    let broker = TestBroker::start(&dir, &config(&sts, &[]).render()).await;
    broker.wait_ready(Duration::from_secs(10)).await;
    let addr = broker.imds.unwrap();
    let flood = |n: usize| async move {
        let mut tasks = Vec::new();
        for _ in 0..8 {
            tasks.push(tokio::spawn(async move {
                for _ in 0..n / 8 {
                    let r = request(addr, "PUT", "/latest/api/token", &[(TTL, "21600")]).await;
                    assert_eq!(r.status, 200);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    };
    flood(2_000).await; // warm up allocator and connection buffers
    let before = broker.rss_kib();
    flood(10_000).await;
    let after = broker.rss_kib();
    eprintln!("RSS before {before} KiB, after 10k token PUTs {after} KiB");
    assert!(
        after < before + 4 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    // Valid clients are still served.
    let token = broker.imds_token("60").await;
    let r = broker
        .imds_request("GET", &format!("{CREDS}/app"), &[(TOKEN_HEADER, &token)])
        .await;
    assert_eq!(r.status, 200);
}
