//! STS errors, classified once: [`classify`] turns an SDK error into a [`FetchError`] whose
//! [`ErrorClass`] says whether a retry can help (back-off and the 503 body depend on it), and
//! [`explain_denial`] adds to an `AccessDenied` the likely causes for the role's config and
//! the `iam-policy` command that prints what it needs ([`access_denied_hint`]).

use aws_sdk_sts::config::http::HttpResponse;
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};

use crate::config::{RoleConfig, RoleKind};
use crate::creds::{ErrorClass, FetchError};

/// STS answers `AccessDenied` with "not authorized to perform" and nothing more: the message
/// gets the likely causes for this role's config and the command that prints the policies it
/// needs. The class and code stay as [`classify`] set them; other errors pass unchanged.
pub fn explain_denial(mut e: FetchError, role: &RoleConfig) -> FetchError {
    if e.class == ErrorClass::AccessDenied
        && matches!(
            e.code.as_deref(),
            Some("AccessDenied" | "AccessDeniedException")
        )
    {
        e.message = format!("{} — {}", e.message.trim_end(), access_denied_hint(role));
    }
    e
}

/// The likely causes of an `AccessDenied` for `role`, specific to its config, ending with the
/// command that prints the policies it needs. Never contains the external ID.
pub fn access_denied_hint(role: &RoleConfig) -> String {
    let spec = &role.spec;
    let arn = spec.arn.as_deref().unwrap_or("the role");
    let mut causes: Vec<String> = Vec::new();
    match &spec.kind {
        RoleKind::AssumeRole {
            external_id,
            tags,
            source_identity,
            source_role,
            ..
        } => {
            match source_role {
                Some(base) => {
                    causes.push(format!(
                        "the trust policy of {arn} does not trust the role of source role {base:?} (a chained role is assumed by its source role's session)"
                    ));
                    causes.push(format!(
                        "the permission policy of source role {base:?}'s role does not allow sts:AssumeRole on {arn}"
                    ));
                }
                None => {
                    causes.push(format!(
                        "the trust policy of {arn} does not trust the broker's principal (the identity STS names)"
                    ));
                    causes.push(format!(
                        "the broker principal's permission policy does not allow sts:AssumeRole on {arn}"
                    ));
                }
            }
            if !tags.is_empty() {
                causes.push(
                    "the trust policy (and the caller's permission policy) must allow sts:TagSession because this role sends session tags".to_string(),
                );
            }
            if source_identity.is_some() {
                causes.push(
                    "the trust policy (and the caller's permission policy) must allow sts:SetSourceIdentity because this role sends a source identity".to_string(),
                );
            }
            if external_id.is_some() {
                causes.push(
                    "the trust policy's sts:ExternalId condition must equal this role's external_id exactly (compare them; the value is not shown here)".to_string(),
                );
            } else {
                causes.push(
                    "a trust policy with an sts:ExternalId condition (usual for third-party roles) needs external_id in this role's config".to_string(),
                );
            }
        }
        RoleKind::WebIdentity { .. } => {
            causes.push(format!(
                "the trust policy of {arn} must trust the OIDC provider that issued the token (Principal Federated …:oidc-provider/ISSUER) for sts:AssumeRoleWithWebIdentity"
            ));
            causes.push(
                "its ISSUER:aud and ISSUER:sub conditions must match the token's aud and sub claims".to_string(),
            );
        }
        RoleKind::Saml { principal_arn, .. } => {
            causes.push(format!(
                "the trust policy of {arn} must trust {principal_arn} (Principal Federated) for sts:AssumeRoleWithSAML"
            ));
            causes.push(
                "its SAML:aud condition must match the assertion's Recipient, and the assertion's Role attribute must name this role and provider".to_string(),
            );
        }
        RoleKind::SessionToken { .. } => {
            causes.push(
                "the broker principal's permission policy does not allow sts:GetSessionToken (Resource \"*\")".to_string(),
            );
            causes.push(
                "GetSessionToken needs an IAM user's long-term keys, not role or session credentials".to_string(),
            );
        }
        RoleKind::FederationToken { tags, .. } => {
            causes.push(
                "the broker principal's permission policy does not allow sts:GetFederationToken (Resource \"*\")".to_string(),
            );
            if !tags.is_empty() {
                causes.push(
                    "it must also allow sts:TagSession because this role sends session tags"
                        .to_string(),
                );
            }
            causes.push(
                "GetFederationToken needs an IAM user's long-term keys, not role or session credentials".to_string(),
            );
        }
    }
    let numbered: Vec<String> = causes
        .iter()
        .enumerate()
        .map(|(i, c)| format!("({}) {c}", i + 1))
        .collect();
    format!(
        "likely causes for this role: {}; to print the policies it needs, run `sts-broker iam-policy -c CONFIG --role {}`",
        numbered.join("; "),
        role.name
    )
}

/// STS error codes that mean "slow down".
const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
];
/// Codes that mean the caller is not allowed (IAM must change before a retry helps).
const DENIED_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
    "IDPRejectedClaim",
    "InvalidIdentityToken",
];
/// Codes that mean the request is wrong as configured.
const INVALID_CODES: &[&str] = &[
    "MalformedPolicyDocument",
    "PackedPolicyTooLarge",
    "RegionDisabledException",
    "ValidationError",
    "InvalidParameterValue",
    "InvalidParameterCombination",
    "InvalidAction",
];

/// Classifies an SDK error once. Messages are built from the error code and STS's message,
/// never from response bodies (a truncated success body would hold the secret key).
pub fn classify<E>(err: &SdkError<E, HttpResponse>) -> FetchError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::ServiceError(ctx) => {
            let e = ctx.err();
            let code = e.code().map(str::to_string);
            let message = e.message().unwrap_or("no message").to_string();
            let status = ctx.raw().status().as_u16();
            let class = classify_code(code.as_deref(), Some(status));
            let text = match &code {
                Some(c) => format!("STS error {c}: {message}"),
                None => format!("STS answered HTTP {status}: {message}"),
            };
            FetchError::new(class, code, text)
        }
        SdkError::TimeoutError(_) => FetchError::new(
            ErrorClass::Transient,
            None,
            "STS call timed out ([sts].timeout)",
        ),
        SdkError::DispatchFailure(d) => {
            let what = if d.is_timeout() {
                "timed out"
            } else if d.is_io() {
                "failed (connection error)"
            } else {
                "failed"
            };
            let detail = aws_sdk_sts::error::DisplayErrorContext(err).to_string();
            FetchError::new(
                ErrorClass::Transient,
                None,
                format!("sending the request to STS {what}: {}", first_line(&detail)),
            )
        }
        SdkError::ResponseError(_) => FetchError::new(
            ErrorClass::Transient,
            None,
            "STS sent a response that could not be read (truncated or malformed)",
        ),
        SdkError::ConstructionFailure(_) => {
            let detail = aws_sdk_sts::error::DisplayErrorContext(err).to_string();
            FetchError::new(
                ErrorClass::InvalidConfig,
                None,
                format!(
                    "could not build the STS request (are source credentials available?): {}",
                    first_line(&detail)
                ),
            )
        }
        _ => FetchError::new(ErrorClass::Transient, None, "STS call failed"),
    }
}

/// The class for an STS error code and HTTP status.
pub fn classify_code(code: Option<&str>, status: Option<u16>) -> ErrorClass {
    match code {
        Some(c) if THROTTLING_CODES.contains(&c) => ErrorClass::Throttled,
        Some(c) if DENIED_CODES.contains(&c) => ErrorClass::AccessDenied,
        Some(c) if INVALID_CODES.contains(&c) => ErrorClass::InvalidConfig,
        _ => match status {
            Some(429) => ErrorClass::Throttled,
            Some(s) if s >= 500 => ErrorClass::Transient,
            Some(401 | 403) => ErrorClass::AccessDenied,
            Some(s) if s >= 400 => ErrorClass::InvalidConfig,
            _ => ErrorClass::Transient,
        },
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, LoadContext};

    const SECRET_ID: &str = "SECRET-MARKER-ext-id-42";

    fn config(roles: &str) -> Config {
        let text = format!("[sts]\nregion = \"us-east-1\"\n\n{roles}");
        let ctx = LoadContext {
            hostname: "node-1".into(),
        };
        Config::parse(&text, "test.toml", &ctx).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    /// `[[role]]` of kind assume_role named `name` with `extra` lines.
    fn assume(name: &str, extra: &str) -> String {
        format!(
            "[[role]]\nname = \"{name}\"\narn = \"arn:aws:iam::123456789012:role/{name}\"\ntokens = [\"tok-0123456789abcdef\"]\n{extra}\n"
        )
    }

    fn kind(name: &str, kind: &str, extra: &str) -> String {
        format!(
            "[[role]]\nname = \"{name}\"\nkind = \"{kind}\"\ntokens = [\"tok-0123456789abcdef\"]\n{extra}\n"
        )
    }

    #[test]
    fn codes_are_classified() {
        let cases = [
            (Some("Throttling"), Some(400), ErrorClass::Throttled),
            (
                Some("RequestLimitExceeded"),
                Some(400),
                ErrorClass::Throttled,
            ),
            (Some("AccessDenied"), Some(403), ErrorClass::AccessDenied),
            (
                Some("MalformedPolicyDocument"),
                Some(400),
                ErrorClass::InvalidConfig,
            ),
            (
                Some("RegionDisabledException"),
                Some(403),
                ErrorClass::InvalidConfig,
            ),
            (Some("InternalFailure"), Some(500), ErrorClass::Transient),
            (None, Some(503), ErrorClass::Transient),
            (None, Some(403), ErrorClass::AccessDenied),
            (None, Some(429), ErrorClass::Throttled),
            (Some("Weird"), Some(400), ErrorClass::InvalidConfig),
            (None, None, ErrorClass::Transient),
        ];
        for (code, status, want) in cases {
            assert_eq!(classify_code(code, status), want, "{code:?} {status:?}");
        }
    }

    #[test]
    fn access_denied_hints_name_the_causes_this_config_makes_likely() {
        let dir = tempfile::tempdir().unwrap();
        let web_token = dir.path().join("web.token");
        std::fs::write(&web_token, "x.y.z").unwrap();
        /// (docs, roles, role, fragments that must appear, fragments that must not)
        type HintCase<'a> = (&'a str, String, &'a str, Vec<&'a str>, Vec<&'a str>);
        let cases: Vec<HintCase<'_>> = vec![
            (
                "plain: trust and permission policy; a missing external_id is possible",
                assume("app", ""),
                "app",
                vec![
                    "(1) the trust policy of arn:aws:iam::123456789012:role/app does not trust the broker's principal",
                    "(2) the broker principal's permission policy does not allow sts:AssumeRole on arn:aws:iam::123456789012:role/app",
                    "needs external_id in this role's config",
                ],
                vec!["sts:TagSession", "sts:SetSourceIdentity"],
            ),
            (
                "tags, source identity, external id",
                assume(
                    "app",
                    &format!(
                        "tags = {{ team = \"payments\" }}\nsource_identity = \"alice\"\nexternal_id = \"{SECRET_ID}\""
                    ),
                ),
                "app",
                vec![
                    "must allow sts:TagSession because this role sends session tags",
                    "must allow sts:SetSourceIdentity because this role sends a source identity",
                    "sts:ExternalId condition must equal this role's external_id",
                ],
                vec![SECRET_ID],
            ),
            (
                "chained: the source role's role is the caller",
                assume("app", "source_role = \"base\"") + &assume("base", ""),
                "app",
                vec![
                    "does not trust the role of source role \"base\"",
                    "the permission policy of source role \"base\"'s role does not allow sts:AssumeRole",
                ],
                vec!["broker principal's permission policy"],
            ),
            (
                "web identity",
                kind(
                    "irsa",
                    "web_identity",
                    &format!(
                        "arn = \"arn:aws:iam::123456789012:role/irsa\"\nweb_identity_token_file = {:?}",
                        web_token.to_str().unwrap()
                    ),
                ),
                "irsa",
                vec![
                    "sts:AssumeRoleWithWebIdentity",
                    ":aud and ISSUER:sub conditions",
                ],
                vec!["sts:AssumeRole "],
            ),
            (
                "federation token with tags",
                kind(
                    "fed",
                    "federation_token",
                    "federated_name = \"intranet\"\npolicy_arns = [\"arn:aws:iam::aws:policy/ReadOnlyAccess\"]\ntags = { team = \"web\" }",
                ),
                "fed",
                vec![
                    "sts:GetFederationToken (Resource \"*\")",
                    "sts:TagSession",
                    "IAM user's long-term keys",
                ],
                vec![],
            ),
        ];
        for (docs, roles, name, want, unwanted) in cases {
            let config = config(&roles);
            let hint = access_denied_hint(config.role(name).unwrap());
            for w in want {
                assert!(hint.contains(w), "{docs}: missing {w:?} in {hint}");
            }
            for u in unwanted {
                assert!(!hint.contains(u), "{docs}: unexpected {u:?} in {hint}");
            }
            let tail = format!("run `sts-broker iam-policy -c CONFIG --role {name}`");
            assert!(hint.ends_with(&tail), "{docs}: {hint}");
        }
    }
}
