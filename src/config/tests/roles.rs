//! `[[role]]`: the limits of each kind, tokens, local users, chaining.

use super::{BASE, errors, parse, role};
use crate::config::*;
use crate::creds::Secret;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

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
