//! Every STS way to obtain credentials, against the recording fake STS (parameters and
//! signer asserted) and, where moto supports the call, end to end with boto3.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use crate::fake_sts::{FakeSts, Scenario};
use crate::helpers::*;
use crate::test_config::{Role, TestConfig};

/// An executable shell script in `dir`.
fn script(dir: &ConfigDir, name: &str, body: &str) -> PathBuf {
    let p = dir.write(name, &format!("#!/bin/sh\n{body}\n"));
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// A role entry of `kind` with `TOKEN` and extra lines.
fn kind_role(name: &str, kind: &str, extra: &str) -> String {
    format!("\n[[role]]\nname = \"{name}\"\nkind = \"{kind}\"\ntokens = [\"{TOKEN}\"]\n{extra}\n")
}

#[tokio::test]
async fn a_chained_role_is_signed_with_its_source_roles_credentials() {
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let config = config_head(&sts.url())
        + &role(
            "app",
            "source_role = \"base\"\nduration = \"2h\"\nsession_name = \"app\"",
        )
        + &role("base", "session_name = \"base\"");
    let broker = TestBroker::start(&dir, &config).await;
    broker.wait_ready(Duration::from_secs(10)).await;

    let reqs = sts.requests();
    assert_eq!(reqs.len(), 2, "{reqs:#?}");
    let base = reqs
        .iter()
        .find(|r| r.param("RoleSessionName") == Some("base"))
        .unwrap();
    let app = reqs
        .iter()
        .find(|r| r.param("RoleSessionName") == Some("app"))
        .unwrap();
    assert_eq!(base.signed_with.as_deref(), Some(SOURCE_KEY_ID));
    let base_key = broker.ecs_get("base", Some(TOKEN)).await.json()["AccessKeyId"].clone();
    assert_eq!(
        app.signed_with.as_deref(),
        base_key.as_str(),
        "signed with the base role's key"
    );
    assert!(
        app.security_token
            .as_deref()
            .is_some_and(|t| t.starts_with("fake-token-"))
    );
    assert_eq!(
        app.param("DurationSeconds"),
        Some("3600"),
        "clamped to 1 h for chaining"
    );
    assert!(broker.logs().contains("clamped to 1h"), "{}", broker.logs());

    // Refreshing the base does not disturb the chained role's own (still valid) session.
    let app_key = broker.ecs_get("app", Some(TOKEN)).await.json()["AccessKeyId"].clone();
    assert_eq!(
        broker.admin_post("/v1/roles/base/refresh").await.status,
        200
    );
    assert_eq!(
        broker.ecs_get("app", Some(TOKEN)).await.json()["AccessKeyId"],
        app_key
    );
    // A forced refresh of the chained role signs with the base's new credentials.
    assert_eq!(broker.admin_post("/v1/roles/app/refresh").await.status, 200);
    let new_base = broker.ecs_get("base", Some(TOKEN)).await.json()["AccessKeyId"].clone();
    let last = sts.requests().pop().unwrap();
    assert_eq!(last.param("RoleSessionName"), Some("app"));
    assert_eq!(last.signed_with.as_deref(), new_base.as_str());
}

#[test]
fn check_rejects_chaining_cycles_and_bad_sources() {
    let dir = ConfigDir::new();
    let path = dir.write(
        "c.toml",
        &("[sts]\nregion = \"us-east-1\"\n".to_string()
            + &role("a", "source_role = \"b\"")
            + &role("b", "source_role = \"a\"")
            + &role("c", "source_role = \"missing\"")
            + &kind_role("fed", "federation_token", "federated_name = \"fed-user\"\npolicy_arns = [\"arn:aws:iam::aws:policy/ReadOnlyAccess\"]")
            + &role("d", "source_role = \"fed\"")),
    );
    assert_check_reports(
        &dir,
        &path,
        &[
            "role \"a\": key \"source_role\": chains back to itself: a -> b -> a",
            "role \"b\": key \"source_role\": chains back to itself: b -> a -> b",
            "role \"c\": key \"source_role\": \"missing\" is not the name of a [[role]]",
            "role \"d\": key \"source_role\": \"fed\" is a federation_token role",
        ],
    );
}

#[tokio::test]
async fn web_identity_roles_reread_the_token_file_and_are_unsigned() {
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let token_file = dir.token_file("web.token", "web-token-one");
    let config = config_head(&sts.url())
        + &kind_role(
            "irsa",
            "web_identity",
            &format!(
                "arn = \"arn:aws:iam::123456789012:role/irsa\"\nsession_name = \"irsa\"\nweb_identity_token_file = {:?}\npolicy_arns = [\"arn:aws:iam::aws:policy/ReadOnlyAccess\"]",
                token_file.display().to_string()
            ),
        );
    let broker = TestBroker::start(&dir, &config).await;
    broker.wait_ready(Duration::from_secs(10)).await;
    let first = &sts.requests()[0];
    assert_eq!(first.action, "AssumeRoleWithWebIdentity");
    assert_eq!(first.param("WebIdentityToken"), Some("web-token-one"));
    assert_eq!(
        first.param("RoleArn"),
        Some("arn:aws:iam::123456789012:role/irsa")
    );
    assert_eq!(first.param("RoleSessionName"), Some("irsa"));
    assert_eq!(first.param("DurationSeconds"), Some("3600"));
    assert_eq!(
        first.param("PolicyArns.member.1.arn"),
        Some("arn:aws:iam::aws:policy/ReadOnlyAccess")
    );
    assert_eq!(
        first.authorization, None,
        "AssumeRoleWithWebIdentity is unsigned"
    );

    // The kubelet rotates the projected token: the next refresh sends the new one.
    dir.token_file("web.token", "web-token-two\n");
    assert_eq!(
        broker.admin_post("/v1/roles/irsa/refresh").await.status,
        200
    );
    assert_eq!(
        sts.requests()[1].param("WebIdentityToken"),
        Some("web-token-two")
    );
    let body = broker.ecs_get("irsa", Some(TOKEN)).await.json();
    assert_eq!(body["RoleArn"], "arn:aws:iam::123456789012:role/irsa");
    assert_eq!(body["AccountId"], "123456789012");
    assert!(
        !broker.logs().contains("web-token-"),
        "the token never reaches the log"
    );
}

#[tokio::test]
async fn session_tokens_send_the_mfa_code_the_command_prints() {
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let totp = script(&dir, "totp", "echo 123456");
    let config = config_head(&sts.url())
        + &kind_role(
            "ops",
            "session_token",
            &format!(
                "mfa_serial = \"arn:aws:iam::123456789012:mfa/ops\"\nmfa_code_command = [{:?}, \"ops\"]\nduration = \"36h\"",
                totp.display().to_string()
            ),
        );
    let broker = TestBroker::start(&dir, &config).await;
    broker.wait_ready(Duration::from_secs(10)).await;
    let r = &sts.requests()[0];
    assert_eq!(r.action, "GetSessionToken");
    assert_eq!(
        r.param("SerialNumber"),
        Some("arn:aws:iam::123456789012:mfa/ops")
    );
    assert_eq!(r.param("TokenCode"), Some("123456"));
    assert_eq!(r.param("DurationSeconds"), Some("129600"));
    assert_eq!(r.signed_with.as_deref(), Some(SOURCE_KEY_ID));
    let body = broker.ecs_get("ops", Some(TOKEN)).await.json();
    assert!(
        body.get("RoleArn").is_none(),
        "no role behind a session token: {body}"
    );
    assert_eq!(body["AccountId"], "123456789012", "from the MFA serial");

    // A failing command is a classified refresh failure; its stderr is never logged.
    script(&dir, "totp", "echo SECRET-STDERR-MARKER >&2; exit 3");
    let r = broker.admin_post("/v1/roles/ops/refresh").await;
    assert_eq!(r.status, 503);
    let status = broker.role_status("ops").await;
    let msg = status["last_error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("mfa_code_command") && msg.contains("not logged"),
        "{msg}"
    );
    assert_eq!(status["last_error"]["class"], "transient");
    // A code that is not 6 digits is a configuration problem (tried once the back-off of the
    // previous failure has passed: forced refreshes respect it).
    script(&dir, "totp", "echo 12345x");
    let classified = eventually(Duration::from_secs(10), || async {
        broker.admin_post("/v1/roles/ops/refresh").await;
        broker.role_status("ops").await["last_error"]["class"] == "invalid_config"
    })
    .await;
    assert!(classified, "{}", broker.role_status("ops").await);
    let logs = broker.logs();
    assert!(
        !logs.contains("SECRET-STDERR-MARKER") && !logs.contains("12345x"),
        "{logs}"
    );
    assert_eq!(sts.calls(), 1, "no STS call without a valid code");
}

#[tokio::test]
async fn federation_tokens_send_name_policy_and_tags() {
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let config = config_head(&sts.url())
        + &kind_role(
            "intranet",
            "federation_token",
            "federated_name = \"intranet-app\"\npolicy = '{\"Version\":\"2012-10-17\",\"Statement\":[]}'\npolicy_arns = [\"arn:aws:iam::aws:policy/ReadOnlyAccess\"]\ntags = { app = \"intranet\" }\nduration = \"12h\"",
        );
    let broker = TestBroker::start(&dir, &config).await;
    broker.wait_ready(Duration::from_secs(10)).await;
    let r = &sts.requests()[0];
    assert_eq!(r.action, "GetFederationToken");
    assert_eq!(r.param("Name"), Some("intranet-app"));
    assert_eq!(
        r.param("Policy"),
        Some("{\"Version\":\"2012-10-17\",\"Statement\":[]}")
    );
    assert_eq!(
        r.param("PolicyArns.member.1.arn"),
        Some("arn:aws:iam::aws:policy/ReadOnlyAccess")
    );
    assert_eq!(r.param("Tags.member.1.Key"), Some("app"));
    assert_eq!(r.param("DurationSeconds"), Some("43200"));
    assert_eq!(r.signed_with.as_deref(), Some(SOURCE_KEY_ID));
    let body = broker.ecs_get("intranet", Some(TOKEN)).await.json();
    assert_eq!(
        body["AccountId"], "123456789012",
        "from the federated user's ARN"
    );
}

#[tokio::test]
async fn saml_roles_send_the_assertion_from_a_file_or_a_command() {
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let file = dir.token_file("assertion.b64", "PHNhbWw+ZmlsZTwvc2FtbD4=\n");
    let cmd = script(&dir, "assert", "echo PHNhbWw+Y21kPC9zYW1sPg==");
    let common = "arn = \"arn:aws:iam::123456789012:role/corp\"\nprincipal_arn = \"arn:aws:iam::123456789012:saml-provider/corp-idp\"";
    let config = config_head(&sts.url())
        + &kind_role(
            "by-file",
            "saml",
            &format!(
                "{common}\nsaml_assertion_file = {:?}",
                file.display().to_string()
            ),
        )
        + &kind_role(
            "by-cmd",
            "saml",
            &format!(
                "{common}\nsaml_assertion_command = [{:?}]",
                cmd.display().to_string()
            ),
        );
    let broker = TestBroker::start(&dir, &config).await;
    broker.wait_ready(Duration::from_secs(10)).await;
    let reqs = sts.requests();
    assert_eq!(reqs.len(), 2);
    let mut assertions: Vec<&str> = reqs
        .iter()
        .map(|r| r.param("SAMLAssertion").unwrap())
        .collect();
    assertions.sort();
    assert_eq!(
        assertions,
        ["PHNhbWw+Y21kPC9zYW1sPg==", "PHNhbWw+ZmlsZTwvc2FtbD4="]
    );
    for r in &reqs {
        assert_eq!(r.action, "AssumeRoleWithSAML");
        assert_eq!(
            r.param("PrincipalArn"),
            Some("arn:aws:iam::123456789012:saml-provider/corp-idp")
        );
        assert_eq!(
            r.param("RoleArn"),
            Some("arn:aws:iam::123456789012:role/corp")
        );
        assert_eq!(r.authorization, None, "AssumeRoleWithSAML is unsigned");
    }
}

#[test]
fn check_names_keys_of_other_kinds_and_missing_inputs() {
    let dir = ConfigDir::new();
    let path = dir.write(
        "c.toml",
        &("[sts]\nregion = \"us-east-1\"\n".to_string()
            + &kind_role("w", "web_identity", "arn = \"arn:aws:iam::123456789012:role/w\"\nexternal_id = \"abc\"\nweb_identity_token_file = \"/nonexistent\"")
            + &kind_role("s", "session_token", "mfa_serial = \"arn:aws:iam::123456789012:mfa/x\"\nduration = \"37h\"")
            + &kind_role("f", "federation_token", "federated_name = \"x\"")
            + &kind_role("m", "saml", "arn = \"arn:aws:iam::123456789012:role/m\"\nprincipal_arn = \"arn:aws:iam::123456789012:role/not-a-provider\"")),
    );
    assert_check_reports(
        &dir,
        &path,
        &[
            "role \"w\": key \"external_id\": is used by kind = \"assume_role\", not by kind = \"web_identity\"",
            "role \"w\": key \"web_identity_token_file\": cannot read /nonexistent",
            "role \"s\": key \"mfa_code_command\": required with mfa_serial",
            "role \"s\": key \"duration\": 1day 13h is outside what kind = \"session_token\" accepts (15m..1day 12h)",
            "role \"f\": key \"federated_name\"",
            "role \"m\": key \"principal_arn\"",
            "role \"m\": key \"saml_assertion_file\": exactly one of",
        ],
    );
}

#[tokio::test]
async fn an_sts_failure_of_a_source_role_reaches_the_chained_role() {
    let sts = FakeSts::start().await;
    sts.set_scenario(Scenario::AccessDenied);
    let dir = ConfigDir::new();
    let config = config_head(&sts.url())
        + &role("base", "prefetch = false")
        + &role("app", "source_role = \"base\"\nprefetch = false");
    let broker = TestBroker::start(&dir, &config).await;
    let r = broker.ecs_get("app", Some(TOKEN)).await;
    assert_eq!(r.status, 503);
    let msg = r.json()["Message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("source role \"base\"") && msg.contains("access_denied"),
        "{msg}"
    );
}

// === end to end with moto ===

/// boto3 through the broker's ECS endpoint: the ARN `GetCallerIdentity` reports.
fn boto3_caller_arn(
    broker: &TestBroker,
    moto: &Moto,
    home: &std::path::Path,
    role: &str,
) -> String {
    let script = "import boto3, sys\n\
                  print(boto3.client('sts', endpoint_url=sys.argv[1]).get_caller_identity()['Arn'])\n";
    let out = clean_client(&venv_bin("python"), home)
        .env(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            format!("http://{}/v1/credentials/{role}", broker.ecs),
        )
        .env("AWS_CONTAINER_AUTHORIZATION_TOKEN", TOKEN)
        .args(["-c", script, &moto.url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{role}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A minimal SAML response moto accepts: the Role attribute names role and provider.
fn saml_assertion(role_arn: &str, provider_arn: &str) -> String {
    let xml = format!(
        r#"<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" ID="_1" Version="2.0" IssueInstant="2026-11-28T00:00:00Z"><saml:Issuer xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion">https://idp.example</saml:Issuer><samlp:Status><samlp:StatusCode Value="urn:oasis:names:tc:SAML:2.0:status:Success"/></samlp:Status><saml:Assertion xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="_2" Version="2.0" IssueInstant="2026-11-28T00:00:00Z"><saml:Issuer>https://idp.example</saml:Issuer><saml:Subject><saml:NameID Format="urn:oasis:names:tc:SAML:2.0:nameid-format:persistent">alice</saml:NameID></saml:Subject><saml:AttributeStatement><saml:Attribute Name="https://aws.amazon.com/SAML/Attributes/Role"><saml:AttributeValue>{role_arn},{provider_arn}</saml:AttributeValue></saml:Attribute><saml:Attribute Name="https://aws.amazon.com/SAML/Attributes/RoleSessionName"><saml:AttributeValue>alice</saml:AttributeValue></saml:Attribute></saml:AttributeStatement></saml:Assertion></samlp:Response>"#
    );
    base64_encode(xml.as_bytes())
}

fn base64_encode(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_end_to_end_against_moto() {
    let moto = Moto::start().await;
    let dir = ConfigDir::new();
    let web_token = dir.token_file("web.token", "eyJhbGciOiJSUzI1NiJ9.e30.c2ln");
    let assertion = dir.token_file(
        "saml.b64",
        &saml_assertion(
            "arn:aws:iam::123456789012:role/corp",
            "arn:aws:iam::123456789012:saml-provider/corp-idp",
        ),
    );
    let config = config_head(&moto.url)
        + &role("base", "session_name = \"base-session\"")
        + &role(
            "chained",
            "source_role = \"base\"\nsession_name = \"chained-session\"",
        )
        + &kind_role(
            "irsa",
            "web_identity",
            &format!(
                "arn = \"arn:aws:iam::123456789012:role/irsa\"\nsession_name = \"irsa-session\"\nweb_identity_token_file = {:?}",
                web_token.display().to_string()
            ),
        )
        + &kind_role("session", "session_token", "")
        + &kind_role(
            "fed",
            "federation_token",
            "federated_name = \"intranet-app\"\npolicy_arns = [\"arn:aws:iam::aws:policy/ReadOnlyAccess\"]",
        )
        + &kind_role(
            "corp",
            "saml",
            &format!(
                "arn = \"arn:aws:iam::123456789012:role/corp\"\nprincipal_arn = \"arn:aws:iam::123456789012:saml-provider/corp-idp\"\nsaml_assertion_file = {:?}",
                assertion.display().to_string()
            ),
        );
    let broker = TestBroker::start(&dir, &config).await;
    broker.wait_ready(Duration::from_secs(30)).await;
    let cases = [
        ("base", "assumed-role/base/base-session"),
        ("chained", "assumed-role/chained/chained-session"),
        ("irsa", "assumed-role/irsa/irsa-session"),
        ("corp", "assumed-role/corp/"),
    ];
    for (role, want) in cases {
        let arn = boto3_caller_arn(&broker, &moto, dir.path(), role);
        assert!(arn.contains(want), "{role}: {arn}");
    }
    // GetSessionToken / GetFederationToken: moto issues a fixed key (its GetCallerIdentity
    // then names its default user); what counts is that the client got working credentials.
    for role in ["session", "fed"] {
        let arn = boto3_caller_arn(&broker, &moto, dir.path(), role);
        assert!(arn.starts_with("arn:aws:"), "{role}: {arn}");
    }
}

#[tokio::test]
async fn a_profile_source_signs_with_the_profile_even_when_env_keys_are_set() {
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let creds = dir.write(
        "credentials",
        "[broker]\naws_access_key_id = AKIDFROMPROFILE\naws_secret_access_key = profile-secret\n",
    );
    let config = TestConfig::new(&sts.url())
        .set("source", "kind", "profile")
        .set("source", "name", "broker")
        .role(Role::new("app"))
        .render();
    let creds = creds.display().to_string();
    // broker_env exports AWS_ACCESS_KEY_ID too: the profile must still win.
    let broker = TestBroker::start_wrapped(
        &dir,
        &config,
        "info",
        &[],
        &[("AWS_SHARED_CREDENTIALS_FILE", &creds)],
    )
    .await;
    broker.wait_ready(Duration::from_secs(10)).await;
    assert_eq!(
        sts.requests()[0].signed_with.as_deref(),
        Some("AKIDFROMPROFILE")
    );
}
