//! `saml`: AssumeRoleWithSAML (unsigned), with the assertion from a file or a command.

use std::path::PathBuf;

use super::{check_command, required_readable_file};
use crate::config::problems::{Problems, Scope};
use crate::config::role::parse::RawRole;
use crate::config::role::{AssertionSource, RoleKind};

/// AssumeRoleWithSAML: the provider, and exactly one place the assertion comes from.
pub(super) fn build(p: &mut Problems, scope: &Scope, raw: &mut RawRole) -> RoleKind {
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
