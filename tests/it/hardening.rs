//! Hostile clients: slowloris, idle connections, bodies, connection floods, per-peer rate
//! limits, floods of invalid tokens; STS handing out nearly expired credentials; kill -9.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::fake_sts::FakeSts;
use crate::helpers::*;
use crate::inproc::spawn_broker;
use crate::test_config::{Role, TestConfig};

/// Reads until the server closes the connection (Ok(elapsed)) or `limit` passes (Err), on
/// tokio's clock (simulated on a paused runtime).
async fn time_until_closed(
    s: &mut TcpStream,
    started: tokio::time::Instant,
    limit: Duration,
) -> Result<Duration, ()> {
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(started + limit, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(started.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return Err(()),
        }
    }
}

/// On a paused clock: the 10 s header timeout and the trickle pass in simulated time.
#[tokio::test(start_paused = true)]
async fn slowloris_and_idle_connections_are_cut() {
    let _clock = sts_broker::clock::follow_tokio_time();
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let broker = spawn_broker(&dir, &TestConfig::new(&sts.url()).role(Role::new("app"))).await;
    broker.wait_ready(Duration::from_secs(10)).await;

    // Slowloris: a header line every second, never finishing the head.
    let mut slow = TcpStream::connect(broker.ecs).await.unwrap();
    let started = tokio::time::Instant::now();
    slow.write_all(b"GET /v1/credentials/app HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    let trickle = async {
        for i in 0..30 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if slow
                .write_all(format!("X-Slow-{i}: 1\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(12), trickle).await;
    let closed = time_until_closed(&mut slow, started, Duration::from_secs(14)).await;
    assert!(
        closed.is_ok_and(|t| t >= Duration::from_secs(10)),
        "a slowloris connection must be cut at ~10 s: {closed:?}"
    );

    // An idle keep-alive connection after one request.
    let mut idle = TcpStream::connect(broker.ecs).await.unwrap();
    idle.write_all(
        format!(
            "GET /v1/credentials/app HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {TOKEN}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let started = tokio::time::Instant::now();
    let closed = time_until_closed(&mut idle, started, Duration::from_secs(30)).await;
    assert!(
        closed.is_ok(),
        "an idle keep-alive connection must be closed"
    );
    eprintln!(
        "idle keep-alive connection closed after {:?}",
        closed.unwrap()
    );
}

#[tokio::test]
async fn request_bodies_are_refused_on_credential_paths() {
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let config = config_head(&sts.url())
        + &role("app", "")
        + "\n[imds]\nlisten = \"127.0.0.1:0\"\nrole = \"app\"\n";
    let broker = TestBroker::start(&dir, &config).await;
    broker.wait_ready(Duration::from_secs(10)).await;
    let with_length = format!(
        "GET /v1/credentials/app HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {TOKEN}\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
    );
    let r = raw_request(broker.ecs, with_length.as_bytes()).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["Code"], "BodyNotAllowed");
    let chunked = format!(
        "GET /v1/credentials/app HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {TOKEN}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    );
    assert_eq!(
        raw_request(broker.ecs, chunked.as_bytes()).await.status,
        400
    );
    let imds_put = "PUT /latest/api/token HTTP/1.1\r\nHost: 127.0.0.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc";
    assert_eq!(
        raw_request(broker.imds.unwrap(), imds_put.as_bytes())
            .await
            .status,
        400
    );
    // An explicit empty body is fine.
    let empty = format!(
        "GET /v1/credentials/app HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {TOKEN}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(raw_request(broker.ecs, empty.as_bytes()).await.status, 200);
}

#[tokio::test]
async fn a_full_listener_leaves_the_admin_endpoint_reachable() {
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let config = TestConfig::new(&sts.url())
        .set("ecs", "max_connections", 20)
        .role(Role::new("app"));
    let broker = spawn_broker(&dir, &config).await;
    broker.wait_ready(Duration::from_secs(10)).await;
    // Take every connection slot with idle connections.
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(TcpStream::connect(broker.ecs).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A 21st client waits (kernel backlog); the admin listener answers at once.
    let addr = broker.ecs;
    let waiting = tokio::spawn(async move {
        request(
            addr,
            "GET",
            "/v1/credentials/app",
            &[("Authorization", TOKEN)],
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !waiting.is_finished(),
        "the 21st connection must wait for a free slot"
    );
    let started = Instant::now();
    assert_eq!(broker.admin_get("/healthz").await.status, 200);
    assert!(started.elapsed() < Duration::from_secs(2));
    // Freeing the slots lets it through.
    drop(held);
    let r = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn the_per_peer_rate_limit_answers_429_and_counts() {
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let config = TestConfig::new(&sts.url())
        .set("ecs", "per_peer_rate_limit", 5)
        .role(Role::new("app"));
    let broker = spawn_broker(&dir, &config).await;
    broker.wait_ready(Duration::from_secs(10)).await;
    let mut statuses = Vec::new();
    for _ in 0..40 {
        let r = broker.ecs_get("app", Some(TOKEN)).await;
        if r.status == 429 {
            assert_eq!(r.json()["Code"], "TooManyRequests");
            assert_eq!(r.header("retry-after"), Some("1"));
        }
        statuses.push(r.status);
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!(
        ok >= 10 && limited >= 20,
        "burst of 10, then limited: {statuses:?}"
    );
    assert_eq!(
        broker
            .metric("sts_broker_rate_limited_total{endpoint=\"ecs\"}")
            .await,
        Some(limited as f64)
    );
    // The admin listener has no limit configured.
    for _ in 0..20 {
        assert_eq!(broker.admin_get("/healthz").await.status, 200);
    }
}

/// A keep-alive client: sends GETs one after another on one connection.
struct KeepAlive {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl KeepAlive {
    async fn connect(addr: SocketAddr) -> KeepAlive {
        KeepAlive {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    /// One request; the status code.
    async fn get(&mut self, path: &str, token: &str) -> u16 {
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {token}\r\n\r\n");
        self.stream.write_all(req.as_bytes()).await.unwrap();
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if self.buf.len() >= end + 4 + len {
                    self.buf.drain(..end + 4 + len);
                    return head.split(' ').nth(1).unwrap().parse().unwrap();
                }
            }
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed mid-response");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_idle_connections_and_invalid_tokens_leave_memory_bounded() {
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let broker = TestBroker::start(&dir, &(config_head(&sts.url()) + &role("app", ""))).await;
    broker.wait_ready(Duration::from_secs(10)).await;
    let mut warm = KeepAlive::connect(broker.ecs).await;
    for _ in 0..1000 {
        assert_eq!(warm.get("/v1/credentials/app", "bad-token").await, 401);
    }
    let before = broker.rss_kib();

    // 1,000 idle connections.
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(TcpStream::connect(broker.ecs).await.unwrap());
    }
    // 100,000 requests with invalid tokens, on 8 keep-alive connections.
    let addr = broker.ecs;
    let mut tasks = Vec::new();
    for t in 0..8 {
        tasks.push(tokio::spawn(async move {
            let mut c = KeepAlive::connect(addr).await;
            for i in 0..12_500 {
                let token = format!("invalid-{t}-{i}");
                assert_eq!(c.get("/v1/credentials/app", &token).await, 401);
            }
        }));
    }
    // Meanwhile a valid client is served.
    let mut valid = KeepAlive::connect(broker.ecs).await;
    for _ in 0..50 {
        assert_eq!(valid.get("/v1/credentials/app", TOKEN).await, 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let after = broker.rss_kib();
    eprintln!(
        "RSS {before} KiB before, {after} KiB after 1,000 idle connections and 100,000 invalid tokens"
    );
    assert!(
        after < before + 24 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    assert_eq!(broker.admin_get("/healthz").await.status, 200);
    // (A new connection: the earlier one may have idled out meanwhile.)
    let mut valid = KeepAlive::connect(broker.ecs).await;
    assert_eq!(valid.get("/v1/credentials/app", TOKEN).await, 200);
    drop(idle);
}

#[tokio::test]
async fn credentials_that_sts_issues_nearly_expired_are_never_served() {
    let sts = FakeSts::start().await;
    // Default min_remaining is 15 min; STS hands out 10-minute credentials.
    sts.set_lifetime(Duration::from_secs(600));
    let dir = ConfigDir::new();
    let broker = TestBroker::start(
        &dir,
        &(config_head(&sts.url()) + &role("app", "prefetch = false")),
    )
    .await;
    let r = broker.ecs_get("app", Some(TOKEN)).await;
    assert_eq!(r.status, 503, "{}", r.body);
    let msg = r.json()["Message"].as_str().unwrap().to_string();
    assert!(msg.contains("min_remaining"), "{msg}");
    assert!(!r.body.contains("fake-secret"));
    // Already expired ones too.
    sts.set_lifetime(Duration::ZERO);
    let r = broker.admin_post("/v1/roles/app/refresh").await;
    assert_eq!(r.status, 503);
}

#[tokio::test]
async fn kill_9_then_restart_is_ready_after_one_sts_call_and_nothing_is_on_disk() {
    let sts = FakeSts::start().await;
    sts.set_secret_marker("SECRETMARKER");
    sts.set_delay(Duration::from_millis(200));
    let dir = ConfigDir::new();
    let config = config_head(&sts.url()) + &role("app", "");
    let files_before = list_files(dir.path());
    let mut broker = TestBroker::start(&dir, &config).await;
    broker.wait_ready(Duration::from_secs(10)).await;
    broker.signal("KILL");
    broker
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("killed");
    let calls = sts.calls();

    let started = Instant::now();
    let broker = TestBroker::start(&dir, &config).await;
    broker.wait_ready(Duration::from_secs(10)).await;
    eprintln!(
        "ready {:?} after restart (STS round trip 200 ms)",
        started.elapsed()
    );
    assert_eq!(
        sts.calls(),
        calls + 1,
        "one STS call per role to be ready again"
    );
    assert_eq!(broker.ecs_get("app", Some(TOKEN)).await.status, 200);
    // Nothing written but the config the test wrote (no credentials on disk, ever).
    let files_after = list_files(dir.path());
    assert_eq!(files_before.len() + 1, files_after.len(), "{files_after:?}");
    for f in &files_after {
        let bytes = std::fs::read(f).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains("SECRETMARKER"),
            "{}",
            f.display()
        );
    }
}

fn list_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}
