//! The broker's own (caller) credentials, used to sign its STS calls: `[source]`.
//!
//! - `default`: the standard AWS chain (env, profile, web identity, container, IMDS);
//! - `profile`: one named profile from the shared config files;
//! - `static_env`: only the `AWS_ACCESS_KEY_ID` family of variables;
//! - `web_identity`: AssumeRoleWithWebIdentity with a token file that is re-read on every
//!   call, so a projected (rotating) service-account token just works.
//!
//! The STS client caches these identities itself (the SDK's lazy identity cache).
//!
//! It also gathers the other things a role's call presents, fresh on every call: a web
//! identity token file, an MFA code printed by a command, a SAML assertion.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_credential_types::provider::{
    self, ProvideCredentials, SharedCredentialsProvider, error::CredentialsError,
};

use crate::config::{AssertionSource, Config, RoleConfig, RoleKind, SourceConfig};
use crate::creds::{Credentials, ErrorClass, FetchError, Secret};
use crate::sts::{CallInputs, SetupError, Sts, base_sdk_config, sdk_credentials};

/// Builds the STS client for `config`, signing with the configured source credentials.
///
/// # Errors
/// No region can be found, or the failover regions do not fit it.
pub async fn build_sts(config: &Config) -> Result<Sts, SetupError> {
    let profile = match &config.source {
        SourceConfig::Profile { name } => Some(name.as_str()),
        _ => None,
    };
    let base = base_sdk_config(&config.sts, profile).await;
    let provider = match &config.source {
        SourceConfig::Default => base.credentials_provider(),
        // The profile alone: exported AWS_ACCESS_KEY_ID must not win over it (the default
        // chain would let it).
        SourceConfig::Profile { name } => Some(SharedCredentialsProvider::new(
            aws_config::profile::ProfileFileCredentialsProvider::builder()
                .configure(
                    &aws_config::provider_config::ProviderConfig::default()
                        .with_region(base.region().cloned())
                        .with_http_client(crate::sts::https_client()),
                )
                .profile_name(name)
                .build(),
        )),
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
        let raw = crate::config::file::read_bounded_async(
            &self.token_file,
            crate::config::file::MAX_SECRET_FILE_BYTES,
        )
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
        Ok(sdk_credentials(&c, "sts-broker-web-identity"))
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

/// How long a helper command (MFA code, SAML assertion) may run before it is killed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Gathers what `role`'s STS call presents besides its config — read fresh for every call:
/// the web identity token file (projected tokens rotate), the MFA code, the SAML assertion.
/// `signer` carries a chained role's source credentials.
///
/// # Errors
/// A classified [`FetchError`] naming the file or command (never its output).
pub async fn gather_inputs(
    role: &RoleConfig,
    signer: Option<Credentials>,
) -> Result<CallInputs, FetchError> {
    let mut inputs = CallInputs {
        signer,
        ..CallInputs::default()
    };
    match &role.spec.kind {
        RoleKind::WebIdentity { token_file } => {
            inputs.web_identity_token =
                Some(read_secret_file(token_file, "web identity token").await?);
        }
        RoleKind::SessionToken { mfa: Some(mfa) } => {
            let code = run_secret_command(&mfa.code_command, "mfa_code_command").await?;
            if !(code.len() == 6 && code.expose().bytes().all(|b| b.is_ascii_digit())) {
                return Err(FetchError::new(
                    ErrorClass::InvalidConfig,
                    None,
                    format!(
                        "mfa_code_command printed {} characters; expected a 6-digit code",
                        code.len()
                    ),
                ));
            }
            inputs.mfa_code = Some(code);
        }
        RoleKind::Saml { assertion, .. } => {
            inputs.saml_assertion = Some(match assertion {
                AssertionSource::File(path) => read_secret_file(path, "SAML assertion").await?,
                AssertionSource::Command(argv) => {
                    run_secret_command(argv, "saml_assertion_command").await?
                }
            });
        }
        _ => {}
    }
    Ok(inputs)
}

/// Reads a secret file, trailing whitespace trimmed. A missing or empty file is transient:
/// the kubelet may be in the middle of rotating a projected token.
async fn read_secret_file(path: &Path, what: &str) -> Result<Secret, FetchError> {
    let text =
        crate::config::file::read_bounded_async(path, crate::config::file::MAX_SECRET_FILE_BYTES)
            .await
            .map_err(|e| {
                FetchError::new(
                    ErrorClass::Transient,
                    None,
                    format!("cannot read the {what} file {}: {e}", path.display()),
                )
            })?;
    let secret = Secret::new(text.trim_end().to_string());
    if secret.is_empty() {
        return Err(FetchError::new(
            ErrorClass::Transient,
            None,
            format!("the {what} file {} is empty", path.display()),
        ));
    }
    Ok(secret)
}

/// Runs a helper command and returns its trimmed stdout as a secret. Its stderr is never
/// logged (it may echo secrets): only its length is reported.
async fn run_secret_command(argv: &[String], key: &str) -> Result<Secret, FetchError> {
    let (program, args) = argv.split_first().ok_or_else(|| {
        FetchError::new(ErrorClass::InvalidConfig, None, format!("{key} is empty"))
    })?;
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(COMMAND_TIMEOUT, child).await {
        Err(_) => {
            return Err(FetchError::new(
                ErrorClass::Transient,
                None,
                format!(
                    "{key} ({program}) did not finish within {}s",
                    COMMAND_TIMEOUT.as_secs()
                ),
            ));
        }
        Ok(Err(e)) => {
            return Err(FetchError::new(
                ErrorClass::InvalidConfig,
                None,
                format!("{key} ({program}) could not be run: {e}"),
            ));
        }
        Ok(Ok(out)) => out,
    };
    let stdout = Secret::new(String::from_utf8_lossy(&out.stdout).trim().to_string());
    if !out.status.success() {
        return Err(FetchError::new(
            ErrorClass::Transient,
            None,
            format!(
                "{key} ({program}) failed with {} (stderr: {} bytes, not logged)",
                out.status,
                out.stderr.len()
            ),
        ));
    }
    if stdout.is_empty() {
        return Err(FetchError::new(
            ErrorClass::Transient,
            None,
            format!("{key} ({program}) printed nothing"),
        ));
    }
    Ok(stdout)
}
