//! Local users on an EC2-like host (DESIGN §10), in network namespaces with real nftables.
//!
//! Topology: namespace `host` runs moto, the broker (as UID 2900, its "own user") and the
//! clients; namespace `metadata` holds a stand-in for the real IMDS at 169.254.169.254:80,
//! reached from `host` over a veth pair as on EC2. The rules are applied and removed in `host`
//! by the very commands of the shipped systemd drop-in (`sts-broker redirect-rules | nft -f -`).
//!
//! - UIDs 2001 and 2002 (no passwd entry) run boto3 with no endpoint variable and get their own
//!   role's assumed-role ARN from moto through the broker;
//! - UID 2003 and root still reach the stand-in IMDS; so does the broker's own default chain;
//! - token-less ECS: allowed for a listed user, refused for another role and for an unlisted
//!   user; a connection from the other namespace is never attributed, even when its source
//!   port equals a port a listed user listens on in `host`;
//! - the audit trail carries the UID; a reload that swaps the users applies at once;
//! - `redirect-rules --remove` leaves `nft list ruleset` as it was.
//!
//! Clients run with `setpriv --reuid N`; they keep CAP_DAC_READ_SEARCH only so that they can
//! read the test venv and binary wherever the checkout lives (the socket owner is still N).

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::helpers::*;
use crate::netns::{Netns, NsMoto, WAIT_READY, namespaces_available, rand_suffix};

const BROKER_UID: u32 = 2900;
const MOTO_PORT: u16 = 5000;
const ECS_PORT: u16 = 8170;
const IMDS_PORT: u16 = 8169;

/// The stand-in for the real IMDS: IMDSv2 with one instance role whose credentials are the
/// broker's own source credentials; `GET /_seen` lists the requests it answered.
const STANDIN_IMDS: &str = r#"
import json, sys, time
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
seen = []
exp = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(time.time() + 6 * 3600))
creds = {"Code": "Success", "LastUpdated": exp, "Type": "AWS-HMAC",
         "AccessKeyId": "ASIASTANDININSTANCE1", "SecretAccessKey": "standin-secret",
         "Token": "standin-session-token", "Expiration": exp}
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def log_message(self, *a):
        pass
    def reply(self, code, body, headers=()):
        b = body.encode()
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def do_PUT(self):
        seen.append(["PUT", self.path])
        if self.path == "/latest/api/token":
            ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "21600")
            self.reply(200, "standin-imds-token", [("X-aws-ec2-metadata-token-ttl-seconds", ttl)])
        else:
            self.reply(404, "")
    def do_GET(self):
        p = self.path.rstrip("/")
        if p == "/_seen":
            return self.reply(200, json.dumps(seen))
        seen.append(["GET", self.path])
        if p in ("/latest/meta-data/iam/security-credentials",
                 "/latest/meta-data/iam/security-credentials-extended"):
            self.reply(200, "instance-role")
        elif p == "/latest/meta-data/iam/security-credentials/instance-role":
            self.reply(200, json.dumps(creds))
        elif p == "/latest/meta-data/iam/security-credentials-extended/instance-role":
            self.reply(200, json.dumps(dict(creds, AccountId="123456789012")))
        else:
            self.reply(404, "")
ThreadingHTTPServer(("169.254.169.254", 80), H).serve_forever()
"#;

/// A process killed on drop.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `setpriv` arguments running a command as `uid` (see the module docs for the capability).
fn as_user(uid: u32) -> Vec<String> {
    vec![
        "setpriv".into(),
        format!("--reuid={uid}"),
        format!("--regid={uid}"),
        "--clear-groups".into(),
        "--inh-caps=+dac_read_search".into(),
        "--ambient-caps=+dac_read_search".into(),
    ]
}

/// Runs Python `script` in `ns` as `uid` (root when `None`) with a clean environment.
fn py(ns: &Netns, uid: Option<u32>, home: &std::path::Path, script: &str) -> String {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name]);
    if let Some(uid) = uid {
        cmd.args(as_user(uid));
    }
    cmd.args([
        "env",
        "-i",
        "PATH=/usr/bin:/bin",
        &format!("HOME={}", home.display()),
        "AWS_CONFIG_FILE=/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE=/dev/null",
        "AWS_DEFAULT_REGION=us-east-1",
    ]);
    cmd.arg(venv_bin("python")).args(["-c", script]);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "python as {uid:?} in {} failed: {}\n{}",
        ns.name,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// boto3 with no endpoint variable: the credential method and the caller's ARN at moto.
const BOTO3_WHOAMI: &str = "import boto3\n\
s = boto3.session.Session()\n\
print(s.get_credentials().method)\n\
print(s.client('sts', endpoint_url='http://127.0.0.1:5000').get_caller_identity()['Arn'])\n";

/// IMDSv2 by hand at the standard address: the role listing.
const IMDS_LISTING: &str = r#"
import urllib.request, urllib.error
base = 'http://169.254.169.254'
t = urllib.request.urlopen(urllib.request.Request(base + '/latest/api/token', method='PUT',
    headers={'X-aws-ec2-metadata-token-ttl-seconds': '60'}), timeout=5).read().decode()
try:
    r = urllib.request.urlopen(urllib.request.Request(
        base + '/latest/meta-data/iam/security-credentials/',
        headers={'X-aws-ec2-metadata-token': t}), timeout=5)
    print(r.status, r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code)
"#;

/// A token-less ECS GET of `url`, optionally from source port `sport`: prints the status.
fn ecs_tokenless(url: &str, sport: Option<u16>) -> String {
    format!(
        "import http.client\nfrom urllib.parse import urlsplit\nu = urlsplit({url:?})\n\
         c = http.client.HTTPConnection(u.hostname, u.port, timeout=5{})\n\
         c.request('GET', u.path)\nprint(c.getresponse().status)\n",
        sport.map_or(String::new(), |p| format!(
            ", source_address=('0.0.0.0', {p})"
        ))
    )
}

fn nft_ruleset(ns: &Netns) -> String {
    let out = ns
        .command("nft")
        .args(["list", "ruleset"])
        .output()
        .unwrap();
    assert!(out.status.success(), "nft list ruleset failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the shipped systemd drop-in's `ExecStartPre=` (apply) or `ExecStopPost=` (remove)
/// command inside `ns`, as systemd would: `$$` and `%%` unescaped, the binary under test in
/// place of /usr/local/bin/sts-broker, the config named by `STS_BROKER_CONFIG` (the unit's).
fn apply_rules(ns: &Netns, config: &std::path::Path, remove: bool) {
    let dropin = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/examples/sts-broker.service.d/imds-redirect.conf"
    ))
    .unwrap();
    let key = if remove {
        "ExecStopPost=+/bin/sh -c '"
    } else {
        "ExecStartPre=+/bin/sh -c '"
    };
    let line = dropin
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in the drop-in"));
    let script = line
        .strip_suffix('\'')
        .unwrap()
        .replace("$$", "$")
        .replace("%%", "%")
        .replace("/usr/local/bin/sts-broker", BIN);
    let out = ns
        .command("sh")
        .args(["-c", &script])
        .env("STS_BROKER_CONFIG", config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn config(dir: &ConfigDir, billing: &str, reports: &str) -> String {
    let audit = dir.path().join("audit");
    format!(
        r#"
[sts]
region = "us-east-1"
endpoint = "http://127.0.0.1:{MOTO_PORT}"
timeout = "3s"
[source]
kind = "default"
[ecs]
listen = ["127.0.0.1:{ECS_PORT}", "10.77.0.1:{ECS_PORT}"]
[imds]
listen = "127.0.0.1:{IMDS_PORT}"
[admin]
listen = "127.0.0.1:9469"
[audit]
path = "{}/audit.jsonl"
[[role]]
name = "billing"
arn = "arn:aws:iam::123456789012:role/billing"
session_name = "billing-on-host"
local_users = [{billing}]
[[role]]
name = "reports"
arn = "arn:aws:iam::123456789012:role/reports"
session_name = "reports-on-host"
local_users = [{reports}]
tokens = ["{TOKEN}"]
"#,
        audit.display()
    )
}

fn nft_available() -> bool {
    let ok = Command::new("sh")
        .args(["-c", "command -v nft || test -x /usr/sbin/nft"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "SKIPPED: nft (Debian nftables) is not installed; run scripts/setup-test-deps.sh"
        );
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_local_user_gets_its_own_role_and_the_host_keeps_its_imds() {
    if !namespaces_available() || !nft_available() {
        return;
    }
    // --- two namespaces: the host and the "real" metadata service behind a veth ---
    let host = Netns::create("luh");
    let meta = Netns::create("lum");
    host.veth(Some("10.77.0.1/24"), &meta, Some("10.77.0.2/24"));
    host.exec(&[
        "ip",
        "route",
        "add",
        "169.254.169.254/32",
        "via",
        "10.77.0.2",
    ]);
    meta.exec(&["ip", "addr", "add", "169.254.169.254/32", "dev", "lo"]);

    let dir = ConfigDir::new();
    let home = dir.path().to_path_buf();
    // The broker runs as its own unprivileged user: it reads the config, writes the audit.
    std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let audit_dir = home.join("audit");
    std::fs::create_dir(&audit_dir).unwrap();
    std::os::unix::fs::chown(&audit_dir, Some(BROKER_UID), Some(BROKER_UID)).unwrap();

    let _standin = Killed(
        meta.command(venv_bin("python").to_str().unwrap())
            .args(["-c", STANDIN_IMDS])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let _moto = NsMoto::start(&host, MOTO_PORT);
    let wait = |url: &str| format!("import sys; sys.argv = ['', {url:?}]\n{WAIT_READY}");
    py(&host, None, &home, &wait("http://169.254.169.254/_seen"));
    py(&host, None, &home, &wait("http://127.0.0.1:5000/moto-api/"));

    // --- rules first (as the systemd drop-in does), then the broker ---
    let ruleset_before = nft_ruleset(&host);
    let config_path = dir.write("config.toml", &config(&dir, "2001", "2002"));
    apply_rules(&host, &config_path, false);
    let applied = nft_ruleset(&host);
    assert!(
        applied.contains(
            "meta skuid { 2001, 2002 } ip daddr 169.254.169.254 tcp dport 80 redirect to :8169"
        ),
        "{applied}"
    );

    let mut wrapper: Vec<String> = host.wrapper().iter().map(ToString::to_string).collect();
    // The default chain: no keys in the environment, IMDS allowed.
    wrapper.extend(
        [
            "env",
            "-u",
            "AWS_ACCESS_KEY_ID",
            "-u",
            "AWS_SECRET_ACCESS_KEY",
            "-u",
            "AWS_EC2_METADATA_DISABLED",
        ]
        .map(String::from),
    );
    wrapper.extend(as_user(BROKER_UID));
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let config_text = std::fs::read_to_string(&config_path).unwrap();
    let mut broker =
        TestBroker::start_wrapped(&dir, &config_text, "info,sts_broker=debug", &wrapper, &[]).await;
    py(&host, None, &home, &wait("http://127.0.0.1:9469/readyz"));

    // The broker's own [source] (default chain) took the stand-in's instance credentials.
    let seen = py(
        &host,
        None,
        &home,
        "import urllib.request; print(urllib.request.urlopen('http://169.254.169.254/_seen').read().decode())",
    );
    assert!(
        seen.contains("/latest/meta-data/iam/security-credentials/instance-role")
            || seen.contains("/latest/meta-data/iam/security-credentials-extended/instance-role"),
        "the broker's default chain did not read the stand-in IMDS: {seen}\n{}",
        broker.logs()
    );

    // --- each listed user: its own role through IMDS, no endpoint variable ---
    for (uid, role) in [(2001, "billing"), (2002, "reports")] {
        let out = py(&host, Some(uid), &home, BOTO3_WHOAMI);
        assert_eq!(
            out,
            format!("iam-role\narn:aws:sts::123456789012:assumed-role/{role}/{role}-on-host\n"),
            "UID {uid}\n{}",
            broker.logs()
        );
    }
    // --- everybody else: the real IMDS ---
    for uid in [Some(2003), None] {
        assert_eq!(
            py(&host, uid, &home, IMDS_LISTING).trim(),
            "200 instance-role",
            "{uid:?} must reach the real IMDS"
        );
    }

    // --- token-less ECS ---
    let ecs = |role: &str| format!("http://127.0.0.1:{ECS_PORT}/v1/credentials/{role}");
    let status = |uid: Option<u32>, url: &str| py(&host, uid, &home, &ecs_tokenless(url, None));
    assert_eq!(status(Some(2001), &ecs("billing")).trim(), "200");
    assert_eq!(status(Some(2001), &ecs("reports")).trim(), "403");
    assert_eq!(status(Some(2001), &ecs("nope")).trim(), "404");
    assert_eq!(status(Some(2003), &ecs("billing")).trim(), "401");
    assert_eq!(status(None, &ecs("billing")).trim(), "401");

    // --- another namespace is never attributed, not even through a listener's port ---
    // UID 2001 listens on a port in the host namespace; a client in the metadata namespace
    // connects to the broker from that very source port. The kernel's exact lookup falls
    // back to the listener (owned by 2001): the broker must refuse it.
    let trap_port = 40_000 + u16::try_from(rand_suffix() % 20_000).unwrap();
    let _trap = Killed(
        host.command("setpriv")
            .args(&as_user(2001)[1..])
            .arg(venv_bin("python"))
            .args([
                "-c",
                &format!(
                    "import socket, time\ns = socket.socket()\ns.bind(('0.0.0.0', {trap_port}))\ns.listen()\nprint('ok', flush=True)\ntime.sleep(120)\n"
                ),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    py(
        &host,
        None,
        &home,
        &format!(
            "import socket, time\nfor _ in range(200):\n    try:\n        socket.create_connection(('127.0.0.1', {trap_port}), 1).close(); break\n    except OSError: time.sleep(0.05)\n"
        ),
    );
    let remote = format!("http://10.77.0.1:{ECS_PORT}/v1/credentials/billing");
    assert_eq!(
        py(
            &meta,
            Some(2001),
            &home,
            &ecs_tokenless(&remote, Some(trap_port))
        )
        .trim(),
        "401",
        "a client in another namespace must not pass for the listener's owner"
    );
    assert_eq!(
        py(&meta, Some(2001), &home, &ecs_tokenless(&remote, None)).trim(),
        "401"
    );
    // The broker said why, in its debug log.
    assert!(
        eventually(Duration::from_secs(5), || async {
            broker
                .logs()
                .contains("\"unattributed\":\"not_established\"")
        })
        .await,
        "{}",
        broker.logs()
    );

    // --- the audit trail names the UID ---
    let audit_file = audit_dir.join("audit.jsonl");
    let audited = |want: serde_json::Value| {
        let audit_file = audit_file.clone();
        async move {
            eventually(Duration::from_secs(5), || async {
                std::fs::read_to_string(&audit_file).is_ok_and(|t| {
                    t.lines().any(|l| {
                        let v: serde_json::Value = serde_json::from_str(l).unwrap();
                        want.as_object().unwrap().iter().all(|(k, w)| &v[k] == w)
                    })
                })
            })
            .await
        }
    };
    for want in [
        serde_json::json!({"endpoint": "imds", "uid": 2002, "role": "reports", "status": 200}),
        serde_json::json!({"endpoint": "ecs", "uid": 2001, "role": "billing", "status": 200,
                           "token_fingerprint": null}),
        serde_json::json!({"endpoint": "ecs", "uid": 2001, "role": "reports", "status": 403}),
        serde_json::json!({"endpoint": "ecs", "uid": 2003, "role": null, "status": 401}),
    ] {
        assert!(
            audited(want.clone()).await,
            "{want}\n{:?}",
            std::fs::read_to_string(&audit_file)
        );
    }

    // --- a reload that swaps the users applies at once ---
    let swapped = config(&dir, "2002", "2001");
    std::fs::write(&config_path, swapped).unwrap();
    broker.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), || async {
            broker
                .logs()
                .lines()
                .filter(|l| l.contains("configuration reloaded"))
                .count()
                == 1
        })
        .await,
        "{}",
        broker.logs()
    );
    assert_eq!(
        py(&host, Some(2001), &home, IMDS_LISTING).trim(),
        "200 reports"
    );

    // --- removed: nothing left behind, and UID 2001 is back on the real IMDS ---
    apply_rules(&host, &config_path, true);
    assert_eq!(nft_ruleset(&host), ruleset_before);
    assert_eq!(
        py(&host, Some(2001), &home, IMDS_LISTING).trim(),
        "200 instance-role"
    );
    broker.signal("TERM");
    assert!(broker.wait_exit(Duration::from_secs(15)).await.is_some());
}

#[tokio::test]
async fn the_broker_refuses_to_list_its_own_user() {
    // Run as UID 2900 (no namespace needed): listing 2900 would redirect the broker's own
    // IMDS traffic to itself.
    if !root_with_setpriv() {
        return;
    }
    let dir = ConfigDir::new();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let text =
        config_head("http://127.0.0.1:9") + &role("app", &format!("local_users = [{BROKER_UID}]"));
    let path = dir.write("config.toml", &text);
    let out = Command::new("setpriv")
        .args(&as_user(BROKER_UID)[1..])
        .arg(BIN)
        .args(["serve", "-c"])
        .arg(&path)
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "y")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "role \"app\": key \"local_users\": UID {BROKER_UID} is the broker's own user"
        )),
        "{stderr}"
    );
}

/// Whether this process is root and has setpriv (else says why the test is skipped).
fn root_with_setpriv() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    let setpriv = Command::new("setpriv")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !(root && setpriv) {
        eprintln!("SKIPPED: needs root and setpriv (util-linux) to run a client as another UID");
    }
    root && setpriv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adding_local_users_covers_connections_already_open() {
    // No namespace, no nftables: token-less ECS over loopback. The connection is accepted
    // while no role has local_users (the kernel is not asked then); the reload that adds the
    // client's UID must apply to it at once, on the same kept-alive connection.
    if !root_with_setpriv() {
        return;
    }
    const UID: u32 = 2005;
    let moto = Moto::start().await;
    let dir = ConfigDir::new();
    let config = config_head(&moto.url) + &role("app", "");
    let broker = TestBroker::start(&dir, &config).await;
    let script = format!(
        "import http.client, sys\n\
         c = http.client.HTTPConnection('127.0.0.1', {}, timeout=10)\n\
         def get():\n    c.request('GET', '/v1/credentials/app')\n    r = c.getresponse()\n    r.read()\n    return r.status\n\
         print(get(), c.sock.getsockname()[1], flush=True)\n\
         sys.stdin.readline()\n\
         print(get(), c.sock.getsockname()[1], flush=True)\n",
        broker.ecs.port()
    );
    let mut client = Killed(
        Command::new("setpriv")
            .args(&as_user(UID)[1..])
            .arg(venv_bin("python"))
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines =
        std::io::BufRead::lines(std::io::BufReader::new(client.0.stdout.take().unwrap()));
    let first = lines.next().unwrap().unwrap();
    let (status, port) = first.split_once(' ').unwrap();
    assert_eq!(status, "401", "no local_users yet");

    std::fs::write(
        &broker.config_path,
        config_head(&moto.url) + &role("app", &format!("local_users = [{UID}]")),
    )
    .unwrap();
    broker.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), || async {
            broker.logs().contains("configuration reloaded")
        })
        .await,
        "{}",
        broker.logs()
    );
    std::io::Write::write_all(client.0.stdin.as_mut().unwrap(), b"go\n").unwrap();
    let second = lines.next().unwrap().unwrap();
    assert_eq!(
        second,
        format!("200 {port}"),
        "the same connection, now attributed to UID {UID}\n{}",
        broker.logs()
    );
}
