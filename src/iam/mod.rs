//! `sts-broker iam-policy`: the IAM policies every configured role needs.
//!
//! Pure: a [`Config`](crate::config::Config) and the broker's principal in, policy documents out. Finding the
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

mod arn;
pub mod document;
pub mod policy;
pub mod principal;
pub mod render;
#[cfg(test)]
mod tests;

pub use document::{ConditionValue, Policy, Principal, Statement};
pub use policy::{
    OIDC_PROVIDER_PLACEHOLDER, OIDC_SUBJECT_PLACEHOLDER, POLICY_VERSION, RolePolicies,
    merged_permission_policy, role_policies,
};
pub use principal::{
    BrokerPrincipal, Caller, IdentityKind, PrincipalError, PrincipalOrigin, caller, needs_principal,
};
pub use render::{OnlyDocument, OnlyError, render_document, render_json, render_only, render_text};

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
    /// The role's trust policy (its "assume role policy").
    Trust,
    /// The caller's permission policy.
    Permission,
}

impl PolicyDocument {
    /// How the command line and messages spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyDocument::Trust => "trust",
            PolicyDocument::Permission => "permission",
        }
    }
}
