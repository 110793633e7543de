//! sts-broker: assumes IAM roles through AWS STS ahead of expiry and serves the credentials
//! to local workloads over the ECS container-credentials endpoint.
//!
//! # Layout
//! - [`config`]: the TOML model and validation (a leaf: plain data);
//! - [`creds`]: secret-bearing types that redact and zeroize themselves;
//! - [`sts`]: the one module that talks to STS (endpoint failover and health in
//!   [`sts::endpoints`], the adaptive call rate in [`sts::rate`]); [`source`]: the broker's
//!   own credentials;
//! - [`identity`]: who is calling (service-account JWTs, the socket's owner);
//! - [`wire`]: the ECS and IMDS credential bodies and timestamps (a leaf);
//! - [`cache`]: pre-rendered responses per role and caller session, single-flight loads;
//!   per-role state in [`cache::slot`];
//! - [`refresh`]: the schedule (refresh ahead, jitter, back-off, rate limit) and the
//!   [`refresh::Fetcher`] the cache calls;
//! - [`server`]: the ECS, IMDS and admin handlers (read the cache, never STS);
//! - [`state`]: the one configuration snapshot handlers, the fetcher and the refresh loops
//!   read; [`supervisor`]: publishes it and starts, keeps and stops the refresh tasks;
//!   [`listeners`]: binds and serves the ECS, IMDS and admin listeners;
//! - [`broker`]: a running [`Broker`] (listeners + role supervisor); [`reload`]: swapping in
//!   a new configuration, or keeping the old one and saying why; [`daemon`]: the `serve`
//!   process (signals, `--watch-config`, systemd, drain);
//! - [`metrics`], [`signals`], [`commands`], [`audit`], [`iam`], [`fdlimit`], [`systemd`],
//!   [`logging`], [`clock`].
//!
//! Imports run one way: `config` ← `sts`/`source` ← `refresh` → `cache` ← `server`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod audit;
pub mod broker;
pub mod cache;
pub mod clock;
pub mod commands;
pub mod config;
pub mod creds;
pub mod daemon;
pub mod fdlimit;
pub mod iam;
pub mod identity;
pub mod listeners;
pub mod logging;
pub mod metrics;
pub mod refresh;
pub mod reload;
pub mod server;
pub mod signals;
pub mod source;
pub mod state;
pub mod sts;
pub mod supervisor;
pub mod systemd;
pub mod wire;

use std::future::Future;

pub use broker::{Broker, Options, SHUTDOWN_GRACE, StartError};
pub use reload::ReloadError;

/// Runs a broker with `config` until `shutdown` completes, then drains and returns.
///
/// # Errors
/// When the broker cannot start.
pub async fn run(
    config: config::Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let broker = Broker::start(config).await?;
    shutdown.await;
    broker.shutdown().await;
    Ok(())
}
