//! The path id of the oldest ECS clients: SDKs that read only
//! `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` fetch `http://169.254.170.2` + that path with no
//! `Authorization` header, so the path itself is the secret (ECS: `/v2/credentials/<id>`).
//!
//! By default a role's id is derived from its first client token:
//! `hex(HMAC-SHA256(key = token, "sts-broker relative-uri v1\0" ‖ role name))[..32]` — 128 bits,
//! as secret as the token (knowing the id does not reveal the token, and vice versa), stable
//! across restarts and reloads, different per role even when roles share a token, and changed
//! when the token is rotated. `relative_uri_id` sets it explicitly; `relative_uri = false`
//! turns the path off for a role.

use hmac::{KeyInit, Mac};

use crate::creds::Secret;

/// The path prefix, as ECS serves it.
pub const PREFIX: &str = "/v2/credentials/";
/// Domain separator: this HMAC is used for nothing else.
const DOMAIN: &[u8] = b"sts-broker relative-uri v1\0";
/// Shortest explicit id accepted (as for client tokens).
pub const MIN_ID_LEN: usize = 16;
/// Longest explicit id accepted.
pub const MAX_ID_LEN: usize = 128;

/// The id derived from `token` for `role`.
pub fn derive(token: &Secret, role: &str) -> Secret {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(token.expose().as_bytes())
        .expect("HMAC takes any key length");
    mac.update(DOMAIN);
    mac.update(role.as_bytes());
    let digest = mac.finalize().into_bytes();
    Secret::new(hex::encode(&digest[..16]))
}

/// An explicit id: 16..128 characters that need no escaping in a URL path.
pub fn check_id(id: &str) -> Result<(), String> {
    if !(MIN_ID_LEN..=MAX_ID_LEN).contains(&id.len()) {
        return Err(format!(
            "is {} characters; {MIN_ID_LEN}..{MAX_ID_LEN} are required (it is the secret: `openssl rand -hex 16` makes a good one)",
            id.len()
        ));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    {
        return Err("may contain only letters, digits and -._~".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_per_role_and_token_and_reveal_neither() {
        let t = Secret::new("client-token-0123456789abcdef".into());
        let a = derive(&t, "app");
        assert_eq!(a.expose(), derive(&t, "app").expose(), "stable");
        assert_eq!(a.len(), 32);
        assert_ne!(a.expose(), derive(&t, "db").expose(), "per role");
        let rotated = Secret::new("client-token-rotated-0123456789".into());
        assert_ne!(a.expose(), derive(&rotated, "app").expose(), "per token");
        assert!(!a.expose().contains("client-token"));
        assert!(check_id(a.expose()).is_ok());
        assert!(check_id("short").is_err());
        assert!(check_id("has/a/slash-0123456789").is_err());
        assert!(check_id("has%2fescape-0123456789").is_err());
    }
}
