//! The broker's own (caller) credentials, used to sign its STS calls: `[source]`.
//!
//! - `default`: the standard AWS chain (env, profile, web identity, container, IMDS);
//! - `profile`: one named profile from the shared config files;
//! - `static_env`: only the `AWS_ACCESS_KEY_ID` family of variables;
//! - `web_identity`: AssumeRoleWithWebIdentity with a token file that is re-read on every
//!   call, so a projected (rotating) service-account token just works.
//!
//! The STS client caches these identities itself (the SDK's lazy identity cache).

use std::path::PathBuf;

use aws_credential_types::provider::{
    self, ProvideCredentials, SharedCredentialsProvider, error::CredentialsError,
};

use crate::config::{Config, SourceConfig};
use crate::creds::Secret;
use crate::sts::{Sts, base_sdk_config};

/// Builds the STS client for `config`, signing with the configured source credentials.
///
/// # Errors
/// When no region can be found.
pub async fn build_sts(config: &Config) -> Result<Sts, String> {
    let profile = match &config.source {
        SourceConfig::Profile { name } => Some(name.as_str()),
        _ => None,
    };
    let base = base_sdk_config(&config.sts, profile).await;
    let provider = match &config.source {
        SourceConfig::Default | SourceConfig::Profile { .. } => base.credentials_provider(),
        SourceConfig::StaticEnv => Some(SharedCredentialsProvider::new(
            aws_config::environment::EnvironmentVariableCredentialsProvider::new(),
        )),
        SourceConfig::WebIdentity {
            token_file,
            role_arn,
            session_name,
        } => {
            let unsigned = Sts::new(&base, &config.sts, None)?;
            Some(SharedCredentialsProvider::new(WebIdentitySource {
                sts: unsigned,
                token_file: token_file.clone(),
                role_arn: role_arn.clone(),
                session_name: session_name.clone(),
            }))
        }
    };
    Sts::new(&base, &config.sts, provider)
}

/// `[source] kind = "web_identity"`: the token file is read on every call because the
/// kubelet rotates projected tokens.
#[derive(Debug)]
struct WebIdentitySource {
    sts: Sts,
    token_file: PathBuf,
    role_arn: String,
    session_name: String,
}

impl WebIdentitySource {
    async fn load(&self) -> provider::Result {
        let raw = tokio::fs::read_to_string(&self.token_file)
            .await
            .map_err(|e| {
                CredentialsError::invalid_configuration(format!(
                    "cannot read web identity token file {}: {e}",
                    self.token_file.display()
                ))
            })?;
        let token = Secret::new(raw.trim_end().to_string());
        let c = self
            .sts
            .assume_role_with_web_identity(&self.role_arn, &self.session_name, &token)
            .await
            .map_err(CredentialsError::provider_error)?;
        Ok(aws_credential_types::Credentials::new(
            c.access_key_id,
            c.secret_access_key.expose(),
            Some(c.session_token.expose().to_string()),
            Some(c.expiration),
            "sts-broker-web-identity",
        ))
    }
}

impl ProvideCredentials for WebIdentitySource {
    fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        provider::future::ProvideCredentials::new(self.load())
    }
}
