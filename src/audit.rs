//! The audit trail: one JSON line per credential response, written by a task of its own.
//!
//! ```json
//! {"time":"2026-11-28T12:00:00.123Z","endpoint":"ecs","peer":"127.0.0.1:40312",
//!  "token_fingerprint":"9f86d081884c7d65","role":"app","access_key_id":"ASIA…",
//!  "session_name":"app-node-1","source_identity":null,"status":200}
//! ```
//!
//! - `token_fingerprint` is the first 16 hex digits of the SHA-256 of the client token (never
//!   the token): `printf %s "$(cat token-file)" | sha256sum | cut -c1-16` finds its owner.
//!   IMDS requests have none (IMDS session tokens identify no one).
//! - `access_key_id` joins the line to CloudTrail.
//! - Handlers hand records to a bounded channel and never wait: when the disk is slow and the
//!   channel is full, records are dropped and counted (`sts_broker_audit_dropped_total`).
//! - The writer flushes at least once a second, and reopens the file on SIGHUP (logrotate).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::cache::{RoleSlot, Served};
use crate::metrics::Metrics;

/// Records waiting to be written before new ones are dropped.
pub const QUEUE: usize = 8192;
/// Longest time a written record stays in the buffer.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How long shutdown waits for the trail to be flushed.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// One credential response, as the handler saw it.
#[derive(Debug)]
pub struct AuditRecord {
    pub time: SystemTime,
    pub endpoint: &'static str,
    pub peer: SocketAddr,
    /// The first 8 bytes of the client token's SHA-256.
    pub token_fingerprint: Option<[u8; 8]>,
    /// The configured role, when the request named one.
    pub slot: Option<Arc<RoleSlot>>,
    /// What was served, on 200.
    pub served: Option<Arc<Served>>,
    pub status: u16,
}

impl AuditRecord {
    fn to_json_line(&self) -> Vec<u8> {
        let spec = self.slot.as_ref().map(|s| &s.config.spec);
        let value = serde_json::json!({
            "time": humantime::format_rfc3339_millis(self.time).to_string(),
            "endpoint": self.endpoint,
            "peer": self.peer.to_string(),
            "token_fingerprint": self.token_fingerprint.map(hex::encode),
            "role": self.slot.as_ref().map(|s| s.config.name.as_str()),
            "access_key_id": self.served.as_ref().map(|s| s.access_key_id.as_str()),
            "session_name": spec.and_then(|s| s.session_name.as_deref()),
            "source_identity": spec.and_then(|s| s.source_identity()),
            "status": self.status,
        });
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
            self.metrics.observe_audit_dropped();
        }
    }

    /// Reopens the file (after logrotate moved it away).
    pub async fn reopen(&self) {
        let _ = self.tx.send(Msg::Reopen).await;
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

async fn open_append(path: &Path) -> std::io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .await
}

async fn writer(
    path: PathBuf,
    file: tokio::fs::File,
    mut rx: mpsc::Receiver<Msg>,
    metrics: Arc<Metrics>,
) {
    let mut out = tokio::io::BufWriter::with_capacity(64 * 1024, file);
    let mut dirty = false;
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(Msg::Record(r)) => {
                    if let Err(e) = out.write_all(&r.to_json_line()).await {
                        tracing::warn!(path = %path.display(), error = %e, "cannot write the audit trail");
                    } else {
                        metrics.observe_audit_written();
                        dirty = true;
                    }
                }
                Some(Msg::Reopen) => {
                    let _ = out.flush().await;
                    match open_append(&path).await {
                        Ok(f) => {
                            out = tokio::io::BufWriter::with_capacity(64 * 1024, f);
                            tracing::info!(path = %path.display(), "audit trail reopened");
                        }
                        Err(e) => tracing::error!(path = %path.display(), error = %e, "cannot reopen the audit trail; writing to the old file"),
                    }
                    dirty = false;
                }
                Some(Msg::Close(done)) => {
                    while let Ok(Msg::Record(r)) = rx.try_recv() {
                        let _ = out.write_all(&r.to_json_line()).await;
                    }
                    let _ = out.flush().await;
                    let _ = done.send(());
                    return;
                }
                None => {
                    let _ = out.flush().await;
                    return;
                }
            },
            _ = tick.tick(), if dirty => {
                if let Err(e) = out.flush().await {
                    tracing::warn!(path = %path.display(), error = %e, "cannot flush the audit trail");
                }
                dirty = false;
            }
        }
    }
}
