//! Problems found in a config file, and the collector that gathers them all.
//!
//! Errors and warnings have one shape: the file, the table or role, the key and the message
//! (`config.toml: role "app": key "session_name": …`), so `check`, start-up and reload show
//! both the same way. Parsing never stops at the first problem: the collector is passed to
//! every table's builder, and what it holds is returned together.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

/// Which part of the file a problem is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The file as a whole (unreadable, not TOML, an unknown top-level key).
    File,
    /// A top-level table such as `[sts]`.
    Table(&'static str),
    /// One `[[role]]`, by its name (or `#N` when it has none).
    Role(String),
}

/// One problem, naming the file, the table or role, and the key. Errors and warnings share
/// this shape ([`ConfigError`], [`ConfigWarning`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The file (or the name given to [`Config::parse`](super::Config::parse)).
    pub origin: String,
    /// The table or role the problem is in.
    pub scope: Scope,
    /// The key, when the problem is about one.
    pub key: Option<String>,
    /// What is wrong, never echoing a secret value.
    pub message: String,
}

/// A problem that makes the config invalid.
pub type ConfigError = ConfigProblem;

/// A problem that does not stop the broker (a loose token file mode, a role nobody can
/// fetch, a duration clamped for chaining).
pub type ConfigWarning = ConfigProblem;

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.origin)?;
        match &self.scope {
            Scope::File => {}
            Scope::Table(t) => write!(f, "[{t}]: ")?,
            Scope::Role(r) => write!(f, "role \"{r}\": ")?,
        }
        if let Some(k) = &self.key {
            write!(f, "key \"{k}\": ")?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects problems while parsing, so that every one is reported.
pub(super) struct Problems {
    origin: String,
    pub(super) errors: Vec<ConfigError>,
    pub(super) warnings: Vec<ConfigWarning>,
}

impl Problems {
    /// An empty collector for the file called `origin`.
    pub(super) fn new(origin: &str) -> Self {
        Problems {
            origin: origin.to_string(),
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn problem(&self, scope: Scope, key: Option<&str>, message: String) -> ConfigProblem {
        ConfigProblem {
            origin: self.origin.clone(),
            scope,
            key: key.map(str::to_string),
            message,
        }
    }

    /// Records an error.
    pub(super) fn error(&mut self, scope: Scope, key: Option<&str>, message: impl Into<String>) {
        let e = self.problem(scope, key, message.into());
        self.errors.push(e);
    }

    /// Records a warning about `key`.
    pub(super) fn warn(&mut self, scope: &Scope, key: &str, message: impl fmt::Display) {
        let w = self.problem(scope.clone(), Some(key), message.to_string());
        self.warnings.push(w);
    }

    /// How many errors so far: a builder compares before and after to know whether its
    /// part was valid.
    pub(super) fn error_count(&self) -> usize {
        self.errors.len()
    }

    /// Parses a duration string, recording a problem (and returning `None`) when it is bad.
    pub(super) fn duration(
        &mut self,
        scope: &Scope,
        key: &str,
        raw: Option<&str>,
    ) -> Option<Duration> {
        let raw = raw?;
        match humantime::parse_duration(raw) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(
                    scope.clone(),
                    Some(key),
                    format!("{raw:?} is not a duration like \"15m\" or \"1h\" ({e})"),
                );
                None
            }
        }
    }

    /// Parses an RFC 3339 instant (`revoke_before`), recording a problem when it is bad.
    pub(super) fn instant(
        &mut self,
        scope: &Scope,
        key: &str,
        raw: Option<&str>,
    ) -> Option<SystemTime> {
        match super::parse_instant(raw?) {
            Ok(t) => Some(t),
            Err(why) => {
                self.error(scope.clone(), Some(key), why);
                None
            }
        }
    }

    /// Deserializes one optional top-level table (its default when absent), recording a
    /// problem when it does not fit.
    pub(super) fn section<T: for<'de> Deserialize<'de> + Default>(
        &mut self,
        table: &toml::Table,
        name: &'static str,
    ) -> Option<T> {
        match table.get(name) {
            None => Some(T::default()),
            Some(v) => self.table(Scope::Table(name), v, super::keys::fields::<T>()),
        }
    }

    /// Reports every key not in `known` (each by name) and deserializes the known ones, so
    /// that one misspelt key does not hide the problems in the rest of the table.
    pub(super) fn table<T: for<'de> Deserialize<'de>>(
        &mut self,
        scope: Scope,
        value: &toml::Value,
        known: &[&str],
    ) -> Option<T> {
        let clean = self.known_keys(scope.clone(), value, known)?;
        self.table_as(scope, clean)
    }

    /// The keys of `value` that are in `known`; every other one is reported by name.
    pub(super) fn known_keys(
        &mut self,
        scope: Scope,
        value: &toml::Value,
        known: &[&str],
    ) -> Option<toml::Table> {
        let Some(table) = value.as_table() else {
            self.error(scope, None, "must be a table");
            return None;
        };
        let mut clean = toml::Table::new();
        for (k, v) in table {
            if known.contains(&k.as_str()) {
                clean.insert(k.clone(), v.clone());
            } else {
                self.error(
                    scope.clone(),
                    Some(k),
                    format!("unknown key; expected one of {}", known.join(", ")),
                );
            }
        }
        Some(clean)
    }

    /// Deserializes a table whose keys were already checked (a wrong type is reported).
    pub(super) fn table_as<T: for<'de> Deserialize<'de>>(
        &mut self,
        scope: Scope,
        clean: toml::Table,
    ) -> Option<T> {
        match toml::Value::Table(clean).try_into::<T>() {
            Ok(t) => Some(t),
            Err(e) => {
                self.error(scope, None, clean_serde_error(&e.to_string()));
                None
            }
        }
    }
}

/// serde's messages for a sub-value come with a multi-line TOML excerpt; keep the first line.
fn clean_serde_error(msg: &str) -> String {
    msg.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('|') && !l.starts_with("-->"))
        .unwrap_or(msg)
        .trim_start_matches("TOML parse error: ")
        .to_string()
}
