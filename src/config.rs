//! Configuration: the TOML model, parsing and validation.
//!
//! A leaf module: plain data and checks, no I/O beyond reading the config and token files.
//! Parsing never stops at the first problem: every table and every `[[role]]` is checked and
//! all problems are returned together, each naming the file, the role and the key
//! (`config.toml: role "app": key "session_name": …`). Every limit STS enforces is checked
//! here, so a bad value fails at load time instead of as an `AccessDenied` at 3 a.m.

pub mod file;
pub mod kubernetes;
pub mod relative_uri;
mod role;
mod sts;

pub use kubernetes::{
    JwksSource, KubernetesConfig, ServiceAccountPattern, SessionScope, WorkloadAccess,
};
pub use role::{
    AssertionSource, CHAINED_MAX_DURATION, LocalUser, Mfa, RoleConfig, RoleKind, RoleSpec,
};
use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
pub use sts::{EndpointTarget, endpoint_order, parse_instant, partition, regional_url};

use serde::Deserialize;

/// Default config path when neither `-c` nor `STS_BROKER_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/sts-broker/config.toml";
/// Environment variable naming the config file.
pub const ENV_CONFIG: &str = "STS_BROKER_CONFIG";

const DEFAULT_STS_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_MAX_CALLS_PER_SECOND: f64 = 10.0;
/// The adaptive rate's floor: 0.05/s lets 10,000 brokers share a 600 calls/s quota.
const DEFAULT_MIN_CALLS_PER_SECOND: f64 = 0.05;
const DEFAULT_UNHEALTHY_AFTER: u32 = 3;
const DEFAULT_COOLDOWN: Duration = Duration::from_secs(30);
const DEFAULT_LEAD: Duration = Duration::from_secs(40 * 60);
const DEFAULT_MIN_REMAINING: Duration = Duration::from_secs(15 * 60);
const DEFAULT_JITTER: Duration = Duration::from_secs(30);
const DEFAULT_BACKOFF_MIN: Duration = Duration::from_secs(1);
const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(120);
const DEFAULT_ECS_LISTEN: &str = "127.0.0.1:8170";
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9469";
const DEFAULT_IMDS_LISTEN: &str = "127.0.0.1:8169";
const DEFAULT_IMDS_MAX_TOKEN_TTL: Duration = Duration::from_secs(6 * 3600);
/// botocore's IMDS path stretches the expiry of credentials with less than ~25 min left.
const DEFAULT_IMDS_MIN_REMAINING: Duration = Duration::from_secs(30 * 60);
const DEFAULT_HOP_LIMIT: u32 = 64;
const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// IMDS accepts token TTLs of 1 s to 6 h.
const MAX_IMDS_TOKEN_TTL: Duration = Duration::from_secs(21_600);

/// Session tag limits (AssumeRole API reference).
const MAX_TAG_KEY: usize = 128;
const MAX_TAG_VALUE: usize = 256;

/// The whole validated configuration. Built anew on every reload and swapped in whole.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was read from (for messages and reloads); `None` when parsed from a string.
    pub path: Option<PathBuf>,
    pub sts: StsConfig,
    pub source: SourceConfig,
    pub refresh: RefreshConfig,
    pub ecs: ListenerConfig,
    pub admin: ListenerConfig,
    /// The IMDSv2-compatible listener; `None` when there is no `[imds]` table.
    pub imds: Option<ImdsConfig>,
    /// The audit trail file; `None` when there is no `[audit]` table.
    pub audit: Option<AuditConfig>,
    pub roles: Vec<Arc<RoleConfig>>,
    /// Kubernetes workload identity (DESIGN.md §7); `None` without a `[kubernetes]` table.
    pub kubernetes: Option<KubernetesConfig>,
    /// Problems that do not stop the broker (loose token file modes, roles nobody can fetch).
    pub warnings: Vec<String>,
}

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

/// `[source]`: the credentials the broker signs its STS calls with.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceConfig {
    /// The standard chain: env, profile, web identity, container, IMDS.
    Default,
    /// A named profile from the shared config files.
    Profile { name: String },
    /// Only `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`.
    StaticEnv,
    /// AssumeRoleWithWebIdentity with a token file re-read on every call (IRSA / EKS).
    WebIdentity {
        token_file: PathBuf,
        role_arn: String,
        session_name: String,
    },
}

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
    pub lead: Lead,
    /// Credentials with less than this left are never served (503 instead).
    pub min_remaining: Duration,
    /// Each refresh happens up to this much earlier, at random, so that brokers started
    /// together do not call STS together.
    pub jitter: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Start-up prefetch of each role waits a random delay in `[0, startup_spread)`, so a
    /// fleet restarting together reaches STS as a steady stream, not a spike.
    pub startup_spread: Duration,
    /// Credentials obtained before this instant are dropped on load/reload and re-assumed.
    pub revoke_before: Option<SystemTime>,
}

/// `[ecs]` / `[admin]` / `[imds]`: where a listener binds, which `Host` names it answers, and
/// how much one listener (or one client) may take.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub listen: Vec<SocketAddr>,
    /// Host names accepted besides IP literals and `localhost` (DNS-rebinding defence).
    pub allowed_hosts: Vec<String>,
    /// Connections served at once by this listener; more wait in the kernel's backlog. Each
    /// listener has its own budget, so a flood on ECS leaves the admin endpoint reachable.
    pub max_connections: usize,
    /// Requests per second one peer IP may make (a burst of twice that); beyond it: 429.
    /// `None` (the default): no per-peer limit.
    pub per_peer_rate_limit: Option<f64>,
    /// Source networks allowed to use the listener; others get 403. Empty (the default):
    /// every peer. What works where `hop_limit` does not: a container on a local bridge
    /// reaches a broker in the host's namespace whatever the TTL.
    pub allowed_sources: Vec<ipnet::IpNet>,
}

/// `[audit]`: where the JSON-lines audit trail goes.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditConfig {
    pub path: PathBuf,
}

/// `[imds]`: an IMDSv2-compatible listener exposing one role as the "instance profile", and
/// each `local_users` caller's own role.
#[derive(Debug, Clone, PartialEq)]
pub struct ImdsConfig {
    pub listener: ListenerConfig,
    /// The configured role name this "instance" exposes to callers that no role's
    /// `local_users` names; `None`: only `local_users` callers get a role.
    pub role: Option<String>,
    /// Serve GETs without a session token (IMDSv1). Off: v1 requests get 401.
    pub allow_v1: bool,
    /// Upper bound on the TTL granted to `PUT /latest/api/token`.
    pub max_token_ttl: Duration,
    /// Stricter floor than `[refresh].min_remaining`: botocore's IMDS path extends the expiry
    /// of credentials with less than about 25 minutes left past their real end.
    pub min_remaining: Duration,
    /// IP TTL / hop limit of the listener's packets; 1 gives EC2 parity (a container behind
    /// a NAT bridge, one hop further, cannot reach it).
    pub hop_limit: u32,
}

// === errors ===

/// Which part of the file a problem is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    File,
    Table(&'static str),
    Role(String),
}

/// One problem, naming the file, the table or role, and the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub origin: String,
    pub scope: Scope,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.origin)?;
        match &self.scope {
            Scope::File => {}
            Scope::Table(t) => write!(f, "[{t}]: ")?,
            Scope::Role(r) => write!(f, "role \"{r}\": ")?,
        }
        if let Some(k) = &self.key {
            write!(f, "key \"{k}\": ")?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Facts from the machine that the config depends on, injected so tests are deterministic.
#[derive(Debug, Clone)]
pub struct LoadContext {
    pub hostname: String,
}

impl LoadContext {
    /// The real machine's facts.
    pub fn from_system() -> Self {
        LoadContext {
            hostname: gethostname::gethostname().to_string_lossy().into_owned(),
        }
    }
}

// === raw serde model ===

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSts {
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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSource {
    kind: Option<String>,
    name: Option<String>,
    token_file: Option<PathBuf>,
    role_arn: Option<String>,
    session_name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRefresh {
    lead: Option<String>,
    min_remaining: Option<String>,
    jitter: Option<String>,
    backoff_min: Option<String>,
    backoff_max: Option<String>,
    startup_spread: Option<String>,
    revoke_before: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawListener {
    listen: Option<OneOrMany>,
    #[serde(default)]
    allowed_hosts: Vec<String>,
    max_connections: Option<usize>,
    per_peer_rate_limit: Option<f64>,
    #[serde(default)]
    allowed_sources: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    path: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawImds {
    listen: Option<OneOrMany>,
    #[serde(default)]
    allowed_hosts: Vec<String>,
    max_connections: Option<usize>,
    per_peer_rate_limit: Option<f64>,
    #[serde(default)]
    allowed_sources: Vec<String>,
    role: Option<String>,
    allow_v1: Option<bool>,
    max_token_ttl: Option<String>,
    min_remaining: Option<String>,
    hop_limit: Option<u32>,
}

const TOP_LEVEL_TABLES: &[&str] = &[
    "sts",
    "source",
    "refresh",
    "ecs",
    "admin",
    "imds",
    "audit",
    "role",
    "kubernetes",
];
const AUDIT_KEYS: &[&str] = &["path"];
const STS_KEYS: &[&str] = &[
    "region",
    "endpoint",
    "timeout",
    "max_calls_per_second",
    "failover_regions",
    "endpoints",
    "hedge_after",
    "adaptive_rate",
    "min_calls_per_second",
    "unhealthy_after",
    "cooldown",
];
const SOURCE_KEYS: &[&str] = &["kind", "name", "token_file", "role_arn", "session_name"];
const REFRESH_KEYS: &[&str] = &[
    "lead",
    "min_remaining",
    "jitter",
    "backoff_min",
    "backoff_max",
    "startup_spread",
    "revoke_before",
];
const LISTENER_KEYS: &[&str] = &[
    "listen",
    "allowed_hosts",
    "max_connections",
    "per_peer_rate_limit",
    "allowed_sources",
];
const IMDS_KEYS: &[&str] = &[
    "listen",
    "allowed_hosts",
    "max_connections",
    "per_peer_rate_limit",
    "allowed_sources",
    "role",
    "allow_v1",
    "max_token_ttl",
    "min_remaining",
    "hop_limit",
];
// === loading ===

/// Collects problems while parsing, so that every one is reported.
struct Problems {
    origin: String,
    errors: Vec<ConfigError>,
    warnings: Vec<String>,
}

impl Problems {
    fn error(&mut self, scope: Scope, key: Option<&str>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            origin: self.origin.clone(),
            scope,
            key: key.map(str::to_string),
            message: message.into(),
        });
    }

    fn warn(&mut self, scope: &Scope, key: &str, message: impl fmt::Display) {
        let where_ = match scope {
            Scope::File => String::new(),
            Scope::Table(t) => format!("[{t}]: "),
            Scope::Role(r) => format!("role \"{r}\": "),
        };
        self.warnings
            .push(format!("{}: {where_}key \"{key}\": {message}", self.origin));
    }

    /// Parses a duration string, recording a problem (and returning `None`) when it is bad.
    fn duration(&mut self, scope: &Scope, key: &str, raw: Option<&str>) -> Option<Duration> {
        let raw = raw?;
        match humantime::parse_duration(raw) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(
                    scope.clone(),
                    Some(key),
                    format!("{raw:?} is not a duration like \"15m\" or \"1h\" ({e})"),
                );
                None
            }
        }
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path, ctx: &LoadContext) -> Result<Config, ConfigErrors> {
        let origin = path.display().to_string();
        let text = file::read_bounded(path, file::MAX_CONFIG_BYTES).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                origin: origin.clone(),
                scope: Scope::File,
                key: None,
                message: format!("cannot read the config file: {e}"),
            }])
        })?;
        let mut config = Config::parse(&text, &origin, ctx)?;
        config.path = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses and validates config text; `origin` names it in messages.
    pub fn parse(text: &str, origin: &str, ctx: &LoadContext) -> Result<Config, ConfigErrors> {
        let mut p = Problems {
            origin: origin.to_string(),
            errors: Vec::new(),
            warnings: Vec::new(),
        };
        let table: toml::Table = match toml::from_str(text) {
            Ok(t) => t,
            Err(e) => {
                p.error(Scope::File, None, format!("not valid TOML: {e}"));
                return Err(ConfigErrors(p.errors));
            }
        };
        for key in table.keys() {
            if !TOP_LEVEL_TABLES.contains(&key.as_str()) {
                p.error(
                    Scope::File,
                    Some(key),
                    format!(
                        "unknown table or key; expected one of {}",
                        TOP_LEVEL_TABLES.join(", ")
                    ),
                );
            }
        }

        let sts =
            section::<RawSts>(&mut p, &table, "sts", STS_KEYS).map(|raw| build_sts(&mut p, raw));
        let source = section::<RawSource>(&mut p, &table, "source", SOURCE_KEYS)
            .map(|raw| build_source(&mut p, raw));
        let refresh = section::<RawRefresh>(&mut p, &table, "refresh", REFRESH_KEYS)
            .map(|raw| build_refresh(&mut p, raw));
        let ecs = section::<RawListener>(&mut p, &table, "ecs", LISTENER_KEYS)
            .map(|raw| build_listener(&mut p, "ecs", raw, DEFAULT_ECS_LISTEN));
        let admin = section::<RawListener>(&mut p, &table, "admin", LISTENER_KEYS)
            .map(|raw| build_listener(&mut p, "admin", raw, DEFAULT_ADMIN_LISTEN));
        let mut roles = role::build_roles(
            &mut p,
            table.get("role"),
            refresh.as_ref(),
            source.as_ref(),
            ctx,
        );
        let kubernetes = table.get("kubernetes").and_then(|v| {
            deserialize_known::<kubernetes::RawKubernetes>(
                &mut p,
                Scope::Table("kubernetes"),
                v,
                kubernetes::KUBERNETES_KEYS,
            )
            .and_then(|raw| kubernetes::build_kubernetes(&mut p, raw, &|k| std::env::var(k).ok()))
        });
        kubernetes::finish_roles(
            &mut p,
            &mut roles,
            kubernetes.as_ref(),
            table.contains_key("kubernetes"),
        );
        let imds = match table.get("imds") {
            None => None,
            Some(v) => deserialize_known::<RawImds>(&mut p, Scope::Table("imds"), v, IMDS_KEYS)
                .and_then(|raw| build_imds(&mut p, raw, &roles, refresh.as_ref())),
        };
        let audit = match table.get("audit") {
            None => None,
            Some(v) => deserialize_known::<RawAudit>(&mut p, Scope::Table("audit"), v, AUDIT_KEYS)
                .and_then(|raw| build_audit(&mut p, raw)),
        };
        // A relative-URI path id names exactly one role.
        let mut ids = std::collections::HashMap::new();
        for r in &roles {
            if let Some(id) = &r.relative_uri_id
                && let Some(first) = ids.insert(id.expose().to_string(), r.name.clone())
            {
                p.error(
                    Scope::Role(r.name.clone()),
                    Some("relative_uri_id"),
                    format!(
                        "the same path id as role {first:?} (set relative_uri_id, or give the roles different tokens)"
                    ),
                );
            }
        }
        check_local_users(&mut p, &roles);
        // IMDS serves its role without ECS tokens, local users need none; any other role
        // without tokens is unreachable.
        for r in &roles {
            let is_imds_role = imds
                .as_ref()
                .is_some_and(|i| i.role.as_deref() == Some(r.name.as_str()));
            if r.tokens.is_empty()
                && r.relative_uri_id.is_none()
                && !is_imds_role
                && r.local_users.is_empty()
                && r.spec.workload.is_none()
            {
                p.warn(
                    &Scope::Role(r.name.clone()),
                    "token_files",
                    "no tokens configured: no ECS client can fetch this role",
                );
            }
        }

        match (sts, source, refresh, ecs, admin) {
            (Some(sts), Some(source), Some(refresh), Some(ecs), Some(admin))
                if p.errors.is_empty() =>
            {
                Ok(Config {
                    path: None,
                    sts,
                    source,
                    refresh,
                    ecs,
                    admin,
                    imds,
                    audit,
                    roles,
                    kubernetes,
                    warnings: p.warnings,
                })
            }
            _ => Err(ConfigErrors(p.errors)),
        }
    }

    /// The role called `name`.
    pub fn role(&self, name: &str) -> Option<&Arc<RoleConfig>> {
        self.roles.iter().find(|r| r.name == name)
    }
}

/// Deserializes one optional top-level table, recording a problem when it does not fit.
fn section<T: for<'de> Deserialize<'de> + Default>(
    p: &mut Problems,
    table: &toml::Table,
    name: &'static str,
    known: &[&str],
) -> Option<T> {
    match table.get(name) {
        None => Some(T::default()),
        Some(v) => deserialize_known(p, Scope::Table(name), v, known),
    }
}

/// Reports every unknown key (each by name) and deserializes the known ones, so that one
/// misspelt key does not hide the problems in the rest of the table.
fn deserialize_known<T: for<'de> Deserialize<'de>>(
    p: &mut Problems,
    scope: Scope,
    value: &toml::Value,
    known: &[&str],
) -> Option<T> {
    let Some(table) = value.as_table() else {
        p.error(scope, None, "must be a table");
        return None;
    };
    let mut clean = toml::Table::new();
    for (k, v) in table {
        if known.contains(&k.as_str()) {
            clean.insert(k.clone(), v.clone());
        } else {
            p.error(
                scope.clone(),
                Some(k),
                format!("unknown key; expected one of {}", known.join(", ")),
            );
        }
    }
    match toml::Value::Table(clean).try_into::<T>() {
        Ok(t) => Some(t),
        Err(e) => {
            p.error(scope, None, clean_serde_error(&e.to_string()));
            None
        }
    }
}

/// serde's messages for a sub-value come with a multi-line TOML excerpt; keep the first line.
fn clean_serde_error(msg: &str) -> String {
    msg.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('|') && !l.starts_with("-->"))
        .unwrap_or(msg)
        .trim_start_matches("TOML parse error: ")
        .to_string()
}

fn build_sts(p: &mut Problems, raw: RawSts) -> StsConfig {
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

fn build_source(p: &mut Problems, raw: RawSource) -> SourceConfig {
    let scope = Scope::Table("source");
    let kind = raw.kind.as_deref().unwrap_or("default");
    // Keys that belong to another kind are mistakes worth reporting.
    let present = [
        ("name", raw.name.is_some(), "profile"),
        ("token_file", raw.token_file.is_some(), "web_identity"),
        ("role_arn", raw.role_arn.is_some(), "web_identity"),
        ("session_name", raw.session_name.is_some(), "web_identity"),
    ];
    for (key, is_set, owner) in present {
        if is_set && owner != kind {
            p.error(
                scope.clone(),
                Some(key),
                format!("only used with kind = \"{owner}\", not with kind = \"{kind}\""),
            );
        }
    }
    match kind {
        "default" | "static_env" => {
            if kind == "default" {
                SourceConfig::Default
            } else {
                SourceConfig::StaticEnv
            }
        }
        "profile" => match raw.name {
            Some(name) if !name.is_empty() => SourceConfig::Profile { name },
            _ => {
                p.error(scope, Some("name"), "required with kind = \"profile\"");
                SourceConfig::Default
            }
        },
        "web_identity" => {
            let token_file = raw.token_file.unwrap_or_default();
            if token_file.as_os_str().is_empty() {
                p.error(
                    scope.clone(),
                    Some("token_file"),
                    "required with kind = \"web_identity\"",
                );
            }
            let role_arn = raw.role_arn.unwrap_or_default();
            if let Err(why) = check_role_arn(&role_arn) {
                p.error(scope.clone(), Some("role_arn"), why);
            }
            let session_name = raw.session_name.unwrap_or_else(|| "sts-broker".to_string());
            if let Err(why) = check_session_name(&session_name) {
                p.error(scope, Some("session_name"), why);
            }
            SourceConfig::WebIdentity {
                token_file,
                role_arn,
                session_name,
            }
        }
        other => {
            p.error(
                scope,
                Some("kind"),
                format!(
                    "{other:?} is not one of \"default\", \"web_identity\", \"profile\", \"static_env\""
                ),
            );
            SourceConfig::Default
        }
    }
}

fn build_refresh(p: &mut Problems, raw: RawRefresh) -> RefreshConfig {
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
    let revoke_before = raw
        .revoke_before
        .as_deref()
        .and_then(|t| match parse_instant(t) {
            Ok(t) => Some(t),
            Err(why) => {
                p.error(scope.clone(), Some("revoke_before"), why);
                None
            }
        });
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

fn build_listener(
    p: &mut Problems,
    table: &'static str,
    raw: RawListener,
    default: &str,
) -> ListenerConfig {
    let scope = Scope::Table(table);
    let addrs = match raw.listen {
        None => vec![default.to_string()],
        Some(OneOrMany::One(a)) => vec![a],
        Some(OneOrMany::Many(v)) => v,
    };
    if addrs.is_empty() {
        p.error(scope.clone(), Some("listen"), "needs at least one address");
    }
    let mut listen = Vec::new();
    for a in addrs {
        match a.parse::<SocketAddr>() {
            Ok(s) => listen.push(s),
            Err(_) => p.error(
                scope.clone(),
                Some("listen"),
                format!(
                    "{a:?} is not an IP:port address like \"127.0.0.1:8170\" or \"[::1]:8170\""
                ),
            ),
        }
    }
    let mut allowed_hosts = Vec::new();
    for h in raw.allowed_hosts {
        if h.is_empty() || h.contains([':', '/', ' ']) {
            p.error(
                scope.clone(),
                Some("allowed_hosts"),
                format!("{h:?} must be a bare host name (no port, scheme or path)"),
            );
        } else {
            allowed_hosts.push(h.to_ascii_lowercase());
        }
    }
    let max_connections = raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if max_connections == 0 {
        p.error(scope.clone(), Some("max_connections"), "must be at least 1");
    }
    if let Some(rate) = raw.per_peer_rate_limit
        && !(rate.is_finite() && rate > 0.0)
    {
        p.error(
            scope,
            Some("per_peer_rate_limit"),
            format!("{rate} must be a positive number of requests per second"),
        );
    }
    let mut allowed_sources = Vec::new();
    for net in &raw.allowed_sources {
        match parse_source_net(net) {
            Ok(n) => allowed_sources.push(n),
            Err(why) => p.error(Scope::Table(table), Some("allowed_sources"), why),
        }
    }
    ListenerConfig {
        listen,
        allowed_hosts,
        max_connections,
        per_peer_rate_limit: raw.per_peer_rate_limit,
        allowed_sources,
    }
}

fn build_audit(p: &mut Problems, raw: RawAudit) -> Option<AuditConfig> {
    let Some(path) = raw.path.filter(|p| !p.as_os_str().is_empty()) else {
        p.error(
            Scope::Table("audit"),
            Some("path"),
            "required: the audit trail file",
        );
        return None;
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        p.error(
            Scope::Table("audit"),
            Some("path"),
            format!("the directory {} does not exist", dir.display()),
        );
    }
    Some(AuditConfig { path })
}

fn build_imds(
    p: &mut Problems,
    raw: RawImds,
    roles: &[Arc<RoleConfig>],
    refresh: Option<&RefreshConfig>,
) -> Option<ImdsConfig> {
    let scope = Scope::Table("imds");
    let listener = build_listener(
        p,
        "imds",
        RawListener {
            listen: raw.listen,
            allowed_hosts: raw.allowed_hosts,
            max_connections: raw.max_connections,
            per_peer_rate_limit: raw.per_peer_rate_limit,
            allowed_sources: raw.allowed_sources,
        },
        DEFAULT_IMDS_LISTEN,
    );
    let max_token_ttl = p
        .duration(&scope, "max_token_ttl", raw.max_token_ttl.as_deref())
        .unwrap_or(DEFAULT_IMDS_MAX_TOKEN_TTL);
    if max_token_ttl < Duration::from_secs(1) || max_token_ttl > MAX_IMDS_TOKEN_TTL {
        p.error(
            scope.clone(),
            Some("max_token_ttl"),
            format!(
                "{} is outside what IMDS grants (1s..6h)",
                humantime::format_duration(max_token_ttl)
            ),
        );
    }
    let min_remaining = p
        .duration(&scope, "min_remaining", raw.min_remaining.as_deref())
        .unwrap_or(DEFAULT_IMDS_MIN_REMAINING);
    let hop_limit = raw.hop_limit.unwrap_or(DEFAULT_HOP_LIMIT);
    if !(1..=255).contains(&hop_limit) {
        p.error(
            scope.clone(),
            Some("hop_limit"),
            format!("{hop_limit} must be between 1 and 255"),
        );
    }
    if raw.role.is_none() && !roles.is_empty() && roles.iter().all(|r| r.local_users.is_empty()) {
        p.error(
            scope.clone(),
            Some("role"),
            "required unless some [[role]] has local_users: the [[role]] name this instance exposes",
        );
    }
    if let Some(name) = &raw.role
        && !roles.is_empty()
        && !roles.iter().any(|r| &r.name == name)
    {
        p.error(
            scope.clone(),
            Some("role"),
            format!("{name:?} is not the name of a [[role]]"),
        );
    }
    // Every role IMDS serves must be refreshed before it drops below the IMDS floor.
    for r in roles
        .iter()
        .filter(|r| raw.role.as_deref() == Some(r.name.as_str()) || !r.local_users.is_empty())
    {
        if let Some(refresh) = refresh {
            let lead = refresh.lead.for_lifetime(r.spec.duration);
            if min_remaining >= lead {
                p.error(
                    scope.clone(),
                    Some("min_remaining"),
                    format!(
                        "{} must be less than the refresh lead for role {:?} ({}), or IMDS stops serving before the refresh",
                        humantime::format_duration(min_remaining),
                        r.name,
                        humantime::format_duration(lead)
                    ),
                );
            }
        }
    }
    let role = raw.role;
    Some(ImdsConfig {
        listener,
        role,
        allow_v1: raw.allow_v1.unwrap_or(false),
        max_token_ttl,
        min_remaining,
        hop_limit,
    })
}

/// A UID may be listed by one role only: IMDS answers each user with exactly one role.
/// With no `[imds]`, `local_users` still serves token-less ECS requests.
fn check_local_users(p: &mut Problems, roles: &[Arc<RoleConfig>]) {
    let mut owner: std::collections::HashMap<u32, &str> = std::collections::HashMap::new();
    for r in roles {
        for u in &r.local_users {
            match owner.get(&u.uid) {
                Some(first) => p.error(
                    Scope::Role(r.name.clone()),
                    Some("local_users"),
                    format!(
                        "{} is already a local user of role {first:?}; a user gets one role (IMDS lists exactly one)",
                        describe_user(u)
                    ),
                ),
                None => {
                    owner.insert(u.uid, &r.name);
                }
            }
        }
    }
}

/// `user "billing" (UID 1207)` or `UID 1207`.
pub fn describe_user(u: &LocalUser) -> String {
    match &u.name {
        Some(n) => format!("user {n:?} (UID {})", u.uid),
        None => format!("UID {}", u.uid),
    }
}

// === single-value checks (pure, unit-tested) ===

/// `"127.0.0.0/8"`, `"fd00::/8"`, or a bare address (a /32 or /128). Host bits must be zero,
/// so a typo such as `"10.1.2.3/8"` is not silently widened.
pub fn parse_source_net(s: &str) -> Result<ipnet::IpNet, String> {
    let net = match s.parse::<ipnet::IpNet>() {
        Ok(n) => n,
        Err(_) => match s.parse::<std::net::IpAddr>() {
            Ok(ip) => ipnet::IpNet::from(ip),
            Err(_) => {
                return Err(format!(
                    "{s:?} is not a network like \"127.0.0.0/8\", \"10.0.0.0/8\" or \"fd00::/8\""
                ));
            }
        },
    };
    if net.trunc() != net {
        return Err(format!(
            "{s:?} has host bits set; did you mean \"{}\"?",
            net.trunc()
        ));
    }
    Ok(net)
}

pub(crate) fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Role names appear in URLs and metric labels: keep them plain.
pub fn check_role_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} must be 1..64 characters of [A-Za-z0-9_.-], starting with a letter or digit"
        ))
    }
}

/// `arn:PARTITION:iam::ACCOUNT:role/[PATH/]NAME`; returns the account.
pub fn check_role_arn(arn: &str) -> Result<String, String> {
    let bad =
        || format!("{arn:?} is not an IAM role ARN like \"arn:aws:iam::123456789012:role/name\"");
    if !(20..=2048).contains(&arn.len()) {
        return Err(bad());
    }
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [prefix, partition, service, region, account, resource] = parts[..] else {
        return Err(bad());
    };
    let ok = prefix == "arn"
        && partition.starts_with("aws")
        && service == "iam"
        && region.is_empty()
        && account.len() == 12
        && account.chars().all(|c| c.is_ascii_digit())
        && resource
            .strip_prefix("role/")
            .is_some_and(|r| !r.is_empty() && !r.ends_with('/'))
        && resource
            .chars()
            .all(|c| is_word(c) || "+=,.@/-".contains(c));
    if ok {
        Ok(account.to_string())
    } else {
        Err(bad())
    }
}

/// `arn:PARTITION:iam::(ACCOUNT|aws):policy/[PATH/]NAME`.
pub fn check_policy_arn(arn: &str) -> Result<(), String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let ok = match parts[..] {
        [prefix, partition, service, region, account, resource] => {
            prefix == "arn"
                && partition.starts_with("aws")
                && service == "iam"
                && region.is_empty()
                && (account == "aws"
                    || (account.len() == 12 && account.chars().all(|c| c.is_ascii_digit())))
                && resource
                    .strip_prefix("policy/")
                    .is_some_and(|r| !r.is_empty())
        }
        _ => false,
    };
    if ok && (20..=2048).contains(&arn.len()) {
        Ok(())
    } else {
        Err(format!(
            "{arn:?} is not a managed policy ARN like \"arn:aws:iam::aws:policy/ReadOnlyAccess\""
        ))
    }
}

/// RoleSessionName: 2..64 of `[\w+=,.@-]`.
pub fn check_session_name(name: &str) -> Result<(), String> {
    let ok =
        (2..=64).contains(&name.len()) && name.chars().all(|c| is_word(c) || "+=,.@-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} must be 2..64 characters of letters, digits and +=,.@_-"
        ))
    }
}

/// ExternalId: 2..1224 of `[\w+=,.@:/-]`. The value is secret, so it is not echoed.
pub fn check_external_id(id: &str) -> Result<(), String> {
    if !(2..=1224).contains(&id.len()) {
        return Err(format!("is {} characters; STS accepts 2..1224", id.len()));
    }
    if !id.chars().all(|c| is_word(c) || "+=,.@:/-".contains(c)) {
        return Err("may contain only letters, digits and +=,.@:/_-".to_string());
    }
    Ok(())
}

/// SourceIdentity: 2..64 of `[\w+=,.@-]`, not starting with `aws:`.
pub fn check_source_identity(si: &str) -> Result<(), String> {
    if si.to_ascii_lowercase().starts_with("aws:") {
        return Err(format!("{si:?} must not start with \"aws:\""));
    }
    if !(2..=64).contains(&si.len()) || !si.chars().all(|c| is_word(c) || "+=,.@-".contains(c)) {
        return Err(format!(
            "{si:?} must be 2..64 characters of letters, digits and +=,.@_-"
        ));
    }
    Ok(())
}

/// Session tags: key 1..128, value 0..256, of `[\p{L}\p{Z}\p{N}_.:/=+\-@]`.
pub fn check_tag(key: &str, value: &str) -> Result<(), String> {
    fn allowed(c: char) -> bool {
        c.is_alphabetic()
            || c.is_numeric()
            || (c.is_whitespace() && !c.is_control())
            || "_.:/=+-@".contains(c)
    }
    let klen = key.chars().count();
    if !(1..=MAX_TAG_KEY).contains(&klen) {
        return Err(format!(
            "tag key {key:?} is {klen} characters; STS accepts 1..{MAX_TAG_KEY}"
        ));
    }
    let vlen = value.chars().count();
    if vlen > MAX_TAG_VALUE {
        return Err(format!(
            "value of tag {key:?} is {vlen} characters; STS accepts at most {MAX_TAG_VALUE}"
        ));
    }
    if !key.chars().all(allowed) {
        return Err(format!(
            "tag key {key:?} may contain only letters, digits, spaces and _.:/=+-@"
        ));
    }
    if !value.chars().all(allowed) {
        return Err(format!(
            "value of tag {key:?} may contain only letters, digits, spaces and _.:/=+-@"
        ));
    }
    if key.to_ascii_lowercase().starts_with("aws:") {
        return Err(format!("tag key {key:?} must not start with \"aws:\""));
    }
    Ok(())
}

/// Substitutes `{hostname}` in a session name template. The host name is cut so the result
/// fits STS's 64 characters (long pod names are common) and characters STS rejects become `-`.
pub fn expand_session_name(template: &str, hostname: &str) -> String {
    const PLACEHOLDER: &str = "{hostname}";
    if !template.contains(PLACEHOLDER) {
        return template.to_string();
    }
    let fixed = template.replace(PLACEHOLDER, "");
    let room = 64usize.saturating_sub(fixed.len());
    let host: String = hostname
        .chars()
        .map(|c| {
            if is_word(c) || "+=,.@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(room)
        .collect();
    template
        .replacen(PLACEHOLDER, &host, 1)
        .replace(PLACEHOLDER, "")
}

#[cfg(test)]
mod tests;
