//! The cache's single-flight, expiry and forced refresh, against a fake fetcher. Every test
//! runs on a paused clock that the wall clock follows: fetch latencies and credential
//! lifetimes are simulated, not waited for.

use std::sync::atomic::AtomicUsize;

use super::*;
use crate::clock;
use crate::config::{Config, LoadContext};
use crate::creds::Secret;

fn role() -> Arc<RoleConfig> {
    let c = Config::parse(
        "[sts]\nregion = \"us-east-1\"\n[[role]]\nname = \"app\"\narn = \"arn:aws:iam::123456789012:role/app\"\ntokens = [\"tok-0123456789abcdef\"]\n",
        "t.toml",
        &LoadContext { hostname: "h".into() },
    )
    .unwrap();
    Arc::clone(&c.roles[0])
}

fn creds(n: usize, lifetime: Duration) -> Credentials {
    Credentials {
        access_key_id: key_id(n),
        secret_access_key: Secret::new(format!("secret-{n}")),
        session_token: Secret::new(format!("token-{n}")),
        expiration: clock::now() + lifetime,
        assumed_arn: None,
    }
}

/// The access key id of the `n`-th fetch's credentials.
fn key_id(n: usize) -> String {
    format!("ASIA{n:016}")
}

/// A fake STS behind the cache: counts calls, takes `delay`, then issues credentials living
/// `lifetime` — or fails with the error set by [`FakeFetch::fail_with`].
struct FakeFetch {
    calls: AtomicUsize,
    delay: Duration,
    lifetime: Duration,
    failure: std::sync::Mutex<Option<FetchError>>,
}

impl FakeFetch {
    fn new(delay: Duration, lifetime: Duration) -> Arc<FakeFetch> {
        Arc::new(FakeFetch {
            calls: AtomicUsize::new(0),
            delay,
            lifetime,
            failure: std::sync::Mutex::new(None),
        })
    }

    /// Fetches from now on fail with `error` (`None`: succeed again).
    fn fail_with(&self, error: Option<FetchError>) {
        *self.failure.lock().unwrap() = error;
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Fetch for FakeFetch {
    fn fetch<'a>(
        &'a self,
        _cache: &'a Arc<CredentialCache>,
        _slot: &'a Arc<RoleSlot>,
    ) -> BoxFuture<'a, Result<Credentials, FetchError>> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let failure = self.failure.lock().unwrap().clone();
        async move {
            tokio::time::sleep(self.delay).await;
            match failure {
                Some(e) => Err(e),
                None => Ok(creds(n, self.lifetime)),
            }
        }
        .boxed()
    }
}

fn sts_failure() -> FetchError {
    FetchError::new(
        ErrorClass::Transient,
        Some("InternalFailure".into()),
        "STS failed",
    )
}

fn cache_with(fetch: &Arc<FakeFetch>, min_remaining: Duration) -> Arc<CredentialCache> {
    CredentialCache::new(Arc::clone(fetch) as Arc<dyn Fetch>, min_remaining, 100)
}

fn slot() -> Arc<RoleSlot> {
    RoleSlot::new(role(), 1, None, SlotUses::default())
}

#[tokio::test(start_paused = true)]
async fn concurrent_cold_requests_share_one_fetch() {
    let _clock = clock::follow_tokio_time();
    let fetch = FakeFetch::new(Duration::from_millis(200), Duration::from_secs(3600));
    let cache = cache_with(&fetch, Duration::from_secs(60));
    let slot = slot();
    let barrier = Arc::new(tokio::sync::Barrier::new(64));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (cache, slot, barrier) = (Arc::clone(&cache), Arc::clone(&slot), Arc::clone(&barrier));
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            cache
                .get(&slot, Duration::from_secs(5))
                .await
                .map(|s| s.access_key_id.clone())
        }));
    }
    let started = clock::tokio_instant();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), key_id(1));
    }
    assert_eq!(fetch.calls(), 1);
    // Every waiter was answered by that one fetch, when it finished.
    assert_eq!(clock::tokio_instant() - started, Duration::from_millis(200));
    // Warm: no further fetch.
    cache.get(&slot, Duration::from_secs(1)).await.unwrap();
    assert_eq!(fetch.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_refresh_in_flight_keeps_serving_the_current_entry_and_is_joined() {
    let _clock = clock::follow_tokio_time();
    let fetch = FakeFetch::new(Duration::from_secs(2), Duration::from_secs(3600));
    let cache = cache_with(&fetch, Duration::from_secs(60));
    let slot = slot();
    cache.load(&slot).await.unwrap();
    // Sixteen refreshes at once (schedule, forced, reload) …
    let loads: Vec<_> = (0..16)
        .map(|_| {
            let (cache, slot) = (Arc::clone(&cache), Arc::clone(&slot));
            tokio::spawn(async move { cache.load(&slot).await.map(|s| s.access_key_id.clone()) })
        })
        .collect();
    // … while readers keep getting the current credentials, without waiting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let now = cache.get(&slot, Duration::ZERO).await.unwrap();
    assert_eq!(now.access_key_id, key_id(1));
    for l in loads {
        assert_eq!(l.await.unwrap().unwrap(), key_id(2));
    }
    assert_eq!(fetch.calls(), 2, "sixteen concurrent loads: one fetch");
    let now = cache.get(&slot, Duration::ZERO).await.unwrap();
    assert_eq!(now.access_key_id, key_id(2));
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_waiter_does_not_cancel_the_fetch() {
    let _clock = clock::follow_tokio_time();
    let fetch = FakeFetch::new(Duration::from_millis(300), Duration::from_secs(3600));
    let cache = cache_with(&fetch, Duration::from_secs(60));
    let slot = slot();
    // The first waiter gives up (client disconnect / timeout) …
    assert_eq!(
        cache
            .get(&slot, Duration::from_millis(50))
            .await
            .unwrap_err(),
        CacheError::TimedOut
    );
    // … the next one joins the same fetch instead of starting another.
    cache.get(&slot, Duration::from_secs(5)).await.unwrap();
    assert_eq!(fetch.calls(), 1);
}

#[test]
fn rendered_body_is_the_ecs_shape() {
    let c = Credentials {
        access_key_id: "ASIAX".into(),
        secret_access_key: Secret::new("s3cr3t".into()),
        session_token: Secret::new("t0k3n".into()),
        expiration: SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000),
        assumed_arn: None,
    };
    let served = RenderedCredentials::render(
        &role(),
        &c,
        clock::now(),
        Duration::from_secs(900),
        SlotUses {
            imds: true,
            source: false,
        },
    );
    let v: serde_json::Value = serde_json::from_slice(&served.ecs_body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "AccessKeyId": "ASIAX",
            "SecretAccessKey": "s3cr3t",
            "Token": "t0k3n",
            "Expiration": "2026-11-18T11:06:40Z",
            "RoleArn": "arn:aws:iam::123456789012:role/app",
            "AccountId": "123456789012",
        })
    );
    assert_eq!(served.serve_until, c.expiration - Duration::from_secs(900));
    let dbg = format!("{served:?}");
    assert!(!dbg.contains("s3cr3t") && !dbg.contains("t0k3n"), "{dbg}");
}

#[test]
fn the_account_comes_from_the_assumed_arn_when_not_configured() {
    let mut role = (*role()).clone();
    role.spec.account_id = None;
    let mut c = creds(1, Duration::from_secs(3600));
    c.assumed_arn = Some("arn:aws:sts::210987654321:assumed-role/app/s".into());
    let uses = SlotUses {
        imds: true,
        source: true,
    };
    let served = RenderedCredentials::render(&role, &c, clock::now(), Duration::ZERO, uses);
    let v: serde_json::Value = serde_json::from_slice(&served.ecs_body).unwrap();
    assert_eq!(v["AccountId"], "210987654321");
    let (_, extended) = served.imds_bodies.as_ref().unwrap();
    let v: serde_json::Value = serde_json::from_slice(extended).unwrap();
    assert_eq!(v["AccountId"], "210987654321");
    // A source role keeps the credentials its chained roles sign with.
    assert_eq!(
        served.credentials.as_ref().unwrap().access_key_id,
        key_id(1)
    );
}

#[tokio::test(start_paused = true)]
async fn credentials_below_min_remaining_are_not_served() {
    let _clock = clock::follow_tokio_time();
    // Credentials live 2 s; min_remaining 1 s: servable for 1 s.
    let fetch = FakeFetch::new(Duration::ZERO, Duration::from_secs(2));
    let cache = cache_with(&fetch, Duration::from_secs(1));
    let slot = slot();
    cache.get(&slot, Duration::from_secs(1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(999)).await;
    assert!(cache.peek(&slot.key).await.is_some());
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(
        cache.peek(&slot.key).await.is_none(),
        "stale entry must not be served"
    );
    // The next request fetches anew.
    let s = cache.get(&slot, Duration::from_secs(1)).await.unwrap();
    assert_eq!(s.access_key_id, key_id(2));
}

#[tokio::test(start_paused = true)]
async fn force_refresh_replaces_the_entry() {
    let _clock = clock::follow_tokio_time();
    let fetch = FakeFetch::new(Duration::ZERO, Duration::from_secs(3600));
    let cache = cache_with(&fetch, Duration::from_secs(60));
    let slot = slot();
    let first = cache.get(&slot, Duration::from_secs(1)).await.unwrap();
    let second = cache.force_refresh(&slot).await.unwrap();
    assert!(!second.coalesced);
    assert_ne!(first.access_key_id, second.served.access_key_id);
    let now = cache.get(&slot, Duration::from_secs(1)).await.unwrap();
    assert_eq!(now.access_key_id, second.served.access_key_id);
    assert_eq!(fetch.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_failed_forced_refresh_keeps_the_good_credentials() {
    let _clock = clock::follow_tokio_time();
    let fetch = FakeFetch::new(Duration::from_millis(50), Duration::from_secs(3600));
    let cache = cache_with(&fetch, Duration::from_secs(60));
    let slot = slot();
    let good = cache.get(&slot, Duration::from_secs(1)).await.unwrap();
    fetch.fail_with(Some(sts_failure()));
    assert!(cache.force_refresh(&slot).await.is_err());
    let served = cache.get(&slot, Duration::from_secs(1)).await.unwrap();
    assert_eq!(served.access_key_id, good.access_key_id);
}

#[tokio::test(start_paused = true)]
async fn concurrent_and_repeated_forced_refreshes_cost_one_fetch() {
    let _clock = clock::follow_tokio_time();
    let fetch = FakeFetch::new(Duration::from_millis(50), Duration::from_secs(3600));
    let cache = cache_with(&fetch, Duration::from_secs(60));
    let slot = slot();
    cache.get(&slot, Duration::from_secs(1)).await.unwrap();
    assert_eq!(fetch.calls(), 1);
    let forced: Vec<_> =
        futures_util::future::join_all((0..16).map(|_| cache.force_refresh(&slot))).await;
    assert!(forced.iter().all(Result::is_ok));
    assert_eq!(fetch.calls(), 2, "16 concurrent: one fetch");
    for _ in 0..5 {
        let again = cache.force_refresh(&slot).await.unwrap();
        assert!(again.coalesced);
    }
    assert_eq!(fetch.calls(), 2, "repeated: no further fetch");
}

#[tokio::test(start_paused = true)]
async fn a_forced_refresh_after_the_coalescing_window_fetches_again() {
    let _clock = clock::follow_tokio_time();
    let fetch = FakeFetch::new(Duration::from_millis(50), Duration::from_secs(3600));
    let cache = cache_with(&fetch, Duration::from_secs(60));
    let slot = slot();
    cache.get(&slot, Duration::from_secs(1)).await.unwrap();
    assert!(!cache.force_refresh(&slot).await.unwrap().coalesced);
    assert_eq!(fetch.calls(), 2);
    // The forced fetch started at 50 ms (after the first fetch) and finished at 100 ms.
    tokio::time::sleep(FORCED_REFRESH_COALESCE - Duration::from_millis(100)).await;
    assert!(cache.force_refresh(&slot).await.unwrap().coalesced);
    assert_eq!(
        fetch.calls(),
        2,
        "inside the window: answered by the last forced fetch"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let again = cache.force_refresh(&slot).await.unwrap();
    assert!(!again.coalesced);
    assert_eq!(again.served.access_key_id, key_id(3));
    assert_eq!(fetch.calls(), 3, "after the window: a fetch of its own");
}

#[tokio::test(start_paused = true)]
async fn fetch_errors_reach_every_waiter_and_nothing_is_cached() {
    let _clock = clock::follow_tokio_time();
    let fetch = FakeFetch::new(Duration::from_millis(100), Duration::from_secs(3600));
    fetch.fail_with(Some(FetchError::new(
        ErrorClass::Throttled,
        Some("Throttling".into()),
        "Rate exceeded",
    )));
    let cache = cache_with(&fetch, Duration::from_secs(60));
    let slot = slot();
    let (a, b) = tokio::join!(
        cache.get(&slot, Duration::from_secs(2)),
        cache.get(&slot, Duration::from_secs(2))
    );
    for r in [a, b] {
        match r {
            Err(CacheError::Fetch(e)) => assert_eq!(e.class, ErrorClass::Throttled),
            other => panic!("expected a throttled error, got {other:?}"),
        }
    }
    assert_eq!(fetch.calls(), 1);
    assert!(cache.peek(&slot.key).await.is_none());
}
