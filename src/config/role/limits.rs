//! STS's limits on session tags and session policies, shared by the kinds that send them.

use std::collections::{BTreeMap, HashSet};

use crate::config::problems::{Problems, Scope};
use crate::config::{check_policy_arn, check_tag};

/// Session tags (and transitive tag keys) per call.
pub(super) const MAX_TAGS: usize = 50;
const MAX_POLICY_ARNS: usize = 10;
const MAX_POLICY_CHARS: usize = 2048;

/// Session tags: at most 50, each valid, keys unique ignoring case.
pub(super) fn build_tags(
    p: &mut Problems,
    scope: &Scope,
    tags: BTreeMap<String, String>,
) -> Vec<(String, String)> {
    if tags.len() > MAX_TAGS {
        p.error(
            scope.clone(),
            Some("tags"),
            format!(
                "{} session tags; STS accepts at most {MAX_TAGS}",
                tags.len()
            ),
        );
    }
    let mut lower_keys = HashSet::new();
    for (k, v) in &tags {
        if let Err(why) = check_tag(k, v) {
            p.error(scope.clone(), Some("tags"), why);
        }
        if !lower_keys.insert(k.to_lowercase()) {
            p.error(
                scope.clone(),
                Some("tags"),
                format!("tag key {k:?} appears twice (STS compares keys case-insensitively)"),
            );
        }
    }
    tags.into_iter().collect()
}

/// Session policies: ≤ 10 managed ARNs, inline JSON, ≤ 2048 characters together.
pub(super) fn check_policies(
    p: &mut Problems,
    scope: &Scope,
    arns: &[String],
    policy: Option<&str>,
) {
    if arns.len() > MAX_POLICY_ARNS {
        p.error(
            scope.clone(),
            Some("policy_arns"),
            format!(
                "{} managed policies; STS accepts at most {MAX_POLICY_ARNS}",
                arns.len()
            ),
        );
    }
    for a in arns {
        if let Err(why) = check_policy_arn(a) {
            p.error(scope.clone(), Some("policy_arns"), why);
        }
    }
    let policy_chars = policy.map_or(0, |s| s.chars().count());
    if let Some(policy) = policy {
        if policy_chars > MAX_POLICY_CHARS {
            p.error(
                scope.clone(),
                Some("policy"),
                format!("{policy_chars} characters; STS accepts at most {MAX_POLICY_CHARS}"),
            );
        }
        if let Err(e) = serde_json::from_str::<serde_json::Value>(policy) {
            p.error(
                scope.clone(),
                Some("policy"),
                format!("is not valid JSON: {e}"),
            );
        }
    }
    let together = policy_chars + arns.iter().map(String::len).sum::<usize>();
    if together > MAX_POLICY_CHARS && policy_chars <= MAX_POLICY_CHARS {
        p.error(
            scope.clone(),
            Some("policy_arns"),
            format!(
                "policy and policy_arns together are {together} characters; STS accepts at most {MAX_POLICY_CHARS}"
            ),
        );
    }
}
