//! `[sts]` endpoints: which URLs the broker calls, in which order, and with which signing
//! region (DESIGN §8). Pure data and string rules; the health bookkeeping and failover loop
//! live in `sts::endpoints`.
//!
//! Regional endpoints are derived per partition from the region name, by the partition table
//! of the AWS SDK's endpoint rules: `sts.{region}.{dns suffix}`.

/// One STS endpoint to call: the URL (or `None`: let the SDK resolve the region's default)
/// and the region that SigV4 signs for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointTarget {
    /// The URL called; `None`: the SDK's default for `region`.
    pub url: Option<String>,
    /// The region SigV4 signs for.
    pub region: String,
}

impl EndpointTarget {
    /// What logs, metrics and `check` call this endpoint: its URL, or the URL the SDK's
    /// default resolution gives the region.
    pub fn label(&self) -> String {
        match &self.url {
            Some(u) => u.clone(),
            None => regional_url(&self.region)
                .unwrap_or_else(|| format!("sts (region {}, SDK default)", self.region)),
        }
    }
}

/// `(partition id, DNS suffix, region prefix)` of the partitions whose STS host names follow
/// `sts.{region}.{suffix}` (the SDK's partition table; ISO partitions included so an
/// air-gapped operator gets the right host, not a commercial one).
const PARTITIONS: &[(&str, &str, &str)] = &[
    ("aws-cn", "amazonaws.com.cn", "cn-"),
    ("aws-us-gov", "amazonaws.com", "us-gov-"),
    ("aws-iso-b", "sc2s.sgov.gov", "us-isob-"),
    ("aws-iso", "c2s.ic.gov", "us-iso-"),
];

/// The partition a region belongs to and its DNS suffix; `None` for a name that is not
/// shaped like a region (`xx-name-N`).
pub fn partition(region: &str) -> Option<(&'static str, &'static str)> {
    let parts: Vec<&str> = region.split('-').collect();
    let shaped = parts.len() >= 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        })
        && parts
            .last()
            .is_some_and(|p| p.chars().all(|c| c.is_ascii_digit()));
    if !shaped {
        return None;
    }
    for (id, suffix, prefix) in PARTITIONS {
        if region.starts_with(prefix) {
            return Some((id, suffix));
        }
    }
    Some(("aws", "amazonaws.com"))
}

/// `https://sts.{region}.{suffix}` for a region of a known partition.
pub fn regional_url(region: &str) -> Option<String> {
    partition(region).map(|(_, suffix)| format!("https://sts.{region}.{suffix}"))
}

/// The region an STS URL names in its host (`sts.R.amazonaws.com`, `sts-fips.R…`,
/// `sts.R.api.aws`, `vpce-….sts.R.vpce.amazonaws.com`), which is the region to sign for.
pub fn region_in_url(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split(['/', ':', '?']).next().unwrap_or("");
    let labels: Vec<&str> = host.split('.').collect();
    let at = labels
        .iter()
        .position(|l| *l == "sts" || *l == "sts-fips")?;
    let region = labels.get(at + 1)?;
    partition(region).map(|_| (*region).to_string())
}

/// The endpoint order of an `[sts]` table, given the region the broker runs in (the
/// configured one or the AWS config chain's).
///
/// - `endpoints`: that list, in order, each signed for the region its host names (else for
///   `region`);
/// - otherwise the primary (`endpoint` if set, else the region's default) followed by the
///   regional endpoint of each `failover_regions` entry.
///
/// # Errors
/// A failover region in another partition than `region` (the `[source]` credentials are
/// not valid there), or one whose partition is unknown.
pub fn endpoint_order(
    region: &str,
    endpoint: Option<&str>,
    endpoints: &[String],
    failover_regions: &[String],
) -> Result<Vec<EndpointTarget>, Vec<String>> {
    if !endpoints.is_empty() {
        return Ok(endpoints
            .iter()
            .map(|u| EndpointTarget {
                url: Some(u.clone()),
                region: region_in_url(u).unwrap_or_else(|| region.to_string()),
            })
            .collect());
    }
    let mut out = vec![EndpointTarget {
        url: endpoint.map(str::to_string),
        region: region.to_string(),
    }];
    let home = partition(region).map(|(id, _)| id);
    let mut problems = Vec::new();
    for r in failover_regions {
        match (partition(r), regional_url(r)) {
            (Some((id, _)), Some(url)) if Some(id) == home || home.is_none() => {
                out.push(EndpointTarget {
                    url: Some(url),
                    region: r.clone(),
                });
            }
            (Some((id, _)), _) => problems.push(format!(
                "{r:?} is in partition {id}, not in {} like region {region:?}: the [source] \
                 credentials are not valid there",
                home.unwrap_or("?")
            )),
            _ => problems.push(format!(
                "{r:?} is not a region name like \"us-east-2\"; list the URL in `endpoints` instead"
            )),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regional_urls_follow_the_partition() {
        assert_eq!(
            regional_url("us-east-2").as_deref(),
            Some("https://sts.us-east-2.amazonaws.com")
        );
        assert_eq!(
            regional_url("cn-north-1").as_deref(),
            Some("https://sts.cn-north-1.amazonaws.com.cn")
        );
        assert_eq!(
            regional_url("us-gov-west-1").as_deref(),
            Some("https://sts.us-gov-west-1.amazonaws.com")
        );
        assert_eq!(
            regional_url("us-iso-east-1").as_deref(),
            Some("https://sts.us-iso-east-1.c2s.ic.gov")
        );
        assert_eq!(
            regional_url("us-isob-east-1").as_deref(),
            Some("https://sts.us-isob-east-1.sc2s.sgov.gov")
        );
        assert_eq!(partition("us-gov-east-1").unwrap().0, "aws-us-gov");
        assert_eq!(partition("ap-southeast-7").unwrap().0, "aws");
        assert_eq!(regional_url("useast1"), None);
        assert_eq!(regional_url("us-east-x"), None);
        assert_eq!(regional_url("US-east-1"), None);
    }

    #[test]
    fn urls_name_their_signing_region() {
        let cases = [
            ("https://sts.eu-west-1.amazonaws.com", Some("eu-west-1")),
            (
                "https://sts-fips.us-east-1.amazonaws.com/",
                Some("us-east-1"),
            ),
            (
                "https://sts.cn-north-1.amazonaws.com.cn",
                Some("cn-north-1"),
            ),
            (
                "https://vpce-0abc-1234.sts.us-east-1.vpce.amazonaws.com",
                Some("us-east-1"),
            ),
            ("https://sts.us-west-2.api.aws", Some("us-west-2")),
            ("http://127.0.0.1:4566", None),
            ("https://sts.amazonaws.com", None),
        ];
        for (url, want) in cases {
            assert_eq!(region_in_url(url).as_deref(), want, "{url}");
        }
    }

    #[test]
    fn order_is_primary_then_failover_regions() {
        let order = endpoint_order(
            "us-east-1",
            None,
            &[],
            &["us-east-2".into(), "us-west-2".into()],
        )
        .unwrap();
        let labels: Vec<String> = order.iter().map(EndpointTarget::label).collect();
        assert_eq!(
            labels,
            [
                "https://sts.us-east-1.amazonaws.com",
                "https://sts.us-east-2.amazonaws.com",
                "https://sts.us-west-2.amazonaws.com"
            ]
        );
        assert_eq!(order[0].url, None, "the primary keeps the SDK's resolution");
        assert_eq!(order[2].region, "us-west-2");

        let with_override = endpoint_order(
            "us-east-1",
            Some("https://vpce-1.sts.us-east-1.vpce.amazonaws.com"),
            &[],
            &["us-east-2".into()],
        )
        .unwrap();
        assert_eq!(
            with_override[0].url.as_deref(),
            Some("https://vpce-1.sts.us-east-1.vpce.amazonaws.com")
        );

        let cn = endpoint_order("cn-northwest-1", None, &[], &["cn-north-1".into()]).unwrap();
        assert_eq!(
            cn[1].url.as_deref(),
            Some("https://sts.cn-north-1.amazonaws.com.cn")
        );
    }

    #[test]
    fn failover_across_partitions_is_refused_with_every_problem() {
        let err = endpoint_order(
            "us-east-1",
            None,
            &[],
            &[
                "cn-north-1".into(),
                "nowhere".into(),
                "us-gov-west-1".into(),
            ],
        )
        .unwrap_err();
        assert_eq!(err.len(), 3, "{err:?}");
        assert!(err[0].contains("aws-cn"), "{err:?}");
        assert!(err[1].contains("not a region name"), "{err:?}");
        assert!(err[2].contains("aws-us-gov"), "{err:?}");
    }

    #[test]
    fn explicit_endpoints_sign_for_their_own_region() {
        let order = endpoint_order(
            "us-east-1",
            None,
            &[
                "https://vpce-1.sts.us-east-1.vpce.amazonaws.com".into(),
                "https://sts.us-east-2.amazonaws.com".into(),
                "http://10.0.0.1:9000".into(),
            ],
            &[],
        )
        .unwrap();
        let regions: Vec<&str> = order.iter().map(|t| t.region.as_str()).collect();
        assert_eq!(regions, ["us-east-1", "us-east-2", "us-east-1"]);
    }
}
