//! The ECS endpoint: what reaches STS, status codes, error bodies, single-flight.

use std::time::{Duration, Instant};

use crate::fake_sts::FakeSts;
use crate::helpers::*;
use crate::inproc::spawn_broker;
use crate::test_config::{Role, TestConfig};

#[tokio::test]
async fn every_assume_role_parameter_reaches_sts() {
    // Arrange
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let extra = r#"
session_name = "app-{hostname}"
external_id = "ext-id-123"
duration = "2h"
tags = { team = "payments", env = "prod" }
transitive_tag_keys = ["team"]
policy_arns = ["arn:aws:iam::aws:policy/ReadOnlyAccess", "arn:aws:iam::123456789012:policy/extra"]
policy = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}]}'
source_identity = "alice@example.com"
"#;
    let config = config_head(&sts.url()) + &role("app", extra);

    // Act
    let broker = TestBroker::start(&dir, &config).await;
    broker.wait_ready(Duration::from_secs(10)).await;

    // Assert
    let reqs = sts.requests();
    assert_eq!(
        reqs.len(),
        1,
        "exactly one AssumeRole at start-up: {reqs:#?}"
    );
    let r = &reqs[0];
    let host = gethostname();
    assert_eq!(r.action, "AssumeRole");
    assert_eq!(
        r.signed_with.as_deref(),
        Some(SOURCE_KEY_ID),
        "signed with the source credentials"
    );
    let expected = [
        ("RoleArn", "arn:aws:iam::123456789012:role/app".to_string()),
        ("RoleSessionName", format!("app-{host}").chars().take(64).collect()),
        ("ExternalId", "ext-id-123".into()),
        ("DurationSeconds", "7200".into()),
        ("Tags.member.1.Key", "env".into()),
        ("Tags.member.1.Value", "prod".into()),
        ("Tags.member.2.Key", "team".into()),
        ("Tags.member.2.Value", "payments".into()),
        ("TransitiveTagKeys.member.1", "team".into()),
        ("PolicyArns.member.1.arn", "arn:aws:iam::aws:policy/ReadOnlyAccess".into()),
        ("PolicyArns.member.2.arn", "arn:aws:iam::123456789012:policy/extra".into()),
        (
            "Policy",
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}]}"#.into(),
        ),
        ("SourceIdentity", "alice@example.com".into()),
    ];
    for (k, v) in expected {
        assert_eq!(
            r.param(k),
            Some(v.as_str()),
            "parameter {k}: {:#?}",
            r.params
        );
    }
}

fn gethostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

#[tokio::test]
async fn status_codes_and_error_bodies() {
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let config = TestConfig::new(&sts.url())
        .role(Role::new("app"))
        .role(Role::new("other").tokens(&["other-token-0123456789"]));
    let broker = spawn_broker(&dir, &config).await;
    broker.wait_ready(Duration::from_secs(10)).await;

    // 200: the full ECS body.
    let ok = broker.ecs_get("app", Some(TOKEN)).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.header("content-type"), Some("application/json"));
    let v = ok.json();
    assert!(
        v["AccessKeyId"].as_str().unwrap().starts_with("ASIAFAKE"),
        "{v}"
    );
    assert_fake_secrets(&v, "Token");
    assert_eq!(v["RoleArn"], "arn:aws:iam::123456789012:role/app");
    assert_eq!(v["AccountId"], "123456789012");
    let exp = v["Expiration"].as_str().unwrap();
    assert_eq!(exp.len(), 20, "YYYY-MM-DDTHH:MM:SSZ: {exp}");
    assert!(exp.ends_with('Z') && exp.as_bytes()[10] == b'T', "{exp}");
    humantime::parse_rfc3339(exp).unwrap();

    // (docs, method, path, headers, status, Code)
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "no token",
            "GET",
            "/v1/credentials/app",
            vec![],
            401,
            "Unauthorized",
        ),
        (
            "unknown token",
            "GET",
            "/v1/credentials/app",
            vec![("Authorization", "nope")],
            401,
            "Unauthorized",
        ),
        (
            "Bearer prefix is not the raw token",
            "GET",
            "/v1/credentials/app",
            vec![("Authorization", "Bearer client-token-0123456789abcdef")],
            401,
            "Unauthorized",
        ),
        (
            "token of another role",
            "GET",
            "/v1/credentials/app",
            vec![("Authorization", "other-token-0123456789")],
            403,
            "AccessDenied",
        ),
        (
            "unknown role",
            "GET",
            "/v1/credentials/nope",
            vec![("Authorization", TOKEN)],
            404,
            "NotFound",
        ),
        (
            "unknown role, bad token: 401 first",
            "GET",
            "/v1/credentials/nope",
            vec![("Authorization", "x")],
            401,
            "Unauthorized",
        ),
        (
            "trailing segment",
            "GET",
            "/v1/credentials/app/x",
            vec![("Authorization", TOKEN)],
            404,
            "NotFound",
        ),
        (
            "dot-dot",
            "GET",
            "/v1/credentials/../credentials/app",
            vec![("Authorization", TOKEN)],
            404,
            "NotFound",
        ),
        (
            "encoded slash",
            "GET",
            "/v1/credentials/..%2Fapp",
            vec![("Authorization", TOKEN)],
            404,
            "NotFound",
        ),
        (
            "empty role",
            "GET",
            "/v1/credentials/",
            vec![("Authorization", TOKEN)],
            404,
            "NotFound",
        ),
        (
            "other path",
            "GET",
            "/latest/meta-data/",
            vec![("Authorization", TOKEN)],
            404,
            "NotFound",
        ),
        (
            "wrong method",
            "POST",
            "/v1/credentials/app",
            vec![("Authorization", TOKEN)],
            405,
            "MethodNotAllowed",
        ),
        (
            "DNS rebinding host",
            "GET",
            "/v1/credentials/app",
            vec![("Authorization", TOKEN), ("Host", "evil.example.com")],
            403,
            "InvalidHost",
        ),
    ];
    for (docs, method, path, headers, status, code) in cases {
        let r = request(broker.ecs, method, path, &headers).await;
        assert_eq!(r.status, status, "{docs}: {}", r.body);
        let v = r.json();
        assert_eq!(v["Code"], code, "{docs}: {v}");
        assert!(
            v["Message"].as_str().is_some_and(|m| !m.is_empty()),
            "{docs}: {v}"
        );
    }
    // Allowed hosts: localhost and IP literals.
    for host in ["localhost", "localhost:1234", "127.0.0.1", "[::1]:80"] {
        let r = request(
            broker.ecs,
            "GET",
            "/v1/credentials/app",
            &[("Authorization", TOKEN), ("Host", host)],
        )
        .await;
        assert_eq!(r.status, 200, "Host {host}: {}", r.body);
    }
    // A header section larger than the limit: 431.
    let big = "x".repeat(20_000);
    let r = request(
        broker.ecs,
        "GET",
        "/v1/credentials/app",
        &[("Authorization", TOKEN), ("X-Pad", &big)],
    )
    .await;
    assert_eq!(r.status, 431);

    // Requests are counted by role and status; unknown roles never become a label.
    assert_eq!(
        broker
            .metric("sts_broker_requests_total{endpoint=\"ecs\",role=\"app\",status=\"200\"}")
            .await,
        Some(5.0)
    );
    assert_eq!(
        broker
            .metric("sts_broker_requests_total{endpoint=\"ecs\",role=\"app\",status=\"403\"}")
            .await,
        Some(1.0)
    );
    let metrics = broker.admin_get("/metrics").await.body;
    assert!(!metrics.contains("role=\"nope\""), "{metrics}");
}

#[tokio::test]
async fn concurrent_cold_requests_cause_one_sts_call() {
    let sts = FakeSts::start().await;
    sts.set_delay(Duration::from_millis(400));
    let dir = ConfigDir::new();
    let config = TestConfig::new(&sts.url()).role(Role::new("lazy").lazy());
    let broker = spawn_broker(&dir, &config).await;
    // Nothing prefetched: ready at once, no STS call yet.
    broker.wait_ready(Duration::from_secs(5)).await;
    assert_eq!(sts.calls(), 0);

    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let addr = broker.ecs;
        tasks.push(tokio::spawn(async move {
            request(
                addr,
                "GET",
                "/v1/credentials/lazy",
                &[("Authorization", TOKEN)],
            )
            .await
        }));
    }
    let mut keys = std::collections::HashSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        keys.insert(r.json()["AccessKeyId"].as_str().unwrap().to_string());
    }
    let took = started.elapsed();
    assert_eq!(sts.calls(), 1, "200 cold requests, one STS call");
    assert_eq!(keys.len(), 1, "everyone got the same credentials");
    eprintln!("200 concurrent cold requests answered in {took:?} (STS latency 400 ms), 1 STS call");
    // The role is kept warm from now on.
    assert_eq!(broker.role_status("lazy").await["servable"], true);
}
