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

// === The loop and the fetcher on a paused clock ===
//
// The wall clock follows tokio's (`clock::follow_tokio_time`), so credential lifetimes,
// refresh-ahead and back-off all move as simulated time advances, with nothing waited for.

use std::sync::Mutex;

use arc_swap::ArcSwap;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::cache::{CacheError, Fetch, SlotUses};
use crate::config::{Config, LoadContext};
use crate::creds::{Credentials, FetchError, Secret};
use crate::metrics::Metrics;

fn parse(toml: &str) -> Config {
    Config::parse(
        toml,
        "t.toml",
        &LoadContext {
            hostname: "h".into(),
        },
    )
    .unwrap()
}

/// A fake STS that notes when each fetch happened and issues credentials living `lifetime`.
struct Recorder {
    lifetime: Duration,
    fetched_at: Mutex<Vec<tokio::time::Instant>>,
}

impl Recorder {
    /// When each fetch happened, relative to `start`.
    fn fetched(&self, start: tokio::time::Instant) -> Vec<Duration> {
        let at = self.fetched_at.lock().unwrap();
        at.iter().map(|t| *t - start).collect()
    }
}

impl Fetch for Recorder {
    fn fetch<'a>(
        &'a self,
        _cache: &'a Arc<CredentialCache>,
        _slot: &'a Arc<RoleSlot>,
    ) -> BoxFuture<'a, Result<Credentials, FetchError>> {
        let mut at = self.fetched_at.lock().unwrap();
        at.push(clock::tokio_instant());
        let n = at.len();
        let creds = Credentials {
            access_key_id: format!("ASIA{n:016}"),
            secret_access_key: Secret::new(format!("secret-{n}")),
            session_token: Secret::new(format!("token-{n}")),
            expiration: clock::now() + self.lifetime,
            assumed_arn: None,
        };
        async move { Ok(creds) }.boxed()
    }
}

/// The snapshot a broker on `config` starts with: its STS client (never called by the
/// `Recorder`; a fetch of the failing broker fails before it) and rate limit, no roles yet.
async fn snapshot(config: Config) -> Arc<ArcSwap<Snapshot>> {
    let upstream = Upstream {
        sts: crate::source::build_sts(&config).await.unwrap(),
        limiter: crate::sts::rate::AdaptiveRate::new(10.0, 10.0, false),
    };
    Arc::new(ArcSwap::from_pointee(Snapshot::new(
        Arc::new(config),
        Arc::new(upstream),
    )))
}

/// Starts `role`'s refresh loop over `cache` (prefetched at once), as the broker does.
fn spawn_loop(
    cache: &Arc<CredentialCache>,
    role: Arc<crate::config::RoleConfig>,
    state: Arc<ArcSwap<Snapshot>>,
) -> (
    Arc<RoleSlot>,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let slot = RoleSlot::new(role, 1, None, SlotUses::default());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(role_loop(
        Arc::clone(cache),
        Arc::clone(&slot),
        state,
        cancel.clone(),
        Duration::ZERO,
    ));
    (slot, cancel, task)
}

#[tokio::test(start_paused = true)]
async fn credentials_are_refreshed_at_the_due_time_and_not_before() {
    let _clock = clock::follow_tokio_time();
    let mut config = parse(
        "[sts]\nregion = \"us-east-1\"\n[[role]]\nname = \"app\"\narn = \"arn:aws:iam::123456789012:role/app\"\ntokens = [\"tok-0123456789abcdef\"]\n",
    );
    // 200-second credentials, refreshed when 100 s remain (no jitter: an exact schedule).
    config.refresh = RefreshConfig {
        lead: Lead::Remaining(Duration::from_secs(100)),
        min_remaining: Duration::from_secs(30),
        jitter: Duration::ZERO,
        ..cfg(Lead::Fraction(0.5))
    };
    let role = Arc::clone(&config.roles[0]);
    let min_remaining = config.refresh.min_remaining;
    let sts = Arc::new(Recorder {
        lifetime: Duration::from_secs(200),
        fetched_at: Mutex::new(Vec::new()),
    });
    let cache = CredentialCache::new(Arc::clone(&sts) as Arc<dyn Fetch>, min_remaining, 100);
    let start = clock::tokio_instant();
    let (slot, cancel, task) = spawn_loop(&cache, role, snapshot(config).await);
    let secs = Duration::from_secs;
    let ms = Duration::from_millis;
    // Prefetched at once; nothing more until 100 s before expiry.
    tokio::time::sleep_until(start + secs(100) - ms(1)).await;
    assert_eq!(sts.fetched(start), [secs(0)]);
    let first = cache.peek(&slot.key).await.unwrap();
    tokio::time::sleep_until(start + secs(100) + ms(1)).await;
    assert_eq!(sts.fetched(start), [secs(0), secs(100)]);
    let second = cache.peek(&slot.key).await.unwrap();
    assert_ne!(second.access_key_id, first.access_key_id);
    assert_eq!(second.expiration, first.expiration + secs(100));
    // And so on, every 100 s, each time from the credentials just obtained.
    tokio::time::sleep_until(start + secs(350)).await;
    assert_eq!(
        sts.fetched(start),
        [secs(0), secs(100), secs(200), secs(300)]
    );
    cancel.cancel();
    task.await.unwrap();
}

/// A broker's cache and fetcher whose role `irsa` (a web identity role) can never be
/// fetched: its token file is gone, so every fetch fails in the fetcher's call step before it
/// reaches STS. `more_roles` is appended to the config.
struct FailingBroker {
    state: Arc<ArcSwap<Snapshot>>,
    cache: Arc<CredentialCache>,
    _dir: tempfile::TempDir,
}

impl FailingBroker {
    async fn start(more_roles: &str) -> FailingBroker {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "a-web-identity-token").unwrap();
        let config = parse(&format!(
            "[sts]\nregion = \"us-east-1\"\nendpoint = \"http://127.0.0.1:1\"\n\
             [refresh]\nbackoff_min = \"10s\"\nbackoff_max = \"40s\"\n\
             [[role]]\nname = \"irsa\"\nkind = \"web_identity\"\n\
             arn = \"arn:aws:iam::123456789012:role/irsa\"\nweb_identity_token_file = {token:?}\n\
             tokens = [\"tok-0123456789abcdef\"]\n{more_roles}"
        ));
        std::fs::remove_file(&token).unwrap();
        let min_remaining = config.refresh.min_remaining;
        let state = snapshot(config).await;
        let fetcher = Fetcher::new(Arc::clone(&state), Arc::new(Metrics::new()));
        FailingBroker {
            cache: CredentialCache::new(fetcher, min_remaining, 100),
            state,
            _dir: dir,
        }
    }

    fn role(&self, name: &str) -> Arc<crate::config::RoleConfig> {
        let state = self.state.load();
        let role = state.config.roles.iter().find(|r| r.name == name).unwrap();
        Arc::clone(role)
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_fetch_is_retried_after_the_backoff_and_not_earlier() {
    let _clock = clock::follow_tokio_time();
    let broker = FailingBroker::start("").await;
    let cache = &broker.cache;
    let start = clock::instant();
    let (slot, cancel, task) = spawn_loop(cache, broker.role("irsa"), Arc::clone(&broker.state));
    let ms = Duration::from_millis;
    let failures = || slot.status().consecutive_failures;
    let retry_at = || slot.status().retry_not_before.unwrap();

    // The prefetch fails at once and closes the gate for backoff_min.
    tokio::time::sleep(ms(1)).await;
    assert_eq!(failures(), 1);
    let first_retry = retry_at();
    assert_eq!(first_retry - start, Duration::from_secs(10));
    let error = slot.status().last_error.unwrap();
    assert!(error.message.contains("web identity token"), "{error}");

    // Not retried a millisecond early; retried when the gate opens.
    tokio::time::sleep_until((first_retry - ms(1)).into()).await;
    assert_eq!(failures(), 1);
    tokio::time::sleep_until((first_retry + ms(1)).into()).await;
    assert_eq!(failures(), 2);
    // The second failure backs off longer: between half and all of 20 s, never below 10 s.
    let second_retry = retry_at();
    let wait = second_retry - first_retry;
    assert!(
        (Duration::from_secs(10)..=Duration::from_secs(20)).contains(&wait),
        "{wait:?}"
    );

    // While the gate is closed, requests and forced refreshes get the last error and cause
    // no attempt.
    match cache.get(&slot, Duration::from_secs(1)).await {
        Err(CacheError::Fetch(e)) => assert_eq!(e, slot.status().last_error.unwrap()),
        other => panic!("expected the last error, got {other:?}"),
    }
    assert!(cache.force_refresh(&slot).await.is_err());
    assert_eq!(failures(), 2);

    tokio::time::sleep_until((second_retry - ms(1)).into()).await;
    assert_eq!(failures(), 2);
    tokio::time::sleep_until((second_retry + ms(1)).into()).await;
    assert_eq!(failures(), 3);
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn chained_roles_share_one_fetch_of_their_source_role() {
    let _clock = clock::follow_tokio_time();
    let chained: String = (0..8)
        .map(|i| {
            format!(
                "[[role]]\nname = \"spoke{i}\"\narn = \"arn:aws:iam::123456789012:role/spoke{i}\"\n\
                 source_role = \"irsa\"\nduration = \"1h\"\ntokens = [\"tok-spoke{i}-0123456789abcdef\"]\n"
            )
        })
        .collect();
    let broker = FailingBroker::start(&chained).await;
    let source = RoleSlot::new(
        broker.role("irsa"),
        1,
        None,
        SlotUses {
            imds: false,
            source: true,
        },
    );
    let spokes: Vec<_> = (0..8)
        .map(|i| {
            let role = broker.role(&format!("spoke{i}"));
            RoleSlot::new(role, 2 + i, Some(Arc::clone(&source)), SlotUses::default())
        })
        .collect();
    // Eight chained roles are asked for at once; each needs its source role's credentials
    // to sign with (the fetcher's signer step).
    let results = futures_util::future::join_all(spokes.iter().map(|s| broker.cache.load(s))).await;
    // The source role was fetched once for all of them …
    assert_eq!(source.status().consecutive_failures, 1);
    // … and each chained role failed with its error, named as the source role's.
    for (spoke, result) in spokes.iter().zip(results) {
        let e = result.unwrap_err();
        assert!(
            e.message.starts_with("source role \"irsa\": ")
                && e.message.contains("web identity token"),
            "{e}"
        );
        assert_eq!(spoke.status().consecutive_failures, 1);
    }
}
