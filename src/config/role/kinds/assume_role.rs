//! `assume_role` (the default): AssumeRole, signed with the broker's or the source role's
//! credentials.

use crate::config::problems::{Problems, Scope};
use crate::config::role::RoleKind;
use crate::config::role::limits::{self, MAX_TAGS};
use crate::config::role::parse::RawRole;
use crate::config::{check_external_id, check_source_identity};
use crate::creds::Secret;

/// AssumeRole: external ID, tags and which pass on, source identity, the source role.
pub(super) fn build(p: &mut Problems, scope: &Scope, raw: &mut RawRole) -> RoleKind {
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
