//! Fleet behaviour (DESIGN §8) against two in-process fake STS endpoints: failover on a hung,
//! failing or resetting primary within one `[sts].timeout`, the cool-down and the probe back,
//! hedged cold requests, the adaptive call rate under Throttling, `startup_spread`, and
//! `revoke_before` on reload. The black-holed (packet-dropping) primary is in `netns.rs`.
//!
//! The timing tests run the broker in-process on a paused clock: "within the timeout" and
//! "the hedge answered first" are measured in simulated time, exactly, whatever the load.

use std::time::{Duration, SystemTime};

use sts_broker::clock;

use crate::fake_sts::{FakeSts, Scenario};
use crate::helpers::*;
use crate::inproc::spawn_broker;
use crate::test_config::{Role, TestConfig};

/// The test config with `[sts]` calling `urls` in order instead of one endpoint.
fn with_endpoints(urls: &[String]) -> TestConfig {
    TestConfig::new(&urls[0])
        .unset("sts", "endpoint")
        .sts("endpoints", serde_json::json!(urls))
}

/// The test config with the prefetched roles `r0` .. `r{n-1}`.
fn roles(mut config: TestConfig, n: usize) -> TestConfig {
    for i in 0..n {
        config = config.role(Role::new(&format!("r{i}")));
    }
    config
}

fn healthy_series(url: &str) -> String {
    format!("sts_broker_sts_endpoint_healthy{{sts_endpoint=\"{url}\"}}")
}

#[tokio::test(start_paused = true)]
async fn a_failing_primary_is_failed_over_within_the_timeout_rested_and_probed_back() {
    let _clock = clock::follow_tokio_time();
    let primary = FakeSts::start().await;
    let backup = FakeSts::start().await;
    let dir = ConfigDir::new();
    let urls = [primary.url(), backup.url()];
    // Two endpoints get 3 s each of `timeout = "6s"`.
    let mut config = with_endpoints(&urls)
        .sts("unhealthy_after", 2)
        .sts("cooldown", "1s")
        .sts("timeout", "6s");
    for r in ["r1", "r2", "r3", "r4", "r5"] {
        config = config.role(Role::new(r).lazy());
    }
    let broker = spawn_broker(&dir, &config).await;
    let budget = Duration::from_secs(6);

    // A hung primary: the cold request still gets 200 within the budget, from the backup.
    primary.set_scenario(Scenario::Hang);
    let t = tokio::time::Instant::now();
    let r = broker.ecs_get("r1", Some(TOKEN)).await;
    let took = t.elapsed();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(took < budget + Duration::from_millis(500), "{took:?}");
    assert!(
        took >= Duration::from_millis(2900),
        "waited for the primary's share: {took:?}"
    );
    assert_eq!((primary.calls(), backup.calls()), (1, 1));

    // A primary answering 500: failed over at once; the second failure rests it.
    primary.set_scenario(Scenario::ServerError);
    let t = tokio::time::Instant::now();
    assert_eq!(broker.ecs_get("r2", Some(TOKEN)).await.status, 200);
    assert!(
        t.elapsed() < Duration::from_millis(2900),
        "{:?}",
        t.elapsed()
    );
    assert_eq!((primary.calls(), backup.calls()), (2, 2));
    assert_eq!(broker.metric(&healthy_series(&urls[0])).await, Some(0.0));
    assert_eq!(broker.metric(&healthy_series(&urls[1])).await, Some(1.0));

    // Resting: the primary is not called at all.
    assert_eq!(broker.ecs_get("r3", Some(TOKEN)).await.status, 200);
    assert_eq!((primary.calls(), backup.calls()), (2, 3));

    // Healthy again: after the cool-down one call probes it and it is the primary again.
    primary.set_scenario(Scenario::Ok);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(broker.ecs_get("r4", Some(TOKEN)).await.status, 200);
    assert_eq!((primary.calls(), backup.calls()), (3, 3));
    assert_eq!(broker.metric(&healthy_series(&urls[0])).await, Some(1.0));
    assert_eq!(broker.ecs_get("r5", Some(TOKEN)).await.status, 200);
    assert_eq!((primary.calls(), backup.calls()), (4, 3));

    let ok_backup = format!(
        "sts_broker_sts_endpoint_calls_total{{outcome=\"ok\",sts_endpoint=\"{}\"}}",
        urls[1]
    );
    assert_eq!(broker.metric(&ok_backup).await, Some(3.0));
    let failed_primary = format!(
        "sts_broker_sts_endpoint_calls_total{{outcome=\"transient\",sts_endpoint=\"{}\"}}",
        urls[0]
    );
    assert_eq!(broker.metric(&failed_primary).await, Some(2.0));
}

#[tokio::test]
async fn a_reset_connection_fails_over_and_access_denied_does_not() {
    let primary = FakeSts::start().await;
    let backup = FakeSts::start().await;
    let dir = ConfigDir::new();
    let urls = [primary.url(), backup.url()];
    let config = with_endpoints(&urls)
        .role(Role::new("a").lazy())
        .role(Role::new("b").lazy());
    let broker = spawn_broker(&dir, &config).await;

    primary.set_scenario(Scenario::Reset);
    assert_eq!(broker.ecs_get("a", Some(TOKEN)).await.status, 200);
    assert_eq!(backup.calls(), 1);

    // AccessDenied is an answer, not an endpoint failure: the backup would say the same.
    primary.set_scenario(Scenario::AccessDenied);
    let r = broker.ecs_get("b", Some(TOKEN)).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(backup.calls(), 1, "no failover on AccessDenied");
}

#[tokio::test(start_paused = true)]
async fn a_slow_primary_is_hedged_and_the_first_answer_wins() {
    let _clock = clock::follow_tokio_time();
    let primary = FakeSts::start().await;
    let backup = FakeSts::start().await;
    let dir = ConfigDir::new();
    let urls = [primary.url(), backup.url()];
    let config = with_endpoints(&urls)
        .sts("hedge_after", "300ms")
        .sts("timeout", "4s")
        .role(Role::new("cold").lazy());
    let broker = spawn_broker(&dir, &config).await;
    primary.set_delay(Duration::from_millis(2500));
    let t = tokio::time::Instant::now();
    let r = broker.ecs_get("cold", Some(TOKEN)).await;
    let took = t.elapsed();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
        "the hedge (after 300 ms) answered, not the slow primary: {took:?}"
    );
    assert_eq!((primary.calls(), backup.calls()), (1, 1));
    let key = r.json()["AccessKeyId"].as_str().unwrap().to_string();
    assert!(key.starts_with("ASIAFAKE"), "{key}");
    // The request that lost the race was cancelled and counts against its endpoint.
    let abandoned = format!(
        "sts_broker_sts_endpoint_calls_total{{outcome=\"abandoned\",sts_endpoint=\"{}\"}}",
        urls[0]
    );
    assert_eq!(broker.metric(&abandoned).await, Some(1.0));
}

#[tokio::test(start_paused = true)]
async fn throttling_lowers_the_broker_rate_and_successes_raise_it() {
    let _clock = clock::follow_tokio_time();
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let config = TestConfig::new(&sts.url())
        .sts("max_calls_per_second", 20)
        .sts("min_calls_per_second", 1);
    sts.set_scenario(Scenario::Throttle);
    let broker = spawn_broker(&dir, &roles(config, 6)).await;
    let rate = "sts_broker_sts_call_rate";
    let lowered = eventually(Duration::from_secs(10), || async {
        broker.metric(rate).await.is_some_and(|r| r <= 5.0)
    })
    .await;
    assert!(lowered, "rate {:?}", broker.metric(rate).await);
    let low = broker.metric(rate).await.unwrap();
    assert!(low >= 1.0, "never below the floor: {low}");

    sts.set_scenario(Scenario::Ok);
    broker.wait_ready(Duration::from_secs(20)).await;
    let raised = broker.metric(rate).await.unwrap();
    assert!(raised > low, "successes raise the rate: {low} -> {raised}");
    assert!(raised <= 20.0);
}

#[tokio::test(start_paused = true)]
async fn startup_spread_spreads_the_first_prefetch() {
    let _clock = clock::follow_tokio_time();
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let config = TestConfig::new(&sts.url()).refresh("startup_spread", "2s");
    let started = tokio::time::Instant::now();
    let broker = spawn_broker(&dir, &roles(config, 10)).await;
    let mut first = None;
    while sts.calls() < 10 && started.elapsed() < Duration::from_secs(15) {
        if first.is_none() && sts.calls() > 0 {
            first = Some(tokio::time::Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let last = tokio::time::Instant::now();
    assert_eq!(sts.calls(), 10);
    assert!(
        last - started <= Duration::from_millis(2100),
        "every role within the 2 s spread: {:?}",
        last - started
    );
    let spread = last.duration_since(first.expect("saw the first call"));
    // Ten uniform draws over 2 s span under 0.5 s with probability < 1e-4; without the
    // spread, the ten calls (200/s allowed) land within ~50 ms.
    assert!(spread >= Duration::from_millis(500), "{spread:?}");
    broker.wait_ready(Duration::from_secs(10)).await;
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[tokio::test]
async fn revoke_before_on_reload_drops_and_reassumes_once() {
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let config = TestConfig::new(&sts.url())
        .role(Role::new("warm"))
        .role(Role::new("lazy").lazy())
        .role(Role::new("kept"));
    let broker = TestBroker::start(&dir, &config.render()).await;
    broker.wait_ready(Duration::from_secs(10)).await;
    let key = |r: HttpResponse| r.json()["AccessKeyId"].as_str().unwrap().to_string();
    let warm0 = key(broker.ecs_get("warm", Some(TOKEN)).await);
    let lazy0 = key(broker.ecs_get("lazy", Some(TOKEN)).await);
    let kept0 = key(broker.ecs_get("kept", Some(TOKEN)).await);
    assert_eq!(sts.calls(), 3);

    // Broker-wide revoke_before an hour ahead of the clock: it counts as now.
    let ahead = rfc3339(SystemTime::now() + Duration::from_secs(3600));
    let revoking = config.refresh("revoke_before", ahead);
    dir.write("config.toml", &revoking.render());
    broker.signal("HUP");
    // The prefetched roles are re-assumed at once, without a request.
    assert!(
        sts.wait_for_calls(5, Duration::from_secs(10)).await,
        "{}",
        broker.logs()
    );
    let revoked_warm = eventually(Duration::from_secs(10), || async {
        broker.ecs_get("warm", Some(TOKEN)).await.json()["AccessKeyId"] != warm0.as_str()
    })
    .await;
    assert!(revoked_warm);
    assert_ne!(key(broker.ecs_get("kept", Some(TOKEN)).await), kept0);
    assert!(broker.logs().contains("ahead of this machine's clock"));
    // The lazy role was dropped and is assumed again only when asked.
    assert_eq!(sts.calls(), 5, "lazy role not re-assumed before a request");
    assert_ne!(key(broker.ecs_get("lazy", Some(TOKEN)).await), lazy0);
    assert_eq!(sts.calls(), 6);
    assert_eq!(
        broker
            .metric("sts_broker_revocations_total{role=\"lazy\"}")
            .await,
        Some(1.0)
    );

    // The same config again: the instant took effect at the first reload, nothing new is
    // revoked.
    broker.signal("HUP");
    assert!(
        broker
            .wait_for_metric("sts_broker_config_reloads_total{outcome=\"ok\"}", 2.0)
            .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sts.calls(), 6, "{}", broker.logs());

    // A per-role instant revokes that role only; one older than what is held, nothing.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let now = rfc3339(SystemTime::now());
    let per_role = revoking
        .with_role("kept", |r| r.set("revoke_before", now))
        .with_role("warm", |r| r.set("revoke_before", "2020-01-01T00:00:00Z"));
    let warm1 = key(broker.ecs_get("warm", Some(TOKEN)).await);
    let kept1 = key(broker.ecs_get("kept", Some(TOKEN)).await);
    dir.write("config.toml", &per_role.render());
    broker.signal("HUP");
    assert!(sts.wait_for_calls(7, Duration::from_secs(10)).await);
    let rekept = eventually(Duration::from_secs(10), || async {
        broker.ecs_get("kept", Some(TOKEN)).await.json()["AccessKeyId"] != kept1.as_str()
    })
    .await;
    assert!(rekept);
    assert_eq!(key(broker.ecs_get("warm", Some(TOKEN)).await), warm1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sts.calls(), 7);
}

#[tokio::test]
async fn watch_config_reloads_on_a_file_change_without_a_signal() {
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let config = TestConfig::new(&sts.url()).role(Role::new("app"));
    let broker = TestBroker::start_with_args(
        &dir,
        &config.render(),
        "info",
        &[],
        &[],
        &["--watch-config=200ms"],
    )
    .await;
    broker.wait_ready(Duration::from_secs(10)).await;
    let before = broker.ecs_get("app", Some(TOKEN)).await.json()["AccessKeyId"].clone();

    // A ConfigMap-style update: the new file replaces the old one by rename.
    let revoke = rfc3339(SystemTime::now() + Duration::from_secs(60));
    let next = config
        .refresh("revoke_before", revoke)
        .role(Role::new("db"));
    let tmp = dir.write("config.toml.new", &next.render());
    std::fs::rename(&tmp, &broker.config_path).unwrap();
    assert!(
        broker
            .wait_for_metric("sts_broker_config_reloads_total{outcome=\"ok\"}", 1.0)
            .await,
        "{}",
        broker.logs()
    );
    assert_eq!(broker.ecs_get("db", Some(TOKEN)).await.status, 200);
    let after = broker.ecs_get("app", Some(TOKEN)).await.json()["AccessKeyId"].clone();
    assert_ne!(before, after, "the revocation in the new file took effect");

    // A broken file is rejected; the old config keeps serving.
    std::fs::write(&broker.config_path, "[sts\n").unwrap();
    assert!(
        broker
            .wait_for_metric("sts_broker_config_reloads_total{outcome=\"error\"}", 1.0)
            .await
    );
    assert_eq!(broker.ecs_get("app", Some(TOKEN)).await.status, 200);
    // Unchanged file: no further reloads.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(broker.reloads("ok").await, Some(1.0));
}

/// A short run of the fleet simulator (`bench/fleet.py`; the full run is a benchmark): three
/// brokers start together against a budgeted fake STS with the tuned settings.
#[tokio::test]
async fn fleet_simulator_smoke_run() {
    let dir = ConfigDir::new();
    let out = dir.path().join("fleet.json");
    let status = std::process::Command::new(venv_bin("python"))
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/bench/fleet.py"))
        .args([
            "--brokers",
            "3",
            "--roles",
            "4",
            "--budget",
            "12",
            "--latency-ms",
            "1-5",
            "--variants",
            "tuned",
            "--deadline",
            "60",
            "--binary",
            BIN,
        ])
        .arg("--out")
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let results: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let tuned = &results[0];
    assert_eq!(tuned["brokers_ready"], 3, "{tuned}");
    assert_eq!(tuned["obtained"], 12, "{tuned}");
    assert_eq!(tuned["client_errors"], 0, "{tuned}");
    // One second of ideal time: loose bounds, the machine is shared.
    assert!(tuned["amplification"].as_f64().unwrap() <= 1.5, "{tuned}");
    assert!(tuned["ready_s"].as_f64().unwrap() < 30.0, "{tuned}");
}
