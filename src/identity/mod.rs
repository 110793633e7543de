//! Who is calling (DESIGN §5): the one seam that turns a request's credentials and its peer
//! into a caller, so that handlers ask one question and no way of proving a caller leaks into
//! the cache or the STS code. Static tokens live in [`crate::state::TokenIndex`]; this module
//! adds the socket's owner (§10) and Kubernetes service-account tokens (§7: [`jwt`], with the
//! keys from [`jwks`]).
//!
//! `identity` knows `config` and nothing of caches, STS or protocols.

pub mod jwks;
pub mod jwt;
pub mod socket_owner;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{KubernetesConfig, RoleConfig};
use crate::metrics::Metrics;
pub use jwt::{Reason, Workload, looks_like_jwt};
pub use socket_owner::{LocalCaller, LocalUsers, SocketOwner, Unattributed};

/// The Kubernetes half of identity: the verifier and its key fetcher, replaced whole when
/// `[kubernetes]` changes. Dropping it stops the fetcher.
#[derive(Debug)]
pub struct Kubernetes {
    /// Checks service-account tokens against the keys the fetcher keeps current.
    pub verifier: jwt::Verifier,
    stop: CancellationToken,
}

impl Kubernetes {
    /// Starts fetching the keys (in the background: the first tokens wait for them through
    /// the unknown-`kid` refetch).
    pub fn start(cfg: &KubernetesConfig, metrics: &Arc<Metrics>) -> Arc<Kubernetes> {
        let jwks = jwks::Jwks::new(cfg, Arc::clone(metrics));
        let stop = CancellationToken::new();
        tokio::spawn(Arc::clone(&jwks).run(stop.clone()));
        Arc::new(Kubernetes {
            verifier: jwt::Verifier::new(cfg.clone(), jwks, Arc::clone(metrics)),
            stop,
        })
    }
}

impl Drop for Kubernetes {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Whether `role` admits `who`.
pub fn role_admits(role: &RoleConfig, who: &Workload) -> bool {
    role.spec
        .workload
        .as_ref()
        .is_some_and(|w| w.allows(&who.namespace, &who.service_account))
}
