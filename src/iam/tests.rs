use serde_json::{Value, json};

use super::*;
use crate::config::{Config, LoadContext};

const BROKER: &str = "arn:aws:iam::123456789012:user/sts-broker";
const SECRET_ID: &str = "SECRET-MARKER-ext-id-42";

fn config(roles: &str) -> Config {
    config_with("", roles)
}

fn config_with(head: &str, roles: &str) -> Config {
    let text = format!("[sts]\nregion = \"us-east-1\"\n{head}\n{roles}");
    let ctx = LoadContext {
        hostname: "node-1".into(),
    };
    Config::parse(&text, "test.toml", &ctx).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn broker() -> BrokerPrincipal {
    BrokerPrincipal::parse(BROKER, PrincipalOrigin::Flag).unwrap()
}

fn role_arn(name: &str) -> String {
    format!("arn:aws:iam::123456789012:role/{name}")
}

/// `[[role]]` of kind assume_role named `name` with `extra` lines.
fn assume(name: &str, extra: &str) -> String {
    format!(
        "[[role]]\nname = \"{name}\"\narn = \"{}\"\ntokens = [\"tok-0123456789abcdef\"]\n{extra}\n",
        role_arn(name)
    )
}

fn kind(name: &str, kind: &str, extra: &str) -> String {
    format!(
        "[[role]]\nname = \"{name}\"\nkind = \"{kind}\"\ntokens = [\"tok-0123456789abcdef\"]\n{extra}\n"
    )
}

fn policies_json(config: &Config, role: &str) -> Value {
    let r = config.role(role).unwrap();
    serde_json::to_value(role_policies(config, r, Some(&broker()))).unwrap()
}

fn policy(statement: Value) -> Value {
    json!({"Version": "2012-10-17", "Statement": [statement]})
}

struct Case {
    docs: &'static str,
    roles: String,
    role: &'static str,
    caller: Option<String>,
    trust: Option<Value>,
    permission: Option<Value>,
    /// Fragments some note must contain.
    notes: &'static [&'static str],
}

fn cases(web_token: &str) -> Vec<Case> {
    let app = role_arn("app");
    let base = role_arn("base");
    vec![
        Case {
            docs: "plain assume_role: the broker's principal is trusted and may assume exactly this role",
            roles: assume("app", ""),
            role: "app",
            caller: Some(BROKER.into()),
            trust: Some(policy(json!({"Effect": "Allow", "Principal": {"AWS": BROKER}, "Action": ["sts:AssumeRole"]}))),
            permission: Some(policy(json!({"Effect": "Allow", "Action": ["sts:AssumeRole"], "Resource": app}))),
            notes: &["caller: the broker's principal"],
        },
        Case {
            docs: "session tags need sts:TagSession on both sides",
            roles: assume("app", "tags = { team = \"payments\", env = \"prod\" }"),
            role: "app",
            caller: Some(BROKER.into()),
            trust: Some(policy(json!({"Effect": "Allow", "Principal": {"AWS": BROKER}, "Action": ["sts:AssumeRole", "sts:TagSession"]}))),
            permission: Some(policy(json!({"Effect": "Allow", "Action": ["sts:AssumeRole", "sts:TagSession"], "Resource": app}))),
            notes: &["sends session tags (\"env\", \"team\")"],
        },
        Case {
            docs: "a source identity needs sts:SetSourceIdentity on both sides",
            roles: assume("app", "source_identity = \"alice\""),
            role: "app",
            caller: Some(BROKER.into()),
            trust: Some(policy(json!({"Effect": "Allow", "Principal": {"AWS": BROKER}, "Action": ["sts:AssumeRole", "sts:SetSourceIdentity"]}))),
            permission: Some(policy(json!({"Effect": "Allow", "Action": ["sts:AssumeRole", "sts:SetSourceIdentity"], "Resource": app}))),
            notes: &["source identity \"alice\""],
        },
        Case {
            docs: "an external ID is a trust policy condition only",
            roles: assume("app", &format!("external_id = \"{SECRET_ID}\"")),
            role: "app",
            caller: Some(BROKER.into()),
            trust: Some(policy(json!({"Effect": "Allow", "Principal": {"AWS": BROKER}, "Action": ["sts:AssumeRole"],
                "Condition": {"StringEquals": {"sts:ExternalId": SECRET_ID}}}))),
            permission: Some(policy(json!({"Effect": "Allow", "Action": ["sts:AssumeRole"], "Resource": app}))),
            notes: &["sts:ExternalId: the condition holds this role's external_id, a secret"],
        },
        Case {
            docs: "every option at once",
            roles: assume("app", &format!("external_id = \"{SECRET_ID}\"\ntags = {{ team = \"payments\" }}\ntransitive_tag_keys = [\"team\"]\nsource_identity = \"alice\"")),
            role: "app",
            caller: Some(BROKER.into()),
            trust: Some(policy(json!({"Effect": "Allow", "Principal": {"AWS": BROKER},
                "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"],
                "Condition": {"StringEquals": {"sts:ExternalId": SECRET_ID}}}))),
            permission: Some(policy(json!({"Effect": "Allow", "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"], "Resource": app}))),
            notes: &["transitive_tag_keys (\"team\")"],
        },
        Case {
            docs: "chaining: the source role's role is trusted and needs the permission policy",
            roles: assume("app", "source_role = \"base\"") + &assume("base", ""),
            role: "app",
            caller: Some(base.clone()),
            trust: Some(policy(json!({"Effect": "Allow", "Principal": {"AWS": base}, "Action": ["sts:AssumeRole"]}))),
            permission: Some(policy(json!({"Effect": "Allow", "Action": ["sts:AssumeRole"], "Resource": app}))),
            notes: &["chained from role \"base\"", "put-role-policy --role-name base", "at most 1h"],
        },
        Case {
            docs: "the source role of a chain is an ordinary role of the broker",
            roles: assume("app", "source_role = \"base\"") + &assume("base", ""),
            role: "base",
            caller: Some(BROKER.into()),
            trust: Some(policy(json!({"Effect": "Allow", "Principal": {"AWS": BROKER}, "Action": ["sts:AssumeRole"]}))),
            permission: Some(policy(json!({"Effect": "Allow", "Action": ["sts:AssumeRole"], "Resource": base}))),
            notes: &[],
        },
        Case {
            docs: "transitive tags and a source identity up the chain reach the chained session",
            roles: assume("app", "source_role = \"mid\"")
                + &assume("mid", "source_role = \"base\"")
                + &assume("base", "tags = { team = \"payments\" }\ntransitive_tag_keys = [\"team\"]\nsource_identity = \"alice\""),
            role: "app",
            caller: Some(role_arn("mid")),
            trust: Some(policy(json!({"Effect": "Allow", "Principal": {"AWS": role_arn("mid")},
                "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"]}))),
            permission: Some(policy(json!({"Effect": "Allow", "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"], "Resource": app}))),
            notes: &["transitive session tags (\"team\") reach this session", "\"alice\" persists"],
        },
        Case {
            docs: "tags that are not transitive stay in the source session",
            roles: assume("app", "source_role = \"base\"") + &assume("base", "tags = { team = \"payments\" }"),
            role: "app",
            caller: Some(base.clone()),
            trust: Some(policy(json!({"Effect": "Allow", "Principal": {"AWS": base}, "Action": ["sts:AssumeRole"]}))),
            permission: Some(policy(json!({"Effect": "Allow", "Action": ["sts:AssumeRole"], "Resource": app}))),
            notes: &[],
        },
        Case {
            docs: "chained from a session token: GetSessionToken credentials act as the broker's user",
            roles: assume("app", "source_role = \"mfa\"") + &kind("mfa", "session_token", ""),
            role: "app",
            caller: Some(BROKER.into()),
            trust: Some(policy(json!({"Effect": "Allow", "Principal": {"AWS": BROKER}, "Action": ["sts:AssumeRole"]}))),
            permission: Some(policy(json!({"Effect": "Allow", "Action": ["sts:AssumeRole"], "Resource": app}))),
            notes: &[],
        },
        Case {
            docs: "cross-account: both policies, in two accounts",
            roles: "[[role]]\nname = \"far\"\narn = \"arn:aws:iam::222222222222:role/deploy/far\"\ntokens = [\"tok-0123456789abcdef\"]\n".into(),
            role: "far",
            caller: Some(BROKER.into()),
            trust: Some(policy(json!({"Effect": "Allow", "Principal": {"AWS": BROKER}, "Action": ["sts:AssumeRole"]}))),
            permission: Some(policy(json!({"Effect": "Allow", "Action": ["sts:AssumeRole"], "Resource": "arn:aws:iam::222222222222:role/deploy/far"}))),
            notes: &["cross-account: the trust policy goes on the role in account 222222222222"],
        },
        Case {
            docs: "web identity: the OIDC provider is trusted, audience and subject placeholders; unsigned, so no permission policy",
            roles: kind("irsa", "web_identity", &format!("arn = \"arn:aws:iam::111111111111:role/irsa\"\nweb_identity_token_file = {web_token:?}")),
            role: "irsa",
            caller: None,
            trust: Some(policy(json!({"Effect": "Allow",
                "Principal": {"Federated": "arn:aws:iam::111111111111:oidc-provider/<OIDC_PROVIDER>"},
                "Action": ["sts:AssumeRoleWithWebIdentity"],
                "Condition": {"StringEquals": {"<OIDC_PROVIDER>:aud": "sts.amazonaws.com",
                    "<OIDC_PROVIDER>:sub": "system:serviceaccount:<NAMESPACE>:<SERVICE_ACCOUNT>"}}}))),
            permission: None,
            notes: &["no permission policy: AssumeRoleWithWebIdentity is unsigned", "registered in account 111111111111"],
        },
        Case {
            docs: "SAML: the provider is trusted with the sign-in audience; unsigned",
            roles: kind("corp", "saml", "arn = \"arn:aws:iam::123456789012:role/corp\"\nprincipal_arn = \"arn:aws:iam::123456789012:saml-provider/corp-idp\"\nsaml_assertion_command = [\"/bin/echo\", \"x\"]"),
            role: "corp",
            caller: None,
            trust: Some(policy(json!({"Effect": "Allow",
                "Principal": {"Federated": "arn:aws:iam::123456789012:saml-provider/corp-idp"},
                "Action": ["sts:AssumeRoleWithSAML"],
                "Condition": {"StringEquals": {"SAML:aud": "https://signin.aws.amazon.com/saml"}}}))),
            permission: None,
            notes: &["no permission policy: AssumeRoleWithSAML is unsigned", "must list arn:aws:iam::123456789012:role/corp,arn:aws:iam::123456789012:saml-provider/corp-idp"],
        },
        Case {
            docs: "session token: no role, GetSessionToken on * (no resource type)",
            roles: kind("mfa", "session_token", "mfa_serial = \"arn:aws:iam::123456789012:mfa/ops\"\nmfa_code_command = [\"/bin/echo\", \"123456\"]"),
            role: "mfa",
            caller: Some(BROKER.into()),
            trust: None,
            permission: Some(policy(json!({"Effect": "Allow", "Action": ["sts:GetSessionToken"], "Resource": "*"}))),
            notes: &["sts:GetSessionToken has no resource type", "IAM user's long-term access keys", "mfa_serial arn:aws:iam::123456789012:mfa/ops"],
        },
        Case {
            docs: "federation token: GetFederationToken on *, effective permissions are an intersection",
            roles: kind("fed", "federation_token", "federated_name = \"intranet\"\npolicy_arns = [\"arn:aws:iam::aws:policy/ReadOnlyAccess\"]"),
            role: "fed",
            caller: Some(BROKER.into()),
            trust: None,
            permission: Some(policy(json!({"Effect": "Allow", "Action": ["sts:GetFederationToken"], "Resource": "*"}))),
            notes: &["intersection of the broker user's own permissions and the session policy", "sts:GetFederationToken has no resource type"],
        },
        Case {
            docs: "federation token with session tags adds sts:TagSession",
            roles: kind("fed", "federation_token", "federated_name = \"intranet\"\npolicy_arns = [\"arn:aws:iam::aws:policy/ReadOnlyAccess\"]\ntags = { team = \"web\" }"),
            role: "fed",
            caller: Some(BROKER.into()),
            trust: None,
            permission: Some(policy(json!({"Effect": "Allow", "Action": ["sts:GetFederationToken", "sts:TagSession"], "Resource": "*"}))),
            notes: &["sends session tags (\"team\")"],
        },
    ]
}

#[test]
fn kubernetes_caller_sessions_need_tag_session() {
    let cfg = config_with(
        "[kubernetes]\nissuer = \"https://k\"\naudiences = [\"a\"]\njwks = \"/dev/null\"\ncluster_name = \"c\"\n",
        &format!(
            "{}\n{}",
            assume(
                "pods",
                "service_accounts = [\"ns/sa\"]\nsession_scope = \"pod\""
            ),
            assume(
                "shared",
                "service_accounts = [\"ns/sa\"]\nsession_scope = \"role\""
            )
        ),
    );
    let pods = policies_json(&cfg, "pods");
    assert_eq!(
        pods["trust_policy"]["Statement"][0]["Action"],
        json!(["sts:AssumeRole", "sts:TagSession"]),
        "{pods:#}"
    );
    assert!(pods.to_string().contains("kubernetes-pod-uid"), "{pods:#}");
    let shared = policies_json(&cfg, "shared");
    assert_eq!(
        shared["trust_policy"]["Statement"][0]["Action"],
        json!(["sts:AssumeRole"]),
        "one shared session carries no caller tags: {shared:#}"
    );
}

#[test]
fn every_kind_and_option_gets_exactly_the_actions_and_conditions_it_implies() {
    let dir = tempfile::tempdir().unwrap();
    let web_token = dir.path().join("web.token");
    std::fs::write(&web_token, "eyJhbGciOiJSUzI1NiJ9.e30.c2ln").unwrap();
    for case in cases(web_token.to_str().unwrap()) {
        let config = config(&case.roles);
        let got = policies_json(&config, case.role);
        let docs = case.docs;
        assert_eq!(got["role"], case.role, "{docs}");
        assert_eq!(got["caller"], json!(case.caller), "{docs}: caller");
        assert_eq!(
            got["trust_policy"],
            case.trust.unwrap_or(Value::Null),
            "{docs}: trust policy\n{got:#}"
        );
        assert_eq!(
            got["permission_policy"],
            case.permission.unwrap_or(Value::Null),
            "{docs}: permission policy\n{got:#}"
        );
        let notes: Vec<&str> = got["notes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        for want in case.notes {
            assert!(
                notes.iter().any(|n| n.contains(want)),
                "{docs}: no note contains {want:?}:\n{notes:#?}"
            );
        }
    }
}

#[test]
fn principals_are_user_or_role_arns_and_assumed_roles_become_their_role() {
    // (docs, input, Ok((arn, kind, name, path_unknown)) or Err(fragment))
    type Want = Result<(&'static str, IdentityKind, &'static str, bool), &'static str>;
    let cases: [(&str, &str, Want); 9] = [
        (
            "a user",
            BROKER,
            Ok((BROKER, IdentityKind::User, "sts-broker", false)),
        ),
        (
            "a user with a path",
            "arn:aws:iam::123456789012:user/ops/broker",
            Ok((
                "arn:aws:iam::123456789012:user/ops/broker",
                IdentityKind::User,
                "broker",
                false,
            )),
        ),
        (
            "a role with a path",
            "arn:aws:iam::123456789012:role/svc/node",
            Ok((
                "arn:aws:iam::123456789012:role/svc/node",
                IdentityKind::Role,
                "node",
                false,
            )),
        ),
        (
            "an assumed-role session becomes its role (path unknown)",
            "arn:aws:sts::123456789012:assumed-role/node/i-0abc",
            Ok((
                "arn:aws:iam::123456789012:role/node",
                IdentityKind::Role,
                "node",
                true,
            )),
        ),
        (
            "other partitions are kept",
            "arn:aws-cn:sts::123456789012:assumed-role/node/i-0abc",
            Ok((
                "arn:aws-cn:iam::123456789012:role/node",
                IdentityKind::Role,
                "node",
                true,
            )),
        ),
        (
            "the root user cannot assume roles",
            "arn:aws:iam::123456789012:root",
            Err("root user"),
        ),
        (
            "federated users cannot assume roles",
            "arn:aws:sts::123456789012:federated-user/bob",
            Err("federated user"),
        ),
        (
            "a policy is no principal",
            "arn:aws:iam::123456789012:policy/x",
            Err("is not an IAM user or role ARN"),
        ),
        ("garbage", "broker", Err("is not an IAM user or role ARN")),
    ];
    for (docs, input, want) in cases {
        let got = BrokerPrincipal::parse(input, PrincipalOrigin::CallerIdentity);
        match (got, want) {
            (Ok(p), Ok((arn, kind, name, path_unknown))) => {
                assert_eq!(
                    (p.arn.as_str(), p.kind, p.name.as_str(), p.path_unknown),
                    (arn, kind, name, path_unknown),
                    "{docs}"
                );
            }
            (Err(e), Err(fragment)) => {
                assert!(e.to_string().contains(fragment), "{docs}: {e}");
            }
            (got, want) => panic!("{docs}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn an_assumed_role_principal_is_noted_as_missing_its_path() {
    let config = config(&assume("app", ""));
    let p = BrokerPrincipal::parse(
        "arn:aws:sts::123456789012:assumed-role/node/i-0abc",
        PrincipalOrigin::CallerIdentity,
    )
    .unwrap();
    let out = role_policies(&config, config.role("app").unwrap(), Some(&p));
    assert_eq!(
        out.caller.as_deref(),
        Some("arn:aws:iam::123456789012:role/node")
    );
    assert!(
        out.notes
            .iter()
            .any(|n| n.contains("leaves out the role's path")
                && n.contains("aws iam get-role --role-name node")),
        "{:#?}",
        out.notes
    );
    assert!(
        out.notes.iter().any(|n| n.contains("GetCallerIdentity")),
        "{:#?}",
        out.notes
    );
}

#[test]
fn token_kinds_warn_when_the_broker_is_a_role() {
    let config = config(&kind("mfa", "session_token", ""));
    let p = BrokerPrincipal::parse("arn:aws:iam::123456789012:role/node", PrincipalOrigin::Flag)
        .unwrap();
    let out = role_policies(&config, config.role("mfa").unwrap(), Some(&p));
    assert!(
        out.notes
            .iter()
            .any(|n| n.starts_with("warning: the broker's principal is a role")),
        "{:#?}",
        out.notes
    );
}

#[test]
fn a_web_identity_source_chains_every_assume_role() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("t");
    std::fs::write(&token, "x.y.z").unwrap();
    let head = format!(
        "[source]\nkind = \"web_identity\"\ntoken_file = {:?}\nrole_arn = \"arn:aws:iam::123456789012:role/broker\"\n",
        token.to_str().unwrap()
    );
    let config = config_with(&head, &assume("app", ""));
    let p = BrokerPrincipal::parse(
        "arn:aws:iam::123456789012:role/broker",
        PrincipalOrigin::SourceRoleArn,
    )
    .unwrap();
    let out = role_policies(&config, config.role("app").unwrap(), Some(&p));
    assert_eq!(
        out.caller.as_deref(),
        Some("arn:aws:iam::123456789012:role/broker")
    );
    assert!(
        out.notes.iter().any(|n| n.contains("role chaining")),
        "{:#?}",
        out.notes
    );
}

#[test]
fn json_lines_and_annotated_text_carry_the_same_documents() {
    let config = config(
        &(assume(
            "app",
            "tags = { team = \"payments\" }\nsource_role = \"base\"",
        ) + &assume("base", "")
            + &kind("mfa", "session_token", "")),
    );
    let all: Vec<RolePolicies> = config
        .roles
        .iter()
        .map(|r| role_policies(&config, r, Some(&broker())))
        .collect();

    let json_out = render_json(&all);
    let lines: Vec<Value> = json_out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 3, "{json_out}");
    for (line, want) in lines.iter().zip(&all) {
        assert_eq!(line, &serde_json::to_value(want).unwrap());
        let keys: Vec<&str> = line
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for k in [
            "role",
            "kind",
            "role_arn",
            "caller",
            "trust_policy",
            "permission_policy",
            "notes",
        ] {
            assert!(keys.contains(&k), "{k} missing in {line}");
        }
    }

    let text = render_text(&all);
    let stripped: String = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let docs: Vec<Value> = serde_json::Deserializer::from_str(&stripped)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{e}:\n{text}"));
    let want: Vec<Value> = all
        .iter()
        .flat_map(|p| [p.trust_policy.as_ref(), p.permission_policy.as_ref()])
        .flatten()
        .map(|d| serde_json::to_value(d).unwrap())
        .collect();
    assert_eq!(docs, want, "{text}");
    for fragment in [
        "# role \"app\" (kind assume_role): arn:aws:iam::123456789012:role/app",
        "#   aws iam create-role --role-name app --assume-role-policy-document file://app-trust.json",
        "#   aws iam put-role-policy --role-name base --policy-name sts-broker-app --policy-document file://app-permissions.json",
        "#   aws iam put-user-policy --user-name sts-broker --policy-name sts-broker-base --policy-document file://base-permissions.json",
        "# no trust policy: this kind obtains no role",
    ] {
        assert!(text.contains(fragment), "missing {fragment:?} in:\n{text}");
    }
}

#[test]
fn the_merged_permission_policy_covers_what_the_broker_signs() {
    let config = config(
        &(assume("app", "source_role = \"base\"")
            + &assume("base", "")
            + &assume("tagged", "tags = { team = \"payments\" }")
            + &kind("mfa", "session_token", "")
            + &kind("mfa2", "session_token", "")),
    );
    let all: Vec<RolePolicies> = config
        .roles
        .iter()
        .map(|r| role_policies(&config, r, Some(&broker())))
        .collect();
    let (merged, skipped) = merged_permission_policy(&all, BROKER);
    assert_eq!(
        serde_json::to_value(&merged).unwrap(),
        json!({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["sts:AssumeRole"], "Resource": role_arn("base")},
            {"Effect": "Allow", "Action": ["sts:AssumeRole", "sts:TagSession"], "Resource": role_arn("tagged")},
            {"Effect": "Allow", "Action": ["sts:GetSessionToken"], "Resource": "*"},
        ]})
    );
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(skipped[0].contains("role \"app\" is signed by arn:aws:iam::123456789012:role/base"));
}

#[test]
fn the_external_id_is_printed_only_in_the_trust_policy() {
    let config = config(&assume("app", &format!("external_id = \"{SECRET_ID}\"")));
    let role = config.role("app").unwrap();
    let out = role_policies(&config, role, Some(&broker()));
    assert!(render_json(std::slice::from_ref(&out)).contains(SECRET_ID));
    assert!(render_text(std::slice::from_ref(&out)).contains(SECRET_ID));
    assert!(!format!("{out:?}").contains(SECRET_ID), "Debug redacts it");
    assert!(!out.notes.concat().contains(SECRET_ID));
    assert!(!crate::sts::error::access_denied_hint(role).contains(SECRET_ID));
}
