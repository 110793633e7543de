//! `sts-broker`: parse the command line, load the config, hand over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sts_broker::commands;
use sts_broker::commands::{IamPolicyError, IamPolicyRequest};
use sts_broker::config::{Config, DEFAULT_CONFIG_PATH, ENV_CONFIG, LoadContext};
use sts_broker::daemon::{self, ServeError};
use sts_broker::iam::{PolicyDocument, PolicyFormat};
use sts_broker::logging::{self, LogFormat};

mod startup_pages;

/// sysexits: the command line asks for something that does not exist.
const EX_USAGE: u8 = 64;
/// sysexits: the config is invalid.
const EX_CONFIG: u8 = 78;
/// sysexits: a service (STS, a port) is unavailable.
const EX_UNAVAILABLE: u8 = 69;

#[derive(Parser, Debug)]
#[command(
    name = "sts-broker",
    version,
    about = "Assumes IAM roles through AWS STS ahead of expiry and serves the credentials to local workloads"
)]
struct Cli {
    /// Log format (default: json when stderr is not a terminal).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Debug)]
struct ConfigArg {
    /// Config file.
    #[arg(short = 'c', long = "config", env = ENV_CONFIG, default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon.
    Serve {
        #[command(flatten)]
        config: ConfigArg,
        /// Reload (as on SIGHUP) when the config file or a role's token file changes,
        /// checked every INTERVAL (default 10s): a ConfigMap/Secret update reaches the broker
        /// without a restart or a signal.
        #[arg(long, value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "10s", value_parser = humantime::parse_duration)]
        watch_config: Option<std::time::Duration>,
    },
    /// Validate the config and print a summary; lists every problem at once.
    Check(ConfigArg),
    /// Print the export lines a workload needs to use a role through the ECS endpoint.
    Env {
        #[command(flatten)]
        config: ConfigArg,
        /// Role name.
        #[arg(long)]
        role: String,
    },
    /// Assume a role once and print credential_process JSON (Version 1).
    CredentialProcess {
        #[command(flatten)]
        config: ConfigArg,
        /// Role name.
        #[arg(long)]
        role: String,
    },
    /// Print the IAM trust and permission policies each role needs (JSON Lines: one object per role).
    IamPolicy {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this role.
        #[arg(long)]
        role: Option<String>,
        /// The broker's IAM user or role ARN (an assumed-role ARN is converted to its role).
        /// Default: GetCallerIdentity with the [source] credentials.
        #[arg(long)]
        principal: Option<String>,
        /// json: one object per role per line; text: pretty, annotated with `#` lines.
        #[arg(long, value_enum, default_value = "json")]
        format: PolicyFormat,
        /// Print only this bare policy document (for file://). `trust` needs --role;
        /// `permission` without --role merges every role the broker's principal signs for.
        #[arg(long, value_enum)]
        only: Option<PolicyDocument>,
    },
    /// Print the nftables script that sends the local_users' IMDS traffic (169.254.169.254:80)
    /// to the broker's [imds] listener; apply it with `| nft -f -`.
    RedirectRules {
        #[command(flatten)]
        config: ConfigArg,
        /// Print the script that removes the rules instead (reads no config).
        #[arg(long)]
        remove: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = cli.log_format.unwrap_or_else(|| {
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            LogFormat::Pretty
        } else {
            LogFormat::Json
        }
    });
    let default_level = match cli.command {
        Command::Serve { .. } => tracing::level_filters::LevelFilter::INFO,
        _ => tracing::level_filters::LevelFilter::WARN,
    };
    logging::init(format, default_level);
    if let Command::RedirectRules { remove: true, .. } = cli.command {
        print!("{}", commands::redirect_rules_remove());
        return ExitCode::SUCCESS;
    }
    let ctx = LoadContext::from_system();
    let path = match &cli.command {
        Command::Serve { config: c, .. } | Command::Check(c) => &c.config,
        Command::Env { config, .. }
        | Command::CredentialProcess { config, .. }
        | Command::IamPolicy { config, .. }
        | Command::RedirectRules { config, .. } => &config.config,
    };
    let config = match Config::load(path, &ctx) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{} problem(s) in {}", errors.0.len(), path.display());
            return ExitCode::from(EX_CONFIG);
        }
    };
    match cli.command {
        Command::Check(_) => {
            print!("{}", commands::check_summary(&config));
            ExitCode::SUCCESS
        }
        Command::Env { role, .. } => match commands::env_lines(&config, &role) {
            Ok(lines) => {
                print!("{lines}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EX_CONFIG)
            }
        },
        Command::CredentialProcess { role, .. } => runtime().block_on(async {
            match commands::assume_once(&config, &role).await {
                Ok(c) => {
                    println!("{}", commands::credential_process_json(&c));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(EX_UNAVAILABLE)
                }
            }
        }),
        Command::IamPolicy {
            role,
            principal,
            format,
            only,
            ..
        } => runtime().block_on(async {
            let req = IamPolicyRequest {
                role,
                principal,
                format,
                only,
            };
            match commands::iam_policy(&config, &req).await {
                Ok(out) => {
                    for w in &out.warnings {
                        eprintln!("sts-broker: {w}");
                    }
                    print!("{}", out.stdout);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sts-broker: {e}");
                    ExitCode::from(match e {
                        IamPolicyError::Usage(_) => EX_USAGE,
                        IamPolicyError::Config(_) => EX_CONFIG,
                        IamPolicyError::Unavailable(_) => EX_UNAVAILABLE,
                    })
                }
            }
        }),
        Command::RedirectRules { .. } => match commands::redirect_rules(&config) {
            Ok(script) => {
                print!("{script}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sts-broker: {e}");
                ExitCode::from(EX_CONFIG)
            }
        },
        Command::Serve { watch_config, .. } => {
            let rt = runtime();
            let code = rt.block_on(serve(config, ctx, watch_config));
            // A write stuck on a dead disk (audit trail) must not keep the process alive.
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
            code
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime")
}

/// `serve`: the library runs the daemon; this maps how it ended to an exit code.
async fn serve(config: Config, ctx: LoadContext, watch: Option<std::time::Duration>) -> ExitCode {
    // Once ready, the binary releases the code pages start-up faulted in (footprint).
    let companion = async |broker: &sts_broker::Broker| {
        startup_pages::release_when_ready(broker).await;
    };
    match daemon::serve_with(config, ctx, watch, companion).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(ServeError::Signals(e)) => {
            tracing::error!(error = %e, "cannot install signal handlers");
            ExitCode::FAILURE
        }
        Err(ServeError::Start(e)) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("sts-broker: {e}");
            ExitCode::from(EX_UNAVAILABLE)
        }
    }
}
