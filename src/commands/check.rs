//! `sts-broker check`: the summary of a valid config. Never contains secrets: tokens and
//! external IDs are counted or flagged, not shown.

use std::fmt::Write as _;
use std::net::SocketAddr;

use super::local_users;
use crate::config::{Config, JwksSource, SourceConfig};

/// The summary `check` prints for a valid config. Never contains secrets: tokens and
/// external IDs are counted or flagged, not shown.
pub fn check_summary(config: &Config) -> String {
    let mut out = String::new();
    let source = match &config.source {
        SourceConfig::Default => "default AWS chain".to_string(),
        SourceConfig::Profile { name } => format!("profile {name:?}"),
        SourceConfig::StaticEnv => "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY".to_string(),
        SourceConfig::WebIdentity { role_arn, .. } => format!("web identity as {role_arn}"),
    };
    let _ = writeln!(
        out,
        "config OK: {} role(s); STS {} (region {}), source credentials: {source}",
        config.roles.len(),
        config.sts.endpoint.as_deref().unwrap_or("default endpoint"),
        config.sts.region.as_deref().unwrap_or("from the AWS chain"),
    );
    write_sts_plan(&mut out, config);
    let _ = writeln!(
        out,
        "ecs: {}{}  admin: {}{}",
        join_addrs(&config.ecs.listen),
        sources(&config.ecs.allowed_sources),
        join_addrs(&config.admin.listen),
        sources(&config.admin.allowed_sources)
    );
    if let Some(imds) = &config.imds {
        let _ = writeln!(
            out,
            "imds: {}{} role {:?} v1 {} max token ttl {} min remaining {} hop limit {}",
            join_addrs(&imds.listener.listen),
            sources(&imds.listener.allowed_sources),
            imds.role
                .as_deref()
                .unwrap_or("(none: local_users callers only)"),
            if imds.allow_v1 { "allowed" } else { "off" },
            humantime::format_duration(imds.max_token_ttl),
            humantime::format_duration(imds.min_remaining),
            imds.hop_limit,
        );
    }
    if let Some(k) = &config.kubernetes {
        let jwks = match &k.jwks {
            JwksSource::ApiServer { url, .. } => format!("api_server {url}"),
            JwksSource::Discovery { .. } => "discovery".to_string(),
            JwksSource::File(p) => format!("file {}", p.display()),
        };
        let _ = writeln!(
            out,
            "kubernetes: issuer {} audiences {:?} keys from {jwks} cluster {} node {} session idle {} max sessions {}",
            k.issuer,
            k.audiences,
            k.cluster_name.as_deref().unwrap_or("none"),
            k.node_name.as_deref().unwrap_or("any"),
            humantime::format_duration(k.session_idle),
            k.max_sessions,
        );
    }
    for r in &config.roles {
        let s = &r.spec;
        let mut line = format!(
            "role {:?}: kind {} {} duration {}",
            r.name,
            s.kind.as_str(),
            s.arn.as_deref().unwrap_or("(no role ARN)"),
            humantime::format_duration(s.duration),
        );
        if let Some(name) = &s.session_name {
            let _ = write!(line, " session {name:?}");
        }
        if let Some(base) = s.source_role() {
            let _ = write!(line, " chained from {base:?}");
        }
        if let Some(w) = &s.workload {
            let accounts: Vec<String> =
                w.service_accounts.iter().map(ToString::to_string).collect();
            let _ = write!(
                line,
                " service accounts [{}] session scope {}",
                accounts.join(", "),
                w.scope.as_str()
            );
            if let Some(t) = &w.session_template {
                let _ = write!(line, " caller sessions {t:?}");
            }
        }
        let _ = write!(
            line,
            " tags {} policy_arns {} inline policy {} external id {} source identity {} tokens {} relative uri {} prefetch {}",
            s.tags().len(),
            s.policy_arns.len(),
            if s.policy.is_some() { "yes" } else { "no" },
            if s.has_external_id() { "set" } else { "none" },
            s.source_identity().unwrap_or("none"),
            r.tokens.len(),
            if r.relative_uri_id.is_some() {
                "on"
            } else {
                "off"
            },
            s.prefetch,
        );
        if !r.local_users.is_empty() {
            let _ = write!(line, " local users {}", local_users(r));
        }
        let _ = writeln!(out, "{line}");
    }
    for w in &config.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}

/// ` (sources 127.0.0.0/8, ::1/128)` when a listener has an `allowed_sources` list.
fn sources(nets: &[ipnet::IpNet]) -> String {
    if nets.is_empty() {
        return String::new();
    }
    let list: Vec<String> = nets.iter().map(ToString::to_string).collect();
    format!(" (sources {})", list.join(", "))
}

/// The STS endpoint order, the call rate and fleet settings: what an operator checks before
/// a rollout.
fn write_sts_plan(out: &mut String, config: &Config) {
    let sts = &config.sts;
    match &sts.region {
        Some(region) => match sts.targets(region) {
            Ok(targets) => {
                let _ = writeln!(out, "sts endpoints, in the order calls try them:");
                for (i, t) in targets.iter().enumerate() {
                    let _ = writeln!(out, "  {}. {} (signs for {})", i + 1, t.label(), t.region);
                }
            }
            Err(problems) => {
                let _ = writeln!(out, "sts endpoints: {}", problems.join("; "));
            }
        },
        None => {
            let _ = writeln!(
                out,
                "sts endpoints: the AWS chain's region first, then {}",
                if sts.endpoints.is_empty() && sts.failover_regions.is_empty() {
                    "no failover".to_string()
                } else if sts.endpoints.is_empty() {
                    format!("regions {}", sts.failover_regions.join(", "))
                } else {
                    sts.endpoints.join(", ")
                }
            );
        }
    }
    let _ = writeln!(
        out,
        "sts calls: timeout {} per call (all endpoints), at most {}/s, adaptive rate {}, \
         endpoint skipped after {} failures for {}, hedge {}",
        humantime::format_duration(sts.timeout),
        sts.max_calls_per_second,
        if sts.adaptive_rate {
            format!("on (floor {}/s)", sts.min_calls_per_second)
        } else {
            "off".to_string()
        },
        sts.unhealthy_after,
        humantime::format_duration(sts.cooldown),
        sts.hedge_after.map_or("off".to_string(), |h| format!(
            "after {}",
            humantime::format_duration(h)
        )),
    );
    let r = &config.refresh;
    if !r.startup_spread.is_zero() || r.revoke_before.is_some() {
        let _ = writeln!(
            out,
            "refresh: startup spread {}, revoke_before {}",
            humantime::format_duration(r.startup_spread),
            r.revoke_before
                .map_or("none".to_string(), |t| humantime::format_rfc3339_seconds(t)
                    .to_string()),
        );
    }
    for role in &config.roles {
        if let Some(t) = role.revoke_before {
            let _ = writeln!(
                out,
                "role {:?}: revoke_before {}",
                role.name,
                humantime::format_rfc3339_seconds(t)
            );
        }
    }
}

/// `a, b`: a listener's addresses.
fn join_addrs(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
