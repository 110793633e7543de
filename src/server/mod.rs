//! The HTTP listeners. Handlers read the cache, metrics and config snapshot; they never reach
//! STS, the source credentials or the refresh scheduler.

pub mod admin;
pub mod ecs;
pub mod http;
pub mod imds;
