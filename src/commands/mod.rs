//! The one-shot subcommands, one module each: [`check`](mod@check), [`env`](mod@env),
//! [`credential_process`](mod@credential_process), [`iam_policy`](mod@iam_policy),
//! [`redirect_rules`](mod@redirect_rules). Each returns what the binary prints (or a typed error
//! that names the cause); `main.rs` only picks the exit code.

pub mod check;
pub mod credential_process;
pub mod env;
pub mod iam_policy;
pub mod redirect_rules;

pub use check::check_summary;
pub use credential_process::{AssumeOnceError, assume_once, credential_process_json};
pub use env::{EnvError, env_lines};
pub use iam_policy::{IamPolicyError, IamPolicyOutput, IamPolicyRequest, iam_policy};
pub use redirect_rules::{NFT_TABLE, RedirectError, redirect_rules, redirect_rules_remove};

use crate::config::RoleConfig;

/// `user "nobody" (UID 65534), UID 2001`: a role's `local_users` as `check` and `env` name
/// them.
fn local_users(role: &RoleConfig) -> String {
    let users: Vec<String> = role
        .local_users
        .iter()
        .map(crate::config::describe_user)
        .collect();
    users.join(", ")
}

/// A config with two roles, `billing` and `reports`, each with its own extra lines, after
/// `imds` (an `[imds]` table or nothing).
#[cfg(test)]
fn two_roles(imds: &str, users_a: &str, users_b: &str) -> crate::config::Config {
    let text = format!(
        "[sts]\nregion = \"us-east-1\"\n{imds}\n\
         [[role]]\nname = \"billing\"\narn = \"arn:aws:iam::123456789012:role/billing\"\n{users_a}\n\
         [[role]]\nname = \"reports\"\narn = \"arn:aws:iam::123456789012:role/reports\"\n{users_b}\n"
    );
    crate::config::Config::parse(
        &text,
        "t.toml",
        &crate::config::LoadContext {
            hostname: "h".into(),
        },
    )
    .unwrap()
}
