//! The oldest ECS clients: `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`, no `Authorization`
//! header, the path id as the secret (issue 12). The client test with a real SDK that knows
//! nothing else (Ruby's aws-sdk-core) runs at 169.254.170.2:80 in `netns.rs`.

use std::process::Command;
use std::time::Duration;

use crate::fake_sts::FakeSts;
use crate::helpers::*;

/// The relative URI `sts-broker env` prints for `role` (commented out or not).
pub fn relative_uri_from_env(
    config: &std::path::Path,
    home: &std::path::Path,
    role: &str,
) -> String {
    let mut cmd = Command::new(BIN);
    cmd.args(["env", "-c", config.to_str().unwrap(), "--role", role]);
    broker_env(&mut cmd, home, "warn");
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .find_map(|l| {
            l.trim_start_matches("# ")
                .strip_prefix("export AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=")
        })
        .unwrap_or_else(|| panic!("no RELATIVE_URI line in:\n{text}"))
        .to_string()
}

#[tokio::test]
async fn the_relative_uri_path_serves_its_role_without_a_header_and_is_never_logged() {
    let sts = FakeSts::start().await;
    let dir = ConfigDir::new();
    let token_file = dir.token_file("app.token", TOKEN);
    let config = config_head(&sts.url())
        + &format!(
            "\n[[role]]\nname = \"app\"\narn = \"arn:aws:iam::123456789012:role/app\"\ntoken_files = [{:?}]\n",
            token_file.display().to_string()
        )
        + "\n[[role]]\nname = \"legacy\"\narn = \"arn:aws:iam::123456789012:role/legacy\"\nrelative_uri_id = \"explicit-id-0123456789abcdef\"\n"
        + &role("off", "relative_uri = false");
    let path = dir.write("config.toml", &config);
    let uri = relative_uri_from_env(&path, dir.path(), "app");
    assert!(uri.starts_with("/v2/credentials/"), "{uri}");
    let broker = TestBroker::start_with_log(&dir, &config, "trace").await;
    broker.wait_ready(Duration::from_secs(10)).await;

    let r = request(broker.ecs, "GET", &uri, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["RoleArn"], "arn:aws:iam::123456789012:role/app");
    let r = request(
        broker.ecs,
        "GET",
        "/v2/credentials/explicit-id-0123456789abcdef",
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["RoleArn"], "arn:aws:iam::123456789012:role/legacy");
    // Near misses, other methods, the token itself as the id: nothing.
    let mut near = uri.clone();
    near.pop();
    near.push('x');
    for (method, p) in [
        ("GET", near.as_str()),
        ("GET", "/v2/credentials/"),
        ("GET", &format!("/v2/credentials/{TOKEN}")),
        ("GET", &format!("{uri}/")),
    ] {
        assert_eq!(request(broker.ecs, method, p, &[]).await.status, 404, "{p}");
    }
    assert_eq!(request(broker.ecs, "POST", &uri, &[]).await.status, 405);
    // The role with relative_uri = false has no path: `env` prints none.
    let mut cmd = Command::new(BIN);
    cmd.args(["env", "-c", path.to_str().unwrap(), "--role", "off"]);
    broker_env(&mut cmd, dir.path(), "warn");
    let out = cmd.output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("RELATIVE_URI"));

    // Stable across a reload (and a restart: it is derived, not drawn).
    broker.signal("HUP");
    assert!(
        broker
            .wait_for_metric("sts_broker_config_reloads_total{outcome=\"ok\"}", 1.0)
            .await
    );
    assert_eq!(request(broker.ecs, "GET", &uri, &[]).await.status, 200);
    assert_eq!(relative_uri_from_env(&path, dir.path(), "app"), uri);

    // Never logged, even at trace, nor exported in metrics or role status.
    let id = uri.trim_start_matches("/v2/credentials/");
    let near_id = near.trim_start_matches("/v2/credentials/");
    let metrics = broker.admin_get("/metrics").await.body;
    let roles = broker.admin_get("/v1/roles").await.body;
    for (what, text) in [
        ("logs", broker.logs()),
        ("metrics", metrics),
        ("roles", roles),
    ] {
        assert!(!text.contains(id), "the path id is in the {what}");
        assert!(!text.contains(near_id), "a probed path id is in the {what}");
        assert!(
            !text.contains("explicit-id-0123456789abcdef"),
            "the explicit id is in the {what}"
        );
    }
}

#[test]
fn bad_relative_uri_settings_are_reported_together() {
    let dir = ConfigDir::new();
    let path = dir.write(
        "bad.toml",
        r#"
[sts]
region = "us-east-1"
[[role]]
name = "a"
arn = "arn:aws:iam::123456789012:role/a"
relative_uri_id = "short"
[[role]]
name = "b"
arn = "arn:aws:iam::123456789012:role/b"
relative_uri = false
relative_uri_id = "explicit-id-0123456789abcdef"
[[role]]
name = "c"
arn = "arn:aws:iam::123456789012:role/c"
relative_uri_id = "same-id-0123456789abcdef"
[[role]]
name = "d"
arn = "arn:aws:iam::123456789012:role/d"
relative_uri_id = "same-id-0123456789abcdef"
"#,
    );
    assert_check_reports(
        &dir,
        &path,
        &[
            "role \"a\": key \"relative_uri_id\": is 5 characters; 16..128 are required",
            "role \"b\": key \"relative_uri_id\": set, but relative_uri = false",
            "role \"d\": key \"relative_uri_id\": the same path id as role \"c\"",
        ],
    );
}
