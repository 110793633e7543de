//! STS endpoint health and failover (DESIGN §8).
//!
//! Every logical STS call has one budget, `[sts].timeout`. It goes to the first healthy
//! endpoint; a connect error, a timeout, a 5xx or an unreadable answer (error class
//! `Transient`), or `RegionDisabledException`, moves the same call to the next one. Each attempt gets an equal share of
//! what is left of the budget, so the last endpoint still has time to answer. The SDK's
//! own retries are off (the broker owns retries and back-off), so an attempt is exactly one
//! HTTP request.
//!
//! An endpoint that failed `unhealthy_after` calls in a row is skipped for `cooldown`; then
//! one call at a time probes it (in its configured place, so a recovered primary is used
//! again at once). When every endpoint is resting, all are tried anyway: a call never fails
//! without reaching STS.
//!
//! With `hedge_after`, a cold call (nothing cached: a client is waiting) that has no answer
//! by then is also sent to the next endpoint; the first answer wins and the other request is
//! dropped (cancelled).

use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;

use crate::clock;
use crate::creds::{ErrorClass, FetchError};

/// One endpoint's health, as consecutive endpoint failures and a rest period.
#[derive(Debug, Default, Clone)]
struct Health {
    consecutive_failures: u32,
    /// Skipped until then.
    resting_until: Option<Instant>,
    /// A probe after the rest is in flight since then (others skip it meanwhile).
    probe_since: Option<Instant>,
}

/// The endpoints of one STS client, in configured order, with their health.
#[derive(Debug)]
pub struct EndpointSet<E> {
    endpoints: Vec<E>,
    health: Vec<Mutex<Health>>,
    unhealthy_after: u32,
    cooldown: Duration,
    /// A probe claim older than this is stale (the call it belonged to is over).
    claim_ttl: Duration,
}

/// What an attempt reports back: whether the endpoint answered (any STS answer, even an
/// error) or failed as an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// STS answered (success or an STS error): the endpoint works.
    Answered,
    /// No usable answer: counts towards resting the endpoint.
    Failed,
}

/// Whether an error is the endpoint's fault (another endpoint may do better): no answer, a
/// 5xx, an unreadable answer, or `RegionDisabledException` (STS deactivated in that region
/// for the account: the same call works at an endpoint where it is active).
pub fn is_endpoint_failure(e: &FetchError) -> bool {
    e.class == ErrorClass::Transient || e.code.as_deref() == Some("RegionDisabledException")
}

impl<E> EndpointSet<E> {
    /// `endpoints` in the order calls try them, all healthy; `claim_ttl` bounds how long a
    /// probe of a resting endpoint holds its claim.
    pub fn new(
        endpoints: Vec<E>,
        unhealthy_after: u32,
        cooldown: Duration,
        claim_ttl: Duration,
    ) -> Self {
        let health = endpoints
            .iter()
            .map(|_| Mutex::new(Health::default()))
            .collect();
        EndpointSet {
            endpoints,
            health,
            unhealthy_after: unhealthy_after.max(1),
            cooldown,
            claim_ttl,
        }
    }

    /// The endpoints, in configured order.
    pub fn endpoints(&self) -> &[E] {
        &self.endpoints
    }

    /// How many endpoints there are.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// Whether endpoint `i` is in use (not resting after repeated failures).
    pub fn healthy(&self, i: usize) -> bool {
        let h = self.health[i].lock().expect("health lock");
        h.consecutive_failures < self.unhealthy_after
    }

    /// The order in which one call tries the endpoints: healthy ones and due probes in
    /// configured order; resting ones left out — unless every endpoint rests, then all.
    pub fn plan(&self, now: Instant) -> Vec<usize> {
        let mut order = Vec::with_capacity(self.endpoints.len());
        for (i, h) in self.health.iter().enumerate() {
            let mut h = h.lock().expect("health lock");
            if h.consecutive_failures < self.unhealthy_after {
                order.push(i);
                continue;
            }
            let rested = h.resting_until.is_none_or(|t| now >= t);
            let probing = h
                .probe_since
                .is_some_and(|t| now.duration_since(t) < self.claim_ttl);
            if rested && !probing {
                h.probe_since = Some(now);
                order.push(i);
            }
        }
        if order.is_empty() {
            order.extend(0..self.endpoints.len());
        }
        order
    }

    /// Records an attempt's verdict; returns `Some(healthy)` when endpoint `i` changed state.
    pub fn record(&self, i: usize, verdict: Verdict, now: Instant) -> Option<bool> {
        let mut h = self.health[i].lock().expect("health lock");
        let was_healthy = h.consecutive_failures < self.unhealthy_after;
        h.probe_since = None;
        match verdict {
            Verdict::Answered => {
                h.consecutive_failures = 0;
                h.resting_until = None;
            }
            Verdict::Failed => {
                h.consecutive_failures = h.consecutive_failures.saturating_add(1);
                if h.consecutive_failures >= self.unhealthy_after {
                    h.resting_until = Some(now + self.cooldown);
                }
            }
        }
        let healthy = h.consecutive_failures < self.unhealthy_after;
        (healthy != was_healthy).then_some(healthy)
    }

    /// Runs one logical call: `attempt(i, budget)` on the planned endpoints in turn within
    /// `budget` overall, hedging to the next endpoint after `hedge` when given. `attempt`
    /// bounds itself by the budget it is handed and reports its verdict through
    /// [`EndpointSet::record`] (so health and metrics stay in one place).
    ///
    /// # Errors
    /// The last attempt's error: a non-endpoint error (Throttling, AccessDenied, …) at once,
    /// an endpoint failure when every planned endpoint failed.
    pub async fn run<'a, T: Send + 'a>(
        &'a self,
        budget: Duration,
        hedge: Option<Duration>,
        attempt: &'a (dyn Fn(usize, Duration) -> BoxFuture<'a, Result<T, FetchError>> + Sync),
    ) -> Result<T, FetchError> {
        let started = clock::tokio_instant();
        let deadline = started + budget;
        let plan = self.plan(started);
        let mut next = 0;
        let mut inflight = FuturesUnordered::new();
        let mut last_err: Option<FetchError> = None;
        let mut launched_at = started;
        let mut hedged = false;
        // Launches the next planned endpoint with an equal share of the remaining budget
        // (`share = false`: all of it, for a hedge racing the first attempt).
        let launch = |next: &mut usize, share: bool| {
            let i = plan[*next];
            *next += 1;
            let left = deadline.saturating_duration_since(clock::tokio_instant());
            let untried = u32::try_from(plan.len() - *next + 1).unwrap_or(1);
            let per = if share { left / untried } else { left };
            attempt(i, per)
        };
        loop {
            if inflight.is_empty() {
                if next >= plan.len() || clock::tokio_instant() >= deadline {
                    return Err(last_err.unwrap_or_else(|| {
                        FetchError::new(
                            ErrorClass::Transient,
                            None,
                            "no STS endpoint answered within [sts].timeout",
                        )
                    }));
                }
                launched_at = clock::tokio_instant();
                inflight.push(launch(&mut next, true));
            }
            // One hedge per call, `hedge` after the attempt it races was sent.
            let can_hedge = hedge.is_some() && !hedged && inflight.len() == 1 && next < plan.len();
            let hedge_at = launched_at + hedge.unwrap_or_default();
            tokio::select! {
                Some(result) = inflight.next() => match result {
                    Ok(v) => return Ok(v),
                    Err(e) if is_endpoint_failure(&e) => last_err = Some(e),
                    Err(e) => return Err(e),
                },
                () = tokio::time::sleep_until(hedge_at), if can_hedge => {
                    hedged = true;
                    inflight.push(launch(&mut next, false));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn set(n: usize) -> EndpointSet<&'static str> {
        let names = ["a", "b", "c"];
        EndpointSet::new(
            names[..n].to_vec(),
            2,
            Duration::from_secs(30),
            Duration::from_secs(5),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn failing_endpoint_rests_then_is_probed_once() {
        let s = set(2);
        let t = clock::tokio_instant();
        assert_eq!(s.plan(t), [0, 1]);
        assert_eq!(
            s.record(0, Verdict::Failed, t),
            None,
            "one failure: still used"
        );
        assert_eq!(s.plan(t), [0, 1]);
        assert_eq!(s.record(0, Verdict::Failed, t), Some(false));
        assert!(!s.healthy(0));
        assert_eq!(s.plan(t + Duration::from_secs(29)), [1], "resting");
        let probe = t + Duration::from_secs(30);
        assert_eq!(s.plan(probe), [0, 1], "probed after the cool-down");
        assert_eq!(s.plan(probe), [1], "one probe at a time");
        // A failed probe rests it again at once.
        assert_eq!(s.record(0, Verdict::Failed, probe), None);
        assert_eq!(s.plan(probe + Duration::from_secs(10)), [1]);
        let probe2 = probe + Duration::from_secs(30);
        assert_eq!(s.plan(probe2), [0, 1]);
        assert_eq!(s.record(0, Verdict::Answered, probe2), Some(true));
        assert_eq!(s.plan(probe2), [0, 1]);
        // A stale probe claim (its call ended without a verdict) expires.
        s.record(1, Verdict::Failed, probe2);
        s.record(1, Verdict::Failed, probe2);
        let p3 = probe2 + Duration::from_secs(31);
        assert_eq!(s.plan(p3), [0, 1]);
        assert_eq!(s.plan(p3 + Duration::from_secs(6)), [0, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn all_resting_means_all_tried() {
        let s = set(2);
        let t = clock::tokio_instant();
        for i in 0..2 {
            s.record(i, Verdict::Failed, t);
            s.record(i, Verdict::Failed, t);
        }
        assert_eq!(s.plan(t), [0, 1]);
    }

    fn transient() -> FetchError {
        FetchError::new(ErrorClass::Transient, None, "boom")
    }

    #[tokio::test(start_paused = true)]
    async fn failover_splits_the_budget_and_stops_on_non_endpoint_errors() {
        let s = set(3);
        let budgets = Arc::new(Mutex::new(Vec::new()));
        let b2 = Arc::clone(&budgets);
        let attempt =
            move |i: usize, budget: Duration| -> BoxFuture<'_, Result<usize, FetchError>> {
                b2.lock().unwrap().push((i, budget));
                Box::pin(async move {
                    if i < 2 {
                        // Black hole: uses the whole share, then times out.
                        tokio::time::sleep(budget).await;
                        Err(transient())
                    } else {
                        Ok(i)
                    }
                })
            };
        let t0 = clock::tokio_instant();
        let got = s.run(Duration::from_secs(6), None, &attempt).await.unwrap();
        assert_eq!(got, 2);
        assert!(t0.elapsed() <= Duration::from_secs(6));
        let b = budgets.lock().unwrap().clone();
        assert_eq!(
            b,
            [
                (0, Duration::from_secs(2)),
                (1, Duration::from_secs(2)),
                (2, Duration::from_secs(2))
            ]
        );

        let throttled = |_: usize, _: Duration| -> BoxFuture<'_, Result<usize, FetchError>> {
            Box::pin(async { Err(FetchError::new(ErrorClass::Throttled, None, "slow down")) })
        };
        let e = s
            .run(Duration::from_secs(6), None, &throttled)
            .await
            .unwrap_err();
        assert_eq!(
            e.class,
            ErrorClass::Throttled,
            "Throttling is not failed over"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn hedge_races_the_next_endpoint_and_cancels_the_loser() {
        let s = set(2);
        let dropped = Arc::new(AtomicUsize::new(0));
        struct OnDrop(Arc<AtomicUsize>);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let d = Arc::clone(&dropped);
        let attempt =
            move |i: usize, _budget: Duration| -> BoxFuture<'_, Result<usize, FetchError>> {
                let guard = OnDrop(Arc::clone(&d));
                Box::pin(async move {
                    let _guard = guard;
                    let took = if i == 0 { 3000 } else { 200 };
                    tokio::time::sleep(Duration::from_millis(took)).await;
                    Ok(i)
                })
            };
        let t0 = clock::tokio_instant();
        let got = s
            .run(
                Duration::from_secs(5),
                Some(Duration::from_secs(1)),
                &attempt,
            )
            .await
            .unwrap();
        assert_eq!(got, 1, "the hedge answered first");
        assert_eq!(t0.elapsed(), Duration::from_millis(1200));
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            2,
            "both attempts dropped, the loser cancelled"
        );
    }
}
