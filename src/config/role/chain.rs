//! `source_role`: role chaining, resolved once when the config is validated.
//!
//! One walk along `source_role` serves both validation (a source that names no role, a
//! chain that comes back to itself) and the validated config's [`Chains`]: each role's
//! ancestors and the order that puts every source role before the roles chained from it.
//! The rest of the broker asks the config (`Config::ancestors`, `Config::chain`,
//! `Config::in_dependency_order`) instead of walking the chain with its own cycle guard.

use std::collections::HashMap;
use std::sync::Arc;

use super::{CHAINED_MAX_DURATION, RoleConfig, RoleKind, RoleKindTag};
use crate::config::problems::{Problems, Scope};
use crate::config::{RefreshConfig, SourceConfig};

/// Each role's place among the chains, as indices into `Config::roles`.
#[derive(Debug, Clone, Default)]
pub(in crate::config) struct Chains {
    /// Every role, each after the role it is chained from (config order otherwise).
    order: Vec<usize>,
    /// Per role: its source role, that role's source, … (nearest first).
    ancestors: Vec<Vec<usize>>,
}

impl Chains {
    /// Resolves the chains of validated roles (every source exists, no cycles).
    pub(in crate::config) fn resolve(roles: &[Arc<RoleConfig>]) -> Chains {
        let index = index_by_name(roles.iter().map(|r| r.name.as_str()));
        let source_of = |i: usize| roles[i].spec.source_role();
        let ancestors: Vec<Vec<usize>> = (0..roles.len())
            .map(|i| match walk(i, &source_of, &index) {
                Walk::Ends(ancestors) => ancestors,
                // Validation rejected these; an unvalidated list gets no chain.
                Walk::UnknownSource | Walk::Cycle(_) | Walk::IntoCycle => Vec::new(),
            })
            .collect();
        let mut order: Vec<usize> = (0..roles.len()).collect();
        // A role's source is one step shallower, so depth order places sources first; the
        // sort is stable, so roles of one depth keep their config order.
        order.sort_by_key(|&i| ancestors[i].len());
        Chains { order, ancestors }
    }

    /// Every role index, sources before the roles chained from them.
    pub(in crate::config) fn order(&self) -> &[usize] {
        &self.order
    }

    /// The ancestors of role `i`, nearest first.
    pub(in crate::config) fn ancestors(&self, i: usize) -> &[usize] {
        self.ancestors.get(i).map_or(&[], Vec::as_slice)
    }
}

/// Where following `source_role` from one role leads.
#[derive(Debug, PartialEq)]
enum Walk {
    /// To a role without a source: the ancestors, nearest first.
    Ends(Vec<usize>),
    /// To a source that names no role (reported for the role that names it).
    UnknownSource,
    /// Back to the start: the roles along the way, the start at both ends.
    Cycle(Vec<usize>),
    /// Into a cycle of other roles (reported for them).
    IntoCycle,
}

/// Follows `source_role` from role `start`. Finite whatever the links: it stops when a
/// role comes round again.
fn walk<'a>(
    start: usize,
    source_of: &dyn Fn(usize) -> Option<&'a str>,
    index: &HashMap<&'a str, usize>,
) -> Walk {
    let mut path = vec![start];
    let mut at = start;
    while let Some(name) = source_of(at) {
        let Some(&next) = index.get(name) else {
            return Walk::UnknownSource;
        };
        path.push(next);
        if next == start {
            return Walk::Cycle(path);
        }
        if path[..path.len() - 1].contains(&next) {
            return Walk::IntoCycle;
        }
        at = next;
    }
    path.remove(0);
    Walk::Ends(path)
}

/// Role indices by name (the first of a duplicated name, which is reported elsewhere).
fn index_by_name<'a>(names: impl Iterator<Item = &'a str>) -> HashMap<&'a str, usize> {
    let mut index = HashMap::new();
    for (i, name) in names.enumerate() {
        index.entry(name).or_insert(i);
    }
    index
}

/// Chaining, clamps and the refresh lead: what needs every role built first.
pub(super) fn check_across_roles(
    p: &mut Problems,
    roles: &mut [RoleConfig],
    refresh: Option<&RefreshConfig>,
    source: Option<&SourceConfig>,
) {
    let index = index_by_name(roles.iter().map(|r| r.name.as_str()));
    let kinds: Vec<RoleKindTag> = roles.iter().map(|r| r.spec.kind.tag()).collect();
    let source_of = |i: usize| roles[i].spec.source_role();
    // Per chained role: its source's kind (`None`: no such role) and, when its chain comes
    // back to it, the names along the way.
    let links: Vec<Option<(Option<RoleKindTag>, Option<String>)>> = (0..roles.len())
        .map(|i| {
            let base = source_of(i)?;
            let base_kind = index.get(base).map(|&j| kinds[j]);
            let cycle = match walk(i, &source_of, &index) {
                Walk::Cycle(path) => {
                    let names: Vec<&str> = path.iter().map(|&i| roles[i].name.as_str()).collect();
                    Some(names.join(" -> "))
                }
                _ => None,
            };
            Some((base_kind, cycle))
        })
        .collect();
    let broker_is_a_role = matches!(source, Some(SourceConfig::WebIdentity { .. }));
    for (r, link) in roles.iter_mut().zip(links) {
        let scope = Scope::Role(r.name.clone());
        let mut chained = false;
        if let Some((base_kind, cycle)) = link {
            let base = r.spec.source_role().unwrap_or_default();
            match base_kind {
                None => p.error(
                    scope.clone(),
                    Some("source_role"),
                    format!("{base:?} is not the name of a [[role]]"),
                ),
                Some(RoleKindTag::FederationToken) => p.error(
                    scope.clone(),
                    Some("source_role"),
                    format!("{base:?} is a federation_token role; federated users cannot call AssumeRole"),
                ),
                Some(k) => chained = k.yields_role_credentials(),
            }
            if let Some(cycle) = cycle {
                p.error(
                    scope.clone(),
                    Some("source_role"),
                    format!("chains back to itself: {cycle}"),
                );
            }
        }
        if broker_is_a_role && r.spec.kind.signed() {
            match r.spec.kind {
                RoleKind::AssumeRole { .. } => chained = true,
                _ => p.error(
                    scope.clone(),
                    Some("kind"),
                    format!(
                        "{} needs IAM user credentials, but [source] kind = \"web_identity\" gives the broker role credentials",
                        r.spec.kind.as_str()
                    ),
                ),
            }
        }
        if chained && r.spec.duration > CHAINED_MAX_DURATION {
            p.warn(
                &scope,
                "duration",
                format_args!(
                    "{} clamped to 1h: STS allows at most 1h for a role assumed with role credentials (role chaining)",
                    humantime::format_duration(r.spec.duration)
                ),
            );
            r.spec.duration = CHAINED_MAX_DURATION;
        }
        if let Some(refresh) = refresh {
            let lead = refresh.lead.for_lifetime(r.spec.duration);
            if lead >= r.spec.duration {
                p.error(
                    scope.clone(),
                    Some("duration"),
                    format!(
                        "{} must be longer than [refresh].lead ({}); use a percentage lead such as \"66%\" for short sessions",
                        humantime::format_duration(r.spec.duration),
                        refresh.lead
                    ),
                );
            } else if refresh.min_remaining >= lead {
                p.error(
                    scope,
                    Some("duration"),
                    format!(
                        "with lead {} this role would be refreshed only when {} remain, below [refresh].min_remaining ({})",
                        refresh.lead,
                        humantime::format_duration(lead),
                        humantime::format_duration(refresh.min_remaining)
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk_links(links: &[Option<&'static str>], names: &[&'static str], start: usize) -> Walk {
        let index = index_by_name(names.iter().copied());
        let source_of = |i: usize| links[i];
        walk(start, &source_of, &index)
    }

    #[test]
    fn walks_end_loop_or_lose_their_way() {
        let names = ["a", "b", "c", "d", "e"];
        // a <- b <- c; d -> e -> d; nothing named "x".
        let links = [None, Some("a"), Some("b"), Some("e"), Some("d")];
        assert_eq!(walk_links(&links, &names, 0), Walk::Ends(vec![]));
        assert_eq!(walk_links(&links, &names, 2), Walk::Ends(vec![1, 0]));
        assert_eq!(walk_links(&links, &names, 3), Walk::Cycle(vec![3, 4, 3]));
        let into = [None, Some("c"), Some("b"), Some("b"), None];
        assert_eq!(walk_links(&into, &names, 3), Walk::IntoCycle);
        let unknown = [Some("x"), Some("a"), None, None, None];
        assert_eq!(walk_links(&unknown, &names, 1), Walk::UnknownSource);
    }
}
