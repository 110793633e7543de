//! The key table: which keys each table accepts, and which keys belong to one `kind` only.
//!
//! A table's keys are the fields of its serde struct, read from the derive (so the struct is
//! the one list; nobody keeps a copy in step with it). Tables with a `kind` (`[[role]]`,
//! `[source]`) also list here which keys only some kinds take, so that a key of another kind
//! gets a message naming that kind instead of "unknown key".

use serde::Deserialize;
use serde::de::{self, Visitor};

use super::role::RoleKindTag;
use super::source::SourceKindTag;

/// The top-level tables (and arrays of tables) a config file may have.
pub(super) const TOP_LEVEL_TABLES: &[&str] = &[
    "sts",
    "source",
    "refresh",
    "ecs",
    "admin",
    "imds",
    "audit",
    "role",
    "kubernetes",
];

/// The keys each role kind adds to those every kind takes. A key listed under several kinds
/// (`arn`, `session_name`, `tags`) is named after the first when it turns up elsewhere.
pub(super) const ROLE_KIND_KEYS: &[(RoleKindTag, &[&str])] = &[
    (
        RoleKindTag::AssumeRole,
        &[
            "arn",
            "session_name",
            "external_id",
            "tags",
            "transitive_tag_keys",
            "source_identity",
            "source_role",
        ],
    ),
    (
        RoleKindTag::WebIdentity,
        &["arn", "session_name", "web_identity_token_file"],
    ),
    (
        RoleKindTag::SessionToken,
        &["mfa_serial", "mfa_code_command"],
    ),
    (RoleKindTag::FederationToken, &["federated_name", "tags"]),
    (
        RoleKindTag::Saml,
        &[
            "arn",
            "principal_arn",
            "saml_assertion_file",
            "saml_assertion_command",
        ],
    ),
];

/// The keys each `[source]` kind takes besides `kind`.
pub(super) const SOURCE_KIND_KEYS: &[(SourceKindTag, &[&str])] = &[
    (SourceKindTag::Profile, &["name"]),
    (
        SourceKindTag::WebIdentity,
        &["token_file", "role_arn", "session_name"],
    ),
];

/// The kind that takes `key` when `kind` does not: `None` when `kind` takes it, every kind
/// takes it, or no kind knows it.
pub(super) fn owner_elsewhere<K: Copy + PartialEq>(
    table: &[(K, &[&str])],
    key: &str,
    kind: K,
) -> Option<K> {
    let owners = || table.iter().filter(|(_, keys)| keys.contains(&key));
    if owners().any(|(k, _)| *k == kind) {
        return None;
    }
    owners().map(|(k, _)| *k).next()
}

/// The keys of `T`'s table that a `kind` takes: every field of `T` but those only other
/// kinds take.
pub(super) fn known_for<T: for<'de> Deserialize<'de>, K: Copy + PartialEq>(
    table: &[(K, &[&str])],
    kind: K,
) -> Vec<&'static str> {
    fields::<T>()
        .iter()
        .copied()
        .filter(|key| owner_elsewhere(table, key, kind).is_none())
        .collect()
}

/// The field names of a struct that derives `Deserialize`, in declaration order: the keys
/// its TOML table accepts. (The derive hands them to `deserialize_struct`; a probe
/// deserializer records them and stops.)
pub(super) fn fields<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    let mut found = None;
    let _ = T::deserialize(Probe(&mut found));
    found.unwrap_or_default()
}

/// A deserializer that only records the field list it is asked for.
struct Probe<'a>(&'a mut Option<&'static [&'static str]>);

/// The probe's way of stopping the derive once it has the fields.
#[derive(Debug)]
struct Stop;

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("field probe")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Stop
    }
}

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Stop> {
        *self.0 = Some(fields);
        Err(Stop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Two {
        first: Option<String>,
        second: u32,
    }

    #[test]
    fn fields_come_from_the_derive_in_order() {
        assert_eq!(fields::<Two>(), ["first", "second"]);
        // Not a struct: no keys at all rather than a guess.
        assert!(fields::<String>().is_empty());
    }

    #[test]
    fn every_kind_key_is_a_field_of_its_table() {
        let role = fields::<crate::config::role::parse::RawRole>();
        for (kind, keys) in ROLE_KIND_KEYS {
            for k in *keys {
                assert!(role.contains(k), "{kind:?}: {k}");
            }
        }
        let source = fields::<crate::config::source::RawSource>();
        for (kind, keys) in SOURCE_KIND_KEYS {
            for k in *keys {
                assert!(source.contains(k), "{kind:?}: {k}");
            }
        }
    }

    #[test]
    fn keys_of_other_kinds_name_their_kind() {
        let t = ROLE_KIND_KEYS;
        assert_eq!(
            owner_elsewhere(t, "external_id", RoleKindTag::WebIdentity),
            Some(RoleKindTag::AssumeRole)
        );
        assert_eq!(owner_elsewhere(t, "arn", RoleKindTag::Saml), None);
        assert_eq!(
            owner_elsewhere(t, "tags", RoleKindTag::Saml),
            Some(RoleKindTag::AssumeRole)
        );
        assert_eq!(owner_elsewhere(t, "duration", RoleKindTag::Saml), None);
        assert_eq!(owner_elsewhere(t, "colour", RoleKindTag::Saml), None);
    }
}
