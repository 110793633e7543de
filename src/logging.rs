//! Log set-up: `RUST_LOG` (default `info`), JSON or human format, on stderr (stdout is for
//! command output such as `check` and `credential-process`).
//!
//! The AWS SDK and HTTP stack log request and response bodies at debug/trace level — with the
//! external ID going out and the secret key and session token coming back. Their targets are
//! capped at `info` whatever `RUST_LOG` says, so `RUST_LOG=trace` is safe to use.

use tracing::level_filters::LevelFilter;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Crates whose debug/trace output can carry secrets.
pub const CAPPED_TARGETS: &[&str] = &[
    "aws_config",
    "aws_credential_types",
    "aws_runtime",
    "aws_sdk_sts",
    "aws_sigv4",
    "aws_smithy_http",
    "aws_smithy_http_client",
    "aws_smithy_runtime",
    "aws_smithy_runtime_api",
    "aws_smithy_types",
    "aws_smithy_xml",
    "aws_smithy_query",
    "hyper",
    "hyper_util",
    "h2",
    "rustls",
];

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Installs the global subscriber; `default` applies when `RUST_LOG` is unset (the daemon
/// logs at `info`, one-shot commands at `warn` so their output stays readable).
pub fn init(format: LogFormat, default: LevelFilter) {
    let env = EnvFilter::builder()
        .with_default_directive(default.into())
        .from_env_lossy();
    let caps = CAPPED_TARGETS.iter().fold(
        Targets::new().with_default(LevelFilter::TRACE),
        |t, target| t.with_target(*target, LevelFilter::INFO),
    );
    let registry = tracing_subscriber::registry().with(env).with(caps);
    match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(std::io::stderr),
            )
            .init(),
        LogFormat::Pretty => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .init(),
    }
}
