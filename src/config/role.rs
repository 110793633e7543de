//! `[[role]]`: the ways of obtaining credentials, each a `kind`, with STS's limits checked.
//!
//! | kind | STS API | needs |
//! |---|---|---|
//! | `assume_role` (default) | AssumeRole | `arn`; optional external ID, tags, source identity, `source_role` (chaining) |
//! | `web_identity` | AssumeRoleWithWebIdentity (unsigned) | `arn`, `web_identity_token_file` (re-read on every refresh) |
//! | `session_token` | GetSessionToken | optional `mfa_serial` + `mfa_code_command` |
//! | `federation_token` | GetFederationToken | `federated_name`, usually `policy` / `policy_arns` |
//! | `saml` | AssumeRoleWithSAML (unsigned) | `arn`, `principal_arn`, `saml_assertion_file` or `saml_assertion_command` |
//!
//! The model is here; [`parse`] reads each `[[role]]` (the keys its kind takes, the parts
//! every kind shares), [`kinds`] has one builder per kind, [`chain`] resolves `source_role`
//! and checks what spans roles; tokens, local users and tag/policy limits have their own files.

mod chain;
mod kinds;
mod limits;
pub(super) mod parse;
mod tokens;
mod users;

use std::path::PathBuf;
use std::time::Duration;

use super::kubernetes::WorkloadAccess;
use crate::creds::Secret;

pub(super) use chain::Chains;
pub use kinds::{check_federated_name, check_mfa_serial, check_saml_provider_arn};
pub(super) use parse::build_roles;
pub use tokens::MIN_TOKEN_LEN;
pub(super) use users::check_local_users;
pub use users::describe_user;

/// STS rejects longer sessions for role chaining.
pub const CHAINED_MAX_DURATION: Duration = Duration::from_secs(3600);
const MIN_DURATION: Duration = Duration::from_secs(15 * 60);
/// AssumeRole*, capped further by the role's MaxSessionDuration.
const MAX_ROLE_DURATION: Duration = Duration::from_secs(12 * 3600);
/// GetSessionToken / GetFederationToken.
const MAX_TOKEN_DURATION: Duration = Duration::from_secs(36 * 3600);

/// One `[[role]]`.
#[derive(Debug, Clone)]
pub struct RoleConfig {
    /// Used in URLs and metrics.
    pub name: String,
    /// Everything that decides which credentials STS issues; a change means re-obtain.
    pub spec: RoleSpec,
    /// ECS tokens allowed to fetch this role: inline ones and the contents of `token_files`.
    pub tokens: Vec<Secret>,
    /// The files the tokens were read from (watched for changes by `--watch-config`).
    pub token_files: Vec<PathBuf>,
    /// The secret path id for clients that know only `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`
    /// (`/v2/credentials/<id>`, no header); `None` when off or the role has no token.
    pub relative_uri_id: Option<Secret>,
    /// This role's own `revoke_before` (the later of it and `[refresh]`'s applies). Not part
    /// of the spec: changing it revokes what was obtained before it, not everything.
    pub revoke_before: Option<std::time::SystemTime>,
    /// Unix users whose sockets are this role's callers on the ECS and IMDS listeners
    /// (DESIGN §10), resolved to UIDs when the config is loaded.
    pub local_users: Vec<LocalUser>,
}

/// One entry of `local_users`, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalUser {
    /// The user's UID, what the socket owner is compared with.
    pub uid: u32,
    /// The configured name, or the passwd name of a configured UID when it has one.
    pub name: Option<String>,
}

/// The STS-facing part of a role. Two equal specs yield interchangeable credentials, which is
/// how a reload decides to keep a role's cache.
#[derive(Debug, Clone, PartialEq)]
pub struct RoleSpec {
    /// The STS API and its own parameters.
    pub kind: RoleKind,
    /// The role ARN (`assume_role`, `web_identity`, `saml`); `None` for the token kinds.
    pub arn: Option<String>,
    /// The 12-digit account when the config tells it (role ARN, MFA serial), served as
    /// `AccountId`; otherwise the account in the ARN STS returns is used.
    pub account_id: Option<String>,
    /// With `{hostname}` already substituted; stable across refreshes (`assume_role`,
    /// `web_identity`).
    pub session_name: Option<String>,
    /// After clamping (chained sessions are at most 1 h).
    pub duration: Duration,
    /// Managed session policies (`PolicyArns`).
    pub policy_arns: Vec<String>,
    /// The inline session policy (JSON).
    pub policy: Option<String>,
    /// Obtain at start-up (and keep warm) rather than on first request.
    pub prefetch: bool,
    /// `service_accounts` + `session_scope`: the Kubernetes workloads admitted (§7). With a
    /// per-caller scope, `session_name` is a template whose caller placeholders are filled
    /// per session.
    pub workload: Option<WorkloadAccess>,
}

/// The STS API a role uses, with its own parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum RoleKind {
    /// AssumeRole, signed with the broker's (or the source role's) credentials.
    AssumeRole {
        /// Sent as `ExternalId`; secret.
        external_id: Option<Secret>,
        /// Keys are unique case-insensitively, as STS requires.
        tags: Vec<(String, String)>,
        /// Tags that pass on to roles chained from this session.
        transitive_tag_keys: Vec<String>,
        /// Sent as `SourceIdentity`; persists through chaining.
        source_identity: Option<String>,
        /// Role chaining: assume with the credentials of this role.
        source_role: Option<String>,
    },
    /// AssumeRoleWithWebIdentity (unsigned).
    WebIdentity {
        /// The OIDC token, re-read on every refresh.
        token_file: PathBuf,
    },
    /// GetSessionToken: the broker's IAM user's own session.
    SessionToken {
        /// The MFA device to authenticate with, if any.
        mfa: Option<Mfa>,
    },
    /// GetFederationToken: a federated user's session.
    FederationToken {
        /// The federated user's name (`Name`).
        name: String,
        /// Session tags.
        tags: Vec<(String, String)>,
    },
    /// AssumeRoleWithSAML (unsigned).
    Saml {
        /// The IAM SAML provider.
        principal_arn: String,
        /// Where the assertion is read on every refresh.
        assertion: AssertionSource,
    },
}

/// The MFA device and the command that prints its current code.
#[derive(Debug, Clone, PartialEq)]
pub struct Mfa {
    /// The device's serial number or ARN.
    pub serial: String,
    /// The program and arguments that print the current code.
    pub code_command: Vec<String>,
}

/// Where a SAML assertion (base64) comes from; read on every refresh.
#[derive(Debug, Clone, PartialEq)]
pub enum AssertionSource {
    /// A file holding the assertion.
    File(PathBuf),
    /// A command (program and arguments) that prints it.
    Command(Vec<String>),
}

impl RoleKind {
    /// Which kind this is.
    pub fn tag(&self) -> RoleKindTag {
        match self {
            RoleKind::AssumeRole { .. } => RoleKindTag::AssumeRole,
            RoleKind::WebIdentity { .. } => RoleKindTag::WebIdentity,
            RoleKind::SessionToken { .. } => RoleKindTag::SessionToken,
            RoleKind::FederationToken { .. } => RoleKindTag::FederationToken,
            RoleKind::Saml { .. } => RoleKindTag::Saml,
        }
    }

    /// The config spelling.
    pub fn as_str(&self) -> &'static str {
        self.tag().as_str()
    }

    /// Whether the credentials this kind yields are role credentials (chaining limits apply
    /// to roles assumed with them).
    pub fn yields_role_credentials(&self) -> bool {
        self.tag().yields_role_credentials()
    }

    /// Whether STS calls of this kind are signed with the caller's credentials.
    pub fn signed(&self) -> bool {
        self.tag().signed()
    }
}

impl RoleSpec {
    /// The role this one is chained from, if any.
    pub fn source_role(&self) -> Option<&str> {
        match &self.kind {
            RoleKind::AssumeRole { source_role, .. } => source_role.as_deref(),
            _ => None,
        }
    }

    /// Session tags sent (assume_role, federation_token).
    pub fn tags(&self) -> &[(String, String)] {
        match &self.kind {
            RoleKind::AssumeRole { tags, .. } | RoleKind::FederationToken { tags, .. } => tags,
            _ => &[],
        }
    }

    /// The source identity sent (assume_role only).
    pub fn source_identity(&self) -> Option<&str> {
        match &self.kind {
            RoleKind::AssumeRole {
                source_identity, ..
            } => source_identity.as_deref(),
            _ => None,
        }
    }

    /// Whether an external ID is sent (its value is secret).
    pub fn has_external_id(&self) -> bool {
        matches!(
            &self.kind,
            RoleKind::AssumeRole {
                external_id: Some(_),
                ..
            }
        )
    }
}

/// `kind` as written in a `[[role]]`, parsed once: which keys the role takes, which builder
/// runs and which limits hold. [`RoleKind`] is the built kind with its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleKindTag {
    /// `assume_role` (the default).
    AssumeRole,
    /// `web_identity`.
    WebIdentity,
    /// `session_token`.
    SessionToken,
    /// `federation_token`.
    FederationToken,
    /// `saml`.
    Saml,
}

impl RoleKindTag {
    /// Every kind, in the order messages list them.
    pub const ALL: [RoleKindTag; 5] = [
        RoleKindTag::AssumeRole,
        RoleKindTag::WebIdentity,
        RoleKindTag::SessionToken,
        RoleKindTag::FederationToken,
        RoleKindTag::Saml,
    ];

    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RoleKindTag::AssumeRole => "assume_role",
            RoleKindTag::WebIdentity => "web_identity",
            RoleKindTag::SessionToken => "session_token",
            RoleKindTag::FederationToken => "federation_token",
            RoleKindTag::Saml => "saml",
        }
    }

    /// The kind a config spelling names.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether the kind assumes a role, so `arn` is required.
    pub fn assumes_role(self) -> bool {
        matches!(
            self,
            RoleKindTag::AssumeRole | RoleKindTag::WebIdentity | RoleKindTag::Saml
        )
    }

    /// Whether the broker chooses the session name (stable across refreshes).
    pub fn has_session_name(self) -> bool {
        matches!(self, RoleKindTag::AssumeRole | RoleKindTag::WebIdentity)
    }

    /// Whether the credentials this kind yields are role credentials (chaining limits apply
    /// to roles assumed with them).
    pub fn yields_role_credentials(self) -> bool {
        self.assumes_role()
    }

    /// Whether STS calls of this kind are signed with the caller's credentials.
    pub fn signed(self) -> bool {
        !matches!(self, RoleKindTag::WebIdentity | RoleKindTag::Saml)
    }

    /// The longest session STS grants this kind.
    pub fn max_duration(self) -> Duration {
        match self {
            RoleKindTag::SessionToken | RoleKindTag::FederationToken => MAX_TOKEN_DURATION,
            _ => MAX_ROLE_DURATION,
        }
    }
}
