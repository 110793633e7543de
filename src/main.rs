//! `sts-broker`: parse the command line, load the config, hand over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use sts_broker::commands::{IamPolicyError, IamPolicyRequest};
use sts_broker::config::{Config, DEFAULT_CONFIG_PATH, ENV_CONFIG, LoadContext};
use sts_broker::iam::{PolicyDocument, PolicyFormat};
use sts_broker::logging::{self, LogFormat};
use sts_broker::signals::{self, Control};
use sts_broker::{Broker, commands};

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

/// The config file and every token file of the configuration now serving.
fn watched_files(config: &std::path::Path, broker: &Broker) -> Vec<std::path::PathBuf> {
    let mut files = vec![config.to_path_buf()];
    files.extend(broker.token_files());
    files
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime")
}

async fn serve(config: Config, ctx: LoadContext, watch: Option<std::time::Duration>) -> ExitCode {
    for w in &config.warnings {
        tracing::warn!(warning = %w, "configuration warning");
    }
    let path = config.path.clone();
    let mut controls = match signals::controls() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let broker = match Broker::start(config).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("sts-broker: {e}");
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    // The supervisor borrows the broker; it ends before the broker is shut down.
    {
        let supervise = async {
            tokio::join!(
                sts_broker::systemd::supervise(&broker),
                startup_pages::release_when_ready(&broker)
            );
        };
        tokio::pin!(supervise);
        let mut watcher = watch.zip(path.clone()).map(|(every, path)| {
            tracing::info!(every_s = every.as_secs_f64(), config = %path.display(), "watching the config and token files for changes");
            let mut w = signals::FileWatch::new(every);
            w.changed(&watched_files(&path, &broker));
            (w, path)
        });
        loop {
            let control = tokio::select! {
                c = controls.next() => match c {
                    Some(c) => c,
                    None => break,
                },
                () = &mut supervise => continue,
                changed = async {
                    match &mut watcher {
                        Some((w, path)) => {
                            w.tick().await;
                            w.changed(&watched_files(path, &broker))
                        }
                        None => std::future::pending().await,
                    }
                } => {
                    if !changed {
                        continue;
                    }
                    tracing::info!("config or token file changed: reloading");
                    Control::Reload
                }
            };
            match control {
                Control::Reload => {
                    broker.reopen_audit().await;
                    let Some(path) = &path else { continue };
                    // Reading the files runs on the blocking pool, and this loop keeps
                    // answering signals meanwhile: a file that blocks (or is huge) cannot
                    // make SIGTERM go unheard.
                    let (load_path, load_ctx) = (path.clone(), ctx.clone());
                    let load =
                        tokio::task::spawn_blocking(move || Config::load(&load_path, &load_ctx));
                    tokio::pin!(load);
                    let loaded = loop {
                        tokio::select! {
                            r = &mut load => break Some(r),
                            c = controls.next() => match c {
                                Some(Control::Shutdown) | None => break None,
                                Some(Control::Reload) => {
                                    tracing::warn!("reload requested while one is running; ignored");
                                }
                            },
                        }
                    };
                    let Some(loaded) = loaded else { break };
                    let loaded = loaded.unwrap_or_else(|e| {
                        Err(sts_broker::config::ConfigErrors(vec![
                            sts_broker::config::ConfigError {
                                origin: path.display().to_string(),
                                scope: sts_broker::config::Scope::File,
                                key: None,
                                message: format!("reading the config failed: {e}"),
                            },
                        ]))
                    });
                    let result = match loaded {
                        Ok(new) => broker.reload(new).await,
                        Err(e) => {
                            let e = sts_broker::ReloadError::Invalid(e);
                            broker.metrics().observe_reload("error");
                            Err(e)
                        }
                    };
                    match result {
                        Ok(()) => sts_broker::systemd::status(
                            "serving credentials (configuration reloaded)",
                        ),
                        Err(e) => {
                            tracing::error!(error = %e, "reload failed; the previous configuration keeps serving");
                            sts_broker::systemd::status(
                                "reload failed; previous configuration serving",
                            );
                        }
                    }
                }
                Control::Shutdown => break,
            }
        }
    }
    tracing::info!("shutting down: draining connections");
    sts_broker::systemd::stopping();
    // A second SIGTERM/SIGINT while draining exits at once.
    tokio::select! {
        () = broker.shutdown() => ExitCode::SUCCESS,
        _ = async { while let Some(c) = controls.next().await { if c == Control::Shutdown { break; } } } => {
            tracing::warn!("second shutdown signal: exiting without waiting");
            ExitCode::SUCCESS
        }
    }
}
