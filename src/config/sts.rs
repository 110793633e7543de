//! `[sts]`: how to reach STS — region, endpoints and their failover order, timeouts, the
//! call rate. The endpoint rules per partition are in [`endpoints`].

pub mod endpoints;

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;

use super::problems::{Problems, Scope};
use endpoints::{EndpointTarget, endpoint_order};

pub(super) const DEFAULT_STS_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_MAX_CALLS_PER_SECOND: f64 = 10.0;
/// The adaptive rate's floor: 0.05/s lets 10,000 brokers share a 600 calls/s quota.
const DEFAULT_MIN_CALLS_PER_SECOND: f64 = 0.05;
pub(super) const DEFAULT_UNHEALTHY_AFTER: u32 = 3;
pub(super) const DEFAULT_COOLDOWN: Duration = Duration::from_secs(30);

/// `[sts]`: how to reach STS.
#[derive(Debug, Clone, PartialEq)]
pub struct StsConfig {
    /// `None`: take the region from the AWS config chain.
    pub region: Option<String>,
    /// Endpoint override (VPC endpoint, emulator).
    pub endpoint: Option<String>,
    /// Bound on one STS call, including connect.
    pub timeout: Duration,
    /// Broker-wide rate limit; calls beyond it wait for their slot (bursts are spread).
    pub max_calls_per_second: f64,
    /// Regions whose STS endpoints are tried, in order, after the primary fails.
    pub failover_regions: Vec<String>,
    /// An explicit endpoint order (instead of `endpoint` + `failover_regions`).
    pub endpoints: Vec<String>,
    /// A cold call not answered by then is also sent to the next endpoint.
    pub hedge_after: Option<Duration>,
    /// Throttling lowers the call rate (multiplicative), successes raise it back slowly.
    pub adaptive_rate: bool,
    /// The floor of the adaptive rate.
    pub min_calls_per_second: f64,
    /// Consecutive failures (connect error, timeout, 5xx) after which an endpoint is skipped.
    pub unhealthy_after: u32,
    /// How long a skipped endpoint rests before one call probes it again.
    pub cooldown: Duration,
}

impl StsConfig {
    /// The endpoint order for the broker's region (see [`endpoint_order`]).
    ///
    /// # Errors
    /// Failover regions outside the region's partition.
    pub fn targets(&self, region: &str) -> Result<Vec<EndpointTarget>, Vec<String>> {
        endpoint_order(
            region,
            self.endpoint.as_deref(),
            &self.endpoints,
            &self.failover_regions,
        )
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSts {
    region: Option<String>,
    endpoint: Option<String>,
    timeout: Option<String>,
    max_calls_per_second: Option<f64>,
    failover_regions: Option<Vec<String>>,
    endpoints: Option<Vec<String>>,
    hedge_after: Option<String>,
    adaptive_rate: Option<bool>,
    min_calls_per_second: Option<f64>,
    unhealthy_after: Option<u32>,
    cooldown: Option<String>,
}

/// Builds `[sts]`, checking every URL, region and rate.
pub(super) fn build_sts(p: &mut Problems, raw: RawSts) -> StsConfig {
    let scope = Scope::Table("sts");
    if let Some(r) = &raw.region
        && (r.is_empty()
            || !r
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
    {
        p.error(
            scope.clone(),
            Some("region"),
            format!("{r:?} is not a region name like \"us-east-1\""),
        );
    }
    if let Some(e) = &raw.endpoint
        && !(e.starts_with("https://") || e.starts_with("http://"))
    {
        p.error(
            scope.clone(),
            Some("endpoint"),
            format!("{e:?} must be a URL starting with https:// (or http:// for a local emulator)"),
        );
    }
    let timeout = p
        .duration(&scope, "timeout", raw.timeout.as_deref())
        .unwrap_or(DEFAULT_STS_TIMEOUT);
    if timeout.is_zero() {
        p.error(scope.clone(), Some("timeout"), "must be greater than zero");
    }
    let rate = raw
        .max_calls_per_second
        .unwrap_or(DEFAULT_MAX_CALLS_PER_SECOND);
    if !(rate.is_finite() && rate > 0.0) {
        p.error(
            scope.clone(),
            Some("max_calls_per_second"),
            format!("{rate} must be a positive number"),
        );
    }
    let failover_regions = raw.failover_regions.unwrap_or_default();
    let endpoints = raw.endpoints.unwrap_or_default();
    check_endpoints(
        p,
        &scope,
        raw.endpoint.as_deref(),
        &endpoints,
        &failover_regions,
    );
    if let Some(region) = &raw.region
        && endpoints.is_empty()
        && let Err(problems) = endpoint_order(region, None, &[], &failover_regions)
    {
        for why in problems {
            p.error(scope.clone(), Some("failover_regions"), why);
        }
    }
    let hedge_after = p.duration(&scope, "hedge_after", raw.hedge_after.as_deref());
    if let Some(h) = hedge_after {
        if h.is_zero() || h >= timeout {
            p.error(
                scope.clone(),
                Some("hedge_after"),
                format!(
                    "{} must be greater than zero and less than timeout ({})",
                    humantime::format_duration(h),
                    humantime::format_duration(timeout)
                ),
            );
        }
        if endpoints.len() < 2 && failover_regions.is_empty() {
            p.error(
                scope.clone(),
                Some("hedge_after"),
                "needs a second endpoint to hedge to (failover_regions or endpoints)",
            );
        }
    }
    let min_rate = raw
        .min_calls_per_second
        .unwrap_or(DEFAULT_MIN_CALLS_PER_SECOND.min(rate));
    if !(min_rate.is_finite() && min_rate > 0.0 && min_rate <= rate) {
        p.error(
            scope.clone(),
            Some("min_calls_per_second"),
            format!("{min_rate} must be a positive number no greater than max_calls_per_second"),
        );
    }
    let unhealthy_after = raw.unhealthy_after.unwrap_or(DEFAULT_UNHEALTHY_AFTER);
    if unhealthy_after == 0 {
        p.error(scope.clone(), Some("unhealthy_after"), "must be at least 1");
    }
    let cooldown = p
        .duration(&scope, "cooldown", raw.cooldown.as_deref())
        .unwrap_or(DEFAULT_COOLDOWN);
    if cooldown.is_zero() {
        p.error(scope, Some("cooldown"), "must be greater than zero");
    }
    StsConfig {
        region: raw.region,
        endpoint: raw.endpoint,
        timeout,
        max_calls_per_second: rate,
        failover_regions,
        endpoints,
        hedge_after,
        adaptive_rate: raw.adaptive_rate.unwrap_or(true),
        min_calls_per_second: min_rate,
        unhealthy_after,
        cooldown,
    }
}

/// Whether a URL carries `user:password@` (it would reach metric labels and logs).
fn has_userinfo(url: &str) -> bool {
    url.split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split('/')
        .next()
        .is_some_and(|authority| authority.contains('@'))
}

/// `endpoints` replaces `endpoint` + `failover_regions`; every URL must be http(s) and
/// appear once.
fn check_endpoints(
    p: &mut Problems,
    scope: &Scope,
    endpoint: Option<&str>,
    endpoints: &[String],
    failover_regions: &[String],
) {
    if !endpoints.is_empty() {
        if endpoint.is_some() {
            p.error(
                scope.clone(),
                Some("endpoints"),
                "set either `endpoint` (with optional `failover_regions`) or `endpoints`, not both",
            );
        }
        if !failover_regions.is_empty() {
            p.error(
                scope.clone(),
                Some("endpoints"),
                "set either `failover_regions` or `endpoints`, not both: list the failover \
                 endpoints in `endpoints` in the order to try them",
            );
        }
    }
    if endpoint.is_some_and(has_userinfo) {
        p.error(
            scope.clone(),
            Some("endpoint"),
            "the URL must not contain user:password@",
        );
    }
    let mut seen = HashSet::new();
    for e in endpoints {
        if !(e.starts_with("https://") || e.starts_with("http://")) {
            p.error(
                scope.clone(),
                Some("endpoints"),
                format!(
                    "{e:?} must be a URL starting with https:// (or http:// for a local emulator)"
                ),
            );
        }
        if has_userinfo(e) {
            // The URL is a metric label and a log field: it must not carry a password.
            p.error(
                scope.clone(),
                Some("endpoints"),
                "an endpoint URL must not contain user:password@",
            );
        }
        if !seen.insert(e.trim_end_matches('/')) {
            p.error(
                scope.clone(),
                Some("endpoints"),
                format!("{e:?} is listed twice"),
            );
        }
    }
    let mut seen = HashSet::new();
    for r in failover_regions {
        if !seen.insert(r.as_str()) {
            p.error(
                scope.clone(),
                Some("failover_regions"),
                format!("{r:?} is listed twice"),
            );
        }
    }
}
