//! File descriptors: raise the soft `RLIMIT_NOFILE` to the hard limit at start-up and size
//! each listener's connection budget from it, so that a flood on the ECS or IMDS listener
//! runs into its own budget (the kernel backlog) before the process runs out of descriptors
//! — and the admin listener, STS calls and file reads keep theirs.
//!
//! The arithmetic, with `L` the soft limit after raising it:
//! - [`RESERVED`] descriptors stay for the process itself: the runtime, STS connections, the
//!   audit trail, config and token reads, signal pipes, the listening sockets;
//! - each admin listener gets `min(max_connections, max(8, (L - RESERVED) / 8 / admin listeners))`;
//! - each ECS and IMDS listener gets an equal share of the rest, or its `max_connections` if
//!   that is smaller.
//!
//! With the defaults and `L = 1024`, one ECS listener and one admin listener: admin 120, ECS
//! 840. With `L = 1,048,576` (systemd's default hard limit) every configured value applies.

/// Descriptors kept back for everything but client connections.
pub const RESERVED: usize = 64;
/// The admin listeners together get at most this fraction of what is left.
const ADMIN_SHARE: usize = 8;
/// Admin connections each admin listener keeps at least (probes and a scrape).
const ADMIN_MIN: usize = 8;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit now in force
/// (`None` when it cannot be read: budgets are then left as configured).
pub fn raise_nofile() -> Option<usize> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    let (Some(cur), max) = (lim.current, lim.maximum) else {
        return None; // unlimited soft limit
    };
    if let Some(max) = max
        && max > cur
    {
        lim.current = Some(max);
        match setrlimit(Resource::Nofile, lim) {
            Ok(()) => {
                tracing::debug!(
                    from = cur,
                    to = max,
                    "raised the soft file descriptor limit"
                );
                return usize::try_from(max).ok();
            }
            Err(e) => {
                tracing::warn!(error = %e, soft = cur, hard = max, "cannot raise the soft file descriptor limit");
            }
        }
    }
    usize::try_from(cur).ok()
}

/// Connection budgets per listener kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budgets {
    /// Each admin listener's connections.
    pub admin: usize,
    /// Each ECS and IMDS listener's connections.
    pub data: usize,
}

/// The budgets for `limit` descriptors, `admin_listeners` admin listeners and
/// `data_listeners` ECS + IMDS listeners, before the configured `max_connections` caps.
pub fn budgets(limit: usize, admin_listeners: usize, data_listeners: usize) -> Budgets {
    let avail = limit.saturating_sub(RESERVED);
    let admin = (avail / ADMIN_SHARE / admin_listeners.max(1)).max(ADMIN_MIN);
    let data_avail = avail.saturating_sub(admin * admin_listeners);
    Budgets {
        admin,
        data: (data_avail / data_listeners.max(1)).max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_follow_the_readme_arithmetic() {
        assert_eq!(
            budgets(1024, 1, 1),
            Budgets {
                admin: 120,
                data: 840
            }
        );
        // Two data listeners (ECS + IMDS) split the rest.
        assert_eq!(
            budgets(1024, 1, 2),
            Budgets {
                admin: 120,
                data: 420
            }
        );
        // A tiny limit still leaves admin its minimum and every listener one connection.
        assert_eq!(budgets(96, 1, 1), Budgets { admin: 8, data: 24 });
        assert_eq!(budgets(10, 1, 3), Budgets { admin: 8, data: 1 });
        let big = budgets(1_048_576, 1, 2);
        assert!(big.admin >= 4096 && big.data >= 4096, "{big:?}");
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        use rustix::process::{Resource, getrlimit};
        let after = raise_nofile();
        let lim = getrlimit(Resource::Nofile);
        assert_eq!(lim.current, lim.maximum);
        assert_eq!(after.map(|a| a as u64), lim.current);
    }
}
