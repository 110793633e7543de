//! Reloading (SIGHUP, `--watch-config`, or an embedding program): a new configuration is
//! checked against what cannot change while running, then swapped in whole
//! ([`RoleSupervisor::apply`](crate::supervisor::RoleSupervisor::apply)). Anything wrong — an
//! invalid file, a setting that needs a restart, an STS set-up failure — leaves the running
//! configuration serving, is logged, and is counted in
//! `sts_broker_config_reloads_total{outcome="error"|"rejected"}` (`ok` otherwise).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::broker::{self, Broker};
use crate::config::{self, Config, ConfigErrors, LoadContext};
use crate::supervisor::session_limits;
use crate::systemd;

/// Why a reload was not applied. The old configuration keeps serving in every case.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new file does not parse or validate (every problem listed).
    #[error("invalid configuration:\n{0}")]
    Invalid(#[from] config::ConfigErrors),
    /// A setting the running listeners, audit trail or session table were built with.
    #[error("{0} cannot change without a restart")]
    Rejected(&'static str),
    /// The new `[sts]` / `[source]` cannot be set up.
    #[error("cannot set up STS with the new configuration: {0}")]
    Sts(crate::sts::SetupError),
    /// `local_users` names the broker's own user.
    #[error("{0}")]
    OwnUser(String),
}

impl ReloadError {
    /// The `outcome` label of `sts_broker_config_reloads_total`.
    fn outcome(&self) -> &'static str {
        match self {
            ReloadError::Rejected(_) => "rejected",
            _ => "error",
        }
    }
}

impl Broker {
    /// Applies a new configuration, or leaves the running one untouched and says why.
    /// Counted in `sts_broker_config_reloads_total{outcome}`.
    ///
    /// # Errors
    /// A changed listen address (needs a restart) or an STS set-up failure.
    pub async fn reload(&self, new: Config) -> Result<(), ReloadError> {
        let result = self.try_reload(new).await;
        self.metrics
            .observe_reload(result.as_ref().err().map_or("ok", ReloadError::outcome));
        result
    }

    /// Applies what reading the config file gave (see [`read_config`]): a new configuration
    /// as [`Broker::reload`] does, an invalid one counted as a failed reload. Either way the
    /// outcome is logged and told to systemd; on failure the previous configuration serves on.
    ///
    /// # Errors
    /// The reason the running configuration was kept.
    pub async fn reload_loaded(
        &self,
        loaded: Result<Config, ConfigErrors>,
    ) -> Result<(), ReloadError> {
        let result = match loaded {
            Ok(new) => self.reload(new).await,
            Err(e) => {
                self.metrics.observe_reload("error");
                Err(ReloadError::Invalid(e))
            }
        };
        match &result {
            Ok(()) => systemd::status("serving credentials (configuration reloaded)"),
            Err(e) => {
                tracing::error!(error = %e, "reload failed; the previous configuration keeps serving");
                systemd::status("reload failed; previous configuration serving");
            }
        }
        result
    }

    async fn try_reload(&self, new: Config) -> Result<(), ReloadError> {
        broker::preflight(&new).map_err(ReloadError::OwnUser)?;
        let snapshot = self.roles.state().load_full();
        let current = &snapshot.config;
        check_fixed(&new, current)?;
        // A new broker-wide revoke_before also drops the SDK's cached [source] credentials
        // (a revoked IRSA / instance role session of the broker itself).
        let revoke_source = new.refresh.revoke_before.is_some()
            && new.refresh.revoke_before != current.refresh.revoke_before;
        let upstream = if new.sts != current.sts || new.source != current.source || revoke_source {
            let sts = broker::build_sts(&new, &self.options)
                .await
                .map_err(ReloadError::Sts)?;
            broker::upstream(&new, sts, &self.metrics, Some(&snapshot.upstream.limiter))
        } else {
            Arc::clone(&snapshot.upstream)
        };
        drop(snapshot);
        for w in &new.warnings {
            tracing::warn!(warning = %w, "configuration warning");
        }
        let new = Arc::new(new);
        self.roles
            .cache()
            .set_min_remaining(new.refresh.min_remaining);
        let roles = new.roles.len();
        self.roles.apply(new, upstream, Duration::ZERO).await;
        tracing::info!(roles, "configuration reloaded");
        Ok(())
    }
}

/// Reads and validates the config file at `path` on the blocking pool (a file that blocks or
/// is huge cannot stall the runtime; the caller keeps answering signals meanwhile).
///
/// # Errors
/// Every problem in the file, or the read itself failing.
pub async fn read_config(path: PathBuf, ctx: LoadContext) -> Result<Config, ConfigErrors> {
    let origin = path.display().to_string();
    tokio::task::spawn_blocking(move || Config::load(&path, &ctx))
        .await
        .unwrap_or_else(|e| {
            Err(ConfigErrors(vec![config::ConfigError {
                origin,
                scope: config::Scope::File,
                key: None,
                message: format!("reading the config failed: {e}"),
            }]))
        })
}

/// Rejects a change to what the listeners, the audit trail and the session table were built
/// with; `allowed_hosts` is read per request and may change.
fn check_fixed(new: &Config, current: &Config) -> Result<(), ReloadError> {
    let fixed = |l: &config::ListenerConfig| {
        (
            l.listen.clone(),
            l.max_connections,
            l.per_peer_rate_limit,
            l.allowed_sources.clone(),
        )
    };
    if fixed(&new.ecs) != fixed(&current.ecs) {
        return Err(ReloadError::Rejected(
            "[ecs] listen / max_connections / per_peer_rate_limit / allowed_sources",
        ));
    }
    if fixed(&new.admin) != fixed(&current.admin) {
        return Err(ReloadError::Rejected(
            "[admin] listen / max_connections / per_peer_rate_limit / allowed_sources",
        ));
    }
    if new.audit != current.audit {
        return Err(ReloadError::Rejected(
            "[audit] (adding, removing or moving the trail)",
        ));
    }
    let imds_fixed = |c: &Config| c.imds.as_ref().map(|i| (fixed(&i.listener), i.hop_limit));
    if imds_fixed(new) != imds_fixed(current) {
        return Err(ReloadError::Rejected(
            "[imds] listen / hop_limit / limits (or adding/removing [imds])",
        ));
    }
    if session_limits(new) != session_limits(current) {
        return Err(ReloadError::Rejected(
            "[kubernetes] session_idle / max_sessions",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config with the ECS listener on `ecs` plus `extra` tables.
    fn parse(ecs: &str, extra: &str) -> Config {
        let text = format!(
            "[sts]\nregion = \"us-east-1\"\n[ecs]\nlisten = \"{ecs}\"\n{extra}\n[[role]]\nname = \"a\"\narn = \"arn:aws:iam::123456789012:role/a\"\ntokens = [\"token-0123456789abcdef\"]\n"
        );
        let ctx = LoadContext {
            hostname: "h".into(),
        };
        Config::parse(&text, "t.toml", &ctx).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn what_the_listeners_were_built_with_cannot_change_the_rest_can() {
        let here = "127.0.0.1:0";
        let base = parse(here, "");
        // (docs, changed config, the rejected part or None)
        let cases = [
            (
                "a new [refresh] applies",
                parse(here, "[refresh]\nlead = \"30m\""),
                None,
            ),
            (
                "allowed_hosts is read per request",
                parse(here, "[admin]\nallowed_hosts = [\"broker.internal\"]"),
                None,
            ),
            (
                "another ECS address needs a restart",
                parse("127.0.0.2:0", ""),
                Some("[ecs]"),
            ),
            (
                "adding [imds] needs a restart",
                parse(here, "[imds]\nlisten = \"127.0.0.1:0\"\nrole = \"a\""),
                Some("[imds]"),
            ),
            (
                "adding the audit trail needs a restart",
                parse(here, "[audit]\npath = \"/tmp/audit.jsonl\""),
                Some("[audit]"),
            ),
        ];
        for (docs, new, rejected) in cases {
            match (check_fixed(&new, &base), rejected) {
                (Ok(()), None) => {}
                (Err(ReloadError::Rejected(what)), Some(part)) => {
                    assert!(what.starts_with(part), "{docs}: {what}");
                }
                (got, want) => panic!("{docs}: got {got:?}, want {want:?}"),
            }
        }
    }
}
