//! The audit trail: a JSON line per credential response, free of secrets, reopened on
//! SIGHUP, and never blocking the hot path when the disk is slow.

use std::time::Duration;

use sha2::Digest;

use crate::fake_sts::FakeSts;
use crate::helpers::*;

fn read_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[tokio::test]
async fn every_credential_response_is_audited_without_secrets() {
    let sts = FakeSts::start().await;
    sts.set_secret_marker("SECRETMARKER");
    let dir = ConfigDir::new();
    let trail = dir.path().join("audit.jsonl");
    let config = config_head(&sts.url())
        + &role(
            "app",
            "session_name = \"app-session\"\nsource_identity = \"alice\"\nexternal_id = \"SECRETMARKER-ext\"",
        )
        + &role("other", "")
        + "\n[imds]\nlisten = \"127.0.0.1:0\"\nrole = \"app\"\n"
        + &format!("\n[audit]\npath = {:?}\n", trail.display().to_string());
    let broker = TestBroker::start(&dir, &config).await;
    broker.wait_ready(Duration::from_secs(10)).await;

    let ok = broker.ecs_get("app", Some(TOKEN)).await;
    assert_eq!(ok.status, 200);
    let key = ok.json()["AccessKeyId"].as_str().unwrap().to_string();
    assert_eq!(
        broker
            .ecs_get("app", Some("SECRETMARKER-wrong"))
            .await
            .status,
        401
    );
    assert_eq!(broker.ecs_get("app", None).await.status, 401);
    assert_eq!(broker.ecs_get("nope", Some(TOKEN)).await.status, 404);
    let imds = broker.imds_credentials("app").await;
    assert_eq!(imds.status, 200);
    // Not credential responses: not audited.
    broker.admin_get("/healthz").await;
    request(broker.ecs, "GET", "/other", &[]).await;

    // Flushed within a second.
    let lines = {
        let mut lines = Vec::new();
        let ok = eventually(Duration::from_secs(3), || {
            lines = read_lines(&trail);
            std::future::ready(lines.len() >= 5)
        })
        .await;
        assert!(ok, "{lines:#?}");
        lines
    };
    assert_eq!(lines.len(), 5, "{lines:#?}");
    let fingerprint = hex_prefix(TOKEN);
    let first = &lines[0];
    assert_eq!(first["endpoint"], "ecs");
    assert_eq!(first["status"], 200);
    assert_eq!(first["role"], "app");
    assert_eq!(first["access_key_id"], key.as_str(), "joins CloudTrail");
    assert_eq!(first["session_name"], "app-session");
    assert_eq!(first["source_identity"], "alice");
    assert_eq!(first["token_fingerprint"], fingerprint.as_str());
    assert!(first["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    humantime::parse_rfc3339(first["time"].as_str().unwrap()).unwrap();
    assert_eq!(lines[1]["status"], 401);
    assert_eq!(
        lines[1]["role"],
        serde_json::Value::Null,
        "the role is not named before the token is valid"
    );
    assert_eq!(
        lines[1]["token_fingerprint"],
        hex_prefix("SECRETMARKER-wrong").as_str()
    );
    assert_eq!(lines[2]["token_fingerprint"], serde_json::Value::Null);
    assert_eq!(lines[3]["status"], 404);
    assert_eq!(lines[4]["endpoint"], "imds");
    assert_eq!(lines[4]["access_key_id"], key.as_str());
    let text = std::fs::read_to_string(&trail).unwrap();
    assert!(!text.contains("SECRETMARKER"), "{text}");
    assert!(!text.contains(TOKEN), "{text}");

    // logrotate: move the file away, SIGHUP, the next lines go to a new file.
    let rotated = dir.path().join("audit.jsonl.1");
    std::fs::rename(&trail, &rotated).unwrap();
    broker.signal("HUP");
    let reopened = eventually(Duration::from_secs(5), || async {
        broker.ecs_get("app", Some(TOKEN)).await;
        !read_lines(&trail).is_empty()
    })
    .await;
    assert!(reopened, "{}", broker.logs());
    // The first request after SIGHUP may still land in the old file (the reopen is async).
    assert!(read_lines(&rotated).len() >= 5, "the old file is complete");
    let written = broker
        .metric("sts_broker_audit_records_total{outcome=\"written\"}")
        .await;
    assert!(written >= Some(6.0), "{written:?}");
}

fn hex_prefix(token: &str) -> String {
    let d = sha2::Sha256::digest(token.as_bytes());
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

// Multi-threaded: the FIFO's reader is held open in a blocking thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_audit_disk_drops_records_but_never_blocks_serving() {
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    // A FIFO nobody reads: writes block once the pipe buffer is full, like a stuck disk.
    let fifo = dir.path().join("audit.fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let reader_path = fifo.clone();
    let (opened_tx, opened_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&reader_path).unwrap(); // opens once the broker opens it
        opened_tx.send(()).unwrap();
        let _ = release_rx.recv(); // hold it open, never read
        drop(f);
    });
    let config = config_head(&sts.url())
        + &role("app", "")
        + &format!("\n[audit]\npath = {:?}\n", fifo.display().to_string());
    let broker = TestBroker::start(&dir, &config).await;
    opened_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    broker.wait_ready(Duration::from_secs(10)).await;

    let addr = broker.ecs;
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        tasks.push(tokio::spawn(async move {
            for _ in 0..1250 {
                let r = request(
                    addr,
                    "GET",
                    "/v1/credentials/app",
                    &[("Authorization", TOKEN)],
                )
                .await;
                assert_eq!(r.status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    eprintln!(
        "10,000 requests with a stalled audit trail took {:?}",
        started.elapsed()
    );
    let dropped = broker
        .metric("sts_broker_audit_records_total{outcome=\"dropped\"}")
        .await
        .unwrap_or(0.0);
    assert!(
        dropped > 0.0,
        "records beyond the queue are dropped and counted"
    );
    // Even with the writer stuck, SIGTERM ends the process promptly, also right after a
    // SIGHUP (whose audit reopen must not wait for the stuck writer's full queue).
    let mut broker = broker;
    broker.signal("HUP");
    assert!(
        broker
            .wait_for_metric("sts_broker_config_reloads_total{outcome=\"ok\"}", 1.0)
            .await,
        "the reload is not held up by the stuck writer: {}",
        broker.logs()
    );
    broker.signal("TERM");
    let status = broker.wait_exit(Duration::from_secs(20)).await;
    assert!(status.is_some_and(|s| s.success()), "{}", broker.logs());
    let _ = release_tx.send(());
}
