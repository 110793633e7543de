//! Test harness: the real `sts-broker` binary with a generated config, a raw HTTP client,
//! moto as STS, and paths to the Python venv that holds boto3 and the AWS CLI.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_sts-broker");
/// The access key the broker signs its STS calls with (from the environment).
pub const SOURCE_KEY_ID: &str = "AKIDBROKERSOURCE";
/// A client token used by most tests.
pub const TOKEN: &str = "client-token-0123456789abcdef";

/// The venv with moto, boto3 and the AWS CLI (`scripts/setup-test-deps.sh` makes it).
pub fn venv() -> PathBuf {
    std::env::var_os("STS_BROKER_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv"))
}

/// A tool from the venv; panics with the fix when the venv is missing.
#[track_caller]
pub fn venv_bin(name: &str) -> PathBuf {
    let p = venv().join("bin").join(name);
    assert!(
        p.exists(),
        "{} not found: run scripts/test.sh (or scripts/setup-test-deps.sh) to install the test dependencies",
        p.display()
    );
    p
}

/// A free loopback port (bound then released; the OS does not hand it out again at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` every 25 ms until it is true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_every(Duration::from_millis(25), timeout, f).await
}

/// Polls `f` every `step` until it is true or `timeout` passes, both on tokio's clock: on a
/// paused runtime, simulated time (pick a coarse `step` there: each poll costs real CPU).
pub async fn eventually_every<F, Fut>(step: Duration, timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(step).await;
    }
}

// === config ===

/// Writes config files (and token files) into a temp dir.
pub struct ConfigDir {
    pub dir: tempfile::TempDir,
}

impl ConfigDir {
    pub fn new() -> ConfigDir {
        ConfigDir {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Writes a token file with mode 600 and no trailing newline.
    pub fn token_file(&self, name: &str, token: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = self.dir.path().join(name);
        std::fs::write(&p, token).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// The common head of a test config: STS at `sts_url`, listeners on port 0, fast back-off.
pub fn config_head(sts_url: &str) -> String {
    format!(
        r#"
[sts]
region = "us-east-1"
endpoint = "{sts_url}"
timeout = "2s"
max_calls_per_second = 200

[source]
kind = "static_env"

[refresh]
lead = "40m"
min_remaining = "15m"
jitter = "0s"
backoff_min = "100ms"
backoff_max = "1s"

[ecs]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"
"#
    )
}

/// A `[[role]]` named `name` for `arn:aws:iam::123456789012:role/{name}` allowing `TOKEN`,
/// plus `extra` lines.
pub fn role(name: &str, extra: &str) -> String {
    format!(
        "\n[[role]]\nname = \"{name}\"\narn = \"arn:aws:iam::123456789012:role/{name}\"\ntokens = [\"{TOKEN}\"]\n{extra}\n"
    )
}

// === the broker process ===

/// Where a broker listens, and the requests tests make there. Both the process
/// ([`TestBroker`]) and the in-process broker (`crate::inproc::InProcBroker`) deref to it.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub ecs: SocketAddr,
    pub admin: SocketAddr,
    /// Set when the config has an `[imds]` table.
    pub imds: Option<SocketAddr>,
}

/// A running `sts-broker serve`, killed on drop.
pub struct TestBroker {
    child: Child,
    pub config_path: PathBuf,
    endpoints: Endpoints,
    logs: Arc<Mutex<Vec<String>>>,
}

impl std::ops::Deref for TestBroker {
    type Target = Endpoints;
    fn deref(&self) -> &Endpoints {
        &self.endpoints
    }
}

/// Environment for the broker: nothing inherited but PATH; static source credentials.
pub fn broker_env(cmd: &mut Command, home: &Path, rust_log: &str) {
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("RUST_LOG", rust_log)
        .env("AWS_ACCESS_KEY_ID", SOURCE_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", "source-secret-key")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true");
}

impl TestBroker {
    /// Starts the broker on `config_text` (written to `dir/config.toml`) and waits until it
    /// logs its listen addresses.
    pub async fn start(dir: &ConfigDir, config_text: &str) -> TestBroker {
        Self::start_with_log(dir, config_text, "info").await
    }

    pub async fn start_with_log(dir: &ConfigDir, config_text: &str, rust_log: &str) -> TestBroker {
        Self::start_wrapped(dir, config_text, rust_log, &[], &[]).await
    }

    /// Starts the broker under `wrapper` (e.g. `ip netns exec NAME`) with `extra_env`.
    pub async fn start_wrapped(
        dir: &ConfigDir,
        config_text: &str,
        rust_log: &str,
        wrapper: &[&str],
        extra_env: &[(&str, &str)],
    ) -> TestBroker {
        Self::start_with_args(dir, config_text, rust_log, wrapper, extra_env, &[]).await
    }

    /// Like [`TestBroker::start_wrapped`], with `extra_args` after `serve -c FILE`.
    pub async fn start_with_args(
        dir: &ConfigDir,
        config_text: &str,
        rust_log: &str,
        wrapper: &[&str],
        extra_env: &[(&str, &str)],
        extra_args: &[&str],
    ) -> TestBroker {
        let config_path = dir.write("config.toml", config_text);
        let mut cmd = match wrapper.split_first() {
            None => Command::new(BIN),
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(BIN);
                c
            }
        };
        cmd.arg("serve")
            .arg("-c")
            .arg(&config_path)
            .args(extra_args);
        broker_env(&mut cmd, dir.path(), rust_log);
        cmd.envs(extra_env.iter().copied());
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sts-broker");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("TEST_LOG").is_some() {
                    eprintln!("broker: {line}");
                }
                sink.lock().unwrap().push(line);
            }
        });
        let mut broker = TestBroker {
            child,
            config_path,
            endpoints: Endpoints {
                ecs: "0.0.0.0:0".parse().unwrap(),
                admin: "0.0.0.0:0".parse().unwrap(),
                imds: None,
            },
            logs,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (ecs, admin, imds) = broker.listen_addrs();
            if let (Some(e), Some(a)) = (ecs, admin) {
                // The admin listener is announced last: every other address is known by now.
                broker.endpoints = Endpoints {
                    ecs: e,
                    admin: a,
                    imds,
                };
                return broker;
            }
            if let Ok(Some(status)) = broker.child.try_wait() {
                panic!(
                    "broker exited with {status} at start-up:\n{}",
                    broker.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "broker did not log its listen addresses:\n{}",
                broker.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn listen_addrs(&self) -> (Option<SocketAddr>, Option<SocketAddr>, Option<SocketAddr>) {
        let mut ecs = None;
        let mut admin = None;
        let mut imds = None;
        for line in self.logs.lock().unwrap().iter() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if v["message"] != "listening" {
                continue;
            }
            let addr = v["addr"].as_str().and_then(|a| a.parse().ok());
            match v["endpoint"].as_str() {
                Some("ecs") => ecs = ecs.or(addr),
                Some("admin") => admin = admin.or(addr),
                Some("imds") => imds = imds.or(addr),
                _ => {}
            }
        }
        (ecs, admin, imds)
    }

    /// Everything logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Parsed JSON log lines.
    pub fn log_events(&self) -> Vec<serde_json::Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Resident set size of the broker process, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    /// Sends a signal by name (`HUP`, `TERM`, `INT`, `KILL`).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Waits for `/readyz` to answer 200 (the logs in the failure message).
    pub async fn wait_ready(&self, timeout: Duration) {
        let ok = eventually(timeout, || async {
            self.admin_get("/readyz").await.status == 200
        })
        .await;
        assert!(ok, "broker never became ready:\n{}", self.logs());
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Endpoints {
    /// `GET /v1/credentials/{role}` with `token`.
    pub async fn ecs_get(&self, role: &str, token: Option<&str>) -> HttpResponse {
        let mut headers = Vec::new();
        if let Some(t) = token {
            headers.push(("Authorization", t));
        }
        request(
            self.ecs,
            "GET",
            &format!("/v1/credentials/{role}"),
            &headers,
        )
        .await
    }

    /// An IMDS request (the broker must have an `[imds]` table).
    pub async fn imds_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> HttpResponse {
        request(self.imds.expect("[imds] configured"), method, path, headers).await
    }

    /// `PUT /latest/api/token` with a TTL of `ttl` seconds; the token.
    pub async fn imds_token(&self, ttl: &str) -> String {
        let r = self
            .imds_request(
                "PUT",
                "/latest/api/token",
                &[("X-aws-ec2-metadata-token-ttl-seconds", ttl)],
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
    }

    /// `GET /latest/meta-data/iam/security-credentials/{role}` with a fresh token, as an SDK.
    pub async fn imds_credentials(&self, role: &str) -> HttpResponse {
        let token = self.imds_token("60").await;
        let path = format!("/latest/meta-data/iam/security-credentials/{role}");
        self.imds_request("GET", &path, &[("X-aws-ec2-metadata-token", &token)])
            .await
    }

    pub async fn admin_get(&self, path: &str) -> HttpResponse {
        request(self.admin, "GET", path, &[]).await
    }

    pub async fn admin_post(&self, path: &str) -> HttpResponse {
        request(self.admin, "POST", path, &[]).await
    }

    /// `/v1/roles` as JSON, one entry per role.
    pub async fn roles(&self) -> Vec<serde_json::Value> {
        let r = self.admin_get("/v1/roles").await;
        assert_eq!(r.status, 200, "{}", r.body);
        serde_json::from_str::<Vec<serde_json::Value>>(&r.body).unwrap()
    }

    /// One role's `/v1/roles` entry.
    pub async fn role_status(&self, name: &str) -> serde_json::Value {
        self.roles()
            .await
            .into_iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("role {name} not in /v1/roles"))
    }

    /// Waits (up to 10 s) for a metric series to reach `value`.
    pub async fn wait_for_metric(&self, series: &str, value: f64) -> bool {
        eventually(Duration::from_secs(10), || async {
            self.metric(series).await == Some(value)
        })
        .await
    }

    /// Waits for `/readyz` to answer 200.
    pub async fn wait_ready(&self, timeout: Duration) {
        let ok = eventually(timeout, || async {
            self.admin_get("/readyz").await.status == 200
        })
        .await;
        assert!(ok, "broker never became ready");
    }

    /// `sts_broker_config_reloads_total{outcome}`: `ok`, `error` or `rejected`.
    pub async fn reloads(&self, outcome: &str) -> Option<f64> {
        self.metric(&format!(
            "sts_broker_config_reloads_total{{outcome=\"{outcome}\"}}"
        ))
        .await
    }

    /// The value of a metric series (exact `name{labels}` prefix), if exported.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = self.admin_get("/metrics").await.body;
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
    }
}

/// The distinct values of the JSON string `field` across `answers`, each of which must be a
/// 200 (how many credentials a burst of requests was handed).
#[track_caller]
pub fn distinct(answers: &[HttpResponse], field: &str) -> std::collections::BTreeSet<String> {
    answers
        .iter()
        .map(|r| {
            assert_eq!(r.status, 200, "{}", r.body);
            r.json()[field].as_str().unwrap().to_string()
        })
        .collect()
}

// === a raw HTTP/1.1 client ===

/// A response as read off the wire.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request on a fresh connection (`Connection: close`), `Host` set to the address
/// unless `headers` gives one.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> HttpResponse {
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("Connection: close\r\n\r\n");
    raw_request(addr, head.as_bytes()).await
}

/// Sends `bytes` as is and reads the response until the server closes.
pub async fn raw_request(addr: SocketAddr, bytes: &[u8]) -> HttpResponse {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(bytes).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        buf
    };
    let buf = tokio::time::timeout(Duration::from_secs(15), fut)
        .await
        .expect("response within 15 s");
    parse_response(&buf)
}

fn parse_response(buf: &[u8]) -> HttpResponse {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {text:?}"));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: body.to_string(),
    }
}

// === moto ===

/// A moto server on a free loopback port, killed on drop.
pub struct Moto {
    child: Child,
    pub url: String,
}

impl Moto {
    pub async fn start() -> Moto {
        let bin = venv_bin("moto_server");
        for _attempt in 0..3 {
            let port = free_port();
            let child = Command::new(&bin)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn moto_server");
            let mut moto = Moto {
                child,
                url: format!("http://127.0.0.1:{port}"),
            };
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = moto.child.try_wait() {
                    break; // port taken meanwhile: try another
                }
                if TcpStream::connect(addr).await.is_ok()
                    && request(addr, "GET", "/moto-api/", &[]).await.status == 200
                {
                    return moto;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = moto.child.kill();
        }
        panic!("moto_server did not start");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A command in a clean environment (nothing inherited), as an SDK user would have it.
pub fn clean_client(program: &Path, home: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", home)
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    cmd
}

/// Runs `sts-broker check` on `path` and asserts it exits 78 naming every one of `wants`.
#[track_caller]
pub fn assert_check_reports(dir: &ConfigDir, path: &Path, wants: &[&str]) {
    let mut cmd = Command::new(BIN);
    cmd.args(["check", "-c", path.to_str().unwrap()]);
    broker_env(&mut cmd, dir.path(), "warn");
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    for want in wants {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

/// Asserts `v` holds the fake STS's secret and session token (under `token_key`: `Token` for
/// ECS and IMDS bodies, `SessionToken` for credential_process).
pub fn assert_fake_secrets(v: &serde_json::Value, token_key: &str) {
    let field = |k: &str| v[k].as_str().unwrap_or_else(|| panic!("no {k} in {v}"));
    assert!(field("SecretAccessKey").starts_with("fake-secret-"), "{v}");
    assert!(field(token_key).starts_with("fake-token-"), "{v}");
}
