//! The STS operations that issue credentials. Each maps a role's config onto its SDK call and
//! nothing more; the steps they share — send, classify the error, convert the output into our
//! redacting [`Credentials`] at once — are one generic function, [`issued`].

use std::future::Future;
use std::time::SystemTime;

use aws_sdk_sts::config::http::HttpResponse;
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sts::operation::assume_role::AssumeRoleOutput;
use aws_sdk_sts::operation::assume_role_with_saml::AssumeRoleWithSamlOutput;
use aws_sdk_sts::operation::assume_role_with_web_identity::AssumeRoleWithWebIdentityOutput;
use aws_sdk_sts::operation::assume_role_with_web_identity::builders::AssumeRoleWithWebIdentityFluentBuilder;
use aws_sdk_sts::operation::get_federation_token::GetFederationTokenOutput;
use aws_sdk_sts::operation::get_session_token::GetSessionTokenOutput;
use aws_sdk_sts::types::{
    AssumedRoleUser, Credentials as SdkCredentials, FederatedUser, PolicyDescriptorType, Tag,
};
use aws_sdk_sts::{Client, config::IdentityCache};

use super::CallInputs;
use super::error::classify;
use crate::config::{RoleConfig, RoleKind};
use crate::creds::{Credentials, ErrorClass, FetchError, Secret};

/// One STS call of `role`'s kind; errors classified, not yet explained.
pub(super) async fn role_call(
    client: &Client,
    role: &RoleConfig,
    inputs: &CallInputs,
) -> Result<Credentials, FetchError> {
    let spec = &role.spec;
    let duration = i32::try_from(spec.duration.as_secs()).unwrap_or(i32::MAX);
    let policy_arns = policy_descriptors(&spec.policy_arns);
    let arn = spec.arn.clone().unwrap_or_default();
    let session_name = spec.session_name.clone().unwrap_or_default();
    let missing = |what: &str| {
        FetchError::new(
            ErrorClass::InvalidConfig,
            None,
            format!("internal: no {what} gathered for role {:?}", role.name),
        )
    };
    match &spec.kind {
        RoleKind::AssumeRole {
            external_id,
            tags,
            transitive_tag_keys,
            source_identity,
            ..
        } => {
            let chained;
            let client = match &inputs.signer {
                Some(creds) => {
                    chained = signing_with(client, creds);
                    &chained
                }
                None => client,
            };
            let call = client
                .assume_role()
                .role_arn(arn)
                .role_session_name(session_name)
                .set_external_id(external_id.as_ref().map(|x| x.expose().to_string()))
                .duration_seconds(duration)
                .set_tags(session_tags(tags)?)
                .set_transitive_tag_keys(
                    (!transitive_tag_keys.is_empty()).then(|| transitive_tag_keys.clone()),
                )
                .set_policy_arns(policy_arns)
                .set_policy(spec.policy.clone())
                .set_source_identity(source_identity.clone());
            issued(call.send()).await
        }
        RoleKind::WebIdentity { .. } => {
            let token = inputs
                .web_identity_token
                .as_ref()
                .ok_or_else(|| missing("web identity token"))?;
            let call = web_identity(client, &arn, &session_name, token)
                .duration_seconds(duration)
                .set_policy_arns(policy_arns)
                .set_policy(spec.policy.clone());
            issued(call.send()).await
        }
        RoleKind::SessionToken { mfa } => {
            let mut call = client.get_session_token().duration_seconds(duration);
            if let Some(mfa) = mfa {
                let code = inputs
                    .mfa_code
                    .as_ref()
                    .ok_or_else(|| missing("MFA code"))?;
                call = call.serial_number(&mfa.serial).token_code(code.expose());
            }
            issued(call.send()).await
        }
        RoleKind::FederationToken { name, tags } => {
            let call = client
                .get_federation_token()
                .name(name)
                .duration_seconds(duration)
                .set_tags(session_tags(tags)?)
                .set_policy_arns(policy_arns)
                .set_policy(spec.policy.clone());
            issued(call.send()).await
        }
        RoleKind::Saml { principal_arn, .. } => {
            let assertion = inputs
                .saml_assertion
                .as_ref()
                .ok_or_else(|| missing("SAML assertion"))?;
            let call = client
                .assume_role_with_saml()
                .role_arn(arn)
                .principal_arn(principal_arn)
                .saml_assertion(assertion.expose())
                .duration_seconds(duration)
                .set_policy_arns(policy_arns)
                .set_policy(spec.policy.clone());
            issued(call.send()).await
        }
    }
}

/// AssumeRoleWithWebIdentity's parameters that a `web_identity` role and the broker's own
/// `[source]` both send.
pub(super) fn web_identity(
    client: &Client,
    role_arn: &str,
    session_name: &str,
    token: &Secret,
) -> AssumeRoleWithWebIdentityFluentBuilder {
    client
        .assume_role_with_web_identity()
        .role_arn(role_arn)
        .role_session_name(session_name)
        .web_identity_token(token.expose())
}

/// Sends an STS call that issues credentials: the error classified once, the output turned
/// into our [`Credentials`] before anything else sees it (the SDK's `Debug` of an output
/// prints the session token).
pub(super) async fn issued<O, E>(
    send: impl Future<Output = Result<O, SdkError<E, HttpResponse>>>,
) -> Result<Credentials, FetchError>
where
    O: Issued,
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let out = send.await.map_err(|e| classify(&e))?;
    let (credentials, arn) = out.issued();
    convert(credentials, arn.map(str::to_string))
}

/// The output of an STS operation that issues credentials.
pub(super) trait Issued {
    /// The credentials, and the ARN of the session (assumed role, federated user) they
    /// belong to when STS names one.
    fn issued(&self) -> (Option<&SdkCredentials>, Option<&str>);
}

impl Issued for AssumeRoleOutput {
    fn issued(&self) -> (Option<&SdkCredentials>, Option<&str>) {
        (
            self.credentials(),
            self.assumed_role_user().map(AssumedRoleUser::arn),
        )
    }
}

impl Issued for AssumeRoleWithWebIdentityOutput {
    fn issued(&self) -> (Option<&SdkCredentials>, Option<&str>) {
        (
            self.credentials(),
            self.assumed_role_user().map(AssumedRoleUser::arn),
        )
    }
}

impl Issued for AssumeRoleWithSamlOutput {
    fn issued(&self) -> (Option<&SdkCredentials>, Option<&str>) {
        (
            self.credentials(),
            self.assumed_role_user().map(AssumedRoleUser::arn),
        )
    }
}

impl Issued for GetFederationTokenOutput {
    fn issued(&self) -> (Option<&SdkCredentials>, Option<&str>) {
        (
            self.credentials(),
            self.federated_user().map(FederatedUser::arn),
        )
    }
}

impl Issued for GetSessionTokenOutput {
    fn issued(&self) -> (Option<&SdkCredentials>, Option<&str>) {
        // The session belongs to the IAM user that signed the call: STS names no session.
        (self.credentials(), None)
    }
}

/// A client like `client` that signs with `creds` (role chaining: the source role's
/// credentials). No identity cache: the credentials are already at hand.
fn signing_with(client: &Client, creds: &Credentials) -> Client {
    let provider = sdk_credentials(creds, "sts-broker-source-role");
    let conf = client
        .config()
        .to_builder()
        .credentials_provider(provider)
        .identity_cache(IdentityCache::no_cache())
        .build();
    Client::from_conf(conf)
}

fn policy_descriptors(arns: &[String]) -> Option<Vec<PolicyDescriptorType>> {
    (!arns.is_empty()).then(|| {
        arns.iter()
            .map(|a| PolicyDescriptorType::builder().arn(a).build())
            .collect()
    })
}

fn session_tags(tags: &[(String, String)]) -> Result<Option<Vec<Tag>>, FetchError> {
    if tags.is_empty() {
        return Ok(None);
    }
    tags.iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
        .map_err(|e| FetchError::new(ErrorClass::InvalidConfig, None, e.to_string()))
}

/// Ours → the SDK's, for signing with them; `provider` names where they came from.
pub(crate) fn sdk_credentials(
    creds: &Credentials,
    provider: &'static str,
) -> aws_credential_types::Credentials {
    aws_credential_types::Credentials::new(
        creds.access_key_id.clone(),
        creds.secret_access_key.expose(),
        Some(creds.session_token.expose().to_string()),
        Some(creds.expiration),
        provider,
    )
}

/// SDK credentials → ours. Empty fields are an error: empty credentials are never served.
fn convert(
    c: Option<&SdkCredentials>,
    assumed_arn: Option<String>,
) -> Result<Credentials, FetchError> {
    let empty = || {
        FetchError::new(
            ErrorClass::Transient,
            None,
            "STS answered without credentials",
        )
    };
    let c = c.ok_or_else(empty)?;
    if c.access_key_id().is_empty() || c.secret_access_key().is_empty() {
        return Err(empty());
    }
    let expiration = SystemTime::try_from(*c.expiration()).map_err(|_| {
        FetchError::new(
            ErrorClass::Transient,
            None,
            "STS answered with an unrepresentable expiration",
        )
    })?;
    Ok(Credentials {
        access_key_id: c.access_key_id().to_string(),
        secret_access_key: Secret::new(c.secret_access_key().to_string()),
        session_token: Secret::new(c.session_token().to_string()),
        expiration,
        assumed_arn,
    })
}
