//! Reading one `[[role]]`: its `kind` first, then the keys that kind takes, then the parts
//! every kind shares (name, ARN, session name, duration, policies, tokens, callers). The
//! kind's own parameters are built in [`super::kinds`].

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::{MIN_DURATION, RoleConfig, RoleKind, RoleKindTag, RoleSpec};
use super::{chain, kinds, limits, tokens, users};
use crate::config::keys::{self, ROLE_KIND_KEYS};
use crate::config::kubernetes::{self, SessionScope, WorkloadAccess};
use crate::config::problems::{Problems, Scope};
use crate::config::{
    LoadContext, RefreshConfig, SourceConfig, check_role_arn, check_role_name, check_session_name,
    expand_session_name,
};

const DEFAULT_DURATION: Duration = Duration::from_secs(3600);
/// Used when a role sets no `session_name`.
const DEFAULT_SESSION_NAME: &str = "sts-broker-{hostname}";

/// Every key a `[[role]]` may have; which kinds take which is in the key table
/// ([`ROLE_KIND_KEYS`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawRole {
    pub(super) name: String,
    /// Read before the rest (as [`RoleKindTag`]); a field so that a wrong type is reported.
    #[allow(dead_code)]
    kind: Option<String>,
    arn: Option<String>,
    session_name: Option<String>,
    pub(super) external_id: Option<String>,
    duration: Option<String>,
    pub(super) tags: Option<BTreeMap<String, String>>,
    pub(super) transitive_tag_keys: Option<Vec<String>>,
    #[serde(default)]
    pub(super) policy_arns: Vec<String>,
    pub(super) policy: Option<String>,
    pub(super) source_identity: Option<String>,
    pub(super) source_role: Option<String>,
    pub(super) web_identity_token_file: Option<PathBuf>,
    pub(super) mfa_serial: Option<String>,
    pub(super) mfa_code_command: Option<Vec<String>>,
    pub(super) federated_name: Option<String>,
    pub(super) principal_arn: Option<String>,
    pub(super) saml_assertion_file: Option<PathBuf>,
    pub(super) saml_assertion_command: Option<Vec<String>>,
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

/// Builds every `[[role]]`, then checks what spans roles: unique names, chaining (existing
/// source, no cycles, 1 h clamp), the refresh lead against each final duration.
pub(in crate::config) fn build_roles(
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
        let Some((kind, raw)) = read_entry(p, scope, entry) else {
            continue;
        };
        if let Some(role) = build_role(p, kind, raw, ctx) {
            roles.push(role);
        }
    }
    chain::check_across_roles(p, &mut roles, refresh, source);
    roles.into_iter().map(Arc::new).collect()
}

/// The entry's kind and the keys it takes. A key of another kind gets a message that names
/// that kind, not just "unknown".
fn read_entry(
    p: &mut Problems,
    scope: Scope,
    entry: &toml::Value,
) -> Option<(RoleKindTag, RawRole)> {
    let kind_name = entry
        .get("kind")
        .and_then(toml::Value::as_str)
        .unwrap_or("assume_role");
    let Some(kind) = RoleKindTag::parse(kind_name) else {
        let kinds: Vec<&str> = RoleKindTag::ALL.iter().map(|k| k.as_str()).collect();
        p.error(
            scope,
            Some("kind"),
            format!("{kind_name:?} is not one of {}", kinds.join(", ")),
        );
        return None;
    };
    let filtered = match entry.as_table() {
        Some(t) => toml::Value::Table(
            t.iter()
                .filter(
                    |(k, _)| match keys::owner_elsewhere(ROLE_KIND_KEYS, k, kind) {
                        Some(other) => {
                            p.error(
                                scope.clone(),
                                Some(k),
                                format!(
                                    "is used by kind = \"{}\", not by kind = \"{}\"",
                                    other.as_str(),
                                    kind.as_str()
                                ),
                            );
                            false
                        }
                        None => true,
                    },
                )
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        None => entry.clone(),
    };
    let known = keys::known_for::<RawRole, _>(ROLE_KIND_KEYS, kind);
    let raw = p.table::<RawRole>(scope, &filtered, &known)?;
    Some((kind, raw))
}

/// The parts every kind shares, around the kind's own builder. `None` when the role has a
/// problem (each is recorded).
fn build_role(
    p: &mut Problems,
    kind: RoleKindTag,
    mut raw: RawRole,
    ctx: &LoadContext,
) -> Option<RoleConfig> {
    let errors_before = p.error_count();
    let scope = Scope::Role(raw.name.clone());
    if let Err(why) = check_role_name(&raw.name) {
        p.error(scope.clone(), Some("name"), why);
    }
    let mut account_id = None;
    let arn = match raw.arn.take() {
        Some(arn) => {
            match check_role_arn(&arn) {
                Ok(acct) => account_id = Some(acct),
                Err(why) => p.error(scope.clone(), Some("arn"), why),
            }
            Some(arn)
        }
        None if kind.assumes_role() => {
            let why = format!("required with kind = \"{}\"", kind.as_str());
            p.error(scope.clone(), Some("arn"), why);
            None
        }
        None => None,
    };
    let mut workload = kubernetes::build_access(
        p,
        &scope,
        kind,
        raw.service_accounts.take(),
        raw.session_scope.take(),
    );
    let caller_scope = workload.as_ref().map(|w| w.scope);
    let session_name = kind
        .has_session_name()
        .then(|| session_name(p, &scope, raw.session_name.take(), workload.as_mut(), ctx));
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
    let duration = duration(p, &scope, kind, raw.duration.as_deref());
    limits::check_policies(p, &scope, &raw.policy_arns, raw.policy.as_deref());

    let kind = kinds::build(p, &scope, kind, &mut raw);
    if account_id.is_none()
        && let RoleKind::SessionToken { mfa: Some(mfa) } = &kind
    {
        // The device ARN names the account (when the serial is valid; otherwise the role
        // is not built at all).
        account_id = mfa.serial.split(':').nth(4).map(str::to_string);
    }

    let tokens = tokens::load_tokens(p, &scope, &raw.token_files, raw.tokens);
    let relative_uri_id = tokens::relative_uri_id(
        p,
        &scope,
        raw.relative_uri,
        raw.relative_uri_id,
        &tokens,
        &raw.name,
    );
    let local_users = users::resolve_users(p, &scope, raw.local_users);
    let revoke_before = p.instant(&scope, "revoke_before", raw.revoke_before.as_deref());
    if p.error_count() > errors_before {
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

/// The session name (`assume_role`, `web_identity`): `{hostname}` filled now; with caller
/// placeholders, the template goes to the caller sessions and the role's own session gets
/// the default name.
fn session_name(
    p: &mut Problems,
    scope: &Scope,
    raw: Option<String>,
    workload: Option<&mut WorkloadAccess>,
    ctx: &LoadContext,
) -> String {
    let caller_scope = workload.as_ref().map(|w| w.scope);
    let template = raw.unwrap_or_else(|| {
        caller_scope
            .and_then(kubernetes::default_session_name)
            .unwrap_or(DEFAULT_SESSION_NAME)
            .to_string()
    });
    let name = expand_session_name(&template, &ctx.hostname);
    // Caller placeholders are filled per session and `{cluster}` once [kubernetes] is read;
    // the rest is checked now.
    if kubernetes::has_caller_placeholders(&name) || name.contains("{cluster}") {
        let fixed = name.replace("{cluster}", "");
        if let Err(why) = kubernetes::check_template(&fixed, caller_scope) {
            p.error(scope.clone(), Some("session_name"), why);
        }
    } else if let Err(why) = check_session_name(&name) {
        p.error(scope.clone(), Some("session_name"), why);
    }
    match workload {
        // Per-caller names: the template goes to the sessions; the role's own session
        // (static tokens) gets the default name.
        Some(w) if kubernetes::has_caller_placeholders(&name) => {
            w.session_template = Some(name);
            expand_session_name(DEFAULT_SESSION_NAME, &ctx.hostname)
        }
        _ => name,
    }
}

/// `duration`, within what the kind accepts.
fn duration(p: &mut Problems, scope: &Scope, kind: RoleKindTag, raw: Option<&str>) -> Duration {
    let max = kind.max_duration();
    let duration = p
        .duration(scope, "duration", raw)
        .unwrap_or(DEFAULT_DURATION);
    if !(MIN_DURATION..=max).contains(&duration) {
        p.error(
            scope.clone(),
            Some("duration"),
            format!(
                "{} is outside what kind = \"{}\" accepts (15m..{})",
                humantime::format_duration(duration),
                kind.as_str(),
                humantime::format_duration(max)
            ),
        );
    }
    duration
}
