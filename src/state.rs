//! The one configuration snapshot everything reads: the request handlers (role slots, token
//! index, callers), the fetcher (the STS client and rate limit it calls with, `[sts]` and
//! `[refresh]` settings) and the refresh loops (the schedule's `[refresh]`). A reload builds a
//! new [`Snapshot`] and swaps it in whole (`arc-swap`: the hot path takes no lock a writer
//! holds), so no reader ever sees half of the old configuration and half of the new.

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::cache::{CredentialCache, RoleSlot};
use crate::clock;
use crate::config::Config;
use crate::identity;
use crate::identity::LocalUsers;
use crate::refresh::Upstream;

/// Everything a handler, a fetch or a refresh loop needs, consistent within one request or
/// one STS call. Published by the role supervisor (`supervisor.rs`) at start-up and on reload.
#[derive(Debug)]
pub struct Snapshot {
    /// The configuration now serving.
    pub config: Arc<Config>,
    /// The STS client and broker-wide call rate the fetcher uses; rebuilt only when `[sts]`,
    /// `[source]` or a broker-wide `revoke_before` changes (the rate survives the rebuild).
    pub upstream: Arc<Upstream>,
    /// The slot (key, status, cached credentials) of each configured role, by name.
    pub roles: HashMap<String, Arc<RoleSlot>>,
    /// Client tokens and relative-URI path ids → roles.
    pub tokens: TokenIndex,
    /// Callers by socket owner (`local_users`).
    pub local: LocalUsers,
    /// Service-account token verification; `None` without `[kubernetes]`.
    pub kubernetes: Option<Arc<identity::Kubernetes>>,
}

impl Snapshot {
    /// A snapshot of `config` calling STS through `upstream`, with no roles started yet (the
    /// role supervisor publishes the one with roles; tests of the fetcher and the refresh loop
    /// need no more than this).
    pub fn new(config: Arc<Config>, upstream: Arc<Upstream>) -> Snapshot {
        Snapshot {
            config,
            upstream,
            roles: HashMap::new(),
            tokens: TokenIndex::default(),
            local: LocalUsers::default(),
            kubernetes: None,
        }
    }

    /// Prefetched roles that hold no servable credentials, sorted: what `/readyz` and the
    /// systemd readiness notification wait for. The roles IMDS serves (the `[imds]` role and
    /// every role with `local_users`) must also clear the stricter IMDS `min_remaining`:
    /// ready means IMDS can answer too.
    pub async fn unready_roles(&self, cache: &CredentialCache) -> Vec<String> {
        let mut waiting = Vec::new();
        // IMDS serves its own role and every local user's role.
        let imds_floor = self.config.imds.as_ref().map(|i| {
            let served_on_imds = move |name: &str, slot: &RoleSlot| {
                i.role.as_deref() == Some(name) || !slot.config.local_users.is_empty()
            };
            (served_on_imds, i.min_remaining)
        });
        let now = clock::now();
        for (name, slot) in &self.roles {
            if !slot.config.spec.prefetch {
                continue;
            }
            let servable = match cache.peek(&slot.key).await {
                None => false,
                Some(served) => match &imds_floor {
                    Some((on_imds, floor)) if on_imds(name, slot) => {
                        served.remaining(now) >= *floor
                    }
                    _ => true,
                },
            };
            if !servable {
                waiting.push(name.clone());
            }
        }
        waiting.sort();
        waiting
    }
}

/// What a presented client token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The token is allowed to fetch the requested role.
    Allowed,
    /// A known token, but for other roles.
    WrongRole,
    /// Not a token this broker knows.
    Unknown,
}

/// Client tokens by SHA-256 digest → the roles each may fetch.
///
/// Comparing fixed-length digests means neither the token's length nor a matching prefix
/// leaks through timing; the map lookup picks the candidate, a constant-time comparison of
/// the full digest confirms it. The tokens themselves are not kept here.
#[derive(Debug, Default)]
pub struct TokenIndex {
    by_digest: HashMap<[u8; 32], Vec<Arc<str>>>,
    /// Relative-URI path ids by SHA-256 digest → the one role each serves.
    by_path_id: HashMap<[u8; 32], Arc<str>>,
}

impl TokenIndex {
    /// Indexes every role's tokens.
    pub fn build(config: &Config) -> TokenIndex {
        let mut by_digest: HashMap<[u8; 32], Vec<Arc<str>>> = HashMap::new();
        for role in &config.roles {
            let name: Arc<str> = Arc::from(role.name.as_str());
            for t in &role.tokens {
                let roles = by_digest.entry(digest(t.expose().as_bytes())).or_default();
                if !roles.contains(&name) {
                    roles.push(Arc::clone(&name));
                }
            }
        }
        let by_path_id = config
            .roles
            .iter()
            .filter_map(|r| {
                let id = r.relative_uri_id.as_ref()?;
                Some((digest(id.expose().as_bytes()), Arc::from(r.name.as_str())))
            })
            .collect();
        TokenIndex {
            by_digest,
            by_path_id,
        }
    }

    /// The role a relative-URI path id (digest `d`) serves, if any. The map lookup picks the
    /// candidate; a constant-time comparison of the full digest confirms it.
    pub fn role_for_path_id(&self, d: &[u8; 32]) -> Option<&str> {
        match self.by_path_id.get_key_value(d) {
            Some((stored, role)) if bool::from(stored.ct_eq(d)) => Some(role),
            _ => None,
        }
    }

    /// What `token` (the raw `Authorization` header value) may do for `role`.
    pub fn check(&self, token: &[u8], role: &str) -> Access {
        self.check_digest(&Self::digest(token), role)
    }

    /// The SHA-256 of a presented token (also its audit fingerprint, truncated).
    pub fn digest(token: &[u8]) -> [u8; 32] {
        digest(token)
    }

    /// The roles the token with SHA-256 `d` may fetch (empty: not a known token).
    pub fn roles_of(&self, d: &[u8; 32]) -> &[Arc<str>] {
        match self.by_digest.get_key_value(d) {
            Some((stored, roles)) if bool::from(stored.ct_eq(d)) => roles,
            _ => &[],
        }
    }

    /// What the token with SHA-256 `d` may do for `role`.
    pub fn check_digest(&self, d: &[u8; 32], role: &str) -> Access {
        match self.by_digest.get_key_value(d) {
            Some((stored, roles)) if bool::from(stored.ct_eq(d)) => {
                if roles.iter().any(|r| &**r == role) {
                    Access::Allowed
                } else {
                    Access::WrongRole
                }
            }
            _ => Access::Unknown,
        }
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, LoadContext};

    #[test]
    fn tokens_map_to_their_roles() {
        let cfg = Config::parse(
            r#"
            [sts]
            region = "us-east-1"
            [[role]]
            name = "a"
            arn = "arn:aws:iam::123456789012:role/a"
            tokens = ["token-for-a-0123456789", "shared-token-0123456789"]
            [[role]]
            name = "b"
            arn = "arn:aws:iam::123456789012:role/b"
            tokens = ["shared-token-0123456789"]
            "#,
            "t.toml",
            &LoadContext {
                hostname: "h".into(),
            },
        )
        .unwrap();
        let idx = TokenIndex::build(&cfg);
        assert_eq!(idx.check(b"token-for-a-0123456789", "a"), Access::Allowed);
        assert_eq!(idx.check(b"token-for-a-0123456789", "b"), Access::WrongRole);
        assert_eq!(idx.check(b"shared-token-0123456789", "b"), Access::Allowed);
        assert_eq!(idx.check(b"shared-token-0123456789", "a"), Access::Allowed);
        assert_eq!(idx.check(b"token-for-a-012345678", "a"), Access::Unknown);
        assert_eq!(idx.check(b"", "a"), Access::Unknown);
        assert_eq!(
            idx.check(b"token-for-a-0123456789", "nope"),
            Access::WrongRole
        );
    }
}
