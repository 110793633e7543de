//! The broker in the test's own process (mini-redis `start_server()` style): the library's
//! [`Broker`] on port 0, its addresses read back from it — no child process, no log scraping.
//! Use it wherever the process does not matter; spawn the binary ([`TestBroker`]) for signals,
//! systemd, SDK clients reading the environment, network namespaces and what reaches the logs.
//!
//! On a paused current-thread runtime (`#[tokio::test(start_paused = true)]`, with
//! `sts_broker::clock::follow_tokio_time()`) the broker, the fake STS and the test share one
//! simulated clock: a test waits out an hour of refreshes in milliseconds.
//!
//! [`TestBroker`]: crate::helpers::TestBroker

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use sts_broker::config::{Config, LoadContext};
use sts_broker::{Broker, Options, ReloadError};

use crate::helpers::{ConfigDir, Endpoints, SOURCE_KEY_ID};
use crate::test_config::TestConfig;

/// A broker running in this process. Dropping it leaves its tasks to the test's runtime;
/// [`InProcBroker::shutdown`] drains it as SIGTERM would.
pub struct InProcBroker {
    broker: Broker,
    endpoints: Endpoints,
    /// Where the config is written (reloads re-read it, as SIGHUP does).
    pub config_path: PathBuf,
}

impl std::ops::Deref for InProcBroker {
    type Target = Endpoints;
    fn deref(&self) -> &Endpoints {
        &self.endpoints
    }
}

/// Starts a broker on `config` (written to `dir/config.toml`), its STS calls signed with the
/// same static source key the spawned binary gets from its environment.
///
/// # Panics
/// When the config is invalid or the broker cannot start.
pub async fn spawn_broker(dir: &ConfigDir, config: &TestConfig) -> InProcBroker {
    init_test_logs();
    let config_path = dir.write("config.toml", &config.render());
    let loaded = Config::load(&config_path, &context())
        .unwrap_or_else(|e| panic!("test config is invalid:\n{e}\n{}", config.render()));
    let broker = Broker::start_with(loaded, options())
        .await
        .expect("broker starts");
    let endpoints = Endpoints {
        ecs: broker.ecs_addrs()[0],
        admin: broker.admin_addrs()[0],
        imds: broker.imds_addrs().first().copied(),
    };
    InProcBroker {
        broker,
        endpoints,
        config_path,
    }
}

impl InProcBroker {
    /// Writes `config` and reloads from the file, as SIGHUP does (an invalid file is counted
    /// and kept out; the returned error is what the broker logs).
    pub async fn reload(&self, config: &TestConfig) -> Result<(), ReloadError> {
        self.reload_text(&config.render()).await
    }

    /// [`InProcBroker::reload`] with raw TOML (for configs the builder cannot express, such as
    /// invalid ones).
    pub async fn reload_text(&self, text: &str) -> Result<(), ReloadError> {
        std::fs::write(&self.config_path, text).unwrap();
        let loaded = Config::load(&self.config_path, &context());
        self.broker.reload_loaded(loaded).await
    }

    /// The library's broker (metrics registry, readiness).
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Drains and stops, as on SIGTERM.
    pub async fn shutdown(self) {
        self.broker.shutdown().await;
    }
}

/// The machine facts config loading needs; fixed so tests do not depend on the host name.
fn context() -> LoadContext {
    LoadContext {
        hostname: "test-host".into(),
    }
}

/// The static source credentials the binary reads from `AWS_ACCESS_KEY_ID` in the tests.
fn options() -> Options {
    Options {
        source_credentials: Some(SharedCredentialsProvider::new(Credentials::from_keys(
            SOURCE_KEY_ID,
            "source-secret-key",
            None,
        ))),
    }
}

/// The JSON log lines of an in-process broker on a current-thread (paused) runtime.
#[derive(Clone, Default)]
pub struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures what is logged on this thread at `info` and above, as the binary's JSON lines,
/// while the guard lives. On a current-thread runtime every task of the broker runs on the
/// test's thread, so this is everything the broker logs (what runs on the blocking pool
/// aside). For what must never reach the logs (secrets), spawn the binary: its filters are
/// the ones that ship.
pub fn capture_logs() -> (CapturedLogs, tracing::subscriber::DefaultGuard) {
    let logs = CapturedLogs::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || sink.clone())
        .finish();
    (logs, tracing::subscriber::set_default(subscriber))
}

/// With `TEST_LOG` set, the in-process brokers log to the test output.
fn init_test_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_max_level(tracing::Level::INFO)
            .try_init();
    }
}
