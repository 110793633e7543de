//! The top-level tables besides `[[role]]`: `[sts]`, `[source]`, `[refresh]`, the listeners,
//! `[audit]`.

use super::{BASE, errors, parse, role};
use crate::config::listener::{DEFAULT_IMDS_MIN_REMAINING, DEFAULT_MAX_CONNECTIONS};
use crate::config::sts::{DEFAULT_COOLDOWN, DEFAULT_UNHEALTHY_AFTER};
use crate::config::*;
use std::time::Duration;

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
