//! `[refresh]`: when credentials are refreshed and how failures back off. See
//! `refresh::refresh_at` for the maths.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::problems::{Problems, Scope};

pub(super) const DEFAULT_LEAD: Duration = Duration::from_secs(40 * 60);
pub(super) const DEFAULT_MIN_REMAINING: Duration = Duration::from_secs(15 * 60);
const DEFAULT_JITTER: Duration = Duration::from_secs(30);
const DEFAULT_BACKOFF_MIN: Duration = Duration::from_secs(1);
const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(120);

/// When `[refresh].lead` says to refresh.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lead {
    /// Refresh when this much lifetime remains (`"40m"`).
    Remaining(Duration),
    /// Refresh when this fraction of the lifetime remains (`"66%"` → 0.66).
    Fraction(f64),
}

impl Lead {
    /// The lead for a credential that lives `lifetime`.
    pub fn for_lifetime(self, lifetime: Duration) -> Duration {
        match self {
            Lead::Remaining(d) => d,
            Lead::Fraction(f) => lifetime.mul_f64(f),
        }
    }
}

impl fmt::Display for Lead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lead::Remaining(d) => write!(f, "{}", humantime::format_duration(*d)),
            Lead::Fraction(x) => write!(f, "{}%", x * 100.0),
        }
    }
}

/// `[refresh]`: the schedule. See `refresh::refresh_at` for the maths.
#[derive(Debug, Clone, PartialEq)]
pub struct RefreshConfig {
    /// When to refresh: a fixed time or a fraction of the lifetime before expiry.
    pub lead: Lead,
    /// Credentials with less than this left are never served (503 instead).
    pub min_remaining: Duration,
    /// Each refresh happens up to this much earlier, at random, so that brokers started
    /// together do not call STS together.
    pub jitter: Duration,
    /// The first wait after a failed refresh (doubling from there).
    pub backoff_min: Duration,
    /// The longest wait between retries.
    pub backoff_max: Duration,
    /// Start-up prefetch of each role waits a random delay in `[0, startup_spread)`, so a
    /// fleet restarting together reaches STS as a steady stream, not a spike.
    pub startup_spread: Duration,
    /// Credentials obtained before this instant are dropped on load/reload and re-assumed.
    pub revoke_before: Option<SystemTime>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRefresh {
    lead: Option<String>,
    min_remaining: Option<String>,
    jitter: Option<String>,
    backoff_min: Option<String>,
    backoff_max: Option<String>,
    startup_spread: Option<String>,
    revoke_before: Option<String>,
}

/// Builds `[refresh]`, checking that the lead leaves room for `min_remaining`.
pub(super) fn build_refresh(p: &mut Problems, raw: RawRefresh) -> RefreshConfig {
    let scope = Scope::Table("refresh");
    let lead = match raw.lead.as_deref() {
        None => Lead::Remaining(DEFAULT_LEAD),
        Some(s) if s.trim_end().ends_with('%') => {
            let num = s.trim_end().trim_end_matches('%').trim();
            match num.parse::<f64>() {
                Ok(x) if x > 0.0 && x < 100.0 => Lead::Fraction(x / 100.0),
                _ => {
                    p.error(
                        scope.clone(),
                        Some("lead"),
                        format!("{s:?} must be a percentage between 0% and 100% (exclusive)"),
                    );
                    Lead::Remaining(DEFAULT_LEAD)
                }
            }
        }
        Some(s) => match p.duration(&scope, "lead", Some(s)) {
            Some(d) if d.is_zero() => {
                p.error(scope.clone(), Some("lead"), "must be greater than zero");
                Lead::Remaining(DEFAULT_LEAD)
            }
            Some(d) => Lead::Remaining(d),
            None => Lead::Remaining(DEFAULT_LEAD),
        },
    };
    let min_remaining = p
        .duration(&scope, "min_remaining", raw.min_remaining.as_deref())
        .unwrap_or(DEFAULT_MIN_REMAINING);
    let jitter = p
        .duration(&scope, "jitter", raw.jitter.as_deref())
        .unwrap_or(DEFAULT_JITTER);
    let backoff_min = p
        .duration(&scope, "backoff_min", raw.backoff_min.as_deref())
        .unwrap_or(DEFAULT_BACKOFF_MIN);
    let backoff_max = p
        .duration(&scope, "backoff_max", raw.backoff_max.as_deref())
        .unwrap_or(DEFAULT_BACKOFF_MAX);
    if backoff_min.is_zero() {
        p.error(
            scope.clone(),
            Some("backoff_min"),
            "must be greater than zero",
        );
    }
    if backoff_max < backoff_min {
        p.error(
            scope.clone(),
            Some("backoff_max"),
            format!(
                "{} is less than backoff_min ({})",
                humantime::format_duration(backoff_max),
                humantime::format_duration(backoff_min)
            ),
        );
    }
    if let Lead::Remaining(lead) = lead
        && min_remaining >= lead
    {
        p.error(
            scope.clone(),
            Some("min_remaining"),
            format!(
                "{} must be less than lead ({}), or credentials stop being served before they are refreshed",
                humantime::format_duration(min_remaining),
                humantime::format_duration(lead)
            ),
        );
    }
    let startup_spread = p
        .duration(&scope, "startup_spread", raw.startup_spread.as_deref())
        .unwrap_or_default();
    let revoke_before = p.instant(&scope, "revoke_before", raw.revoke_before.as_deref());
    RefreshConfig {
        lead,
        min_remaining,
        jitter,
        backoff_min,
        backoff_max,
        startup_spread,
        revoke_before,
    }
}
