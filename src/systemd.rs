//! systemd integration (`Type=notify`): `READY=1` once every prefetched role holds servable
//! credentials (what `/readyz` reports), `STATUS=` lines, `WATCHDOG=1` pings at half of
//! `WatchdogSec=`, `STOPPING=1` on shutdown. Without `NOTIFY_SOCKET` every call is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;

use crate::Broker;
use crate::clock;

/// How often readiness is re-checked before `READY=1` is sent: 5 ms at first, doubling up to
/// 200 ms. Credentials usually arrive within tens of milliseconds of start-up, and a fixed
/// 200 ms made every start take at least that long (BENCHMARKS.md, exec to ready); while STS
/// is down the checks settle at 5 a second.
const READY_POLL_FIRST: Duration = Duration::from_millis(5);
const READY_POLL: Duration = Duration::from_millis(200);

/// Sends a status line (ignored outside systemd).
pub fn status(text: &str) {
    notify(&[NotifyState::Status(text)]);
}

/// Tells systemd the service is stopping.
pub fn stopping() {
    notify(&[
        NotifyState::Stopping,
        NotifyState::Status("draining connections"),
    ]);
}

fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Runs for the daemon's lifetime: signals readiness once, then feeds the watchdog. The
/// pings come from the runtime that serves requests, so a wedged runtime stops them.
pub async fn supervise(broker: &Broker) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return std::future::pending().await;
    }
    let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2);
    let mut ping = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    let mut ready = false;
    let mut next_check = clock::tokio_instant();
    let mut delay = READY_POLL_FIRST;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next_check), if !ready => {
                let waiting = broker.unready_roles().await;
                if waiting.is_empty() {
                    ready = true;
                    notify(&[NotifyState::Ready, NotifyState::Status("serving credentials")]);
                    tracing::info!("ready (notified systemd)");
                } else {
                    status(&format!("waiting for credentials: {}", waiting.join(", ")));
                    next_check = clock::tokio_instant() + delay;
                    delay = (delay * 2).min(READY_POLL);
                }
            }
            _ = ping.tick(), if watchdog.is_some() => notify(&[NotifyState::Watchdog]),
            // Ready and no watchdog (Type=notify without WatchdogSec=): nothing left to do,
            // but the caller polls this future for the daemon's lifetime.
            else => std::future::pending::<()>().await,
        }
    }
}
