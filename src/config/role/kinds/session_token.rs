//! `session_token`: GetSessionToken, optionally with an MFA code printed by a command.

use super::check_command;
use crate::config::checks::is_sts_text;
use crate::config::problems::{Problems, Scope};
use crate::config::role::parse::RawRole;
use crate::config::role::{Mfa, RoleKind};

/// GetSessionToken: the MFA serial and its code command come together or not at all.
pub(super) fn build(p: &mut Problems, scope: &Scope, raw: &mut RawRole) -> RoleKind {
    let mfa = match (raw.mfa_serial.take(), raw.mfa_code_command.take()) {
        (None, None) => None,
        (Some(serial), Some(code_command)) => {
            if let Err(why) = check_mfa_serial(&serial) {
                p.error(scope.clone(), Some("mfa_serial"), why);
            }
            check_command(p, scope, "mfa_code_command", &code_command);
            Some(Mfa {
                serial,
                code_command,
            })
        }
        (Some(_), None) => {
            p.error(
                scope.clone(),
                Some("mfa_code_command"),
                "required with mfa_serial: the command that prints the current 6-digit code",
            );
            None
        }
        (None, Some(_)) => {
            p.error(
                scope.clone(),
                Some("mfa_serial"),
                "required with mfa_code_command: the ARN of the MFA device",
            );
            None
        }
    };
    RoleKind::SessionToken { mfa }
}

/// MFA SerialNumber: 9..256 of `[\w+=/:,.@-]`.
pub fn check_mfa_serial(serial: &str) -> Result<(), String> {
    if is_sts_text(serial, 9..=256, |c| "+=/:,.@-".contains(c)) {
        Ok(())
    } else {
        Err(format!(
            "{serial:?} is not an MFA device serial (9..256 characters, e.g. \"arn:aws:iam::123456789012:mfa/ops\")"
        ))
    }
}
