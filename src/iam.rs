//! `sts-broker iam-policy`: the IAM policies every configured role needs, and the likely causes
//! of an `AccessDenied` from STS.
//!
//! Pure: a [`Config`] and the broker's principal in, policy documents out. Finding the
//! principal (`--principal`, `[source] role_arn` or `GetCallerIdentity`) is
//! `commands::iam_policy`'s job.
//!
//! For each role:
//! - the **trust policy** (the role's "assume role policy"): who may obtain the role and how.
//!   `assume_role`: `Principal` `{"AWS": CALLER}`, `sts:AssumeRole`, plus `sts:TagSession` when
//!   session tags reach the session (its own `tags`, or transitive tags inherited through
//!   chaining), `sts:SetSourceIdentity` when a source identity does, and a `StringEquals`
//!   `sts:ExternalId` condition with an external ID. `web_identity` / `saml`: the federated
//!   principal with `sts:AssumeRoleWithWebIdentity` / `sts:AssumeRoleWithSAML` and the usual
//!   audience (and subject) conditions, placeholders in `<…>` to fill. The token kinds have no
//!   role, so no trust policy.
//! - the **permission policy** of the *caller*, the identity that signs the STS call: the
//!   broker's principal, or for a chained role (`source_role`) the source role's own role. The
//!   trust policy's actions on exactly the role's ARN; `sts:GetSessionToken` /
//!   `sts:GetFederationToken` (`Resource` `*`: these actions have no resource type). None for
//!   `web_identity` / `saml`, whose calls are unsigned.
//!
//! Output ([`render_json`]): JSON Lines, one object per role —
//! `{"role","kind","role_arn","caller","trust_policy","permission_policy","notes"}`, the two
//! policies `null` when the kind needs none — so `jq` reads it line by line.
//! [`render_text`] prints the same policies pretty, every annotation on a `#` line.
//!
//! The external ID is a secret everywhere else, but the trust policy's `sts:ExternalId`
//! condition must hold its value: that policy is the one place it is printed, because the
//! operator asked for it. It is never logged, and [`access_denied_hint`] never shows it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Serialize, Serializer};

use crate::config::{Config, RoleConfig, RoleKind, SourceConfig};
use crate::creds::Secret;

/// `Version` of every policy printed.
pub const POLICY_VERSION: &str = "2012-10-17";
/// Written where the operator must fill something in.
pub const OIDC_PROVIDER_PLACEHOLDER: &str = "<OIDC_PROVIDER>";
/// The web identity token's subject, as EKS writes it for a service account.
pub const OIDC_SUBJECT_PLACEHOLDER: &str = "system:serviceaccount:<NAMESPACE>:<SERVICE_ACCOUNT>";
/// Used for the caller when the broker's principal is not known.
pub const UNKNOWN_PRINCIPAL: &str = "<BROKER_PRINCIPAL_ARN>";

/// `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyFormat {
    /// JSON Lines: one object per role.
    Json,
    /// The policies pretty-printed with `#` annotations.
    Text,
}

/// `--only`: one bare policy document, ready for `file://`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyDocument {
    Trust,
    Permission,
}

// === the broker's principal ===

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
    fn describe(self) -> &'static str {
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
    User,
    Role,
}

/// The identity the broker signs its STS calls with, as an IAM principal ARN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerPrincipal {
    /// `arn:PARTITION:iam::ACCOUNT:user/…` or `…:role/…`: what a trust policy's `Principal`
    /// takes.
    pub arn: String,
    pub kind: IdentityKind,
    /// The user or role name (without its path).
    pub name: String,
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
    pub fn parse(arn: &str, origin: PrincipalOrigin) -> Result<BrokerPrincipal, String> {
        let bad = || {
            format!(
                "{arn:?} is not an IAM user or role ARN (arn:aws:iam::123456789012:user/NAME, …:role/NAME, or an assumed-role ARN)"
            )
        };
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
            "iam" if resource == "root" => Err(format!(
                "{arn:?} is the account root user, which cannot call AssumeRole: run the broker as an IAM user or role"
            )),
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
            "sts" if resource.starts_with("federated-user/") => Err(format!(
                "{arn:?} is a federated user, which cannot call AssumeRole: run the broker as an IAM user or role"
            )),
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

// === policy documents ===

/// An IAM policy document, fields in the order IAM shows them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Policy {
    #[serde(rename = "Version")]
    pub version: &'static str,
    #[serde(rename = "Statement")]
    pub statements: Vec<Statement>,
}

impl Policy {
    fn new(statements: Vec<Statement>) -> Policy {
        Policy {
            version: POLICY_VERSION,
            statements,
        }
    }
}

/// One `Allow` statement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Statement {
    #[serde(rename = "Effect")]
    pub effect: &'static str,
    #[serde(rename = "Principal", skip_serializing_if = "Option::is_none")]
    pub principal: Option<Principal>,
    #[serde(rename = "Action")]
    pub actions: Vec<&'static str>,
    #[serde(rename = "Resource", skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Operator → key → value.
    #[serde(rename = "Condition", skip_serializing_if = "BTreeMap::is_empty")]
    pub condition: BTreeMap<&'static str, BTreeMap<String, ConditionValue>>,
}

impl Statement {
    fn allow(actions: Vec<&'static str>) -> Statement {
        Statement {
            effect: "Allow",
            principal: None,
            actions,
            resource: None,
            condition: BTreeMap::new(),
        }
    }

    fn string_equals(mut self, key: impl Into<String>, value: ConditionValue) -> Statement {
        self.condition
            .entry("StringEquals")
            .or_default()
            .insert(key.into(), value);
        self
    }
}

/// A trust policy's `Principal`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Principal {
    /// An IAM user or role.
    #[serde(rename = "AWS")]
    Aws(String),
    /// An OIDC or SAML provider.
    Federated(String),
}

/// A condition value; the external ID stays a [`Secret`] (redacted in `Debug`) until it is
/// serialized into the policy the operator asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum ConditionValue {
    Plain(String),
    Secret(Secret),
}

impl Serialize for ConditionValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ConditionValue::Plain(v) => s.serialize_str(v),
            // The trust policy's sts:ExternalId must hold the value: the one place it leaves.
            ConditionValue::Secret(v) => s.serialize_str(v.expose()),
        }
    }
}

// === per role ===

/// Who signs a role's STS call: the identity its trust policy trusts and that needs its
/// permission policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The broker's own principal (`[source]`).
    Broker,
    /// Role chaining: the session of the source role `name`, whose role ARN is `arn`.
    SourceRole { name: String, arn: String },
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

/// What a chained session inherits from the sessions it is chained from.
#[derive(Debug, Default)]
struct Inherited {
    /// Transitive tag keys of the source roles (they pass down the whole chain).
    transitive_tag_keys: Vec<String>,
    /// A source identity set up the chain (it persists through chaining).
    source_identity: Option<String>,
}

fn inherited(config: &Config, role: &RoleConfig) -> Inherited {
    let mut out = Inherited::default();
    let mut at = role.spec.source_role();
    let mut hops = 0;
    while let Some(name) = at {
        let Some(base) = config.role(name) else { break };
        hops += 1;
        if hops > config.roles.len() {
            break; // validated configs have no cycles; stay finite anyway
        }
        if let RoleKind::AssumeRole {
            transitive_tag_keys,
            source_identity,
            ..
        } = &base.spec.kind
        {
            out.transitive_tag_keys
                .extend(transitive_tag_keys.iter().cloned());
            if out.source_identity.is_none() {
                out.source_identity.clone_from(source_identity);
            }
        }
        at = base.spec.source_role();
    }
    out
}

/// Everything `iam-policy` prints for one role (one JSON Lines object).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolePolicies {
    pub role: String,
    /// `assume_role`, `web_identity`, …
    pub kind: &'static str,
    pub role_arn: Option<String>,
    /// The ARN of the identity that signs the call and needs `permission_policy`; `None` for
    /// unsigned calls.
    pub caller: Option<String>,
    /// `None` for the token kinds (no role).
    pub trust_policy: Option<Policy>,
    /// `None` for unsigned calls.
    pub permission_policy: Option<Policy>,
    /// Why each action and condition is there, and what to check.
    pub notes: Vec<String>,
}

/// The account and partition of an ARN (`arn:PARTITION:SERVICE::ACCOUNT:…`).
fn arn_partition_account(arn: &str) -> Option<(&str, &str)> {
    let mut parts = arn.splitn(6, ':');
    let (_, partition, _, _, account) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    Some((partition, account))
}

/// `(path, name)` of an IAM user/role ARN: `…:role/a/b/name` → `("/a/b/", "name")`.
fn iam_path_and_name(arn: &str) -> Option<(String, &str)> {
    let resource = arn.splitn(6, ':').nth(5)?;
    let (_, rest) = resource.split_once('/')?;
    let (path, name) = match rest.rsplit_once('/') {
        Some((p, n)) => (format!("/{p}/"), n),
        None => ("/".to_string(), rest),
    };
    Some((path, name))
}

/// The SAML sign-in endpoint (`SAML:aud`) of a partition.
fn saml_audience(partition: &str) -> &'static str {
    match partition {
        "aws-cn" => "https://signin.amazonaws.cn/saml",
        "aws-us-gov" => "https://signin.amazonaws-us-gov.com/saml",
        _ => "https://signin.aws.amazon.com/saml",
    }
}

fn quoted_keys<'a>(keys: impl IntoIterator<Item = &'a str>) -> String {
    keys.into_iter()
        .map(|k| format!("{k:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The policies `role` needs. `principal` is the broker's; without it the caller is written
/// as [`UNKNOWN_PRINCIPAL`].
pub fn role_policies(
    config: &Config,
    role: &RoleConfig,
    principal: Option<&BrokerPrincipal>,
) -> RolePolicies {
    let spec = &role.spec;
    let role_arn = spec.arn.clone();
    let arn = role_arn.clone().unwrap_or_default();
    let mut notes = Vec::new();
    let who = caller(config, role);
    let caller_arn = match &who {
        Caller::Broker => Some(principal.map_or(UNKNOWN_PRINCIPAL.to_string(), |p| p.arn.clone())),
        Caller::SourceRole { arn, .. } => Some(arn.clone()),
        Caller::Unsigned => None,
    };
    match &who {
        Caller::Broker => {
            if let Some(p) = principal {
                notes.push(format!(
                    "caller: the broker's principal {} ({})",
                    p.arn,
                    p.origin.describe()
                ));
                if p.path_unknown {
                    notes.push(format!(
                        "the broker's principal was derived from an assumed-role ARN, which leaves out the role's path: if role {:?} has a path, pass its full ARN with --principal (aws iam get-role --role-name {} --query Role.Arn)",
                        p.name, p.name
                    ));
                }
            } else {
                notes.push(format!(
                    "caller: the broker's principal, unknown here: replace {UNKNOWN_PRINCIPAL} or pass --principal"
                ));
            }
            if matches!(config.source, SourceConfig::WebIdentity { .. })
                && matches!(spec.kind, RoleKind::AssumeRole { .. })
            {
                notes.push(
                    "[source] kind = \"web_identity\" gives the broker role credentials: this role is assumed by that role's session (role chaining, sessions of at most 1h)".to_string(),
                );
            }
        }
        Caller::SourceRole {
            name,
            arn: base_arn,
        } => {
            let base_name = iam_path_and_name(base_arn).map_or("?", |(_, n)| n);
            notes.push(format!(
                "chained from role {name:?}: this role is assumed with {name:?}'s session, so its trust policy trusts {name:?}'s role {base_arn}, and that role (not the broker's principal) needs the permission policy: aws iam put-role-policy --role-name {base_name} --policy-name sts-broker-{} --policy-document file://{}-permissions.json; chained sessions last at most 1h",
                role.name, role.name
            ));
        }
        Caller::Unsigned => {}
    }
    if let (Some(c), Some((_, role_account))) = (&caller_arn, arn_partition_account(&arn))
        && let Some((_, caller_account)) = arn_partition_account(c)
        && caller_account.len() == 12
        && caller_account != role_account
    {
        notes.push(format!(
            "cross-account: the trust policy goes on the role in account {role_account}, the permission policy on the caller in account {caller_account}; both are needed"
        ));
    }
    if spec.policy.is_some() || !spec.policy_arns.is_empty() {
        notes.push(
            "policy / policy_arns are session policies: they only narrow what the role's (or user's) own permissions allow and need nothing in IAM but the managed policies existing in that account".to_string(),
        );
    }

    let (trust_policy, permission_policy) = match &spec.kind {
        RoleKind::AssumeRole {
            external_id,
            tags,
            transitive_tag_keys,
            source_identity,
            ..
        } => {
            let up = inherited(config, role);
            let mut actions = vec!["sts:AssumeRole"];
            // Kubernetes callers with their own sessions: the broker tags each session with
            // the caller (EKS Pod Identity's keys, transitive).
            let caller_tags = spec
                .workload
                .as_ref()
                .map(|w| {
                    w.scope.caller_tag_keys(
                        config
                            .kubernetes
                            .as_ref()
                            .is_some_and(|k| k.cluster_name.is_some()),
                    )
                })
                .unwrap_or_default();
            if !tags.is_empty() || !up.transitive_tag_keys.is_empty() || !caller_tags.is_empty() {
                actions.push("sts:TagSession");
            }
            if !caller_tags.is_empty() {
                notes.push(format!(
                    "sts:TagSession (trust and permission policy): each Kubernetes caller session is tagged with {} (transitive), as EKS Pod Identity does; policies can test aws:PrincipalTag/kubernetes-namespace",
                    quoted_keys(caller_tags.iter().copied())
                ));
            }
            if !tags.is_empty() {
                notes.push(format!(
                    "sts:TagSession (trust and permission policy): this role sends session tags ({})",
                    quoted_keys(tags.iter().map(|(k, _)| k.as_str()))
                ));
            }
            if !up.transitive_tag_keys.is_empty() {
                notes.push(format!(
                    "sts:TagSession (trust and permission policy): transitive session tags ({}) reach this session from the role it is chained from",
                    quoted_keys(up.transitive_tag_keys.iter().map(String::as_str))
                ));
            }
            if !transitive_tag_keys.is_empty() {
                notes.push(format!(
                    "transitive_tag_keys ({}): these tags pass on to roles chained from this one, whose policies then need sts:TagSession too",
                    quoted_keys(transitive_tag_keys.iter().map(String::as_str))
                ));
            }
            if source_identity.is_some() || up.source_identity.is_some() {
                actions.push("sts:SetSourceIdentity");
            }
            if let Some(si) = source_identity {
                notes.push(format!(
                    "sts:SetSourceIdentity (trust and permission policy): this role sends source identity {si:?}; once set it cannot be changed for the session or the roles chained from it"
                ));
            } else if let Some(si) = &up.source_identity {
                notes.push(format!(
                    "sts:SetSourceIdentity (trust and permission policy): source identity {si:?} persists into this session from the role it is chained from"
                ));
            }
            let mut trust = Statement::allow(actions.clone());
            trust.principal = Some(Principal::Aws(
                caller_arn
                    .clone()
                    .unwrap_or_else(|| UNKNOWN_PRINCIPAL.into()),
            ));
            if let Some(x) = external_id {
                trust = trust.string_equals("sts:ExternalId", ConditionValue::Secret(x.clone()));
                notes.push(
                    "sts:ExternalId: the condition holds this role's external_id, a secret that sts-broker prints nowhere else; hand the trust policy to the role's owner privately and do not commit it".to_string(),
                );
            }
            let mut permission = Statement::allow(actions);
            permission.resource = Some(arn.clone());
            (
                Some(Policy::new(vec![trust])),
                Some(Policy::new(vec![permission])),
            )
        }
        RoleKind::WebIdentity { .. } => {
            let (partition, account) = arn_partition_account(&arn).unwrap_or(("aws", "ACCOUNT"));
            let p = OIDC_PROVIDER_PLACEHOLDER;
            let mut trust = Statement::allow(vec!["sts:AssumeRoleWithWebIdentity"])
                .string_equals(
                    format!("{p}:aud"),
                    ConditionValue::Plain("sts.amazonaws.com".into()),
                )
                .string_equals(
                    format!("{p}:sub"),
                    ConditionValue::Plain(OIDC_SUBJECT_PLACEHOLDER.into()),
                );
            trust.principal = Some(Principal::Federated(format!(
                "arn:{partition}:iam::{account}:oidc-provider/{p}"
            )));
            notes.push(format!(
                "replace {p} with the token issuer's URL without https:// (EKS: aws eks describe-cluster --name CLUSTER --query cluster.identity.oidc.issuer), registered in account {account} (aws iam create-open-id-connect-provider), and the subject with the token's sub claim"
            ));
            notes.push(
                "no permission policy: AssumeRoleWithWebIdentity is unsigned, the token is the credential; if the identity provider passes session tags, add sts:TagSession to the trust policy".to_string(),
            );
            (Some(Policy::new(vec![trust])), None)
        }
        RoleKind::Saml { principal_arn, .. } => {
            let (partition, _) = arn_partition_account(&arn).unwrap_or(("aws", ""));
            let mut trust = Statement::allow(vec!["sts:AssumeRoleWithSAML"]).string_equals(
                "SAML:aud",
                ConditionValue::Plain(saml_audience(partition).into()),
            );
            trust.principal = Some(Principal::Federated(principal_arn.clone()));
            notes.push(format!(
                "SAML:aud must match the assertion's Recipient (the sign-in endpoint), and its https://aws.amazon.com/SAML/Attributes/Role attribute must list {arn},{principal_arn}"
            ));
            notes.push(
                "no permission policy: AssumeRoleWithSAML is unsigned, the assertion is the credential; if the identity provider passes session tags, add sts:TagSession to the trust policy".to_string(),
            );
            (Some(Policy::new(vec![trust])), None)
        }
        RoleKind::SessionToken { mfa } => {
            let mut permission = Statement::allow(vec!["sts:GetSessionToken"]);
            permission.resource = Some("*".into());
            notes.push(
                "Resource \"*\": sts:GetSessionToken has no resource type, so IAM accepts no narrower Resource (the caller can only get a token for itself)".to_string(),
            );
            notes.push(
                "no trust policy: GetSessionToken obtains no role; it must be signed with an IAM user's long-term access keys".to_string(),
            );
            if let Some(mfa) = mfa {
                notes.push(format!(
                    "mfa_serial {} must be the broker's IAM user's MFA device; policies conditioned on aws:MultiFactorAuthPresent then apply to these sessions",
                    mfa.serial
                ));
            }
            (None, Some(Policy::new(vec![permission])))
        }
        RoleKind::FederationToken { tags, .. } => {
            let mut actions = vec!["sts:GetFederationToken"];
            if !tags.is_empty() {
                actions.push("sts:TagSession");
                notes.push(format!(
                    "sts:TagSession: this role sends session tags ({})",
                    quoted_keys(tags.iter().map(|(k, _)| k.as_str()))
                ));
            }
            let mut permission = Statement::allow(actions);
            permission.resource = Some("*".into());
            notes.push(
                "Resource \"*\": sts:GetFederationToken has no resource type, so IAM accepts no narrower Resource".to_string(),
            );
            notes.push(
                "no trust policy: GetFederationToken obtains no role; it must be signed with an IAM user's long-term access keys".to_string(),
            );
            notes.push(
                "the federated user's effective permissions are the intersection of the broker user's own permissions and the session policy (policy / policy_arns): the broker's user must itself be allowed everything the federated sessions need".to_string(),
            );
            if spec.policy.is_none() && spec.policy_arns.is_empty() {
                notes.push(
                    "no policy or policy_arns: the federated sessions have no permissions except through resource policies naming them".to_string(),
                );
            }
            (None, Some(Policy::new(vec![permission])))
        }
    };
    if matches!(
        spec.kind,
        RoleKind::SessionToken { .. } | RoleKind::FederationToken { .. }
    ) && who == Caller::Broker
        && principal.is_some_and(|p| p.kind == IdentityKind::Role)
    {
        notes.push(
            "warning: the broker's principal is a role, but this kind needs IAM user credentials: STS will refuse the call".to_string(),
        );
    }
    RolePolicies {
        role: role.name.clone(),
        kind: spec.kind.as_str(),
        role_arn,
        caller: caller_arn,
        trust_policy,
        permission_policy,
        notes,
    }
}

/// The permission policies of every role `principal_arn` signs for, merged into one document
/// (identical statements once), and the roles left out because another identity signs them.
pub fn merged_permission_policy(
    policies: &[RolePolicies],
    principal_arn: &str,
) -> (Policy, Vec<String>) {
    let mut statements: Vec<Statement> = Vec::new();
    let mut skipped = Vec::new();
    for p in policies {
        let Some(permission) = &p.permission_policy else {
            continue;
        };
        if p.caller.as_deref() != Some(principal_arn) {
            skipped.push(format!(
                "role {:?} is signed by {}, not by the broker's principal: print its permission policy with --role {}",
                p.role,
                p.caller.as_deref().unwrap_or("?"),
                p.role
            ));
            continue;
        }
        for s in &permission.statements {
            if !statements.contains(s) {
                statements.push(s.clone());
            }
        }
    }
    (Policy::new(statements), skipped)
}

// === rendering ===

/// JSON Lines: one compact object per role.
pub fn render_json(policies: &[RolePolicies]) -> String {
    let mut out = String::new();
    for p in policies {
        out.push_str(&serde_json::to_string(p).expect("policies serialize to JSON"));
        out.push('\n');
    }
    out
}

/// A policy document pretty-printed, with a trailing newline.
pub fn render_document(policy: &Policy) -> String {
    let mut s = serde_json::to_string_pretty(policy).expect("policies serialize to JSON");
    s.push('\n');
    s
}

/// The policies pretty-printed; every annotation on a `#` line, so dropping those lines
/// leaves a stream of JSON documents.
pub fn render_text(policies: &[RolePolicies]) -> String {
    let mut out = String::new();
    for (i, p) in policies.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "# role {:?} (kind {}){}",
            p.role,
            p.kind,
            p.role_arn
                .as_deref()
                .map(|a| format!(": {a}"))
                .unwrap_or_default()
        );
        match &p.caller {
            Some(c) => {
                let _ = writeln!(out, "# signed by {c}");
            }
            None => {
                let _ = writeln!(
                    out,
                    "# unsigned STS call: the token or assertion is the credential"
                );
            }
        }
        match (&p.trust_policy, &p.role_arn) {
            (Some(trust), Some(arn)) => {
                let (path, name) = iam_path_and_name(arn).unwrap_or(("/".into(), &p.role));
                let path_arg = if path == "/" {
                    String::new()
                } else {
                    format!(" --path {path}")
                };
                let _ = writeln!(out, "#\n# trust policy, on role {arn}:");
                let _ = writeln!(
                    out,
                    "#   aws iam create-role --role-name {name}{path_arg} --assume-role-policy-document file://{}-trust.json",
                    p.role
                );
                let _ = writeln!(
                    out,
                    "#   (a role that exists: aws iam update-assume-role-policy --role-name {name} --policy-document file://{}-trust.json)",
                    p.role
                );
                out.push_str(&render_document(trust));
            }
            _ => {
                let _ = writeln!(out, "#\n# no trust policy: this kind obtains no role");
            }
        }
        match (&p.permission_policy, &p.caller) {
            (Some(permission), Some(caller)) => {
                let _ = writeln!(out, "#\n# permission policy, on {caller}:");
                let attach = match iam_path_and_name(caller) {
                    Some((_, name)) if caller.contains(":user/") => {
                        format!("aws iam put-user-policy --user-name {name}")
                    }
                    Some((_, name)) if caller.contains(":role/") => {
                        format!("aws iam put-role-policy --role-name {name}")
                    }
                    _ => "aws iam put-user-policy --user-name USER".to_string(),
                };
                let _ = writeln!(
                    out,
                    "#   {attach} --policy-name sts-broker-{} --policy-document file://{}-permissions.json",
                    p.role, p.role
                );
                out.push_str(&render_document(permission));
            }
            _ => {
                let _ = writeln!(
                    out,
                    "#\n# no permission policy: the broker signs no call for this role"
                );
            }
        }
        if !p.notes.is_empty() {
            let _ = writeln!(out, "#\n# notes:");
            for n in &p.notes {
                let _ = writeln!(out, "#   - {n}");
            }
        }
    }
    out
}

// === AccessDenied diagnosis ===

/// The likely causes of an `AccessDenied` for `role`, specific to its config, ending with the
/// command that prints the policies it needs. Never contains the external ID.
pub fn access_denied_hint(role: &RoleConfig) -> String {
    let spec = &role.spec;
    let arn = spec.arn.as_deref().unwrap_or("the role");
    let mut causes: Vec<String> = Vec::new();
    match &spec.kind {
        RoleKind::AssumeRole {
            external_id,
            tags,
            source_identity,
            source_role,
            ..
        } => {
            match source_role {
                Some(base) => {
                    causes.push(format!(
                        "the trust policy of {arn} does not trust the role of source role {base:?} (a chained role is assumed by its source role's session)"
                    ));
                    causes.push(format!(
                        "the permission policy of source role {base:?}'s role does not allow sts:AssumeRole on {arn}"
                    ));
                }
                None => {
                    causes.push(format!(
                        "the trust policy of {arn} does not trust the broker's principal (the identity STS names)"
                    ));
                    causes.push(format!(
                        "the broker principal's permission policy does not allow sts:AssumeRole on {arn}"
                    ));
                }
            }
            if !tags.is_empty() {
                causes.push(
                    "the trust policy (and the caller's permission policy) must allow sts:TagSession because this role sends session tags".to_string(),
                );
            }
            if source_identity.is_some() {
                causes.push(
                    "the trust policy (and the caller's permission policy) must allow sts:SetSourceIdentity because this role sends a source identity".to_string(),
                );
            }
            if external_id.is_some() {
                causes.push(
                    "the trust policy's sts:ExternalId condition must equal this role's external_id exactly (compare them; the value is not shown here)".to_string(),
                );
            } else {
                causes.push(
                    "a trust policy with an sts:ExternalId condition (usual for third-party roles) needs external_id in this role's config".to_string(),
                );
            }
        }
        RoleKind::WebIdentity { .. } => {
            causes.push(format!(
                "the trust policy of {arn} must trust the OIDC provider that issued the token (Principal Federated …:oidc-provider/ISSUER) for sts:AssumeRoleWithWebIdentity"
            ));
            causes.push(
                "its ISSUER:aud and ISSUER:sub conditions must match the token's aud and sub claims".to_string(),
            );
        }
        RoleKind::Saml { principal_arn, .. } => {
            causes.push(format!(
                "the trust policy of {arn} must trust {principal_arn} (Principal Federated) for sts:AssumeRoleWithSAML"
            ));
            causes.push(
                "its SAML:aud condition must match the assertion's Recipient, and the assertion's Role attribute must name this role and provider".to_string(),
            );
        }
        RoleKind::SessionToken { .. } => {
            causes.push(
                "the broker principal's permission policy does not allow sts:GetSessionToken (Resource \"*\")".to_string(),
            );
            causes.push(
                "GetSessionToken needs an IAM user's long-term keys, not role or session credentials".to_string(),
            );
        }
        RoleKind::FederationToken { tags, .. } => {
            causes.push(
                "the broker principal's permission policy does not allow sts:GetFederationToken (Resource \"*\")".to_string(),
            );
            if !tags.is_empty() {
                causes.push(
                    "it must also allow sts:TagSession because this role sends session tags"
                        .to_string(),
                );
            }
            causes.push(
                "GetFederationToken needs an IAM user's long-term keys, not role or session credentials".to_string(),
            );
        }
    }
    let numbered: Vec<String> = causes
        .iter()
        .enumerate()
        .map(|(i, c)| format!("({}) {c}", i + 1))
        .collect();
    format!(
        "likely causes for this role: {}; to print the policies it needs, run `sts-broker iam-policy -c CONFIG --role {}`",
        numbered.join("; "),
        role.name
    )
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::config::LoadContext;

    const BROKER: &str = "arn:aws:iam::123456789012:user/sts-broker";
    const SECRET_ID: &str = "SECRET-MARKER-ext-id-42";

    fn config(roles: &str) -> Config {
        config_with("", roles)
    }

    fn config_with(head: &str, roles: &str) -> Config {
        let text = format!("[sts]\nregion = \"us-east-1\"\n{head}\n{roles}");
        let ctx = LoadContext {
            hostname: "node-1".into(),
        };
        Config::parse(&text, "test.toml", &ctx).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    fn broker() -> BrokerPrincipal {
        BrokerPrincipal::parse(BROKER, PrincipalOrigin::Flag).unwrap()
    }

    fn role_arn(name: &str) -> String {
        format!("arn:aws:iam::123456789012:role/{name}")
    }

    /// `[[role]]` of kind assume_role named `name` with `extra` lines.
    fn assume(name: &str, extra: &str) -> String {
        format!(
            "[[role]]\nname = \"{name}\"\narn = \"{}\"\ntokens = [\"tok-0123456789abcdef\"]\n{extra}\n",
            role_arn(name)
        )
    }

    fn kind(name: &str, kind: &str, extra: &str) -> String {
        format!(
            "[[role]]\nname = \"{name}\"\nkind = \"{kind}\"\ntokens = [\"tok-0123456789abcdef\"]\n{extra}\n"
        )
    }

    fn policies_json(config: &Config, role: &str) -> Value {
        let r = config.role(role).unwrap();
        serde_json::to_value(role_policies(config, r, Some(&broker()))).unwrap()
    }

    fn policy(statement: Value) -> Value {
        json!({"Version": "2012-10-17", "Statement": [statement]})
    }

    struct Case {
        docs: &'static str,
        roles: String,
        role: &'static str,
        caller: Option<String>,
        trust: Option<Value>,
        permission: Option<Value>,
        /// Fragments some note must contain.
        notes: &'static [&'static str],
    }

    fn cases(web_token: &str) -> Vec<Case> {
        let app = role_arn("app");
        let base = role_arn("base");
        vec![
            Case {
                docs: "plain assume_role: the broker's principal is trusted and may assume exactly this role",
                roles: assume("app", ""),
                role: "app",
                caller: Some(BROKER.into()),
                trust: Some(policy(json!({"Effect": "Allow", "Principal": {"AWS": BROKER}, "Action": ["sts:AssumeRole"]}))),
                permission: Some(policy(json!({"Effect": "Allow", "Action": ["sts:AssumeRole"], "Resource": app}))),
                notes: &["caller: the broker's principal"],
            },
            Case {
                docs: "session tags need sts:TagSession on both sides",
                roles: assume("app", "tags = { team = \"payments\", env = \"prod\" }"),
                role: "app",
                caller: Some(BROKER.into()),
                trust: Some(policy(json!({"Effect": "Allow", "Principal": {"AWS": BROKER}, "Action": ["sts:AssumeRole", "sts:TagSession"]}))),
                permission: Some(policy(json!({"Effect": "Allow", "Action": ["sts:AssumeRole", "sts:TagSession"], "Resource": app}))),
                notes: &["sends session tags (\"env\", \"team\")"],
            },
            Case {
                docs: "a source identity needs sts:SetSourceIdentity on both sides",
                roles: assume("app", "source_identity = \"alice\""),
                role: "app",
                caller: Some(BROKER.into()),
                trust: Some(policy(json!({"Effect": "Allow", "Principal": {"AWS": BROKER}, "Action": ["sts:AssumeRole", "sts:SetSourceIdentity"]}))),
                permission: Some(policy(json!({"Effect": "Allow", "Action": ["sts:AssumeRole", "sts:SetSourceIdentity"], "Resource": app}))),
                notes: &["source identity \"alice\""],
            },
            Case {
                docs: "an external ID is a trust policy condition only",
                roles: assume("app", &format!("external_id = \"{SECRET_ID}\"")),
                role: "app",
                caller: Some(BROKER.into()),
                trust: Some(policy(json!({"Effect": "Allow", "Principal": {"AWS": BROKER}, "Action": ["sts:AssumeRole"],
                    "Condition": {"StringEquals": {"sts:ExternalId": SECRET_ID}}}))),
                permission: Some(policy(json!({"Effect": "Allow", "Action": ["sts:AssumeRole"], "Resource": app}))),
                notes: &["sts:ExternalId: the condition holds this role's external_id, a secret"],
            },
            Case {
                docs: "every option at once",
                roles: assume("app", &format!("external_id = \"{SECRET_ID}\"\ntags = {{ team = \"payments\" }}\ntransitive_tag_keys = [\"team\"]\nsource_identity = \"alice\"")),
                role: "app",
                caller: Some(BROKER.into()),
                trust: Some(policy(json!({"Effect": "Allow", "Principal": {"AWS": BROKER},
                    "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"],
                    "Condition": {"StringEquals": {"sts:ExternalId": SECRET_ID}}}))),
                permission: Some(policy(json!({"Effect": "Allow", "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"], "Resource": app}))),
                notes: &["transitive_tag_keys (\"team\")"],
            },
            Case {
                docs: "chaining: the source role's role is trusted and needs the permission policy",
                roles: assume("app", "source_role = \"base\"") + &assume("base", ""),
                role: "app",
                caller: Some(base.clone()),
                trust: Some(policy(json!({"Effect": "Allow", "Principal": {"AWS": base}, "Action": ["sts:AssumeRole"]}))),
                permission: Some(policy(json!({"Effect": "Allow", "Action": ["sts:AssumeRole"], "Resource": app}))),
                notes: &["chained from role \"base\"", "put-role-policy --role-name base", "at most 1h"],
            },
            Case {
                docs: "the source role of a chain is an ordinary role of the broker",
                roles: assume("app", "source_role = \"base\"") + &assume("base", ""),
                role: "base",
                caller: Some(BROKER.into()),
                trust: Some(policy(json!({"Effect": "Allow", "Principal": {"AWS": BROKER}, "Action": ["sts:AssumeRole"]}))),
                permission: Some(policy(json!({"Effect": "Allow", "Action": ["sts:AssumeRole"], "Resource": base}))),
                notes: &[],
            },
            Case {
                docs: "transitive tags and a source identity up the chain reach the chained session",
                roles: assume("app", "source_role = \"mid\"")
                    + &assume("mid", "source_role = \"base\"")
                    + &assume("base", "tags = { team = \"payments\" }\ntransitive_tag_keys = [\"team\"]\nsource_identity = \"alice\""),
                role: "app",
                caller: Some(role_arn("mid")),
                trust: Some(policy(json!({"Effect": "Allow", "Principal": {"AWS": role_arn("mid")},
                    "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"]}))),
                permission: Some(policy(json!({"Effect": "Allow", "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"], "Resource": app}))),
                notes: &["transitive session tags (\"team\") reach this session", "\"alice\" persists"],
            },
            Case {
                docs: "tags that are not transitive stay in the source session",
                roles: assume("app", "source_role = \"base\"") + &assume("base", "tags = { team = \"payments\" }"),
                role: "app",
                caller: Some(base.clone()),
                trust: Some(policy(json!({"Effect": "Allow", "Principal": {"AWS": base}, "Action": ["sts:AssumeRole"]}))),
                permission: Some(policy(json!({"Effect": "Allow", "Action": ["sts:AssumeRole"], "Resource": app}))),
                notes: &[],
            },
            Case {
                docs: "chained from a session token: GetSessionToken credentials act as the broker's user",
                roles: assume("app", "source_role = \"mfa\"") + &kind("mfa", "session_token", ""),
                role: "app",
                caller: Some(BROKER.into()),
                trust: Some(policy(json!({"Effect": "Allow", "Principal": {"AWS": BROKER}, "Action": ["sts:AssumeRole"]}))),
                permission: Some(policy(json!({"Effect": "Allow", "Action": ["sts:AssumeRole"], "Resource": app}))),
                notes: &[],
            },
            Case {
                docs: "cross-account: both policies, in two accounts",
                roles: "[[role]]\nname = \"far\"\narn = \"arn:aws:iam::222222222222:role/deploy/far\"\ntokens = [\"tok-0123456789abcdef\"]\n".into(),
                role: "far",
                caller: Some(BROKER.into()),
                trust: Some(policy(json!({"Effect": "Allow", "Principal": {"AWS": BROKER}, "Action": ["sts:AssumeRole"]}))),
                permission: Some(policy(json!({"Effect": "Allow", "Action": ["sts:AssumeRole"], "Resource": "arn:aws:iam::222222222222:role/deploy/far"}))),
                notes: &["cross-account: the trust policy goes on the role in account 222222222222"],
            },
            Case {
                docs: "web identity: the OIDC provider is trusted, audience and subject placeholders; unsigned, so no permission policy",
                roles: kind("irsa", "web_identity", &format!("arn = \"arn:aws:iam::111111111111:role/irsa\"\nweb_identity_token_file = {web_token:?}")),
                role: "irsa",
                caller: None,
                trust: Some(policy(json!({"Effect": "Allow",
                    "Principal": {"Federated": "arn:aws:iam::111111111111:oidc-provider/<OIDC_PROVIDER>"},
                    "Action": ["sts:AssumeRoleWithWebIdentity"],
                    "Condition": {"StringEquals": {"<OIDC_PROVIDER>:aud": "sts.amazonaws.com",
                        "<OIDC_PROVIDER>:sub": "system:serviceaccount:<NAMESPACE>:<SERVICE_ACCOUNT>"}}}))),
                permission: None,
                notes: &["no permission policy: AssumeRoleWithWebIdentity is unsigned", "registered in account 111111111111"],
            },
            Case {
                docs: "SAML: the provider is trusted with the sign-in audience; unsigned",
                roles: kind("corp", "saml", "arn = \"arn:aws:iam::123456789012:role/corp\"\nprincipal_arn = \"arn:aws:iam::123456789012:saml-provider/corp-idp\"\nsaml_assertion_command = [\"/bin/echo\", \"x\"]"),
                role: "corp",
                caller: None,
                trust: Some(policy(json!({"Effect": "Allow",
                    "Principal": {"Federated": "arn:aws:iam::123456789012:saml-provider/corp-idp"},
                    "Action": ["sts:AssumeRoleWithSAML"],
                    "Condition": {"StringEquals": {"SAML:aud": "https://signin.aws.amazon.com/saml"}}}))),
                permission: None,
                notes: &["no permission policy: AssumeRoleWithSAML is unsigned", "must list arn:aws:iam::123456789012:role/corp,arn:aws:iam::123456789012:saml-provider/corp-idp"],
            },
            Case {
                docs: "session token: no role, GetSessionToken on * (no resource type)",
                roles: kind("mfa", "session_token", "mfa_serial = \"arn:aws:iam::123456789012:mfa/ops\"\nmfa_code_command = [\"/bin/echo\", \"123456\"]"),
                role: "mfa",
                caller: Some(BROKER.into()),
                trust: None,
                permission: Some(policy(json!({"Effect": "Allow", "Action": ["sts:GetSessionToken"], "Resource": "*"}))),
                notes: &["sts:GetSessionToken has no resource type", "IAM user's long-term access keys", "mfa_serial arn:aws:iam::123456789012:mfa/ops"],
            },
            Case {
                docs: "federation token: GetFederationToken on *, effective permissions are an intersection",
                roles: kind("fed", "federation_token", "federated_name = \"intranet\"\npolicy_arns = [\"arn:aws:iam::aws:policy/ReadOnlyAccess\"]"),
                role: "fed",
                caller: Some(BROKER.into()),
                trust: None,
                permission: Some(policy(json!({"Effect": "Allow", "Action": ["sts:GetFederationToken"], "Resource": "*"}))),
                notes: &["intersection of the broker user's own permissions and the session policy", "sts:GetFederationToken has no resource type"],
            },
            Case {
                docs: "federation token with session tags adds sts:TagSession",
                roles: kind("fed", "federation_token", "federated_name = \"intranet\"\npolicy_arns = [\"arn:aws:iam::aws:policy/ReadOnlyAccess\"]\ntags = { team = \"web\" }"),
                role: "fed",
                caller: Some(BROKER.into()),
                trust: None,
                permission: Some(policy(json!({"Effect": "Allow", "Action": ["sts:GetFederationToken", "sts:TagSession"], "Resource": "*"}))),
                notes: &["sends session tags (\"team\")"],
            },
        ]
    }

    #[test]
    fn kubernetes_caller_sessions_need_tag_session() {
        let cfg = config_with(
            "[kubernetes]\nissuer = \"https://k\"\naudiences = [\"a\"]\njwks = \"/dev/null\"\ncluster_name = \"c\"\n",
            &format!(
                "{}\n{}",
                assume(
                    "pods",
                    "service_accounts = [\"ns/sa\"]\nsession_scope = \"pod\""
                ),
                assume(
                    "shared",
                    "service_accounts = [\"ns/sa\"]\nsession_scope = \"role\""
                )
            ),
        );
        let pods = policies_json(&cfg, "pods");
        assert_eq!(
            pods["trust_policy"]["Statement"][0]["Action"],
            json!(["sts:AssumeRole", "sts:TagSession"]),
            "{pods:#}"
        );
        assert!(pods.to_string().contains("kubernetes-pod-uid"), "{pods:#}");
        let shared = policies_json(&cfg, "shared");
        assert_eq!(
            shared["trust_policy"]["Statement"][0]["Action"],
            json!(["sts:AssumeRole"]),
            "one shared session carries no caller tags: {shared:#}"
        );
    }

    #[test]
    fn every_kind_and_option_gets_exactly_the_actions_and_conditions_it_implies() {
        let dir = tempfile::tempdir().unwrap();
        let web_token = dir.path().join("web.token");
        std::fs::write(&web_token, "eyJhbGciOiJSUzI1NiJ9.e30.c2ln").unwrap();
        for case in cases(web_token.to_str().unwrap()) {
            let config = config(&case.roles);
            let got = policies_json(&config, case.role);
            let docs = case.docs;
            assert_eq!(got["role"], case.role, "{docs}");
            assert_eq!(got["caller"], json!(case.caller), "{docs}: caller");
            assert_eq!(
                got["trust_policy"],
                case.trust.unwrap_or(Value::Null),
                "{docs}: trust policy\n{got:#}"
            );
            assert_eq!(
                got["permission_policy"],
                case.permission.unwrap_or(Value::Null),
                "{docs}: permission policy\n{got:#}"
            );
            let notes: Vec<&str> = got["notes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_str().unwrap())
                .collect();
            for want in case.notes {
                assert!(
                    notes.iter().any(|n| n.contains(want)),
                    "{docs}: no note contains {want:?}:\n{notes:#?}"
                );
            }
        }
    }

    #[test]
    fn principals_are_user_or_role_arns_and_assumed_roles_become_their_role() {
        // (docs, input, Ok((arn, kind, name, path_unknown)) or Err(fragment))
        type Want = Result<(&'static str, IdentityKind, &'static str, bool), &'static str>;
        let cases: [(&str, &str, Want); 9] = [
            (
                "a user",
                BROKER,
                Ok((BROKER, IdentityKind::User, "sts-broker", false)),
            ),
            (
                "a user with a path",
                "arn:aws:iam::123456789012:user/ops/broker",
                Ok((
                    "arn:aws:iam::123456789012:user/ops/broker",
                    IdentityKind::User,
                    "broker",
                    false,
                )),
            ),
            (
                "a role with a path",
                "arn:aws:iam::123456789012:role/svc/node",
                Ok((
                    "arn:aws:iam::123456789012:role/svc/node",
                    IdentityKind::Role,
                    "node",
                    false,
                )),
            ),
            (
                "an assumed-role session becomes its role (path unknown)",
                "arn:aws:sts::123456789012:assumed-role/node/i-0abc",
                Ok((
                    "arn:aws:iam::123456789012:role/node",
                    IdentityKind::Role,
                    "node",
                    true,
                )),
            ),
            (
                "other partitions are kept",
                "arn:aws-cn:sts::123456789012:assumed-role/node/i-0abc",
                Ok((
                    "arn:aws-cn:iam::123456789012:role/node",
                    IdentityKind::Role,
                    "node",
                    true,
                )),
            ),
            (
                "the root user cannot assume roles",
                "arn:aws:iam::123456789012:root",
                Err("root user"),
            ),
            (
                "federated users cannot assume roles",
                "arn:aws:sts::123456789012:federated-user/bob",
                Err("federated user"),
            ),
            (
                "a policy is no principal",
                "arn:aws:iam::123456789012:policy/x",
                Err("is not an IAM user or role ARN"),
            ),
            ("garbage", "broker", Err("is not an IAM user or role ARN")),
        ];
        for (docs, input, want) in cases {
            let got = BrokerPrincipal::parse(input, PrincipalOrigin::CallerIdentity);
            match (got, want) {
                (Ok(p), Ok((arn, kind, name, path_unknown))) => {
                    assert_eq!(
                        (p.arn.as_str(), p.kind, p.name.as_str(), p.path_unknown),
                        (arn, kind, name, path_unknown),
                        "{docs}"
                    );
                }
                (Err(e), Err(fragment)) => assert!(e.contains(fragment), "{docs}: {e}"),
                (got, want) => panic!("{docs}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn an_assumed_role_principal_is_noted_as_missing_its_path() {
        let config = config(&assume("app", ""));
        let p = BrokerPrincipal::parse(
            "arn:aws:sts::123456789012:assumed-role/node/i-0abc",
            PrincipalOrigin::CallerIdentity,
        )
        .unwrap();
        let out = role_policies(&config, config.role("app").unwrap(), Some(&p));
        assert_eq!(
            out.caller.as_deref(),
            Some("arn:aws:iam::123456789012:role/node")
        );
        assert!(
            out.notes
                .iter()
                .any(|n| n.contains("leaves out the role's path")
                    && n.contains("aws iam get-role --role-name node")),
            "{:#?}",
            out.notes
        );
        assert!(
            out.notes.iter().any(|n| n.contains("GetCallerIdentity")),
            "{:#?}",
            out.notes
        );
    }

    #[test]
    fn token_kinds_warn_when_the_broker_is_a_role() {
        let config = config(&kind("mfa", "session_token", ""));
        let p =
            BrokerPrincipal::parse("arn:aws:iam::123456789012:role/node", PrincipalOrigin::Flag)
                .unwrap();
        let out = role_policies(&config, config.role("mfa").unwrap(), Some(&p));
        assert!(
            out.notes
                .iter()
                .any(|n| n.starts_with("warning: the broker's principal is a role")),
            "{:#?}",
            out.notes
        );
    }

    #[test]
    fn a_web_identity_source_chains_every_assume_role() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("t");
        std::fs::write(&token, "x.y.z").unwrap();
        let head = format!(
            "[source]\nkind = \"web_identity\"\ntoken_file = {:?}\nrole_arn = \"arn:aws:iam::123456789012:role/broker\"\n",
            token.to_str().unwrap()
        );
        let config = config_with(&head, &assume("app", ""));
        let p = BrokerPrincipal::parse(
            "arn:aws:iam::123456789012:role/broker",
            PrincipalOrigin::SourceRoleArn,
        )
        .unwrap();
        let out = role_policies(&config, config.role("app").unwrap(), Some(&p));
        assert_eq!(
            out.caller.as_deref(),
            Some("arn:aws:iam::123456789012:role/broker")
        );
        assert!(
            out.notes.iter().any(|n| n.contains("role chaining")),
            "{:#?}",
            out.notes
        );
    }

    #[test]
    fn json_lines_and_annotated_text_carry_the_same_documents() {
        let config = config(
            &(assume(
                "app",
                "tags = { team = \"payments\" }\nsource_role = \"base\"",
            ) + &assume("base", "")
                + &kind("mfa", "session_token", "")),
        );
        let all: Vec<RolePolicies> = config
            .roles
            .iter()
            .map(|r| role_policies(&config, r, Some(&broker())))
            .collect();

        let json_out = render_json(&all);
        let lines: Vec<Value> = json_out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines.len(), 3, "{json_out}");
        for (line, want) in lines.iter().zip(&all) {
            assert_eq!(line, &serde_json::to_value(want).unwrap());
            let keys: Vec<&str> = line
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            for k in [
                "role",
                "kind",
                "role_arn",
                "caller",
                "trust_policy",
                "permission_policy",
                "notes",
            ] {
                assert!(keys.contains(&k), "{k} missing in {line}");
            }
        }

        let text = render_text(&all);
        let stripped: String = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        let docs: Vec<Value> = serde_json::Deserializer::from_str(&stripped)
            .into_iter::<Value>()
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("{e}:\n{text}"));
        let want: Vec<Value> = all
            .iter()
            .flat_map(|p| [p.trust_policy.as_ref(), p.permission_policy.as_ref()])
            .flatten()
            .map(|d| serde_json::to_value(d).unwrap())
            .collect();
        assert_eq!(docs, want, "{text}");
        for fragment in [
            "# role \"app\" (kind assume_role): arn:aws:iam::123456789012:role/app",
            "#   aws iam create-role --role-name app --assume-role-policy-document file://app-trust.json",
            "#   aws iam put-role-policy --role-name base --policy-name sts-broker-app --policy-document file://app-permissions.json",
            "#   aws iam put-user-policy --user-name sts-broker --policy-name sts-broker-base --policy-document file://base-permissions.json",
            "# no trust policy: this kind obtains no role",
        ] {
            assert!(text.contains(fragment), "missing {fragment:?} in:\n{text}");
        }
    }

    #[test]
    fn the_merged_permission_policy_covers_what_the_broker_signs() {
        let config = config(
            &(assume("app", "source_role = \"base\"")
                + &assume("base", "")
                + &assume("tagged", "tags = { team = \"payments\" }")
                + &kind("mfa", "session_token", "")
                + &kind("mfa2", "session_token", "")),
        );
        let all: Vec<RolePolicies> = config
            .roles
            .iter()
            .map(|r| role_policies(&config, r, Some(&broker())))
            .collect();
        let (merged, skipped) = merged_permission_policy(&all, BROKER);
        assert_eq!(
            serde_json::to_value(&merged).unwrap(),
            json!({"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": ["sts:AssumeRole"], "Resource": role_arn("base")},
                {"Effect": "Allow", "Action": ["sts:AssumeRole", "sts:TagSession"], "Resource": role_arn("tagged")},
                {"Effect": "Allow", "Action": ["sts:GetSessionToken"], "Resource": "*"},
            ]})
        );
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert!(
            skipped[0].contains("role \"app\" is signed by arn:aws:iam::123456789012:role/base")
        );
    }

    #[test]
    fn the_external_id_is_printed_only_in_the_trust_policy() {
        let config = config(&assume("app", &format!("external_id = \"{SECRET_ID}\"")));
        let role = config.role("app").unwrap();
        let out = role_policies(&config, role, Some(&broker()));
        assert!(render_json(std::slice::from_ref(&out)).contains(SECRET_ID));
        assert!(render_text(std::slice::from_ref(&out)).contains(SECRET_ID));
        assert!(!format!("{out:?}").contains(SECRET_ID), "Debug redacts it");
        assert!(!out.notes.concat().contains(SECRET_ID));
        assert!(!access_denied_hint(role).contains(SECRET_ID));
    }

    #[test]
    fn access_denied_hints_name_the_causes_this_config_makes_likely() {
        let dir = tempfile::tempdir().unwrap();
        let web_token = dir.path().join("web.token");
        std::fs::write(&web_token, "x.y.z").unwrap();
        /// (docs, roles, role, fragments that must appear, fragments that must not)
        type HintCase<'a> = (&'a str, String, &'a str, Vec<&'a str>, Vec<&'a str>);
        let cases: Vec<HintCase<'_>> = vec![
            (
                "plain: trust and permission policy; a missing external_id is possible",
                assume("app", ""),
                "app",
                vec![
                    "(1) the trust policy of arn:aws:iam::123456789012:role/app does not trust the broker's principal",
                    "(2) the broker principal's permission policy does not allow sts:AssumeRole on arn:aws:iam::123456789012:role/app",
                    "needs external_id in this role's config",
                ],
                vec!["sts:TagSession", "sts:SetSourceIdentity"],
            ),
            (
                "tags, source identity, external id",
                assume(
                    "app",
                    &format!(
                        "tags = {{ team = \"payments\" }}\nsource_identity = \"alice\"\nexternal_id = \"{SECRET_ID}\""
                    ),
                ),
                "app",
                vec![
                    "must allow sts:TagSession because this role sends session tags",
                    "must allow sts:SetSourceIdentity because this role sends a source identity",
                    "sts:ExternalId condition must equal this role's external_id",
                ],
                vec![SECRET_ID],
            ),
            (
                "chained: the source role's role is the caller",
                assume("app", "source_role = \"base\"") + &assume("base", ""),
                "app",
                vec![
                    "does not trust the role of source role \"base\"",
                    "the permission policy of source role \"base\"'s role does not allow sts:AssumeRole",
                ],
                vec!["broker principal's permission policy"],
            ),
            (
                "web identity",
                kind(
                    "irsa",
                    "web_identity",
                    &format!(
                        "arn = \"arn:aws:iam::123456789012:role/irsa\"\nweb_identity_token_file = {:?}",
                        web_token.to_str().unwrap()
                    ),
                ),
                "irsa",
                vec![
                    "sts:AssumeRoleWithWebIdentity",
                    ":aud and ISSUER:sub conditions",
                ],
                vec!["sts:AssumeRole "],
            ),
            (
                "federation token with tags",
                kind(
                    "fed",
                    "federation_token",
                    "federated_name = \"intranet\"\npolicy_arns = [\"arn:aws:iam::aws:policy/ReadOnlyAccess\"]\ntags = { team = \"web\" }",
                ),
                "fed",
                vec![
                    "sts:GetFederationToken (Resource \"*\")",
                    "sts:TagSession",
                    "IAM user's long-term keys",
                ],
                vec![],
            ),
        ];
        for (docs, roles, name, want, unwanted) in cases {
            let config = config(&roles);
            let hint = access_denied_hint(config.role(name).unwrap());
            for w in want {
                assert!(hint.contains(w), "{docs}: missing {w:?} in {hint}");
            }
            for u in unwanted {
                assert!(!hint.contains(u), "{docs}: unexpected {u:?} in {hint}");
            }
            let tail = format!("run `sts-broker iam-policy -c CONFIG --role {name}`");
            assert!(hint.ends_with(&tail), "{docs}: {hint}");
        }
    }
}
