//! `sts-broker iam-policy` and the AccessDenied diagnosis: the printed documents parse and hold
//! what the config implies, the principal is found with GetCallerIdentity, an AccessDenied
//! names its likely causes everywhere it is reported, and the README's "IAM setup walkthrough"
//! runs as written against moto.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::fake_sts::{FAKE_CALLER_ARN, FakeSts, Scenario};
use crate::helpers::*;

/// Marks the external ID: it must show up in the trust policy and nowhere else.
const EXTERNAL_ID: &str = "SECRET-MARKER-external-id";

/// `sts-broker iam-policy -c CONFIG ARGS…` with the test broker's environment.
fn iam_policy(dir: &ConfigDir, config: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("iam-policy").arg("-c").arg(config).args(args);
    broker_env(&mut cmd, dir.path(), "warn");
    cmd.output().expect("run sts-broker iam-policy")
}

#[track_caller]
fn stdout_ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// A role entry of `kind` with `TOKEN` and extra lines.
fn kind_role(name: &str, kind: &str, extra: &str) -> String {
    format!("\n[[role]]\nname = \"{name}\"\nkind = \"{kind}\"\ntokens = [\"{TOKEN}\"]\n{extra}\n")
}

#[tokio::test]
async fn access_denied_names_the_likely_causes_in_the_log_roles_and_503() {
    let sts = FakeSts::start().await;
    sts.set_scenario(Scenario::AccessDenied);
    let dir = ConfigDir::new();
    let config = config_head(&sts.url())
        + &role(
            "app",
            &format!(
                "tags = {{ team = \"payments\" }}\nsource_identity = \"alice\"\nexternal_id = \"{EXTERNAL_ID}\""
            ),
        )
        + &role("base", "prefetch = false")
        + &role("chained", "source_role = \"base\"\nprefetch = false");
    let broker = TestBroker::start(&dir, &config).await;
    assert!(sts.wait_for_calls(1, Duration::from_secs(5)).await);

    let causes = [
        "STS error AccessDenied: User: arn:aws:iam::123456789012:user/broker is not authorized",
        "the trust policy of arn:aws:iam::123456789012:role/app does not trust the broker's principal",
        "the broker principal's permission policy does not allow sts:AssumeRole on arn:aws:iam::123456789012:role/app",
        "the trust policy (and the caller's permission policy) must allow sts:TagSession because this role sends session tags",
        "must allow sts:SetSourceIdentity because this role sends a source identity",
        "the trust policy's sts:ExternalId condition must equal this role's external_id",
    ];
    let tail = "run `sts-broker iam-policy -c CONFIG --role app`";

    // The 503 body.
    let r = broker.ecs_get("app", Some(TOKEN)).await;
    assert_eq!(r.status, 503, "{}", r.body);
    let body = r.json()["Message"].as_str().unwrap().to_string();
    for c in causes.iter().chain([&tail]) {
        assert!(body.contains(c), "503 body lacks {c:?}:\n{body}");
    }

    // /v1/roles last_error: class and code as classified, the message explained.
    let status = broker.role_status("app").await;
    let err = &status["last_error"];
    assert_eq!(err["class"], "access_denied", "{status}");
    assert_eq!(err["code"], "AccessDenied", "{status}");
    let message = err["message"].as_str().unwrap();
    for c in &causes {
        assert!(message.contains(c), "last_error lacks {c:?}:\n{message}");
    }
    assert!(message.ends_with(tail), "{message}");

    // The log line.
    let logged = broker
        .log_events()
        .into_iter()
        .filter(|e| e["role"] == "app" && e["class"] == "access_denied")
        .filter_map(|e| e["error"].as_str().map(str::to_string))
        .next()
        .unwrap_or_else(|| panic!("no access_denied log line:\n{}", broker.logs()));
    for c in &causes {
        assert!(logged.contains(c), "log line lacks {c:?}:\n{logged}");
    }
    assert!(logged.ends_with(tail), "{logged}");

    // A chained role: the source role's hint, under the source role's name.
    let r = broker.ecs_get("chained", Some(TOKEN)).await;
    assert_eq!(r.status, 503, "{}", r.body);
    let body = r.json()["Message"].as_str().unwrap().to_string();
    assert!(
        body.contains("source role \"base\"")
            && body.contains("run `sts-broker iam-policy -c CONFIG --role base`"),
        "{body}"
    );

    // The external ID is named, never shown.
    let roles = broker.admin_get("/v1/roles").await.body;
    for (what, text) in [
        ("503", body.as_str()),
        ("/v1/roles", &roles),
        ("logs", &broker.logs()),
    ] {
        assert!(!text.contains(EXTERNAL_ID), "{what} shows the external ID");
    }
}

#[tokio::test]
async fn other_sts_errors_get_no_iam_hint() {
    let sts = FakeSts::start().await;
    sts.set_scenario(Scenario::Throttle);
    let dir = ConfigDir::new();
    let broker = TestBroker::start(&dir, &(config_head(&sts.url()) + &role("app", ""))).await;
    assert!(sts.wait_for_calls(1, Duration::from_secs(5)).await);
    let r = broker.ecs_get("app", Some(TOKEN)).await;
    assert_eq!(r.status, 503, "{}", r.body);
    let msg = r.json()["Message"].as_str().unwrap().to_string();
    assert!(msg.contains("Throttling"), "{msg}");
    assert!(!msg.contains("iam-policy"), "{msg}");
}

#[test]
fn iam_policy_prints_json_lines_text_and_bare_documents_for_every_kind() {
    let dir = ConfigDir::new();
    let web_token = dir.token_file("web.token", "eyJhbGciOiJSUzI1NiJ9.e30.c2ln");
    let broker_arn = "arn:aws:iam::123456789012:user/sts-broker";
    let config = dir.write(
        "config.toml",
        &("[sts]\nregion = \"us-east-1\"\n".to_string()
            + &role(
                "app",
                &format!(
                    "tags = {{ team = \"payments\" }}\nsource_identity = \"alice\"\nexternal_id = \"{EXTERNAL_ID}\""
                ),
            )
            + &role("base", "")
            + &role("chained", "source_role = \"base\"")
            + &kind_role(
                "irsa",
                "web_identity",
                &format!(
                    "arn = \"arn:aws:iam::123456789012:role/irsa\"\nweb_identity_token_file = {:?}",
                    web_token.to_str().unwrap()
                ),
            )
            + &kind_role(
                "corp",
                "saml",
                "arn = \"arn:aws:iam::123456789012:role/corp\"\nprincipal_arn = \"arn:aws:iam::123456789012:saml-provider/corp-idp\"\nsaml_assertion_command = [\"/bin/echo\", \"x\"]",
            )
            + &kind_role("session", "session_token", "")
            + &kind_role(
                "fed",
                "federation_token",
                "federated_name = \"intranet\"\npolicy_arns = [\"arn:aws:iam::aws:policy/ReadOnlyAccess\"]",
            )),
    );

    // JSON Lines: one parseable object per role, in config order.
    let out = stdout_ok(&iam_policy(&dir, &config, &["--principal", broker_arn]));
    let docs: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let names: Vec<&str> = docs.iter().map(|d| d["role"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["app", "base", "chained", "irsa", "corp", "session", "fed"]
    );
    let by_name = |n: &str| docs.iter().find(|d| d["role"] == n).unwrap().clone();
    let app = by_name("app");
    assert_eq!(
        app["trust_policy"]["Statement"][0]["Action"],
        json!(["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"])
    );
    assert_eq!(
        app["trust_policy"]["Statement"][0]["Condition"],
        json!({"StringEquals": {"sts:ExternalId": EXTERNAL_ID}})
    );
    assert_eq!(
        by_name("chained")["caller"],
        "arn:aws:iam::123456789012:role/base"
    );
    assert_eq!(by_name("irsa")["permission_policy"], Value::Null);
    assert_eq!(by_name("session")["trust_policy"], Value::Null);
    assert_eq!(
        by_name("fed")["permission_policy"]["Statement"][0],
        json!({"Effect": "Allow", "Action": ["sts:GetFederationToken"], "Resource": "*"})
    );

    // Text: the same documents once the `#` lines are dropped.
    let text = stdout_ok(&iam_policy(
        &dir,
        &config,
        &["--principal", broker_arn, "--format", "text"],
    ));
    let stripped: String = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let from_text: Vec<Value> = serde_json::Deserializer::from_str(&stripped)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{e}:\n{text}"));
    let from_json: Vec<Value> = docs
        .iter()
        .flat_map(|d| [d["trust_policy"].clone(), d["permission_policy"].clone()])
        .filter(|d| !d.is_null())
        .collect();
    assert_eq!(from_text, from_json, "{text}");

    // --only: bare documents for file://.
    let trust: Value = serde_json::from_str(&stdout_ok(&iam_policy(
        &dir,
        &config,
        &[
            "--principal",
            broker_arn,
            "--role",
            "app",
            "--only",
            "trust",
        ],
    )))
    .unwrap();
    assert_eq!(trust, app["trust_policy"]);
    let merged = iam_policy(
        &dir,
        &config,
        &["--principal", broker_arn, "--only", "permission"],
    );
    let merged_doc: Value = serde_json::from_str(&stdout_ok(&merged)).unwrap();
    let resources: Vec<&str> = merged_doc["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["Resource"].as_str().unwrap())
        .collect();
    assert_eq!(
        resources,
        [
            "arn:aws:iam::123456789012:role/app",
            "arn:aws:iam::123456789012:role/base",
            "*",
            "*"
        ],
        "{merged_doc:#}"
    );
    let warned = String::from_utf8_lossy(&merged.stderr);
    assert!(
        warned.contains("role \"chained\" is signed by arn:aws:iam::123456789012:role/base"),
        "{warned}"
    );

    // Web identity and SAML roles need no broker principal: nothing is asked of STS.
    let irsa = stdout_ok(&iam_policy(&dir, &config, &["--role", "irsa"]));
    assert!(irsa.contains("oidc-provider/<OIDC_PROVIDER>"), "{irsa}");

    // Exit codes: 64 for what the command line asks wrongly, 78 for an unknown role.
    for (args, code, fragment) in [
        (
            vec!["--principal", broker_arn, "--only", "trust"],
            64,
            "--only trust needs --role",
        ),
        (
            vec![
                "--principal",
                broker_arn,
                "--role",
                "session",
                "--only",
                "trust",
            ],
            64,
            "needs no trust policy",
        ),
        (
            vec!["--principal", "arn:aws:iam::123456789012:root"],
            64,
            "root user",
        ),
        (vec!["--role", "nope"], 78, "no role named \"nope\""),
    ] {
        let out = iam_policy(&dir, &config, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(fragment), "{args:?}: {err}");
    }
}

#[tokio::test]
async fn iam_policy_finds_the_principal_with_get_caller_identity() {
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let config = dir.write("config.toml", &(config_head(&sts.url()) + &role("app", "")));
    let out = tokio::task::spawn_blocking({
        let config = config.clone();
        let home = dir.path().to_path_buf();
        move || {
            let mut cmd = Command::new(BIN);
            cmd.arg("iam-policy").arg("-c").arg(&config);
            broker_env(&mut cmd, &home, "warn");
            cmd.output().unwrap()
        }
    })
    .await
    .unwrap();
    let doc: Value = serde_json::from_str(stdout_ok(&out).trim()).unwrap();
    assert_eq!(doc["caller"], FAKE_CALLER_ARN);
    assert_eq!(
        doc["trust_policy"]["Statement"][0]["Principal"],
        json!({"AWS": FAKE_CALLER_ARN})
    );
    assert_eq!(sts.calls_for("GetCallerIdentity"), 1);
    assert_eq!(sts.calls_for("AssumeRole"), 0, "iam-policy assumes nothing");

    // STS unreachable: exit 69, and the way out.
    sts.set_scenario(Scenario::AccessDenied);
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(BIN);
        cmd.arg("iam-policy").arg("-c").arg(&config);
        broker_env(&mut cmd, dir.path(), "warn");
        cmd.output().unwrap()
    })
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{err}");
    assert!(err.contains("pass it with --principal ARN"), "{err}");
}

// === the README walkthrough ===

/// The fenced ```bash blocks of the README section titled `title`, in order.
fn readme_bash_blocks(title: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("read README.md");
    let start = readme
        .find(&format!("\n## {title}\n"))
        .unwrap_or_else(|| panic!("README has no section {title:?}"));
    let section = &readme[start + 1..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let mut blocks = Vec::new();
    let mut rest = section;
    while let Some(i) = rest.find("```bash\n") {
        let body = &rest[i + "```bash\n".len()..];
        let end = body.find("\n```").expect("unterminated code block");
        blocks.push(body[..end].to_string());
        rest = &body[end + 4..];
    }
    blocks
}

/// Runs in front of the walkthrough: the README's `sts-broker serve … &` line becomes
/// `start_broker`, which binds port 0 and sets `$ECS` / `$ADMIN` to the addresses the broker
/// logs; the README's fixed addresses become those variables.
const PRELUDE: &str = r#"set -euo pipefail
start_broker() {
  printf '\n[ecs]\nlisten = "127.0.0.1:0"\n\n[admin]\nlisten = "127.0.0.1:0"\n' >> broker.toml
  # The log exists before the background job opens it: the sed below must not race it.
  : >broker.log
  sts-broker serve -c broker.toml 2>broker.log & BROKER_PID=$!
  for _ in $(seq 400); do
    ECS=$(sed -n 's/.*"endpoint":"ecs","addr":"\([^"]*\)".*/\1/p' broker.log | head -n 1)
    ADMIN=$(sed -n 's/.*"endpoint":"admin","addr":"\([^"]*\)".*/\1/p' broker.log | head -n 1)
    if [ -n "$ECS" ] && [ -n "$ADMIN" ]; then return 0; fi
    sleep 0.05
  done
  echo "the broker did not start" >&2
  cat broker.log >&2
  return 1
}
trap 'if [ -n "${BROKER_PID:-}" ]; then kill "$BROKER_PID" 2>/dev/null || true; fi' EXIT
"#;

/// The README line that starts the broker.
const SERVE_LINE: &str = "sts-broker serve -c broker.toml 2>broker.log & BROKER_PID=$!";

/// Runs `script` with bash in `dir` and `env`, in its own process group, killed whole after
/// `timeout`. Returns (exit status, stdout, stderr).
fn run_script(
    dir: &Path,
    script: &str,
    env: &[(&str, String)],
    timeout: Duration,
) -> (Option<i32>, String, String) {
    use std::os::unix::process::CommandExt;
    let script_path = dir.join("walkthrough.sh");
    std::fs::write(&script_path, script).unwrap();
    let stdout_path = dir.join("walkthrough.out");
    let stderr_path = dir.join("walkthrough.err");
    let mut child = Command::new("bash")
        .arg(&script_path)
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .process_group(0)
        .spawn()
        .expect("spawn bash");
    let pgid = child.id();
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Whatever the script left running (the broker, if its trap did not run) goes with it.
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
    let _ = child.wait();
    (
        status,
        std::fs::read_to_string(&stdout_path).unwrap_or_default(),
        std::fs::read_to_string(&stderr_path).unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_iam_walkthrough_works_against_moto() {
    let blocks = readme_bash_blocks("IAM setup walkthrough");
    assert!(
        blocks.len() >= 7,
        "expected the 7 steps, found {}",
        blocks.len()
    );
    let mut walkthrough = String::new();
    for (i, b) in blocks.iter().enumerate() {
        walkthrough.push_str(&format!("echo '=== step {} ===' >&2\n{b}\n", i + 1));
    }
    for (from, to) in [
        (SERVE_LINE, "start_broker"),
        ("127.0.0.1:8170", "$ECS"),
        ("127.0.0.1:9469", "$ADMIN"),
    ] {
        assert!(
            walkthrough.contains(from),
            "the walkthrough no longer has {from:?}"
        );
        walkthrough = walkthrough.replace(from, to);
    }
    let script = format!("{PRELUDE}{walkthrough}");

    let moto = Moto::start().await;
    let dir = ConfigDir::new();
    // The administrator: the AWS CLI's default profile (moto accepts any keys).
    std::fs::create_dir_all(dir.path().join(".aws")).unwrap();
    dir.token_file(
        ".aws/credentials",
        "[default]\naws_access_key_id = AKIDADMIN\naws_secret_access_key = admin-secret\n",
    );
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}:/usr/bin:/bin",
        bin_dir.display(),
        venv_bin("aws").parent().unwrap().display()
    );
    let env = [
        ("PATH", path),
        ("HOME", dir.path().display().to_string()),
        ("AWS_ENDPOINT_URL", moto.url.clone()),
        ("AWS_DEFAULT_REGION", "us-east-1".to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
        ("RUST_LOG", "info".to_string()),
    ];
    let home = dir.path().to_path_buf();
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        run_script(&home, &script, &env, Duration::from_secs(180))
    })
    .await
    .unwrap();
    let log = std::fs::read_to_string(dir.path().join("broker.log")).unwrap_or_default();
    let report = format!("stdout:\n{stdout}\nstderr:\n{stderr}\nbroker.log:\n{log}");
    assert_eq!(code, Some(0), "the walkthrough failed\n{report}");

    // Each role was served to a workload, which STS (moto) saw as that role.
    let arns: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("arn:aws:sts::"))
        .collect();
    let prefix = "arn:aws:sts::123456789012:assumed-role/";
    let count = |role: &str| {
        arns.iter()
            .filter(|a| a.starts_with(&format!("{prefix}{role}/")))
            .count()
    };
    assert_eq!(
        (count("app"), count("partner"), count("tagged")),
        (2, 1, 1),
        "{report}"
    );

    // The documents applied are the ones the config implies.
    let read = |name: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(name)).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}\n{report}"))
    };
    let broker_user = "arn:aws:iam::123456789012:user/sts-broker";
    assert_eq!(
        read("app-trust.json")["Statement"][0],
        json!({"Effect": "Allow", "Principal": {"AWS": broker_user}, "Action": ["sts:AssumeRole"]}),
        "GetCallerIdentity found the sts-broker user"
    );
    let partner = read("partner-trust.json");
    assert!(
        partner["Statement"][0]["Condition"]["StringEquals"]["sts:ExternalId"]
            .as_str()
            .is_some_and(|x| x.len() >= 20),
        "{partner}"
    );
    assert_eq!(
        read("tagged-trust.json")["Statement"][0]["Action"],
        json!(["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"])
    );
    assert_eq!(
        read("broker-permissions.json")["Statement"],
        json!([
            {"Effect": "Allow", "Action": ["sts:AssumeRole"], "Resource": "arn:aws:iam::123456789012:role/app"},
            {"Effect": "Allow", "Action": ["sts:AssumeRole"], "Resource": "arn:aws:iam::123456789012:role/partner"},
            {"Effect": "Allow", "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"],
             "Resource": "arn:aws:iam::123456789012:role/tagged"},
        ])
    );

    // The forced refresh after the revocation re-assumed app: a second, different key.
    let app_keys: Vec<String> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["message"] == "credentials refreshed" && e["role"] == "app")
        .filter_map(|e| e["access_key_id"].as_str().map(str::to_string))
        .collect();
    assert!(
        app_keys.len() >= 2 && app_keys[0] != app_keys[app_keys.len() - 1],
        "{app_keys:?}\n{report}"
    );
    // The external ID was never logged.
    let external_id = partner["Statement"][0]["Condition"]["StringEquals"]["sts:ExternalId"]
        .as_str()
        .unwrap();
    assert!(
        !log.contains(external_id),
        "broker.log shows the external ID"
    );
}
