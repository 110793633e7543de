//! Signals, reloads and the one-shot subcommands.

use std::process::Command;
use std::time::Duration;

use crate::fake_sts::FakeSts;
use crate::helpers::*;

#[tokio::test]
async fn sighup_reload_adds_and_removes_roles_and_a_bad_config_keeps_the_old_one() {
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let head = config_head(&sts.url());
    let broker = TestBroker::start(&dir, &(head.clone() + &role("app", ""))).await;
    broker.wait_ready(Duration::from_secs(10)).await;
    let app_key = broker.ecs_get("app", Some(TOKEN)).await.json()["AccessKeyId"].clone();

    // A good reload adds a role; the unchanged role keeps its credentials (no re-assume).
    let db_token = dir.token_file("db.token", "db-token-0123456789abcdef");
    let with_db = head.clone()
        + &role("app", "")
        + &format!(
            "\n[[role]]\nname = \"db\"\narn = \"arn:aws:iam::123456789012:role/db\"\ntoken_files = [{:?}]\n",
            db_token.display().to_string()
        );
    dir.write("config.toml", &with_db);
    broker.signal("HUP");
    let added = eventually(Duration::from_secs(10), || async {
        broker
            .ecs_get("db", Some("db-token-0123456789abcdef"))
            .await
            .status
            == 200
    })
    .await;
    assert!(added, "role db served after reload:\n{}", broker.logs());
    assert_eq!(
        broker.ecs_get("app", Some(TOKEN)).await.json()["AccessKeyId"],
        app_key
    );
    assert_eq!(sts.calls(), 2, "only the new role was assumed");
    assert_eq!(broker.reloads("ok").await, Some(1.0));

    // Token files are re-read on reload: rotate db's token.
    dir.token_file("db.token", "db-token-rotated-0123456789");
    broker.signal("HUP");
    let rotated = eventually(Duration::from_secs(10), || async {
        broker
            .ecs_get("db", Some("db-token-rotated-0123456789"))
            .await
            .status
            == 200
    })
    .await;
    assert!(rotated, "rotated token accepted after reload");
    assert_eq!(
        broker
            .ecs_get("db", Some("db-token-0123456789abcdef"))
            .await
            .status,
        401
    );

    // A bad config is rejected, counted, logged; the old one keeps serving.
    dir.write(
        "config.toml",
        &(head.clone() + "\n[[role]]\nname = \"broken\"\narn = \"nope\"\n"),
    );
    broker.signal("HUP");
    let counted = broker
        .wait_for_metric("sts_broker_config_reloads_total{outcome=\"error\"}", 1.0)
        .await;
    assert!(counted, "{}", broker.logs());
    // The metric can be scraped before the log line has been read off the pipe.
    let logged = eventually(Duration::from_secs(5), || async {
        broker.logs().contains("reload failed")
    })
    .await;
    assert!(logged, "{}", broker.logs());
    assert!(
        broker
            .logs()
            .contains("role \\\"broken\\\": key \\\"arn\\\""),
        "the log names role and key:\n{}",
        broker.logs()
    );
    assert_eq!(broker.ecs_get("app", Some(TOKEN)).await.status, 200);
    assert_eq!(
        broker
            .ecs_get("db", Some("db-token-rotated-0123456789"))
            .await
            .status,
        200
    );

    // Changing a listen address needs a restart: rejected, counted.
    let moved = crate::test_config::TestConfig::new(&sts.url())
        .set("ecs", "listen", "127.0.0.2:0")
        .role(crate::test_config::Role::new("app"));
    dir.write("config.toml", &moved.render());
    broker.signal("HUP");
    let rejected = broker
        .wait_for_metric("sts_broker_config_reloads_total{outcome=\"rejected\"}", 1.0)
        .await;
    assert!(rejected, "{}", broker.logs());

    // Removing a role stops serving it.
    dir.write("config.toml", &(head.clone() + &role("app", "")));
    broker.signal("HUP");
    let removed = eventually(Duration::from_secs(10), || async {
        broker.roles().await.len() == 1
    })
    .await;
    assert!(removed);
    assert_eq!(
        broker
            .ecs_get("db", Some("db-token-rotated-0123456789"))
            .await
            .status,
        401
    );
    assert_eq!(
        broker.ecs_get("app", Some(TOKEN)).await.json()["AccessKeyId"],
        app_key
    );
}

#[tokio::test]
async fn sigterm_and_sigint_exit_zero() {
    let sts = FakeSts::start().await;
    for sig in ["TERM", "INT"] {
        let dir = ConfigDir::new();
        let mut broker =
            TestBroker::start(&dir, &(config_head(&sts.url()) + &role("app", ""))).await;
        broker.wait_ready(Duration::from_secs(10)).await;
        broker.signal(sig);
        let status = broker.wait_exit(Duration::from_secs(15)).await;
        let status = status.unwrap_or_else(|| panic!("no exit after SIG{sig}:\n{}", broker.logs()));
        assert!(status.success(), "SIG{sig}: {status}:\n{}", broker.logs());
        assert!(broker.logs().contains("stopped"), "{}", broker.logs());
    }
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish() {
    let sts = FakeSts::start().await;
    sts.set_delay(Duration::from_millis(800));
    let dir = ConfigDir::new();
    let mut broker = TestBroker::start(
        &dir,
        &(config_head(&sts.url()) + &role("lazy", "prefetch = false")),
    )
    .await;
    let addr = broker.ecs;
    let inflight = tokio::spawn(async move {
        request(
            addr,
            "GET",
            "/v1/credentials/lazy",
            &[("Authorization", TOKEN)],
        )
        .await
    });
    assert!(sts.wait_for_calls(1, Duration::from_secs(5)).await);
    broker.signal("TERM");
    let r = inflight.await.unwrap();
    assert_eq!(
        r.status, 200,
        "the request in flight at SIGTERM completes: {}",
        r.body
    );
    assert!(
        broker
            .wait_exit(Duration::from_secs(15))
            .await
            .unwrap()
            .success()
    );
}

fn run_cli(args: &[&str], dir: &ConfigDir) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    broker_env(&mut cmd, dir.path(), "warn");
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_lists_every_problem_and_exits_78() {
    let dir = ConfigDir::new();
    let path = dir.write(
        "bad.toml",
        r#"
[sts]
region = "us-east-1"
[[role]]
name = "a"
arn = "arn:aws:iam::123456789012:role/a"
session_name = "x"
duration = "13h"
external_id = "SECRET-MARKER-EXT-"
tags = { team = "a" }
transitive_tag_keys = ["env"]
[[role]]
name = "b"
arn = "arn:aws:iam::1234:role/b"
policy = "{"
"#,
    );
    let (code, _out, err) = run_cli(&["check", "-c", path.to_str().unwrap()], &dir);
    assert_eq!(code, 78, "{err}");
    for want in [
        "role \"a\": key \"session_name\"",
        "role \"a\": key \"duration\"",
        "role \"a\": key \"transitive_tag_keys\"",
        "role \"b\": key \"arn\"",
        "role \"b\": key \"policy\"",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    assert!(
        err.contains("bad.toml: "),
        "each problem names the file:\n{err}"
    );
    assert!(!err.contains("SECRET-MARKER"), "{err}");
}

#[test]
fn check_prints_a_summary_without_secrets() {
    let dir = ConfigDir::new();
    let token = dir.token_file("app.token", "SECRET-MARKER-token-0123");
    let path = dir.write(
        "good.toml",
        &format!(
            "[sts]\nregion = \"us-east-1\"\n[[role]]\nname = \"app\"\narn = \"arn:aws:iam::123456789012:role/app\"\nexternal_id = \"SECRET-MARKER-ext\"\ntoken_files = [{:?}]\n",
            token.display().to_string()
        ),
    );
    let (code, out, err) = run_cli(&["check", "-c", path.to_str().unwrap()], &dir);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("config OK: 1 role(s)"), "{out}");
    assert!(
        out.contains("role \"app\": kind assume_role arn:aws:iam::123456789012:role/app"),
        "{out}"
    );
    assert!(
        !out.contains("SECRET-MARKER") && !err.contains("SECRET-MARKER"),
        "{out}{err}"
    );

    // STS_BROKER_CONFIG names the file when -c is absent.
    let mut cmd = Command::new(BIN);
    cmd.arg("check");
    broker_env(&mut cmd, dir.path(), "warn");
    cmd.env("STS_BROKER_CONFIG", &path);
    assert!(cmd.status().unwrap().success());

    let (code, out, _) = run_cli(
        &["env", "-c", path.to_str().unwrap(), "--role", "app"],
        &dir,
    );
    assert_eq!(code, 0);
    let (exports, relative) = out.split_at(out.find('#').unwrap_or(out.len()));
    assert_eq!(
        exports,
        format!(
            "export AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:8170/v1/credentials/app\nexport AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE={}\n",
            token.display()
        )
    );
    // Not at 169.254.170.2:80: the relative URI is printed commented out (it would win over
    // FULL_URI in botocore and Rust, and point them at an address nobody listens on).
    let id = relative
        .split("# export AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=/v2/credentials/")
        .nth(1)
        .unwrap_or_else(|| panic!("no relative URI line in {out:?}"));
    assert!(
        id.trim_end().len() == 32 && id.trim_end().bytes().all(|b| b.is_ascii_hexdigit()),
        "{out:?}"
    );
    let (code, _, err) = run_cli(
        &["env", "-c", path.to_str().unwrap(), "--role", "nope"],
        &dir,
    );
    assert_ne!(code, 0);
    assert!(err.contains("no role named \"nope\""), "{err}");

    let (_, out, _) = run_cli(&["--version"], &dir);
    assert!(out.starts_with("sts-broker "), "{out}");
}

// Multi-threaded: the CLI runs as a blocking child process while the fake STS answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_process_prints_version_1_json() {
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let path = dir.write("c.toml", &(config_head(&sts.url()) + &role("app", "")));
    let (code, out, err) = run_cli(
        &[
            "credential-process",
            "-c",
            path.to_str().unwrap(),
            "--role",
            "app",
        ],
        &dir,
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["Version"], 1);
    assert!(v["AccessKeyId"].as_str().unwrap().starts_with("ASIAFAKE"));
    assert_fake_secrets(&v, "SessionToken");
    assert!(v["Expiration"].as_str().unwrap().ends_with('Z'));
    assert_eq!(sts.calls(), 1);
    assert!(!err.contains("fake-secret"), "{err}");
}

#[tokio::test]
async fn systemd_notify_ready_watchdog_and_stopping() {
    let sts = FakeSts::start().await;
    sts.set_delay(Duration::from_millis(300));
    let dir = ConfigDir::new();
    let (mut broker, mut notify) =
        NotifySocket::start_broker(&sts, &dir, &[("WATCHDOG_USEC", "400000")]).await;
    let mut received = Vec::new();
    // READY=1 only once the credentials are in (the fake STS answers after 300 ms).
    while !received.iter().any(|m: &String| m.contains("READY=1")) {
        received.push(notify.recv().await);
    }
    assert!(sts.calls() >= 1, "ready before any STS call: {received:?}");
    assert!(
        received.iter().any(|m| m.contains("STATUS=")),
        "{received:?}"
    );
    // Watchdog pings every 200 ms (half of WATCHDOG_USEC).
    let mut pings = 0;
    while pings < 3 {
        if notify.recv().await.contains("WATCHDOG=1") {
            pings += 1;
        }
    }
    broker.signal("TERM");
    let mut stopping = false;
    for _ in 0..20 {
        if notify.recv().await.contains("STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "STOPPING=1 on SIGTERM");
    assert!(
        broker
            .wait_exit(Duration::from_secs(15))
            .await
            .unwrap()
            .success()
    );
}

/// Type=notify without WatchdogSec= (NOTIFY_SOCKET set, no WATCHDOG_USEC): once ready there is
/// nothing more to notify, and the broker must go on serving (it used to abort right after
/// READY=1, found by bench/footprint.sh).
#[tokio::test]
async fn systemd_notify_without_a_watchdog_keeps_serving_after_ready() {
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let (mut broker, mut notify) = NotifySocket::start_broker(&sts, &dir, &[]).await;
    while !notify.recv().await.contains("READY=1") {}
    // The supervisor's next turns come after READY=1: give them time, then check it still runs.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(broker.ecs_get("app", Some(TOKEN)).await.status, 200);
    assert!(
        broker.wait_exit(Duration::from_millis(10)).await.is_none(),
        "the broker exited after READY=1:\n{}",
        broker.logs()
    );
}

/// The systemd notify socket a broker under test reports to (`NOTIFY_SOCKET`).
struct NotifySocket {
    socket: tokio::net::UnixDatagram,
    buf: Vec<u8>,
}

impl NotifySocket {
    /// Starts the binary with one role, `NOTIFY_SOCKET` pointing at a new socket, and `env`.
    async fn start_broker(
        sts: &FakeSts,
        dir: &ConfigDir,
        env: &[(&str, &str)],
    ) -> (TestBroker, NotifySocket) {
        let path = dir.path().join("notify.sock");
        let socket = tokio::net::UnixDatagram::bind(&path).unwrap();
        let path = path.display().to_string();
        let mut all = vec![("NOTIFY_SOCKET", path.as_str())];
        all.extend_from_slice(env);
        let config = config_head(&sts.url()) + &role("app", "");
        let broker = TestBroker::start_wrapped(dir, &config, "info", &[], &all).await;
        let buf = vec![0u8; 4096];
        (broker, NotifySocket { socket, buf })
    }

    /// The next notification, within 10 s.
    async fn recv(&mut self) -> String {
        let n = tokio::time::timeout(Duration::from_secs(10), self.socket.recv(&mut self.buf))
            .await
            .expect("a notification within 10 s")
            .unwrap();
        String::from_utf8_lossy(&self.buf[..n]).into_owned()
    }
}
