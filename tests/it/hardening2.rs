//! Hardening, round two (issue 12): what hostile, careless and old clients still got wrong.
//! Each test names the defect it pins down; each failed before its fix.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::fake_sts::{FakeSts, Scenario};
use crate::helpers::*;
use crate::inproc::spawn_broker;
use crate::test_config::{Role, TestConfig};

/// Defect 3: a web page cannot make the broker refresh (CSRF), and a forced refresh never
/// throws good credentials away, coalesces, and respects back-off.
#[tokio::test]
async fn forced_refresh_refuses_browsers_keeps_good_credentials_and_coalesces() {
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    // A long back-off so that "respects back-off" is observable on a loaded machine.
    let config = TestConfig::new(&sts.url())
        .refresh("backoff_min", "30s")
        .refresh("backoff_max", "60s")
        .role(Role::new("app"));
    let broker = spawn_broker(&dir, &config).await;
    broker.wait_ready(Duration::from_secs(10)).await;
    let first = broker.ecs_get("app", Some(TOKEN)).await.json()["AccessKeyId"].clone();
    let calls = sts.calls();

    // What a web page can send without a preflight: refused, no STS call.
    let browser_markers: [&[(&str, &str)]; 3] = [
        &[
            ("Origin", "https://evil.example"),
            ("Content-Type", "text/plain"),
        ],
        &[("Sec-Fetch-Site", "cross-site")],
        &[("Origin", "null")],
    ];
    for headers in browser_markers {
        let r = request(broker.admin, "POST", "/v1/roles/app/refresh", headers).await;
        assert_eq!(r.status, 403, "{headers:?}: {}", r.body);
        assert_eq!(r.json()["Code"], "BrowserRequest");
    }
    // Typed into the address bar (no page involved) is not a forgery.
    let r = broker.admin_get("/healthz").await;
    assert_eq!(r.status, 200);
    assert_eq!(sts.calls(), calls, "refused requests cost no STS call");

    // A forced refresh that fails keeps the good credentials, and says so.
    sts.set_scenario(Scenario::AccessDenied);
    let r = broker.admin_post("/v1/roles/app/refresh").await;
    assert_eq!(r.status, 503, "{}", r.body);
    let msg = r.json()["Message"].as_str().unwrap().to_string();
    assert!(msg.contains("keep being served"), "{msg}");
    assert!(!msg.contains("backing off"), "this one did call STS: {msg}");
    let served = broker.ecs_get("app", Some(TOKEN)).await;
    assert_eq!(served.status, 200, "{}", served.body);
    assert_eq!(served.json()["AccessKeyId"], first);
    // In back-off now: another forced refresh answers at once, without STS.
    let calls = sts.calls();
    let r = broker.admin_post("/v1/roles/app/refresh").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("backing off"), "{}", r.body);
    assert_eq!(sts.calls(), calls, "a forced refresh in back-off calls STS");
}

/// Defect 3, continued: concurrent and repeated forced refreshes cost one STS call.
#[tokio::test]
async fn concurrent_and_repeated_forced_refreshes_cost_one_sts_call() {
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let broker = TestBroker::start(&dir, &(config_head(&sts.url()) + &role("app", ""))).await;
    broker.wait_ready(Duration::from_secs(10)).await;
    let calls = sts.calls();
    sts.set_delay(Duration::from_millis(500));
    let posts = (0..8).map(|_| broker.admin_post("/v1/roles/app/refresh"));
    let answers = futures_util::future::join_all(posts).await;
    let keys = distinct(&answers, "access_key_id");
    assert_eq!(
        keys.len(),
        1,
        "every concurrent caller sees the same new key"
    );
    for _ in 0..5 {
        let r = broker.admin_post("/v1/roles/app/refresh").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["coalesced"], true);
    }
    assert_eq!(sts.calls(), calls + 1, "13 forced refreshes, one STS call");
}

/// A connection to `addr` with a tiny receive buffer that pipelines `GET`s of `path` until
/// the broker stops taking them, and never reads an answer.
async fn stalled_reader(addr: std::net::SocketAddr, path: &str) -> TcpStream {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    socket.set_nonblocking(true).unwrap();
    let mut s = TcpStream::from_std(std::net::TcpStream::from(socket)).unwrap();
    let one = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {TOKEN}\r\n\r\n");
    let batch = one.repeat(256);
    // Until a batch does not go out within a second: both directions are full.
    for _ in 0..4096 {
        let wrote = tokio::time::timeout(Duration::from_secs(1), s.write_all(batch.as_bytes()));
        if !matches!(wrote.await, Ok(Ok(()))) {
            break;
        }
    }
    s
}

/// Defect 4: clients that stop reading are cut after the write timeout, so they cannot pin
/// the listener's connection slots. On a paused clock: the timeouts pass in simulated time.
#[tokio::test(start_paused = true)]
async fn clients_that_stop_reading_do_not_pin_connection_slots() {
    let _clock = sts_broker::clock::follow_tokio_time();
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let config = TestConfig::new(&sts.url())
        .set("ecs", "max_connections", 2)
        .role(Role::new("app"));
    let broker = spawn_broker(&dir, &config).await;
    broker.wait_ready(Duration::from_secs(10)).await;
    let _a = stalled_reader(broker.ecs, "/v1/credentials/app").await;
    let _b = stalled_reader(broker.ecs, "/v1/credentials/app").await;
    // Both slots are held by clients that read nothing; a third client waits in the backlog
    // until the write timeout (10 s) frees one.
    let started = tokio::time::Instant::now();
    let third = async {
        let mut s = TcpStream::connect(broker.ecs).await.unwrap();
        let req = format!(
            "GET /v1/credentials/app HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {TOKEN}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf).into_owned()
    };
    let answer = tokio::time::timeout(Duration::from_secs(45), third)
        .await
        .expect("a client that stops reading must not hold its slot forever");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    eprintln!("third client served after {:?}", started.elapsed());
}

/// Defect 5: a reload leaves lazy (`prefetch = false`) roles lazy. In-process on a paused
/// clock: ten simulated minutes after the reloads, well before any refresh is due.
#[tokio::test(start_paused = true)]
async fn reload_leaves_lazy_roles_lazy() {
    let _clock = sts_broker::clock::follow_tokio_time();
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let mut config = TestConfig::new(&sts.url()).role(Role::new("eager"));
    for i in 0..5 {
        config = config.role(Role::new(&format!("lazy{i}")).lazy());
    }
    let broker = spawn_broker(&dir, &config).await;
    broker.wait_ready(Duration::from_secs(10)).await;
    // One lazy role is asked for: it is kept warm from then on.
    assert_eq!(broker.ecs_get("lazy0", Some(TOKEN)).await.status, 200);
    assert_eq!(sts.calls(), 2);
    // Reload twice: unchanged, then with another [refresh] (every kept role is rescheduled).
    broker.reload(&config).await.unwrap();
    broker
        .reload(&config.clone().refresh("jitter", "1s"))
        .await
        .unwrap();
    assert_eq!(broker.reloads("ok").await, Some(2.0));
    // Give a wrongly woken role time to call STS.
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(
        sts.calls(),
        2,
        "a reload assumed lazy roles nobody asked for: {:?}",
        sts.requests()
            .iter()
            .map(|r| r.param("RoleArn").unwrap_or("").to_string())
            .collect::<Vec<_>>()
    );
}

/// Defect 8: every credential field STS returns is validated before anything is served, and
/// an expiry later than the session length asked for is not trusted.
#[tokio::test]
async fn credentials_sts_garbles_are_never_served_and_long_expiries_are_capped() {
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let broker = TestBroker::start(
        &dir,
        &(config_head(&sts.url()) + &role("app", "prefetch = false\nduration = \"1h\"")),
    )
    .await;
    let huge = "A".repeat(1 << 20);
    let garbage: [(&str, &str); 4] = [
        ("SessionToken", ""),
        ("SecretAccessKey", "a secret\nwith a newline"),
        ("AccessKeyId", &huge),
        ("AccessKeyId", "ASIA WITH SPACES 0"),
    ];
    for (field, text) in garbage {
        sts.set_credential_field(Some((field, text)));
        // Past the back-off of the previous failure.
        let answered = eventually(Duration::from_secs(10), || async {
            let r = broker.ecs_get("app", Some(TOKEN)).await;
            assert_ne!(
                r.status,
                200,
                "{field} {:?} was served: {}",
                &text[..text.len().min(20)],
                &r.body[..r.body.len().min(200)]
            );
            r.body.contains(field)
        })
        .await;
        assert!(answered, "the 503 names the bad field {field}");
    }
    // STS claims 12 hours for a 1-hour session: the broker serves (and schedules) 1 hour.
    sts.set_credential_field(None);
    sts.set_lifetime(Duration::from_secs(12 * 3600));
    let served = eventually(Duration::from_secs(10), || async {
        broker.ecs_get("app", Some(TOKEN)).await.status == 200
    })
    .await;
    assert!(served, "{}", broker.logs());
    let body = broker.ecs_get("app", Some(TOKEN)).await.json();
    let expiration = humantime::parse_rfc3339(body["Expiration"].as_str().unwrap()).unwrap();
    let left = expiration
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    assert!(
        left <= Duration::from_secs(3600 + 5),
        "expiry {left:?} away: later than the hour asked for"
    );
}

/// A small tmpfs mounted for one test (root only), unmounted on drop.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(size: &str) -> Option<SmallFs> {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
            return None;
        }
        Some(SmallFs { dir })
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Defect 6: records lost to a full disk are counted as dropped (not written), and the trail
/// never holds a cut-short line.
#[tokio::test]
async fn audit_records_lost_to_a_full_disk_are_dropped_and_no_line_is_cut() {
    let Some(fs) = SmallFs::mount("64k") else {
        return;
    };
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let trail = fs.dir.path().join("audit.jsonl");
    let filler = fs.dir.path().join("filler");
    // Leave a little over one page: a few records fit, then a write fails part-way.
    std::fs::write(&filler, vec![b'x'; 64 * 1024 - 5000]).unwrap_or_default();
    let config = config_head(&sts.url())
        + &role("app", "")
        + &format!("\n[audit]\npath = {:?}\n", trail.display().to_string());
    let broker = TestBroker::start(&dir, &config).await;
    broker.wait_ready(Duration::from_secs(10)).await;
    let started = std::time::Instant::now();
    let mut sent = 0.0;
    // Several flushes (one a second), each larger than the room left.
    for _ in 0..4 {
        for _ in 0..60 {
            assert_eq!(broker.ecs_get("app", Some(TOKEN)).await.status, 200);
            sent += 1.0;
        }
        let flushed = eventually(Duration::from_secs(10), || async {
            audit_total(&broker).await == sent
        })
        .await;
        assert!(flushed, "every record is counted once: {}", broker.logs());
    }
    let dropped = broker
        .metric("sts_broker_audit_records_total{outcome=\"dropped\"}")
        .await
        .unwrap_or(0.0);
    assert!(
        dropped > 0.0,
        "the disk was full: records must count as dropped"
    );
    // Room again: the next records are written and start on a fresh line.
    std::fs::remove_file(&filler).unwrap();
    for _ in 0..5 {
        assert_eq!(broker.ecs_get("app", Some(TOKEN)).await.status, 200);
        sent += 1.0;
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            audit_total(&broker).await == sent
        })
        .await
    );
    let written = broker
        .metric("sts_broker_audit_records_total{outcome=\"written\"}")
        .await
        .unwrap();
    let text = std::fs::read_to_string(&trail).unwrap();
    assert!(text.ends_with('\n'));
    let mut lines = 0.0;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a cut-short line is in the trail ({e}): {line:?}"));
        assert_eq!(v["role"], "app");
        lines += 1.0;
    }
    assert_eq!(
        lines, written,
        "written counts exactly the lines in the file"
    );
    let warnings = broker
        .log_events()
        .iter()
        .filter(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("cannot write the audit trail"))
        })
        .count();
    // One warning per 10 s at most (however long a loaded machine made this test take).
    let allowed = 1 + usize::try_from(started.elapsed().as_secs() / 10).unwrap();
    assert!(
        (1..=allowed).contains(&warnings),
        "rate-limited warnings: {warnings} in {:?}",
        started.elapsed()
    );
}

/// Defect 7: a reload refuses what is not a regular file, at once, and keeps serving; a FIFO
/// at a token path no longer wedges the loop that handles SIGTERM.
#[tokio::test]
async fn reload_refuses_fifos_and_devices_and_still_hears_sigterm() {
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let token_file = dir.token_file("app.token", TOKEN);
    let config = config_head(&sts.url())
        + &format!(
            "\n[[role]]\nname = \"app\"\narn = \"arn:aws:iam::123456789012:role/app\"\ntoken_files = [{:?}]\n",
            token_file.display().to_string()
        );
    let mut broker = TestBroker::start(&dir, &config).await;
    broker.wait_ready(Duration::from_secs(10)).await;
    let rss_before = broker.rss_kib();

    // A symlink to /dev/zero: refused, memory flat.
    std::fs::remove_file(&token_file).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &token_file).unwrap();
    broker.signal("HUP");
    assert!(
        broker
            .wait_for_metric("sts_broker_config_reloads_total{outcome=\"error\"}", 1.0)
            .await,
        "{}",
        broker.logs()
    );
    assert!(
        broker.logs().contains("not a regular file"),
        "{}",
        broker.logs()
    );
    assert!(
        broker.rss_kib() < rss_before + 50 * 1024,
        "memory grew reading /dev/zero"
    );

    // A FIFO nobody writes to: refused at once, not waited on.
    std::fs::remove_file(&token_file).unwrap();
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&token_file)
            .status()
            .unwrap()
            .success()
    );
    broker.signal("HUP");
    assert!(
        broker
            .wait_for_metric("sts_broker_config_reloads_total{outcome=\"error\"}", 2.0)
            .await,
        "{}",
        broker.logs()
    );
    // The old configuration still serves.
    assert_eq!(broker.ecs_get("app", Some(TOKEN)).await.status, 200);
    broker.signal("TERM");
    let status = broker.wait_exit(Duration::from_secs(15)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM after a FIFO reload: {status:?}"
    );
}

/// Audit records counted so far, written or dropped.
async fn audit_total(b: &TestBroker) -> f64 {
    b.metric("sts_broker_audit_records_total{outcome=\"written\"}")
        .await
        .unwrap_or(0.0)
        + b.metric("sts_broker_audit_records_total{outcome=\"dropped\"}")
            .await
            .unwrap_or(0.0)
}

/// Defect 9: under a low descriptor limit, a flood on ECS leaves the admin listener
/// reachable, and accept errors neither spin nor flood the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_descriptor_limit_leaves_admin_reachable_under_an_ecs_flood() {
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let broker = TestBroker::start_wrapped(
        &dir,
        &(config_head(&sts.url()) + &role("app", "")),
        "info",
        &["prlimit", "--nofile=96:96"],
        &[],
    )
    .await;
    broker.wait_ready(Duration::from_secs(10)).await;
    // 100 connections (more than the 24 the budget allows, fewer than the backlog holds)
    // that send half a request head and wait (cut after 10 s).
    let mut flood = Vec::new();
    for _ in 0..100 {
        if let Ok(mut s) = TcpStream::connect(broker.ecs).await {
            let _ = s.write_all(b"GET /v1/credentials/app HTTP/1.1\r\n").await;
            flood.push(s);
        }
    }
    let started = std::time::Instant::now();
    let admin = tokio::time::timeout(Duration::from_secs(5), broker.admin_get("/healthz")).await;
    assert!(
        matches!(&admin, Ok(r) if r.status == 200),
        "admin unreachable during an ECS flood under RLIMIT_NOFILE 96: {admin:?}\n{}",
        broker.logs()
    );
    eprintln!("admin answered in {:?} during the flood", started.elapsed());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let accept_warnings = broker
        .log_events()
        .iter()
        .filter(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("accept failed"))
        })
        .count();
    assert!(
        accept_warnings <= 3,
        "accept errors logged {accept_warnings} times"
    );
    let budget = broker
        .log_events()
        .into_iter()
        .find(|e| e["message"] == "file descriptor budgets")
        .expect("the budgets are logged");
    assert_eq!(budget["nofile"], 96);
    assert_eq!(budget["listener_budget"], 24);
    drop(flood);
}

/// Questionable points, decided: ambiguous heads are 400, an absolute-form target is what the
/// Host check sees, `Forwarded` is refused on IMDS, a half-closed client gets its answer.
#[tokio::test]
async fn ambiguous_requests_forwarded_and_half_close() {
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let config = config_head(&sts.url())
        + &role("app", "")
        + &role("lazy", "prefetch = false")
        + "\n[imds]\nlisten = \"127.0.0.1:0\"\nrole = \"app\"\nmin_remaining = \"20m\"\n";
    let broker = TestBroker::start(&dir, &config).await;
    broker.wait_ready(Duration::from_secs(10)).await;
    let get = |extra: &str| {
        format!("GET /v1/credentials/app HTTP/1.1\r\n{extra}Connection: close\r\n\r\n")
    };
    let cases = [
        (
            get(&format!(
                "Host: 127.0.0.1\r\nHost: evil.example\r\nAuthorization: {TOKEN}\r\n"
            )),
            400,
            "two Host headers",
        ),
        (
            get(&format!(
                "Host: 127.0.0.1\r\nAuthorization: {TOKEN}\r\nAuthorization: wrong-token-0123456789\r\n"
            )),
            400,
            "two Authorization headers",
        ),
        (
            get(&format!("Authorization: {TOKEN}\r\n")),
            400,
            "HTTP/1.1 without Host",
        ),
        (
            format!(
                "GET http://evil.example/v1/credentials/app HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {TOKEN}\r\nConnection: close\r\n\r\n"
            ),
            403,
            "absolute-form target naming a rebinding host",
        ),
        (
            format!("GET /v1/credentials/app HTTP/1.0\r\nAuthorization: {TOKEN}\r\n\r\n"),
            200,
            "HTTP/1.0 without Host",
        ),
    ];
    for (raw, want, what) in cases {
        let r = raw_request(broker.ecs, raw.as_bytes()).await;
        assert_eq!(r.status, want, "{what}: {}", r.body);
    }
    let imds = broker.imds.unwrap();
    for header in [
        "Forwarded: for=192.0.2.60;proto=http",
        "X-Forwarded-For: 192.0.2.60",
    ] {
        let raw = format!(
            "PUT /latest/api/token HTTP/1.1\r\nHost: 127.0.0.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n{header}\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(
            raw_request(imds, raw.as_bytes()).await.status,
            403,
            "{header}"
        );
    }
    // Half-close: the request, then FIN; the answer still comes, even when it takes a while
    // (a cold fetch of a lazy role from a slow STS).
    sts.set_delay(Duration::from_millis(800));
    let mut s = TcpStream::connect(broker.ecs).await.unwrap();
    let cold = format!(
        "GET /v1/credentials/lazy HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {TOKEN}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(cold.as_bytes()).await.unwrap();
    s.shutdown().await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "half-closed client: {text:?}"
    );
}

/// Questionable points, decided: IMDS tokens are random and live the whole TTL granted.
#[tokio::test]
async fn imds_tokens_are_unique_and_live_their_whole_ttl() {
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let config = config_head(&sts.url())
        + &role("app", "")
        + "\n[imds]\nlisten = \"127.0.0.1:0\"\nrole = \"app\"\nmin_remaining = \"20m\"\n";
    let broker = TestBroker::start(&dir, &config).await;
    broker.wait_ready(Duration::from_secs(10)).await;
    let (a, b) = tokio::join!(broker.imds_token("60"), broker.imds_token("60"));
    assert_ne!(a, b, "two clients in the same second got the same token");
    // A 1-second token still works 700 ms later, whenever in the second it was issued
    // (before: it died at the next whole second, as early as a few ms after issue).
    for _ in 0..3 {
        let token = broker.imds_token("1").await;
        let issued = std::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(700)).await;
        let r = broker
            .imds_request(
                "GET",
                "/latest/meta-data/iam/security-credentials/",
                &[("X-aws-ec2-metadata-token", &token)],
            )
            .await;
        if issued.elapsed() < Duration::from_millis(950) {
            assert_eq!(
                r.status,
                200,
                "a 1 s token refused {:?} after issue",
                issued.elapsed()
            );
        }
    }
}

/// Questionable points, decided: `/readyz` waits for the IMDS role to clear the stricter IMDS
/// `min_remaining`, so "ready" means IMDS answers too.
#[tokio::test]
async fn readyz_reflects_the_imds_floor() {
    let sts = FakeSts::start().await;
    // 25 minutes: above [refresh].min_remaining (15m), below the IMDS floor (30m).
    sts.set_lifetime(Duration::from_secs(25 * 60));
    let dir = ConfigDir::new();
    let config = config_head(&sts.url())
        + &role("app", "")
        + "\n[imds]\nlisten = \"127.0.0.1:0\"\nrole = \"app\"\nmin_remaining = \"30m\"\n";
    let broker = TestBroker::start(&dir, &config).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            broker.ecs_get("app", Some(TOKEN)).await.status == 200
        })
        .await
    );
    let r = broker.admin_get("/readyz").await;
    assert_eq!(r.status, 503, "ECS can answer but IMDS cannot: {}", r.body);
    assert!(r.body.contains("app"), "{}", r.body);
    let imds = broker.imds_credentials("app").await;
    assert_eq!(imds.status, 503, "IMDS really cannot answer");
}
