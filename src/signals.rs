//! OS signals turned into control messages (one reload path, one shutdown path).

use futures_util::{Stream, StreamExt};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;

/// What a signal asks the daemon to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// SIGHUP — `systemctl reload`, `kill -HUP`: re-read the config and token files.
    Reload,
    /// SIGTERM — Kubernetes and systemd stopping us; SIGINT — Ctrl-C: drain and exit 0.
    Shutdown,
}

/// A stream of control messages from SIGHUP, SIGTERM and SIGINT. Signals that arrive close
/// together may be merged, so acting on them must be idempotent (a reload is).
///
/// # Errors
/// When the signal handlers cannot be installed.
pub fn controls() -> std::io::Result<impl Stream<Item = Control> + Unpin> {
    let signals = Signals::new([SIGHUP, SIGTERM, SIGINT])?;
    Ok(signals.map(|sig| {
        let (control, name) = match sig {
            SIGHUP => (Control::Reload, "SIGHUP"),
            SIGINT => (Control::Shutdown, "SIGINT"),
            _ => (Control::Shutdown, "SIGTERM"),
        };
        tracing::info!(signal = name, "signal received");
        control
    }))
}
