//! The audit trail: one JSON line per credential response, written by a task of its own.
//!
//! ```json
//! {"time":"2026-11-28T12:00:00.123Z","endpoint":"ecs","peer":"127.0.0.1:40312",
//!  "token_fingerprint":"9f86d081884c7d65","uid":null,"user":null,"role":"app","access_key_id":"ASIA…",
//!  "session_name":"app-node-1","source_identity":null,"status":200}
//! ```
//!
//! - `token_fingerprint` is the first 16 hex digits of the SHA-256 of the client token (never
//!   the token): `printf %s "$(cat token-file)" | sha256sum | cut -c1-16` finds its owner.
//!   IMDS requests have none (IMDS session tokens identify no one).
//! - `uid` and `user` name the client socket's owner when the broker asked the kernel (some
//!   role has `local_users`): the UID whenever it is known, the user name when that UID is a
//!   configured local user. Token requests carry them too when known.
//! - `access_key_id` joins the line to CloudTrail.
//! - Handlers hand records to a bounded channel and never wait: when the disk is slow and the
//!   channel is full, records are dropped and counted
//!   (`sts_broker_audit_records_total{outcome="dropped"}`).
//! - The writer flushes at least once a second, and reopens the file on SIGHUP (logrotate).
//! - A record counts as `written` once its line is in the file. When a write fails (ENOSPC,
//!   EIO), the records it held are counted as `dropped` and a warning is logged (at most one
//!   per `WARN_EVERY`, 10 s, with the number lost); a line cut short by the failure is cut off
//!   again (the file is truncated back to the last whole line), so every line in the trail is
//!   whole JSON and the next record starts on a fresh line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use std::io::Write as _;

use tokio::sync::mpsc;

use crate::cache::{RenderedCredentials, RoleSlot};
use crate::clock;
use crate::metrics::Metrics;
use crate::server::Endpoint;

/// Records waiting to be written before new ones are dropped.
pub const QUEUE: usize = 8192;
/// Longest time a written record stays in the buffer.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Buffered bytes that trigger a write before the next tick.
const BUFFER: usize = 64 * 1024;
/// At most one warning about lost records per this interval.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// How long shutdown waits for the trail to be flushed.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// One credential response, as the handler saw it.
#[derive(Debug)]
pub struct AuditRecord {
    /// When the response was sent.
    pub time: SystemTime,
    /// The listener that answered.
    pub endpoint: Endpoint,
    /// The client's address.
    pub peer: SocketAddr,
    /// The first 8 bytes of the client token's SHA-256.
    pub token_fingerprint: Option<[u8; 8]>,
    /// The client socket's owner, when the kernel told it (`local_users`, DESIGN §10).
    pub uid: Option<u32>,
    /// That owner's user name, when it is a configured local user.
    pub user: Option<Arc<str>>,
    /// The configured role, when the request named one.
    pub role: Option<Arc<RoleSlot>>,
    /// The credentials served, on 200.
    pub credentials: Option<Arc<RenderedCredentials>>,
    /// The HTTP status answered.
    pub status: u16,
    /// The Kubernetes workload that called (namespace, service account, pod), if any.
    pub workload: Option<Arc<crate::identity::Workload>>,
}

impl AuditRecord {
    fn to_json_line(&self) -> Vec<u8> {
        let spec = self.role.as_ref().map(|s| &s.config.spec);
        let value = serde_json::json!({
            "time": humantime::format_rfc3339_millis(self.time).to_string(),
            "endpoint": self.endpoint.as_str(),
            "peer": self.peer.to_string(),
            "token_fingerprint": self.token_fingerprint.map(hex::encode),
            "uid": self.uid,
            "user": self.user.as_deref(),
            "role": self.role.as_ref().map(|s| s.config.name.as_str()),
            "access_key_id": self.credentials.as_ref().map(|s| s.access_key_id.as_str()),
            "session_name": spec.and_then(|s| s.session_name.as_deref()),
            "source_identity": spec.and_then(|s| s.source_identity()),
            "status": self.status,
        });
        let mut value = value;
        if let Some(w) = &self.workload {
            value["namespace"] = w.namespace.clone().into();
            value["service_account"] = w.service_account.clone().into();
            value["pod"] = w.pod_name.clone().into();
            value["pod_uid"] = w.pod_uid.clone().into();
        }
        let mut line = serde_json::to_vec(&value).expect("serializing JSON values cannot fail");
        line.push(b'\n');
        line
    }
}

enum Msg {
    Record(AuditRecord),
    Reopen,
    /// Flush and stop; the sender is told when everything is on disk.
    Close(tokio::sync::oneshot::Sender<()>),
}

/// The handle handlers use. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    metrics: Arc<Metrics>,
    path: PathBuf,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("audit message")
    }
}

impl AuditLog {
    /// Opens `path` (append, created with mode 0640) and starts the writer task.
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub async fn open(path: &Path, metrics: Arc<Metrics>) -> std::io::Result<AuditLog> {
        let file = open_append(path).await?;
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(writer(path.to_path_buf(), file, rx, Arc::clone(&metrics)));
        Ok(AuditLog {
            tx,
            metrics,
            path: path.to_path_buf(),
        })
    }

    /// Where the trail is written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues a record; never waits. A full queue drops the record and counts it.
    pub fn record(&self, record: AuditRecord) {
        if self.tx.try_send(Msg::Record(record)).is_err() {
            self.metrics.observe_audit_dropped(1);
        }
    }

    /// Asks the writer to reopen the file (after logrotate moved it away). Never waits: this
    /// runs in the loop that handles signals, and a writer stuck on a dead disk must not make
    /// SIGTERM go unheard; with the queue full the reopen is skipped (and logged).
    pub async fn reopen(&self) {
        if self.tx.try_send(Msg::Reopen).is_err() {
            tracing::warn!(path = %self.path.display(), "audit trail not reopened: the writer is behind (queue full)");
        }
    }

    /// Writes out everything queued and stops the writer; gives up after `CLOSE_TIMEOUT`
    /// (a stuck disk must not stop the daemon from exiting).
    pub async fn close(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        let closed = tokio::time::timeout(CLOSE_TIMEOUT, async {
            if self.tx.send(Msg::Close(done)).await.is_ok() {
                let _ = wait.await;
            }
        })
        .await;
        if closed.is_err() {
            tracing::warn!(path = %self.path.display(), "audit trail not flushed at exit: the writer is stuck");
        }
    }
}

async fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(path)
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// Whole lines waiting to be written, and how many records they hold.
struct Pending {
    bytes: Vec<u8>,
    records: u64,
}

/// The writer task's state: the file, what is buffered, and the loss bookkeeping.
struct Trail {
    path: PathBuf,
    /// `None` only while a write runs on the blocking pool.
    file: Option<std::fs::File>,
    pending: Pending,
    metrics: Arc<Metrics>,
    /// A cut-short line could not be removed: start the next write with a newline.
    torn: bool,
    lost_since_warning: u64,
    last_warning: Option<std::time::Instant>,
}

/// What one write of the buffer achieved.
struct WriteOutcome {
    /// Records whose whole line reached the file.
    written: u64,
    error: Option<std::io::Error>,
    /// Whether the file now ends mid-line (a cut-short line the truncation could not
    /// remove); `None`: as before the write.
    torn: Option<bool>,
}

/// Writes `buf` (whole lines holding `records` records) at the end of `file`. On a failure,
/// the lines written whole count; a partial last line is truncated away.
fn write_lines(file: &mut std::fs::File, buf: &[u8], records: u64) -> WriteOutcome {
    let start = file.metadata().map(|m| m.len()).ok();
    let mut done = 0;
    let error = loop {
        if done == buf.len() {
            break None;
        }
        match file.write(&buf[done..]) {
            Ok(0) => break Some(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break Some(e),
        }
    };
    if error.is_none() {
        return WriteOutcome {
            written: records,
            error,
            torn: Some(false),
        };
    }
    let whole = buf[..done]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    // A leading newline ends an earlier cut-short line; it is not a record.
    let lead = u64::from(buf.first() == Some(&b'\n') && whole > 0);
    let lines = buf[..whole].iter().filter(|&&b| b == b'\n').count() as u64 - lead;
    let torn = if done == 0 {
        None
    } else if whole == done {
        Some(false)
    } else if start.is_some_and(|s| file.set_len(s + whole as u64).is_ok()) {
        (whole > 0).then_some(false)
    } else {
        Some(true)
    };
    WriteOutcome {
        written: lines,
        error,
        torn,
    }
}

impl Trail {
    fn add(&mut self, record: &AuditRecord) {
        if self.pending.bytes.is_empty() && self.torn {
            self.pending.bytes.push(b'\n');
        }
        self.pending.bytes.extend_from_slice(&record.to_json_line());
        self.pending.records += 1;
    }

    /// Writes out what is buffered (on the blocking pool: a stuck disk must not stall the
    /// runtime) and counts every record as written or dropped.
    async fn flush(&mut self) {
        if self.pending.records == 0 {
            self.pending.bytes.clear();
            return;
        }
        let Some(mut file) = self.file.take() else {
            return;
        };
        let pending = std::mem::replace(
            &mut self.pending,
            Pending {
                bytes: Vec::new(),
                records: 0,
            },
        );
        let joined = tokio::task::spawn_blocking(move || {
            let outcome = write_lines(&mut file, &pending.bytes, pending.records);
            (file, pending, outcome)
        })
        .await;
        let Ok((file, mut pending, outcome)) = joined else {
            // The blocking task panicked: the file handle is gone with it.
            tracing::error!(path = %self.path.display(), "the audit writer lost its file");
            return;
        };
        self.file = Some(file);
        let lost = pending.records - outcome.written;
        self.metrics.observe_audit_written(outcome.written);
        if let Some(torn) = outcome.torn {
            self.torn = torn;
        }
        if let Some(e) = outcome.error {
            self.metrics.observe_audit_dropped(lost);
            self.lost_since_warning += lost;
            if self.last_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                tracing::warn!(
                    path = %self.path.display(),
                    error = %e,
                    lost = self.lost_since_warning,
                    "cannot write the audit trail; records lost (counted as dropped)"
                );
                self.lost_since_warning = 0;
                self.last_warning = Some(clock::instant());
            }
        }
        // Keep the allocation for the next batch.
        pending.bytes.clear();
        self.pending.bytes = pending.bytes;
    }
}

async fn writer(
    path: PathBuf,
    file: std::fs::File,
    mut rx: mpsc::Receiver<Msg>,
    metrics: Arc<Metrics>,
) {
    let mut trail = Trail {
        path,
        file: Some(file),
        pending: Pending {
            bytes: Vec::with_capacity(BUFFER),
            records: 0,
        },
        metrics,
        torn: false,
        lost_since_warning: 0,
        last_warning: None,
    };
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(Msg::Record(r)) => {
                    trail.add(&r);
                    if trail.pending.bytes.len() >= BUFFER {
                        trail.flush().await;
                    }
                }
                Some(Msg::Reopen) => {
                    trail.flush().await;
                    match open_append(&trail.path).await {
                        Ok(f) => {
                            trail.file = Some(f);
                            trail.torn = false;
                            tracing::info!(path = %trail.path.display(), "audit trail reopened");
                        }
                        Err(e) => tracing::error!(path = %trail.path.display(), error = %e, "cannot reopen the audit trail; writing to the old file"),
                    }
                }
                Some(Msg::Close(done)) => {
                    while let Ok(Msg::Record(r)) = rx.try_recv() {
                        trail.add(&r);
                    }
                    trail.flush().await;
                    let _ = done.send(());
                    return;
                }
                None => {
                    trail.flush().await;
                    return;
                }
            },
            _ = tick.tick(), if trail.pending.records > 0 => trail.flush().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_counts_only_whole_lines_and_leaves_none_cut() {
        // /dev/full fails every write with ENOSPC.
        let Ok(mut full) = std::fs::OpenOptions::new().append(true).open("/dev/full") else {
            return;
        };
        let out = write_lines(&mut full, b"{\"a\":1}\n{\"b\":2}\n", 2);
        assert_eq!(out.written, 0);
        assert!(out.error.is_some());
        // A regular file: everything is written.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let out = write_lines(&mut f, b"{\"a\":1}\n", 1);
        assert_eq!(
            (out.written, out.error.is_none(), out.torn),
            (1, true, Some(false))
        );
    }
}
