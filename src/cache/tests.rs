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
        access_key_id: format!("ASIA{n:016}"),
        secret_access_key: Secret::new(format!("secret-{n}")),
        session_token: Secret::new(format!("token-{n}")),
        expiration: clock::now() + lifetime,
        assumed_arn: None,
    }
}

/// A fetch that counts calls, takes `delay`, and issues credentials living `lifetime`.
fn counting_fetch(calls: Arc<AtomicUsize>, delay: Duration, lifetime: Duration) -> Fetch {
    Arc::new(move |_cache, _slot| {
        let calls = Arc::clone(&calls);
        async move {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(delay).await;
            Ok(creds(n, lifetime))
        }
        .boxed()
    })
}

#[tokio::test]
async fn concurrent_cold_requests_share_one_fetch() {
    let calls = Arc::new(AtomicUsize::new(0));
    let cache = CredentialCache::new(
        counting_fetch(
            Arc::clone(&calls),
            Duration::from_millis(200),
            Duration::from_secs(3600),
        ),
        Duration::from_secs(60),
        100,
    );
    let slot = RoleSlot::new(role(), 1, None, SlotUses::default());
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
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), format!("ASIA{:016}", 1));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Warm: no further fetch.
    cache.get(&slot, Duration::from_secs(1)).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_cancelled_waiter_does_not_cancel_the_fetch() {
    let calls = Arc::new(AtomicUsize::new(0));
    let cache = CredentialCache::new(
        counting_fetch(
            Arc::clone(&calls),
            Duration::from_millis(300),
            Duration::from_secs(3600),
        ),
        Duration::from_secs(60),
        100,
    );
    let slot = RoleSlot::new(role(), 1, None, SlotUses::default());
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
    assert_eq!(calls.load(Ordering::SeqCst), 1);
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

#[tokio::test]
async fn credentials_below_min_remaining_are_not_served() {
    let calls = Arc::new(AtomicUsize::new(0));
    // Credentials live 2 s; min_remaining 1 s: servable for about 1 s.
    let cache = CredentialCache::new(
        counting_fetch(Arc::clone(&calls), Duration::ZERO, Duration::from_secs(2)),
        Duration::from_secs(1),
        100,
    );
    let slot = RoleSlot::new(role(), 1, None, SlotUses::default());
    cache.get(&slot, Duration::from_secs(1)).await.unwrap();
    assert!(cache.peek(&slot.key).await.is_some());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        cache.peek(&slot.key).await.is_none(),
        "stale entry must not be served"
    );
    // The next request fetches anew.
    let s = cache.get(&slot, Duration::from_secs(1)).await.unwrap();
    assert_eq!(s.access_key_id, format!("ASIA{:016}", 2));
}

#[tokio::test]
async fn force_refresh_replaces_the_entry() {
    let calls = Arc::new(AtomicUsize::new(0));
    let cache = CredentialCache::new(
        counting_fetch(
            Arc::clone(&calls),
            Duration::ZERO,
            Duration::from_secs(3600),
        ),
        Duration::from_secs(60),
        100,
    );
    let slot = RoleSlot::new(role(), 1, None, SlotUses::default());
    let first = cache.get(&slot, Duration::from_secs(1)).await.unwrap();
    let second = cache.force_refresh(&slot).await.unwrap();
    assert!(!second.coalesced);
    assert_ne!(first.access_key_id, second.served.access_key_id);
    let now = cache.get(&slot, Duration::from_secs(1)).await.unwrap();
    assert_eq!(now.access_key_id, second.served.access_key_id);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// A fetch that succeeds while `ok` is set (counting calls), else fails like a 5xx.
fn switchable_fetch(calls: Arc<AtomicUsize>, ok: Arc<std::sync::atomic::AtomicBool>) -> Fetch {
    Arc::new(move |_cache, _slot| {
        let calls = Arc::clone(&calls);
        let ok = ok.load(Ordering::SeqCst);
        async move {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
            if ok {
                Ok(creds(n, Duration::from_secs(3600)))
            } else {
                Err(FetchError::new(
                    ErrorClass::Transient,
                    Some("InternalFailure".into()),
                    "STS failed",
                ))
            }
        }
        .boxed()
    })
}

#[tokio::test]
async fn a_failed_forced_refresh_keeps_the_good_credentials() {
    let calls = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let cache = CredentialCache::new(
        switchable_fetch(Arc::clone(&calls), Arc::clone(&ok)),
        Duration::from_secs(60),
        100,
    );
    let slot = RoleSlot::new(role(), 1, None, SlotUses::default());
    let good = cache.get(&slot, Duration::from_secs(1)).await.unwrap();
    ok.store(false, Ordering::SeqCst);
    assert!(cache.force_refresh(&slot).await.is_err());
    let served = cache.get(&slot, Duration::from_secs(1)).await.unwrap();
    assert_eq!(served.access_key_id, good.access_key_id);
}

#[tokio::test]
async fn concurrent_and_repeated_forced_refreshes_cost_one_fetch() {
    let calls = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let cache = CredentialCache::new(
        switchable_fetch(Arc::clone(&calls), Arc::clone(&ok)),
        Duration::from_secs(60),
        100,
    );
    let slot = RoleSlot::new(role(), 1, None, SlotUses::default());
    cache.get(&slot, Duration::from_secs(1)).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let forced: Vec<_> =
        futures_util::future::join_all((0..16).map(|_| cache.force_refresh(&slot))).await;
    assert!(forced.iter().all(Result::is_ok));
    assert_eq!(calls.load(Ordering::SeqCst), 2, "16 concurrent: one fetch");
    for _ in 0..5 {
        let again = cache.force_refresh(&slot).await.unwrap();
        assert!(again.coalesced);
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "repeated: no further fetch"
    );
}

#[tokio::test]
async fn fetch_errors_reach_every_waiter_and_nothing_is_cached() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = Arc::clone(&calls);
    let fetch: Fetch = Arc::new(move |_cache, _slot| {
        let calls = Arc::clone(&c2);
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
            Err(FetchError::new(
                ErrorClass::Throttled,
                Some("Throttling".into()),
                "Rate exceeded",
            ))
        }
        .boxed()
    });
    let cache = CredentialCache::new(fetch, Duration::from_secs(60), 100);
    let slot = RoleSlot::new(role(), 1, None, SlotUses::default());
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
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(cache.peek(&slot.key).await.is_none());
}
