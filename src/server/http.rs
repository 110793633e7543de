//! What every listener shares: the accept loop, connection limits, graceful drain and the
//! `Host` check. Each accepted request goes to [`handler::handle`], which answers it through
//! the listener's [`Handler`] and records it.
//!
//! - HTTP/1.1 only, keep-alive on, `TCP_NODELAY` on (small responses, latency matters).
//! - Request headers must arrive within [`HEADER_READ_TIMEOUT`] (slowloris) and fit in
//!   [`MAX_HEADER_BYTES`] (hyper answers 431 beyond it).
//! - At most `max_connections` connections per listener (default 4096); further ones wait in
//!   the kernel's backlog rather than exhausting file descriptors. Each listener has its own
//!   budget, so a flood on one leaves the admin endpoint reachable.
//! - Idle keep-alive connections are closed when no new request head arrives within the
//!   header read timeout (hyper's timer also covers the wait for the next request).
//! - Optionally, a per-peer request rate limit (GCRA per IP, `governor`): beyond it, 429.
//! - On shutdown the listener closes at once; open connections finish the request in
//!   progress and are then closed (hyper-util `GracefulShutdown`).

use std::convert::Infallible;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::Request;
use hyper::body::Incoming;
use hyper::header::HOST;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::identity::SocketOwner;
use crate::server::Endpoint;
use crate::server::handler::{self, Handler};
use crate::server::response::{JsonError, Refused};
use crate::server::write_timeout::WriteTimeout;

/// Headers not complete within this are cut off (DESIGN §3).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A response not drained by the client within this (from the moment the socket stops
/// taking bytes) closes the connection: a client that stops reading cannot pin a slot.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Larger request heads get 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// How many peers the rate limiter remembers; the least recently seen are forgotten first.
const RATE_LIMIT_PEERS: u64 = 65_536;

/// Sets the IP TTL (IPv4) or unicast hop limit (IPv6) of a socket's packets. An IPv6 socket
/// gets both: a dual-stack `[::]` socket sends IPv4 packets to IPv4-mapped peers, and those
/// carry the IPv4 TTL, not the hop limit.
///
/// # Errors
/// When the kernel refuses the option (the IPv4 TTL only matters, and is only required, on a
/// socket that is not IPv6-only).
pub fn set_hop_limit(socket: socket2::SockRef<'_>, v6: bool, hops: u32) -> std::io::Result<()> {
    if v6 {
        socket.set_unicast_hops_v6(hops)?;
        match socket.set_ttl_v4(hops) {
            Err(_) if socket.only_v6().unwrap_or(false) => Ok(()),
            other => other,
        }
    } else {
        socket.set_ttl_v4(hops)
    }
}

/// Per-listener limits, fixed for the listener's lifetime.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections served at once; further ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// `Some`: requests beyond each peer's rate get 429.
    pub per_peer: Option<Arc<PeerLimiter>>,
    /// IP TTL / hop limit of every accepted connection.
    pub hop_limit: Option<u32>,
    /// Peers outside these networks get 403 (empty: every peer is allowed).
    pub allowed_sources: Arc<[ipnet::IpNet]>,
    /// `Some` on listeners whose callers may be attributed to their socket's owner (ECS and
    /// IMDS): each request carries its connection's [`SocketOwner`] as an extension.
    pub attribution: Option<Attribution>,
}

/// How a listener attributes callers to their socket's owner.
#[derive(Clone)]
pub struct Attribution {
    /// Whether to ask the kernel for a connection's owner as soon as it is accepted (some
    /// role has `local_users` now). When it says no, the owner is looked up on the first
    /// request that needs it, so that a reload adding `local_users` also covers connections
    /// already open.
    pub ask_at_accept: Arc<dyn Fn() -> bool + Send + Sync>,
}

impl std::fmt::Debug for Attribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Attribution")
    }
}

impl Limits {
    /// Whether `ip` may use the listener (IPv4-mapped IPv6 peers match IPv4 networks).
    pub fn source_allowed(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.allowed_sources.is_empty() || self.allowed_sources.iter().any(|n| n.contains(&ip))
    }
}

/// A request rate per peer IP: `rate` requests per second, bursts of `2 × rate`. Each peer
/// gets a GCRA limiter (`governor`) in a bounded cache, so a flood of source addresses
/// cannot grow memory without bound (least recently seen peers are forgotten first).
pub struct PeerLimiter {
    rate: f64,
    quota: governor::Quota,
    peers: moka::sync::Cache<IpAddr, Arc<governor::DefaultDirectRateLimiter>>,
}

impl std::fmt::Debug for PeerLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerLimiter")
            .field("rate", &self.rate)
            .finish_non_exhaustive()
    }
}

impl PeerLimiter {
    /// A limiter allowing each peer `rate` requests per second (validated positive, finite).
    pub fn new(rate: f64) -> PeerLimiter {
        let burst = NonZeroU32::new((rate * 2.0).round().clamp(1.0, f64::from(u32::MAX)) as u32)
            .unwrap_or(NonZeroU32::MIN);
        let quota = governor::Quota::with_period(Duration::from_secs_f64(1.0 / rate))
            .expect("validated: rate is positive and finite")
            .allow_burst(burst);
        PeerLimiter {
            rate,
            quota,
            peers: moka::sync::Cache::builder()
                .max_capacity(RATE_LIMIT_PEERS)
                .time_to_idle(Duration::from_secs(60))
                .build(),
        }
    }

    /// Takes one request's worth of `ip`'s quota; false when it is spent.
    pub fn allow(&self, ip: IpAddr) -> bool {
        self.peers
            .get_with(ip, || Arc::new(governor::RateLimiter::direct(self.quota)))
            .check()
            .is_ok()
    }
}

/// Serves `listener` with `handler` until `cancel` fires, then drains open connections for
/// at most `grace`.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    cancel: CancellationToken,
    grace: Duration,
    limits: Limits,
) {
    let endpoint = H::ENDPOINT;
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let hop_limit = limits.hop_limit;
    let mut accept_errors = AcceptErrors::default();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        // A client that shuts down its sending side after the request still gets the answer.
        .half_close(true)
        .keep_alive(true);
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => p.expect("semaphore never closed"),
            () = cancel.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => {
                    accept_errors.succeeded();
                    s
                }
                Err(e) => {
                    let pause = accept_errors.failed(endpoint, &e);
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = cancel.cancelled() => break,
                    }
                    continue;
                }
            },
            () = cancel.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        if let Some(hops) = hop_limit
            && let Err(e) = set_hop_limit(socket2::SockRef::from(&stream), peer.is_ipv6(), hops)
        {
            tracing::warn!(%endpoint, error = %e, "cannot set the hop limit");
        }
        // The original destination is read now, while the socket is at hand; the kernel is
        // asked for the owner once, in the connection's task before its first request.
        let owner = limits.attribution.as_ref().map(|attribution| {
            let local = stream.local_addr().unwrap_or(peer);
            let owner = Arc::new(SocketOwner::accepted(&stream, peer, local));
            (owner, (attribution.ask_at_accept)())
        });
        let handler = Arc::clone(&handler);
        let per_peer = limits.per_peer.clone();
        let source_ok = limits.source_allowed(peer.ip());
        let request_owner = owner.as_ref().map(|(o, _)| Arc::clone(o));
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            if let Some(o) = &request_owner {
                req.extensions_mut().insert(Arc::clone(o));
            }
            let metrics = &handler.context().metrics;
            // Refused before any handler: counted on their own (the first two) or as a
            // request of no role, never audited.
            let refusal = if !source_ok {
                metrics.observe_source_refused(endpoint);
                Some(Refused::SourceNotAllowed)
            } else if per_peer.as_ref().is_some_and(|l| !l.allow(peer.ip())) {
                metrics.observe_rate_limited(endpoint);
                Some(Refused::TooManyRequests)
            } else if let Some(why) = ambiguous_head(&req) {
                metrics.observe_request(endpoint, "", why.status().as_u16(), Duration::ZERO);
                Some(why)
            } else {
                None
            };
            let answer = refusal
                .is_none()
                .then(|| handler::handle(Arc::clone(&handler), req, peer));
            async move {
                Ok::<_, Infallible>(match answer {
                    Some(answer) => answer.await,
                    None => refusal
                        .expect("a refusal when there is no handler")
                        .response(),
                })
            }
        });
        let io = WriteTimeout::new(stream, WRITE_TIMEOUT);
        let conn = builder.serve_connection(TokioIo::new(io), service);
        let watched = graceful.watch(conn);
        tokio::spawn(async move {
            if source_ok && let Some((owner, true)) = &owner {
                // At accept, never on an established connection's warm path.
                let _ = owner.uid();
            }
            if let Err(e) = watched.await {
                tracing::debug!(%endpoint, %peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            %endpoint,
            grace_s = grace.as_secs(),
            "connections still open after the grace period; closing them"
        );
    }
}

/// Back-off and log rate limit for failing `accept`s. Out of descriptors (EMFILE, ENFILE) or
/// memory, retrying at once only spins: the pause doubles from 10 ms to 1 s while the errors
/// last, and one warning per 10 s says how many there were.
#[derive(Default)]
struct AcceptErrors {
    pause: Duration,
    suppressed: u64,
    last_warning: Option<Instant>,
}

impl AcceptErrors {
    const FIRST_PAUSE: Duration = Duration::from_millis(10);
    const MAX_PAUSE: Duration = Duration::from_secs(1);
    const WARN_EVERY: Duration = Duration::from_secs(10);

    fn succeeded(&mut self) {
        self.pause = Duration::ZERO;
    }

    /// Logs (rate-limited) and returns how long to wait before accepting again.
    fn failed(&mut self, endpoint: Endpoint, e: &std::io::Error) -> Duration {
        let exhausted = matches!(
            e.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        );
        if self
            .last_warning
            .is_none_or(|t| t.elapsed() >= Self::WARN_EVERY)
        {
            tracing::warn!(
                %endpoint,
                error = %e,
                suppressed = self.suppressed,
                "accept failed{}",
                if exhausted { "; out of file descriptors or memory, backing off" } else { "" }
            );
            self.last_warning = Some(clock::instant());
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
        self.pause = if exhausted {
            (self.pause * 2).clamp(Self::FIRST_PAUSE, Self::MAX_PAUSE)
        } else {
            Self::FIRST_PAUSE
        };
        self.pause
    }
}

/// Request heads that are ambiguous are refused before any handler sees them (400): two
/// `Host` or two `Authorization` headers (which one would a proxy in front have checked?),
/// and an HTTP/1.1 request without `Host` (RFC 9112 §3.2 requires one). HTTP/1.0 may omit it.
pub fn ambiguous_head<B>(req: &Request<B>) -> Option<Refused> {
    let h = req.headers();
    let hosts = h.get_all(HOST).iter().count();
    let why = if hosts > 1 {
        "more than one Host header"
    } else if h.get_all(hyper::header::AUTHORIZATION).iter().count() > 1 {
        "more than one Authorization header"
    } else if hosts == 0 && req.version() == hyper::Version::HTTP_11 {
        "an HTTP/1.1 request must carry a Host header"
    } else {
        return None;
    };
    Some(Refused::AmbiguousHead(why))
}

/// DNS-rebinding defence: accept a `Host` that is an IP literal, `localhost`, or one of
/// `allowed` (lower-case), with or without a port. An absolute-form request target
/// (`GET http://name/path`) names the host instead of the header (RFC 9112 §3.2.2), so its
/// authority is what is checked. A request without either (HTTP/1.0) is accepted: browsers,
/// the vector of rebinding attacks, always send `Host`.
pub fn host_allowed<B>(req: &Request<B>, allowed: &[String]) -> bool {
    let host = match (req.uri().authority(), req.headers().get(HOST)) {
        (Some(authority), _) => authority.as_str(),
        (None, None) => return true,
        (None, Some(value)) => match value.to_str() {
            Ok(h) => h,
            Err(_) => return false,
        },
    };
    // `user@host` is not a host.
    if host.contains('@') {
        return false;
    }
    let name = strip_port(host);
    if name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok() {
        return true;
    }
    allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

/// `host[:port]` or `[v6][:port]` → the host part (brackets removed).
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Whether the request carries a body (credential paths accept none).
pub fn has_body<B>(req: &Request<B>) -> bool {
    let headers = req.headers();
    headers.contains_key(hyper::header::TRANSFER_ENCODING)
        || headers
            .get(hyper::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(host: Option<&str>) -> Request<()> {
        let mut b = Request::builder().uri("/");
        if let Some(h) = host {
            b = b.header(HOST, h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn a_dual_stack_socket_gets_the_ipv4_ttl_too() {
        let Ok(l) = std::net::TcpListener::bind("[::]:0") else {
            return; // no IPv6 here
        };
        let sock = socket2::SockRef::from(&l);
        assert!(
            !sock.only_v6().unwrap(),
            "[::] is dual-stack by default on Linux"
        );
        set_hop_limit(socket2::SockRef::from(&l), true, 1).unwrap();
        assert_eq!(sock.unicast_hops_v6().unwrap(), 1);
        assert_eq!(sock.ttl_v4().unwrap(), 1, "IPv4-mapped clients get TTL 1");
    }

    #[test]
    fn allowed_sources_match_mapped_peers_and_empty_allows_all() {
        let limits = |nets: &[&str]| Limits {
            max_connections: 1,
            per_peer: None,
            hop_limit: None,
            allowed_sources: nets.iter().map(|n| n.parse().unwrap()).collect(),
            attribution: None,
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let lo = limits(&["127.0.0.0/8", "::1/128"]);
        assert!(lo.source_allowed(ip("127.0.0.1")));
        assert!(
            lo.source_allowed(ip("::ffff:127.0.0.1")),
            "IPv4-mapped on a [::] listener"
        );
        assert!(lo.source_allowed(ip("::1")));
        assert!(!lo.source_allowed(ip("10.202.0.2")));
        assert!(!lo.source_allowed(ip("::ffff:10.202.0.2")));
        assert!(limits(&[]).source_allowed(ip("192.0.2.1")));
    }

    #[test]
    fn ambiguous_heads_are_refused() {
        let build = |version, headers: &[(&str, &str)]| {
            let mut b = Request::builder().uri("/").version(version);
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            b.body(()).unwrap()
        };
        let v11 = hyper::Version::HTTP_11;
        type Case<'a> = (hyper::Version, &'a [(&'a str, &'a str)], bool);
        let cases: [Case; 6] = [
            (v11, &[("host", "127.0.0.1")], false),
            (
                v11,
                &[("host", "127.0.0.1"), ("host", "evil.example")],
                true,
            ),
            (
                v11,
                &[
                    ("host", "a"),
                    ("authorization", "t1"),
                    ("authorization", "t2"),
                ],
                true,
            ),
            (v11, &[], true),
            (hyper::Version::HTTP_10, &[], false),
            (v11, &[("host", "a"), ("authorization", "t1")], false),
        ];
        for (version, headers, refused) in cases {
            let got = ambiguous_head(&build(version, headers));
            assert_eq!(got.is_some(), refused, "{version:?} {headers:?}");
            if let Some(r) = got {
                assert_eq!(r.response().status(), hyper::StatusCode::BAD_REQUEST);
            }
        }
    }

    #[test]
    fn an_absolute_form_target_is_what_the_host_check_sees() {
        let req = |uri: &str, host: &str| {
            Request::builder()
                .uri(uri)
                .header(HOST, host)
                .body(())
                .unwrap()
        };
        let allowed: Vec<String> = Vec::new();
        assert!(!host_allowed(
            &req("http://evil.example/v1/credentials/app", "127.0.0.1"),
            &allowed
        ));
        assert!(host_allowed(
            &req("http://127.0.0.1:8170/v1/credentials/app", "evil.example"),
            &allowed
        ));
        assert!(!host_allowed(
            &req("http://127.0.0.1@evil.example/x", "127.0.0.1"),
            &allowed
        ));
    }

    #[test]
    fn host_check_table() {
        let allowed = vec!["broker.internal".to_string()];
        let cases = [
            (Some("127.0.0.1:8170"), true, "IPv4 literal with port"),
            (Some("127.0.0.1"), true, "IPv4 literal"),
            (Some("[::1]:8170"), true, "IPv6 literal with port"),
            (Some("169.254.170.23"), true, "link-local ECS address"),
            (Some("localhost:8170"), true, "localhost"),
            (Some("LOCALHOST"), true, "localhost, any case"),
            (Some("broker.internal:80"), true, "configured name"),
            (Some("evil.example.com"), false, "rebinding name"),
            (Some("localhost.evil.com"), false, "suffix trick"),
            (Some("127.0.0.1.nip.io"), false, "IP-looking name"),
            (None, true, "HTTP/1.0 without Host"),
        ];
        for (host, want, docs) in cases {
            assert_eq!(host_allowed(&req(host), &allowed), want, "{docs}");
        }
    }
}

#[cfg(test)]
mod peer_limit_tests {
    use super::*;

    #[test]
    fn each_peer_gets_a_burst_of_twice_the_rate_then_429() {
        let l = PeerLimiter::new(5.0);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let allowed = (0..20).filter(|_| l.allow(a)).count();
        // A burst of 10 (plus at most one more if the clock ticked 200 ms meanwhile).
        assert!((10..=11).contains(&allowed), "{allowed}");
        assert!(l.allow(b), "another peer has its own quota");
    }
}
