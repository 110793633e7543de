//! One builder per role kind: each reads the keys its kind takes (the key table let no
//! other through) and returns the [`RoleKind`] with its parameters, recording every problem.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use super::limits::{self, MAX_TAGS};
use super::parse::RawRole;
use super::{AssertionSource, Mfa, RoleKind, RoleKindTag};
use crate::config::checks::{is_session_name_char, is_sts_text};
use crate::config::problems::{Problems, Scope};
use crate::config::{check_external_id, check_source_identity};
use crate::creds::Secret;

/// The kind's own parameters, by the builder of `kind`.
pub(super) fn build(
    p: &mut Problems,
    scope: &Scope,
    kind: RoleKindTag,
    raw: &mut RawRole,
) -> RoleKind {
    match kind {
        RoleKindTag::AssumeRole => assume_role(p, scope, raw),
        RoleKindTag::WebIdentity => web_identity(p, scope, raw),
        RoleKindTag::SessionToken => session_token(p, scope, raw),
        RoleKindTag::FederationToken => federation_token(p, scope, raw),
        RoleKindTag::Saml => saml(p, scope, raw),
    }
}

/// AssumeRole: external ID, tags and which pass on, source identity, the source role.
fn assume_role(p: &mut Problems, scope: &Scope, raw: &mut RawRole) -> RoleKind {
    let mut err = |key: &str, why: String| p.error(scope.clone(), Some(key), why);
    let external_id = raw.external_id.take().map(Secret::new);
    if let Some(x) = &external_id
        && let Err(why) = check_external_id(x.expose())
    {
        err("external_id", why);
    }
    let tags = limits::build_tags(p, scope, raw.tags.take().unwrap_or_default());
    let mut err = |key: &str, why: String| p.error(scope.clone(), Some(key), why);
    let transitive_tag_keys = raw.transitive_tag_keys.take().unwrap_or_default();
    if transitive_tag_keys.len() > MAX_TAGS {
        err(
            "transitive_tag_keys",
            format!("at most {MAX_TAGS} keys are accepted"),
        );
    }
    for k in &transitive_tag_keys {
        if !tags.iter().any(|(t, _)| t.eq_ignore_ascii_case(k)) {
            err(
                "transitive_tag_keys",
                format!("{k:?} is not one of this role's tags"),
            );
        }
    }
    let source_identity = raw.source_identity.take();
    if let Some(si) = &source_identity
        && let Err(why) = check_source_identity(si)
    {
        err("source_identity", why);
    }
    let source_role = raw.source_role.take();
    if source_role.as_deref() == Some(raw.name.as_str()) {
        err("source_role", "a role cannot be its own source".into());
    }
    RoleKind::AssumeRole {
        external_id,
        tags,
        transitive_tag_keys,
        source_identity,
        source_role,
    }
}

/// AssumeRoleWithWebIdentity: the token file must be readable now.
fn web_identity(p: &mut Problems, scope: &Scope, raw: &mut RawRole) -> RoleKind {
    let token_file = required_readable_file(
        p,
        scope,
        "web_identity_token_file",
        raw.web_identity_token_file.take(),
    );
    RoleKind::WebIdentity { token_file }
}

/// GetSessionToken: the MFA serial and its code command come together or not at all.
fn session_token(p: &mut Problems, scope: &Scope, raw: &mut RawRole) -> RoleKind {
    let mfa = match (raw.mfa_serial.take(), raw.mfa_code_command.take()) {
        (None, None) => None,
        (Some(serial), Some(code_command)) => {
            if let Err(why) = check_mfa_serial(&serial) {
                p.error(scope.clone(), Some("mfa_serial"), why);
            }
            check_command(p, scope, "mfa_code_command", &code_command);
            Some(Mfa {
                serial,
                code_command,
            })
        }
        (Some(_), None) => {
            p.error(
                scope.clone(),
                Some("mfa_code_command"),
                "required with mfa_serial: the command that prints the current 6-digit code",
            );
            None
        }
        (None, Some(_)) => {
            p.error(
                scope.clone(),
                Some("mfa_serial"),
                "required with mfa_code_command: the ARN of the MFA device",
            );
            None
        }
    };
    RoleKind::SessionToken { mfa }
}

/// GetFederationToken: the federated name; without a policy it has no permissions.
fn federation_token(p: &mut Problems, scope: &Scope, raw: &mut RawRole) -> RoleKind {
    let name = raw.federated_name.take().unwrap_or_default();
    if let Err(why) = check_federated_name(&name) {
        p.error(scope.clone(), Some("federated_name"), why);
    }
    if raw.policy.is_none() && raw.policy_arns.is_empty() {
        p.warn(
            scope,
            "policy",
            "a federation token without policy or policy_arns has no permissions at all",
        );
    }
    let tags = limits::build_tags(p, scope, raw.tags.take().unwrap_or_default());
    RoleKind::FederationToken { name, tags }
}

/// AssumeRoleWithSAML: the provider, and exactly one place the assertion comes from.
fn saml(p: &mut Problems, scope: &Scope, raw: &mut RawRole) -> RoleKind {
    let principal_arn = raw.principal_arn.take().unwrap_or_default();
    if let Err(why) = check_saml_provider_arn(&principal_arn) {
        p.error(scope.clone(), Some("principal_arn"), why);
    }
    let assertion = match (
        raw.saml_assertion_file.take(),
        raw.saml_assertion_command.take(),
    ) {
        (Some(f), None) => AssertionSource::File(required_readable_file(
            p,
            scope,
            "saml_assertion_file",
            Some(f),
        )),
        (None, Some(c)) => {
            check_command(p, scope, "saml_assertion_command", &c);
            AssertionSource::Command(c)
        }
        _ => {
            p.error(
                scope.clone(),
                Some("saml_assertion_file"),
                "exactly one of saml_assertion_file and saml_assertion_command is required",
            );
            AssertionSource::File(PathBuf::new())
        }
    };
    RoleKind::Saml {
        principal_arn,
        assertion,
    }
}

/// A file the broker re-reads on every refresh; it must be readable now.
fn required_readable_file(
    p: &mut Problems,
    scope: &Scope,
    key: &str,
    path: Option<PathBuf>,
) -> PathBuf {
    let Some(path) = path.filter(|p| !p.as_os_str().is_empty()) else {
        p.error(scope.clone(), Some(key), "required");
        return PathBuf::new();
    };
    if let Err(e) = crate::config::file::open_regular(&path) {
        p.error(
            scope.clone(),
            Some(key),
            format!("cannot read {}: {e}", path.display()),
        );
    }
    path
}

/// A command run on every refresh: a non-empty argv whose program exists when given by path.
fn check_command(p: &mut Problems, scope: &Scope, key: &str, argv: &[String]) {
    let Some(program) = argv.first().filter(|s| !s.is_empty()) else {
        p.error(
            scope.clone(),
            Some(key),
            "must be a non-empty list: the program and its arguments",
        );
        return;
    };
    if program.contains('/') {
        match std::fs::metadata(program) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {}
            Ok(_) => p.error(
                scope.clone(),
                Some(key),
                format!("{program} is not an executable file"),
            ),
            Err(e) => p.error(scope.clone(), Some(key), format!("{program}: {e}")),
        }
    }
}

/// MFA SerialNumber: 9..256 of `[\w+=/:,.@-]`.
pub fn check_mfa_serial(serial: &str) -> Result<(), String> {
    if is_sts_text(serial, 9..=256, |c| "+=/:,.@-".contains(c)) {
        Ok(())
    } else {
        Err(format!(
            "{serial:?} is not an MFA device serial (9..256 characters, e.g. \"arn:aws:iam::123456789012:mfa/ops\")"
        ))
    }
}

/// GetFederationToken Name: 2..32 of `[\w+=,.@-]`.
pub fn check_federated_name(name: &str) -> Result<(), String> {
    if is_sts_text(name, 2..=32, is_session_name_char) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} must be 2..32 characters of letters, digits and +=,.@_-"
        ))
    }
}

/// `arn:PARTITION:iam::ACCOUNT:saml-provider/NAME`.
pub fn check_saml_provider_arn(arn: &str) -> Result<(), String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let ok = matches!(parts[..], [a, partition, "iam", "", account, resource]
        if a == "arn" && partition.starts_with("aws") && account.len() == 12
            && account.chars().all(|c| c.is_ascii_digit())
            && resource.strip_prefix("saml-provider/").is_some_and(|n| !n.is_empty()));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{arn:?} is not a SAML provider ARN like \"arn:aws:iam::123456789012:saml-provider/corp-idp\""
        ))
    }
}
