//! Client tokens: read from `token_files` (mode checked) or inline, each long enough not to
//! be guessed; and the relative-URI path id derived from them. Messages describe tokens by
//! file and position, never by value.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use crate::config::problems::{Problems, Scope};
use crate::config::{file, relative_uri};
use crate::creds::Secret;

/// Reads the token files (trailing whitespace trimmed) and adds the inline tokens.
/// Messages describe tokens by file and position, never by value.
pub(super) fn load_tokens(
    p: &mut Problems,
    scope: &Scope,
    files: &[PathBuf],
    inline: Vec<String>,
) -> Vec<Secret> {
    let mut tokens = Vec::new();
    for f in files {
        let meta = match std::fs::metadata(f) {
            Ok(m) => m,
            Err(e) => {
                p.error(
                    scope.clone(),
                    Some("token_files"),
                    format!("cannot read {}: {e}", f.display()),
                );
                continue;
            }
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            p.warn(
                scope,
                "token_files",
                format_args!(
                    "{} is accessible to group/others (mode {mode:04o}); chmod 600 it",
                    f.display()
                ),
            );
        }
        match file::read_bounded(f, file::MAX_SECRET_FILE_BYTES) {
            Ok(text) => {
                let token = Secret::new(text.trim_end().to_string());
                if let Err(why) = check_token(&token) {
                    p.error(
                        scope.clone(),
                        Some("token_files"),
                        format!("{}: {why}", f.display()),
                    );
                } else {
                    tokens.push(token);
                }
            }
            Err(e) => p.error(
                scope.clone(),
                Some("token_files"),
                format!("cannot read {}: {e}", f.display()),
            ),
        }
    }
    if !inline.is_empty() {
        p.warn(
            scope,
            "tokens",
            "inline tokens are readable by anyone who can read the config; prefer token_files",
        );
    }
    for (i, t) in inline.into_iter().enumerate() {
        let token = Secret::new(t);
        match check_token(&token) {
            Ok(()) => tokens.push(token),
            Err(why) => p.error(
                scope.clone(),
                Some("tokens"),
                format!("token #{}: {why}", i + 1),
            ),
        }
    }
    tokens
}

/// Shortest client token accepted: shorter ones are guessable (16 random characters from the
/// 94 a header can carry are ~105 bits; `openssl rand -hex 16` makes 32).
pub const MIN_TOKEN_LEN: usize = 16;

/// A client token must fit in an HTTP header as is, and not be guessable.
fn check_token(token: &Secret) -> Result<(), String> {
    let t = token.expose();
    if t.is_empty() {
        return Err("the token is empty".to_string());
    }
    if t.len() < MIN_TOKEN_LEN {
        return Err(format!(
            "the token is {} characters; at least {MIN_TOKEN_LEN} are required (a short token can be guessed; `openssl rand -hex 16` makes a good one)",
            t.len()
        ));
    }
    if !t.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(format!(
            "the token ({} bytes) contains spaces or characters an HTTP header cannot carry",
            t.len()
        ));
    }
    Ok(())
}

/// The secret path id for `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` clients: the configured
/// one, or one derived from the role's first token; `None` when `relative_uri = false`.
pub(super) fn relative_uri_id(
    p: &mut Problems,
    scope: &Scope,
    on: bool,
    configured: Option<String>,
    tokens: &[Secret],
    role: &str,
) -> Option<Secret> {
    match (on, configured) {
        (false, Some(_)) => {
            p.error(
                scope.clone(),
                Some("relative_uri_id"),
                "set, but relative_uri = false turns the path off",
            );
            None
        }
        (false, None) => None,
        (true, Some(id)) => match relative_uri::check_id(&id) {
            Ok(()) => Some(Secret::new(id)),
            Err(why) => {
                p.error(scope.clone(), Some("relative_uri_id"), why);
                None
            }
        },
        (true, None) => tokens.first().map(|t| relative_uri::derive(t, role)),
    }
}
