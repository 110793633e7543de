//! Prometheus metrics: one registry owned by [`Metrics`], shared by `Arc`.
//!
//! Label values come from small fixed sets: `endpoint` (the listener: ecs, imds, admin, see
//! [`Endpoint`]), `status` (HTTP code),
//! `api`, `outcome` (`ok` or an error class), `role` (configured names only; requests for
//! unknown roles are counted under `role=""` so a client cannot grow the label set).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `sts_broker_requests_total` | counter | endpoint, role, status |
//! | `sts_broker_request_duration_seconds` | histogram | endpoint |
//! | `sts_broker_sts_calls_total` | counter | role, api, outcome |
//! | `sts_broker_sts_call_duration_seconds` | histogram | api |
//! | `sts_broker_credentials_expiry_seconds` | gauge | role |
//! | `sts_broker_refresh_consecutive_failures` | gauge | role |
//! | `sts_broker_config_reloads_total` | counter | outcome (ok, error, rejected) |
//! | `sts_broker_ready` | gauge | — |
//! | `sts_broker_audit_records_total` | counter | outcome (written, dropped) |
//! | `sts_broker_rate_limited_total` | counter | endpoint |
//! | `sts_broker_source_refused_total` | counter | endpoint |
//! | `sts_broker_sts_endpoint_calls_total` | counter | sts_endpoint, outcome |
//! | `sts_broker_sts_endpoint_duration_seconds` | histogram | sts_endpoint |
//! | `sts_broker_sts_endpoint_healthy` | gauge | sts_endpoint |
//! | `sts_broker_sts_call_rate` | gauge | — |
//! | `sts_broker_revocations_total` | counter | role |
//! | `sts_broker_token_verifications_total` | counter | outcome (ok, cached, or the refusal reason) |
//! | `sts_broker_jwks_fetches_total` | counter | outcome (ok, error) |
//! | `sts_broker_jwks_keys` | gauge | — |
//! | `sts_broker_jwks_age_seconds` | gauge | — (since the last successful fetch; -1: never) |
//! | `sts_broker_caller_sessions` | gauge | role |

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::clock;
use crate::creds::{Credentials, FetchError};
use crate::server::Endpoint;

/// Every metric the broker exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    /// `request_duration_seconds{endpoint}`, resolved once per listener ([`Endpoint::index`]):
    /// the hot path skips the label lookup (a hash and a lock shared by every worker).
    request_latency: [Histogram; 3],
    sts_calls: IntCounterVec,
    sts_call_duration: HistogramVec,
    expiry_seconds: IntGaugeVec,
    consecutive_failures: IntGaugeVec,
    reloads: IntCounterVec,
    ready: IntGauge,
    audit_records: IntCounterVec,
    rate_limited: IntCounterVec,
    source_refused: IntCounterVec,
    /// Per STS endpoint (a URL), not per listener.
    sts_endpoint_calls: IntCounterVec,
    sts_endpoint_duration: HistogramVec,
    sts_endpoint_healthy: IntGaugeVec,
    sts_rate: Gauge,
    revocations: IntCounterVec,
    k8s: K8sMetrics,
}

/// Kubernetes workload identity (§7): verification outcomes, the keys, caller sessions.
#[derive(Debug, Clone)]
struct K8sMetrics {
    verifications: IntCounterVec,
    /// `verifications{outcome="cached"}` and `{outcome="ok"}`, resolved once: the cached one is
    /// counted on every request of a known token (a label lookup takes a lock and a hash).
    cached: prometheus::IntCounter,
    verified: prometheus::IntCounter,
    jwks_fetches: IntCounterVec,
    jwks_keys: IntGauge,
    jwks_age: IntGauge,
    /// Unix seconds of the last successful JWKS fetch; the age is computed at scrape time.
    jwks_last_ok: Arc<AtomicU64>,
    sessions: IntGaugeVec,
}

impl K8sMetrics {
    fn new(registry: &Registry) -> K8sMetrics {
        let verifications = IntCounterVec::new(
            Opts::new(
                "token_verifications_total",
                "Service-account token verifications by outcome (ok, cached, or why refused)",
            )
            .namespace(NS),
            &["outcome"],
        )
        .expect("valid metric");
        let m = K8sMetrics {
            cached: verifications.with_label_values(&["cached"]),
            verified: verifications.with_label_values(&["ok"]),
            verifications,
            jwks_fetches: IntCounterVec::new(
                Opts::new("jwks_fetches_total", "Fetches of the cluster signing keys")
                    .namespace(NS),
                &["outcome"],
            )
            .expect("valid metric"),
            jwks_keys: IntGauge::with_opts(
                Opts::new("jwks_keys", "Signing keys held").namespace(NS),
            )
            .expect("valid metric"),
            jwks_age: IntGauge::with_opts(
                Opts::new(
                    "jwks_age_seconds",
                    "Seconds since the signing keys were last fetched successfully (-1: never)",
                )
                .namespace(NS),
            )
            .expect("valid metric"),
            jwks_last_ok: Arc::new(AtomicU64::new(0)),
            sessions: IntGaugeVec::new(
                Opts::new("caller_sessions", "Per-caller STS sessions held, by role").namespace(NS),
                &["role"],
            )
            .expect("valid metric"),
        };
        for c in [
            Box::new(m.verifications.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.jwks_fetches.clone()),
            Box::new(m.jwks_keys.clone()),
            Box::new(m.jwks_age.clone()),
            Box::new(m.sessions.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        m
    }
}

const NS: &str = "sts_broker";

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric, registered in a registry of its own.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("requests_total", "HTTP requests answered").namespace(NS),
            &["endpoint", "role", "status"],
        )
        .expect("valid metric");
        let request_duration = HistogramVec::new(
            HistogramOpts::new("request_duration_seconds", "Time to answer a request")
                .namespace(NS)
                .buckets(vec![
                    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05, 0.1,
                    0.5, 1.0, 5.0,
                ]),
            &["endpoint"],
        )
        .expect("valid metric");
        let sts_calls = IntCounterVec::new(
            Opts::new("sts_calls_total", "Calls made to STS").namespace(NS),
            &["role", "api", "outcome"],
        )
        .expect("valid metric");
        let sts_call_duration = HistogramVec::new(
            HistogramOpts::new("sts_call_duration_seconds", "STS call latency")
                .namespace(NS)
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
            &["api"],
        )
        .expect("valid metric");
        let expiry_seconds = IntGaugeVec::new(
            Opts::new(
                "credentials_expiry_seconds",
                "Seconds until the cached credentials of a role expire",
            )
            .namespace(NS),
            &["role"],
        )
        .expect("valid metric");
        let consecutive_failures = IntGaugeVec::new(
            Opts::new(
                "refresh_consecutive_failures",
                "Consecutive failed refreshes of a role",
            )
            .namespace(NS),
            &["role"],
        )
        .expect("valid metric");
        let reloads = IntCounterVec::new(
            Opts::new("config_reloads_total", "Configuration reloads by outcome").namespace(NS),
            &["outcome"],
        )
        .expect("valid metric");
        let audit_records = IntCounterVec::new(
            Opts::new(
                "audit_records_total",
                "Audit records by outcome (written; dropped because the writer fell behind or the write failed)",
            )
            .namespace(NS),
            &["outcome"],
        )
        .expect("valid metric");
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "rate_limited_total",
                "Requests refused with 429 by the per-peer rate limit",
            )
            .namespace(NS),
            &["endpoint"],
        )
        .expect("valid metric");
        let source_refused = IntCounterVec::new(
            Opts::new(
                "source_refused_total",
                "Requests refused with 403 because the peer is outside the listener's allowed_sources",
            )
            .namespace(NS),
            &["endpoint"],
        )
        .expect("valid metric");
        let sts_endpoint_calls = IntCounterVec::new(
            Opts::new(
                "sts_endpoint_calls_total",
                "Attempts per STS endpoint by outcome (failover and hedges included)",
            )
            .namespace(NS),
            &["sts_endpoint", "outcome"],
        )
        .expect("valid metric");
        let sts_endpoint_duration = HistogramVec::new(
            HistogramOpts::new(
                "sts_endpoint_duration_seconds",
                "Latency of attempts per STS endpoint",
            )
            .namespace(NS)
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["sts_endpoint"],
        )
        .expect("valid metric");
        let sts_endpoint_healthy = IntGaugeVec::new(
            Opts::new(
                "sts_endpoint_healthy",
                "1 while an STS endpoint is in use, 0 while it rests after repeated failures",
            )
            .namespace(NS),
            &["sts_endpoint"],
        )
        .expect("valid metric");
        let sts_rate = Gauge::with_opts(
            Opts::new(
                "sts_call_rate",
                "Current broker-wide STS call rate (calls per second; lowered by Throttling)",
            )
            .namespace(NS),
        )
        .expect("valid metric");
        let revocations = IntCounterVec::new(
            Opts::new(
                "revocations_total",
                "Roles whose held credentials a revoke_before dropped (then re-assumed)",
            )
            .namespace(NS),
            &["role"],
        )
        .expect("valid metric");
        let ready = IntGauge::with_opts(
            Opts::new(
                "ready",
                "1 when every prefetched role holds servable credentials",
            )
            .namespace(NS),
        )
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_duration.clone()),
            Box::new(sts_calls.clone()),
            Box::new(sts_call_duration.clone()),
            Box::new(expiry_seconds.clone()),
            Box::new(consecutive_failures.clone()),
            Box::new(reloads.clone()),
            Box::new(ready.clone()),
            Box::new(audit_records.clone()),
            Box::new(rate_limited.clone()),
            Box::new(source_refused.clone()),
            Box::new(sts_endpoint_calls.clone()),
            Box::new(sts_endpoint_duration.clone()),
            Box::new(sts_endpoint_healthy.clone()),
            Box::new(sts_rate.clone()),
            Box::new(revocations.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        for outcome in ["ok", "error", "rejected"] {
            reloads.with_label_values(&[outcome]);
        }
        let k8s = K8sMetrics::new(&registry);
        Metrics {
            k8s,
            registry,
            requests,
            request_latency: Endpoint::ALL
                .map(|e| request_duration.with_label_values(&[e.as_str()])),
            sts_calls,
            sts_call_duration,
            expiry_seconds,
            consecutive_failures,
            reloads,
            ready,
            audit_records,
            rate_limited,
            source_refused,
            sts_endpoint_calls,
            sts_endpoint_duration,
            sts_endpoint_healthy,
            sts_rate,
            revocations,
        }
    }

    /// Counts a request refused because its peer is outside `allowed_sources`.
    pub fn observe_source_refused(&self, endpoint: Endpoint) {
        self.source_refused
            .with_label_values(&[endpoint.as_str()])
            .inc();
    }

    /// Counts a role whose credentials a `revoke_before` dropped.
    pub fn observe_revocation(&self, role: &str) {
        self.revocations.with_label_values(&[role]).inc();
    }

    /// Counts one attempt on an STS endpoint (`sts_endpoint`: its label, a URL; `outcome`:
    /// ok or an error class).
    pub fn observe_sts_endpoint_call(&self, sts_endpoint: &str, outcome: &str, took: Duration) {
        self.sts_endpoint_calls
            .with_label_values(&[sts_endpoint, outcome])
            .inc();
        self.sts_endpoint_duration
            .with_label_values(&[sts_endpoint])
            .observe(took.as_secs_f64());
    }

    /// Whether an STS endpoint is in use (true) or resting after repeated failures.
    pub fn set_sts_endpoint_healthy(&self, sts_endpoint: &str, healthy: bool) {
        self.sts_endpoint_healthy
            .with_label_values(&[sts_endpoint])
            .set(i64::from(healthy));
    }

    /// The broker-wide STS call rate now in force.
    pub fn set_sts_rate(&self, calls_per_second: f64) {
        self.sts_rate.set(calls_per_second);
    }

    /// Counts a request refused by the per-peer rate limit.
    pub fn observe_rate_limited(&self, endpoint: Endpoint) {
        self.rate_limited
            .with_label_values(&[endpoint.as_str()])
            .inc();
    }

    /// Counts audit records that reached the file.
    pub fn observe_audit_written(&self, n: u64) {
        self.audit_records.with_label_values(&["written"]).inc_by(n);
    }

    /// Counts audit records lost: the queue was full, or writing them failed.
    pub fn observe_audit_dropped(&self, n: u64) {
        self.audit_records.with_label_values(&["dropped"]).inc_by(n);
    }

    /// Counts one answered request and its latency. `role` must be a configured role name or
    /// `""`.
    pub fn observe_request(&self, endpoint: Endpoint, role: &str, status: u16, took: Duration) {
        let mut code = itoa_buf();
        self.requests
            .with_label_values(&[endpoint.as_str(), role, status_str(status, &mut code)])
            .inc();
        self.request_latency[endpoint.index()].observe(took.as_secs_f64());
    }

    /// Counts one STS call and its latency.
    pub fn observe_sts_call(
        &self,
        role: &str,
        api: &str,
        result: &Result<Credentials, FetchError>,
        took: Duration,
    ) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) => e.class.as_str(),
        };
        self.sts_calls
            .with_label_values(&[role, api, outcome])
            .inc();
        self.sts_call_duration
            .with_label_values(&[api])
            .observe(took.as_secs_f64());
    }

    /// How many refreshes of `role` failed in a row (0 after a success).
    pub fn set_consecutive_failures(&self, role: &str, n: u32) {
        self.consecutive_failures
            .with_label_values(&[role])
            .set(i64::from(n));
    }

    /// Seconds until `role`'s cached credentials expire (0: none held).
    pub fn set_expiry(&self, role: &str, seconds: i64) {
        self.expiry_seconds.with_label_values(&[role]).set(seconds);
    }

    /// Whether every prefetched role holds servable credentials.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// Counts a reload: `ok`, `error` (bad config, old one kept) or `rejected` (a setting
    /// that cannot change live).
    pub fn observe_reload(&self, outcome: &str) {
        self.reloads.with_label_values(&[outcome]).inc();
    }

    /// Drops the per-role series of a removed role.
    pub fn forget_role(&self, role: &str) {
        let _ = self.expiry_seconds.remove_label_values(&[role]);
        let _ = self.consecutive_failures.remove_label_values(&[role]);
    }

    /// Counts a token verification: `ok`, `cached` or a refusal reason.
    pub fn observe_verification(&self, outcome: &str) {
        match outcome {
            "cached" => self.k8s.cached.inc(),
            "ok" => self.k8s.verified.inc(),
            other => self.k8s.verifications.with_label_values(&[other]).inc(),
        }
    }

    /// Counts a JWKS fetch; on success `keys` held and `now` (Unix seconds).
    pub fn observe_jwks_fetch(&self, ok: bool, keys: Option<usize>, now: u64) {
        self.k8s
            .jwks_fetches
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
        if let Some(n) = keys {
            self.k8s.jwks_keys.set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        if ok {
            self.k8s.jwks_last_ok.store(now.max(1), Ordering::Relaxed);
        }
    }

    /// Adds `delta` to the caller sessions held for `role`.
    pub fn add_caller_sessions(&self, role: &str, delta: i64) {
        self.k8s.sessions.with_label_values(&[role]).add(delta);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> Vec<u8> {
        let last = self.k8s.jwks_last_ok.load(Ordering::Relaxed);
        let age = if last == 0 {
            -1
        } else {
            let now = clock::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            i64::try_from(now.saturating_sub(last)).unwrap_or(i64::MAX)
        };
        self.k8s.jwks_age.set(age);
        let mut out = Vec::with_capacity(8192);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding metrics into a Vec cannot fail");
        out
    }
}

fn itoa_buf() -> [u8; 3] {
    [b'0'; 3]
}

/// Three-digit status code as text without allocating.
fn status_str(status: u16, buf: &mut [u8; 3]) -> &str {
    let s = status.min(999);
    buf[0] = b'0' + (s / 100) as u8;
    buf[1] = b'0' + (s / 10 % 10) as u8;
    buf[2] = b'0' + (s % 10) as u8;
    std::str::from_utf8(buf).expect("ASCII digits")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_render() {
        let mut b = itoa_buf();
        assert_eq!(status_str(200, &mut b), "200");
        let mut b = itoa_buf();
        assert_eq!(status_str(503, &mut b), "503");
    }

    #[test]
    fn exposition_has_prefixed_names() {
        let m = Metrics::new();
        m.observe_request(Endpoint::Ecs, "app", 200, Duration::from_millis(1));
        m.observe_request(Endpoint::Imds, "", 401, Duration::from_millis(1));
        m.observe_reload("ok");
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains(
                "sts_broker_requests_total{endpoint=\"ecs\",role=\"app\",status=\"200\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "sts_broker_requests_total{endpoint=\"imds\",role=\"\",status=\"401\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("sts_broker_request_duration_seconds_count{endpoint=\"imds\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sts_broker_config_reloads_total{outcome=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sts_broker_config_reloads_total{outcome=\"error\"} 0"),
            "{text}"
        );
    }
}
