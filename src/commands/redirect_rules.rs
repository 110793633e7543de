//! `sts-broker redirect-rules`: the nftables script that sends the `local_users`' IMDS traffic
//! to the broker, and the script that removes it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::config::Config;

/// The nftables table `redirect-rules` owns; nothing else is touched.
pub const NFT_TABLE: &str = "inet sts_broker_imds";
/// The instance metadata service's IPv4 address.
const IMDS_V4: &str = "169.254.169.254";
/// Its IPv6 address on Nitro instances.
const IMDS_V6: &str = "fd00:ec2::254";

/// Why `redirect-rules` cannot write rules for this config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedirectError {
    /// Nowhere to send the traffic.
    #[error("redirect-rules needs an [imds] listener to send the users' IMDS traffic to")]
    NoImds,
    /// IMDS is reached over IPv4; an IPv6-only listener cannot take it.
    #[error("[imds] listen has no IPv4 address: IMDS traffic (169.254.169.254) is IPv4")]
    NoIpv4,
    /// The rules name the port, so it must be known before the broker starts.
    #[error("[imds] listen {0} has port 0: the rules need a fixed port")]
    PortZero(SocketAddr),
    /// Redirecting IMDS to itself would loop.
    #[error(
        "[imds] listen {0} is the real IMDS address: on an EC2 host bind a loopback address such as 127.0.0.1:8169 and let these rules send the users' traffic there"
    )]
    RealImds(SocketAddr),
    /// No role names any `local_users`.
    #[error("no [[role]] has local_users: there is nobody to redirect")]
    NoLocalUsers,
}

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
pub fn redirect_rules(config: &Config) -> Result<String, RedirectError> {
    let imds = config.imds.as_ref().ok_or(RedirectError::NoImds)?;
    let target = imds
        .listener
        .listen
        .iter()
        .find(|a| a.is_ipv4())
        .ok_or(RedirectError::NoIpv4)?;
    if target.port() == 0 {
        return Err(RedirectError::PortZero(*target));
    }
    let IpAddr::V4(ip) = target.ip() else {
        unreachable!("filtered to IPv4")
    };
    if ip.to_string() == IMDS_V4 {
        return Err(RedirectError::RealImds(*target));
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
        return Err(RedirectError::NoLocalUsers);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::two_roles;

    #[test]
    fn redirect_rules_name_exactly_the_local_users() {
        let c = two_roles(
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
        let c = two_roles(
            "[imds]\nlisten = [\"[::1]:8169\", \"10.0.0.5:8169\"]",
            "local_users = [2001]",
            "",
        );
        assert!(redirect_rules(&c).unwrap().contains(
            "meta skuid { 2001 } ip daddr 169.254.169.254 tcp dport 80 dnat ip to 10.0.0.5:8169"
        ));
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
            let err = redirect_rules(&two_roles(imds, users, "")).unwrap_err();
            assert!(err.to_string().contains(want), "{imds}: {err}");
        }
        assert_eq!(
            redirect_rules_remove(),
            "#!/usr/sbin/nft -f\n# sts-broker: remove the per-user IMDS redirect (nothing else is touched)\ntable inet sts_broker_imds {}\ndelete table inet sts_broker_imds\n"
        );
    }
}
