//! `[kubernetes]` and the role keys that admit Kubernetes workloads (DESIGN.md §7):
//! `service_accounts`, `session_scope` and the caller placeholders in `session_name`.
//!
//! Checked here, all at once with the rest of the file: the table itself (issuer, audiences,
//! where the keys come from, `${VAR}` in `node_name`/`cluster_name`), the patterns, which
//! placeholders each scope may use, and the session-tag budget once the caller tags are
//! added (STS accepts 50 tags and 50 transitive keys per call).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Problems, RoleConfig, RoleKind, Scope, is_word};

const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(3600);
const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
const MAX_LEEWAY: Duration = Duration::from_secs(300);
const DEFAULT_SESSION_IDLE: Duration = Duration::from_secs(2 * 3600);
const DEFAULT_MAX_SESSIONS: u64 = 10_000;
const DEFAULT_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
const DEFAULT_CA_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// STS's limits per call.
const MAX_TAGS: usize = 50;
/// Room kept for `-` and 8 hex digits when a rendered session name is cut.
const HASH_CUT: usize = 9;
const MAX_SESSION_NAME: usize = 64;

/// The session-tag keys EKS Pod Identity sets; ABAC policies written for it carry over.
pub const TAG_NAMESPACE: &str = "kubernetes-namespace";
pub const TAG_SERVICE_ACCOUNT: &str = "kubernetes-service-account";
pub const TAG_CLUSTER: &str = "eks-cluster-name";
pub const TAG_POD_NAME: &str = "kubernetes-pod-name";
pub const TAG_POD_UID: &str = "kubernetes-pod-uid";

/// `[kubernetes]`: how service-account tokens are verified and caller sessions kept.
#[derive(Debug, Clone, PartialEq)]
pub struct KubernetesConfig {
    /// The expected `iss`.
    pub issuer: String,
    /// Accepted `aud` values (a token needs one of them).
    pub audiences: Vec<String>,
    pub jwks: JwksSource,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// Periodic re-fetch of the keys.
    pub jwks_refresh: Duration,
    /// Tags `eks-cluster-name` and fills `{cluster}`; `${VAR}` already expanded.
    pub cluster_name: Option<String>,
    /// Tokens bound to another node are refused; `${VAR}` already expanded.
    pub node_name: Option<String>,
    /// A caller session unused this long stops being refreshed and is dropped.
    pub session_idle: Duration,
    /// Most caller sessions held; the least recently used go first.
    pub max_sessions: u64,
}

/// Where the signing keys come from.
#[derive(Debug, Clone, PartialEq)]
pub enum JwksSource {
    /// The cluster's own `GET /openid/v1/jwks`, with the broker's service-account token and
    /// the cluster CA, both re-read on every fetch.
    ApiServer {
        /// `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT` unless `api_server_url`.
        url: String,
        token_file: PathBuf,
        ca_file: PathBuf,
    },
    /// OIDC discovery: `$issuer/.well-known/openid-configuration` → `jwks_uri`, https only.
    Discovery {
        /// Extra CA (PEM) trusted besides the system roots, for a private issuer.
        ca_file: Option<PathBuf>,
    },
    /// A JWKS document on disk, re-read when it changes.
    File(PathBuf),
}

/// Which callers share one STS session of a role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionScope {
    /// One session for every allowed caller: no caller tags.
    Role,
    /// One per namespace/service account, tagged with both.
    #[default]
    ServiceAccount,
    /// One per pod, tagged with the pod's name and UID as well.
    Pod,
}

impl SessionScope {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionScope::Role => "role",
            SessionScope::ServiceAccount => "service_account",
            SessionScope::Pod => "pod",
        }
    }

    /// Caller tags this scope adds (with `cluster` when `cluster_name` is set).
    pub fn caller_tag_keys(self, cluster: bool) -> Vec<&'static str> {
        let mut keys = match self {
            SessionScope::Role => return Vec::new(),
            SessionScope::ServiceAccount => vec![TAG_NAMESPACE, TAG_SERVICE_ACCOUNT],
            SessionScope::Pod => vec![
                TAG_NAMESPACE,
                TAG_SERVICE_ACCOUNT,
                TAG_POD_NAME,
                TAG_POD_UID,
            ],
        };
        if cluster {
            keys.push(TAG_CLUSTER);
        }
        keys
    }
}

/// `namespace/name`, or `namespace/*` for every service account in the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountPattern {
    pub namespace: String,
    /// `None`: any name.
    pub name: Option<String>,
}

impl ServiceAccountPattern {
    pub fn matches(&self, namespace: &str, name: &str) -> bool {
        self.namespace == namespace && self.name.as_deref().is_none_or(|n| n == name)
    }
}

impl std::fmt::Display for ServiceAccountPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}",
            self.namespace,
            self.name.as_deref().unwrap_or("*")
        )
    }
}

/// A role's Kubernetes keys.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkloadAccess {
    pub service_accounts: Vec<ServiceAccountPattern>,
    pub scope: SessionScope,
    /// The session name template with caller placeholders (`{hostname}` and `{cluster}`
    /// filled), rendered per caller session. The role's own session (static tokens, scope
    /// `role`) uses `session_name`, which then is the default `sts-broker-{hostname}`.
    pub session_template: Option<String>,
}

impl WorkloadAccess {
    pub fn allows(&self, namespace: &str, name: &str) -> bool {
        self.service_accounts
            .iter()
            .any(|p| p.matches(namespace, name))
    }
}

/// The caller a verified token names: what templates and tags are filled from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadFacts<'a> {
    pub namespace: &'a str,
    pub service_account: &'a str,
    pub pod_name: &'a str,
    pub pod_uid: &'a str,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKubernetes {
    issuer: Option<String>,
    audiences: Option<Vec<String>>,
    jwks: Option<String>,
    api_server_url: Option<String>,
    api_server_token_file: Option<PathBuf>,
    api_server_ca_file: Option<PathBuf>,
    discovery_ca_file: Option<PathBuf>,
    jwks_refresh: Option<String>,
    cluster_name: Option<String>,
    node_name: Option<String>,
    leeway: Option<String>,
    session_idle: Option<String>,
    max_sessions: Option<u64>,
}

/// Replaces every `${VAR}` with the variable's value from `env`; names the missing ones.
pub fn expand_env(raw: &str, env: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = raw;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else {
            return Err(format!("{raw:?} has an unclosed \"${{\""));
        };
        let var = &rest[start + 2..start + end];
        if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("{raw:?}: \"${{{var}}}\" is not a variable name"));
        }
        match env(var) {
            Some(v) if !v.is_empty() => out.push_str(&v),
            _ => {
                return Err(format!(
                    "environment variable {var} (used in {raw:?}) is not set"
                ));
            }
        }
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// DNS-1123 label: what a namespace name is.
fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// DNS-1123 subdomain: what a service account name is.
fn is_dns_subdomain(s: &str) -> bool {
    (1..=253).contains(&s.len()) && s.split('.').all(is_dns_label)
}

/// Parses one `service_accounts` entry.
pub fn parse_pattern(raw: &str) -> Result<ServiceAccountPattern, String> {
    let Some((ns, name)) = raw.split_once('/') else {
        return Err(format!(
            "{raw:?} must be \"namespace/name\" or \"namespace/*\""
        ));
    };
    if !is_dns_label(ns) {
        return Err(format!(
            "{raw:?}: namespace {ns:?} is not a Kubernetes namespace name (lower-case letters, digits, '-', at most 63)"
        ));
    }
    if name == "*" {
        return Ok(ServiceAccountPattern {
            namespace: ns.to_string(),
            name: None,
        });
    }
    if !is_dns_subdomain(name) {
        return Err(format!(
            "{raw:?}: {name:?} is not a service account name (lower-case letters, digits, '-', '.') or \"*\""
        ));
    }
    Ok(ServiceAccountPattern {
        namespace: ns.to_string(),
        name: Some(name.to_string()),
    })
}

pub(super) fn build_kubernetes(
    p: &mut Problems,
    raw: RawKubernetes,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<KubernetesConfig> {
    let errors_before = p.errors.len();
    let scope = Scope::Table("kubernetes");
    let err = |p: &mut Problems, key: &str, why: String| p.error(scope.clone(), Some(key), why);
    let url_set = raw.api_server_url.is_some();
    let token_set = raw.api_server_token_file.is_some();
    let ca_set = raw.api_server_ca_file.is_some();
    let issuer = raw.issuer.unwrap_or_default();
    if issuer.is_empty() {
        err(
            p,
            "issuer",
            "required: the `iss` the cluster writes into its service-account tokens".into(),
        );
    }
    let audiences = raw.audiences.unwrap_or_default();
    if audiences.is_empty() || audiences.iter().any(String::is_empty) {
        err(
            p,
            "audiences",
            "required: one or more non-empty audiences (\"sts-broker\", or \"pods.eks.amazonaws.com\" for EKS Pod Identity parity)".into(),
        );
    }
    let jwks_raw = raw.jwks.unwrap_or_else(|| "api_server".to_string());
    let jwks = match jwks_raw.as_str() {
        "api_server" => {
            let url = match raw.api_server_url {
                Some(u) => Some(u),
                None => match (
                    env("KUBERNETES_SERVICE_HOST"),
                    env("KUBERNETES_SERVICE_PORT"),
                ) {
                    (Some(h), port) => {
                        let port = port.unwrap_or_else(|| "443".into());
                        let host = if h.contains(':') { format!("[{h}]") } else { h };
                        Some(format!("https://{host}:{port}"))
                    }
                    (None, _) => {
                        err(p, "jwks", "\"api_server\" needs KUBERNETES_SERVICE_HOST (set in every pod) or api_server_url".into());
                        None
                    }
                },
            };
            if let Some(u) = &url
                && !u.starts_with("https://")
            {
                err(
                    p,
                    "api_server_url",
                    format!("{u:?} must be an https:// URL"),
                );
            }
            JwksSource::ApiServer {
                url: url.unwrap_or_default().trim_end_matches('/').to_string(),
                token_file: raw
                    .api_server_token_file
                    .unwrap_or_else(|| DEFAULT_TOKEN_FILE.into()),
                ca_file: raw
                    .api_server_ca_file
                    .unwrap_or_else(|| DEFAULT_CA_FILE.into()),
            }
        }
        "discovery" => {
            if !issuer.is_empty() && !issuer.starts_with("https://") {
                err(
                    p,
                    "issuer",
                    format!("{issuer:?}: jwks = \"discovery\" needs an https:// issuer"),
                );
            }
            JwksSource::Discovery {
                ca_file: raw.discovery_ca_file.clone(),
            }
        }
        path if path.starts_with('/') => JwksSource::File(PathBuf::from(path)),
        other => {
            err(
                p,
                "jwks",
                format!("{other:?} is not \"api_server\", \"discovery\" or an absolute file path"),
            );
            JwksSource::File(PathBuf::new())
        }
    };
    let misplaced = [
        ("api_server_url", url_set),
        ("api_server_token_file", token_set),
        ("api_server_ca_file", ca_set),
    ];
    if !matches!(jwks, JwksSource::ApiServer { .. }) {
        for (key, set) in misplaced {
            if set {
                err(p, key, "is used only with jwks = \"api_server\"".into());
            }
        }
    }
    if raw.discovery_ca_file.is_some() && !matches!(jwks, JwksSource::Discovery { .. }) {
        err(
            p,
            "discovery_ca_file",
            "is used only with jwks = \"discovery\"".into(),
        );
    }
    let expand = |p: &mut Problems, key: &str, v: Option<String>| -> Option<String> {
        let v = v?;
        match expand_env(&v, env) {
            Ok(x) => Some(x),
            Err(why) => {
                p.error(Scope::Table("kubernetes"), Some(key), why);
                None
            }
        }
    };
    let cluster_name = expand(p, "cluster_name", raw.cluster_name);
    if let Some(c) = &cluster_name
        && let Err(why) = super::check_tag(TAG_CLUSTER, c)
    {
        err(p, "cluster_name", why);
    }
    let node_name = expand(p, "node_name", raw.node_name);
    let leeway = p
        .duration(&scope, "leeway", raw.leeway.as_deref())
        .unwrap_or(DEFAULT_LEEWAY);
    if leeway > MAX_LEEWAY {
        err(
            p,
            "leeway",
            format!(
                "{} is more clock skew than a cluster should have (at most 5m)",
                humantime::format_duration(leeway)
            ),
        );
    }
    let jwks_refresh = p
        .duration(&scope, "jwks_refresh", raw.jwks_refresh.as_deref())
        .unwrap_or(DEFAULT_JWKS_REFRESH);
    if jwks_refresh < Duration::from_secs(10) {
        err(p, "jwks_refresh", "must be at least 10s".into());
    }
    let session_idle = p
        .duration(&scope, "session_idle", raw.session_idle.as_deref())
        .unwrap_or(DEFAULT_SESSION_IDLE);
    if session_idle < Duration::from_secs(1) {
        err(p, "session_idle", "must be at least 1s".into());
    }
    let max_sessions = raw.max_sessions.unwrap_or(DEFAULT_MAX_SESSIONS);
    if !(1..=1_000_000).contains(&max_sessions) {
        err(p, "max_sessions", "must be 1..1000000".into());
    }
    (p.errors.len() == errors_before).then_some(KubernetesConfig {
        issuer,
        audiences,
        jwks,
        leeway,
        jwks_refresh,
        cluster_name,
        node_name,
        session_idle,
        max_sessions,
    })
}

/// The role keys, read in `build_role`: patterns and scope, and which placeholders the
/// scope allows in the session name. `kind` decides whether caller tags are possible.
pub(super) fn build_access(
    p: &mut Problems,
    scope: &Scope,
    kind: super::RoleKindTag,
    service_accounts: Option<Vec<String>>,
    session_scope: Option<String>,
) -> Option<WorkloadAccess> {
    let Some(raw) = service_accounts else {
        if session_scope.is_some() {
            p.error(
                scope.clone(),
                Some("session_scope"),
                "is used only with service_accounts",
            );
        }
        return None;
    };
    let mut patterns = Vec::new();
    if raw.is_empty() {
        p.error(
            scope.clone(),
            Some("service_accounts"),
            "is empty; list \"namespace/name\" entries or leave the key out",
        );
    }
    for r in &raw {
        match parse_pattern(r) {
            Ok(pat) => patterns.push(pat),
            Err(why) => p.error(scope.clone(), Some("service_accounts"), why),
        }
    }
    let session_scope = match session_scope.as_deref() {
        None | Some("service_account") => SessionScope::ServiceAccount,
        Some("role") => SessionScope::Role,
        Some("pod") => SessionScope::Pod,
        Some(other) => {
            p.error(
                scope.clone(),
                Some("session_scope"),
                format!("{other:?} is not \"role\", \"service_account\" or \"pod\""),
            );
            SessionScope::ServiceAccount
        }
    };
    if session_scope != SessionScope::Role && kind != super::RoleKindTag::AssumeRole {
        p.error(
            scope.clone(),
            Some("session_scope"),
            format!(
                "\"{}\" needs kind = \"assume_role\" (per-caller sessions carry session tags); use session_scope = \"role\"",
                session_scope.as_str()
            ),
        );
    }
    Some(WorkloadAccess {
        service_accounts: patterns,
        scope: session_scope,
        session_template: None,
    })
}

/// The default session name per scope, when a role sets none.
pub(super) fn default_session_name(scope: SessionScope) -> Option<&'static str> {
    match scope {
        SessionScope::Role => None,
        SessionScope::ServiceAccount => Some("{namespace}.{service_account}"),
        SessionScope::Pod => Some("{namespace}.{pod}"),
    }
}

/// Placeholders filled per caller.
const CALLER_PLACEHOLDERS: &[&str] = &["{namespace}", "{service_account}", "{pod}"];

/// Whether a session name template names the caller (rendered per session).
pub fn has_caller_placeholders(template: &str) -> bool {
    CALLER_PLACEHOLDERS.iter().any(|c| template.contains(c))
}

/// Checks a template whose caller parts are filled later: the placeholders the scope
/// allows, the fixed characters, and room for the hash cut.
pub(super) fn check_template(template: &str, scope: Option<SessionScope>) -> Result<(), String> {
    let allowed: &[&str] = match scope {
        Some(SessionScope::Pod) => CALLER_PLACEHOLDERS,
        Some(SessionScope::ServiceAccount) => &["{namespace}", "{service_account}"],
        _ => &[],
    };
    for c in CALLER_PLACEHOLDERS {
        if template.contains(c) && !allowed.contains(c) {
            return Err(format!(
                "{template:?} uses {c}, which session_scope = \"{}\" cannot fill (one session serves callers that differ in it)",
                scope.map_or("none", SessionScope::as_str)
            ));
        }
    }
    let fixed = CALLER_PLACEHOLDERS
        .iter()
        .fold(template.to_string(), |t, c| t.replace(c, ""));
    if !fixed.chars().all(|c| is_word(c) || "+=,.@-".contains(c)) {
        return Err(format!(
            "{template:?}: outside the placeholders {{namespace}} {{service_account}} {{pod}} {{cluster}} {{hostname}}, only letters, digits and +=,.@_- are allowed"
        ));
    }
    if fixed.len() > MAX_SESSION_NAME - HASH_CUT {
        return Err(format!(
            "{template:?}: the fixed part is {} characters; at most {} leave room for the caller",
            fixed.len(),
            MAX_SESSION_NAME - HASH_CUT
        ));
    }
    Ok(())
}

/// Fills the caller placeholders. A name longer than STS's 64 characters is cut and ends
/// in `-` + 8 hex digits of the SHA-256 of the whole name, so callers never share a name.
pub fn render_session_name(template: &str, who: &WorkloadFacts<'_>) -> String {
    use sha2::{Digest, Sha256};
    let full = template
        .replace("{namespace}", &clean_name_part(who.namespace))
        .replace("{service_account}", &clean_name_part(who.service_account))
        .replace("{pod}", &clean_name_part(who.pod_name));
    if full.len() <= MAX_SESSION_NAME && full.len() >= 2 {
        return full;
    }
    let digest = hex::encode(&Sha256::digest(full.as_bytes())[..4]);
    let mut cut: String = full.chars().take(MAX_SESSION_NAME - HASH_CUT).collect();
    if cut.is_empty() {
        cut.push('k');
    }
    format!("{cut}-{digest}")
}

/// `s` with the characters STS rejects in a session name replaced by `-`.
fn clean_name_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if is_word(c) || "+=,.@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// What needs `[kubernetes]` and every role: `{cluster}` filled, roles with
/// `service_accounts` need the table, and the tag budget including caller tags.
pub(super) fn finish_roles(
    p: &mut Problems,
    roles: &mut [std::sync::Arc<RoleConfig>],
    k8s: Option<&KubernetesConfig>,
    table_present: bool,
) {
    let cluster = k8s.and_then(|k| k.cluster_name.as_deref());
    for role in roles.iter_mut() {
        let scope = Scope::Role(role.name.clone());
        let template_uses_cluster = role
            .spec
            .workload
            .as_ref()
            .and_then(|w| w.session_template.as_deref())
            .is_some_and(|s| s.contains("{cluster}"));
        if template_uses_cluster {
            match cluster {
                Some(c) => {
                    let c = clean_name_part(c);
                    let r = std::sync::Arc::make_mut(role);
                    if let Some(w) = r.spec.workload.as_mut()
                        && let Some(t) = w.session_template.take()
                    {
                        w.session_template = Some(t.replace("{cluster}", &c));
                    }
                }
                None if !table_present || k8s.is_some() => p.error(
                    scope.clone(),
                    Some("session_name"),
                    "uses {cluster}, but [kubernetes] sets no cluster_name",
                ),
                None => {}
            }
        }
        let uses_cluster = role
            .spec
            .session_name
            .as_deref()
            .is_some_and(|s| s.contains("{cluster}"));
        if uses_cluster {
            match cluster {
                Some(c) => {
                    let r = std::sync::Arc::make_mut(role);
                    if let Some(t) = r.spec.session_name.take() {
                        r.spec.session_name = Some(t.replace("{cluster}", &clean_name_part(c)));
                    }
                }
                None if !table_present || k8s.is_some() => p.error(
                    scope.clone(),
                    Some("session_name"),
                    "uses {cluster}, but [kubernetes] sets no cluster_name",
                ),
                None => {}
            }
            // Without caller placeholders the name is final now: check it like any other.
            if let Some(name) = &role.spec.session_name
                && !has_caller_placeholders(name)
                && !name.contains("{cluster}")
                && let Err(why) = super::check_session_name(name)
            {
                p.error(scope.clone(), Some("session_name"), why);
            }
        }
        let Some(access) = &role.spec.workload else {
            continue;
        };
        if !table_present {
            p.error(
                scope.clone(),
                Some("service_accounts"),
                "needs a [kubernetes] table (issuer, audiences, jwks) to verify service-account tokens",
            );
            continue;
        }
        let caller = access.scope.caller_tag_keys(cluster.is_some());
        if let RoleKind::AssumeRole {
            tags,
            transitive_tag_keys,
            ..
        } = &role.spec.kind
        {
            for (k, _) in tags {
                if caller.iter().any(|c| c.eq_ignore_ascii_case(k)) {
                    p.error(
                        scope.clone(),
                        Some("tags"),
                        format!(
                            "tag key {k:?} is set by the broker for session_scope = \"{}\" callers",
                            access.scope.as_str()
                        ),
                    );
                }
            }
            if tags.len() + caller.len() > MAX_TAGS {
                p.error(
                    scope.clone(),
                    Some("tags"),
                    format!(
                        "{} tags + {} caller tags ({}) exceed STS's {MAX_TAGS}",
                        tags.len(),
                        caller.len(),
                        caller.join(", ")
                    ),
                );
            }
            if transitive_tag_keys.len() + caller.len() > MAX_TAGS {
                p.error(
                    scope,
                    Some("transitive_tag_keys"),
                    format!(
                        "{} keys + {} transitive caller tags exceed STS's {MAX_TAGS}",
                        transitive_tag_keys.len(),
                        caller.len()
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_expansion_names_missing_variables() {
        let env = |k: &str| (k == "NODE_NAME").then(|| "node-a".to_string());
        assert_eq!(expand_env("${NODE_NAME}", env).unwrap(), "node-a");
        assert_eq!(expand_env("x-${NODE_NAME}-y", env).unwrap(), "x-node-a-y");
        assert_eq!(expand_env("plain", env).unwrap(), "plain");
        let e = expand_env("${CLUSTER}", env).unwrap_err();
        assert!(e.contains("CLUSTER") && e.contains("not set"), "{e}");
        assert!(
            expand_env("${NODE_NAME", env)
                .unwrap_err()
                .contains("unclosed")
        );
        assert!(
            expand_env("${a-b}", env)
                .unwrap_err()
                .contains("not a variable")
        );
    }

    #[test]
    fn patterns() {
        let p = parse_pattern("payments/api").unwrap();
        assert!(p.matches("payments", "api"));
        assert!(!p.matches("payments", "worker"));
        assert!(!p.matches("batch", "api"));
        let any = parse_pattern("batch/*").unwrap();
        assert!(any.matches("batch", "whatever"));
        assert_eq!(any.to_string(), "batch/*");
        for bad in [
            "payments",
            "/api",
            "Payments/api",
            "ns/",
            "ns/API",
            "ns/a/b",
            "-ns/a",
            "*/a",
        ] {
            assert!(parse_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn templates_per_scope() {
        assert!(
            check_template(
                "{namespace}.{service_account}",
                Some(SessionScope::ServiceAccount)
            )
            .is_ok()
        );
        assert!(check_template("{namespace}.{pod}", Some(SessionScope::ServiceAccount)).is_err());
        assert!(check_template("{namespace}.{pod}", Some(SessionScope::Pod)).is_ok());
        assert!(check_template("{namespace}", Some(SessionScope::Role)).is_err());
        assert!(check_template("{namespace}", None).is_err());
        assert!(check_template("a b {namespace}", Some(SessionScope::Pod)).is_err());
        let long = format!("{}{{pod}}", "x".repeat(56));
        assert!(check_template(&long, Some(SessionScope::Pod)).is_err());
    }

    #[test]
    fn long_names_get_a_hash_cut_that_keeps_callers_apart() {
        let who = |pod: &'static str| WorkloadFacts {
            namespace: "a-rather-long-namespace-name",
            service_account: "sa",
            pod_name: pod,
            pod_uid: "u",
        };
        let t = "{namespace}.{pod}";
        let a = render_session_name(t, &who("payments-api-7d9f8c6b5-xk2p1-with-a-long-suffix-1"));
        let b = render_session_name(t, &who("payments-api-7d9f8c6b5-xk2p1-with-a-long-suffix-2"));
        assert_eq!(a.len(), 64);
        assert_eq!(b.len(), 64);
        assert_ne!(a, b);
        assert!(super::super::check_session_name(&a).is_ok(), "{a}");
        let short = render_session_name(t, &who("p1"));
        assert_eq!(short, "a-rather-long-namespace-name.p1");
    }
}
