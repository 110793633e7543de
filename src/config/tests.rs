use super::listener::{DEFAULT_IMDS_MIN_REMAINING, DEFAULT_MAX_CONNECTIONS};
use super::refresh::{DEFAULT_LEAD, DEFAULT_MIN_REMAINING};
use super::sts::{DEFAULT_COOLDOWN, DEFAULT_STS_TIMEOUT, DEFAULT_UNHEALTHY_AFTER};
use super::*;
use crate::creds::Secret;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

fn ctx() -> LoadContext {
    LoadContext {
        hostname: "node-1".to_string(),
    }
}

const BASE: &str = r#"
[sts]
region = "us-east-1"
"#;

fn role(extra: &str) -> String {
    format!(
        "{BASE}\n[[role]]\nname = \"app\"\narn = \"arn:aws:iam::123456789012:role/app\"\ntokens = [\"tok-0123456789abcdef\"]\n{extra}\n"
    )
}

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::parse(text, "test.toml", &ctx())
}

#[track_caller]
fn errors(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn full_example_parses() {
    let text = format!(
        r#"{BASE}
endpoint = "http://127.0.0.1:5000"
timeout = "3s"
max_calls_per_second = 5

[source]
kind = "static_env"

[refresh]
lead = "66%"
min_remaining = "10m"
jitter = "10s"
backoff_min = "500ms"
backoff_max = "1m"

[ecs]
listen = ["127.0.0.1:0", "[::1]:0"]
allowed_hosts = ["Broker.Internal"]

[admin]
listen = "127.0.0.1:0"

[[role]]
name = "app"
arn = "arn:aws:iam::123456789012:role/path/app"
session_name = "app-{{hostname}}"
external_id = "ext-123"
duration = "2h"
tags = {{ team = "payments", env = "prod" }}
transitive_tag_keys = ["team"]
policy_arns = ["arn:aws:iam::aws:policy/ReadOnlyAccess"]
policy = '{{"Version":"2012-10-17","Statement":[]}}'
source_identity = "alice"
tokens = ["tok-0123456789abcdef"]
prefetch = false
"#
    );
    let c = parse(&text).expect("valid");
    assert_eq!(c.sts.endpoint.as_deref(), Some("http://127.0.0.1:5000"));
    assert_eq!(c.sts.timeout, Duration::from_secs(3));
    assert_eq!(c.source, SourceConfig::StaticEnv);
    assert_eq!(c.refresh.lead, Lead::Fraction(0.66));
    assert_eq!(c.refresh.backoff_min, Duration::from_millis(500));
    assert_eq!(c.ecs.listen.len(), 2);
    assert_eq!(c.ecs.allowed_hosts, vec!["broker.internal".to_string()]);
    let r = &c.roles[0];
    assert_eq!(r.spec.account_id.as_deref(), Some("123456789012"));
    assert_eq!(r.spec.session_name.as_deref(), Some("app-node-1"));
    assert_eq!(r.spec.duration, Duration::from_secs(7200));
    assert_eq!(
        r.spec.tags(),
        vec![
            ("env".to_string(), "prod".to_string()),
            ("team".to_string(), "payments".to_string())
        ]
    );
    assert!(!r.spec.prefetch);
    assert_eq!(r.tokens.len(), 1);
    // Inline tokens are discouraged: a warning, not an error.
    assert!(
        c.warnings
            .iter()
            .map(ToString::to_string)
            .any(|w| w.contains("inline tokens")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn defaults_apply() {
    let c = parse(&role("")).unwrap();
    assert_eq!(c.sts.timeout, DEFAULT_STS_TIMEOUT);
    assert_eq!(c.refresh.lead, Lead::Remaining(DEFAULT_LEAD));
    assert_eq!(c.refresh.min_remaining, DEFAULT_MIN_REMAINING);
    assert_eq!(c.ecs.listen, vec!["127.0.0.1:8170".parse().unwrap()]);
    assert_eq!(c.admin.listen, vec!["127.0.0.1:9469".parse().unwrap()]);
    assert_eq!(
        c.roles[0].spec.session_name.as_deref(),
        Some("sts-broker-node-1")
    );
    assert_eq!(c.roles[0].spec.duration, Duration::from_secs(3600));
    assert!(c.roles[0].spec.prefetch);
}

/// Each case: extra role keys, the key the error must name, a fragment of the message.
#[test]
fn role_limits_table() {
    let long_tag_key = "k".repeat(129);
    let long_tag_value = "v".repeat(257);
    let many_tags: String = (0..51).map(|i| format!("t{i} = \"x\", ")).collect();
    let many_arns: String = (0..11)
        .map(|i| format!("\"arn:aws:iam::aws:policy/P{i}\","))
        .collect();
    let big_policy = format!(
        "{{\"Version\":\"2012-10-17\",\"Statement\":[],\"Pad\":\"{}\"}}",
        "x".repeat(2100)
    );
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "session name too short",
            "session_name = \"a\"".into(),
            "session_name",
            "2..64",
        ),
        (
            "session name bad char",
            "session_name = \"a b\"".into(),
            "session_name",
            "2..64",
        ),
        (
            "session name too long",
            format!("session_name = \"{}\"", "a".repeat(65)),
            "session_name",
            "2..64",
        ),
        (
            "external id too short",
            "external_id = \"x\"".into(),
            "external_id",
            "2..1224",
        ),
        (
            "external id too long",
            format!("external_id = \"{}\"", "x".repeat(1225)),
            "external_id",
            "2..1224",
        ),
        (
            "external id bad char",
            "external_id = \"a b\"".into(),
            "external_id",
            "may contain only",
        ),
        (
            "duration too short",
            "duration = \"14m\"".into(),
            "duration",
            "15m..12h",
        ),
        (
            "duration too long",
            "duration = \"13h\"".into(),
            "duration",
            "15m..12h",
        ),
        (
            "duration not a duration",
            "duration = \"soon\"".into(),
            "duration",
            "not a duration",
        ),
        (
            "too many tags",
            format!("tags = {{ {} }}", many_tags.trim_end_matches(", ")),
            "tags",
            "at most 50",
        ),
        (
            "tag key too long",
            format!("tags = {{ {long_tag_key} = \"v\" }}"),
            "tags",
            "1..128",
        ),
        (
            "tag value too long",
            format!("tags = {{ k = \"{long_tag_value}\" }}"),
            "tags",
            "at most 256",
        ),
        (
            "tag bad char",
            "tags = { k = \"a;b\" }".into(),
            "tags",
            "may contain only",
        ),
        (
            "tag keys differ only in case",
            "tags = { Team = \"a\", team = \"b\" }".into(),
            "tags",
            "case-insensitively",
        ),
        (
            "transitive key not a tag",
            "tags = { team = \"a\" }\ntransitive_tag_keys = [\"env\"]".into(),
            "transitive_tag_keys",
            "not one of this role's tags",
        ),
        (
            "too many policy arns",
            format!("policy_arns = [{}]", many_arns.trim_end_matches(',')),
            "policy_arns",
            "at most 10",
        ),
        (
            "bad policy arn",
            "policy_arns = [\"arn:aws:iam::aws:role/x\"]".into(),
            "policy_arns",
            "managed policy ARN",
        ),
        (
            "policy not JSON",
            "policy = \"{not json\"".into(),
            "policy",
            "not valid JSON",
        ),
        (
            "policy too long",
            format!("policy = '{big_policy}'"),
            "policy",
            "at most 2048",
        ),
        (
            "source identity aws:",
            "source_identity = \"aws:me\"".into(),
            "source_identity",
            "must not start",
        ),
        (
            "source identity short",
            "source_identity = \"a\"".into(),
            "source_identity",
            "2..64",
        ),
        (
            "unknown key",
            "colour = \"blue\"".into(),
            "colour",
            "unknown key",
        ),
        (
            "token file missing",
            "token_files = [\"/nonexistent/token\"]".into(),
            "token_files",
            "cannot read",
        ),
    ];
    for (docs, extra, key, fragment) in cases {
        let errs = errors(&role(&extra));
        let hit = errs.iter().any(|e| {
            (key.is_empty() || e.contains(&format!("key \"{key}\""))) && e.contains(fragment)
        });
        assert!(
            hit,
            "{docs}: no error naming key {key:?} with {fragment:?} in {errs:#?}"
        );
        // Every role error names the role.
        assert!(
            errs.iter().all(|e| e.starts_with("test.toml: ")),
            "{docs}: {errs:#?}"
        );
    }
}

#[test]
fn bad_arns_are_rejected() {
    for arn in [
        "arn:aws:iam::12345678901:role/x",
        "arn:aws:iam::123456789012:user/x",
        "arn:aws:s3:::bucket",
        "arn:aws:iam:us-east-1:123456789012:role/x",
        "arn:aws:iam::123456789012:role/",
        "role/x",
    ] {
        assert!(check_role_arn(arn).is_err(), "{arn}");
    }
    assert_eq!(
        check_role_arn("arn:aws-cn:iam::123456789012:role/a/b/c").unwrap(),
        "123456789012"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = r#"
[sts]
region = "us-east-1"
timeout = "never"

[refresh]
lead = "150%"
colour = 1

[tracing]
level = "x"

[[role]]
name = "a"
arn = "arn:aws:iam::123456789012:role/a"
session_name = "x"
tokens = ["tok-0123456789abcdef"]

[[role]]
name = "a"
arn = "not-an-arn"
duration = "1m"
tokens = ["tok-0123456789abcdef"]

[[role]]
name = "c"
kind = "magic"
arn = "arn:aws:iam::123456789012:role/c"
"#;
    let errs = errors(text);
    let expect = [
        "test.toml: [sts]: key \"timeout\"",
        "test.toml: [refresh]: key \"colour\": unknown key",
        "test.toml: [refresh]: key \"lead\"",
        "test.toml: key \"tracing\": unknown table or key",
        "test.toml: role \"a\": key \"session_name\"",
        "test.toml: role \"a\": key \"name\": is used by another",
        "test.toml: role \"a\": key \"arn\"",
        "test.toml: role \"a\": key \"duration\"",
        "test.toml: role \"c\": key \"kind\"",
    ];
    for want in expect {
        assert!(
            errs.iter().any(|e| e.starts_with(want)),
            "missing {want:?} in {errs:#?}"
        );
    }
}

#[test]
fn lead_must_leave_room_for_min_remaining() {
    let errs = errors(&format!(
        "{BASE}\n[refresh]\nlead = \"10m\"\nmin_remaining = \"15m\"\n[[role]]\nname = \"a\"\narn = \"arn:aws:iam::123456789012:role/a\"\n"
    ));
    assert!(
        errs.iter().any(|e| e.contains("key \"min_remaining\"")),
        "{errs:#?}"
    );

    let errs = errors(&role("duration = \"30m\""));
    assert!(
        errs.iter()
            .any(|e| e.contains("key \"duration\"") && e.contains("lead")),
        "lead 40m is not below a 30m duration: {errs:#?}"
    );
    // A percentage lead fits short sessions.
    let text = format!(
        "{BASE}\n[refresh]\nlead = \"50%\"\nmin_remaining = \"5m\"\n[[role]]\nname = \"a\"\narn = \"arn:aws:iam::123456789012:role/a\"\nduration = \"15m\"\ntokens = [\"tok-0123456789abcdef\"]\n"
    );
    parse(&text).expect("50% of 15m leaves 7.5m > 5m");
}

#[test]
fn token_files_are_read_trimmed_and_loose_modes_warned() {
    let dir = tempfile::tempdir().unwrap();
    let tight = dir.path().join("tight");
    let loose = dir.path().join("loose");
    std::fs::write(&tight, "secret-token-one\n").unwrap();
    std::fs::write(&loose, "secret-token-two").unwrap();
    std::fs::set_permissions(&tight, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let text = format!(
        "{BASE}\n[[role]]\nname = \"a\"\narn = \"arn:aws:iam::123456789012:role/a\"\ntoken_files = [{:?}, {:?}]\n",
        tight.display().to_string(),
        loose.display().to_string()
    );
    let c = parse(&text).unwrap();
    let tokens: Vec<&str> = c.roles[0].tokens.iter().map(Secret::expose).collect();
    assert_eq!(tokens, ["secret-token-one", "secret-token-two"]);
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(
        c.warnings[0].to_string().contains("mode 0644"),
        "{:?}",
        c.warnings
    );
    assert!(
        !c.warnings[0].to_string().contains("secret-token"),
        "{:?}",
        c.warnings
    );
}

#[test]
fn errors_and_debug_never_show_secrets() {
    let text = role("external_id = \"SECRET-MARKER-ext\"\nsession_name = \"x\"");
    let errs = errors(&text.replace("tok-0123456789abcdef", "SECRET-MARKER tok"));
    let joined = errs.join("\n");
    assert!(!joined.contains("SECRET-MARKER"), "{joined}");

    let c = parse(&role("external_id = \"SECRET-MARKER-ext\"")).unwrap();
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("SECRET-MARKER"), "{dbg}");
    assert!(!dbg.contains("tok-0123456789abcdef"), "{dbg}");
}

#[test]
fn session_name_template_fits_sts_limits() {
    let long = "a".repeat(80);
    let name = expand_session_name("app-{hostname}", &long);
    assert_eq!(name.len(), 64);
    assert!(check_session_name(&name).is_ok());
    assert_eq!(
        expand_session_name("x-{hostname}", "pod_1.ns"),
        "x-pod_1.ns"
    );
    assert_eq!(expand_session_name("x-{hostname}", "héllo"), "x-h-llo");
    assert_eq!(expand_session_name("fixed", "h"), "fixed");
}

#[test]
fn source_kinds() {
    let c = parse(&format!(
        "{}\n[source]\nkind = \"web_identity\"\ntoken_file = \"/var/run/token\"\nrole_arn = \"arn:aws:iam::123456789012:role/broker\"\n",
        role("")
    ))
    .unwrap();
    assert!(matches!(c.source, SourceConfig::WebIdentity { .. }));
    let errs = errors(&format!("{}\n[source]\nkind = \"profile\"\n", role("")));
    assert!(
        errs.iter().any(|e| e.contains("[source]: key \"name\"")),
        "{errs:#?}"
    );
    let errs = errors(&format!(
        "{}\n[source]\nkind = \"default\"\nname = \"x\"\n",
        role("")
    ));
    assert!(
        errs.iter()
            .any(|e| e.contains("only used with kind = \"profile\"")),
        "{errs:#?}"
    );
}

#[test]
fn listeners_and_no_roles() {
    let errs = errors(&format!("{}\n[ecs]\nlisten = \"localhost:80\"\n", role("")));
    assert!(
        errs.iter().any(|e| e.contains("[ecs]: key \"listen\"")),
        "{errs:#?}"
    );
    let errs = errors(BASE);
    assert!(errs.iter().any(|e| e.contains("no [[role]]")), "{errs:#?}");
    let errs = errors(&format!(
        "{BASE}\n[[role]]\nname = \"a\"\narn = \"arn:aws:iam::123456789012:role/a\"\ntokens = [\"\", \"has space\"]\n"
    ));
    assert!(
        errs.iter()
            .any(|e| e.contains("token #1: the token is empty")),
        "{errs:#?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("token #2") && !e.contains("has space")),
        "{errs:#?}"
    );
    let errs = errors("not = [valid");
    assert!(errs[0].contains("not valid TOML"), "{errs:#?}");
}

#[test]
fn imds_table() {
    let c = parse(&format!(
        "{}\n[imds]\nlisten = \"169.254.169.254:80\"\nrole = \"app\"\nhop_limit = 1\nmax_token_ttl = \"1h\"\n",
        role("")
    ))
    .unwrap();
    let imds = c.imds.as_ref().unwrap();
    assert_eq!(
        imds.listener.listen,
        vec!["169.254.169.254:80".parse().unwrap()]
    );
    assert_eq!(imds.role.as_deref(), Some("app"));
    assert_eq!(imds.hop_limit, 1);
    assert!(!imds.allow_v1);
    assert_eq!(imds.max_token_ttl, Duration::from_secs(3600));
    assert_eq!(imds.min_remaining, DEFAULT_IMDS_MIN_REMAINING);
    assert!(parse(&role("")).unwrap().imds.is_none());

    // (docs, [imds] body, key named, fragment)
    let cases = [
        (
            "role missing",
            "listen = \"127.0.0.1:0\"",
            "role",
            "required",
        ),
        (
            "unknown role",
            "role = \"nope\"",
            "role",
            "not the name of a [[role]]",
        ),
        (
            "hop limit zero",
            "role = \"app\"\nhop_limit = 0",
            "hop_limit",
            "between 1 and 255",
        ),
        (
            "hop limit too big",
            "role = \"app\"\nhop_limit = 256",
            "hop_limit",
            "between 1 and 255",
        ),
        (
            "token TTL above 6h",
            "role = \"app\"\nmax_token_ttl = \"7h\"",
            "max_token_ttl",
            "1s..6h",
        ),
        (
            "floor above the lead",
            "role = \"app\"\nmin_remaining = \"45m\"",
            "min_remaining",
            "refresh lead",
        ),
        (
            "unknown key",
            "role = \"app\"\ncolour = 1",
            "colour",
            "unknown key",
        ),
    ];
    for (docs, body, key, fragment) in cases {
        let errs = errors(&format!("{}\n[imds]\n{body}\n", role("")));
        assert!(
            errs.iter()
                .any(|e| e.contains(&format!("[imds]: key \"{key}\"")) && e.contains(fragment)),
            "{docs}: {errs:#?}"
        );
    }
}

#[test]
fn the_imds_role_needs_no_ecs_tokens() {
    let text = format!(
        "{BASE}\n[[role]]\nname = \"node\"\narn = \"arn:aws:iam::123456789012:role/node\"\n[[role]]\nname = \"lonely\"\narn = \"arn:aws:iam::123456789012:role/lonely\"\n[imds]\nrole = \"node\"\n"
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(
        c.warnings[0].to_string().contains("role \"lonely\""),
        "{:?}",
        c.warnings
    );
    // Warnings have the shape of errors: file, role, key, message.
    let w = &c.warnings[0];
    assert_eq!(w.origin, "test.toml");
    assert_eq!(w.scope, Scope::Role("lonely".to_string()));
    assert_eq!(w.key.as_deref(), Some("token_files"));
    assert_eq!(
        w.to_string(),
        "test.toml: role \"lonely\": key \"token_files\": no tokens configured: no ECS client can fetch this role"
    );
}

#[test]
fn audit_table() {
    let c = parse(&format!(
        "{}\n[audit]\npath = \"/tmp/audit.jsonl\"\n",
        role("")
    ))
    .unwrap();
    assert_eq!(c.audit.unwrap().path, PathBuf::from("/tmp/audit.jsonl"));
    let errs = errors(&format!("{}\n[audit]\n", role("")));
    assert!(
        errs.iter()
            .any(|e| e.contains("[audit]: key \"path\": required")),
        "{errs:#?}"
    );
    let errs = errors(&format!(
        "{}\n[audit]\npath = \"/nonexistent-dir/a.jsonl\"\n",
        role("")
    ));
    assert!(
        errs.iter().any(|e| e.contains("does not exist")),
        "{errs:#?}"
    );
}

#[test]
fn chained_and_web_identity_sourced_sessions_are_clamped_to_an_hour() {
    let text = format!(
        "{}\n[[role]]\nname = \"c\"\narn = \"arn:aws:iam::123456789012:role/c\"\nsource_role = \"app\"\nduration = \"3h\"\n",
        role("duration = \"2h\"")
    );
    let c = parse(&text).unwrap();
    assert_eq!(
        c.role("app").unwrap().spec.duration,
        Duration::from_secs(7200)
    );
    assert_eq!(c.role("c").unwrap().spec.duration, CHAINED_MAX_DURATION);
    assert!(
        c.warnings
            .iter()
            .map(ToString::to_string)
            .any(|w| w.contains("role \"c\"") && w.contains("clamped to 1h")),
        "{:?}",
        c.warnings
    );

    let text = format!(
        "{}\n[source]\nkind = \"web_identity\"\ntoken_file = \"/t\"\nrole_arn = \"arn:aws:iam::123456789012:role/broker\"\n",
        role("duration = \"2h\"")
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.role("app").unwrap().spec.duration, CHAINED_MAX_DURATION);
    // GetSessionToken needs IAM user credentials, which a web-identity broker does not have.
    let text = format!(
        "{BASE}\n[source]\nkind = \"web_identity\"\ntoken_file = \"/t\"\nrole_arn = \"arn:aws:iam::123456789012:role/broker\"\n[[role]]\nname = \"s\"\nkind = \"session_token\"\n"
    );
    let errs = errors(&text);
    assert!(
        errs.iter()
            .any(|e| e.contains("role \"s\": key \"kind\"") && e.contains("IAM user")),
        "{errs:#?}"
    );
}

#[test]
fn listener_limits() {
    let c = parse(&format!(
        "{}\n[ecs]\nmax_connections = 10\nper_peer_rate_limit = 2.5\n",
        role("")
    ))
    .unwrap();
    assert_eq!(c.ecs.max_connections, 10);
    assert_eq!(c.ecs.per_peer_rate_limit, Some(2.5));
    assert_eq!(c.admin.max_connections, DEFAULT_MAX_CONNECTIONS);
    assert_eq!(c.admin.per_peer_rate_limit, None, "off by default");
    let errs = errors(&format!(
        "{}\n[ecs]\nmax_connections = 0\nper_peer_rate_limit = -1\n",
        role("")
    ));
    assert!(
        errs.iter().any(|e| e.contains("key \"max_connections\"")),
        "{errs:#?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("key \"per_peer_rate_limit\"")),
        "{errs:#?}"
    );
}

#[test]
fn allowed_sources_parse_and_every_bad_one_is_named() {
    let ok = parse(&role(
        "[ecs]\nallowed_sources = [\"127.0.0.0/8\", \"::1\", \"fd00::/8\"]\n[admin]\nallowed_sources = [\"10.0.0.0/8\"]",
    ))
    .unwrap();
    assert_eq!(ok.ecs.allowed_sources.len(), 3);
    let summary = crate::commands::check_summary(&ok);
    assert!(
        summary.contains("(sources 127.0.0.0/8, ::1/128, fd00::/8)")
            && summary.contains("admin: 127.0.0.1:9469 (sources 10.0.0.0/8)"),
        "{summary}"
    );
    assert!(ok.ecs.allowed_sources[1].contains(&"::1".parse::<std::net::IpAddr>().unwrap()));
    assert!(parse(&role("")).unwrap().ecs.allowed_sources.is_empty());
    let errs = errors(&format!(
        "{BASE}\n[ecs]\nallowed_sources = [\"10.1.2.3/8\", \"localhost\"]\n[imds]\nrole = \"x\"\nallowed_sources = [\"1.2.3.4/33\"]\n"
    ));
    let joined = errs.join("\n");
    assert!(joined.contains("[ecs]: key \"allowed_sources\": \"10.1.2.3/8\" has host bits set; did you mean \"10.0.0.0/8\"?"), "{joined}");
    assert!(
        joined.contains("[ecs]: key \"allowed_sources\": \"localhost\" is not a network"),
        "{joined}"
    );
    assert!(
        joined.contains("[imds]: key \"allowed_sources\": \"1.2.3.4/33\""),
        "{joined}"
    );
}

#[test]
fn short_client_tokens_are_refused_at_load() {
    let errs = errors(&format!(
        "{BASE}\n[[role]]\nname = \"app\"\narn = \"arn:aws:iam::123456789012:role/app\"\ntokens = [\"short-token-15c\", \"0123456789abcdef\"]\n"
    ));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("key \"tokens\": token #1: the token is 15 characters; at least 16"),
        "{errs:?}"
    );
    assert!(
        !errs[0].contains("short-token-15c"),
        "never the token itself"
    );
}

#[test]
fn local_users_resolve_names_and_uids() {
    // root and nobody exist on every Debian system; 4242 need not exist.
    let text = format!(
        "{BASE}\n[imds]\nlisten = \"127.0.0.1:0\"\n\
         [[role]]\nname = \"billing\"\narn = \"arn:aws:iam::123456789012:role/billing\"\n\
         local_users = [\"nobody\", 4242, 4242]\n\
         [[role]]\nname = \"reports\"\narn = \"arn:aws:iam::123456789012:role/reports\"\n\
         local_users = [4243]\n"
    );
    let c = parse(&text).unwrap();
    let billing = c.role("billing").unwrap();
    assert_eq!(
        billing.local_users,
        vec![
            LocalUser {
                uid: 65534,
                name: Some("nobody".into())
            },
            LocalUser {
                uid: 4242,
                name: None
            },
        ],
        "names resolved, numeric UIDs kept, duplicates folded"
    );
    let imds = c.imds.as_ref().unwrap();
    assert_eq!(imds.role, None, "[imds] role is optional with local_users");
    assert!(
        c.warnings
            .iter()
            .map(ToString::to_string)
            .all(|w| !w.contains("no tokens")),
        "local users need no tokens: {:?}",
        c.warnings
    );
    // A numeric UID with a passwd entry gets its name for logs.
    let c = parse(&role("local_users = [65534]")).unwrap();
    assert_eq!(
        c.role("app").unwrap().local_users[0].name.as_deref(),
        Some("nobody")
    );
}

#[test]
fn local_users_problems_are_all_reported() {
    let text = format!(
        "{BASE}\n[imds]\nlisten = \"127.0.0.1:0\"\n\
         [[role]]\nname = \"a\"\narn = \"arn:aws:iam::123456789012:role/a\"\n\
         local_users = [\"no-such-user-stsb\", \"root\", 0, -1, 4294967295, \"nobody\"]\n\
         [[role]]\nname = \"b\"\narn = \"arn:aws:iam::123456789012:role/b\"\n\
         local_users = [\"also-missing-stsb\", 65534]\n"
    );
    let errs = errors(&text);
    let want = [
        "role \"a\": key \"local_users\": no user named \"no-such-user-stsb\"",
        "role \"a\": key \"local_users\": root (UID 0) cannot be a local user",
        "role \"a\": key \"local_users\": -1 is not a UID",
        "role \"a\": key \"local_users\": 4294967295 is not a UID",
        "role \"b\": key \"local_users\": no user named \"also-missing-stsb\"",
    ];
    for w in want {
        assert!(errs.iter().any(|e| e.contains(w)), "{w}\n{errs:#?}");
    }
    assert_eq!(
        errs.iter().filter(|e| e.contains("root (UID 0)")).count(),
        2,
        "\"root\" and 0 are both refused: {errs:#?}"
    );
    // A UID in two roles: only the cross-role check can see it (each role is fine alone).
    let text = format!(
        "{BASE}\n[[role]]\nname = \"a\"\narn = \"arn:aws:iam::123456789012:role/a\"\n\
         local_users = [\"nobody\"]\n\
         [[role]]\nname = \"b\"\narn = \"arn:aws:iam::123456789012:role/b\"\n\
         local_users = [65534]\n"
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].contains("role \"b\": key \"local_users\": user \"nobody\" (UID 65534) is already a local user of role \"a\""),
        "{errs:#?}"
    );
    // Wrong types name the key.
    let errs = errors(&role("local_users = \"nobody\""));
    assert!(errs.iter().any(|e| e.contains("local_users")), "{errs:#?}");
}

#[test]
fn imds_role_is_required_only_without_local_users() {
    let errs = errors(&format!("{}\n[imds]\nlisten = \"127.0.0.1:0\"\n", role("")));
    assert!(
        errs.iter()
            .any(|e| e
                .contains("[imds]: key \"role\": required unless some [[role]] has local_users")),
        "{errs:#?}"
    );
    // The IMDS floor is checked for every role IMDS serves, local users' roles included.
    let errs = errors(&format!(
        "{}\n[refresh]\nlead = \"20m\"\nmin_remaining = \"10m\"\n[imds]\nlisten = \"127.0.0.1:0\"\n",
        role("local_users = [4242]")
    ));
    assert!(
        errs.iter()
            .any(|e| e.contains("[imds]: key \"min_remaining\"") && e.contains("role \"app\"")),
        "{errs:#?}"
    );
}

#[test]
fn fleet_settings_parse_with_defaults() {
    let c = parse(&role("")).unwrap();
    assert!(c.sts.adaptive_rate, "adaptive rate is on by default");
    assert_eq!(c.sts.unhealthy_after, DEFAULT_UNHEALTHY_AFTER);
    assert_eq!(c.sts.cooldown, DEFAULT_COOLDOWN);
    assert_eq!(c.sts.hedge_after, None);
    assert_eq!(c.refresh.startup_spread, Duration::ZERO);
    assert_eq!(c.refresh.revoke_before, None);
    assert_eq!(c.sts.targets("us-east-1").unwrap().len(), 1);

    let text = format!(
        r#"{BASE}
failover_regions = ["us-east-2", "us-west-2"]
hedge_after = "1500ms"
adaptive_rate = false
min_calls_per_second = 0.5
unhealthy_after = 2
cooldown = "10s"
[refresh]
startup_spread = "2m"
revoke_before = "2026-11-29T12:00:00Z"
[[role]]
name = "app"
arn = "arn:aws:iam::123456789012:role/app"
tokens = ["tok-0123456789abcdef"]
revoke_before = "2026-11-29T14:00:00+02:00"
"#
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.sts.failover_regions, ["us-east-2", "us-west-2"]);
    assert_eq!(c.sts.hedge_after, Some(Duration::from_millis(1500)));
    assert!(!c.sts.adaptive_rate);
    assert_eq!(c.sts.unhealthy_after, 2);
    assert_eq!(c.sts.cooldown, Duration::from_secs(10));
    assert_eq!(c.refresh.startup_spread, Duration::from_secs(120));
    let noon = humantime::parse_rfc3339("2026-11-29T12:00:00Z").unwrap();
    assert_eq!(c.refresh.revoke_before, Some(noon));
    assert_eq!(c.roles[0].revoke_before, Some(noon));
    let labels: Vec<String> = c
        .sts
        .targets("us-east-1")
        .unwrap()
        .iter()
        .map(EndpointTarget::label)
        .collect();
    assert_eq!(labels[2], "https://sts.us-west-2.amazonaws.com");
}

#[test]
fn fleet_settings_report_every_problem() {
    let text = r#"
[sts]
region = "us-east-1"
endpoint = "https://vpce-1.sts.us-east-1.vpce.amazonaws.com"
endpoints = ["https://sts.us-east-2.amazonaws.com", "sts.eu-west-1.amazonaws.com", "https://u:secret@sts.us-west-2.amazonaws.com"]
hedge_after = "0s"
unhealthy_after = 0
[refresh]
revoke_before = "2026-11-29 12:00"
"#;
    let errs = errors(text);
    let want = [
        ("[sts]: key \"endpoints\"", "not both"),
        ("[sts]: key \"endpoints\"", "must be a URL"),
        ("[sts]: key \"endpoints\"", "user:password@"),
        ("[sts]: key \"hedge_after\"", "greater than zero"),
        ("[sts]: key \"unhealthy_after\"", "at least 1"),
        ("[refresh]: key \"revoke_before\"", "RFC 3339"),
    ];
    assert!(
        errs.iter().all(|e| !e.contains("secret@")),
        "the password is not echoed: {errs:?}"
    );
    for (key, msg) in want {
        assert!(
            errs.iter().any(|e| e.contains(key) && e.contains(msg)),
            "{key} {msg}: {errs:#?}"
        );
    }
    let cross = errors(&format!(
        "{BASE}failover_regions = [\"cn-north-1\"]\n[[role]]\nname = \"app\"\narn = \"arn:aws:iam::123456789012:role/app\"\ntokens = [\"tok-0123456789abcdef\"]\n"
    ));
    assert!(
        cross
            .iter()
            .any(|e| e.contains("failover_regions") && e.contains("aws-cn")),
        "{cross:?}"
    );
    let lonely_hedge = errors(&role("").replace(
        "region = \"us-east-1\"",
        "region = \"us-east-1\"\nhedge_after = \"1s\"",
    ));
    assert!(
        lonely_hedge.iter().any(|e| e.contains("second endpoint")),
        "{lonely_hedge:?}"
    );
}

// === [kubernetes] and workload roles ===

const K8S: &str = r#"
[kubernetes]
issuer = "https://kubernetes.default.svc"
audiences = ["sts-broker"]
jwks = "/etc/sts-broker/jwks.json"
cluster_name = "prod-eu"
"#;

fn k8s_role(extra: &str) -> String {
    format!(
        "{BASE}{K8S}\n[[role]]\nname = \"payments\"\narn = \"arn:aws:iam::123456789012:role/payments\"\nservice_accounts = [\"payments/api\", \"batch/*\"]\n{extra}\n"
    )
}

#[test]
fn kubernetes_roles_parse_with_defaults() {
    let cfg = parse(&k8s_role("")).unwrap();
    let k = cfg.kubernetes.as_ref().unwrap();
    assert_eq!(k.jwks, JwksSource::File("/etc/sts-broker/jwks.json".into()));
    assert_eq!(k.leeway, Duration::from_secs(30));
    assert_eq!(k.session_idle, Duration::from_secs(7200));
    assert_eq!(k.max_sessions, 10_000);
    let r = cfg.role("payments").unwrap();
    let w = r.spec.workload.as_ref().unwrap();
    assert_eq!(w.scope, SessionScope::ServiceAccount);
    assert!(w.allows("payments", "api") && w.allows("batch", "x") && !w.allows("payments", "x"));
    assert_eq!(
        w.session_template.as_deref(),
        Some("{namespace}.{service_account}")
    );
    // The role's own session (static tokens) keeps a plain name, and is not prefetched
    // when only per-caller sessions use the role.
    assert_eq!(r.spec.session_name.as_deref(), Some("sts-broker-node-1"));
    assert!(!r.spec.prefetch);
    // No tokens but service accounts: reachable, so no warning about it.
    assert!(
        cfg.warnings
            .iter()
            .map(ToString::to_string)
            .all(|w| !w.contains("no tokens")),
        "{:?}",
        cfg.warnings
    );
    let cfg = parse(&k8s_role(
        "session_scope = \"pod\"\nsession_name = \"{cluster}-{pod}\"",
    ))
    .unwrap();
    let w = cfg.role("payments").unwrap().spec.workload.clone().unwrap();
    assert_eq!(w.session_template.as_deref(), Some("prod-eu-{pod}"));
}

#[test]
fn kubernetes_problems_are_reported_together() {
    let text = format!(
        r#"{BASE}
[kubernetes]
audiences = []
jwks = "somewhere"
leeway = "1h"
node_name = "${{STS_BROKER_TEST_SURELY_UNSET_VAR}}"
max_sessions = 0
[[role]]
name = "payments"
arn = "arn:aws:iam::123456789012:role/payments"
service_accounts = ["payments", "Bad/x"]
session_scope = "pod"
session_name = "{{namespace}}.{{service_account}}.{{pod}}.{{cluster}}"
tags = {{ kubernetes-namespace = "spoof" }}
[[role]]
name = "irsa"
kind = "web_identity"
arn = "arn:aws:iam::123456789012:role/irsa"
web_identity_token_file = "/etc/hostname"
service_accounts = ["a/b"]
[[role]]
name = "narrow"
arn = "arn:aws:iam::123456789012:role/narrow"
service_accounts = ["a/b"]
session_name = "{{pod}}"
"#
    );
    let errs = errors(&text);
    let joined = errs.join("\n");
    for needle in [
        "[kubernetes]: key \"issuer\": required",
        "[kubernetes]: key \"audiences\"",
        "[kubernetes]: key \"jwks\": \"somewhere\"",
        "[kubernetes]: key \"leeway\"",
        "STS_BROKER_TEST_SURELY_UNSET_VAR",
        "[kubernetes]: key \"max_sessions\"",
        "role \"payments\": key \"service_accounts\": \"payments\" must be",
        "role \"payments\": key \"service_accounts\": \"Bad/x\"",
        "role \"irsa\": key \"session_scope\"",
        "role \"narrow\": key \"session_name\"",
    ] {
        assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
    }
    // Checks that need a valid [kubernetes] table and role, reported together too.
    let text = k8s_role(
        "session_scope = \"pod\"\nsession_name = \"{cluster}.{pod}\"\ntags = { kubernetes-namespace = \"spoof\" }",
    )
    .replace("cluster_name = \"prod-eu\"\n", "");
    let joined = errors(&text).join("\n");
    for needle in [
        "role \"payments\": key \"session_name\": uses {cluster}",
        "role \"payments\": key \"tags\": tag key \"kubernetes-namespace\" is set by the broker",
    ] {
        assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
    }
}

#[test]
fn service_accounts_need_the_kubernetes_table_and_the_tag_budget() {
    let text = format!(
        "{BASE}\n[[role]]\nname = \"p\"\narn = \"arn:aws:iam::123456789012:role/p\"\nservice_accounts = [\"a/b\"]\n"
    );
    assert!(
        errors(&text)
            .join("\n")
            .contains("needs a [kubernetes] table")
    );
    let tags: Vec<String> = (0..47).map(|i| format!("t{i} = \"v\"")).collect();
    let text = k8s_role(&format!(
        "session_scope = \"pod\"\ntags = {{ {} }}",
        tags.join(", ")
    ));
    let e = errors(&text).join("\n");
    assert!(e.contains("47 tags + 5 caller tags"), "{e}");
    // The same tags fit with one session for the whole role.
    let text = k8s_role(&format!(
        "session_scope = \"role\"\ntags = {{ {} }}",
        tags.join(", ")
    ));
    parse(&text).unwrap();
}

#[test]
fn api_server_jwks_needs_an_address() {
    let text = format!(
        "{BASE}\n[kubernetes]\nissuer = \"https://k\"\naudiences = [\"a\"]\njwks = \"api_server\"\napi_server_url = \"https://10.0.0.1:443\"\n[[role]]\nname = \"p\"\narn = \"arn:aws:iam::123456789012:role/p\"\nservice_accounts = [\"a/b\"]\n"
    );
    let cfg = parse(&text).unwrap();
    match &cfg.kubernetes.unwrap().jwks {
        JwksSource::ApiServer {
            url, token_file, ..
        } => {
            assert_eq!(url, "https://10.0.0.1:443");
            assert!(token_file.ends_with("serviceaccount/token"));
        }
        other => panic!("{other:?}"),
    }
    let text = text.replace("https://10.0.0.1:443", "http://10.0.0.1");
    assert!(errors(&text).join("\n").contains("must be an https:// URL"));
    let text = format!(
        "{BASE}\n[kubernetes]\nissuer = \"http://k\"\naudiences = [\"a\"]\njwks = \"discovery\"\n[[role]]\nname = \"p\"\narn = \"arn:aws:iam::123456789012:role/p\"\nservice_accounts = [\"a/b\"]\n"
    );
    assert!(
        errors(&text)
            .join("\n")
            .contains("needs an https:// issuer")
    );
}

#[test]
fn source_role_chains_are_resolved_once() {
    let role = |name: &str, source: &str| {
        let source = if source.is_empty() {
            String::new()
        } else {
            format!("source_role = \"{source}\"\n")
        };
        format!(
            "[[role]]\nname = \"{name}\"\narn = \"arn:aws:iam::123456789012:role/{name}\"\ntokens = [\"tok-{name}-0123456789abcdef\"]\n{source}"
        )
    };
    let text = format!(
        "{BASE}\n{}{}{}{}",
        role("c", "b"),
        role("b", "a"),
        role("d", "a"),
        role("a", "")
    );
    let c = parse(&text).unwrap();
    let names = |it: &mut dyn Iterator<Item = &Arc<RoleConfig>>| -> Vec<String> {
        it.map(|r| r.name.clone()).collect()
    };
    // Sources first; roles of one depth in config order.
    assert_eq!(names(&mut c.in_dependency_order()), ["a", "b", "d", "c"]);
    assert_eq!(names(&mut c.ancestors("c")), ["b", "a"]);
    assert_eq!(names(&mut c.ancestors("d")), ["a"]);
    assert!(c.ancestors("a").next().is_none());
    assert!(c.ancestors("nobody").next().is_none());
    let chain: Vec<&str> = c
        .chain("c")
        .unwrap()
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(chain, ["c", "b", "a"]);
    assert!(c.chain("nobody").is_none());
}

#[test]
fn keys_of_another_kind_and_unknown_keys_are_named() {
    let errs = errors(&role(
        "kind = \"session_token\"\nmfa_serial = \"x\"\nexternal_id = \"abcd\"",
    ));
    // `arn` is a key of assume_role (and others), not of session_token.
    assert!(
        errs.iter().any(|e| e
            == "test.toml: role \"app\": key \"arn\": is used by kind = \"assume_role\", not by kind = \"session_token\""),
        "{errs:#?}"
    );
    let errs = errors(
        &role("kind = \"session_token\"\ncolour = 1")
            .replace("arn = \"arn:aws:iam::123456789012:role/app\"\n", ""),
    );
    let unknown = errs
        .iter()
        .find(|e| e.contains("key \"colour\": unknown key; expected one of "))
        .unwrap_or_else(|| panic!("{errs:#?}"));
    // The list names the keys this kind takes, each once.
    assert!(unknown.contains("mfa_serial"), "{unknown}");
    assert!(!unknown.contains("external_id"), "{unknown}");
    assert!(!unknown.contains("arn,"), "{unknown}");
    // `[imds]` takes the listener keys and its own.
    let errs = errors(&format!(
        "{}\n[imds]\nrole = \"app\"\ncolour = 1\n",
        role("")
    ));
    assert!(
        errs.iter().any(|e| e.ends_with(
            "[imds]: key \"colour\": unknown key; expected one of listen, allowed_hosts, max_connections, per_peer_rate_limit, allowed_sources, role, allow_v1, max_token_ttl, min_remaining, hop_limit"
        )),
        "{errs:#?}"
    );
    let errs = errors(&role("kind = \"bogus\""));
    assert!(
        errs.iter().any(|e| e.ends_with(
            "key \"kind\": \"bogus\" is not one of assume_role, web_identity, session_token, federation_token, saml"
        )),
        "{errs:#?}"
    );
}
