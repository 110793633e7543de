//! `[audit]`: where the JSON-lines audit trail goes.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::problems::{Problems, Scope};

/// `[audit]`: where the JSON-lines audit trail goes.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditConfig {
    /// The trail file; its directory must exist (the file is created).
    pub path: PathBuf,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    path: Option<PathBuf>,
}

/// Builds `[audit]`: the path is required and its directory must exist.
pub(super) fn build_audit(p: &mut Problems, raw: RawAudit) -> Option<AuditConfig> {
    let Some(path) = raw.path.filter(|p| !p.as_os_str().is_empty()) else {
        p.error(
            Scope::Table("audit"),
            Some("path"),
            "required: the audit trail file",
        );
        return None;
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        p.error(
            Scope::Table("audit"),
            Some("path"),
            format!("the directory {} does not exist", dir.display()),
        );
    }
    Some(AuditConfig { path })
}
