//! Policy building: the trust and permission policies one role needs, one function per role
//! kind, each adding the notes that say why an action or condition is there.

use serde::Serialize;

use super::UNKNOWN_PRINCIPAL;
use super::arn::{arn_partition_account, iam_path_and_name};
use super::document::{ConditionValue, Policy, Principal, Statement};
use super::principal::{BrokerPrincipal, Caller, IdentityKind, caller};
use crate::config::{Config, Mfa, RoleConfig, RoleKind, SourceConfig};
use crate::creds::Secret;

/// `Version` of every policy printed.
pub const POLICY_VERSION: &str = "2012-10-17";
/// Written where the operator must fill something in.
pub const OIDC_PROVIDER_PLACEHOLDER: &str = "<OIDC_PROVIDER>";
/// The web identity token's subject, as EKS writes it for a service account.
pub const OIDC_SUBJECT_PLACEHOLDER: &str = "system:serviceaccount:<NAMESPACE>:<SERVICE_ACCOUNT>";

/// Everything `iam-policy` prints for one role (one JSON Lines object).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolePolicies {
    /// The role's name in the config.
    pub role: String,
    /// `assume_role`, `web_identity`, …
    pub kind: &'static str,
    /// The role's `arn`; `None` for the token kinds.
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

/// What one kind's builder reads, and the notes it adds to.
struct Build<'a> {
    config: &'a Config,
    role: &'a RoleConfig,
    /// The role's ARN, empty for the token kinds.
    arn: &'a str,
    /// Who signs the call (`None`: unsigned).
    caller_arn: Option<&'a str>,
    notes: Vec<String>,
}

/// A role's trust and permission policy, `None` where its kind needs none.
type Documents = (Option<Policy>, Option<Policy>);

/// The policies `role` needs. `principal` is the broker's; without it the caller is written
/// as [`UNKNOWN_PRINCIPAL`].
pub fn role_policies(
    config: &Config,
    role: &RoleConfig,
    principal: Option<&BrokerPrincipal>,
) -> RolePolicies {
    let spec = &role.spec;
    let arn = spec.arn.clone().unwrap_or_default();
    let who = caller(config, role);
    let caller_arn = match &who {
        Caller::Broker => Some(principal.map_or(UNKNOWN_PRINCIPAL.to_string(), |p| p.arn.clone())),
        Caller::SourceRole { arn, .. } => Some(arn.clone()),
        Caller::Unsigned => None,
    };
    let mut b = Build {
        config,
        role,
        arn: &arn,
        caller_arn: caller_arn.as_deref(),
        notes: Vec::new(),
    };
    caller_notes(&mut b, &who, principal);
    common_notes(&mut b);
    let (trust_policy, permission_policy) = match &spec.kind {
        RoleKind::AssumeRole {
            external_id,
            tags,
            transitive_tag_keys,
            source_identity,
            ..
        } => assume_role(
            &mut b,
            external_id.as_ref(),
            tags,
            transitive_tag_keys,
            source_identity.as_deref(),
        ),
        RoleKind::WebIdentity { .. } => web_identity(&mut b),
        RoleKind::Saml { principal_arn, .. } => saml(&mut b, principal_arn),
        RoleKind::SessionToken { mfa } => session_token(&mut b, mfa.as_ref()),
        RoleKind::FederationToken { tags, .. } => federation_token(&mut b, tags),
    };
    if matches!(
        spec.kind,
        RoleKind::SessionToken { .. } | RoleKind::FederationToken { .. }
    ) && who == Caller::Broker
        && principal.is_some_and(|p| p.kind == IdentityKind::Role)
    {
        b.notes.push(
            "warning: the broker's principal is a role, but this kind needs IAM user credentials: STS will refuse the call".to_string(),
        );
    }
    let notes = b.notes;
    RolePolicies {
        role: role.name.clone(),
        kind: spec.kind.as_str(),
        role_arn: spec.arn.clone(),
        caller: caller_arn,
        trust_policy,
        permission_policy,
        notes,
    }
}

/// Who signs the call, and what follows from it (a path lost in an assumed-role ARN, role
/// chaining through a web identity source or a source role).
fn caller_notes(b: &mut Build<'_>, who: &Caller, principal: Option<&BrokerPrincipal>) {
    let role = b.role;
    match who {
        Caller::Broker => {
            if let Some(p) = principal {
                b.notes.push(format!(
                    "caller: the broker's principal {} ({})",
                    p.arn,
                    p.origin.describe()
                ));
                if p.path_unknown {
                    b.notes.push(format!(
                        "the broker's principal was derived from an assumed-role ARN, which leaves out the role's path: if role {:?} has a path, pass its full ARN with --principal (aws iam get-role --role-name {} --query Role.Arn)",
                        p.name, p.name
                    ));
                }
            } else {
                b.notes.push(format!(
                    "caller: the broker's principal, unknown here: replace {UNKNOWN_PRINCIPAL} or pass --principal"
                ));
            }
            if matches!(b.config.source, SourceConfig::WebIdentity { .. })
                && matches!(role.spec.kind, RoleKind::AssumeRole { .. })
            {
                b.notes.push(
                    "[source] kind = \"web_identity\" gives the broker role credentials: this role is assumed by that role's session (role chaining, sessions of at most 1h)".to_string(),
                );
            }
        }
        Caller::SourceRole {
            name,
            arn: base_arn,
        } => {
            let base_name = iam_path_and_name(base_arn).map_or("?", |(_, n)| n);
            b.notes.push(format!(
                "chained from role {name:?}: this role is assumed with {name:?}'s session, so its trust policy trusts {name:?}'s role {base_arn}, and that role (not the broker's principal) needs the permission policy: aws iam put-role-policy --role-name {base_name} --policy-name sts-broker-{} --policy-document file://{}-permissions.json; chained sessions last at most 1h",
                role.name, role.name
            ));
        }
        Caller::Unsigned => {}
    }
}

/// Notes for every kind: a caller in another account, session policies.
fn common_notes(b: &mut Build<'_>) {
    if let (Some(c), Some((_, role_account))) = (b.caller_arn, arn_partition_account(b.arn))
        && let Some((_, caller_account)) = arn_partition_account(c)
        && caller_account.len() == 12
        && caller_account != role_account
    {
        b.notes.push(format!(
            "cross-account: the trust policy goes on the role in account {role_account}, the permission policy on the caller in account {caller_account}; both are needed"
        ));
    }
    let spec = &b.role.spec;
    if spec.policy.is_some() || !spec.policy_arns.is_empty() {
        b.notes.push(
            "policy / policy_arns are session policies: they only narrow what the role's (or user's) own permissions allow and need nothing in IAM but the managed policies existing in that account".to_string(),
        );
    }
}

/// `assume_role`: the caller is trusted for `sts:AssumeRole` (plus `sts:TagSession` and
/// `sts:SetSourceIdentity` when tags or a source identity reach the session, from this role
/// or up its chain), and may call exactly that on the role's ARN.
fn assume_role(
    b: &mut Build<'_>,
    external_id: Option<&Secret>,
    tags: &[(String, String)],
    transitive_tag_keys: &[String],
    source_identity: Option<&str>,
) -> Documents {
    let up = inherited(b.config, b.role);
    let mut actions = vec!["sts:AssumeRole"];
    // Kubernetes callers with their own sessions: the broker tags each session with
    // the caller (EKS Pod Identity's keys, transitive).
    let caller_tags = b
        .role
        .spec
        .workload
        .as_ref()
        .map(|w| {
            w.scope.caller_tag_keys(
                b.config
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
        b.notes.push(format!(
            "sts:TagSession (trust and permission policy): each Kubernetes caller session is tagged with {} (transitive), as EKS Pod Identity does; policies can test aws:PrincipalTag/kubernetes-namespace",
            quoted_keys(caller_tags.iter().copied())
        ));
    }
    if !tags.is_empty() {
        b.notes.push(format!(
            "sts:TagSession (trust and permission policy): this role sends session tags ({})",
            quoted_keys(tags.iter().map(|(k, _)| k.as_str()))
        ));
    }
    if !up.transitive_tag_keys.is_empty() {
        b.notes.push(format!(
            "sts:TagSession (trust and permission policy): transitive session tags ({}) reach this session from the role it is chained from",
            quoted_keys(up.transitive_tag_keys.iter().map(String::as_str))
        ));
    }
    if !transitive_tag_keys.is_empty() {
        b.notes.push(format!(
            "transitive_tag_keys ({}): these tags pass on to roles chained from this one, whose policies then need sts:TagSession too",
            quoted_keys(transitive_tag_keys.iter().map(String::as_str))
        ));
    }
    if source_identity.is_some() || up.source_identity.is_some() {
        actions.push("sts:SetSourceIdentity");
    }
    if let Some(si) = source_identity {
        b.notes.push(format!(
            "sts:SetSourceIdentity (trust and permission policy): this role sends source identity {si:?}; once set it cannot be changed for the session or the roles chained from it"
        ));
    } else if let Some(si) = &up.source_identity {
        b.notes.push(format!(
            "sts:SetSourceIdentity (trust and permission policy): source identity {si:?} persists into this session from the role it is chained from"
        ));
    }
    let mut trust = Statement::allow(actions.clone());
    trust.principal = Some(Principal::Aws(
        b.caller_arn.unwrap_or(UNKNOWN_PRINCIPAL).to_string(),
    ));
    if let Some(x) = external_id {
        trust = trust.string_equals("sts:ExternalId", ConditionValue::Secret(x.clone()));
        b.notes.push(
            "sts:ExternalId: the condition holds this role's external_id, a secret that sts-broker prints nowhere else; hand the trust policy to the role's owner privately and do not commit it".to_string(),
        );
    }
    let mut permission = Statement::allow(actions);
    permission.resource = Some(b.arn.to_string());
    (
        Some(Policy::new(vec![trust])),
        Some(Policy::new(vec![permission])),
    )
}

/// `web_identity`: the OIDC provider is trusted, with audience and subject placeholders to
/// fill; the call is unsigned, so no permission policy.
fn web_identity(b: &mut Build<'_>) -> Documents {
    let (partition, account) = arn_partition_account(b.arn).unwrap_or(("aws", "ACCOUNT"));
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
    b.notes.push(format!(
        "replace {p} with the token issuer's URL without https:// (EKS: aws eks describe-cluster --name CLUSTER --query cluster.identity.oidc.issuer), registered in account {account} (aws iam create-open-id-connect-provider), and the subject with the token's sub claim"
    ));
    b.notes.push(
        "no permission policy: AssumeRoleWithWebIdentity is unsigned, the token is the credential; if the identity provider passes session tags, add sts:TagSession to the trust policy".to_string(),
    );
    (Some(Policy::new(vec![trust])), None)
}

/// `saml`: the SAML provider is trusted with the partition's sign-in audience; unsigned.
fn saml(b: &mut Build<'_>, principal_arn: &str) -> Documents {
    let (partition, _) = arn_partition_account(b.arn).unwrap_or(("aws", ""));
    let mut trust = Statement::allow(vec!["sts:AssumeRoleWithSAML"]).string_equals(
        "SAML:aud",
        ConditionValue::Plain(saml_audience(partition).into()),
    );
    trust.principal = Some(Principal::Federated(principal_arn.to_string()));
    b.notes.push(format!(
        "SAML:aud must match the assertion's Recipient (the sign-in endpoint), and its https://aws.amazon.com/SAML/Attributes/Role attribute must list {},{principal_arn}",
        b.arn
    ));
    b.notes.push(
        "no permission policy: AssumeRoleWithSAML is unsigned, the assertion is the credential; if the identity provider passes session tags, add sts:TagSession to the trust policy".to_string(),
    );
    (Some(Policy::new(vec![trust])), None)
}

/// `session_token`: no role, so no trust policy; `sts:GetSessionToken` on `*`.
fn session_token(b: &mut Build<'_>, mfa: Option<&Mfa>) -> Documents {
    let mut permission = Statement::allow(vec!["sts:GetSessionToken"]);
    permission.resource = Some("*".into());
    b.notes.push(
        "Resource \"*\": sts:GetSessionToken has no resource type, so IAM accepts no narrower Resource (the caller can only get a token for itself)".to_string(),
    );
    b.notes.push(
        "no trust policy: GetSessionToken obtains no role; it must be signed with an IAM user's long-term access keys".to_string(),
    );
    if let Some(mfa) = mfa {
        b.notes.push(format!(
            "mfa_serial {} must be the broker's IAM user's MFA device; policies conditioned on aws:MultiFactorAuthPresent then apply to these sessions",
            mfa.serial
        ));
    }
    (None, Some(Policy::new(vec![permission])))
}

/// `federation_token`: no role; `sts:GetFederationToken` (and `sts:TagSession` with tags)
/// on `*`.
fn federation_token(b: &mut Build<'_>, tags: &[(String, String)]) -> Documents {
    let mut actions = vec!["sts:GetFederationToken"];
    if !tags.is_empty() {
        actions.push("sts:TagSession");
        b.notes.push(format!(
            "sts:TagSession: this role sends session tags ({})",
            quoted_keys(tags.iter().map(|(k, _)| k.as_str()))
        ));
    }
    let mut permission = Statement::allow(actions);
    permission.resource = Some("*".into());
    b.notes.push(
        "Resource \"*\": sts:GetFederationToken has no resource type, so IAM accepts no narrower Resource".to_string(),
    );
    b.notes.push(
        "no trust policy: GetFederationToken obtains no role; it must be signed with an IAM user's long-term access keys".to_string(),
    );
    b.notes.push(
        "the federated user's effective permissions are the intersection of the broker user's own permissions and the session policy (policy / policy_arns): the broker's user must itself be allowed everything the federated sessions need".to_string(),
    );
    let spec = &b.role.spec;
    if spec.policy.is_none() && spec.policy_arns.is_empty() {
        b.notes.push(
            "no policy or policy_arns: the federated sessions have no permissions except through resource policies naming them".to_string(),
        );
    }
    (None, Some(Policy::new(vec![permission])))
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
    for base in config.ancestors(&role.name) {
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
    }
    out
}

/// The SAML sign-in endpoint (`SAML:aud`) of a partition.
fn saml_audience(partition: &str) -> &'static str {
    match partition {
        "aws-cn" => "https://signin.amazonaws.cn/saml",
        "aws-us-gov" => "https://signin.amazonaws-us-gov.com/saml",
        _ => "https://signin.aws.amazon.com/saml",
    }
}

/// `"a", "b"`: keys as the notes list them.
fn quoted_keys<'a>(keys: impl IntoIterator<Item = &'a str>) -> String {
    keys.into_iter()
        .map(|k| format!("{k:?}"))
        .collect::<Vec<_>>()
        .join(", ")
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
