//! Real SDKs read credentials from the broker's ECS endpoint, with moto as STS, and prove it
//! by calling `GetCallerIdentity` on moto with them: the answer is the assumed-role ARN.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::helpers::*;

/// A broker in front of moto, serving role `app` (token in env and in a file).
struct Setup {
    moto: Moto,
    dir: ConfigDir,
    broker: TestBroker,
    token_file: std::path::PathBuf,
}

impl Setup {
    async fn start() -> Setup {
        let moto = Moto::start().await;
        let dir = ConfigDir::new();
        let token_file = dir.token_file("app.token", TOKEN);
        let config = config_head(&moto.url)
            + &role(
                "app",
                "session_name = \"sdk-test\"\ntags = { team = \"payments\" }",
            )
            + "\n[imds]\nlisten = \"127.0.0.1:0\"\nrole = \"app\"\n";
        let broker = TestBroker::start(&dir, &config).await;
        broker.wait_ready(Duration::from_secs(20)).await;
        Setup {
            moto,
            dir,
            broker,
            token_file,
        }
    }

    fn full_uri(&self) -> String {
        format!("http://{}/v1/credentials/app", self.broker.ecs)
    }

    /// A client command that finds the broker as EC2 instance metadata (IMDSv2).
    fn imds_client(&self, program: &Path) -> Command {
        let mut cmd = clean_client(program, self.dir.path());
        cmd.env_remove("AWS_EC2_METADATA_DISABLED").env(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            format!("http://{}/", self.broker.imds.unwrap()),
        );
        cmd
    }

    /// A client command with the ECS variables set; the token by file or by value.
    fn client(&self, program: &Path, by_file: bool) -> Command {
        let mut cmd = clean_client(program, self.dir.path());
        cmd.env("AWS_CONTAINER_CREDENTIALS_FULL_URI", self.full_uri());
        if by_file {
            cmd.env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", &self.token_file);
        } else {
            cmd.env("AWS_CONTAINER_AUTHORIZATION_TOKEN", TOKEN);
        }
        cmd
    }
}

const EXPECTED_ARN: &str = "arn:aws:sts::123456789012:assumed-role/app/sdk-test";

/// Runs a client to completion; its stdout, or a failure showing both streams.
#[track_caller]
pub(crate) fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run client");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "client failed: {}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    stdout
}

// Multi-threaded runtimes: the clients run as blocking child processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_reads_credentials_with_token_env_and_token_file() {
    let s = Setup::start().await;
    let script = "import boto3, sys\n\
                  s = boto3.session.Session()\n\
                  c = s.get_credentials()\n\
                  print(c.method)\n\
                  print(s.client('sts', endpoint_url=sys.argv[1]).get_caller_identity()['Arn'])\n";
    for by_file in [false, true] {
        let out = run_ok(
            s.client(&venv_bin("python"), by_file)
                .args(["-c", script, &s.moto.url]),
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0], "container-role",
            "boto3 used the container provider: {out}"
        );
        assert_eq!(lines[1], EXPECTED_ARN, "token by file: {by_file}");
    }
    assert!(
        s.broker
            .metric("sts_broker_requests_total{endpoint=\"ecs\",role=\"app\",status=\"200\"}")
            .await
            .unwrap()
            >= 2.0
    );

    let out = run_ok(
        s.imds_client(&venv_bin("python"))
            .args(["-c", script, &s.moto.url]),
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0], "iam-role",
        "boto3 used the instance metadata provider: {out}"
    );
    assert_eq!(lines[1], EXPECTED_ARN, "through IMDS");
    let imds_hits = s
        .broker
        .metric("sts_broker_requests_total{endpoint=\"imds\",role=\"app\",status=\"200\"}")
        .await;
    assert!(imds_hits >= Some(2.0), "{imds_hits:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_cli_get_caller_identity_through_the_broker() {
    let s = Setup::start().await;
    let aws = venv_bin("aws");
    let ways = [
        ("ECS, token in the variable", s.client(&aws, false)),
        ("ECS, token in a file", s.client(&aws, true)),
        ("IMDS", s.imds_client(&aws)),
    ];
    for (how, mut cmd) in ways {
        let out = run_ok(cmd.args([
            "sts",
            "get-caller-identity",
            "--endpoint-url",
            &s.moto.url,
            "--output",
            "json",
        ]));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["Arn"], EXPECTED_ARN, "{how}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_sdk_v3_providers_read_credentials() {
    let s = Setup::start().await;
    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    assert!(
        js.join("node_modules/@aws-sdk/credential-providers")
            .exists(),
        "run scripts/setup-test-deps.sh to install the JavaScript SDK into tests/js"
    );
    let node = Path::new("/usr/bin/node");
    // (provider, how the broker is found)
    let cases = [
        ("fromHttp", "ecs-file"),
        ("fromHttp", "ecs-env"),
        // The legacy provider reads only the token variable, never the file.
        ("fromContainerMetadata", "ecs-env"),
        ("fromInstanceMetadata", "imds"),
        ("default", "ecs-file"),
        ("default", "imds"),
    ];
    for (provider, how) in cases {
        let mut cmd = match how {
            "ecs-file" => s.client(node, true),
            "ecs-env" => s.client(node, false),
            _ => s.imds_client(node),
        };
        cmd.current_dir(&js)
            .args(["client.mjs", provider, &s.moto.url]);
        let out = run_ok(&mut cmd);
        assert!(
            out.contains(&format!("PROVIDER={provider} ARN={EXPECTED_ARN}")),
            "{provider} via {how}: {out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_aws_config_ecs_and_imds_providers_read_credentials() {
    let s = Setup::start().await;
    // aws-config reads the process environment, which a test must not modify: run this test
    // binary again as a child with the variables set (see `rust_client_child`).
    let exe = std::env::current_exe().unwrap();
    for (mode, mut cmd) in [("ecs", s.client(&exe, true)), ("imds", s.imds_client(&exe))] {
        let out = run_ok(as_rust_child(&mut cmd, &s.moto.url, mode));
        assert!(
            out.contains(&format!("ARN={EXPECTED_ARN}")),
            "{mode}: {out}"
        );
    }
}

/// Makes `cmd` (this test binary, with the client environment set) run `rust_client_child`:
/// aws-config's `mode` provider ("ecs" or "imds") calling GetCallerIdentity on `moto_url`.
pub(crate) fn as_rust_child<'c>(
    cmd: &'c mut Command,
    moto_url: &str,
    mode: &str,
) -> &'c mut Command {
    cmd.env("STS_BROKER_RUST_CHILD_MOTO", moto_url)
        .env("STS_BROKER_RUST_CHILD_MODE", mode)
        .args([
            "clients::rust_client_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
}

/// Runs only as the child of `rust_aws_config_ecs_and_imds_providers_read_credentials`
/// (ignored otherwise, so it never passes vacuously).
#[tokio::test]
#[ignore = "the child half of rust_aws_config_ecs_and_imds_providers_read_credentials"]
async fn rust_client_child() {
    use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
    let (Some(moto), Ok(mode)) = (
        std::env::var_os("STS_BROKER_RUST_CHILD_MOTO"),
        std::env::var("STS_BROKER_RUST_CHILD_MODE"),
    ) else {
        panic!(
            "run by rust_aws_config_ecs_and_imds_providers_read_credentials, which sets the environment"
        );
    };
    // The broker builds aws-config without the SDK's default HTTPS client (it brings its own):
    // give the SDK a plain HTTP one, all this test needs.
    let http = aws_smithy_http_client::Builder::new().build_http();
    let pc = aws_config::provider_config::ProviderConfig::default().with_http_client(http.clone());
    let provider = match mode.as_str() {
        "ecs" => SharedCredentialsProvider::new(
            aws_config::ecs::EcsCredentialsProvider::builder()
                .configure(&pc)
                .build(),
        ),
        _ => SharedCredentialsProvider::new(
            aws_config::imds::credentials::ImdsCredentialsProvider::builder()
                .configure(&pc)
                .build(),
        ),
    };
    let creds = provider
        .provide_credentials()
        .await
        .expect("provider credentials");
    assert!(creds.access_key_id().starts_with("ASIA"), "{mode}");
    assert!(creds.expiry().is_some(), "the broker sends Expiration");
    let conf = aws_sdk_sts::config::Builder::new()
        .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
        .region(aws_sdk_sts::config::Region::new("us-east-1"))
        .endpoint_url(moto.to_str().unwrap())
        .credentials_provider(provider)
        .http_client(http)
        .build();
    let who = aws_sdk_sts::Client::from_conf(conf)
        .get_caller_identity()
        .send()
        .await
        .expect("GetCallerIdentity with broker credentials");
    println!("ARN={}", who.arn().unwrap_or_default());
}
