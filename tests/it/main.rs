//! Integration tests: the broker against the fault-injecting fake STS and moto, read by real
//! clients (boto3, the AWS CLI, aws-config's ECS provider).
//!
//! Where the process does not matter the broker runs in the test's own process
//! (`inproc::spawn_broker`), often on a paused clock so that hours of refreshes and back-off
//! take milliseconds; where it does (signals, systemd, SDKs reading the environment, network
//! namespaces, what reaches the logs, memory) the real `sts-broker` binary runs
//! (`helpers::TestBroker`). Configs come from the typed `test_config::TestConfig` builder.
//!
//! Tests that need moto, boto3 or the AWS CLI find them in the venv that
//! `scripts/setup-test-deps.sh` creates (`STS_BROKER_TEST_VENV`, default `./.venv`).
//! Set `TEST_LOG=1` to see the brokers' logs.
// Tests and benches time real processes and real sockets: the wall and monotonic clocks
// are the point here (src/ asks crate::clock instead, see clippy.toml).
#![allow(clippy::disallowed_methods)]

mod audit;
mod clients;
mod ecs;
mod fake_sts;
mod fleet;
mod fuzz;
mod hardening;
mod hardening2;
mod helpers;
mod iam;
mod imds;
mod inproc;
mod issuer;
mod k8s;
mod kinds;
mod lifecycle;
mod local_users;
mod monitoring;
mod netns;
mod refresh;
mod relative_uri;
mod secrets;
mod test_config;
mod tls;
