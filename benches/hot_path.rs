//! In-process costs of the pieces a cached request goes through, and of config loading.
//!
//! `cargo bench --bench hot_path` (add `-- --quick` for a short run). Numbers are not asserted
//! anywhere; BENCHMARKS.md records them with the machine they came from.
//!
//! What each group measures:
//! - `token_index/check`: the ECS token check (SHA-256 of the presented token, map lookup,
//!   constant-time compare) for a known token, an unknown one and a wrong-role one;
//! - `imds_token/*`: issuing and verifying a stateless IMDSv2 session token (HMAC-SHA256);
//! - `cache/get_hit`: the cache read of a warm role (moka `get` + servable check);
//! - `metrics/observe_request`: the per-request counter + histogram update;
//! - `host_allowed`: the DNS-rebinding check on `Host: 127.0.0.1:8170`;
//! - `served/render`: rendering the three response bodies once per refresh (cold path);
//! - `config/parse` and `token_index/build`: load time for 1, 100 and 10,000 roles;
//! - `socket_owner/*`: the netlink sock_diag lookup of a live loopback connection's owner (what
//!   a connection costs once, at accept, when some role has `local_users`), the
//!   `SO_ORIGINAL_DST` read, and the per-request read of the cached owner.
// Tests and benches time real processes and real sockets: the wall and monotonic clocks
// are the point here (src/ asks crate::clock instead, see clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;

use sts_broker::cache::{CredentialCache, Fetch, RenderedCredentials, RoleSlot};
use sts_broker::config::{Config, LoadContext};
use sts_broker::creds::{Credentials, Secret};
use sts_broker::metrics::Metrics;
use sts_broker::server::Endpoint;
use sts_broker::server::http::host_allowed;
use sts_broker::server::imds::TokenSigner;
use sts_broker::state::{Access, TokenIndex};

/// A config with `n` roles `app0..`, each with its own inline token `token-for-appN-…`.
fn config_text(n: usize) -> String {
    let mut s = String::from(
        "[sts]\nregion = \"us-east-1\"\nendpoint = \"http://127.0.0.1:1\"\n\
         [refresh]\nlead = \"40m\"\nmin_remaining = \"15m\"\n\
         [imds]\nlisten = \"127.0.0.1:0\"\nrole = \"app0\"\n",
    );
    for i in 0..n {
        write!(
            s,
            "[[role]]\nname = \"app{i}\"\narn = \"arn:aws:iam::123456789012:role/app{i}\"\n\
             session_name = \"bench-{{hostname}}\"\nduration = \"1h\"\n\
             tags = {{ team = \"payments\", env = \"bench\" }}\n\
             tokens = [\"token-for-app{i}-0123456789abcdef\"]\n"
        )
        .unwrap();
    }
    s
}

fn ctx() -> LoadContext {
    LoadContext {
        hostname: "bench-host".into(),
    }
}

fn parse(n: usize) -> Config {
    Config::parse(&config_text(n), "bench.toml", &ctx()).expect("bench config is valid")
}

/// Credentials shaped like real STS ones (20-char key id, 40-char secret, ~700-byte token).
fn creds() -> Credentials {
    Credentials {
        access_key_id: "ASIAXAMPLEXAMPLE0001".into(),
        secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into()),
        session_token: Secret::new("IQoJb3JpZ2luX2VjE".repeat(40)),
        expiration: SystemTime::now() + Duration::from_secs(3600),
        assumed_arn: None,
    }
}

fn bench_config(c: &mut Criterion) {
    let mut g = c.benchmark_group("config");
    for n in [1usize, 100, 10_000] {
        let text = config_text(n);
        if n == 10_000 {
            g.sample_size(10);
        }
        g.bench_with_input(BenchmarkId::new("parse", n), &text, |b, text| {
            b.iter(|| Config::parse(black_box(text), "bench.toml", &ctx()).unwrap())
        });
    }
    g.finish();
}

fn bench_tokens(c: &mut Criterion) {
    let mut g = c.benchmark_group("token_index");
    for n in [1usize, 100, 10_000] {
        let cfg = parse(n);
        if n == 10_000 {
            g.sample_size(10);
        }
        g.bench_with_input(BenchmarkId::new("build", n), &cfg, |b, cfg| {
            b.iter(|| TokenIndex::build(black_box(cfg)))
        });
    }
    let cfg = parse(100);
    let idx = TokenIndex::build(&cfg);
    let known = b"token-for-app7-0123456789abcdef";
    assert_eq!(idx.check(known, "app7"), Access::Allowed);
    g.bench_function("check/allowed", |b| {
        b.iter(|| idx.check(black_box(known), black_box("app7")))
    });
    g.bench_function("check/wrong_role", |b| {
        b.iter(|| idx.check(black_box(known), black_box("app8")))
    });
    g.bench_function("check/unknown", |b| {
        b.iter(|| {
            idx.check(
                black_box(b"not-a-token-0123456789abcdef000"),
                black_box("app7"),
            )
        })
    });
    g.finish();
}

fn bench_imds_tokens(c: &mut Criterion) {
    let mut g = c.benchmark_group("imds_token");
    let signer = TokenSigner::generate();
    let now = 1_800_000_000_000u64; // milliseconds
    let token = signer.issue(now + 21_600_000);
    assert!(signer.verify(token.as_bytes(), now));
    g.bench_function("issue", |b| {
        b.iter(|| signer.issue(black_box(now + 21_600_000)))
    });
    g.bench_function("verify", |b| {
        b.iter(|| signer.verify(black_box(token.as_bytes()), black_box(now)))
    });
    g.finish();
}

fn bench_render(c: &mut Criterion) {
    let cfg = parse(1);
    let role = Arc::clone(&cfg.roles[0]);
    let creds = creds();
    c.bench_function("served/render", |b| {
        b.iter(|| {
            RenderedCredentials::render(
                black_box(&role),
                black_box(&creds),
                SystemTime::now(),
                Duration::from_secs(900),
                // The IMDS role renders all three bodies: the most work.
                sts_broker::cache::SlotUses {
                    imds: true,
                    source: true,
                },
            )
        })
    });
}

/// Answers every fetch at once with [`creds`]: the bench measures reads, not fetches.
struct FreshCreds;

impl Fetch for FreshCreds {
    fn fetch<'a>(
        &'a self,
        _cache: &'a Arc<CredentialCache>,
        _slot: &'a Arc<RoleSlot>,
    ) -> futures_util::future::BoxFuture<'a, Result<Credentials, sts_broker::creds::FetchError>>
    {
        async { Ok(creds()) }.boxed()
    }
}

fn bench_cache(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cfg = parse(1);
    let cache = CredentialCache::new(Arc::new(FreshCreds), Duration::from_secs(900), 100_000);
    let slot = RoleSlot::new(Arc::clone(&cfg.roles[0]), 0, None, Default::default());
    rt.block_on(cache.load(&slot)).expect("fetch succeeds");
    // A warm read completes without yielding: poll it once, no executor in the measurement.
    assert!(cache.peek(&slot.key).now_or_never().flatten().is_some());
    c.bench_function("cache/get_hit", |b| {
        b.iter(|| {
            cache
                .get(black_box(&slot), Duration::from_secs(6))
                .now_or_never()
                .expect("a warm get never waits")
                .expect("servable")
        })
    });
}

fn bench_metrics(c: &mut Criterion) {
    let m = Metrics::new();
    c.bench_function("metrics/observe_request", |b| {
        b.iter(|| {
            m.observe_request(
                black_box(Endpoint::Ecs),
                black_box("app0"),
                200,
                Duration::from_micros(40),
            )
        })
    });
}

fn bench_host(c: &mut Criterion) {
    let req = hyper::Request::builder()
        .uri("/v1/credentials/app0")
        .header(hyper::header::HOST, "127.0.0.1:8170")
        .body(())
        .unwrap();
    let allowed: Vec<String> = Vec::new();
    c.bench_function("host_allowed/ip_literal", |b| {
        b.iter(|| host_allowed(black_box(&req), black_box(&allowed)))
    });
}

fn bench_socket_owner(c: &mut Criterion) {
    use sts_broker::identity::SocketOwner;
    use sts_broker::identity::socket_owner::{lookup_uid, original_destination};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, peer) = listener.accept().unwrap();
    let local = server.local_addr().unwrap();
    assert_eq!(peer, client.local_addr().unwrap());
    lookup_uid(peer, local).expect("the client socket is found");
    c.bench_function("socket_owner/lookup_uid", |b| {
        b.iter(|| lookup_uid(black_box(peer), black_box(local)))
    });
    c.bench_function("socket_owner/original_destination", |b| {
        b.iter(|| original_destination(black_box(&server), local))
    });
    let owner = SocketOwner::new(peer, local);
    owner.uid().unwrap();
    c.bench_function("socket_owner/cached_uid", |b| {
        b.iter(|| black_box(&owner).uid())
    });
}

criterion_group!(
    benches,
    bench_socket_owner,
    bench_tokens,
    bench_imds_tokens,
    bench_cache,
    bench_metrics,
    bench_host,
    bench_render,
    bench_config
);
criterion_main!(benches);
