//! `web_identity`: AssumeRoleWithWebIdentity (unsigned), with a token file re-read on every
//! refresh.

use super::required_readable_file;
use crate::config::problems::{Problems, Scope};
use crate::config::role::RoleKind;
use crate::config::role::parse::RawRole;

/// AssumeRoleWithWebIdentity: the token file must be readable now.
pub(super) fn build(p: &mut Problems, scope: &Scope, raw: &mut RawRole) -> RoleKind {
    let token_file = required_readable_file(
        p,
        scope,
        "web_identity_token_file",
        raw.web_identity_token_file.take(),
    );
    RoleKind::WebIdentity { token_file }
}
