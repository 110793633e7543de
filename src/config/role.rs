//! `[[role]]`: the ways of obtaining credentials, each a `kind`, with STS's limits checked.
//!
//! | kind | STS API | needs |
//! |---|---|---|
//! | `assume_role` (default) | AssumeRole | `arn`; optional external ID, tags, source identity, `source_role` (chaining) |
//! | `web_identity` | AssumeRoleWithWebIdentity (unsigned) | `arn`, `web_identity_token_file` (re-read on every refresh) |
//! | `session_token` | GetSessionToken | optional `mfa_serial` + `mfa_code_command` |
//! | `federation_token` | GetFederationToken | `federated_name`, usually `policy` / `policy_arns` |
//! | `saml` | AssumeRoleWithSAML (unsigned) | `arn`, `principal_arn`, `saml_assertion_file` or `saml_assertion_command` |

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::kubernetes::{self, SessionScope, WorkloadAccess};
use super::{
    LoadContext, Problems, RefreshConfig, Scope, SourceConfig, check_external_id, check_policy_arn,
    check_role_arn, check_role_name, check_session_name, check_source_identity, check_tag,
    deserialize_known, expand_session_name, is_word,
};
use crate::creds::Secret;

const DEFAULT_DURATION: Duration = Duration::from_secs(3600);
/// Used when a role sets no `session_name`.
const DEFAULT_SESSION_NAME: &str = "sts-broker-{hostname}";
const MIN_DURATION: Duration = Duration::from_secs(15 * 60);
/// AssumeRole*, capped further by the role's MaxSessionDuration.
const MAX_ROLE_DURATION: Duration = Duration::from_secs(12 * 3600);
/// GetSessionToken / GetFederationToken.
const MAX_TOKEN_DURATION: Duration = Duration::from_secs(36 * 3600);
/// STS rejects longer sessions for role chaining.
pub const CHAINED_MAX_DURATION: Duration = Duration::from_secs(3600);
const MAX_TAGS: usize = 50;
const MAX_POLICY_ARNS: usize = 10;
const MAX_POLICY_CHARS: usize = 2048;

/// One `[[role]]`.
#[derive(Debug, Clone)]
pub struct RoleConfig {
    /// Used in URLs and metrics.
    pub name: String,
    /// Everything that decides which credentials STS issues; a change means re-obtain.
    pub spec: RoleSpec,
    /// ECS tokens allowed to fetch this role: inline ones and the contents of `token_files`.
    pub tokens: Vec<Secret>,
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
    pub uid: u32,
    /// The configured name, or the passwd name of a configured UID when it has one.
    pub name: Option<String>,
}

/// One entry of `local_users = ["billing", 1207]`: a name or a numeric UID.
enum RawUser {
    Uid(i64),
    Name(String),
}

/// The STS-facing part of a role. Two equal specs yield interchangeable credentials, which is
/// how a reload decides to keep a role's cache.
#[derive(Debug, Clone, PartialEq)]
pub struct RoleSpec {
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
    pub policy_arns: Vec<String>,
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
    AssumeRole {
        external_id: Option<Secret>,
        /// Keys are unique case-insensitively, as STS requires.
        tags: Vec<(String, String)>,
        transitive_tag_keys: Vec<String>,
        source_identity: Option<String>,
        /// Role chaining: assume with the credentials of this role.
        source_role: Option<String>,
    },
    WebIdentity {
        token_file: PathBuf,
    },
    SessionToken {
        mfa: Option<Mfa>,
    },
    FederationToken {
        name: String,
        tags: Vec<(String, String)>,
    },
    Saml {
        principal_arn: String,
        assertion: AssertionSource,
    },
}

/// The MFA device and the command that prints its current code.
#[derive(Debug, Clone, PartialEq)]
pub struct Mfa {
    pub serial: String,
    pub code_command: Vec<String>,
}

/// Where a SAML assertion (base64) comes from; read on every refresh.
#[derive(Debug, Clone, PartialEq)]
pub enum AssertionSource {
    File(PathBuf),
    Command(Vec<String>),
}

impl RoleKind {
    /// The config spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            RoleKind::AssumeRole { .. } => "assume_role",
            RoleKind::WebIdentity { .. } => "web_identity",
            RoleKind::SessionToken { .. } => "session_token",
            RoleKind::FederationToken { .. } => "federation_token",
            RoleKind::Saml { .. } => "saml",
        }
    }

    /// Whether the credentials this kind yields are role credentials (chaining limits apply
    /// to roles assumed with them).
    pub fn yields_role_credentials(&self) -> bool {
        matches!(
            self,
            RoleKind::AssumeRole { .. } | RoleKind::WebIdentity { .. } | RoleKind::Saml { .. }
        )
    }

    /// Whether STS calls of this kind are signed with the caller's credentials.
    pub fn signed(&self) -> bool {
        !matches!(self, RoleKind::WebIdentity { .. } | RoleKind::Saml { .. })
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRole {
    name: String,
    kind: Option<String>,
    arn: Option<String>,
    session_name: Option<String>,
    external_id: Option<String>,
    duration: Option<String>,
    tags: Option<BTreeMap<String, String>>,
    transitive_tag_keys: Option<Vec<String>>,
    #[serde(default)]
    policy_arns: Vec<String>,
    policy: Option<String>,
    source_identity: Option<String>,
    source_role: Option<String>,
    web_identity_token_file: Option<PathBuf>,
    mfa_serial: Option<String>,
    mfa_code_command: Option<Vec<String>>,
    federated_name: Option<String>,
    principal_arn: Option<String>,
    saml_assertion_file: Option<PathBuf>,
    saml_assertion_command: Option<Vec<String>>,
    #[serde(default)]
    token_files: Vec<PathBuf>,
    #[serde(default)]
    tokens: Vec<String>,
    prefetch: Option<bool>,
    #[serde(default = "default_true")]
    relative_uri: bool,
    relative_uri_id: Option<String>,
    /// Checked by hand so that a wrong type names the key.
    local_users: Option<toml::Value>,
    revoke_before: Option<String>,
    service_accounts: Option<Vec<String>>,
    session_scope: Option<String>,
}

fn default_true() -> bool {
    true
}

/// Keys every kind accepts.
const COMMON_KEYS: &[&str] = &[
    "name",
    "kind",
    "duration",
    "policy",
    "policy_arns",
    "token_files",
    "tokens",
    "prefetch",
    "relative_uri",
    "relative_uri_id",
    "local_users",
    "revoke_before",
    "service_accounts",
    "session_scope",
];

/// The kinds and the keys each adds to [`COMMON_KEYS`].
const KINDS: &[(&str, &[&str])] = &[
    (
        "assume_role",
        &[
            "arn",
            "session_name",
            "external_id",
            "tags",
            "transitive_tag_keys",
            "source_identity",
            "source_role",
        ],
    ),
    (
        "web_identity",
        &["arn", "session_name", "web_identity_token_file"],
    ),
    ("session_token", &["mfa_serial", "mfa_code_command"]),
    ("federation_token", &["federated_name", "tags"]),
    (
        "saml",
        &[
            "arn",
            "principal_arn",
            "saml_assertion_file",
            "saml_assertion_command",
        ],
    ),
];

/// Builds every `[[role]]`, then checks what spans roles: unique names, chaining (existing
/// source, no cycles, 1 h clamp), the refresh lead against each final duration.
pub(super) fn build_roles(
    p: &mut Problems,
    raw: Option<&toml::Value>,
    refresh: Option<&RefreshConfig>,
    source: Option<&SourceConfig>,
    ctx: &LoadContext,
) -> Vec<Arc<RoleConfig>> {
    let Some(raw) = raw else {
        p.error(
            Scope::File,
            Some("role"),
            "no [[role]] configured; the broker would have nothing to serve",
        );
        return Vec::new();
    };
    let Some(entries) = raw.as_array() else {
        p.error(
            Scope::File,
            Some("role"),
            "must be an array of tables, written [[role]]",
        );
        return Vec::new();
    };
    let mut roles = Vec::new();
    let mut seen = HashSet::new();
    for (i, entry) in entries.iter().enumerate() {
        let label = entry
            .get("name")
            .and_then(toml::Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("#{}", i + 1));
        let scope = Scope::Role(label.clone());
        if !seen.insert(label.clone()) {
            p.error(
                scope.clone(),
                Some("name"),
                "is used by another [[role]]; names must be unique",
            );
        }
        let kind = entry
            .get("kind")
            .and_then(toml::Value::as_str)
            .unwrap_or("assume_role");
        let Some((_, extra)) = KINDS.iter().find(|(k, _)| *k == kind) else {
            let kinds: Vec<&str> = KINDS.iter().map(|(k, _)| *k).collect();
            p.error(
                scope,
                Some("kind"),
                format!("{kind:?} is not one of {}", kinds.join(", ")),
            );
            continue;
        };
        let known: Vec<&str> = COMMON_KEYS.iter().chain(extra.iter()).copied().collect();
        // A key of another kind gets a message that says so, not just "unknown".
        if let Some(table) = entry.as_table() {
            for key in table.keys() {
                if !known.contains(&key.as_str())
                    && let Some((other, _)) =
                        KINDS.iter().find(|(_, keys)| keys.contains(&key.as_str()))
                {
                    p.error(
                        scope.clone(),
                        Some(key),
                        format!("is used by kind = \"{other}\", not by kind = \"{kind}\""),
                    );
                }
            }
        }
        let filtered = match entry.as_table() {
            Some(t) => toml::Value::Table(
                t.iter()
                    .filter(|(k, _)| {
                        known.contains(&k.as_str())
                            || !KINDS.iter().any(|(_, keys)| keys.contains(&k.as_str()))
                    })
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            None => entry.clone(),
        };
        let all_keys: Vec<&str> = COMMON_KEYS
            .iter()
            .chain(KINDS.iter().flat_map(|(_, k)| k.iter()))
            .copied()
            .collect();
        let Some(raw) = deserialize_known::<RawRole>(p, scope, &filtered, &all_keys) else {
            continue;
        };
        if let Some(role) = build_role(p, raw, ctx) {
            roles.push(role);
        }
    }
    check_across_roles(p, &mut roles, refresh, source);
    roles.into_iter().map(Arc::new).collect()
}

/// Chaining, clamps and the refresh lead: what needs every role built first.
fn check_across_roles(
    p: &mut Problems,
    roles: &mut [RoleConfig],
    refresh: Option<&RefreshConfig>,
    source: Option<&SourceConfig>,
) {
    let kinds: HashMap<String, RoleKind> = roles
        .iter()
        .map(|r| (r.name.clone(), r.spec.kind.clone()))
        .collect();
    let sources: HashMap<String, String> = roles
        .iter()
        .filter_map(|r| Some((r.name.clone(), r.spec.source_role()?.to_string())))
        .collect();
    let broker_is_a_role = matches!(source, Some(SourceConfig::WebIdentity { .. }));
    for r in roles.iter_mut() {
        let scope = Scope::Role(r.name.clone());
        let mut chained = false;
        if let Some(base) = r.spec.source_role() {
            match kinds.get(base) {
                None => p.error(
                    scope.clone(),
                    Some("source_role"),
                    format!("{base:?} is not the name of a [[role]]"),
                ),
                Some(RoleKind::FederationToken { .. }) => p.error(
                    scope.clone(),
                    Some("source_role"),
                    format!("{base:?} is a federation_token role; federated users cannot call AssumeRole"),
                ),
                Some(k) => chained = k.yields_role_credentials(),
            }
            if let Some(cycle) = find_cycle(&r.name, &sources) {
                p.error(
                    scope.clone(),
                    Some("source_role"),
                    format!("chains back to itself: {}", cycle.join(" -> ")),
                );
            }
        }
        if broker_is_a_role && r.spec.kind.signed() {
            match r.spec.kind {
                RoleKind::AssumeRole { .. } => chained = true,
                _ => p.error(
                    scope.clone(),
                    Some("kind"),
                    format!(
                        "{} needs IAM user credentials, but [source] kind = \"web_identity\" gives the broker role credentials",
                        r.spec.kind.as_str()
                    ),
                ),
            }
        }
        if chained && r.spec.duration > CHAINED_MAX_DURATION {
            p.warn(
                &scope,
                "duration",
                format_args!(
                    "{} clamped to 1h: STS allows at most 1h for a role assumed with role credentials (role chaining)",
                    humantime::format_duration(r.spec.duration)
                ),
            );
            r.spec.duration = CHAINED_MAX_DURATION;
        }
        if let Some(refresh) = refresh {
            let lead = refresh.lead.for_lifetime(r.spec.duration);
            if lead >= r.spec.duration {
                p.error(
                    scope.clone(),
                    Some("duration"),
                    format!(
                        "{} must be longer than [refresh].lead ({}); use a percentage lead such as \"66%\" for short sessions",
                        humantime::format_duration(r.spec.duration),
                        refresh.lead
                    ),
                );
            } else if refresh.min_remaining >= lead {
                p.error(
                    scope,
                    Some("duration"),
                    format!(
                        "with lead {} this role would be refreshed only when {} remain, below [refresh].min_remaining ({})",
                        refresh.lead,
                        humantime::format_duration(lead),
                        humantime::format_duration(refresh.min_remaining)
                    ),
                );
            }
        }
    }
}

/// The chain from `start` back to itself through `source_role`, if there is one.
fn find_cycle(start: &str, sources: &HashMap<String, String>) -> Option<Vec<String>> {
    let mut path = vec![start.to_string()];
    let mut at = start;
    while let Some(next) = sources.get(at) {
        path.push(next.clone());
        if next == start {
            return Some(path);
        }
        if path.len() > sources.len() + 1 {
            return None; // a cycle further up the chain, reported for its own members
        }
        at = next;
    }
    None
}

fn build_role(p: &mut Problems, raw: RawRole, ctx: &LoadContext) -> Option<RoleConfig> {
    let errors_before = p.errors.len();
    let scope = Scope::Role(raw.name.clone());
    let err = |p: &mut Problems, key: &str, why: String| p.error(scope.clone(), Some(key), why);
    let kind_name = raw.kind.as_deref().unwrap_or("assume_role");

    if let Err(why) = check_role_name(&raw.name) {
        err(p, "name", why);
    }
    let mut account_id = None;
    let arn = match (&raw.arn, kind_name) {
        (Some(arn), _) => {
            match check_role_arn(arn) {
                Ok(acct) => account_id = Some(acct),
                Err(why) => err(p, "arn", why),
            }
            Some(arn.clone())
        }
        (None, "assume_role" | "web_identity" | "saml") => {
            err(p, "arn", format!("required with kind = \"{kind_name}\""));
            None
        }
        (None, _) => None,
    };
    let workload = kubernetes::build_access(
        p,
        &scope,
        kind_name,
        raw.service_accounts.clone(),
        raw.session_scope.clone(),
    );
    let mut workload = workload;
    let caller_scope = workload.as_ref().map(|w| w.scope);
    let session_name = match kind_name {
        "assume_role" | "web_identity" => {
            let template = raw.session_name.as_deref().unwrap_or_else(|| {
                caller_scope
                    .and_then(kubernetes::default_session_name)
                    .unwrap_or(DEFAULT_SESSION_NAME)
            });
            let name = expand_session_name(template, &ctx.hostname);
            // Caller placeholders are filled per session and `{cluster}` once [kubernetes]
            // is read; the rest is checked now.
            if kubernetes::has_caller_placeholders(&name) || name.contains("{cluster}") {
                let fixed = name.replace("{cluster}", "");
                if let Err(why) = kubernetes::check_template(&fixed, caller_scope) {
                    err(p, "session_name", why);
                }
            } else if let Err(why) = check_session_name(&name) {
                err(p, "session_name", why);
            }
            match workload.as_mut() {
                // Per-caller names: the template goes to the sessions; the role's own
                // session (static tokens) gets the default name.
                Some(w) if kubernetes::has_caller_placeholders(&name) => {
                    w.session_template = Some(name);
                    Some(expand_session_name(DEFAULT_SESSION_NAME, &ctx.hostname))
                }
                _ => Some(name),
            }
        }
        _ => None,
    };
    if caller_scope.is_some_and(|s| s != SessionScope::Role)
        && session_name.is_some()
        && workload
            .as_ref()
            .is_some_and(|w| w.session_template.is_none())
    {
        p.warn(
            &scope,
            "session_name",
            "has no {namespace}/{service_account}/{pod}: every caller session gets the same name, so CloudTrail cannot tell them apart",
        );
    }
    let max = match kind_name {
        "session_token" | "federation_token" => MAX_TOKEN_DURATION,
        _ => MAX_ROLE_DURATION,
    };
    let duration = p
        .duration(&scope, "duration", raw.duration.as_deref())
        .unwrap_or(DEFAULT_DURATION);
    if !(MIN_DURATION..=max).contains(&duration) {
        err(
            p,
            "duration",
            format!(
                "{} is outside what kind = \"{kind_name}\" accepts (15m..{})",
                humantime::format_duration(duration),
                humantime::format_duration(max)
            ),
        );
    }
    check_policies(p, &scope, &raw.policy_arns, raw.policy.as_deref());

    let kind = match kind_name {
        "web_identity" => {
            let token_file = required_readable_file(
                p,
                &scope,
                "web_identity_token_file",
                raw.web_identity_token_file,
            );
            RoleKind::WebIdentity { token_file }
        }
        "session_token" => {
            let mfa = match (raw.mfa_serial, raw.mfa_code_command) {
                (None, None) => None,
                (Some(serial), Some(code_command)) => {
                    if let Err(why) = check_mfa_serial(&serial) {
                        err(p, "mfa_serial", why);
                    } else if account_id.is_none() {
                        account_id = serial.split(':').nth(4).map(str::to_string);
                    }
                    check_command(p, &scope, "mfa_code_command", &code_command);
                    Some(Mfa {
                        serial,
                        code_command,
                    })
                }
                (Some(_), None) => {
                    err(
                        p,
                        "mfa_code_command",
                        "required with mfa_serial: the command that prints the current 6-digit code".into(),
                    );
                    None
                }
                (None, Some(_)) => {
                    err(
                        p,
                        "mfa_serial",
                        "required with mfa_code_command: the ARN of the MFA device".into(),
                    );
                    None
                }
            };
            RoleKind::SessionToken { mfa }
        }
        "federation_token" => {
            let name = raw.federated_name.unwrap_or_default();
            if let Err(why) = check_federated_name(&name) {
                err(p, "federated_name", why);
            }
            if raw.policy.is_none() && raw.policy_arns.is_empty() {
                p.warn(
                    &scope,
                    "policy",
                    "a federation token without policy or policy_arns has no permissions at all",
                );
            }
            let tags = build_tags(p, &scope, raw.tags.unwrap_or_default());
            RoleKind::FederationToken { name, tags }
        }
        "saml" => {
            let principal_arn = raw.principal_arn.unwrap_or_default();
            if let Err(why) = check_saml_provider_arn(&principal_arn) {
                err(p, "principal_arn", why);
            }
            let assertion = match (raw.saml_assertion_file, raw.saml_assertion_command) {
                (Some(f), None) => AssertionSource::File(required_readable_file(
                    p,
                    &scope,
                    "saml_assertion_file",
                    Some(f),
                )),
                (None, Some(c)) => {
                    check_command(p, &scope, "saml_assertion_command", &c);
                    AssertionSource::Command(c)
                }
                _ => {
                    err(
                        p,
                        "saml_assertion_file",
                        "exactly one of saml_assertion_file and saml_assertion_command is required"
                            .into(),
                    );
                    AssertionSource::File(PathBuf::new())
                }
            };
            RoleKind::Saml {
                principal_arn,
                assertion,
            }
        }
        _ => {
            let external_id = raw.external_id.map(Secret::new);
            if let Some(x) = &external_id
                && let Err(why) = check_external_id(x.expose())
            {
                err(p, "external_id", why);
            }
            let tags = build_tags(p, &scope, raw.tags.unwrap_or_default());
            let transitive_tag_keys = raw.transitive_tag_keys.unwrap_or_default();
            if transitive_tag_keys.len() > MAX_TAGS {
                err(
                    p,
                    "transitive_tag_keys",
                    format!("at most {MAX_TAGS} keys are accepted"),
                );
            }
            for k in &transitive_tag_keys {
                if !tags.iter().any(|(t, _)| t.eq_ignore_ascii_case(k)) {
                    err(
                        p,
                        "transitive_tag_keys",
                        format!("{k:?} is not one of this role's tags"),
                    );
                }
            }
            if let Some(si) = &raw.source_identity
                && let Err(why) = check_source_identity(si)
            {
                err(p, "source_identity", why);
            }
            if raw.source_role.as_deref() == Some(raw.name.as_str()) {
                err(p, "source_role", "a role cannot be its own source".into());
            }
            RoleKind::AssumeRole {
                external_id,
                tags,
                transitive_tag_keys,
                source_identity: raw.source_identity,
                source_role: raw.source_role,
            }
        }
    };

    let tokens = load_tokens(p, &scope, &raw.token_files, raw.tokens);
    let relative_uri_id = match (raw.relative_uri, raw.relative_uri_id) {
        (false, Some(_)) => {
            err(
                p,
                "relative_uri_id",
                "set, but relative_uri = false turns the path off".into(),
            );
            None
        }
        (false, None) => None,
        (true, Some(id)) => match super::relative_uri::check_id(&id) {
            Ok(()) => Some(Secret::new(id)),
            Err(why) => {
                err(p, "relative_uri_id", why);
                None
            }
        },
        (true, None) => tokens
            .first()
            .map(|t| super::relative_uri::derive(t, &raw.name)),
    };
    let local_users = resolve_users(p, &scope, raw.local_users);
    let revoke_before = raw
        .revoke_before
        .as_deref()
        .and_then(|t| match super::parse_instant(t) {
            Ok(t) => Some(t),
            Err(why) => {
                p.error(scope.clone(), Some("revoke_before"), why);
                None
            }
        });
    if p.errors.len() > errors_before {
        return None;
    }
    Some(RoleConfig {
        name: raw.name,
        spec: RoleSpec {
            kind,
            arn,
            account_id,
            session_name,
            duration,
            policy_arns: raw.policy_arns,
            policy: raw.policy,
            // A role only Kubernetes callers use, each through a session of their own, has
            // nothing to prefetch: its own session would serve no one.
            prefetch: raw.prefetch.unwrap_or(
                !(caller_scope.is_some_and(|s| s != SessionScope::Role) && tokens.is_empty()),
            ),
            workload,
        },
        tokens,
        token_files: raw.token_files,
        relative_uri_id,
        local_users,
        revoke_before,
    })
}

/// Resolves `local_users` to UIDs, one problem per entry that does not resolve. Root is
/// refused: it always stays on the real IMDS, and it can act as any user anyway.
fn resolve_users(p: &mut Problems, scope: &Scope, raw: Option<toml::Value>) -> Vec<LocalUser> {
    let entries = match raw {
        None => Vec::new(),
        Some(toml::Value::Array(a)) => a,
        Some(other) => {
            p.error(
                scope.clone(),
                Some("local_users"),
                format!(
                    "must be a list of user names and UIDs, like [\"billing\", 1207], not a {}",
                    other.type_str()
                ),
            );
            return Vec::new();
        }
    };
    let mut raw = Vec::with_capacity(entries.len());
    for e in entries {
        match e {
            toml::Value::Integer(n) => raw.push(RawUser::Uid(n)),
            toml::Value::String(s) => raw.push(RawUser::Name(s)),
            other => p.error(
                scope.clone(),
                Some("local_users"),
                format!("{other} is neither a user name nor a UID"),
            ),
        }
    }
    let mut out: Vec<LocalUser> = Vec::with_capacity(raw.len());
    for entry in raw {
        let user = match entry {
            RawUser::Uid(n) => match u32::try_from(n) {
                // (uid_t)-1 is "no user" to the kernel.
                Ok(uid) if uid != u32::MAX => LocalUser {
                    uid,
                    name: nix::unistd::User::from_uid(uid.into())
                        .ok()
                        .flatten()
                        .map(|u| u.name),
                },
                _ => {
                    p.error(
                        scope.clone(),
                        Some("local_users"),
                        format!("{n} is not a UID (0..4294967294)"),
                    );
                    continue;
                }
            },
            RawUser::Name(name) => match nix::unistd::User::from_name(&name) {
                Ok(Some(u)) => LocalUser {
                    uid: u.uid.as_raw(),
                    name: Some(name),
                },
                Ok(None) => {
                    p.error(
                        scope.clone(),
                        Some("local_users"),
                        format!("no user named {name:?} on this host (names are resolved when the config is loaded; use a numeric UID for a user created later)"),
                    );
                    continue;
                }
                Err(e) => {
                    p.error(
                        scope.clone(),
                        Some("local_users"),
                        format!("cannot look up user {name:?}: {e}"),
                    );
                    continue;
                }
            },
        };
        if user.uid == 0 {
            p.error(
                scope.clone(),
                Some("local_users"),
                "root (UID 0) cannot be a local user: root always stays on the real instance metadata service, and root can act as any user",
            );
            continue;
        }
        if !out.iter().any(|u| u.uid == user.uid) {
            out.push(user);
        }
    }
    out
}

/// Session tags: at most 50, each valid, keys unique ignoring case.
fn build_tags(
    p: &mut Problems,
    scope: &Scope,
    tags: BTreeMap<String, String>,
) -> Vec<(String, String)> {
    if tags.len() > MAX_TAGS {
        p.error(
            scope.clone(),
            Some("tags"),
            format!(
                "{} session tags; STS accepts at most {MAX_TAGS}",
                tags.len()
            ),
        );
    }
    let mut lower_keys = HashSet::new();
    for (k, v) in &tags {
        if let Err(why) = check_tag(k, v) {
            p.error(scope.clone(), Some("tags"), why);
        }
        if !lower_keys.insert(k.to_lowercase()) {
            p.error(
                scope.clone(),
                Some("tags"),
                format!("tag key {k:?} appears twice (STS compares keys case-insensitively)"),
            );
        }
    }
    tags.into_iter().collect()
}

/// Session policies: ≤ 10 managed ARNs, inline JSON, ≤ 2048 characters together.
fn check_policies(p: &mut Problems, scope: &Scope, arns: &[String], policy: Option<&str>) {
    if arns.len() > MAX_POLICY_ARNS {
        p.error(
            scope.clone(),
            Some("policy_arns"),
            format!(
                "{} managed policies; STS accepts at most {MAX_POLICY_ARNS}",
                arns.len()
            ),
        );
    }
    for a in arns {
        if let Err(why) = check_policy_arn(a) {
            p.error(scope.clone(), Some("policy_arns"), why);
        }
    }
    let policy_chars = policy.map_or(0, |s| s.chars().count());
    if let Some(policy) = policy {
        if policy_chars > MAX_POLICY_CHARS {
            p.error(
                scope.clone(),
                Some("policy"),
                format!("{policy_chars} characters; STS accepts at most {MAX_POLICY_CHARS}"),
            );
        }
        if let Err(e) = serde_json::from_str::<serde_json::Value>(policy) {
            p.error(
                scope.clone(),
                Some("policy"),
                format!("is not valid JSON: {e}"),
            );
        }
    }
    let together = policy_chars + arns.iter().map(String::len).sum::<usize>();
    if together > MAX_POLICY_CHARS && policy_chars <= MAX_POLICY_CHARS {
        p.error(
            scope.clone(),
            Some("policy_arns"),
            format!(
                "policy and policy_arns together are {together} characters; STS accepts at most {MAX_POLICY_CHARS}"
            ),
        );
    }
}

/// A file the broker re-reads on every refresh; it must be readable now.
fn required_readable_file(
    p: &mut Problems,
    scope: &Scope,
    key: &str,
    path: Option<PathBuf>,
) -> PathBuf {
    let Some(path) = path.filter(|p| !p.as_os_str().is_empty()) else {
        p.error(scope.clone(), Some(key), "required");
        return PathBuf::new();
    };
    if let Err(e) = super::file::open_regular(&path) {
        p.error(
            scope.clone(),
            Some(key),
            format!("cannot read {}: {e}", path.display()),
        );
    }
    path
}

/// A command run on every refresh: a non-empty argv whose program exists when given by path.
fn check_command(p: &mut Problems, scope: &Scope, key: &str, argv: &[String]) {
    let Some(program) = argv.first().filter(|s| !s.is_empty()) else {
        p.error(
            scope.clone(),
            Some(key),
            "must be a non-empty list: the program and its arguments",
        );
        return;
    };
    if program.contains('/') {
        match std::fs::metadata(program) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {}
            Ok(_) => p.error(
                scope.clone(),
                Some(key),
                format!("{program} is not an executable file"),
            ),
            Err(e) => p.error(scope.clone(), Some(key), format!("{program}: {e}")),
        }
    }
}

/// MFA SerialNumber: 9..256 of `[\w+=/:,.@-]`.
pub fn check_mfa_serial(serial: &str) -> Result<(), String> {
    let ok = (9..=256).contains(&serial.len())
        && serial.chars().all(|c| is_word(c) || "+=/:,.@-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{serial:?} is not an MFA device serial (9..256 characters, e.g. \"arn:aws:iam::123456789012:mfa/ops\")"
        ))
    }
}

/// GetFederationToken Name: 2..32 of `[\w+=,.@-]`.
pub fn check_federated_name(name: &str) -> Result<(), String> {
    let ok =
        (2..=32).contains(&name.len()) && name.chars().all(|c| is_word(c) || "+=,.@-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} must be 2..32 characters of letters, digits and +=,.@_-"
        ))
    }
}

/// `arn:PARTITION:iam::ACCOUNT:saml-provider/NAME`.
pub fn check_saml_provider_arn(arn: &str) -> Result<(), String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let ok = matches!(parts[..], [a, partition, "iam", "", account, resource]
        if a == "arn" && partition.starts_with("aws") && account.len() == 12
            && account.chars().all(|c| c.is_ascii_digit())
            && resource.strip_prefix("saml-provider/").is_some_and(|n| !n.is_empty()));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{arn:?} is not a SAML provider ARN like \"arn:aws:iam::123456789012:saml-provider/corp-idp\""
        ))
    }
}

/// Reads the token files (trailing whitespace trimmed) and adds the inline tokens.
/// Messages describe tokens by file and position, never by value.
fn load_tokens(
    p: &mut Problems,
    scope: &Scope,
    files: &[PathBuf],
    inline: Vec<String>,
) -> Vec<Secret> {
    let mut tokens = Vec::new();
    for f in files {
        let meta = match std::fs::metadata(f) {
            Ok(m) => m,
            Err(e) => {
                p.error(
                    scope.clone(),
                    Some("token_files"),
                    format!("cannot read {}: {e}", f.display()),
                );
                continue;
            }
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            p.warn(
                scope,
                "token_files",
                format_args!(
                    "{} is accessible to group/others (mode {mode:04o}); chmod 600 it",
                    f.display()
                ),
            );
        }
        match super::file::read_bounded(f, super::file::MAX_SECRET_FILE_BYTES) {
            Ok(text) => {
                let token = Secret::new(text.trim_end().to_string());
                if let Err(why) = check_token(&token) {
                    p.error(
                        scope.clone(),
                        Some("token_files"),
                        format!("{}: {why}", f.display()),
                    );
                } else {
                    tokens.push(token);
                }
            }
            Err(e) => p.error(
                scope.clone(),
                Some("token_files"),
                format!("cannot read {}: {e}", f.display()),
            ),
        }
    }
    if !inline.is_empty() {
        p.warn(
            scope,
            "tokens",
            "inline tokens are readable by anyone who can read the config; prefer token_files",
        );
    }
    for (i, t) in inline.into_iter().enumerate() {
        let token = Secret::new(t);
        match check_token(&token) {
            Ok(()) => tokens.push(token),
            Err(why) => p.error(
                scope.clone(),
                Some("tokens"),
                format!("token #{}: {why}", i + 1),
            ),
        }
    }
    tokens
}

/// Shortest client token accepted: shorter ones are guessable (16 random characters from the
/// 94 a header can carry are ~105 bits; `openssl rand -hex 16` makes 32).
pub const MIN_TOKEN_LEN: usize = 16;

/// A client token must fit in an HTTP header as is, and not be guessable.
fn check_token(token: &Secret) -> Result<(), String> {
    let t = token.expose();
    if t.is_empty() {
        return Err("the token is empty".to_string());
    }
    if t.len() < MIN_TOKEN_LEN {
        return Err(format!(
            "the token is {} characters; at least {MIN_TOKEN_LEN} are required (a short token can be guessed; `openssl rand -hex 16` makes a good one)",
            t.len()
        ));
    }
    if !t.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(format!(
            "the token ({} bytes) contains spaces or characters an HTTP header cannot carry",
            t.len()
        ));
    }
    Ok(())
}
