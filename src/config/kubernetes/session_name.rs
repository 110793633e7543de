//! Session names of caller sessions: the placeholders each scope may use, the default
//! template per scope, and the rendering per caller (cut with a hash to fit STS's 64).

use super::{SessionScope, WorkloadFacts};
use crate::config::checks::{clean_session_name_part, is_session_name_char};

/// Room kept for `-` and 8 hex digits when a rendered session name is cut.
const HASH_CUT: usize = 9;
const MAX_SESSION_NAME: usize = 64;

/// The default session name per scope, when a role sets none.
pub(in crate::config) fn default_session_name(scope: SessionScope) -> Option<&'static str> {
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
pub(in crate::config) fn check_template(
    template: &str,
    scope: Option<SessionScope>,
) -> Result<(), String> {
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
    if !fixed.chars().all(is_session_name_char) {
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
        .replace("{namespace}", &clean_session_name_part(who.namespace))
        .replace(
            "{service_account}",
            &clean_session_name_part(who.service_account),
        )
        .replace("{pod}", &clean_session_name_part(who.pod_name));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SessionScope;
    use crate::config::kubernetes::WorkloadFacts;

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
        assert!(crate::config::check_session_name(&a).is_ok(), "{a}");
        let short = render_session_name(t, &who("p1"));
        assert_eq!(short, "a-rather-long-namespace-name.p1");
    }
}
