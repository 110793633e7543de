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

mod roles;
mod session_name;

use super::{Problems, Scope};

pub(super) use roles::{build_access, finish_roles};
pub(super) use session_name::{check_template, default_session_name};
pub use session_name::{has_caller_placeholders, render_session_name};

const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(3600);
const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
const MAX_LEEWAY: Duration = Duration::from_secs(300);
const DEFAULT_SESSION_IDLE: Duration = Duration::from_secs(2 * 3600);
const DEFAULT_MAX_SESSIONS: u64 = 10_000;
const DEFAULT_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
const DEFAULT_CA_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

/// The session-tag keys EKS Pod Identity sets; ABAC policies written for it carry over.
pub const TAG_NAMESPACE: &str = "kubernetes-namespace";
/// The caller's service account.
pub const TAG_SERVICE_ACCOUNT: &str = "kubernetes-service-account";
/// `cluster_name`.
pub const TAG_CLUSTER: &str = "eks-cluster-name";
/// The caller's pod (session scope `pod`).
pub const TAG_POD_NAME: &str = "kubernetes-pod-name";
/// The caller's pod UID (session scope `pod`).
pub const TAG_POD_UID: &str = "kubernetes-pod-uid";

/// `[kubernetes]`: how service-account tokens are verified and caller sessions kept.
#[derive(Debug, Clone, PartialEq)]
pub struct KubernetesConfig {
    /// The expected `iss`.
    pub issuer: String,
    /// Accepted `aud` values (a token needs one of them).
    pub audiences: Vec<String>,
    /// Where the signing keys come from.
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
        /// The broker's own service-account token (bearer for the API server).
        token_file: PathBuf,
        /// The cluster CA the API server's certificate is checked against.
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
    /// The config spelling.
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
    /// The namespace, always exact.
    pub namespace: String,
    /// `None`: any name.
    pub name: Option<String>,
}

impl ServiceAccountPattern {
    /// Whether the service account `namespace/name` matches.
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
    /// Who may call: `namespace/name` or `namespace/*`.
    pub service_accounts: Vec<ServiceAccountPattern>,
    /// Which callers share one STS session.
    pub scope: SessionScope,
    /// The session name template with caller placeholders (`{hostname}` and `{cluster}`
    /// filled), rendered per caller session. The role's own session (static tokens, scope
    /// `role`) uses `session_name`, which then is the default `sts-broker-{hostname}`.
    pub session_template: Option<String>,
}

impl WorkloadAccess {
    /// Whether the service account `namespace/name` may use the role.
    pub fn allows(&self, namespace: &str, name: &str) -> bool {
        self.service_accounts
            .iter()
            .any(|p| p.matches(namespace, name))
    }
}

/// The caller a verified token names: what templates and tags are filled from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadFacts<'a> {
    /// The caller's namespace.
    pub namespace: &'a str,
    /// The caller's service account name.
    pub service_account: &'a str,
    /// The caller's pod name (verified tokens are bound to a pod).
    pub pod_name: &'a str,
    /// The caller's pod UID.
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
}
