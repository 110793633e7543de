//! Checks that span tables, run once every table and role is built.

use std::collections::HashMap;
use std::sync::Arc;

use super::problems::{Problems, Scope};
use super::{ImdsConfig, RoleConfig, role};

/// Path ids unique, each local user owned by one role, and a warning for a role no caller
/// can reach.
pub(super) fn across_tables(
    p: &mut Problems,
    roles: &[Arc<RoleConfig>],
    imds: Option<&ImdsConfig>,
) {
    // A relative-URI path id names exactly one role.
    let mut ids = HashMap::new();
    for r in roles {
        if let Some(id) = &r.relative_uri_id
            && let Some(first) = ids.insert(id.expose().to_string(), r.name.clone())
        {
            p.error(
                Scope::Role(r.name.clone()),
                Some("relative_uri_id"),
                format!(
                    "the same path id as role {first:?} (set relative_uri_id, or give the roles different tokens)"
                ),
            );
        }
    }
    role::check_local_users(p, roles);
    // IMDS serves its role without ECS tokens, local users need none; any other role
    // without tokens is unreachable.
    for r in roles {
        let is_imds_role = imds.is_some_and(|i| i.role.as_deref() == Some(r.name.as_str()));
        if r.tokens.is_empty()
            && r.relative_uri_id.is_none()
            && !is_imds_role
            && r.local_users.is_empty()
            && r.spec.workload.is_none()
        {
            p.warn(
                &Scope::Role(r.name.clone()),
                "token_files",
                "no tokens configured: no ECS client can fetch this role",
            );
        }
    }
}
