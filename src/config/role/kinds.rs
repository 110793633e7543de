//! One builder per role kind, each in its own file: it reads the keys its kind takes (the
//! key table let no other through) and returns the [`RoleKind`] with its parameters,
//! recording every problem. The checks the kinds share (files and commands run on every
//! refresh) are here.

mod assume_role;
mod federation_token;
mod saml;
mod session_token;
mod web_identity;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use super::parse::RawRole;
use super::{RoleKind, RoleKindTag};
use crate::config::problems::{Problems, Scope};

pub use federation_token::check_federated_name;
pub use saml::check_saml_provider_arn;
pub use session_token::check_mfa_serial;

/// The kind's own parameters, by the builder of `kind`.
pub(super) fn build(
    p: &mut Problems,
    scope: &Scope,
    kind: RoleKindTag,
    raw: &mut RawRole,
) -> RoleKind {
    match kind {
        RoleKindTag::AssumeRole => assume_role::build(p, scope, raw),
        RoleKindTag::WebIdentity => web_identity::build(p, scope, raw),
        RoleKindTag::SessionToken => session_token::build(p, scope, raw),
        RoleKindTag::FederationToken => federation_token::build(p, scope, raw),
        RoleKindTag::Saml => saml::build(p, scope, raw),
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
