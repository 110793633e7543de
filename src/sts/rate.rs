//! The broker-wide STS call rate (DESIGN §8): calls wait in line and leave one `1 / rate`
//! apart; with `adaptive_rate`, Throttling halves the rate and successes win it back slowly
//! (AIMD), so thousands of brokers sharing one account's quota converge on it instead of
//! retrying in lockstep.
//!
//! No slot is handed out in advance: the call at the head of the line (a FIFO `Mutex`) waits
//! for *its* slot and re-reads the rate when it wakes, so when the rate drops, the calls
//! already queued slow down too. (A GCRA crate such as `governor` fixes its quota at
//! construction; an AIMD rate changes on every Throttling, hence this small limiter.)

use std::sync::Mutex;
use std::time::Duration;

use crate::clock;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Multiplicative decrease on Throttling.
pub const DECREASE: f64 = 0.5;
/// Additive recovery: from the floor back to `max` in this much time of successful calls.
pub const RECOVERY: Duration = Duration::from_secs(60);

/// Spaces calls at the current rate; adapts the rate when built adaptive.
#[derive(Debug)]
pub struct AdaptiveRate {
    max: f64,
    min: f64,
    adaptive: bool,
    state: Mutex<State>,
    /// The line: the holder is the next call; the value is when the previous one left.
    line: tokio::sync::Mutex<Option<Instant>>,
    changed: Notify,
}

#[derive(Debug)]
struct State {
    rate: f64,
    /// When `rate` was last raised or lowered (recovery accrues from here).
    updated: Instant,
    /// Calls started before the last decrease saw the old rate: their Throttling does not
    /// lower it again (one halving per round trip, not one per call in flight).
    last_decrease: Option<Instant>,
}

impl AdaptiveRate {
    /// A limiter at `max` calls/s; adaptive ones never go below `min`.
    pub fn new(max: f64, min: f64, adaptive: bool) -> AdaptiveRate {
        AdaptiveRate::starting_at(max, min, adaptive, max)
    }

    /// Like [`AdaptiveRate::new`] but starting at `rate` (a reload keeps a lowered rate).
    pub fn starting_at(max: f64, min: f64, adaptive: bool, rate: f64) -> AdaptiveRate {
        let min = min.min(max);
        AdaptiveRate {
            max,
            min,
            adaptive,
            state: Mutex::new(State {
                // A fixed rate is always the ceiling.
                rate: if adaptive { rate.clamp(min, max) } else { max },
                updated: clock::tokio_instant(),
                last_decrease: None,
            }),
            line: tokio::sync::Mutex::new(None),
            changed: Notify::new(),
        }
    }

    /// The current rate in calls per second.
    pub fn current(&self) -> f64 {
        self.state.lock().expect("rate lock").rate
    }

    /// The ceiling (`max_calls_per_second`).
    pub fn max(&self) -> f64 {
        self.max
    }

    /// Waits in line for this call's turn at the current rate.
    pub async fn acquire(&self) {
        let mut last = self.line.lock().await;
        loop {
            let now = clock::tokio_instant();
            let Some(prev) = *last else { break };
            let slot = prev + Duration::from_secs_f64(1.0 / self.current());
            if slot <= now {
                break;
            }
            // Re-read the rate on wake-up: a decrease meanwhile pushes this call back, an
            // increase (notified) lets it go sooner.
            tokio::select! {
                () = tokio::time::sleep_until(slot) => {}
                () = self.changed.notified() => {}
            }
        }
        *last = Some(clock::tokio_instant());
    }

    /// A call that started at `started` was throttled: halve the rate (once per round trip).
    /// Returns the new rate when it changed.
    pub fn throttled(&self, started: Instant) -> Option<f64> {
        if !self.adaptive {
            return None;
        }
        let mut s = self.state.lock().expect("rate lock");
        if s.last_decrease.is_some_and(|d| started < d) {
            return None;
        }
        let now = clock::tokio_instant();
        let new = (s.rate * DECREASE).max(self.min);
        s.last_decrease = Some(now);
        s.updated = now;
        if (new - s.rate).abs() < f64::EPSILON {
            return None;
        }
        s.rate = new;
        Some(new)
    }

    /// A call succeeded: recover additively, `(max - min) / RECOVERY` per second since the
    /// last change. Returns the new rate when it changed.
    pub fn succeeded(&self) -> Option<f64> {
        if !self.adaptive {
            return None;
        }
        let mut s = self.state.lock().expect("rate lock");
        if s.rate >= self.max {
            return None;
        }
        let now = clock::tokio_instant();
        let per_second = (self.max - self.min) / RECOVERY.as_secs_f64();
        let gained = per_second * now.duration_since(s.updated).as_secs_f64();
        s.rate = (s.rate + gained).min(self.max);
        s.updated = now;
        let rate = s.rate;
        drop(s);
        self.changed.notify_waiters();
        Some(rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn calls_are_spaced_at_the_rate() {
        let r = AdaptiveRate::new(4.0, 0.5, false);
        let t0 = clock::tokio_instant();
        for _ in 0..5 {
            r.acquire().await;
        }
        // First at once, then 4 more at 250 ms each.
        assert_eq!(t0.elapsed(), Duration::from_secs(1));
        assert_eq!(r.throttled(t0), None, "not adaptive: rate is fixed");
        assert!((r.current() - 4.0).abs() < 1e-9);
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_halves_once_per_round_trip_down_to_the_floor() {
        let r = AdaptiveRate::new(8.0, 1.0, true);
        let started = clock::tokio_instant();
        tokio::time::advance(Duration::from_millis(10)).await;
        assert_eq!(r.throttled(started), Some(4.0));
        // Another call of the same round (started before the decrease): no second halving.
        assert_eq!(r.throttled(started), None);
        let later = clock::tokio_instant();
        tokio::time::advance(Duration::from_millis(10)).await;
        assert_eq!(r.throttled(later), Some(2.0));
        for _ in 0..5 {
            let s = clock::tokio_instant();
            tokio::time::advance(Duration::from_millis(1)).await;
            r.throttled(s);
        }
        assert!((r.current() - 1.0).abs() < 1e-9, "floor: {}", r.current());
    }

    #[tokio::test(start_paused = true)]
    async fn successes_recover_additively_up_to_max() {
        let r = AdaptiveRate::new(7.0, 1.0, true);
        for _ in 0..3 {
            let s = clock::tokio_instant();
            tokio::time::advance(Duration::from_millis(1)).await;
            r.throttled(s);
        }
        assert!((r.current() - 1.0).abs() < 1e-9);
        // (7 - 1) / 60 s = 0.1 per second.
        tokio::time::advance(Duration::from_secs(10)).await;
        let rate = r.succeeded().unwrap();
        assert!((rate - 2.0).abs() < 1e-6, "{rate}");
        tokio::time::advance(Duration::from_secs(600)).await;
        assert!((r.succeeded().unwrap() - 7.0).abs() < 1e-9);
        assert_eq!(r.succeeded(), None, "already at max");
    }

    #[tokio::test(start_paused = true)]
    async fn queued_calls_slow_down_when_the_rate_drops() {
        let r = std::sync::Arc::new(AdaptiveRate::new(10.0, 0.5, true));
        r.acquire().await;
        let t0 = clock::tokio_instant();
        // Nine calls queue up at 10/s (the old limiter would have fixed their slots now).
        let mut handles = Vec::new();
        for _ in 0..9 {
            let r = std::sync::Arc::clone(&r);
            handles.push(tokio::spawn(async move {
                r.acquire().await;
                clock::tokio_instant()
            }));
        }
        tokio::time::advance(Duration::from_millis(1)).await;
        // Throttled: 10 → 5 → 2.5 → 1.25 per second.
        for _ in 0..3 {
            let s = clock::tokio_instant();
            tokio::time::advance(Duration::from_millis(1)).await;
            r.throttled(s);
        }
        let mut last = t0;
        for h in handles {
            last = last.max(h.await.unwrap());
        }
        // At 1.25/s, nine more calls take about 7.2 s, not 0.9 s.
        assert!(
            last.duration_since(t0) > Duration::from_secs(6),
            "{:?}",
            last.duration_since(t0)
        );
    }
}
