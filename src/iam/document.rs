//! The IAM policy document model: serialized with the field names and order IAM shows.

use std::collections::BTreeMap;

use serde::{Serialize, Serializer};

use super::POLICY_VERSION;
use crate::creds::Secret;

/// An IAM policy document, fields in the order IAM shows them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Policy {
    /// Always [`POLICY_VERSION`].
    #[serde(rename = "Version")]
    pub version: &'static str,
    /// The `Allow` statements, in the order the notes explain them.
    #[serde(rename = "Statement")]
    pub statements: Vec<Statement>,
}

impl Policy {
    /// A policy of the current version.
    pub(super) fn new(statements: Vec<Statement>) -> Policy {
        Policy {
            version: POLICY_VERSION,
            statements,
        }
    }
}

/// One `Allow` statement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Statement {
    /// Always `Allow`: the broker needs nothing denied.
    #[serde(rename = "Effect")]
    pub effect: &'static str,
    /// Who is trusted: set in trust policies only.
    #[serde(rename = "Principal", skip_serializing_if = "Option::is_none")]
    pub principal: Option<Principal>,
    /// The STS actions allowed.
    #[serde(rename = "Action")]
    pub actions: Vec<&'static str>,
    /// What the actions apply to: set in permission policies only.
    #[serde(rename = "Resource", skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Operator → key → value.
    #[serde(rename = "Condition", skip_serializing_if = "BTreeMap::is_empty")]
    pub condition: BTreeMap<&'static str, BTreeMap<String, ConditionValue>>,
}

impl Statement {
    /// An `Allow` of `actions`, with no principal, resource or condition yet.
    pub(super) fn allow(actions: Vec<&'static str>) -> Statement {
        Statement {
            effect: "Allow",
            principal: None,
            actions,
            resource: None,
            condition: BTreeMap::new(),
        }
    }

    /// Adds a `StringEquals` condition on `key`.
    pub(super) fn string_equals(
        mut self,
        key: impl Into<String>,
        value: ConditionValue,
    ) -> Statement {
        self.condition
            .entry("StringEquals")
            .or_default()
            .insert(key.into(), value);
        self
    }
}

/// A trust policy's `Principal`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Principal {
    /// An IAM user or role.
    #[serde(rename = "AWS")]
    Aws(String),
    /// An OIDC or SAML provider.
    Federated(String),
}

/// A condition value; the external ID stays a [`Secret`] (redacted in `Debug`) until it is
/// serialized into the policy the operator asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum ConditionValue {
    /// A value that may be shown anywhere.
    Plain(String),
    /// The external ID: printed only inside the trust policy.
    Secret(Secret),
}

impl Serialize for ConditionValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ConditionValue::Plain(v) => s.serialize_str(v),
            // The trust policy's sts:ExternalId must hold the value: the one place it leaves.
            ConditionValue::Secret(v) => s.serialize_str(v.expose()),
        }
    }
}
