//! Whole-file parsing: every table and kind, each problem named with file, scope and key.
//! Tests by subject: `roles` (`[[role]]`, its kinds and chains), `tables` (the other
//! top-level tables), `kubernetes`; the shared helpers and the whole-file cases are here.

mod kubernetes;
mod roles;
mod tables;

use super::refresh::{DEFAULT_LEAD, DEFAULT_MIN_REMAINING};
use super::sts::DEFAULT_STS_TIMEOUT;
use super::*;
use std::time::Duration;

pub(super) fn ctx() -> LoadContext {
    LoadContext {
        hostname: "node-1".to_string(),
    }
}

pub(super) const BASE: &str = r#"
[sts]
region = "us-east-1"
"#;

pub(super) fn role(extra: &str) -> String {
    format!(
        "{BASE}\n[[role]]\nname = \"app\"\narn = \"arn:aws:iam::123456789012:role/app\"\ntokens = [\"tok-0123456789abcdef\"]\n{extra}\n"
    )
}

pub(super) fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::parse(text, "test.toml", &ctx())
}

#[track_caller]
pub(super) fn errors(text: &str) -> Vec<String> {
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
