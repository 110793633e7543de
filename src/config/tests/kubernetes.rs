//! `[kubernetes]` and the role keys that admit workloads.

use super::{BASE, errors, parse};
use crate::config::*;
use std::time::Duration;

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
