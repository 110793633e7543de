//! `sts-broker credential-process`: obtain a role's credentials once and print them as
//! `credential_process` JSON for `~/.aws/config` users.

use crate::clock;
use crate::config::{Config, RoleConfig};
use crate::creds::{Credentials, FetchError};
use crate::sts::{SetupError, Sts};

/// The `credential_process` JSON (`Version: 1`) for `~/.aws/config` users.
pub fn credential_process_json(c: &Credentials) -> String {
    serde_json::json!({
        "Version": 1,
        "AccessKeyId": c.access_key_id,
        "SecretAccessKey": c.secret_access_key.expose(),
        "SessionToken": c.session_token.expose(),
        "Expiration": crate::wire::rfc3339(c.expiration),
    })
    .to_string()
}

/// Why `credential-process` printed no credentials.
#[derive(Debug, thiserror::Error)]
pub enum AssumeOnceError {
    /// No role of that name.
    #[error("no role named {0:?} in the config")]
    UnknownRole(String),
    /// The STS client could not be built (no region, failover regions that do not fit).
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// A token file, MFA code or SAML assertion could not be had.
    #[error("{0}")]
    Inputs(FetchError),
    /// STS refused (or returned unusable credentials) for `role`, or one it is chained from.
    #[error("role {role:?}: {source}")]
    Sts {
        /// The role whose call failed.
        role: String,
        /// The classified STS error.
        source: FetchError,
    },
}

/// Obtains credentials for `role` once with the configured STS and source credentials; a
/// chained role first obtains its source roles' (no cache: this is a one-shot command).
///
/// # Errors
/// Unknown role, STS set-up failure, or the classified STS error.
pub async fn assume_once(config: &Config, role: &str) -> Result<Credentials, AssumeOnceError> {
    let sts = crate::source::build_sts(config).await?;
    // `role` and the roles it is chained from, obtained from the far end (a role without a
    // source) back to `role` itself.
    let chain = config
        .chain(role)
        .ok_or_else(|| AssumeOnceError::UnknownRole(role.to_string()))?;
    let mut signer = None;
    for r in chain.into_iter().rev() {
        signer = Some(obtain(&sts, r, signer.take()).await?);
    }
    Ok(signer.expect("the chain holds at least `role` itself"))
}

/// One role's credentials, signed with `signer` when it is chained, checked before use.
async fn obtain(
    sts: &Sts,
    role: &RoleConfig,
    signer: Option<Credentials>,
) -> Result<Credentials, AssumeOnceError> {
    let inputs = crate::source::gather_inputs(role, signer)
        .await
        .map_err(AssumeOnceError::Inputs)?;
    sts.obtain(role, inputs)
        .await
        .and_then(|c| c.validated(role.spec.duration, clock::now()))
        .map_err(|source| AssumeOnceError::Sts {
            role: role.name.clone(),
            source,
        })
}
