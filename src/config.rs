//! Configuration: the TOML model, parsing and validation.
//!
//! A leaf module: plain data and checks, no I/O beyond reading the config and token files.
//! Parsing never stops at the first problem: every table and every `[[role]]` is checked and
//! all problems are returned together, each naming the file, the role and the key
//! (`config.toml: role "app": key "session_name": …`); warnings have the same shape. Every
//! limit STS enforces is checked here, so a bad value fails at load time instead of as an
//! `AccessDenied` at 3 a.m.
//!
//! One file per table ([`sts`], `source`, `refresh`, `listener` for `[ecs]`/`[admin]`/`[imds]`,
//! `audit`, [`kubernetes`]) and for `[[role]]` (`role/`: one builder per kind, the
//! `source_role` chains); `keys` is the table of known keys, `checks` the single-value
//! checks, `problems` the errors and warnings.

mod audit;
mod checks;
pub mod file;
mod keys;
pub mod kubernetes;
mod listener;
mod problems;
mod refresh;
pub mod relative_uri;
mod role;
mod source;
pub mod sts;
mod validate;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use audit::AuditConfig;
pub use checks::{
    check_external_id, check_policy_arn, check_role_arn, check_role_name, check_session_name,
    check_source_identity, check_tag, expand_session_name, parse_instant,
};
pub use kubernetes::{
    JwksSource, KubernetesConfig, ServiceAccountPattern, SessionScope, WorkloadAccess,
};
pub use listener::{ImdsConfig, ListenerConfig, parse_source_net};
use problems::Problems;
pub use problems::{ConfigError, ConfigErrors, ConfigProblem, ConfigWarning, Scope};
pub use refresh::{Lead, RefreshConfig};
pub use role::{
    AssertionSource, CHAINED_MAX_DURATION, LocalUser, MIN_TOKEN_LEN, Mfa, RoleConfig, RoleKind,
    RoleKindTag, RoleSpec, check_federated_name, check_mfa_serial, check_saml_provider_arn,
    describe_user,
};
pub use source::SourceConfig;
pub use sts::StsConfig;
pub use sts::endpoints::{EndpointTarget, endpoint_order, partition, regional_url};

/// Default config path when neither `-c` nor `STS_BROKER_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/sts-broker/config.toml";
/// Environment variable naming the config file.
pub const ENV_CONFIG: &str = "STS_BROKER_CONFIG";

/// The whole validated configuration. Built anew on every reload and swapped in whole.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was read from (for messages and reloads); `None` when parsed from a string.
    pub path: Option<PathBuf>,
    /// `[sts]`: how to reach STS.
    pub sts: StsConfig,
    /// `[source]`: what the broker signs its own calls with.
    pub source: SourceConfig,
    /// `[refresh]`: when credentials are refreshed.
    pub refresh: RefreshConfig,
    /// `[ecs]`: the container-credentials listener.
    pub ecs: ListenerConfig,
    /// `[admin]`: metrics, health and the role list.
    pub admin: ListenerConfig,
    /// The IMDSv2-compatible listener; `None` when there is no `[imds]` table.
    pub imds: Option<ImdsConfig>,
    /// The audit trail file; `None` when there is no `[audit]` table.
    pub audit: Option<AuditConfig>,
    /// Every `[[role]]`, in config order. Not to be edited after validation: the chains
    /// below index into it.
    pub roles: Vec<Arc<RoleConfig>>,
    /// Kubernetes workload identity (DESIGN.md §7); `None` without a `[kubernetes]` table.
    pub kubernetes: Option<KubernetesConfig>,
    /// Problems that do not stop the broker (loose token file modes, roles nobody can fetch),
    /// shaped like errors.
    pub warnings: Vec<ConfigWarning>,
    /// `source_role` resolved: each role's ancestors, and sources before chained roles.
    chains: role::Chains,
}

/// Facts from the machine that the config depends on, injected so tests are deterministic.
#[derive(Debug, Clone)]
pub struct LoadContext {
    /// Fills `{hostname}` in session names.
    pub hostname: String,
}

impl LoadContext {
    /// The real machine's facts.
    pub fn from_system() -> Self {
        LoadContext {
            hostname: gethostname::gethostname().to_string_lossy().into_owned(),
        }
    }
}

// === loading ===

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path, ctx: &LoadContext) -> Result<Config, ConfigErrors> {
        let origin = path.display().to_string();
        let text = file::read_bounded(path, file::MAX_CONFIG_BYTES).map_err(|e| {
            ConfigErrors(vec![ConfigProblem {
                origin: origin.clone(),
                scope: Scope::File,
                key: None,
                message: format!("cannot read the config file: {e}"),
            }])
        })?;
        let mut config = Config::parse(&text, &origin, ctx)?;
        config.path = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses and validates config text; `origin` names it in messages.
    pub fn parse(text: &str, origin: &str, ctx: &LoadContext) -> Result<Config, ConfigErrors> {
        let mut p = Problems::new(origin);
        let table: toml::Table = match toml::from_str(text) {
            Ok(t) => t,
            Err(e) => {
                p.error(Scope::File, None, format!("not valid TOML: {e}"));
                return Err(ConfigErrors(p.errors));
            }
        };
        for key in table.keys() {
            if !keys::TOP_LEVEL_TABLES.contains(&key.as_str()) {
                p.error(
                    Scope::File,
                    Some(key),
                    format!(
                        "unknown table or key; expected one of {}",
                        keys::TOP_LEVEL_TABLES.join(", ")
                    ),
                );
            }
        }

        let sts = p
            .section(&table, "sts")
            .map(|raw| sts::build_sts(&mut p, raw));
        let source = p
            .section(&table, "source")
            .map(|raw| source::build_source(&mut p, raw));
        let refresh = p
            .section(&table, "refresh")
            .map(|raw| refresh::build_refresh(&mut p, raw));
        let ecs = p
            .section(&table, "ecs")
            .map(|raw| listener::build_listener(&mut p, "ecs", raw, listener::DEFAULT_ECS_LISTEN));
        let admin = p.section(&table, "admin").map(|raw| {
            listener::build_listener(&mut p, "admin", raw, listener::DEFAULT_ADMIN_LISTEN)
        });
        let mut roles = role::build_roles(
            &mut p,
            table.get("role"),
            refresh.as_ref(),
            source.as_ref(),
            ctx,
        );
        let kubernetes = table.get("kubernetes").and_then(|v| {
            p.table::<kubernetes::RawKubernetes>(
                Scope::Table("kubernetes"),
                v,
                keys::fields::<kubernetes::RawKubernetes>(),
            )
            .and_then(|raw| kubernetes::build_kubernetes(&mut p, raw, &|k| std::env::var(k).ok()))
        });
        kubernetes::finish_roles(
            &mut p,
            &mut roles,
            kubernetes.as_ref(),
            table.contains_key("kubernetes"),
        );
        let imds = table
            .get("imds")
            .and_then(|v| listener::build_imds(&mut p, v, &roles, refresh.as_ref()));
        let audit = table.get("audit").and_then(|v| {
            p.table::<audit::RawAudit>(Scope::Table("audit"), v, keys::fields::<audit::RawAudit>())
                .and_then(|raw| audit::build_audit(&mut p, raw))
        });
        validate::across_tables(&mut p, &roles, imds.as_ref());

        match (sts, source, refresh, ecs, admin) {
            (Some(sts), Some(source), Some(refresh), Some(ecs), Some(admin))
                if p.errors.is_empty() =>
            {
                Ok(Config {
                    path: None,
                    sts,
                    source,
                    refresh,
                    ecs,
                    admin,
                    imds,
                    audit,
                    chains: role::Chains::resolve(&roles),
                    roles,
                    kubernetes,
                    warnings: p.warnings,
                })
            }
            _ => Err(ConfigErrors(p.errors)),
        }
    }

    /// The role called `name`.
    pub fn role(&self, name: &str) -> Option<&Arc<RoleConfig>> {
        self.roles.iter().find(|r| r.name == name)
    }

    /// Every role, each after the role it is chained from (`source_role`), otherwise in
    /// config order: the order to set roles up in, so a source is there before its users.
    pub fn in_dependency_order(&self) -> impl Iterator<Item = &Arc<RoleConfig>> {
        self.chains
            .order()
            .iter()
            .filter_map(|&i| self.roles.get(i))
    }

    /// The roles `name` is chained from, nearest first: its `source_role`, that role's
    /// `source_role`, and so on. Empty for a role that is not chained or does not exist.
    pub fn ancestors(&self, name: &str) -> impl Iterator<Item = &Arc<RoleConfig>> {
        let at = self.roles.iter().position(|r| r.name == name);
        at.map_or(&[][..], |i| self.chains.ancestors(i))
            .iter()
            .filter_map(|&i| self.roles.get(i))
    }

    /// The role called `name` followed by its ancestors (see [`Config::ancestors`]): the
    /// chain of credentials a chained role needs, far end last. `None` for an unknown name.
    pub fn chain(&self, name: &str) -> Option<Vec<&Arc<RoleConfig>>> {
        let role = self.role(name)?;
        Some(std::iter::once(role).chain(self.ancestors(name)).collect())
    }
}

#[cfg(test)]
mod tests;
