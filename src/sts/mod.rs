//! The one place that talks to STS (through `aws-sdk-sts`).
//!
//! Output is converted into [`Credentials`] the moment it arrives: the SDK's `Debug` of an
//! `AssumeRoleOutput` prints the session token, so SDK types never leave this module.
//! Errors are classified once ([`error::classify`]) into an [`ErrorClass`] so that back-off and
//! the 503 body know whether a retry can help.
//!
//! SDK retries are off: the refresh scheduler owns retries and back-off, failover to the next
//! endpoint happens here ([`endpoints`]), and a cold request is bounded by `[sts].timeout`
//! alone. The broker-wide call rate is [`rate`].
//!
//! # Layout
//! - this file: [`Sts`], the client per endpoint, and the one loop every operation runs
//!   through (failover, hedging, health and metrics per attempt);
//! - `call.rs`: each operation's parameters, and the shared send → classify → convert step;
//! - [`error`]: classification, and the `AccessDenied` hint that points to `iam-policy`;
//! - [`endpoints`]: endpoint health and failover; [`rate`]: the adaptive call rate.

mod call;
pub(crate) use call::sdk_credentials;
pub mod endpoints;
pub mod error;
pub mod rate;

use std::sync::Arc;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_sts::config::Region;
use futures_util::future::BoxFuture;

use crate::clock;
use crate::config::{EndpointTarget, RoleConfig, RoleKind, StsConfig};
use crate::creds::{Credentials, ErrorClass, FetchError, Secret};
use crate::metrics::Metrics;
use endpoints::{EndpointSet, Verdict, is_endpoint_failure};
use error::{classify, explain_denial};

// STS API names, used as the `api` metric label.
/// `assume_role` roles.
pub const API_ASSUME_ROLE: &str = "AssumeRole";
/// `web_identity` roles, and `[source] kind = "web_identity"`.
pub const API_ASSUME_ROLE_WITH_WEB_IDENTITY: &str = "AssumeRoleWithWebIdentity";
/// `session_token` roles.
pub const API_GET_SESSION_TOKEN: &str = "GetSessionToken";
/// `federation_token` roles.
pub const API_GET_FEDERATION_TOKEN: &str = "GetFederationToken";
/// `saml` roles.
pub const API_ASSUME_ROLE_WITH_SAML: &str = "AssumeRoleWithSAML";
/// `iam-policy` finding the broker's principal.
pub const API_GET_CALLER_IDENTITY: &str = "GetCallerIdentity";

/// One STS endpoint: a client bound to its URL and signing region.
#[derive(Debug)]
pub struct Endpoint {
    /// URL as logs, metrics and `check` show it.
    pub label: String,
    client: aws_sdk_sts::Client,
}

/// An STS client for one `[sts]` + `[source]` configuration: every endpoint, their health,
/// and the failover loop.
#[derive(Clone, Debug)]
pub struct Sts {
    set: Arc<EndpointSet<Endpoint>>,
    timeout: Duration,
    hedge_after: Option<Duration>,
    metrics: Option<Arc<Metrics>>,
}

/// Loads the shared AWS config (region chain, profile) that both the STS client and the
/// source credentials start from.
pub async fn base_sdk_config(sts: &StsConfig, profile: Option<&str>) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(https_client());
    if let Some(region) = &sts.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(profile) = profile {
        loader = loader.profile_name(profile);
    }
    loader.load().await
}

/// The HTTPS client of every AWS call (STS, and the credential chain of `[source]`): the SDK's
/// hyper client with rustls on ring, instead of the SDK default's aws-lc, which would be about a
/// fifth of the binary; the broker's idle memory follows binary size (BENCHMARKS.md).
pub(crate) fn https_client() -> aws_sdk_sts::config::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

/// The endpoint order of `sts` for the region the AWS config chain resolved.
///
/// # Errors
/// No region anywhere, or failover regions outside the region's partition.
pub fn endpoint_targets(
    base: &aws_config::SdkConfig,
    sts: &StsConfig,
) -> Result<Vec<EndpointTarget>, SetupError> {
    let region = base.region().ok_or(SetupError::NoRegion)?;
    sts.targets(region.as_ref())
        .map_err(SetupError::FailoverRegions)
}

/// Why an STS client could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    /// Neither `[sts].region` nor the AWS config chain names a region.
    #[error("no AWS region: set [sts].region or AWS_REGION (the AWS config chain found none)")]
    NoRegion,
    /// The failover regions do not fit the region (another partition, …): one problem each.
    #[error("[sts] failover_regions: {}", .0.join("; "))]
    FailoverRegions(Vec<String>),
}

impl Sts {
    /// Builds a client that signs with `credentials` (or with none: web identity calls are
    /// unsigned), one SDK client per endpoint.
    ///
    /// # Errors
    /// When no region is configured and the AWS config chain provides none either, or the
    /// failover regions do not fit the region.
    pub fn new(
        base: &aws_config::SdkConfig,
        sts: &StsConfig,
        credentials: Option<SharedCredentialsProvider>,
    ) -> Result<Sts, SetupError> {
        let targets = endpoint_targets(base, sts)?;
        let endpoints = targets
            .iter()
            .map(|t| {
                let mut builder = aws_sdk_sts::config::Builder::from(base)
                    .region(Region::new(t.region.clone()))
                    .retry_config(RetryConfig::disabled())
                    .timeout_config(
                        TimeoutConfig::builder()
                            .operation_timeout(sts.timeout)
                            .connect_timeout(sts.timeout.min(Duration::from_secs(3)))
                            .build(),
                    );
                if let Some(url) = &t.url {
                    builder = builder.endpoint_url(url);
                }
                builder.set_credentials_provider(credentials.clone());
                Endpoint {
                    label: t.label(),
                    client: aws_sdk_sts::Client::from_conf(builder.build()),
                }
            })
            .collect();
        Ok(Sts {
            set: Arc::new(EndpointSet::new(
                endpoints,
                sts.unhealthy_after,
                sts.cooldown,
                sts.timeout,
            )),
            timeout: sts.timeout,
            hedge_after: sts.hedge_after,
            metrics: None,
        })
    }

    /// Reports per-endpoint calls, latency and health into `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Sts {
        for (i, e) in self.set.endpoints().iter().enumerate() {
            metrics.set_sts_endpoint_healthy(&e.label, self.set.healthy(i));
        }
        self.metrics = Some(metrics);
        self
    }

    /// The endpoints in the order calls try them (labels).
    pub fn endpoint_labels(&self) -> Vec<String> {
        self.set
            .endpoints()
            .iter()
            .map(|e| e.label.clone())
            .collect()
    }

    /// The API name (metric label) a role's kind calls.
    pub fn api_for(kind: &RoleKind) -> &'static str {
        match kind {
            RoleKind::AssumeRole { .. } => API_ASSUME_ROLE,
            RoleKind::WebIdentity { .. } => API_ASSUME_ROLE_WITH_WEB_IDENTITY,
            RoleKind::SessionToken { .. } => API_GET_SESSION_TOKEN,
            RoleKind::FederationToken { .. } => API_GET_FEDERATION_TOKEN,
            RoleKind::Saml { .. } => API_ASSUME_ROLE_WITH_SAML,
        }
    }

    /// Obtains credentials for `role` with the STS API of its kind.
    ///
    /// # Errors
    /// A classified [`FetchError`]; its message is safe to log and to send to clients. An
    /// `AccessDenied` names the likely causes for this role's config ([`explain_denial`]).
    pub async fn obtain(
        &self,
        role: &RoleConfig,
        inputs: CallInputs,
    ) -> Result<Credentials, FetchError> {
        let hedge = if inputs.cold { self.hedge_after } else { None };
        let inputs = &inputs;
        self.run(hedge, |client| {
            Box::pin(call::role_call(client, role, inputs))
        })
        .await
        .map_err(|e| explain_denial(e, role))
    }

    /// Who the `[source]` credentials are (`GetCallerIdentity`): how `iam-policy` finds the
    /// principal that trust policies must name.
    ///
    /// # Errors
    /// A classified [`FetchError`] (no credentials, STS unreachable, …).
    pub async fn caller_identity(&self) -> Result<CallerIdentity, FetchError> {
        let out = self
            .run(None, |client| {
                Box::pin(async move {
                    let sent = client.get_caller_identity().send().await;
                    sent.map_err(|e| classify(&e))
                })
            })
            .await?;
        match (out.arn(), out.account()) {
            (Some(arn), Some(account)) if !arn.is_empty() => Ok(CallerIdentity {
                arn: arn.to_string(),
                account: account.to_string(),
            }),
            _ => Err(FetchError::new(
                ErrorClass::Transient,
                None,
                "GetCallerIdentity answered without an ARN",
            )),
        }
    }

    /// AssumeRoleWithWebIdentity (unsigned) for the broker's own `[source]`.
    ///
    /// # Errors
    /// A classified [`FetchError`].
    pub async fn assume_role_with_web_identity(
        &self,
        role_arn: &str,
        session_name: &str,
        token: &Secret,
    ) -> Result<Credentials, FetchError> {
        self.run(None, |client| {
            let call = call::web_identity(client, role_arn, session_name, token);
            Box::pin(call::issued(call.send()))
        })
        .await
    }

    /// Runs `call` on the endpoints in failover order, hedged after `hedge` when given: each
    /// attempt bounded by its share of `[sts].timeout`, its verdict, latency and outcome
    /// recorded ([`Sts::attempt`]).
    async fn run<'a, T: Send + 'a>(
        &'a self,
        hedge: Option<Duration>,
        call: impl Fn(&'a aws_sdk_sts::Client) -> BoxFuture<'a, Result<T, FetchError>> + Sync + 'a,
    ) -> Result<T, FetchError> {
        let attempt = |i: usize, budget: Duration| -> BoxFuture<'_, Result<T, FetchError>> {
            Box::pin(self.attempt(i, budget, call(&self.set.endpoints()[i].client)))
        };
        self.set.run(self.timeout, hedge, &attempt).await
    }

    /// One attempt on endpoint `i` within `budget`: health and metrics recorded here.
    async fn attempt<T>(
        &self,
        i: usize,
        budget: Duration,
        call: impl std::future::Future<Output = Result<T, FetchError>>,
    ) -> Result<T, FetchError> {
        let endpoint = &self.set.endpoints()[i];
        let started = clock::tokio_instant();
        // Dropped before it finished: it lost a hedge race (or the call was abandoned). Not
        // answering in time is this endpoint's failure; without it, a black-holed primary
        // would never be rested while hedges keep winning.
        let mut abandoned = Abandoned {
            sts: self,
            i,
            started,
            armed: true,
        };
        let result = match tokio::time::timeout(budget, call).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::new(
                ErrorClass::Transient,
                None,
                format!(
                    "STS call timed out after {} ms (its share of [sts].timeout)",
                    budget.as_millis()
                ),
            )),
        };
        abandoned.armed = false;
        let verdict = match &result {
            Err(e) if is_endpoint_failure(e) => Verdict::Failed,
            _ => Verdict::Answered,
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.class.as_str(),
        };
        self.settle(i, verdict, outcome, started);
        result.map_err(|mut e| {
            if verdict == Verdict::Failed {
                e.message = format!("{} (endpoint {})", e.message, endpoint.label);
            }
            e
        })
    }

    /// Records an attempt's verdict: endpoint health, metrics, and a log line when the
    /// endpoint starts or stops being skipped.
    fn settle(&self, i: usize, verdict: Verdict, outcome: &str, started: tokio::time::Instant) {
        let endpoint = &self.set.endpoints()[i];
        let now = clock::tokio_instant();
        let change = self.set.record(i, verdict, now);
        if let Some(m) = &self.metrics {
            m.observe_sts_endpoint_call(&endpoint.label, outcome, now.duration_since(started));
            if let Some(healthy) = change {
                m.set_sts_endpoint_healthy(&endpoint.label, healthy);
            }
        }
        match change {
            Some(false) => tracing::warn!(
                endpoint = %endpoint.label,
                "STS endpoint failing: skipped for the cool-down, then probed again"
            ),
            Some(true) => tracing::info!(endpoint = %endpoint.label, "STS endpoint answers again"),
            None => {}
        }
    }
}

/// Settles an attempt that was dropped before it finished (outcome `abandoned`).
struct Abandoned<'a> {
    sts: &'a Sts,
    i: usize,
    started: tokio::time::Instant,
    armed: bool,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.sts
                .settle(self.i, Verdict::Failed, "abandoned", self.started);
        }
    }
}

/// `GetCallerIdentity`'s answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallerIdentity {
    /// `arn:aws:iam::ACCOUNT:user/NAME`, `arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION`, …
    pub arn: String,
    /// The 12-digit account the credentials belong to.
    pub account: String,
}

/// What a call presents besides the role's config, gathered fresh for every call.
#[derive(Debug, Default)]
pub struct CallInputs {
    /// Role chaining: sign with the source role's credentials instead of `[source]`.
    pub signer: Option<Credentials>,
    /// `web_identity`: the token file's content, read for this call (projected tokens
    /// rotate).
    pub web_identity_token: Option<Secret>,
    /// `session_token` with `mfa_serial`: the code `mfa_code_command` printed.
    pub mfa_code: Option<Secret>,
    /// `saml`: the base64 assertion from its file or command.
    pub saml_assertion: Option<Secret>,
    /// Nothing servable is cached (a first prefetch, or a client waiting): the call may be
    /// hedged (`hedge_after`).
    pub cold: bool,
}
