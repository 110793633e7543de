//! The HTTP listeners. Handlers read the cache, metrics and config snapshot; they never reach
//! STS, the source credentials or the refresh scheduler.
//!
//! Every listener has the same shape ([`handler`]): [`http::serve`] accepts and applies the
//! listener's limits, [`handler::handle`] loads the snapshot and calls the protocol's
//! [`Handler::answer`], and one finishing step records the request's metrics, audit record
//! and refusal log from the [`Outcome`].
//!
//! - [`ecs`], [`imds`], [`admin`]: one file per protocol.
//! - [`http`]: the accept loop, per-listener limits, the `Host` check.
//! - [`response`]: response builders and the refusals every listener shares.
//! - [`write_timeout`]: the stream wrapper that closes connections that stop reading.

pub mod admin;
pub mod ecs;
pub mod handler;
pub mod http;
pub mod imds;
pub mod response;
pub mod write_timeout;

pub use handler::{Handler, ListenerContext, Outcome, RequestContext};

/// Which listener a request came to: the `endpoint` label of the request metrics, the
/// `endpoint` field of audit records and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// The ECS container-credentials endpoint.
    Ecs,
    /// The IMDSv2-compatible endpoint.
    Imds,
    /// Health, readiness, metrics and role status.
    Admin,
}

impl Endpoint {
    /// Every endpoint, in the order of [`Endpoint::index`].
    pub const ALL: [Endpoint; 3] = [Endpoint::Ecs, Endpoint::Imds, Endpoint::Admin];

    /// The label and field value (`ecs`, `imds`, `admin`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Endpoint::Ecs => "ecs",
            Endpoint::Imds => "imds",
            Endpoint::Admin => "admin",
        }
    }

    /// A dense index (0..3): per-endpoint tables resolved once, such as latency histograms.
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Endpoint;

    #[test]
    fn labels_are_the_ones_metrics_and_audit_have_always_used() {
        let labels: Vec<_> = Endpoint::ALL.iter().map(|e| e.as_str()).collect();
        assert_eq!(labels, ["ecs", "imds", "admin"]);
        for (i, e) in Endpoint::ALL.iter().enumerate() {
            assert_eq!(e.index(), i);
        }
        assert_eq!(Endpoint::Imds.to_string(), "imds");
    }
}
