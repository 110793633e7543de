use super::*;
use crate::clock;
use crate::config::Lead;

fn cfg(lead: Lead) -> RefreshConfig {
    RefreshConfig {
        lead,
        min_remaining: Duration::from_secs(15 * 60),
        jitter: Duration::from_secs(30),
        backoff_min: Duration::from_secs(1),
        backoff_max: Duration::from_secs(120),
        startup_spread: Duration::ZERO,
        revoke_before: None,
    }
}

const T0: SystemTime = SystemTime::UNIX_EPOCH;

fn at(secs: u64) -> SystemTime {
    T0 + Duration::from_secs(secs)
}

#[test]
fn refresh_due_table() {
    let hour = 3600;
    // (docs, lead, issued, expiration, u, want)
    let cases = [
        (
            "40m lead, no jitter: refresh after 20m",
            Lead::Remaining(Duration::from_secs(2400)),
            0,
            hour,
            0.0,
            1200,
        ),
        (
            "40m lead, full jitter: 30s earlier",
            Lead::Remaining(Duration::from_secs(2400)),
            0,
            hour,
            1.0,
            1170,
        ),
        (
            "66% lead on 1h: refresh after 34% (1224s), jitter 15s",
            Lead::Fraction(0.66),
            0,
            hour,
            0.5,
            1224 - 15,
        ),
        (
            "STS granted 15m but lead is 40m: half the lifetime (then capped by min_remaining = issued)",
            Lead::Remaining(Duration::from_secs(2400)),
            0,
            900,
            0.0,
            0,
        ),
        (
            "STS granted 30m, lead 40m: half is 15m, capped at expiry - 15m = 15m",
            Lead::Remaining(Duration::from_secs(2400)),
            0,
            1800,
            0.0,
            900,
        ),
        (
            "issued later: relative to issue",
            Lead::Remaining(Duration::from_secs(2400)),
            100,
            100 + hour,
            0.0,
            100 + 1200,
        ),
    ];
    for (docs, lead, issued, exp, u, want) in cases {
        let got = refresh_due(at(issued), at(exp), &cfg(lead), u);
        assert_eq!(got, at(want), "{docs}");
    }
}

#[test]
fn refresh_is_never_after_serving_stops() {
    let mut c = cfg(Lead::Remaining(Duration::from_secs(60)));
    c.min_remaining = Duration::from_secs(600);
    // Lead 1m would refresh at 59m, but serving stops at 50m: refresh by then.
    assert_eq!(refresh_due(at(0), at(3600), &c, 0.0), at(3000));
}

#[test]
fn backoff_grows_jitters_and_caps() {
    let c = cfg(Lead::Fraction(0.5));
    // u = 1: the full step.
    let steps: Vec<u64> = (1..=10)
        .map(|n| backoff(n, ErrorClass::Transient, &c, 1.0).as_secs())
        .collect();
    assert_eq!(steps, [1, 2, 4, 8, 16, 32, 64, 120, 120, 120]);
    // u = 0: half the step, but never below backoff_min.
    assert_eq!(
        backoff(1, ErrorClass::Transient, &c, 0.0),
        Duration::from_secs(1)
    );
    assert_eq!(
        backoff(4, ErrorClass::Transient, &c, 0.0),
        Duration::from_secs(4)
    );
    // Throttling backs off one step further.
    assert_eq!(
        backoff(3, ErrorClass::Throttled, &c, 1.0),
        Duration::from_secs(8)
    );
    // Retrying cannot fix these: straight to the cap.
    assert_eq!(backoff(1, ErrorClass::AccessDenied, &c, 0.0), c.backoff_max);
    assert_eq!(
        backoff(1, ErrorClass::InvalidConfig, &c, 0.3),
        c.backoff_max
    );
    // Huge failure counts do not overflow.
    assert_eq!(
        backoff(u32::MAX, ErrorClass::Throttled, &c, 1.0),
        c.backoff_max
    );
}

#[tokio::test(start_paused = true)]
async fn rate_limiter_spreads_a_burst() {
    let limiter = Arc::new(crate::sts::rate::AdaptiveRate::new(10.0, 10.0, false));
    let start = clock::tokio_instant();
    let mut handles = Vec::new();
    for _ in 0..20 {
        let l = Arc::clone(&limiter);
        handles.push(tokio::spawn(async move {
            l.acquire().await;
            clock::tokio_instant()
        }));
    }
    let mut times = Vec::new();
    for h in handles {
        times.push(h.await.unwrap().duration_since(start));
    }
    times.sort();
    // 20 calls at 10/s: the last one waits 1.9 s; none two closer than 100 ms.
    assert_eq!(times[0], Duration::ZERO);
    assert_eq!(times[19], Duration::from_millis(1900));
    for w in times.windows(2) {
        assert!(w[1] - w[0] >= Duration::from_millis(100), "{times:?}");
    }
}
