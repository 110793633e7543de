//! Who is calling (DESIGN §5): the one seam that turns a request's credentials and its peer
//! into a caller, so that handlers ask one question and no way of proving a caller leaks into
//! the cache or the STS code. Static tokens live in [`crate::state::TokenIndex`]; this module
//! adds the socket's owner (§10).
//!
//! `identity` knows `config` and nothing of caches, STS or protocols.

pub mod socket_owner;

pub use socket_owner::{LocalCaller, LocalUsers, SocketOwner, Unattributed};
