//! The one-shot subcommands: `check`, `env`, `credential-process`, `iam-policy`,
//! `redirect-rules`.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::clock;
use crate::config::{Config, SourceConfig};
use crate::creds::{Credentials, FetchError};

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
            crate::config::JwksSource::ApiServer { url, .. } => format!("api_server {url}"),
            crate::config::JwksSource::Discovery { .. } => "discovery".to_string(),
            crate::config::JwksSource::File(p) => format!("file {}", p.display()),
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
            let users: Vec<String> = r
                .local_users
                .iter()
                .map(crate::config::describe_user)
                .collect();
            let _ = write!(line, " local users {}", users.join(", "));
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

/// The nftables table `redirect-rules` owns; nothing else is touched.
pub const NFT_TABLE: &str = "inet sts_broker_imds";
/// The instance metadata service's IPv4 address.
const IMDS_V4: &str = "169.254.169.254";
/// Its IPv6 address on Nitro instances.
const IMDS_V6: &str = "fd00:ec2::254";

/// `redirect-rules --remove`: deletes the table if it exists, and succeeds when it does not
/// (nft 1.0.6 has no `destroy`: declaring the table first makes the delete always valid).
/// Needs no config, so that a unit whose config was broken meanwhile still cleans up.
pub fn redirect_rules_remove() -> String {
    format!(
        "#!/usr/sbin/nft -f\n# sts-broker: remove the per-user IMDS redirect (nothing else is touched)\ntable {NFT_TABLE} {{}}\ndelete table {NFT_TABLE}\n"
    )
}

/// `redirect-rules`: the nftables script that sends TCP to 169.254.169.254:80 from exactly the
/// configured `local_users` to the broker's IMDS listener (DESIGN §10). Everybody else — root,
/// the broker's own user, unlisted users — keeps reaching the real IMDS. The script replaces
/// its own table atomically (one `nft -f` transaction) and touches nothing else.
///
/// # Errors
/// No `[imds]` listener with an IPv4 address and a fixed port, or no `local_users` at all.
pub fn redirect_rules(config: &Config) -> Result<String, String> {
    let imds = config
        .imds
        .as_ref()
        .ok_or("redirect-rules needs an [imds] listener to send the users' IMDS traffic to")?;
    let target = imds
        .listener
        .listen
        .iter()
        .find(|a| a.is_ipv4())
        .ok_or("[imds] listen has no IPv4 address: IMDS traffic (169.254.169.254) is IPv4")?;
    if target.port() == 0 {
        return Err(format!(
            "[imds] listen {target} has port 0: the rules need a fixed port"
        ));
    }
    let IpAddr::V4(ip) = target.ip() else {
        unreachable!("filtered to IPv4")
    };
    if ip.to_string() == IMDS_V4 {
        return Err(format!(
            "[imds] listen {target} is the real IMDS address: on an EC2 host bind a loopback address such as 127.0.0.1:8169 and let these rules send the users' traffic there"
        ));
    }
    // `redirect` sends to 127.0.0.1 (the primary loopback address for locally generated
    // packets); any other address takes a `dnat`.
    let action = if ip.is_unspecified() || ip == Ipv4Addr::LOCALHOST {
        format!("redirect to :{}", target.port())
    } else {
        format!("dnat ip to {target}")
    };
    let mut users: Vec<(u32, String)> = Vec::new();
    for r in &config.roles {
        for u in &r.local_users {
            users.push((
                u.uid,
                format!(
                    "#   {} -> role {:?}",
                    crate::config::describe_user(u),
                    r.name
                ),
            ));
        }
    }
    if users.is_empty() {
        return Err("no [[role]] has local_users: there is nobody to redirect".into());
    }
    users.sort();
    let uids: Vec<String> = users.iter().map(|(u, _)| u.to_string()).collect();
    let uids = uids.join(", ");
    let listed: Vec<&str> = users.iter().map(|(_, l)| l.as_str()).collect();
    let origin = config
        .path
        .as_ref()
        .map_or_else(|| "(inline)".to_string(), |p| p.display().to_string());
    Ok(format!(
        "#!/usr/sbin/nft -f
# sts-broker redirect-rules, from {origin}
# TCP to the instance metadata service ({IMDS_V4}:80) from these users only goes to the
# broker's IMDS listener {target}:
{listed}
# Everybody else (root, the broker's own user, unlisted users) stays on the real IMDS.
# No sysctl is needed: nftables `redirect`/`dnat` of locally generated traffic to a loopback
# address works with net.ipv4.conf.*.route_localnet = 0.
# The same users are refused the IPv6 IMDS endpoint ([{IMDS_V6}]:80), which would otherwise
# still hand them the instance profile's credentials.
# Re-applying replaces the table in one transaction; `redirect-rules --remove` deletes it.
table {NFT_TABLE} {{}}
delete table {NFT_TABLE}
table {NFT_TABLE} {{
\tchain output_nat {{
\t\ttype nat hook output priority -100; policy accept;
\t\tmeta skuid {{ {uids} }} ip daddr {IMDS_V4} tcp dport 80 {action}
\t}}
\tchain output_filter {{
\t\ttype filter hook output priority 0; policy accept;
\t\tmeta skuid {{ {uids} }} ip6 daddr {IMDS_V6} tcp dport 80 reject with tcp reset
\t}}
}}
",
        listed = listed.join("\n"),
    ))
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

fn join_addrs(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `export` lines a workload needs to use `role` through the ECS endpoint.
///
/// # Errors
/// When the role does not exist or has no token file to point at.
pub fn env_lines(config: &Config, role: &str) -> Result<String, String> {
    let r = config
        .role(role)
        .ok_or_else(|| format!("no role named {role:?} in the config"))?;
    let addr = config
        .ecs
        .listen
        .first()
        .ok_or("the [ecs] listener has no address")?;
    // A wildcard bind is reached over loopback; every SDK accepts loopback over plain http.
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let url = format!(
        "http://{}/v1/credentials/{}",
        SocketAddr::new(ip, addr.port()),
        r.name
    );
    let Some(file) = r.token_files.first() else {
        if !r.local_users.is_empty() {
            // Local users need no token: the broker asks the kernel who owns the socket.
            let users: Vec<String> = r
                .local_users
                .iter()
                .map(crate::config::describe_user)
                .collect();
            return Ok(format!(
                "# no token: only for processes of {} on this host (local_users)\nexport AWS_CONTAINER_CREDENTIALS_FULL_URI={}\n",
                users.join(", "),
                shell_quote(&url)
            ));
        }
        return Err(format!(
            "role {role:?} has no token_files; give it one so the workload can read its token from a file"
        ));
    };
    let mut out = format!(
        "export AWS_CONTAINER_CREDENTIALS_FULL_URI={}\nexport AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE={}\n",
        shell_quote(&url),
        shell_quote(&file.display().to_string())
    );
    if let Some(id) = &r.relative_uri_id {
        // botocore and Rust prefer RELATIVE_URI over FULL_URI when both are set, and always
        // fetch it from 169.254.170.2:80: export it only when the broker listens there.
        let relative = format!(
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI={}{}",
            crate::config::relative_uri::PREFIX,
            id.expose()
        );
        let ecs_address: SocketAddr = ([169, 254, 170, 2], 80).into();
        if config.ecs.listen.contains(&ecs_address) {
            let _ = writeln!(out, "export {relative}");
        } else {
            let _ = writeln!(
                out,
                "# for SDKs that read only the relative URI, with the broker reachable at 169.254.170.2:80:\n# export {relative}"
            );
        }
    }
    Ok(out)
}

fn shell_quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/:._-[]@%+=,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The `credential_process` JSON (`Version: 1`) for `~/.aws/config` users.
pub fn credential_process_json(c: &Credentials) -> String {
    serde_json::json!({
        "Version": 1,
        "AccessKeyId": c.access_key_id,
        "SecretAccessKey": c.secret_access_key.expose(),
        "SessionToken": c.session_token.expose(),
        "Expiration": crate::wire::rfc3339(c.expiration),
    })
    .to_string()
}

/// Obtains credentials for `role` once with the configured STS and source credentials; a
/// chained role first obtains its source role's (no cache: this is a one-shot command).
///
/// # Errors
/// Unknown role, STS set-up failure, or the classified STS error.
pub async fn assume_once(config: &Config, role: &str) -> Result<Credentials, String> {
    let sts = crate::source::build_sts(config).await?;
    // The chain from `role` back to a role without a source, then obtained from the far end.
    let mut chain = Vec::new();
    let mut at = role;
    loop {
        let r = config
            .role(at)
            .ok_or_else(|| format!("no role named {at:?} in the config"))?;
        chain.push(r);
        match r.spec.source_role() {
            Some(base) if chain.len() <= config.roles.len() => at = base,
            Some(_) => return Err("source_role chain has a cycle".to_string()),
            None => break,
        }
    }
    let mut signer = None;
    for r in chain.into_iter().rev() {
        let inputs = crate::source::gather_inputs(r, signer.take())
            .await
            .map_err(|e| e.to_string())?;
        signer = Some(
            sts.obtain(r, inputs)
                .await
                .and_then(|c| c.validated(r.spec.duration, clock::now()))
                .map_err(|e: FetchError| format!("role {:?}: {e}", r.name))?,
        );
    }
    signer.ok_or_else(|| "no credentials".to_string())
}

/// What `iam-policy` was asked for.
#[derive(Debug, Clone)]
pub struct IamPolicyRequest {
    /// One role, or every role.
    pub role: Option<String>,
    /// `--principal`: the broker's IAM user or role ARN (an assumed-role ARN is converted).
    pub principal: Option<String>,
    pub format: crate::iam::PolicyFormat,
    /// Print one bare policy document instead.
    pub only: Option<crate::iam::PolicyDocument>,
}

/// Why `iam-policy` printed nothing; each maps to an exit code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IamPolicyError {
    /// The command line asks for something that does not exist (64).
    #[error("{0}")]
    Usage(String),
    /// No such role (78, as for `env`).
    #[error("{0}")]
    Config(String),
    /// The broker's principal could not be found (69).
    #[error("{0}")]
    Unavailable(String),
}

/// `iam-policy`'s stdout, and warnings for stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IamPolicyOutput {
    pub stdout: String,
    pub warnings: Vec<String>,
}

/// The IAM policies the requested roles need ([`crate::iam`]). The broker's principal comes
/// from `--principal`, else from `[source] kind = "web_identity"`'s `role_arn`, else from
/// `GetCallerIdentity` with the `[source]` credentials — asked only when a role needs it.
///
/// # Errors
/// Unknown role, `--only` without a document to print, a bad `--principal`, or no way to
/// find the principal.
pub async fn iam_policy(
    config: &Config,
    req: &IamPolicyRequest,
) -> Result<IamPolicyOutput, IamPolicyError> {
    use crate::iam::{self, BrokerPrincipal, PolicyDocument, PolicyFormat, PrincipalOrigin};

    let roles: Vec<&crate::config::RoleConfig> = match &req.role {
        Some(name) => vec![
            config
                .role(name)
                .ok_or_else(|| {
                    IamPolicyError::Config(format!("no role named {name:?} in the config"))
                })?
                .as_ref(),
        ],
        None => config.roles.iter().map(AsRef::as_ref).collect(),
    };
    let merged = req.only == Some(PolicyDocument::Permission) && req.role.is_none();
    if req.only == Some(PolicyDocument::Trust) && req.role.is_none() {
        return Err(IamPolicyError::Usage(
            "--only trust needs --role: every role has its own trust policy".to_string(),
        ));
    }
    let principal = match (&req.principal, &config.source) {
        (Some(arn), _) => Some(
            BrokerPrincipal::parse(arn, PrincipalOrigin::Flag)
                .map_err(|e| IamPolicyError::Usage(format!("--principal: {e}")))?,
        ),
        _ if !merged && !iam::needs_principal(config, &roles) => None,
        (None, SourceConfig::WebIdentity { role_arn, .. }) => Some(
            BrokerPrincipal::parse(role_arn, PrincipalOrigin::SourceRoleArn)
                .map_err(IamPolicyError::Config)?,
        ),
        (None, _) => {
            let unavailable = |e: String| {
                IamPolicyError::Unavailable(format!(
                    "cannot find the broker's principal with GetCallerIdentity: {e}; pass it with --principal ARN"
                ))
            };
            let sts = crate::source::build_sts(config)
                .await
                .map_err(unavailable)?;
            let who = sts
                .caller_identity()
                .await
                .map_err(|e| unavailable(e.to_string()))?;
            Some(
                BrokerPrincipal::parse(&who.arn, PrincipalOrigin::CallerIdentity)
                    .map_err(IamPolicyError::Unavailable)?,
            )
        }
    };
    let policies: Vec<iam::RolePolicies> = roles
        .iter()
        .map(|r| iam::role_policies(config, r, principal.as_ref()))
        .collect();
    let mut warnings = Vec::new();
    let stdout = match req.only {
        None => match req.format {
            PolicyFormat::Json => iam::render_json(&policies),
            PolicyFormat::Text => iam::render_text(&policies),
        },
        Some(PolicyDocument::Permission) if merged => {
            let arn = principal
                .as_ref()
                .map_or(iam::UNKNOWN_PRINCIPAL, |p| p.arn.as_str());
            let (policy, skipped) = iam::merged_permission_policy(&policies, arn);
            warnings.extend(skipped);
            if policy.statements.is_empty() {
                return Err(IamPolicyError::Usage(
                    "no role is signed by the broker's principal: it needs no permission policy"
                        .to_string(),
                ));
            }
            iam::render_document(&policy)
        }
        Some(which) => {
            let p = &policies[0];
            let doc = match which {
                PolicyDocument::Trust => p.trust_policy.as_ref(),
                PolicyDocument::Permission => p.permission_policy.as_ref(),
            };
            let doc = doc.ok_or_else(|| {
                IamPolicyError::Usage(format!(
                    "role {:?} (kind {}) needs no {} policy",
                    p.role,
                    p.kind,
                    match which {
                        PolicyDocument::Trust => "trust",
                        PolicyDocument::Permission => "permission",
                    }
                ))
            })?;
            iam::render_document(doc)
        }
    };
    Ok(IamPolicyOutput { stdout, warnings })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LoadContext;

    fn parse(imds: &str, users_a: &str, users_b: &str) -> Config {
        let text = format!(
            "[sts]\nregion = \"us-east-1\"\n{imds}\n\
             [[role]]\nname = \"billing\"\narn = \"arn:aws:iam::123456789012:role/billing\"\n{users_a}\n\
             [[role]]\nname = \"reports\"\narn = \"arn:aws:iam::123456789012:role/reports\"\n{users_b}\n"
        );
        Config::parse(
            &text,
            "t.toml",
            &LoadContext {
                hostname: "h".into(),
            },
        )
        .unwrap()
    }

    #[test]
    fn redirect_rules_name_exactly_the_local_users() {
        let c = parse(
            "[imds]\nlisten = \"127.0.0.1:8169\"",
            "local_users = [\"nobody\", 2001]",
            "local_users = [2002]",
        );
        let script = redirect_rules(&c).unwrap();
        let rule = script
            .lines()
            .find(|l| l.contains("redirect to"))
            .unwrap()
            .trim();
        assert_eq!(
            rule,
            "meta skuid { 2001, 2002, 65534 } ip daddr 169.254.169.254 tcp dport 80 redirect to :8169"
        );
        assert!(script.contains("#   user \"nobody\" (UID 65534) -> role \"billing\""));
        assert!(script.contains("#   UID 2002 -> role \"reports\""));
        assert!(
            script.contains(
                "meta skuid { 2001, 2002, 65534 } ip6 daddr fd00:ec2::254 tcp dport 80 reject with tcp reset"
            ),
            "{script}"
        );
        // The table is replaced in one transaction, never flushed with the rest of the ruleset.
        assert!(
            script.contains("table inet sts_broker_imds {}\ndelete table inet sts_broker_imds\n")
        );
        assert!(!script.contains("flush ruleset"));
        // Another address than 127.0.0.1 takes a dnat.
        let c = parse(
            "[imds]\nlisten = [\"[::1]:8169\", \"10.0.0.5:8169\"]",
            "local_users = [2001]",
            "",
        );
        assert!(redirect_rules(&c).unwrap().contains(
            "meta skuid { 2001 } ip daddr 169.254.169.254 tcp dport 80 dnat ip to 10.0.0.5:8169"
        ));
    }

    #[test]
    fn env_for_a_local_users_role_has_no_token() {
        let c = parse(
            "",
            "local_users = [2001]",
            "tokens = [\"tok-0123456789abcdef\"]",
        );
        assert_eq!(
            env_lines(&c, "billing").unwrap(),
            "# no token: only for processes of UID 2001 on this host (local_users)\n\
             export AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:8170/v1/credentials/billing\n"
        );
        assert!(
            env_lines(&c, "reports")
                .unwrap_err()
                .contains("no token_files")
        );
    }

    #[test]
    fn redirect_rules_refuse_what_cannot_work() {
        let cases = [
            ("", "local_users = [2001]", "needs an [imds] listener"),
            (
                "[imds]\nlisten = \"127.0.0.1:0\"",
                "local_users = [2001]",
                "port 0",
            ),
            (
                "[imds]\nlisten = \"[::1]:8169\"",
                "local_users = [2001]",
                "no IPv4 address",
            ),
            (
                "[imds]\nlisten = \"169.254.169.254:80\"",
                "local_users = [2001]",
                "is the real IMDS address",
            ),
            (
                "[imds]\nlisten = \"127.0.0.1:8169\"\nrole = \"billing\"",
                "tokens = [\"tok-0123456789abcdef\"]",
                "nobody to redirect",
            ),
        ];
        for (imds, users, want) in cases {
            let err = redirect_rules(&parse(imds, users, "")).unwrap_err();
            assert!(err.contains(want), "{imds}: {err}");
        }
        assert_eq!(
            redirect_rules_remove(),
            "#!/usr/sbin/nft -f\n# sts-broker: remove the per-user IMDS redirect (nothing else is touched)\ntable inet sts_broker_imds {}\ndelete table inet sts_broker_imds\n"
        );
    }
}
