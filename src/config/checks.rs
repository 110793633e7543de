//! Single-value checks: the limits STS puts on names, ARNs, IDs and tags, as pure functions
//! (unit-tested one by one), and the `{hostname}` expansion of session names.

use std::time::SystemTime;

/// Session tag limits (AssumeRole API reference).
const MAX_TAG_KEY: usize = 128;
const MAX_TAG_VALUE: usize = 256;

/// A character of `\w` as STS means it: ASCII letters, digits and `_`.
fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Whether `c` may appear in a RoleSessionName: `[\w+=,.@-]`.
pub(super) fn is_session_name_char(c: char) -> bool {
    is_word(c) || "+=,.@-".contains(c)
}

/// `s` with the characters STS rejects in a session name replaced by `-`.
pub(super) fn clean_session_name_part(s: &str) -> String {
    s.chars()
        .map(|c| if is_session_name_char(c) { c } else { '-' })
        .collect()
}

/// Whether `s` is of the shape STS gives most names: `len` bytes of `\w`, or `ok`.
pub(super) fn is_sts_text(
    s: &str,
    len: std::ops::RangeInclusive<usize>,
    ok: impl Fn(char) -> bool,
) -> bool {
    len.contains(&s.len()) && s.chars().all(|c| is_word(c) || ok(c))
}

/// Role names appear in URLs and metric labels: keep them plain.
pub fn check_role_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} must be 1..64 characters of [A-Za-z0-9_.-], starting with a letter or digit"
        ))
    }
}

/// `arn:PARTITION:iam::ACCOUNT:role/[PATH/]NAME`; returns the account.
pub fn check_role_arn(arn: &str) -> Result<String, String> {
    let bad =
        || format!("{arn:?} is not an IAM role ARN like \"arn:aws:iam::123456789012:role/name\"");
    if !(20..=2048).contains(&arn.len()) {
        return Err(bad());
    }
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [prefix, partition, service, region, account, resource] = parts[..] else {
        return Err(bad());
    };
    let ok = prefix == "arn"
        && partition.starts_with("aws")
        && service == "iam"
        && region.is_empty()
        && account.len() == 12
        && account.chars().all(|c| c.is_ascii_digit())
        && resource
            .strip_prefix("role/")
            .is_some_and(|r| !r.is_empty() && !r.ends_with('/'))
        && resource
            .chars()
            .all(|c| is_word(c) || "+=,.@/-".contains(c));
    if ok {
        Ok(account.to_string())
    } else {
        Err(bad())
    }
}

/// `arn:PARTITION:iam::(ACCOUNT|aws):policy/[PATH/]NAME`.
pub fn check_policy_arn(arn: &str) -> Result<(), String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let ok = match parts[..] {
        [prefix, partition, service, region, account, resource] => {
            prefix == "arn"
                && partition.starts_with("aws")
                && service == "iam"
                && region.is_empty()
                && (account == "aws"
                    || (account.len() == 12 && account.chars().all(|c| c.is_ascii_digit())))
                && resource
                    .strip_prefix("policy/")
                    .is_some_and(|r| !r.is_empty())
        }
        _ => false,
    };
    if ok && (20..=2048).contains(&arn.len()) {
        Ok(())
    } else {
        Err(format!(
            "{arn:?} is not a managed policy ARN like \"arn:aws:iam::aws:policy/ReadOnlyAccess\""
        ))
    }
}

/// RoleSessionName: 2..64 of `[\w+=,.@-]`.
pub fn check_session_name(name: &str) -> Result<(), String> {
    if is_sts_text(name, 2..=64, is_session_name_char) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} must be 2..64 characters of letters, digits and +=,.@_-"
        ))
    }
}

/// ExternalId: 2..1224 of `[\w+=,.@:/-]`. The value is secret, so it is not echoed.
pub fn check_external_id(id: &str) -> Result<(), String> {
    if !(2..=1224).contains(&id.len()) {
        return Err(format!("is {} characters; STS accepts 2..1224", id.len()));
    }
    if !id.chars().all(|c| is_word(c) || "+=,.@:/-".contains(c)) {
        return Err("may contain only letters, digits and +=,.@:/_-".to_string());
    }
    Ok(())
}

/// SourceIdentity: 2..64 of `[\w+=,.@-]`, not starting with `aws:`.
pub fn check_source_identity(si: &str) -> Result<(), String> {
    if si.to_ascii_lowercase().starts_with("aws:") {
        return Err(format!("{si:?} must not start with \"aws:\""));
    }
    if !is_sts_text(si, 2..=64, is_session_name_char) {
        return Err(format!(
            "{si:?} must be 2..64 characters of letters, digits and +=,.@_-"
        ));
    }
    Ok(())
}

/// Session tags: key 1..128, value 0..256, of `[\p{L}\p{Z}\p{N}_.:/=+\-@]`.
pub fn check_tag(key: &str, value: &str) -> Result<(), String> {
    fn allowed(c: char) -> bool {
        c.is_alphabetic()
            || c.is_numeric()
            || (c.is_whitespace() && !c.is_control())
            || "_.:/=+-@".contains(c)
    }
    let klen = key.chars().count();
    if !(1..=MAX_TAG_KEY).contains(&klen) {
        return Err(format!(
            "tag key {key:?} is {klen} characters; STS accepts 1..{MAX_TAG_KEY}"
        ));
    }
    let vlen = value.chars().count();
    if vlen > MAX_TAG_VALUE {
        return Err(format!(
            "value of tag {key:?} is {vlen} characters; STS accepts at most {MAX_TAG_VALUE}"
        ));
    }
    if !key.chars().all(allowed) {
        return Err(format!(
            "tag key {key:?} may contain only letters, digits, spaces and _.:/=+-@"
        ));
    }
    if !value.chars().all(allowed) {
        return Err(format!(
            "value of tag {key:?} may contain only letters, digits, spaces and _.:/=+-@"
        ));
    }
    if key.to_ascii_lowercase().starts_with("aws:") {
        return Err(format!("tag key {key:?} must not start with \"aws:\""));
    }
    Ok(())
}

/// Substitutes `{hostname}` in a session name template. The host name is cut so the result
/// fits STS's 64 characters (long pod names are common) and characters STS rejects become `-`.
pub fn expand_session_name(template: &str, hostname: &str) -> String {
    const PLACEHOLDER: &str = "{hostname}";
    if !template.contains(PLACEHOLDER) {
        return template.to_string();
    }
    let fixed = template.replace(PLACEHOLDER, "");
    let room = 64usize.saturating_sub(fixed.len());
    let host: String = clean_session_name_part(hostname)
        .chars()
        .take(room)
        .collect();
    template
        .replacen(PLACEHOLDER, &host, 1)
        .replace(PLACEHOLDER, "")
}

/// Parses an RFC 3339 instant (`2026-11-29T12:00:00Z`, fractional seconds and a numeric
/// offset such as `+02:00` allowed).
pub fn parse_instant(s: &str) -> Result<SystemTime, String> {
    let s = s.trim();
    let bad = || format!("{s:?} is not an RFC 3339 time like \"2026-11-29T12:00:00Z\"");
    if s.len() < 20 {
        return Err(bad());
    }
    let (base, offset_secs) = if s.ends_with('Z') || s.ends_with('z') {
        (s[..s.len() - 1].to_string(), 0i64)
    } else {
        let tail = &s[s.len() - 6..];
        let b = tail.as_bytes();
        if !(b[0] == b'+' || b[0] == b'-') || b[3] != b':' {
            return Err(bad());
        }
        let h: i64 = tail[1..3].parse().map_err(|_| bad())?;
        let m: i64 = tail[4..6].parse().map_err(|_| bad())?;
        if h > 23 || m > 59 {
            return Err(bad());
        }
        let sign = if b[0] == b'+' { 1 } else { -1 };
        (s[..s.len() - 6].to_string(), sign * (h * 3600 + m * 60))
    };
    let t = humantime::parse_rfc3339(&format!("{base}Z")).map_err(|_| bad())?;
    let shift = std::time::Duration::from_secs(offset_secs.unsigned_abs());
    // 10:00+02:00 is 08:00Z.
    Ok(if offset_secs >= 0 {
        t - shift
    } else {
        t + shift
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_parse_with_offsets() {
        let z = parse_instant("2026-11-29T12:00:00Z").unwrap();
        assert_eq!(parse_instant("2026-11-29T14:00:00+02:00").unwrap(), z);
        assert_eq!(parse_instant("2026-11-29T07:30:00-04:30").unwrap(), z);
        assert!(parse_instant("2026-11-29T12:00:00.250Z").unwrap() > z);
        for bad in ["yesterday", "2026-11-29", "2026-11-29T12:00:00+2:00", ""] {
            assert!(parse_instant(bad).is_err(), "{bad}");
        }
    }
}
