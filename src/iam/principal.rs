//! Who the policies are for: the broker's own principal (the identity that signs its STS
//! calls, as an IAM user or role ARN) and, per role, which identity signs that role's call.

use crate::config::{Config, RoleConfig};

/// Where the broker's principal ARN came from (said in the output).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalOrigin {
    /// `--principal`.
    Flag,
    /// `GetCallerIdentity` with the `[source]` credentials.
    CallerIdentity,
    /// `[source] kind = "web_identity"`: its `role_arn`.
    SourceRoleArn,
}

impl PrincipalOrigin {
    /// How the output says where the ARN came from.
    pub(super) fn describe(self) -> &'static str {
        match self {
            PrincipalOrigin::Flag => "given with --principal",
            PrincipalOrigin::CallerIdentity => {
                "found with GetCallerIdentity on the [source] credentials"
            }
            PrincipalOrigin::SourceRoleArn => "the role_arn of [source] kind = \"web_identity\"",
        }
    }
}

/// IAM users get `put-user-policy`, roles `put-role-policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityKind {
    /// An IAM user (`…:user/NAME`).
    User,
    /// An IAM role (`…:role/NAME`, or an assumed-role session's role).
    Role,
}
/// Why an ARN cannot be the broker's principal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrincipalError {
    /// Not an IAM user, role or assumed-role ARN at all.
    #[error(
        "{0:?} is not an IAM user or role ARN (arn:aws:iam::123456789012:user/NAME, …:role/NAME, or an assumed-role ARN)"
    )]
    NotUserOrRole(String),
    /// `arn:…:iam::ACCOUNT:root`.
    #[error(
        "{0:?} is the account root user, which cannot call AssumeRole: run the broker as an IAM user or role"
    )]
    RootUser(String),
    /// `arn:…:sts::ACCOUNT:federated-user/NAME`.
    #[error(
        "{0:?} is a federated user, which cannot call AssumeRole: run the broker as an IAM user or role"
    )]
    FederatedUser(String),
}

/// The identity the broker signs its STS calls with, as an IAM principal ARN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerPrincipal {
    /// `arn:PARTITION:iam::ACCOUNT:user/…` or `…:role/…`: what a trust policy's `Principal`
    /// takes.
    pub arn: String,
    /// Which `put-*-policy` attaches its permission policy.
    pub kind: IdentityKind,
    /// The user or role name (without its path).
    pub name: String,
    /// Said in the notes, so the operator can tell a guess from what they passed.
    pub origin: PrincipalOrigin,
    /// Converted from an assumed-role ARN, which leaves out the role's path.
    pub path_unknown: bool,
}

impl BrokerPrincipal {
    /// Takes an IAM user or role ARN as is, and turns an assumed-role session ARN
    /// (`arn:aws:sts::ACCOUNT:assumed-role/NAME/SESSION`, what `GetCallerIdentity` answers for
    /// role credentials) into its role's ARN `arn:aws:iam::ACCOUNT:role/NAME`.
    ///
    /// # Errors
    /// Anything that cannot call `AssumeRole` (the root user, a federated user) or is no
    /// user/role ARN.
    pub fn parse(arn: &str, origin: PrincipalOrigin) -> Result<BrokerPrincipal, PrincipalError> {
        let bad = || PrincipalError::NotUserOrRole(arn.to_string());
        let parts: Vec<&str> = arn.splitn(6, ':').collect();
        let [prefix, partition, service, region, account, resource] = parts[..] else {
            return Err(bad());
        };
        if prefix != "arn"
            || !partition.starts_with("aws")
            || !region.is_empty()
            || account.len() != 12
            || !account.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        let last_segment = |path: &str| {
            path.rsplit('/')
                .next()
                .filter(|n| !n.is_empty())
                .map(str::to_string)
        };
        match service {
            "iam" if resource == "root" => Err(PrincipalError::RootUser(arn.to_string())),
            "iam" => {
                let (kind, path) = if let Some(p) = resource.strip_prefix("user/") {
                    (IdentityKind::User, p)
                } else if let Some(p) = resource.strip_prefix("role/") {
                    (IdentityKind::Role, p)
                } else {
                    return Err(bad());
                };
                Ok(BrokerPrincipal {
                    arn: arn.to_string(),
                    kind,
                    name: last_segment(path).ok_or_else(bad)?,
                    origin,
                    path_unknown: false,
                })
            }
            "sts" if resource.starts_with("federated-user/") => {
                Err(PrincipalError::FederatedUser(arn.to_string()))
            }
            "sts" => {
                let rest = resource.strip_prefix("assumed-role/").ok_or_else(bad)?;
                let (name, session) = rest.split_once('/').ok_or_else(bad)?;
                if name.is_empty() || session.is_empty() {
                    return Err(bad());
                }
                Ok(BrokerPrincipal {
                    arn: format!("arn:{partition}:iam::{account}:role/{name}"),
                    kind: IdentityKind::Role,
                    name: name.to_string(),
                    origin,
                    path_unknown: true,
                })
            }
            _ => Err(bad()),
        }
    }
}

/// Who signs a role's STS call: the identity its trust policy trusts and that needs its
/// permission policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The broker's own principal (`[source]`).
    Broker,
    /// Role chaining: the session of the source role `name`, whose role ARN is `arn`.
    SourceRole {
        /// The source role's name in the config.
        name: String,
        /// The source role's `arn`: what the chained role's trust policy names.
        arn: String,
    },
    /// `web_identity` and `saml` calls are unsigned: nothing to grant the broker.
    Unsigned,
}

/// Who signs `role`'s STS call. A `session_token` source role's credentials act as the
/// broker's IAM user, so a role chained from one is called by the broker's principal.
pub fn caller(config: &Config, role: &RoleConfig) -> Caller {
    if !role.spec.kind.signed() {
        return Caller::Unsigned;
    }
    match role.spec.source_role().and_then(|b| config.role(b)) {
        Some(base) if base.spec.kind.yields_role_credentials() => Caller::SourceRole {
            name: base.name.clone(),
            arn: base.spec.arn.clone().unwrap_or_default(),
        },
        _ => Caller::Broker,
    }
}

/// Whether printing `roles` needs the broker's principal.
pub fn needs_principal(config: &Config, roles: &[&RoleConfig]) -> bool {
    roles.iter().any(|r| caller(config, r) == Caller::Broker)
}
