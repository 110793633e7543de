//! A typed builder for test configurations, instead of string surgery on TOML.
//!
//! ```ignore
//! let config = TestConfig::new(&sts.url())
//!     .refresh("lead", "99%")
//!     .role(Role::new("app"))
//!     .role(Role::new("lazy").lazy().service_accounts(&["jobs/*"]));
//! let broker = spawn_broker(&dir, &config).await; // or TestBroker::start(&dir, &config.render())
//! ```
//!
//! Tables keep the order keys were first set in; setting a key again replaces its value.
//! Values are `serde_json::Value`s (strings, numbers, booleans, arrays, objects as inline
//! tables), rendered as TOML.

#![allow(dead_code)]

use serde_json::{Value, json};

use crate::helpers::TOKEN;

/// One `[table]`'s keys, in order.
#[derive(Debug, Clone, Default)]
struct Table(Vec<(String, Value)>);

impl Table {
    fn set(&mut self, key: &str, value: Value) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.0.push((key.to_string(), value)),
        }
    }

    fn unset(&mut self, key: &str) {
        self.0.retain(|(k, _)| k != key);
    }

    fn render(&self, out: &mut String) {
        for (k, v) in &self.0 {
            out.push_str(&format!("{k} = {}\n", toml_value(v)));
        }
    }
}

/// A whole broker configuration.
#[derive(Debug, Clone)]
pub struct TestConfig {
    /// `(name, keys)` of the single tables (`sts`, `refresh`, `ecs`, ...), in order.
    tables: Vec<(String, Table)>,
    roles: Vec<Role>,
}

impl TestConfig {
    /// No tables at all: for configs that must not carry the test head's settings.
    pub fn empty() -> TestConfig {
        TestConfig {
            tables: Vec::new(),
            roles: Vec::new(),
        }
    }

    /// The common test head (as `helpers::config_head`): STS at `sts_url` with a 2 s timeout,
    /// static source credentials from the environment, fast back-off, no jitter, ECS and admin
    /// listeners on port 0. No roles.
    pub fn new(sts_url: &str) -> TestConfig {
        TestConfig::empty()
            .set("sts", "region", "us-east-1")
            .set("sts", "endpoint", sts_url)
            .set("sts", "timeout", "2s")
            .set("sts", "max_calls_per_second", 200)
            .set("source", "kind", "static_env")
            .set("refresh", "lead", "40m")
            .set("refresh", "min_remaining", "15m")
            .set("refresh", "jitter", "0s")
            .set("refresh", "backoff_min", "100ms")
            .set("refresh", "backoff_max", "1s")
            .set("ecs", "listen", "127.0.0.1:0")
            .set("admin", "listen", "127.0.0.1:0")
    }

    /// Sets `key` in `[table]` (created at the end when missing).
    pub fn set(mut self, table: &str, key: &str, value: impl Into<Value>) -> TestConfig {
        let value = value.into();
        match self.tables.iter_mut().find(|(t, _)| t == table) {
            Some((_, t)) => t.set(key, value),
            None => {
                let mut t = Table::default();
                t.set(key, value);
                self.tables.push((table.to_string(), t));
            }
        }
        self
    }

    /// Removes `key` from `[table]`.
    pub fn unset(mut self, table: &str, key: &str) -> TestConfig {
        if let Some((_, t)) = self.tables.iter_mut().find(|(t, _)| t == table) {
            t.unset(key);
        }
        self
    }

    /// Removes the whole `[table]`.
    pub fn without(mut self, table: &str) -> TestConfig {
        self.tables.retain(|(t, _)| t != table);
        self
    }

    /// A `[refresh]` key.
    pub fn refresh(self, key: &str, value: impl Into<Value>) -> TestConfig {
        self.set("refresh", key, value)
    }

    /// An `[sts]` key.
    pub fn sts(self, key: &str, value: impl Into<Value>) -> TestConfig {
        self.set("sts", key, value)
    }

    /// `[imds]` listening on loopback port 0, plus `keys`.
    pub fn imds(mut self, keys: &[(&str, Value)]) -> TestConfig {
        self = self.set("imds", "listen", "127.0.0.1:0");
        for (k, v) in keys {
            self = self.set("imds", k, v.clone());
        }
        self
    }

    /// `[kubernetes]` for the issuer at `issuer_url` with keys from `jwks` (a file path,
    /// `"discovery"` or `"api_server"`), cluster `test-cluster` on node `node`.
    pub fn kubernetes(self, issuer_url: &str, audience: &str, jwks: &str, node: &str) -> Self {
        self.set("kubernetes", "issuer", issuer_url)
            .set("kubernetes", "audiences", json!([audience]))
            .set("kubernetes", "jwks", jwks)
            .set("kubernetes", "cluster_name", "test-cluster")
            .set("kubernetes", "node_name", node)
    }

    /// `[audit]` writing to `path`.
    pub fn audit(self, path: &std::path::Path) -> TestConfig {
        self.set("audit", "path", path.display().to_string())
    }

    /// Adds a `[[role]]`.
    pub fn role(mut self, role: Role) -> TestConfig {
        self.roles.push(role);
        self
    }

    /// Removes the role `name`.
    pub fn without_role(mut self, name: &str) -> TestConfig {
        self.roles.retain(|r| r.name != name);
        self
    }

    /// Changes the role `name` in place.
    #[track_caller]
    pub fn with_role(mut self, name: &str, f: impl FnOnce(Role) -> Role) -> TestConfig {
        let i = self
            .roles
            .iter()
            .position(|r| r.name == name)
            .unwrap_or_else(|| panic!("no role {name:?} in the test config"));
        let role = self.roles.remove(i);
        self.roles.insert(i, f(role));
        self
    }

    /// The TOML text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, table) in &self.tables {
            out.push_str(&format!("\n[{name}]\n"));
            table.render(&mut out);
        }
        for role in &self.roles {
            out.push_str("\n[[role]]\n");
            role.keys.render(&mut out);
        }
        out
    }
}

/// One `[[role]]`.
#[derive(Debug, Clone)]
pub struct Role {
    name: String,
    keys: Table,
}

impl Role {
    /// `name` for `arn:aws:iam::123456789012:role/{name}`, allowing `helpers::TOKEN` (as
    /// `helpers::role`).
    pub fn new(name: &str) -> Role {
        Role {
            name: name.to_string(),
            keys: Table::default(),
        }
        .set("name", name)
        .set("arn", format!("arn:aws:iam::123456789012:role/{name}"))
        .set("tokens", json!([TOKEN]))
    }

    /// Sets a key of the role.
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Role {
        self.keys.set(key, value.into());
        self
    }

    /// Removes a key of the role.
    pub fn unset(mut self, key: &str) -> Role {
        self.keys.unset(key);
        self
    }

    /// `prefetch = false`: assumed on the first request, then kept warm.
    pub fn lazy(self) -> Role {
        self.set("prefetch", false)
    }

    /// Only these client tokens.
    pub fn tokens(self, tokens: &[&str]) -> Role {
        self.set("tokens", json!(tokens))
    }

    /// Token files instead of inline tokens.
    pub fn token_files(self, files: &[&std::path::Path]) -> Role {
        let files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        self.unset("tokens").set("token_files", json!(files))
    }

    /// Kubernetes service accounts (`namespace/name`, `namespace/*`) that may use the role.
    pub fn service_accounts(self, accounts: &[&str]) -> Role {
        self.set("service_accounts", json!(accounts))
    }
}

/// `v` as a TOML value: JSON strings are valid TOML basic strings, objects become inline
/// tables.
fn toml_value(v: &Value) -> String {
    match v {
        Value::Null => panic!("TOML has no null"),
        Value::Bool(_) | Value::Number(_) | Value::String(_) => v.to_string(),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(toml_value).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(map) => {
            let items: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{} = {}", Value::String(k.clone()), toml_value(v)))
                .collect();
            format!("{{ {} }}", items.join(", "))
        }
    }
}

#[test]
fn renders_what_the_string_helpers_render() {
    let built = TestConfig::new("http://127.0.0.1:1")
        .role(Role::new("app").set("tags", json!({"team": "pay"})))
        .render();
    let by_hand = crate::helpers::config_head("http://127.0.0.1:1")
        + &crate::helpers::role("app", "tags = { team = \"pay\" }");
    let parse = |s: &str| s.parse::<toml::Table>().unwrap();
    assert_eq!(parse(&built), parse(&by_hand));
}
