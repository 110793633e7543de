//! No secret reaches logs (even at `RUST_LOG=trace`), metrics, `/v1/roles` or error bodies.

use std::time::Duration;

use crate::fake_sts::{FakeSts, Scenario};
use crate::helpers::*;

const MARKER: &str = "SECRETMARKER";

#[tokio::test]
async fn no_secret_in_trace_logs_metrics_status_or_errors() {
    // Secrets everywhere: STS-issued keys and tokens, the external ID, client tokens.
    let sts = FakeSts::start().await;
    sts.set_secret_marker(MARKER);
    let dir = ConfigDir::new();
    let token_file = dir.token_file("app.token", &format!("{MARKER}-file-token-0123"));
    let config = config_head(&sts.url())
        + &format!(
            "\n[[role]]\nname = \"app\"\narn = \"arn:aws:iam::123456789012:role/app\"\nexternal_id = \"{MARKER}-external-id\"\ntoken_files = [{:?}]\ntokens = [\"{MARKER}-inline-token\"]\n",
            token_file.display().to_string()
        )
        + &format!(
            "\n[[role]]\nname = \"other\"\narn = \"arn:aws:iam::123456789012:role/other\"\ntokens = [\"other-token-0123456789\"]\nrelative_uri_id = \"{MARKER}-relative-uri-id\"\n"
        );
    let broker = TestBroker::start_with_log(&dir, &config, "trace").await;
    broker.wait_ready(Duration::from_secs(10)).await;

    // The credentials do go to an authorised client …
    let ok = broker
        .ecs_get("app", Some(&format!("{MARKER}-file-token-0123")))
        .await;
    assert_eq!(ok.status, 200);
    assert!(
        ok.body.contains(MARKER),
        "the marker really is in the secrets"
    );
    let sent = sts
        .requests()
        .into_iter()
        .find(|r| r.param("RoleArn") == Some("arn:aws:iam::123456789012:role/app"))
        .unwrap();
    assert!(sent.param("ExternalId").unwrap().contains(MARKER));

    // … and nowhere else.
    let mut leaks = Vec::new();
    let mut check = |what: &str, text: &str| {
        if text.contains(MARKER) {
            leaks.push(format!("{what}: {text}"));
        }
    };
    for (docs, token) in [
        ("wrong token", format!("{MARKER}-wrong-token")),
        ("other role's token", "other-token-0123456789".to_string()),
        ("inline token", format!("{MARKER}-inline-token")),
    ] {
        let r = broker.ecs_get("app", Some(&token)).await;
        if docs != "inline token" {
            check(docs, &r.body);
        }
    }
    let r = broker
        .ecs_get("nope", Some(&format!("{MARKER}-inline-token")))
        .await;
    check("unknown role", &r.body);
    // The relative-URI path id is a secret too: served, probed, never echoed or logged.
    let r = request(
        broker.ecs,
        "GET",
        &format!("/v2/credentials/{MARKER}-relative-uri-id"),
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    let r = request(
        broker.ecs,
        "GET",
        &format!("/v2/credentials/{MARKER}-relative-uri-ix"),
        &[],
    )
    .await;
    assert_eq!(r.status, 404);
    check("a probed relative URI", &r.body);
    sts.set_scenario(Scenario::Truncated);
    let r = broker.admin_post("/v1/roles/other/refresh").await;
    assert_eq!(r.status, 503);
    check("503 after a truncated STS answer", &r.body);
    sts.set_scenario(Scenario::Ok);
    check("/v1/roles", &broker.admin_get("/v1/roles").await.body);
    check("/metrics", &broker.admin_get("/metrics").await.body);
    check("/readyz", &broker.admin_get("/readyz").await.body);
    // Let the log reader catch up, then read every line the broker wrote at trace level.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = broker.logs();
    assert!(
        logs.lines().count() > 10,
        "trace logging produced output:\n{logs}"
    );
    assert!(logs.contains("credentials refreshed"), "{logs}");
    check("logs", &logs);
    // The AWS SDK and HTTP stack log bodies at debug/trace: their targets are capped at info.
    let chatty: Vec<String> = broker
        .log_events()
        .iter()
        .filter(|e| matches!(e["level"].as_str(), Some("DEBUG" | "TRACE")))
        .filter_map(|e| e["target"].as_str().map(str::to_string))
        .filter(|t| t.starts_with("aws_") || t.starts_with("hyper"))
        .collect();
    assert!(
        chatty.is_empty(),
        "SDK debug/trace output was not capped: {chatty:?}"
    );
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
}

/// Service-account tokens (bearer credentials of the pods) and the credentials of caller
/// sessions stay out of trace logs, metrics, `/v1/roles` and the audit trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_service_account_token_or_session_secret_anywhere() {
    use crate::issuer::{Pod, TestIssuer};
    use crate::k8s::{ecs, k8s_config, sa_role, start_broker};
    let sts = FakeSts::start().await;
    sts.set_secret_marker(MARKER);
    let issuer = TestIssuer::start().await;
    let dir = ConfigDir::new();
    let jwks = dir.write("jwks.json", &issuer.jwks());
    let audit = dir.path().join("audit.jsonl");
    let config = k8s_config(&sts.url(), &issuer, &jwks.display().to_string())
        .role(sa_role("app", &["ns/sa"]).set("session_scope", "pod"))
        .audit(&audit);
    let broker = start_broker(&dir, config, "trace").await;
    let good = issuer.token(&Pod::new("ns", "sa", "p-1"), "rsa-1");
    let r = ecs(&broker, "/v1/credentials/app", &good).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains(MARKER));
    let mut expired = issuer.claims(&Pod::new("ns", "sa", "p-2"));
    expired["exp"] = serde_json::json!(1);
    let refused = issuer.sign(&expired, "ec-1");
    assert_eq!(
        ecs(&broker, "/v1/credentials/app", &refused).await.status,
        401
    );
    let wrong_role = issuer.token(&Pod::new("other", "sa", "p-3"), "rsa-1");
    assert_eq!(
        ecs(&broker, "/v1/credentials/app", &wrong_role)
            .await
            .status,
        403
    );
    tokio::time::sleep(Duration::from_millis(1500)).await; // audit flush

    let metrics = broker.admin_get("/metrics").await.body;
    let roles = broker.admin_get("/v1/roles").await.body;
    let trail = std::fs::read_to_string(&audit).unwrap();
    let logs = broker.logs();
    for (what, text) in [
        ("logs", &logs),
        ("metrics", &metrics),
        ("/v1/roles", &roles),
        ("audit", &trail),
    ] {
        assert!(!text.contains(MARKER), "session secret in {what}");
        for t in [&good, &refused, &wrong_role] {
            let sig = t.rsplit('.').next().unwrap();
            assert!(!text.contains(sig), "a token in {what}");
            let payload = t.split('.').nth(1).unwrap();
            assert!(!text.contains(payload), "a token's claims part in {what}");
        }
    }
    assert!(trail.contains("\"pod\":\"p-1\""), "the caller is audited");
}
