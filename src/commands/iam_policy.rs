//! `sts-broker iam-policy`: finds the broker's principal, then prints what [`crate::iam`]
//! builds for the requested roles.

use crate::config::{Config, RoleConfig, SourceConfig};
use crate::iam::{self, BrokerPrincipal, PolicyDocument, PolicyFormat, PrincipalOrigin};

/// What `iam-policy` was asked for.
#[derive(Debug, Clone)]
pub struct IamPolicyRequest {
    /// One role, or every role.
    pub role: Option<String>,
    /// `--principal`: the broker's IAM user or role ARN (an assumed-role ARN is converted).
    pub principal: Option<String>,
    /// `--format`: JSON Lines or annotated text.
    pub format: PolicyFormat,
    /// `--only`: print one bare policy document instead.
    pub only: Option<PolicyDocument>,
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
    /// The policies, as asked for.
    pub stdout: String,
    /// Roles left out of a merged permission policy, and why.
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
    let roles: Vec<&RoleConfig> = match &req.role {
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
    let principal = if req.principal.is_none() && !merged && !iam::needs_principal(config, &roles) {
        None
    } else {
        Some(find_principal(config, req.principal.as_deref()).await?)
    };
    let policies: Vec<iam::RolePolicies> = roles
        .iter()
        .map(|r| iam::role_policies(config, r, principal.as_ref()))
        .collect();
    let Some(which) = req.only else {
        let stdout = match req.format {
            PolicyFormat::Json => iam::render_json(&policies),
            PolicyFormat::Text => iam::render_text(&policies),
        };
        return Ok(IamPolicyOutput {
            stdout,
            warnings: Vec::new(),
        });
    };
    let merge_for = merged.then(|| {
        principal
            .as_ref()
            .map_or(iam::UNKNOWN_PRINCIPAL, |p| p.arn.as_str())
    });
    let only = iam::render_only(&policies, which, merge_for)
        .map_err(|e| IamPolicyError::Usage(e.to_string()))?;
    Ok(IamPolicyOutput {
        stdout: only.document,
        warnings: only.skipped,
    })
}

/// The broker's principal: `--principal`, else `[source] kind = "web_identity"`'s
/// `role_arn`, else who `GetCallerIdentity` says the `[source]` credentials are.
async fn find_principal(
    config: &Config,
    flag: Option<&str>,
) -> Result<BrokerPrincipal, IamPolicyError> {
    if let Some(arn) = flag {
        return BrokerPrincipal::parse(arn, PrincipalOrigin::Flag)
            .map_err(|e| IamPolicyError::Usage(format!("--principal: {e}")));
    }
    if let SourceConfig::WebIdentity { role_arn, .. } = &config.source {
        return BrokerPrincipal::parse(role_arn, PrincipalOrigin::SourceRoleArn)
            .map_err(|e| IamPolicyError::Config(e.to_string()));
    }
    let unavailable = |e: String| {
        IamPolicyError::Unavailable(format!(
            "cannot find the broker's principal with GetCallerIdentity: {e}; pass it with --principal ARN"
        ))
    };
    let sts = crate::source::build_sts(config)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let who = sts
        .caller_identity()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    BrokerPrincipal::parse(&who.arn, PrincipalOrigin::CallerIdentity)
        .map_err(|e| IamPolicyError::Unavailable(e.to_string()))
}
