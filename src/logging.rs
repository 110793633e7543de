//! Log set-up: `RUST_LOG` (default `info`), JSON or human format, on stderr (stdout is for
//! command output such as `check` and `credential-process`).
//!
//! The AWS SDK and HTTP stack log request and response bodies at debug/trace level — with the
//! external ID going out and the secret key and session token coming back. Their targets are
//! capped at `info` whatever `RUST_LOG` says, so `RUST_LOG=trace` is safe to use.
//!
//! `RUST_LOG` is a comma-separated list of `level`, `target=level` or `target` (= `trace`)
//! directives, the longest matching target winning, as with `tracing_subscriber`'s `EnvFilter`;
//! it is parsed into a [`Targets`] filter, which needs no regex engine (a sidecar's footprint:
//! BENCHMARKS.md). Span and field filters (`target[span{field}]=level`) are not supported:
//! such a directive is ignored with a warning on stderr, as `EnvFilter` ignores invalid ones.

use tracing::level_filters::LevelFilter;
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
    /// One JSON object per line: what log collectors parse.
    Json,
    /// Human-readable lines for a terminal.
    Pretty,
}

/// Installs the global subscriber; `default` applies when `RUST_LOG` is unset (the daemon
/// logs at `info`, one-shot commands at `warn` so their output stays readable).
pub fn init(format: LogFormat, default: LevelFilter) {
    let env = rust_log_filter(
        &std::env::var("RUST_LOG").unwrap_or_default(),
        default,
        |directive, why| eprintln!("ignoring `{directive}`: {why}"),
    );
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

/// The filter a `RUST_LOG` value asks for; `default` when it holds no valid directive (unset,
/// empty, or only invalid ones), as `EnvFilter`'s default directive. Each invalid directive is
/// passed to `ignored` and skipped.
pub fn rust_log_filter(
    spec: &str,
    default: LevelFilter,
    mut ignored: impl FnMut(&str, String),
) -> Targets {
    let mut filter = Targets::new();
    let mut valid = false;
    for directive in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if directive.contains(['[', '{']) {
            ignored(
                directive,
                "span and field filters are not supported".to_string(),
            );
            continue;
        }
        match directive.parse::<Targets>() {
            Ok(one) => {
                valid = true;
                if let Some(level) = one.default_level() {
                    filter = filter.with_default(level);
                }
                filter = filter.with_targets(&one);
            }
            Err(e) => ignored(directive, e.to_string()),
        }
    }
    if valid {
        filter
    } else {
        filter.with_default(default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    fn filter(spec: &str) -> (Targets, Vec<String>) {
        let mut ignored = Vec::new();
        let f = rust_log_filter(spec, LevelFilter::INFO, |d, _| ignored.push(d.to_string()));
        (f, ignored)
    }

    #[test]
    fn unset_or_empty_falls_back_to_the_default() {
        for spec in ["", " , ", "[{x}]=debug"] {
            let (f, _) = filter(spec);
            assert_eq!(f.default_level(), Some(LevelFilter::INFO), "{spec:?}");
            assert!(f.would_enable("anything", &Level::INFO));
            assert!(!f.would_enable("anything", &Level::DEBUG));
        }
    }

    #[test]
    fn a_bare_level_and_target_levels_longest_prefix_wins() {
        let (f, ignored) = filter("warn,sts_broker=debug,sts_broker::server=trace");
        assert!(ignored.is_empty());
        assert!(f.would_enable("h2", &Level::WARN));
        assert!(!f.would_enable("h2", &Level::INFO));
        assert!(f.would_enable("sts_broker::refresh", &Level::DEBUG));
        assert!(!f.would_enable("sts_broker::refresh", &Level::TRACE));
        assert!(f.would_enable("sts_broker::server::ecs", &Level::TRACE));
    }

    #[test]
    fn targets_alone_mean_trace_and_nothing_else_is_enabled() {
        let (f, _) = filter("sts_broker");
        assert!(f.would_enable("sts_broker::cache", &Level::TRACE));
        assert!(!f.would_enable("hyper", &Level::ERROR));
    }

    #[test]
    fn invalid_directives_are_ignored_and_the_rest_kept() {
        let (f, ignored) = filter("sts_broker=loud,debug,x=1=2,sts_broker[req{id}]=trace");
        assert_eq!(
            ignored,
            ["sts_broker=loud", "x=1=2", "sts_broker[req{id}]=trace"]
        );
        assert_eq!(f.default_level(), Some(LevelFilter::DEBUG));
        assert!(f.would_enable("sts_broker", &Level::DEBUG));
    }

    #[test]
    fn levels_are_case_insensitive_and_off_disables() {
        let (f, _) = filter("INFO,hyper=off");
        assert!(f.would_enable("sts_broker", &Level::INFO));
        assert!(!f.would_enable("hyper::proto", &Level::ERROR));
    }
}
