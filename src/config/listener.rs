//! `[ecs]`, `[admin]` and `[imds]`: where each listener binds and what it lets in; for
//! `[imds]`, which role it serves as the "instance profile".

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::problems::{Problems, Scope};
use super::{RefreshConfig, RoleConfig};

/// Where `[ecs]` listens when `listen` is not set.
pub(super) const DEFAULT_ECS_LISTEN: &str = "127.0.0.1:8170";
/// Where `[admin]` listens when `listen` is not set.
pub(super) const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9469";
const DEFAULT_IMDS_LISTEN: &str = "127.0.0.1:8169";
const DEFAULT_IMDS_MAX_TOKEN_TTL: Duration = Duration::from_secs(6 * 3600);
/// botocore's IMDS path stretches the expiry of credentials with less than ~25 min left.
pub(super) const DEFAULT_IMDS_MIN_REMAINING: Duration = Duration::from_secs(30 * 60);
const DEFAULT_HOP_LIMIT: u32 = 64;
pub(super) const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// IMDS accepts token TTLs of 1 s to 6 h.
const MAX_IMDS_TOKEN_TTL: Duration = Duration::from_secs(21_600);

/// `[ecs]` / `[admin]` / `[imds]`: where a listener binds, which `Host` names it answers, and
/// how much one listener (or one client) may take.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    /// The addresses bound (several: IPv4 and IPv6, or standard and link-local).
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

/// `[imds]`: an IMDSv2-compatible listener exposing one role as the "instance profile", and
/// each `local_users` caller's own role.
#[derive(Debug, Clone, PartialEq)]
pub struct ImdsConfig {
    /// Where it binds and what it lets in, as for the other listeners.
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

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// The keys every listener takes. Not `deny_unknown_fields`: `[imds]` is read as this plus
/// [`RawImds`], and unknown keys are reported before deserializing.
#[derive(Deserialize, Default)]
pub(super) struct RawListener {
    listen: Option<OneOrMany>,
    #[serde(default)]
    allowed_hosts: Vec<String>,
    max_connections: Option<usize>,
    per_peer_rate_limit: Option<f64>,
    #[serde(default)]
    allowed_sources: Vec<String>,
}

/// The keys only `[imds]` takes, besides those of [`RawListener`].
#[derive(Deserialize, Default)]
struct RawImds {
    role: Option<String>,
    allow_v1: Option<bool>,
    max_token_ttl: Option<String>,
    min_remaining: Option<String>,
    hop_limit: Option<u32>,
}

/// Builds one listener table; `default` is where it listens without `listen`.
pub(super) fn build_listener(
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

/// Reads and builds `[imds]`: its listener keys and its own, checked against the roles it
/// serves.
pub(super) fn build_imds(
    p: &mut Problems,
    value: &toml::Value,
    roles: &[Arc<RoleConfig>],
    refresh: Option<&RefreshConfig>,
) -> Option<ImdsConfig> {
    let scope = Scope::Table("imds");
    let known = [
        super::keys::fields::<RawListener>(),
        super::keys::fields::<RawImds>(),
    ]
    .concat();
    let clean = p.known_keys(scope.clone(), value, &known)?;
    let listener = p.table_as::<RawListener>(scope.clone(), clean.clone())?;
    let raw = p.table_as::<RawImds>(scope.clone(), clean)?;
    let listener = build_listener(p, "imds", listener, DEFAULT_IMDS_LISTEN);
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
