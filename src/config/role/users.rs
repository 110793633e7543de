//! `local_users`: Unix users whose sockets are a role's callers (DESIGN §10), resolved to
//! UIDs when the config is loaded, each owned by one role.

use std::collections::HashMap;
use std::sync::Arc;

use super::{LocalUser, RoleConfig};
use crate::config::problems::{Problems, Scope};

/// One entry of `local_users = ["billing", 1207]`: a name or a numeric UID.
enum RawUser {
    Uid(i64),
    Name(String),
}

/// Resolves `local_users` to UIDs, one problem per entry that does not resolve. Root is
/// refused: it always stays on the real IMDS, and it can act as any user anyway.
pub(super) fn resolve_users(
    p: &mut Problems,
    scope: &Scope,
    raw: Option<toml::Value>,
) -> Vec<LocalUser> {
    let entries = match raw {
        None => Vec::new(),
        Some(toml::Value::Array(a)) => a,
        Some(other) => {
            p.error(
                scope.clone(),
                Some("local_users"),
                format!(
                    "must be a list of user names and UIDs, like [\"billing\", 1207], not a {}",
                    other.type_str()
                ),
            );
            return Vec::new();
        }
    };
    let mut raw = Vec::with_capacity(entries.len());
    for e in entries {
        match e {
            toml::Value::Integer(n) => raw.push(RawUser::Uid(n)),
            toml::Value::String(s) => raw.push(RawUser::Name(s)),
            other => p.error(
                scope.clone(),
                Some("local_users"),
                format!("{other} is neither a user name nor a UID"),
            ),
        }
    }
    let mut out: Vec<LocalUser> = Vec::with_capacity(raw.len());
    for entry in raw {
        let user = match entry {
            RawUser::Uid(n) => match u32::try_from(n) {
                // (uid_t)-1 is "no user" to the kernel.
                Ok(uid) if uid != u32::MAX => LocalUser {
                    uid,
                    name: nix::unistd::User::from_uid(uid.into())
                        .ok()
                        .flatten()
                        .map(|u| u.name),
                },
                _ => {
                    p.error(
                        scope.clone(),
                        Some("local_users"),
                        format!("{n} is not a UID (0..4294967294)"),
                    );
                    continue;
                }
            },
            RawUser::Name(name) => match nix::unistd::User::from_name(&name) {
                Ok(Some(u)) => LocalUser {
                    uid: u.uid.as_raw(),
                    name: Some(name),
                },
                Ok(None) => {
                    p.error(
                        scope.clone(),
                        Some("local_users"),
                        format!("no user named {name:?} on this host (names are resolved when the config is loaded; use a numeric UID for a user created later)"),
                    );
                    continue;
                }
                Err(e) => {
                    p.error(
                        scope.clone(),
                        Some("local_users"),
                        format!("cannot look up user {name:?}: {e}"),
                    );
                    continue;
                }
            },
        };
        if user.uid == 0 {
            p.error(
                scope.clone(),
                Some("local_users"),
                "root (UID 0) cannot be a local user: root always stays on the real instance metadata service, and root can act as any user",
            );
            continue;
        }
        if !out.iter().any(|u| u.uid == user.uid) {
            out.push(user);
        }
    }
    out
}

/// A UID may be listed by one role only: IMDS answers each user with exactly one role.
/// With no `[imds]`, `local_users` still serves token-less ECS requests.
pub(in crate::config) fn check_local_users(p: &mut Problems, roles: &[Arc<RoleConfig>]) {
    let mut owner: HashMap<u32, &str> = HashMap::new();
    for r in roles {
        for u in &r.local_users {
            match owner.get(&u.uid) {
                Some(first) => p.error(
                    Scope::Role(r.name.clone()),
                    Some("local_users"),
                    format!(
                        "{} is already a local user of role {first:?}; a user gets one role (IMDS lists exactly one)",
                        describe_user(u)
                    ),
                ),
                None => {
                    owner.insert(u.uid, &r.name);
                }
            }
        }
    }
}

/// `user "billing" (UID 1207)` or `UID 1207`.
pub fn describe_user(u: &LocalUser) -> String {
    match &u.name {
        Some(n) => format!("user {n:?} (UID {})", u.uid),
        None => format!("UID {}", u.uid),
    }
}
