//! OS signals turned into control messages (one reload path, one shutdown path), and the
//! `--watch-config` poller that asks for the same reload when a file changes.

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

/// Polls files for changes by content (not mtime: a Kubernetes ConfigMap or Secret volume
/// swaps a symlink, and editors may keep mtimes). A missing file is a state too, so a file
/// that appears or vanishes counts as a change.
#[derive(Debug)]
pub struct FileWatch {
    every: tokio::time::Interval,
    last: Option<[u8; 32]>,
}

impl FileWatch {
    /// Polls every `every` (at least every 100 ms); the first [`FileWatch::changed`] call
    /// sets the baseline.
    pub fn new(every: std::time::Duration) -> FileWatch {
        let mut every = tokio::time::interval(every.max(std::time::Duration::from_millis(100)));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        FileWatch { every, last: None }
    }

    /// Waits for the next poll.
    pub async fn tick(&mut self) {
        self.every.tick().await;
    }

    /// Whether `files` differ from the previous call (the first call sets the baseline).
    pub fn changed(&mut self, files: &[std::path::PathBuf]) -> bool {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for f in files {
            h.update(f.as_os_str().as_encoded_bytes());
            match std::fs::read(f) {
                Ok(bytes) => {
                    h.update([1]);
                    h.update((bytes.len() as u64).to_le_bytes());
                    h.update(&bytes);
                }
                Err(e) => h.update([0, e.kind() as u8]),
            }
        }
        let now: [u8; 32] = h.finalize().into();
        let changed = self.last.is_some_and(|l| l != now);
        self.last = Some(now);
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn content_changes_are_seen_and_a_missing_file_is_a_state() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("config.toml");
        let b = dir.path().join("token");
        std::fs::write(&a, "one").unwrap();
        let files = [a.clone(), b.clone()];
        let mut w = FileWatch::new(std::time::Duration::from_secs(1));
        assert!(!w.changed(&files), "baseline");
        assert!(!w.changed(&files), "nothing changed");
        std::fs::write(&b, "tok").unwrap();
        assert!(w.changed(&files), "a file appeared");
        std::fs::write(&a, "two").unwrap();
        assert!(w.changed(&files), "content changed");
        assert!(!w.changed(&files));
        std::fs::remove_file(&a).unwrap();
        assert!(w.changed(&files), "a file vanished");
    }
}
