//! The wire format: the credential bodies the ECS and IMDS endpoints send, and the one timestamp
//! shape every SDK parses. A leaf: it knows credentials and JSON, nothing of caches, roles or STS.
//!
//! - ECS (`/v1/credentials/…`): `{"AccessKeyId","SecretAccessKey","Token","Expiration"}`, plus
//!   `RoleArn` and `AccountId` when known.
//! - IMDS (`security-credentials/{role}`): the field order of the real instance metadata
//!   service, `{"Code":"Success","LastUpdated","Type":"AWS-HMAC","AccessKeyId",
//!   "SecretAccessKey","Token","Expiration"}`; the `-extended` path adds `AccountId`.
//!
//! Bodies are rendered once per refresh into memory that is wiped when the last `Bytes` clone
//! drops, so the hot path clones a `Bytes` and leaves no copy of a secret behind.

use std::fmt;
use std::time::SystemTime;

use bytes::Bytes;
use zeroize::Zeroizing;

use crate::creds::{Credentials, REDACTED};

/// `YYYY-MM-DDTHH:MM:SSZ`, the only timestamp shape every SDK parses.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// What the bodies state about whose credentials they are, besides the credentials.
#[derive(Clone, Copy, Debug, Default)]
pub struct Principal<'a> {
    /// `RoleArn` of the ECS body (role kinds only).
    pub role_arn: Option<&'a str>,
    /// `AccountId` of the ECS body and of the IMDS `-extended` body.
    pub account_id: Option<&'a str>,
}

/// The bodies of one set of credentials. Backed by zeroizing memory; `Debug` redacts.
pub struct CredentialBodies {
    /// The ECS response body.
    pub ecs: Bytes,
    /// The IMDS bodies, `security-credentials/{name}` and `-extended/{name}`, when asked for.
    pub imds: Option<(Bytes, Bytes)>,
}

impl fmt::Debug for CredentialBodies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialBodies")
            .field("ecs", &REDACTED)
            .field("imds", &self.imds.as_ref().map(|_| REDACTED))
            .finish()
    }
}

impl CredentialBodies {
    /// Renders the ECS body of `creds` for `principal`, and the two IMDS bodies (stamped
    /// `LastUpdated = last_updated`) when `with_imds`.
    pub fn render(
        creds: &Credentials,
        principal: Principal<'_>,
        last_updated: SystemTime,
        with_imds: bool,
    ) -> CredentialBodies {
        let expiration = rfc3339(creds.expiration);
        let ecs = EcsBody {
            access_key_id: &creds.access_key_id,
            secret_access_key: creds.secret_access_key.expose(),
            token: creds.session_token.expose(),
            expiration: &expiration,
            role_arn: principal.role_arn,
            account_id: principal.account_id,
        };
        let imds = with_imds.then(|| {
            let last_updated = rfc3339(last_updated);
            let mut imds = ImdsBody {
                code: "Success",
                last_updated: &last_updated,
                kind: "AWS-HMAC",
                access_key_id: &creds.access_key_id,
                secret_access_key: creds.secret_access_key.expose(),
                token: creds.session_token.expose(),
                expiration: &expiration,
                account_id: None,
            };
            let plain = zeroizing_json(&imds);
            imds.account_id = principal.account_id;
            (plain, zeroizing_json(&imds))
        });
        CredentialBodies {
            ecs: zeroizing_json(&ecs),
            imds,
        }
    }
}

/// The ECS container-credentials body.
#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct EcsBody<'a> {
    access_key_id: &'a str,
    secret_access_key: &'a str,
    token: &'a str,
    expiration: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    role_arn: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    account_id: Option<&'a str>,
}

/// The field order of real IMDS; `AccountId` only on the extended path.
#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct ImdsBody<'a> {
    code: &'a str,
    last_updated: &'a str,
    #[serde(rename = "Type")]
    kind: &'a str,
    access_key_id: &'a str,
    secret_access_key: &'a str,
    token: &'a str,
    expiration: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    account_id: Option<&'a str>,
}

/// Serializes into memory that is wiped when the last `Bytes` clone drops.
///
/// The buffer is sized exactly (a counting pass first): with thousands of roles, spare
/// capacity in three bodies per role is most of the broker's memory, and growing a buffer
/// would leave unwiped copies of the secret behind.
fn zeroizing_json(value: &impl serde::Serialize) -> Bytes {
    /// Counts what would be written.
    struct Len(usize);
    impl std::io::Write for Len {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut len = Len(0);
    serde_json::to_writer(&mut len, value).expect("serializing plain strings cannot fail");
    let mut buf = Zeroizing::new(Vec::with_capacity(len.0));
    serde_json::to_writer(&mut *buf, value).expect("serializing plain strings cannot fail");
    debug_assert_eq!(buf.len(), buf.capacity());
    Bytes::from_owner(ZeroizingBytes(buf))
}

/// Owner for `Bytes::from_owner` that wipes the buffer when the last `Bytes` clone drops.
struct ZeroizingBytes(Zeroizing<Vec<u8>>);

impl AsRef<[u8]> for ZeroizingBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::creds::Secret;

    fn creds() -> Credentials {
        Credentials {
            access_key_id: "ASIAX".into(),
            secret_access_key: Secret::new("s3cr3t".into()),
            session_token: Secret::new("t0k3n".into()),
            expiration: SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000),
            assumed_arn: None,
        }
    }

    #[test]
    fn imds_bodies_keep_the_real_field_order_and_only_extended_names_the_account() {
        let principal = Principal {
            role_arn: Some("arn:aws:iam::123456789012:role/app"),
            account_id: Some("123456789012"),
        };
        let updated = SystemTime::UNIX_EPOCH + Duration::from_secs(1_794_996_400);
        let bodies = CredentialBodies::render(&creds(), principal, updated, true);
        let (plain, extended) = bodies.imds.as_ref().unwrap();
        let fields = "\"Code\":\"Success\",\"LastUpdated\":\"2026-11-18T10:06:40Z\",\"Type\":\"AWS-HMAC\",\"AccessKeyId\":\"ASIAX\",\"SecretAccessKey\":\"s3cr3t\",\"Token\":\"t0k3n\",\"Expiration\":\"2026-11-18T11:06:40Z\"";
        assert_eq!(&plain[..], format!("{{{fields}}}").as_bytes());
        assert_eq!(
            &extended[..],
            format!("{{{fields},\"AccountId\":\"123456789012\"}}").as_bytes()
        );
        // Exactly sized: no spare capacity holding (or later copying) a secret.
        assert_eq!(
            &bodies.ecs[..],
            b"{\"AccessKeyId\":\"ASIAX\",\"SecretAccessKey\":\"s3cr3t\",\"Token\":\"t0k3n\",\"Expiration\":\"2026-11-18T11:06:40Z\",\"RoleArn\":\"arn:aws:iam::123456789012:role/app\",\"AccountId\":\"123456789012\"}"
        );
        let dbg = format!("{bodies:?}");
        assert!(!dbg.contains("s3cr3t") && !dbg.contains("t0k3n"), "{dbg}");
    }

    #[test]
    fn without_imds_only_the_ecs_body_is_rendered_and_unknown_facts_are_left_out() {
        let bodies = CredentialBodies::render(
            &creds(),
            Principal::default(),
            SystemTime::UNIX_EPOCH,
            false,
        );
        assert!(bodies.imds.is_none());
        assert_eq!(
            &bodies.ecs[..],
            b"{\"AccessKeyId\":\"ASIAX\",\"SecretAccessKey\":\"s3cr3t\",\"Token\":\"t0k3n\",\"Expiration\":\"2026-11-18T11:06:40Z\"}"
        );
    }
}
