//! Refresh ahead of expiry, serving through STS outages, min_remaining, back-off, single
//! flight, reloads and the classification of STS failures.
//!
//! These run the broker in-process on a paused clock (`start_paused` + `follow_tokio_time`):
//! credentials live a realistic hour, and the assertions say what happened at which simulated
//! moment — STS call counts and the AccessKeyIds served — instead of waiting on short-lived
//! credentials and polling.

use std::time::Duration;

use sts_broker::clock;

use crate::fake_sts::{FakeSts, Scenario};
use crate::helpers::*;
use crate::inproc::spawn_broker;
use crate::test_config::{Role, TestConfig};

const MINUTE: Duration = Duration::from_secs(60);

async fn served_key(broker: &Endpoints, role: &str) -> String {
    let r = broker.ecs_get(role, Some(TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["AccessKeyId"].as_str().unwrap().to_string()
}

/// Lets simulated time pass (every timer due meanwhile fires, in order).
async fn pass(d: Duration) {
    tokio::time::sleep(d).await;
}

/// Waits for readiness on the paused clock: the first fetch takes a few simulated ms.
async fn ready(broker: &Endpoints) {
    for _ in 0..200 {
        if broker.admin_get("/readyz").await.status == 200 {
            return;
        }
        pass(Duration::from_millis(5)).await;
    }
    panic!("not ready after 1 simulated second");
}

/// The test config with one prefetched role `app` (1-hour credentials, `lead = "40m"`,
/// `min_remaining = "15m"`, no jitter: refreshed 20 minutes after each issue).
fn one_role(sts: &FakeSts) -> TestConfig {
    TestConfig::new(&sts.url()).role(Role::new("app"))
}

#[tokio::test(start_paused = true)]
async fn credentials_are_refreshed_ahead_of_expiry() {
    let _clock = clock::follow_tokio_time();
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let broker = spawn_broker(&dir, &one_role(&sts)).await;
    ready(&broker).await;
    let first = served_key(&broker, "app").await;
    assert_eq!(sts.calls(), 1);

    // Expiry 60 min after issue (RFC 3339 seconds: up to 1 s earlier), lead 40 min.
    pass(20 * MINUTE - Duration::from_secs(2)).await;
    assert_eq!(sts.calls(), 1, "not refreshed before its time");
    assert_eq!(served_key(&broker, "app").await, first);
    pass(Duration::from_secs(4)).await;
    assert_eq!(sts.calls(), 2, "refreshed 20 minutes after issue");
    let second = served_key(&broker, "app").await;
    assert_ne!(first, second, "the refreshed credentials are served");
    pass(20 * MINUTE).await;
    assert_eq!(sts.calls(), 3, "and again 20 minutes later");
    assert_ne!(served_key(&broker, "app").await, second);
    // No client ever waited: every request was answered from the cache.
    let status = broker.role_status("app").await;
    assert_eq!(status["consecutive_failures"], 0);
    assert!(status["last_refresh"].is_string());
}

#[tokio::test(start_paused = true)]
async fn an_outage_serves_the_last_good_credentials_then_recovers() {
    let _clock = clock::follow_tokio_time();
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let config = one_role(&sts)
        .refresh("backoff_min", "1s")
        .refresh("backoff_max", "30s");
    let broker = spawn_broker(&dir, &config).await;
    ready(&broker).await;
    let good = served_key(&broker, "app").await;

    // STS goes down (and answers slowly) just before the refresh is due.
    sts.set_scenario(Scenario::ServiceUnavailable);
    sts.set_delay(Duration::from_millis(300));
    pass(21 * MINUTE).await;
    assert!(sts.calls() >= 4, "refresh retried: {} calls", sts.calls());
    // Back-off: 1 s, 2 s, 4 s ... capped at 30 s, so 2 to 3 calls a minute at the cap.
    let before = sts.calls();
    pass(5 * MINUTE).await;
    let retries = sts.calls() - before;
    assert!(
        (10..=21).contains(&retries),
        "{retries} retries in 5 minutes"
    );
    // Warm requests never wait for the (slow) STS: no simulated time passes while answered.
    for _ in 0..20 {
        let t = tokio::time::Instant::now();
        assert_eq!(
            served_key(&broker, "app").await,
            good,
            "stale but valid credentials are served"
        );
        assert!(
            t.elapsed() < Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
    }
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

    // STS recovers: within one back-off step new credentials are served, failures reset.
    sts.set_scenario(Scenario::Ok);
    sts.set_delay(Duration::ZERO);
    pass(31 * Duration::from_secs(1)).await;
    assert_ne!(served_key(&broker, "app").await, good, "new credentials");
    assert_eq!(broker.role_status("app").await["consecutive_failures"], 0);
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

#[tokio::test(start_paused = true)]
async fn below_min_remaining_clients_get_503_not_stale_credentials() {
    let _clock = clock::follow_tokio_time();
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let config = one_role(&sts)
        .refresh("backoff_min", "1s")
        .refresh("backoff_max", "1m");
    let broker = spawn_broker(&dir, &config).await;
    ready(&broker).await;
    let good = served_key(&broker, "app").await;

    // Throttled from the refresh on: the credentials serve until 45 minutes after issue
    // (60 min lifetime - min_remaining 15 min), then clients get 503.
    sts.set_scenario(Scenario::Throttle);
    pass(44 * MINUTE).await;
    assert_eq!(served_key(&broker, "app").await, good);
    pass(2 * MINUTE).await;
    let r = broker.ecs_get("app", Some(TOKEN)).await;
    assert_eq!(r.status, 503, "{}", r.body);
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
    pass(MINUTE + Duration::from_secs(1)).await;
    assert_ne!(
        served_key(&broker, "app").await,
        good,
        "served again after STS recovers (within one backoff_max)"
    );
}

#[tokio::test(start_paused = true)]
async fn access_denied_backs_off_to_the_cap_without_hammering() {
    let _clock = clock::follow_tokio_time();
    let sts = FakeSts::start().await;
    sts.set_scenario(Scenario::AccessDenied);
    let dir = ConfigDir::new();
    let config = one_role(&sts)
        .refresh("backoff_min", "50ms")
        .refresh("backoff_max", "10m");
    let broker = spawn_broker(&dir, &config).await;
    pass(Duration::from_millis(100)).await;
    assert_eq!(sts.calls(), 1);

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
    let status = broker.role_status("app").await;
    assert_eq!(status["last_error"]["class"], "access_denied", "{status}");
    assert_eq!(status["last_error"]["retryable"], false, "{status}");
    assert_eq!(broker.admin_get("/readyz").await.status, 503);
    // Not retryable: straight to backoff_max (10 min), whatever the failure count.
    pass(10 * MINUTE - Duration::from_secs(1)).await;
    assert_eq!(
        sts.calls(),
        1,
        "one call per backoff_max, not one per request"
    );
    pass(Duration::from_secs(2)).await;
    assert_eq!(sts.calls(), 2, "retried after backoff_max");
    pass(10 * MINUTE).await;
    assert_eq!(sts.calls(), 3, "and every backoff_max after that");
}

/// N concurrent clients of a lazy role with nothing cached: one STS call, one set of
/// credentials for all.
#[tokio::test(start_paused = true)]
async fn concurrent_cold_requests_make_one_sts_call() {
    let _clock = clock::follow_tokio_time();
    let sts = FakeSts::start().await;
    sts.set_delay(Duration::from_millis(500));
    let dir = ConfigDir::new();
    let config = TestConfig::new(&sts.url()).role(Role::new("app").lazy());
    let broker = spawn_broker(&dir, &config).await;
    pass(MINUTE).await;
    assert_eq!(sts.calls(), 0, "lazy: nothing assumed before a request");

    let requests = (0..50).map(|_| broker.ecs_get("app", Some(TOKEN)));
    let answers = futures_util::future::join_all(requests).await;
    let keys = distinct(&answers, "AccessKeyId");
    assert_eq!(sts.calls(), 1, "one STS call for 50 cold requests");
    assert_eq!(keys.len(), 1, "{keys:?}");
    // Then kept warm like a prefetched role: refreshed 20 minutes after issue.
    pass(21 * MINUTE).await;
    assert_eq!(sts.calls(), 2);
}

/// A reload swaps the configuration the refresh loops read: a longer lead moves the next
/// refresh of a kept role earlier, without re-assuming it at the reload. A bad file and a
/// change that needs a restart are refused, counted, and leave the schedule alone.
#[tokio::test(start_paused = true)]
async fn a_reload_reschedules_kept_roles_and_bad_reloads_change_nothing() {
    let _clock = clock::follow_tokio_time();
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let config = one_role(&sts);
    let broker = spawn_broker(&dir, &config).await;
    ready(&broker).await;
    let first = served_key(&broker, "app").await;
    pass(5 * MINUTE).await;

    // Invalid: refused with the role and key named; counted.
    let bad = config.clone().with_role("app", |r| r.set("arn", "nope"));
    let e = broker.reload(&bad).await.unwrap_err().to_string();
    assert!(e.contains("role \"app\": key \"arn\""), "{e}");
    // Needs a restart: rejected; counted apart.
    let moved = config.clone().set("ecs", "listen", "127.0.0.2:0");
    let e = broker.reload(&moved).await.unwrap_err().to_string();
    assert!(e.contains("cannot change without a restart"), "{e}");
    assert_eq!(broker.reloads("error").await, Some(1.0));
    assert_eq!(broker.reloads("rejected").await, Some(1.0));

    // lead 50 min: the kept role is now due 10 minutes after issue, not 20.
    broker
        .reload(&config.clone().refresh("lead", "50m"))
        .await
        .unwrap();
    assert_eq!(broker.reloads("ok").await, Some(1.0));
    assert_eq!(
        sts.calls(),
        1,
        "a kept role is not re-assumed by the reload"
    );
    assert_eq!(served_key(&broker, "app").await, first);
    pass(5 * MINUTE - Duration::from_secs(2)).await;
    assert_eq!(sts.calls(), 1);
    pass(Duration::from_secs(4)).await;
    assert_eq!(
        sts.calls(),
        2,
        "refreshed at issue + 10 min under the new lead"
    );
    assert_ne!(served_key(&broker, "app").await, first);
    broker.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn every_kind_of_sts_failure_is_classified() {
    let _clock = clock::follow_tokio_time();
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let config = TestConfig::new(&sts.url()).role(Role::new("app").lazy());
    let broker = spawn_broker(&dir, &config).await;
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
    assert!(ok);
    assert_eq!(broker.role_status("app").await["consecutive_failures"], 0);
}

#[tokio::test]
async fn forced_refresh_re_assumes_at_once() {
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let broker = spawn_broker(&dir, &one_role(&sts)).await;
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
