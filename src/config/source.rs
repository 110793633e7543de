//! `[source]`: the credentials the broker signs its STS calls with, one `kind` each.

use std::path::PathBuf;

use serde::Deserialize;

use super::keys::{self, SOURCE_KIND_KEYS};
use super::problems::{Problems, Scope};
use super::{check_role_arn, check_session_name};

/// `[source]`: the credentials the broker signs its STS calls with.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceConfig {
    /// The standard chain: env, profile, web identity, container, IMDS.
    Default,
    /// A named profile from the shared config files.
    Profile {
        /// The profile's name.
        name: String,
    },
    /// Only `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`.
    StaticEnv,
    /// AssumeRoleWithWebIdentity with a token file re-read on every call (IRSA / EKS).
    WebIdentity {
        /// The OIDC token, re-read on every call.
        token_file: PathBuf,
        /// The role the broker assumes for itself.
        role_arn: String,
        /// Its session name.
        session_name: String,
    },
}

/// `[source] kind`, parsed once: which keys apply and which builder runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SourceKindTag {
    Default,
    Profile,
    StaticEnv,
    WebIdentity,
}

impl SourceKindTag {
    const ALL: [SourceKindTag; 4] = [
        SourceKindTag::Default,
        SourceKindTag::WebIdentity,
        SourceKindTag::Profile,
        SourceKindTag::StaticEnv,
    ];

    fn as_str(self) -> &'static str {
        match self {
            SourceKindTag::Default => "default",
            SourceKindTag::Profile => "profile",
            SourceKindTag::StaticEnv => "static_env",
            SourceKindTag::WebIdentity => "web_identity",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    kind: Option<String>,
    name: Option<String>,
    token_file: Option<PathBuf>,
    role_arn: Option<String>,
    session_name: Option<String>,
}

/// Builds `[source]`: the kind, then the keys of that kind.
pub(super) fn build_source(p: &mut Problems, raw: RawSource) -> SourceConfig {
    let scope = Scope::Table("source");
    let kind_name = raw.kind.as_deref().unwrap_or("default");
    let kind = SourceKindTag::parse(kind_name);
    // Keys that belong to another kind are mistakes worth reporting.
    let present = [
        ("name", raw.name.is_some()),
        ("token_file", raw.token_file.is_some()),
        ("role_arn", raw.role_arn.is_some()),
        ("session_name", raw.session_name.is_some()),
    ];
    for (key, is_set) in present {
        let owner = match kind {
            Some(k) => keys::owner_elsewhere(SOURCE_KIND_KEYS, key, k),
            None => SOURCE_KIND_KEYS
                .iter()
                .find(|(_, keys)| keys.contains(&key))
                .map(|(k, _)| *k),
        };
        if let (true, Some(owner)) = (is_set, owner) {
            p.error(
                scope.clone(),
                Some(key),
                format!(
                    "only used with kind = \"{}\", not with kind = \"{kind_name}\"",
                    owner.as_str()
                ),
            );
        }
    }
    match kind {
        Some(SourceKindTag::Default) => SourceConfig::Default,
        Some(SourceKindTag::StaticEnv) => SourceConfig::StaticEnv,
        Some(SourceKindTag::Profile) => build_profile(p, scope, raw),
        Some(SourceKindTag::WebIdentity) => build_web_identity(p, scope, raw),
        None => {
            let kinds: Vec<String> = SourceKindTag::ALL
                .iter()
                .map(|k| format!("{:?}", k.as_str()))
                .collect();
            p.error(
                scope,
                Some("kind"),
                format!("{kind_name:?} is not one of {}", kinds.join(", ")),
            );
            SourceConfig::Default
        }
    }
}

fn build_profile(p: &mut Problems, scope: Scope, raw: RawSource) -> SourceConfig {
    match raw.name {
        Some(name) if !name.is_empty() => SourceConfig::Profile { name },
        _ => {
            p.error(scope, Some("name"), "required with kind = \"profile\"");
            SourceConfig::Default
        }
    }
}

fn build_web_identity(p: &mut Problems, scope: Scope, raw: RawSource) -> SourceConfig {
    let token_file = raw.token_file.unwrap_or_default();
    if token_file.as_os_str().is_empty() {
        p.error(
            scope.clone(),
            Some("token_file"),
            "required with kind = \"web_identity\"",
        );
    }
    let role_arn = raw.role_arn.unwrap_or_default();
    if let Err(why) = check_role_arn(&role_arn) {
        p.error(scope.clone(), Some("role_arn"), why);
    }
    let session_name = raw.session_name.unwrap_or_else(|| "sts-broker".to_string());
    if let Err(why) = check_session_name(&session_name) {
        p.error(scope, Some("session_name"), why);
    }
    SourceConfig::WebIdentity {
        token_file,
        role_arn,
        session_name,
    }
}
