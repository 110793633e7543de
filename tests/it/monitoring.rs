//! deploy/monitoring/ against a running broker: every metric (and every label in a selector)
//! that the alert rules, their promtool tests and the Grafana dashboard name must exist in the
//! broker's `/metrics`. A renamed metric or label fails here rather than silently leaving an
//! alert that can never fire or a dashboard panel that stays empty.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use crate::fake_sts::FakeSts;
use crate::helpers::{ConfigDir, TOKEN, eventually};
use crate::inproc::spawn_broker;
use crate::test_config::{Role, TestConfig};

/// The monitoring files whose metric names are checked.
const FILES: [&str; 3] = [
    "deploy/monitoring/alerts.yaml",
    "deploy/monitoring/alerts.test.yaml",
    "deploy/monitoring/dashboard.json",
];

/// Series names on `/metrics` with the label names each carries (`_bucket`, `_sum` and
/// `_count` of histograms included, as PromQL sees them).
fn exported(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..end].to_string()).or_default();
        if let Some(rest) = line[end..].strip_prefix('{') {
            for pair in rest.split('}').next().unwrap_or("").split("\",") {
                if let Some((k, _)) = pair.split_once('=') {
                    labels.insert(k.trim().to_string());
                }
            }
        }
    }
    out
}

/// Every `sts_broker_*` name in `text`, with the label names of the selector that follows it
/// (`name{label="..", other=~".."}`), if any.
fn referenced(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("sts_broker_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = tail[..end].to_string();
        let mut labels = Vec::new();
        if let Some(sel) = tail[end..].strip_prefix('{') {
            let sel = &sel[..sel.find('}').unwrap_or(sel.len())];
            // Split on commas outside quotes: label values may hold anything.
            let mut quoted = false;
            let mut item = String::new();
            for c in sel.chars().chain([',']) {
                match c {
                    '"' | '\'' => {
                        quoted = !quoted;
                        item.push(c);
                    }
                    ',' if !quoted => {
                        let key: String = item
                            .trim()
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        if !key.is_empty() {
                            labels.push(key);
                        }
                        item.clear();
                    }
                    _ => item.push(c),
                }
            }
        }
        out.push((name, labels));
        rest = &tail[end..];
    }
    out
}

#[test]
fn the_reference_scanner_finds_names_and_selector_labels() {
    let found = referenced(
        r#"expr: sum without (s) (rate(sts_broker_requests_total{status="503", job=~"a,b"}[5m])) > 0 and sts_broker_ready"#,
    );
    assert_eq!(
        found,
        vec![
            (
                "sts_broker_requests_total".to_string(),
                vec!["status".to_string(), "job".to_string()]
            ),
            ("sts_broker_ready".to_string(), vec![]),
        ]
    );
    let exp = exported(
        "# HELP x y\nsts_broker_ready 1\nsts_broker_requests_total{endpoint=\"ecs\",role=\"a\",status=\"200\"} 3\n",
    );
    assert_eq!(exp["sts_broker_requests_total"].len(), 3);
    assert!(exp["sts_broker_ready"].is_empty());
}

/// A labelled metric only appears in `/metrics` once one of its series has been touched, so
/// the broker is exercised first: served requests (and audit records), a rate-limited one, one
/// from outside `allowed_sources`, STS calls, a reload, a scrape.
#[tokio::test]
async fn every_metric_named_by_the_alerts_and_the_dashboard_is_exported() {
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let trail = dir.path().join("audit.jsonl");
    let config = TestConfig::new(&sts.url())
        .set("ecs", "per_peer_rate_limit", 1)
        .role(Role::new("app"))
        // IMDS serves no loopback peer: its requests are refused (403) and counted.
        .imds(&[
            ("role", "app".into()),
            ("allowed_sources", serde_json::json!(["10.0.0.0/8"])),
        ])
        .audit(&trail);
    let broker = spawn_broker(&dir, &config).await;
    broker.wait_ready(Duration::from_secs(10)).await;

    assert_eq!(broker.ecs_get("app", Some(TOKEN)).await.status, 200);
    let imds = broker
        .imds_request(
            "PUT",
            "/latest/api/token",
            &[("X-aws-ec2-metadata-token-ttl-seconds", "60")],
        )
        .await;
    assert_eq!(imds.status, 403, "allowed_sources refuses loopback");
    // A burst beyond the limit (1/s, bursts of 2): at least one 429.
    let mut limited = false;
    for _ in 0..10 {
        limited |= broker.ecs_get("app", Some(TOKEN)).await.status == 429;
    }
    assert!(limited, "per_peer_rate_limit = 1 never answered 429");
    broker.reload(&config).await.unwrap();
    assert_eq!(broker.reloads("ok").await, Some(1.0));
    // Written by a background task: poll until the served requests are counted.
    assert!(
        eventually(Duration::from_secs(10), || async {
            broker
                .metric("sts_broker_audit_records_total{outcome=\"written\"}")
                .await
                .is_some_and(|n| n >= 1.0)
        })
        .await,
        "audit records not counted"
    );

    let scraped = broker.admin_get("/metrics").await;
    assert_eq!(scraped.status, 200);
    let series = exported(&scraped.body);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut problems = Vec::new();
    let mut checked = BTreeSet::new();
    for file in FILES {
        let text = std::fs::read_to_string(root.join(file))
            .unwrap_or_else(|e| panic!("cannot read {file}: {e}"));
        let refs = referenced(&text);
        assert!(!refs.is_empty(), "{file} names no sts_broker_ metric");
        for (name, labels) in refs {
            checked.insert(name.clone());
            let Some(have) = series.get(&name) else {
                problems.push(format!("{file}: {name} is not exported"));
                continue;
            };
            for l in labels {
                // job and instance are added by Prometheus when it scrapes.
                if !have.contains(&l) && l != "job" && l != "instance" {
                    problems.push(format!(
                        "{file}: {name} has no label {l:?} (it has {have:?})"
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "monitoring files name what the broker does not export:\n{}\n\n/metrics:\n{}",
        problems.join("\n"),
        scraped.body
    );
    // What the issue asks the alerts and the dashboard to cover is all there.
    for must in [
        "sts_broker_credentials_expiry_seconds",
        "sts_broker_refresh_consecutive_failures",
        "sts_broker_sts_calls_total",
        "sts_broker_requests_total",
        "sts_broker_config_reloads_total",
        "sts_broker_audit_records_total",
        "sts_broker_request_duration_seconds_bucket",
        "sts_broker_sts_call_duration_seconds_bucket",
        "sts_broker_source_refused_total",
    ] {
        assert!(checked.contains(must), "no monitoring file uses {must}");
    }
}
