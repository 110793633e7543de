//! Refresh ahead of expiry, serving through STS outages, min_remaining, back-off, and the
//! classification of STS failures.

use std::time::Duration;

use crate::fake_sts::{FakeSts, Scenario};
use crate::helpers::*;

/// A config head with a custom `[refresh]` table.
fn head_with_refresh(sts_url: &str, refresh: &str) -> String {
    let head = config_head(sts_url);
    let start = head.find("[refresh]").unwrap();
    let end = head.find("[ecs]").unwrap();
    format!("{}[refresh]\n{refresh}\n{}", &head[..start], &head[end..])
}

async fn served_key(broker: &TestBroker, role: &str) -> String {
    let r = broker.ecs_get(role, Some(TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["AccessKeyId"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn credentials_are_refreshed_ahead_of_expiry() {
    // STS issues 200 s credentials; lead 99% → refresh about 2 s after each issue.
    let sts = FakeSts::start().await;
    sts.set_lifetime(Duration::from_secs(200));
    let dir = ConfigDir::new();
    let config = head_with_refresh(
        &sts.url(),
        "lead = \"99%\"\nmin_remaining = \"1s\"\njitter = \"0s\"\nbackoff_min = \"100ms\"\nbackoff_max = \"1s\"",
    ) + &role("app", "");
    let broker = TestBroker::start(&dir, &config).await;
    broker.wait_ready(Duration::from_secs(10)).await;
    let first = served_key(&broker, "app").await;

    assert!(
        sts.wait_for_calls(3, Duration::from_secs(15)).await,
        "refreshes happen ahead of expiry"
    );
    let later = served_key(&broker, "app").await;
    assert_ne!(first, later, "the refreshed credentials are served");
    // No client ever waited: every request was answered from the cache.
    let status = broker.role_status("app").await;
    assert_eq!(status["consecutive_failures"], 0);
    assert!(status["last_refresh"].is_string());
}

#[tokio::test]
async fn an_outage_serves_the_last_good_credentials_then_recovers() {
    let sts = FakeSts::start().await;
    sts.set_lifetime(Duration::from_secs(200));
    let dir = ConfigDir::new();
    let config = head_with_refresh(
        &sts.url(),
        "lead = \"99%\"\nmin_remaining = \"1s\"\njitter = \"0s\"\nbackoff_min = \"100ms\"\nbackoff_max = \"500ms\"",
    ) + &role("app", "");
    let broker = TestBroker::start(&dir, &config).await;
    broker.wait_ready(Duration::from_secs(10)).await;
    let good = served_key(&broker, "app").await;

    // STS goes down; slow too, to prove warm requests never wait for it.
    sts.set_scenario(Scenario::ServiceUnavailable);
    sts.set_delay(Duration::from_millis(300));
    let before = sts.calls();
    assert!(
        sts.wait_for_calls(before + 3, Duration::from_secs(15))
            .await,
        "refresh retried"
    );
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let t = std::time::Instant::now();
        assert_eq!(
            served_key(&broker, "app").await,
            good,
            "stale but valid credentials are served"
        );
        slowest = slowest.max(t.elapsed());
    }
    eprintln!("slowest warm request while STS was failing slowly: {slowest:?}");
    let status = broker.role_status("app").await;
    assert!(
        status["consecutive_failures"].as_u64().unwrap() >= 2,
        "{status}"
    );
    assert_eq!(status["last_error"]["class"], "transient", "{status}");
    assert_eq!(
        status["last_error"]["code"], "ServiceUnavailable",
        "{status}"
    );
    assert_eq!(status["servable"], true);
    let failures = broker
        .metric("sts_broker_refresh_consecutive_failures{role=\"app\"}")
        .await
        .unwrap();
    assert!(failures >= 2.0, "{failures}");
    assert_eq!(
        broker.admin_get("/readyz").await.status,
        200,
        "still ready while credentials last"
    );

    // STS recovers: new credentials are served and the failure count resets.
    sts.set_scenario(Scenario::Ok);
    sts.set_delay(Duration::ZERO);
    let recovered = eventually(Duration::from_secs(10), || async {
        served_key(&broker, "app").await != good
    })
    .await;
    assert!(
        recovered,
        "new credentials after recovery:\n{}",
        broker.logs()
    );
    let ok = eventually(Duration::from_secs(5), || async {
        broker.role_status("app").await["consecutive_failures"] == 0
    })
    .await;
    assert!(ok);
    assert!(
        broker
            .metric(
                "sts_broker_sts_calls_total{api=\"AssumeRole\",outcome=\"transient\",role=\"app\"}"
            )
            .await
            .unwrap()
            >= 2.0
    );
}

#[tokio::test]
async fn below_min_remaining_clients_get_503_not_stale_credentials() {
    let sts = FakeSts::start().await;
    // 6 s credentials, min_remaining 3 s: servable for 3 s after issue.
    sts.set_lifetime(Duration::from_secs(6));
    let dir = ConfigDir::new();
    let config = head_with_refresh(
        &sts.url(),
        "lead = \"50%\"\nmin_remaining = \"3s\"\njitter = \"0s\"\nbackoff_min = \"200ms\"\nbackoff_max = \"1s\"",
    ) + &role("app", "");
    let broker = TestBroker::start(&dir, &config).await;
    broker.wait_ready(Duration::from_secs(10)).await;
    served_key(&broker, "app").await;

    sts.set_scenario(Scenario::Throttle);
    let unavailable = eventually(Duration::from_secs(8), || async {
        broker.ecs_get("app", Some(TOKEN)).await.status == 503
    })
    .await;
    assert!(unavailable, "503 once the credentials reach min_remaining");
    let r = broker.ecs_get("app", Some(TOKEN)).await;
    let v = r.json();
    assert_eq!(v["Code"], "CredentialsUnavailable");
    let msg = v["Message"].as_str().unwrap();
    assert!(
        msg.contains("throttled") && msg.contains("a retry may succeed"),
        "{msg}"
    );
    assert!(!r.body.contains("fake-secret"), "{}", r.body);
    assert_eq!(
        broker.admin_get("/readyz").await.status,
        503,
        "not ready without servable credentials"
    );

    sts.set_scenario(Scenario::Ok);
    let back = eventually(Duration::from_secs(8), || async {
        broker.ecs_get("app", Some(TOKEN)).await.status == 200
    })
    .await;
    assert!(back, "served again after STS recovers");
}

#[tokio::test]
async fn access_denied_backs_off_to_the_cap_without_hammering() {
    let sts = FakeSts::start().await;
    sts.set_scenario(Scenario::AccessDenied);
    let dir = ConfigDir::new();
    let config = head_with_refresh(
        &sts.url(),
        "lead = \"40m\"\nmin_remaining = \"15m\"\njitter = \"0s\"\nbackoff_min = \"50ms\"\nbackoff_max = \"4s\"",
    ) + &role("app", "");
    let broker = TestBroker::start(&dir, &config).await;
    assert!(sts.wait_for_calls(1, Duration::from_secs(5)).await);

    // Clients keep asking; the back-off gate answers without calling STS.
    for _ in 0..50 {
        let r = broker.ecs_get("app", Some(TOKEN)).await;
        assert_eq!(r.status, 503);
        let msg = r.json()["Message"].as_str().unwrap().to_string();
        assert!(
            msg.contains("access_denied") && msg.contains("retrying will not help"),
            "{msg}"
        );
    }
    assert_eq!(
        sts.calls(),
        1,
        "one call per backoff_max (4 s), not one per request"
    );
    let status = broker.role_status("app").await;
    assert_eq!(status["last_error"]["class"], "access_denied", "{status}");
    assert_eq!(status["last_error"]["retryable"], false, "{status}");
    assert_eq!(broker.admin_get("/readyz").await.status, 503);
    assert!(
        sts.wait_for_calls(2, Duration::from_secs(15)).await,
        "retried after backoff_max:\n{}",
        broker.logs()
    );
}

#[tokio::test]
async fn every_kind_of_sts_failure_is_classified() {
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let config = config_head(&sts.url()) + &role("app", "prefetch = false");
    let broker = TestBroker::start(&dir, &config).await;
    // (scenario, class, fragment of the message)
    let cases = [
        (Scenario::Throttle, "throttled", "Throttling"),
        (Scenario::ServerError, "transient", "InternalFailure"),
        (
            Scenario::ServiceUnavailable,
            "transient",
            "ServiceUnavailable",
        ),
        (Scenario::AccessDenied, "access_denied", "not authorized"),
        (Scenario::MalformedXml, "transient", ""),
        (Scenario::Truncated, "transient", "could not be read"),
        (Scenario::Reset, "transient", "connection"),
        (Scenario::Hang, "transient", "timed out"),
    ];
    for (scenario, class, fragment) in cases {
        sts.set_scenario(scenario.clone());
        // A forced refresh respects back-off (issue 12): it answers with the previous error
        // until the back-off (here at most 1 s) has passed, then tries this scenario.
        let tried = eventually(Duration::from_secs(20), || async {
            let r = broker.admin_post("/v1/roles/app/refresh").await;
            assert_eq!(r.status, 503, "{scenario:?}: {}", r.body);
            let status = broker.role_status("app").await;
            let err = &status["last_error"];
            err["class"] == class && err["message"].as_str().unwrap().contains(fragment)
        })
        .await;
        let status = broker.role_status("app").await;
        assert!(tried, "{scenario:?}: {status}");
        assert!(
            !status.to_string().contains("fake-secret"),
            "{scenario:?}: {status}"
        );
    }
    sts.set_scenario(Scenario::Ok);
    let ok = eventually(Duration::from_secs(10), || async {
        broker.admin_post("/v1/roles/app/refresh").await.status == 200
    })
    .await;
    assert!(ok, "{}", broker.logs());
    assert_eq!(broker.role_status("app").await["consecutive_failures"], 0);
}

#[tokio::test]
async fn forced_refresh_re_assumes_at_once() {
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let config = config_head(&sts.url()) + &role("app", "");
    let broker = TestBroker::start(&dir, &config).await;
    broker.wait_ready(Duration::from_secs(10)).await;
    let before = served_key(&broker, "app").await;
    let r = broker.admin_post("/v1/roles/app/refresh").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let after = served_key(&broker, "app").await;
    assert_ne!(before, after);
    assert_eq!(r.json()["access_key_id"], after.as_str());
    assert_eq!(sts.calls(), 2);
    // Unknown role, wrong method.
    assert_eq!(
        broker.admin_post("/v1/roles/nope/refresh").await.status,
        404
    );
    assert_eq!(broker.admin_get("/v1/roles/app/refresh").await.status, 405);
}
