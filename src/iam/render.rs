//! Rendering: JSON Lines (one object per role), annotated text (the documents pretty, every
//! annotation on a `#` line), or one bare document (`--only`).

use std::fmt::Write as _;

use super::PolicyDocument;
use super::arn::iam_path_and_name;
use super::document::Policy;
use super::policy::{RolePolicies, merged_permission_policy};

/// JSON Lines: one compact object per role.
pub fn render_json(policies: &[RolePolicies]) -> String {
    let mut out = String::new();
    for p in policies {
        out.push_str(&serde_json::to_string(p).expect("policies serialize to JSON"));
        out.push('\n');
    }
    out
}

/// A policy document pretty-printed, with a trailing newline.
pub fn render_document(policy: &Policy) -> String {
    let mut s = serde_json::to_string_pretty(policy).expect("policies serialize to JSON");
    s.push('\n');
    s
}

/// The policies pretty-printed; every annotation on a `#` line, so dropping those lines
/// leaves a stream of JSON documents.
pub fn render_text(policies: &[RolePolicies]) -> String {
    let mut out = String::new();
    for (i, p) in policies.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "# role {:?} (kind {}){}",
            p.role,
            p.kind,
            p.role_arn
                .as_deref()
                .map(|a| format!(": {a}"))
                .unwrap_or_default()
        );
        match &p.caller {
            Some(c) => {
                let _ = writeln!(out, "# signed by {c}");
            }
            None => {
                let _ = writeln!(
                    out,
                    "# unsigned STS call: the token or assertion is the credential"
                );
            }
        }
        match (&p.trust_policy, &p.role_arn) {
            (Some(trust), Some(arn)) => {
                let (path, name) = iam_path_and_name(arn).unwrap_or(("/".into(), &p.role));
                let path_arg = if path == "/" {
                    String::new()
                } else {
                    format!(" --path {path}")
                };
                let _ = writeln!(out, "#\n# trust policy, on role {arn}:");
                let _ = writeln!(
                    out,
                    "#   aws iam create-role --role-name {name}{path_arg} --assume-role-policy-document file://{}-trust.json",
                    p.role
                );
                let _ = writeln!(
                    out,
                    "#   (a role that exists: aws iam update-assume-role-policy --role-name {name} --policy-document file://{}-trust.json)",
                    p.role
                );
                out.push_str(&render_document(trust));
            }
            _ => {
                let _ = writeln!(out, "#\n# no trust policy: this kind obtains no role");
            }
        }
        match (&p.permission_policy, &p.caller) {
            (Some(permission), Some(caller)) => {
                let _ = writeln!(out, "#\n# permission policy, on {caller}:");
                let attach = match iam_path_and_name(caller) {
                    Some((_, name)) if caller.contains(":user/") => {
                        format!("aws iam put-user-policy --user-name {name}")
                    }
                    Some((_, name)) if caller.contains(":role/") => {
                        format!("aws iam put-role-policy --role-name {name}")
                    }
                    _ => "aws iam put-user-policy --user-name USER".to_string(),
                };
                let _ = writeln!(
                    out,
                    "#   {attach} --policy-name sts-broker-{} --policy-document file://{}-permissions.json",
                    p.role, p.role
                );
                out.push_str(&render_document(permission));
            }
            _ => {
                let _ = writeln!(
                    out,
                    "#\n# no permission policy: the broker signs no call for this role"
                );
            }
        }
        if !p.notes.is_empty() {
            let _ = writeln!(out, "#\n# notes:");
            for n in &p.notes {
                let _ = writeln!(out, "#   - {n}");
            }
        }
    }
    out
}

/// Why `--only` has no document to print.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OnlyError {
    /// Every role's permission policy belongs to another identity (or none is needed).
    #[error("no role is signed by the broker's principal: it needs no permission policy")]
    NothingSigned,
    /// The role's kind needs no document of that sort.
    #[error("role {role:?} (kind {kind}) needs no {which} policy")]
    NotNeeded {
        /// The role asked for.
        role: String,
        /// Its kind, as the config spells it.
        kind: &'static str,
        /// `trust` or `permission`.
        which: &'static str,
    },
}

/// `--only`'s document, ready for `file://`, and the roles it leaves out (for stderr).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnlyDocument {
    /// The pretty-printed document.
    pub document: String,
    /// Why roles were left out of a merged permission policy.
    pub skipped: Vec<String>,
}

/// `--only`: the `which` document of the first role, or with `merge_for` (`--only
/// permission` without `--role`), the permission policies of every role that principal
/// signs for, merged.
///
/// # Errors
/// The role needs no such document, or no role is signed by `merge_for`.
pub fn render_only(
    policies: &[RolePolicies],
    which: PolicyDocument,
    merge_for: Option<&str>,
) -> Result<OnlyDocument, OnlyError> {
    if let Some(principal_arn) = merge_for {
        let (policy, skipped) = merged_permission_policy(policies, principal_arn);
        if policy.statements.is_empty() {
            return Err(OnlyError::NothingSigned);
        }
        return Ok(OnlyDocument {
            document: render_document(&policy),
            skipped,
        });
    }
    let p = &policies[0];
    let doc = match which {
        PolicyDocument::Trust => p.trust_policy.as_ref(),
        PolicyDocument::Permission => p.permission_policy.as_ref(),
    };
    let doc = doc.ok_or_else(|| OnlyError::NotNeeded {
        role: p.role.clone(),
        kind: p.kind,
        which: which.as_str(),
    })?;
    Ok(OnlyDocument {
        document: render_document(doc),
        skipped: Vec::new(),
    })
}
