//! The caller as the owner of the client socket (DESIGN §10).
//!
//! For a TCP connection from the broker's own network namespace the kernel knows which user
//! owns the client's socket. The broker asks it once per connection through netlink
//! `sock_diag`, by the exact 4-tuple of the client socket: source = the peer address the
//! broker sees, destination = the address the client connected to (for a connection an
//! nftables `redirect`/`dnat` sent here, its original destination from `SO_ORIGINAL_DST`,
//! e.g. 169.254.169.254:80; otherwise the listener's own address).
//!
//! What cannot be attributed is refused, never guessed:
//! - a peer in another network namespace has no socket in ours: the lookup finds nothing;
//! - a socket already gone finds nothing, or a socket in another state;
//! - an exact lookup that finds no connected socket falls back, in the kernel, to a
//!   *listening* socket on the same address and port. A client elsewhere whose source port
//!   equals a port some local user listens on would be reported as that user, so only an
//!   answer in state ESTABLISHED whose 4-tuple matches exactly is accepted.
//!
//! The UID of a connection is fixed; which role it maps to is read per request from the
//! current configuration ([`LocalUsers`]), so a reload applies at once.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP, TCP_ESTABLISHED};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;

use crate::config::Config;

/// `INET_DIAG_NOCOOKIE`: match the socket by its 4-tuple alone.
const NO_COOKIE: [u8; 8] = [0xff; 8];

/// Why a connection has no owner the broker can vouch for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unattributed {
    /// No socket with that 4-tuple in the broker's network namespace: the client is in
    /// another namespace or host, or its socket is gone.
    NoSocket,
    /// The kernel answered with a socket that is not the connected client (a listener on the
    /// same port, or a socket closing); refused.
    NotEstablished,
    /// The kernel answered with another 4-tuple; refused.
    Mismatch,
    /// The listener does not attribute connections to their owner.
    NotAsked,
    /// netlink itself failed (no answer, unparsable answer, socket error).
    LookupFailed,
}

impl Unattributed {
    /// A short word for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Unattributed::NoSocket => "no_socket",
            Unattributed::NotEstablished => "not_established",
            Unattributed::Mismatch => "mismatch",
            Unattributed::NotAsked => "not_asked",
            Unattributed::LookupFailed => "lookup_failed",
        }
    }
}

impl fmt::Display for Unattributed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One accepted connection's owner, looked up at most once (at accept, or on the first
/// request that needs it when the configuration had no `local_users` at accept time).
#[derive(Debug)]
pub struct SocketOwner {
    /// The client's socket address as the broker sees it (the client's local address).
    peer: SocketAddr,
    /// Where the client connected to (its remote address).
    dst: SocketAddr,
    uid: OnceLock<Result<u32, Unattributed>>,
}

impl SocketOwner {
    /// The owner of the connection `stream` accepted from `peer` (not looked up yet).
    pub fn accepted(stream: &impl AsFd, peer: SocketAddr, local: SocketAddr) -> Self {
        SocketOwner {
            peer: unmap(peer),
            dst: unmap(original_destination(stream, local)),
            uid: OnceLock::new(),
        }
    }

    /// For tests and benchmarks: a connection from `peer` to `dst`.
    pub fn new(peer: SocketAddr, dst: SocketAddr) -> Self {
        SocketOwner {
            peer: unmap(peer),
            dst: unmap(dst),
            uid: OnceLock::new(),
        }
    }

    /// The client socket's UID; asks the kernel the first time only.
    pub fn uid(&self) -> Result<u32, Unattributed> {
        *self.uid.get_or_init(|| lookup_uid(self.peer, self.dst))
    }

    /// The UID if the kernel was asked already (never asks).
    pub fn known_uid(&self) -> Option<u32> {
        self.uid.get().and_then(|r| r.ok())
    }

    /// Whether the kernel has been asked already (tests: the warm path never asks).
    pub fn looked_up(&self) -> bool {
        self.uid.get().is_some()
    }

    /// The address the client connected to (its original destination when redirected).
    pub fn destination(&self) -> SocketAddr {
        self.dst
    }
}

/// IPv4-mapped IPv6 (a dual-stack listener) → IPv4: the client socket is an AF_INET one.
fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        v4 @ SocketAddr::V4(_) => v4,
    }
}

/// `SO_ORIGINAL_DST` (`IP6T_SO_ORIGINAL_DST`) of an accepted socket: where the client
/// connected to before a NAT rule sent it here. Without NAT the kernel answers ENOENT and
/// the socket's own local address is the destination.
pub fn original_destination(stream: &impl AsFd, local: SocketAddr) -> SocketAddr {
    use nix::sys::socket::{getsockopt, sockopt};
    match local {
        SocketAddr::V4(_) => getsockopt(stream, sockopt::OriginalDst).map_or(local, |sa| {
            SocketAddr::new(
                IpAddr::V4(u32::from_be(sa.sin_addr.s_addr).into()),
                u16::from_be(sa.sin_port),
            )
        }),
        SocketAddr::V6(_) => getsockopt(stream, sockopt::Ip6tOriginalDst).map_or(local, |sa| {
            let ip = std::net::Ipv6Addr::from(sa.sin6_addr.s6_addr);
            let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
            SocketAddr::new(ip, u16::from_be(sa.sin6_port))
        }),
    }
}

/// Asks the kernel (netlink `sock_diag`, in the broker's network namespace) for the UID
/// owning the TCP socket whose local address is `client` and remote address is `dst`.
///
/// The request and its answer are one `sendmsg`/`recvmsg` pair on a per-thread netlink
/// socket: the kernel answers within the `sendmsg` call, so the receive does not block (the
/// socket is non-blocking; no answer counts as a failed lookup).
pub fn lookup_uid(client: SocketAddr, dst: SocketAddr) -> Result<u32, Unattributed> {
    let family = match (client, dst) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) => AF_INET,
        (SocketAddr::V6(_), SocketAddr::V6(_)) => AF_INET6,
        _ => return Err(Unattributed::Mismatch),
    };
    let wanted = SocketId {
        source_port: client.port(),
        destination_port: dst.port(),
        source_address: client.ip(),
        destination_address: dst.ip(),
        interface_id: 0,
        cookie: NO_COOKIE,
    };
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    let mut packet = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::ESTABLISHED,
            socket_id: wanted.clone(),
        })
        .into(),
    );
    packet.finalize();
    let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    packet.header.sequence_number = seq;
    let mut request = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut request);
    let mut answer = [0u8; 4096];
    let len = exchange(&request, &mut answer).map_err(|e| {
        tracing::debug!(error = %e, "sock_diag lookup failed");
        Unattributed::LookupFailed
    })?;
    let message = NetlinkMessage::<SockDiagMessage>::deserialize(&answer[..len]).map_err(|e| {
        tracing::debug!(error = %e, "unparsable sock_diag answer");
        Unattributed::LookupFailed
    })?;
    if message.header.sequence_number != seq {
        return Err(Unattributed::LookupFailed);
    }
    match message.payload {
        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(resp)) => {
            let h = &resp.header;
            if h.state != TCP_ESTABLISHED {
                Err(Unattributed::NotEstablished)
            } else if h.socket_id.source_address != wanted.source_address
                || h.socket_id.source_port != wanted.source_port
                || h.socket_id.destination_address != wanted.destination_address
                || h.socket_id.destination_port != wanted.destination_port
            {
                Err(Unattributed::Mismatch)
            } else {
                Ok(h.uid)
            }
        }
        // ENOENT: no such socket here.
        NetlinkPayload::Error(e) if e.code.map(|c| c.get()) == Some(-nix::libc::ENOENT) => {
            Err(Unattributed::NoSocket)
        }
        NetlinkPayload::Error(e) => {
            tracing::debug!(error = ?e.code, "sock_diag lookup refused");
            Err(Unattributed::LookupFailed)
        }
        _ => Err(Unattributed::LookupFailed),
    }
}

thread_local! {
    /// One `sock_diag` socket per thread, opened on first use and kept: opening, binding and
    /// closing one per lookup cost more than the lookup itself.
    static DIAG: RefCell<Option<netlink_sys::Socket>> = const { RefCell::new(None) };
}

/// Sequence numbers of requests, so that an answer is never taken for another request's.
static SEQUENCE: AtomicU32 = AtomicU32::new(1);

fn open_diag() -> std::io::Result<netlink_sys::Socket> {
    let mut socket = netlink_sys::Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
    socket.set_non_blocking(true)?;
    Ok(socket)
}

/// Sends `request` on this thread's socket and reads the answer into `answer`. Anything left
/// over from an earlier request is discarded first; a socket that failed is reopened next time.
fn exchange(request: &[u8], answer: &mut [u8]) -> std::io::Result<usize> {
    DIAG.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(open_diag()?);
        }
        let socket = slot.as_ref().expect("opened above");
        for _ in 0..16 {
            if socket.recv(&mut &mut answer[..], 0).is_err() {
                break; // EAGAIN: nothing stale
            }
        }
        let result = socket
            .send(request, 0)
            .and_then(|_| socket.recv(&mut &mut answer[..], 0));
        if result.is_err() {
            *slot = None;
        }
        result
    })
}

/// Whether this process may open a `sock_diag` socket at all (a sandbox such as systemd's
/// `RestrictAddressFamilies=` without `AF_NETLINK` forbids it): without it no caller is ever
/// attributed, which the broker says at start and on reload.
///
/// # Errors
/// The reason the socket cannot be opened.
pub fn probe() -> std::io::Result<()> {
    netlink_sys::Socket::new(NETLINK_SOCK_DIAG).map(drop)
}

/// A user named in some role's `local_users`, and the role that user gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalCaller {
    /// The socket owner's UID.
    pub uid: u32,
    /// The user name (as configured, or the passwd name of a numeric UID when it has one).
    pub user: Option<Arc<str>>,
    /// The configured role name.
    pub role: Arc<str>,
}

/// Every configured local user by UID. Built with each configuration; the config check
/// guarantees a UID is listed by at most one role.
#[derive(Debug, Default)]
pub struct LocalUsers {
    by_uid: HashMap<u32, LocalCaller>,
}

/// What the socket owner says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local<'a> {
    /// The owner is a configured local user.
    Caller(&'a LocalCaller),
    /// The owner is known but listed by no role.
    Unlisted(u32),
    /// No owner the broker can vouch for.
    Unattributed(Unattributed),
}

impl Local<'_> {
    /// The UID, when the kernel told it.
    pub fn uid(&self) -> Option<u32> {
        match self {
            Local::Caller(c) => Some(c.uid),
            Local::Unlisted(uid) => Some(*uid),
            Local::Unattributed(_) => None,
        }
    }

    /// The user name, when configured.
    pub fn user(&self) -> Option<&str> {
        match self {
            Local::Caller(c) => c.user.as_deref(),
            _ => None,
        }
    }

    /// The role the caller gets through `local_users`.
    pub fn role(&self) -> Option<&str> {
        match self {
            Local::Caller(c) => Some(&c.role),
            _ => None,
        }
    }
}

impl LocalUsers {
    /// Indexes every role's `local_users`.
    pub fn build(config: &Config) -> LocalUsers {
        let mut by_uid = HashMap::new();
        for role in &config.roles {
            let name: Arc<str> = Arc::from(role.name.as_str());
            for u in &role.local_users {
                by_uid.entry(u.uid).or_insert_with(|| LocalCaller {
                    uid: u.uid,
                    user: u.name.as_deref().map(Arc::from),
                    role: Arc::clone(&name),
                });
            }
        }
        LocalUsers { by_uid }
    }

    /// Whether any role has `local_users` (connections are then attributed at accept).
    pub fn is_empty(&self) -> bool {
        self.by_uid.is_empty()
    }

    /// The configured caller with `uid`.
    pub fn get(&self, uid: u32) -> Option<&LocalCaller> {
        self.by_uid.get(&uid)
    }

    /// Who the connection's owner is, as far as `local_users` goes. With no configured
    /// local users the kernel is not asked at all.
    pub fn caller(&self, owner: Option<&SocketOwner>) -> Local<'_> {
        if self.by_uid.is_empty() {
            return Local::Unattributed(Unattributed::NotAsked);
        }
        let Some(owner) = owner else {
            return Local::Unattributed(Unattributed::NotAsked);
        };
        match owner.uid() {
            Ok(uid) => self.get(uid).map_or(Local::Unlisted(uid), Local::Caller),
            Err(why) => Local::Unattributed(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    /// This process's real UID, from /proc (no unsafe, no libc call).
    fn my_uid() -> u32 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn a_connection_in_this_namespace_is_attributed_to_its_owner() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        let owner = SocketOwner::accepted(&server, peer, server.local_addr().unwrap());
        // No NAT rule: the destination is the listener's own address.
        assert_eq!(owner.destination(), listener.local_addr().unwrap());
        assert!(!owner.looked_up());
        assert_eq!(owner.uid(), Ok(my_uid()));
        assert!(owner.looked_up());
    }

    #[test]
    fn the_per_thread_socket_answers_each_request_with_its_own_answer() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        let dst = server.local_addr().unwrap();
        let nowhere: SocketAddr = "127.0.0.1:9".parse().unwrap();
        for _ in 0..200 {
            assert_eq!(lookup_uid(peer, dst), Ok(my_uid()));
            assert_eq!(lookup_uid(nowhere, dst), Err(Unattributed::NoSocket));
        }
        drop(client);
    }

    #[test]
    fn the_probe_opens_a_sock_diag_socket() {
        probe().unwrap();
    }

    #[test]
    fn a_gone_socket_is_not_attributed() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        let dst = server.local_addr().unwrap();
        drop(client);
        drop(server);
        // The client is in TIME_WAIT or gone: never ESTABLISHED.
        assert!(lookup_uid(peer, dst).is_err());
    }

    #[test]
    fn a_listener_on_the_source_port_is_never_taken_for_the_client() {
        // The kernel falls back to a LISTEN socket bound to the source address and port when
        // no connected socket matches: such an answer must be refused.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let fake_peer: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let dst: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(
            lookup_uid(fake_peer, dst),
            Err(Unattributed::NotEstablished)
        );
        // Nothing at all on that tuple.
        drop(listener);
        assert_eq!(lookup_uid(fake_peer, dst), Err(Unattributed::NoSocket));
    }

    #[test]
    fn mixed_families_and_mapped_addresses() {
        let v4: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let v6: SocketAddr = "[::1]:80".parse().unwrap();
        assert_eq!(lookup_uid(v4, v6), Err(Unattributed::Mismatch));
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:1000".parse().unwrap();
        assert_eq!(unmap(mapped), v4);
        assert_eq!(unmap(v6), v6);
    }

    #[test]
    fn dual_stack_listener_attributes_v4_clients() {
        let Ok(listener) = TcpListener::bind("[::]:0") else {
            return; // no IPv6 on this machine
        };
        let port = listener.local_addr().unwrap().port();
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (server, peer) = listener.accept().unwrap();
        let owner = SocketOwner::accepted(&server, peer, server.local_addr().unwrap());
        assert_eq!(owner.uid(), Ok(my_uid()));
        drop(client);
    }
}
