//! `sts-broker env`: the `export` lines a workload needs to use a role through the ECS
//! endpoint.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::local_users;
use crate::config::Config;

/// Why `env` has nothing to print.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// No role of that name.
    #[error("no role named {0:?} in the config")]
    UnknownRole(String),
    /// Nothing to put in the URL.
    #[error("the [ecs] listener has no address")]
    NoEcsAddress,
    /// The workload would have no token to send.
    #[error(
        "role {0:?} has no token_files; give it one so the workload can read its token from a file"
    )]
    NoTokenFile(String),
}

/// The `export` lines a workload needs to use `role` through the ECS endpoint.
///
/// # Errors
/// When the role does not exist or has no token file to point at.
pub fn env_lines(config: &Config, role: &str) -> Result<String, EnvError> {
    let r = config
        .role(role)
        .ok_or_else(|| EnvError::UnknownRole(role.to_string()))?;
    let addr = config.ecs.listen.first().ok_or(EnvError::NoEcsAddress)?;
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
            return Ok(format!(
                "# no token: only for processes of {} on this host (local_users)\nexport AWS_CONTAINER_CREDENTIALS_FULL_URI={}\n",
                local_users(r),
                shell_quote(&url)
            ));
        }
        return Err(EnvError::NoTokenFile(role.to_string()));
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

/// `s` as one shell word: as is when it holds only safe characters, else single-quoted.
fn shell_quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/:._-[]@%+=,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::two_roles;

    #[test]
    fn env_for_a_local_users_role_has_no_token() {
        let c = two_roles(
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
                .to_string()
                .contains("no token_files")
        );
    }
}
