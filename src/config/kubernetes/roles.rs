//! The role keys that admit Kubernetes workloads (`service_accounts`, `session_scope`), and
//! what needs `[kubernetes]` and every role together: `{cluster}`, the tag budget.

use std::sync::Arc;

use super::session_name::has_caller_placeholders;
use super::{KubernetesConfig, SessionScope, WorkloadAccess, parse_pattern};
use crate::config::checks::clean_session_name_part;
use crate::config::problems::{Problems, Scope};
use crate::config::{RoleConfig, RoleKind, RoleKindTag};

/// STS's limits per call.
const MAX_TAGS: usize = 50;

/// The role keys, read in `build_role`: patterns and scope, and which placeholders the
/// scope allows in the session name. `kind` decides whether caller tags are possible.
pub(in crate::config) fn build_access(
    p: &mut Problems,
    scope: &Scope,
    kind: RoleKindTag,
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
    if session_scope != SessionScope::Role && kind != RoleKindTag::AssumeRole {
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

/// What needs `[kubernetes]` and every role: `{cluster}` filled, roles with
/// `service_accounts` need the table, and the tag budget including caller tags.
pub(in crate::config) fn finish_roles(
    p: &mut Problems,
    roles: &mut [Arc<RoleConfig>],
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
                    let c = clean_session_name_part(c);
                    let r = Arc::make_mut(role);
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
                    let r = Arc::make_mut(role);
                    if let Some(t) = r.spec.session_name.take() {
                        r.spec.session_name =
                            Some(t.replace("{cluster}", &clean_session_name_part(c)));
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
                && let Err(why) = crate::config::check_session_name(name)
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
