//! Secret-bearing types shared by every module: they redact themselves in `Debug`/`Display`
//! and zeroize their memory when dropped.
//!
//! Nothing in here knows about STS or HTTP: `sts` converts SDK output into [`Credentials`]
//! the moment it arrives (the SDK's own `Debug` prints the session token), and `cache`
//! renders them into response bodies.

use std::fmt;
use std::time::SystemTime;

use zeroize::Zeroizing;

/// What `Debug` and `Display` print instead of a secret.
pub const REDACTED: &str = "** redacted **";

/// A secret string: a token, a secret key, an external ID.
///
/// The bytes are zeroed when the value is dropped; the only way to read them is
/// [`Secret::expose`], so every use is greppable.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wraps a value; the caller's `String` moves in, so no unzeroized copy is left behind.
    pub fn new(value: String) -> Self {
        Secret(Zeroizing::new(value))
    }

    /// The secret itself. Call only where the value leaves the process (a request to STS,
    /// a response body, a constant-time comparison).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Length in bytes: a fact that may be logged.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{REDACTED}\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Temporary credentials as STS issued them, in our own redacting type.
#[derive(Clone)]
pub struct Credentials {
    /// Not secret: it is what joins our logs to CloudTrail.
    pub access_key_id: String,
    /// The secret half of the key pair.
    pub secret_access_key: Secret,
    /// Sent with every request the credentials sign.
    pub session_token: Secret,
    /// When STS says the credentials stop working.
    pub expiration: SystemTime,
    /// `arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION`, when STS reports one.
    pub assumed_arn: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key)
            .field("session_token", &self.session_token)
            .field(
                "expiration",
                &format_args!("{}", humantime::format_rfc3339_seconds(self.expiration)),
            )
            .field("assumed_arn", &self.assumed_arn)
            .finish()
    }
}

/// `AccessKeyId` length range the STS API reference documents.
pub const ACCESS_KEY_ID_LEN: std::ops::RangeInclusive<usize> = 16..=128;
/// Bound on a `SecretAccessKey` (AWS issues 40 characters; STS documents no maximum).
pub const MAX_SECRET_ACCESS_KEY: usize = 256;
/// Bound on a `SessionToken`: STS documents no maximum and tokens grow with session tags and
/// policies (typically 0.5–3 KB); beyond 16 KiB no SDK could send it in a request header.
pub const MAX_SESSION_TOKEN: usize = 16 * 1024;

impl Credentials {
    /// Checks what STS returned before anything is served, and caps the expiry at what was
    /// asked for (`now + requested`): a later expiry would stretch the refresh schedule past
    /// the session length the operator configured. The message names the field, never a
    /// value.
    ///
    /// # Errors
    /// A missing, empty, oversized or malformed field: a transient error (a retry gets a
    /// fresh answer), and nothing is cached.
    pub fn validated(
        mut self,
        requested: std::time::Duration,
        now: SystemTime,
    ) -> Result<Credentials, FetchError> {
        let bad = |what: String| {
            Err(FetchError::new(
                ErrorClass::Transient,
                None,
                format!("STS answered with an unusable {what}; nothing was served"),
            ))
        };
        let akid = &self.access_key_id;
        if !ACCESS_KEY_ID_LEN.contains(&akid.len())
            || !akid.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return bad(format!(
                "AccessKeyId ({} bytes; expected {}..{} letters and digits)",
                akid.len(),
                ACCESS_KEY_ID_LEN.start(),
                ACCESS_KEY_ID_LEN.end()
            ));
        }
        for (name, value, max) in [
            (
                "SecretAccessKey",
                &self.secret_access_key,
                MAX_SECRET_ACCESS_KEY,
            ),
            ("SessionToken", &self.session_token, MAX_SESSION_TOKEN),
        ] {
            let v = value.expose();
            if v.is_empty() || v.len() > max || !v.bytes().all(|b| b.is_ascii_graphic()) {
                return bad(format!(
                    "{name} ({} bytes; expected 1..{max} printable characters)",
                    v.len()
                ));
            }
        }
        if self.expiration <= now {
            return bad("Expiration (already past)".to_string());
        }
        if let Some(cap) = now.checked_add(requested)
            && self.expiration > cap
        {
            let excess = self.expiration.duration_since(cap).unwrap_or_default();
            if excess > std::time::Duration::from_secs(60) {
                tracing::warn!(
                    access_key_id = %self.access_key_id,
                    requested_s = requested.as_secs(),
                    excess_s = excess.as_secs(),
                    "STS reported an expiry later than the session length asked for; using the requested length"
                );
            }
            self.expiration = cap;
        }
        Ok(self)
    }
}

/// Why obtaining credentials failed, classified once so that back-off and the 503 body know
/// whether a retry can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// STS said `Throttling` / rate exceeded: back off harder.
    Throttled,
    /// Network errors, timeouts, 5xx, unparseable responses: a retry is likely to work.
    Transient,
    /// `AccessDenied` and friends: a retry will not help until IAM changes.
    AccessDenied,
    /// The request itself is wrong (malformed policy, bad ARN, region disabled, …).
    InvalidConfig,
}

impl ErrorClass {
    /// Fixed label for metrics and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Throttled => "throttled",
            ErrorClass::Transient => "transient",
            ErrorClass::AccessDenied => "access_denied",
            ErrorClass::InvalidConfig => "invalid_config",
        }
    }

    /// Whether retrying soon is likely to succeed.
    pub fn retryable(self) -> bool {
        matches!(self, ErrorClass::Throttled | ErrorClass::Transient)
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure to obtain credentials for a role. The message never holds a secret: it is
/// built from STS error codes/messages and our own text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{class}: {message}")]
pub struct FetchError {
    /// Whether a retry can help: back-off and the 503 body depend on it.
    pub class: ErrorClass,
    /// STS error code (`Throttling`, `AccessDenied`, …) when STS sent one.
    pub code: Option<String>,
    /// What went wrong, safe to log and to send to clients.
    pub message: String,
}

impl FetchError {
    /// A classified error; `code` is the STS error code, when STS sent one.
    pub fn new(class: ErrorClass, code: Option<String>, message: impl Into<String>) -> Self {
        FetchError {
            class,
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("SECRET-MARKER-123".to_string());
        assert_eq!(format!("{s:?}"), format!("\"{REDACTED}\""));
        assert_eq!(format!("{s}"), REDACTED);
        assert_eq!(s.expose(), "SECRET-MARKER-123");
        assert_eq!(s.len(), 17);
    }

    #[test]
    fn panic_messages_show_no_secret() {
        // assert_eq! and expect() format their values with Debug: a secret must print redacted.
        let a = Secret::new("SECRET-MARKER-a".into());
        let b = Secret::new("SECRET-MARKER-b".into());
        let payload = std::panic::catch_unwind(|| assert_eq!(a, b)).unwrap_err();
        let msg = payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(msg.contains(REDACTED), "{msg}");
        assert!(!msg.contains("SECRET-MARKER"), "{msg}");
        let err: Result<(), Secret> = Err(Secret::new("SECRET-MARKER-c".into()));
        let payload = std::panic::catch_unwind(|| err.clone().expect("no secret")).unwrap_err();
        let msg = payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(!msg.contains("SECRET-MARKER"), "{msg}");
    }

    fn sample(now: SystemTime) -> Credentials {
        Credentials {
            access_key_id: "ASIAEXAMPLE0000001".into(),
            secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into()),
            session_token: Secret::new("FwoGZXIvYXdzEXAMPLE+token/==".into()),
            expiration: now + std::time::Duration::from_secs(3600),
            assumed_arn: None,
        }
    }

    #[test]
    fn every_credential_field_is_validated() {
        let now = clock::now();
        let hour = std::time::Duration::from_secs(3600);
        assert!(sample(now).validated(hour, now).is_ok());
        type Breaker = fn(&mut Credentials);
        let cases: [(&str, Breaker); 8] = [
            ("SessionToken", |c| {
                c.session_token = Secret::new(String::new())
            }),
            ("SecretAccessKey", |c| {
                c.secret_access_key = Secret::new(String::new())
            }),
            ("AccessKeyId", |c| c.access_key_id = String::new()),
            ("AccessKeyId", |c| c.access_key_id = "A".repeat(2 << 20)),
            ("AccessKeyId", |c| {
                c.access_key_id = "ASIA\"\n{}0000000000".into()
            }),
            ("SessionToken", |c| {
                c.session_token = Secret::new("x".repeat(MAX_SESSION_TOKEN + 1))
            }),
            ("SessionToken", |c| {
                c.session_token = Secret::new("tok en".into())
            }),
            ("Expiration", |c| c.expiration = SystemTime::UNIX_EPOCH),
        ];
        for (field, breaks) in cases {
            let mut c = sample(now);
            breaks(&mut c);
            let e = c.validated(hour, now).unwrap_err();
            assert!(e.message.contains(field), "{field}: {}", e.message);
            assert!(!e.message.contains("EXAMPLE"), "no value in {}", e.message);
        }
    }

    #[test]
    fn an_expiry_later_than_requested_is_capped() {
        let now = clock::now();
        let mut c = sample(now);
        c.expiration = now + std::time::Duration::from_secs(12 * 3600);
        let c = c
            .validated(std::time::Duration::from_secs(3600), now)
            .unwrap();
        assert_eq!(c.expiration, now + std::time::Duration::from_secs(3600));
        // A shorter one (MaxSessionDuration, chaining) is kept as is.
        let mut c = sample(now);
        c.expiration = now + std::time::Duration::from_secs(900);
        let c = c
            .validated(std::time::Duration::from_secs(3600), now)
            .unwrap();
        assert_eq!(c.expiration, now + std::time::Duration::from_secs(900));
    }

    #[test]
    fn credentials_debug_redacts_secret_and_token() {
        let c = Credentials {
            access_key_id: "ASIAEXAMPLE".into(),
            secret_access_key: Secret::new("SECRET-MARKER-key".into()),
            session_token: Secret::new("SECRET-MARKER-token".into()),
            expiration: SystemTime::UNIX_EPOCH,
            assumed_arn: None,
        };
        let dbg = format!("{c:?}");
        assert!(dbg.contains("ASIAEXAMPLE"), "{dbg}");
        assert!(!dbg.contains("SECRET-MARKER"), "{dbg}");
        assert!(dbg.contains("1970-01-01T00:00:00Z"), "{dbg}");
    }
}
