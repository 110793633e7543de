//! Reading the parts of an ARN the policies and their commands need.

/// The account and partition of an ARN (`arn:PARTITION:SERVICE::ACCOUNT:…`).
pub(super) fn arn_partition_account(arn: &str) -> Option<(&str, &str)> {
    let mut parts = arn.splitn(6, ':');
    let (_, partition, _, _, account) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    Some((partition, account))
}

/// `(path, name)` of an IAM user/role ARN: `…:role/a/b/name` → `("/a/b/", "name")`.
pub(super) fn iam_path_and_name(arn: &str) -> Option<(String, &str)> {
    let resource = arn.splitn(6, ':').nth(5)?;
    let (_, rest) = resource.split_once('/')?;
    let (path, name) = match rest.rsplit_once('/') {
        Some((p, n)) => (format!("/{p}/"), n),
        None => ("/".to_string(), rest),
    };
    Some((path, name))
}
