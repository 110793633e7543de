//! `sts-broker serve` as a process: start the broker, then answer control messages until told
//! to stop — SIGHUP and `--watch-config` reload (one path), SIGTERM/SIGINT drain and exit —
//! while systemd hears about readiness and gets its watchdog pings. A second shutdown signal
//! during the drain exits at once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;

use crate::broker::{Broker, StartError};
use crate::config::{Config, LoadContext};
use crate::reload::read_config;
use crate::signals::{self, Control, FileWatch};
use crate::systemd;

/// Why `serve` ended in failure.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The broker could not start.
    #[error(transparent)]
    Start(#[from] StartError),
}

/// Runs the daemon on `config` until SIGTERM/SIGINT, then drains. `ctx` re-reads the config
/// file on reload; `watch` polls the config and token files for changes that often.
///
/// # Errors
/// When the signal handlers cannot be installed or the broker cannot start.
pub async fn serve(
    config: Config,
    ctx: LoadContext,
    watch: Option<Duration>,
) -> Result<(), ServeError> {
    serve_with(config, ctx, watch, async |_: &Broker| {}).await
}

/// [`serve`], with `companion` run beside the daemon from start-up until shutdown begins: what
/// the binary itself does with the running broker (work the library cannot do, such as
/// `unsafe` process tuning once ready).
///
/// # Errors
/// When the signal handlers cannot be installed or the broker cannot start.
pub async fn serve_with(
    config: Config,
    ctx: LoadContext,
    watch: Option<Duration>,
    companion: impl for<'b> AsyncFnOnce(&'b Broker),
) -> Result<(), ServeError> {
    for w in &config.warnings {
        tracing::warn!(warning = %w, "configuration warning");
    }
    let path = config.path.clone();
    let mut controls = signals::controls().map_err(ServeError::Signals)?;
    let broker = Broker::start(config).await?;
    // The systemd supervisor and the companion borrow the broker; they end before the broker
    // is shut down.
    {
        let supervise = async {
            tokio::join!(systemd::supervise(&broker), companion(&broker));
        };
        tokio::pin!(supervise);
        let mut watcher = watch.zip(path.clone()).map(|(every, path)| {
            tracing::info!(every_s = every.as_secs_f64(), config = %path.display(), "watching the config and token files for changes");
            let mut w = FileWatch::new(every);
            w.changed(&watched_files(&path, &broker));
            (w, path)
        });
        loop {
            let control = tokio::select! {
                c = controls.next() => match c {
                    Some(c) => c,
                    None => break,
                },
                () = &mut supervise => continue,
                changed = async {
                    match &mut watcher {
                        Some((w, path)) => {
                            w.tick().await;
                            w.changed(&watched_files(path, &broker))
                        }
                        None => std::future::pending().await,
                    }
                } => {
                    if !changed {
                        continue;
                    }
                    tracing::info!("config or token file changed: reloading");
                    Control::Reload
                }
            };
            match control {
                Control::Reload => {
                    broker.reopen_audit().await;
                    let Some(path) = &path else { continue };
                    // This loop keeps answering signals while the file is read: a file that
                    // blocks (or is huge) cannot make SIGTERM go unheard.
                    let load = read_config(path.clone(), ctx.clone());
                    tokio::pin!(load);
                    let loaded = loop {
                        tokio::select! {
                            r = &mut load => break Some(r),
                            c = controls.next() => match c {
                                Some(Control::Shutdown) | None => break None,
                                Some(Control::Reload) => {
                                    tracing::warn!("reload requested while one is running; ignored");
                                }
                            },
                        }
                    };
                    let Some(loaded) = loaded else { break };
                    // A failure is logged and counted there; the old configuration serves on.
                    let _ = broker.reload_loaded(loaded).await;
                }
                Control::Shutdown => break,
            }
        }
    }
    tracing::info!("shutting down: draining connections");
    systemd::stopping();
    // A second SIGTERM/SIGINT while draining exits at once.
    tokio::select! {
        () = broker.shutdown() => {}
        _ = async { while let Some(c) = controls.next().await { if c == Control::Shutdown { break; } } } => {
            tracing::warn!("second shutdown signal: exiting without waiting");
        }
    }
    Ok(())
}

/// The config file and every token file of the configuration now serving.
fn watched_files(config: &Path, broker: &Broker) -> Vec<PathBuf> {
    let mut files = vec![config.to_path_buf()];
    files.extend(broker.token_files());
    files
}
