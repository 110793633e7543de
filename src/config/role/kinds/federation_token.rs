//! `federation_token`: GetFederationToken, a federated user's session.

use crate::config::checks::{is_session_name_char, is_sts_text};
use crate::config::problems::{Problems, Scope};
use crate::config::role::RoleKind;
use crate::config::role::limits;
use crate::config::role::parse::RawRole;

/// GetFederationToken: the federated name; without a policy it has no permissions.
pub(super) fn build(p: &mut Problems, scope: &Scope, raw: &mut RawRole) -> RoleKind {
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
