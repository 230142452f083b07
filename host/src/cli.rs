//! The command line (docs/cli.md).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use callplane_plugin_api::{PluginCommand, linked_plugins};
use callplane_storage::Db;
use callplane_telemetry::{Console, LogSettings};
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand, ValueEnum};
use prometheus_client::registry::Registry;

use crate::boot::{self, BootPlan};
use crate::config::{self, Config};
use crate::deploy;
use crate::finding::{Finding, Level, any_at_least};
use crate::health::host_routes;
use crate::report;
use crate::server;

/// `EX_CONFIG`: validation failed, nothing was started.
pub const EXIT_CONFIG: u8 = 78;

/// callplane: the call-plane host. Validates every plugin and route before it serves.
#[derive(Debug, Parser)]
#[command(name = "callplane", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file (default: ./callplane.toml when present). Also CALLPLANE_CONFIG.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate, migrate, bind and serve until SIGTERM/SIGINT.
    Serve {
        /// Apply no migration: refuse to start (CP012) when one is pending, so that migrations
        /// run as a separate job and the serving database role needs no DDL rights.
        #[arg(long)]
        no_migrate: bool,
    },
    /// Run the full boot validation without binding a port (the CI boot-check job).
    Check {
        /// Also treat the production checklist (CP1xx) as errors and probe the database.
        #[arg(long)]
        deploy: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Lowest finding level that fails the check (exit 78).
        #[arg(long, value_enum, default_value_t = FailLevel::Error)]
        fail_level: FailLevel,
    },
    /// List the route table: METHOD PATH PLUGIN ACCESS CRITICAL (or the OpenAPI 3.1 document).
    Routes {
        /// Output format.
        #[arg(long, value_enum, default_value_t = RoutesFormat::Text)]
        format: RoutesFormat,
    },
    /// List the plugins: name, version, critical, requires, status.
    Plugins {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Show every configuration key: its effective value, where it came from (default, file,
    /// env), secrets redacted; and the platform's variables that were ignored.
    Config {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Apply pending migrations of every plugin (`migrate status`: only show where they stand).
    Migrate {
        /// What to do instead of applying.
        #[command(subcommand)]
        action: Option<MigrateAction>,
    },
    /// Print a shell completion script (plugin commands included).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// `callplane migrate` subcommands.
#[derive(Debug, Subcommand)]
pub enum MigrateAction {
    /// Applied and pending migrations per plugin; exit 1 when one is pending (or changed since it
    /// was applied). Reads only.
    Status {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

/// Output format of `check`, `routes` and `plugins`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people.
    Text,
    /// For machines (shapes in docs/cli.md).
    Json,
}

/// Output format of `routes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoutesFormat {
    /// For people.
    Text,
    /// For machines (shape in docs/cli.md).
    Json,
    /// The OpenAPI 3.1 document, as `GET /openapi.json` serves it.
    Openapi,
}

/// `--fail-level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FailLevel {
    /// Fail on errors only.
    Error,
    /// Fail on warnings too.
    Warning,
}

/// The whole command line: the host's commands and every linked plugin's (a plugin command whose
/// name is taken is left out here and reported by `check` as CP002).
pub fn command_line() -> clap::Command {
    let mut cli = Cli::command();
    for plugin in linked_plugins() {
        for command in plugin.commands {
            if cli.find_subcommand(command.name).is_none() {
                let about = format!("{} (from the {} plugin)", command.summary, plugin.name);
                cli = cli.subcommand((command.definition)().name(command.name).about(about));
            }
        }
    }
    cli
}

/// The names of the host's own commands (`help` included).
pub fn host_command_names() -> Vec<String> {
    Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_owned())
        .chain(std::iter::once("help".to_owned()))
        .collect()
}

/// The plugin command named `name`, if a linked plugin has one.
fn plugin_command(name: &str) -> Option<&'static PluginCommand> {
    linked_plugins()
        .into_iter()
        .flat_map(|p| p.commands.iter())
        .find(|c| c.name == name)
}

/// Parses the process arguments and runs the command. Fixture binaries in tests call this too.
/// Help and usage errors are clap's (exit 0 and 2), before any configuration is read.
#[must_use]
pub fn main() -> ExitCode {
    let started = Instant::now();
    // One TLS crypto provider for the whole process (awc and sqlx both use rustls): installed
    // explicitly, so a second provider compiled in can never make the first TLS use panic.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let matches = command_line().get_matches();
    // A plugin's command, unless the host has one of that name (then the plugin's was left out).
    let plugin = matches
        .subcommand()
        .filter(|(name, _)| Cli::command().find_subcommand(name).is_none())
        .and_then(|(name, sub)| Some((plugin_command(name)?, sub.clone())));
    match plugin {
        Some((command, sub)) => {
            let file = matches.get_one::<PathBuf>("config").cloned();
            run_plugin(command, sub, file.as_deref())
        }
        None => run(Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()), started),
    }
}

/// Runs a plugin's command: configuration, then [`run_plugin_command`].
fn run_plugin(command: &'static PluginCommand, matches: clap::ArgMatches, file: Option<&Path>) -> ExitCode {
    let env = config::process_env();
    let (config, findings) = config::load(file, &env, &linked_plugins());
    let _logs = quiet_logging(&config, &env);
    eprintln!("{}", config.file_line());
    actix_web::rt::System::new().block_on(run_plugin_command(command, matches, &config, findings))
}

/// Runs a parsed command line.
pub fn run(cli: Cli, started: Instant) -> ExitCode {
    let env = config::process_env();
    let (config, mut findings) = config::load(cli.config.as_deref(), &env, &linked_plugins());
    // Held until the runtime is done: dropping it flushes every buffered log line.
    let _logs = match cli.command {
        Command::Serve { .. } => server::init_logging(&config, &mut findings),
        _ => quiet_logging(&config, &env),
    };
    // `check` and `config` print it with their result; `serve` logs it.
    if matches!(
        cli.command,
        Command::Routes { .. } | Command::Plugins { .. } | Command::Migrate { .. }
    ) {
        eprintln!("{}", config.file_line());
    }
    actix_web::rt::System::new().block_on(async move {
        match cli.command {
            Command::Serve { no_migrate } => server::run(config, findings, started, no_migrate).await,
            Command::Check {
                deploy,
                format,
                fail_level,
            } => check(&config, findings, deploy, format, fail_level).await,
            Command::Routes { format } => {
                let (plan, findings) = validate(&config, findings);
                match format {
                    RoutesFormat::Text => print!("{}", report::routes_text(&plan)),
                    RoutesFormat::Json => println!("{}", report::routes_json(&plan)),
                    RoutesFormat::Openapi => println!(
                        "{}",
                        serde_json::to_string_pretty(&report::openapi_json(&plan.routes)).unwrap_or_default()
                    ),
                }
                finish_listing(&findings)
            }
            Command::Plugins { format } => {
                let (plan, findings) = validate(&config, findings);
                match format {
                    Format::Text => print!("{}", report::plugins_text(&plan.plugins)),
                    Format::Json => println!("{}", serde_json::json!({ "plugins": plan.plugins })),
                }
                finish_listing(&findings)
            }
            Command::Config { format } => {
                match format {
                    Format::Text => print!("{}", report::config_text(&config, &linked_plugins())),
                    Format::Json => println!("{}", report::config_json(&config, &linked_plugins())),
                }
                finish_listing(&findings)
            }
            Command::Migrate { action: None } => run_migrate(&config, findings).await,
            Command::Migrate {
                action: Some(MigrateAction::Status { format }),
            } => migrate_status(&config, findings, format).await,
            Command::Completions { shell } => {
                clap_complete::generate(shell, &mut command_line(), "callplane", &mut std::io::stdout());
                ExitCode::SUCCESS
            }
        }
    })
}

/// Commands other than `serve` log to standard error (their standard output is their result) and
/// write no files. Quiet unless RUST_LOG asks for more.
fn quiet_logging(
    config: &Config,
    env: &std::collections::BTreeMap<String, String>,
) -> Option<callplane_telemetry::LogGuard> {
    let filter = if env.contains_key("RUST_LOG") {
        config.log_filter.clone()
    } else {
        "warn".to_owned()
    };
    callplane_telemetry::logging::init(&LogSettings {
        format: config.log_format,
        filter,
        dir: None,
        console: Console::Stderr,
    })
    .ok()
}

/// Config findings plus the boot plan's, without binding or migrating.
pub fn validate(config: &Config, mut findings: Vec<Finding>) -> (BootPlan, Vec<Finding>) {
    let db = lazy_db(config, &mut findings);
    let mut registry = Registry::default();
    let plan = boot::plan(config, &linked_plugins(), &db, &mut registry, host_routes());
    findings.extend(plan.findings.iter().cloned());
    (plan, findings)
}

/// The lazily connecting pool (a URL that cannot be used is a CP010 finding; the pool then points
/// at an in-memory database so validation can go on).
pub fn lazy_db(config: &Config, findings: &mut Vec<Finding>) -> Db {
    Db::connect_lazy(&config.database_url).unwrap_or_else(|e| {
        findings.push(Finding::error(
            "CP010",
            None,
            format!("configuration key database_url cannot be used: {e}"),
            "e.g. sqlite://data/callplane.db or postgres://user:password@host/db",
        ));
        Db::connect_lazy("sqlite::memory:").expect("an in-memory SQLite URL is always valid")
    })
}

fn finish_listing(findings: &[Finding]) -> ExitCode {
    print_findings(findings);
    if any_at_least(findings, Level::Error) {
        eprintln!("{}", report::fatal_line(findings));
        ExitCode::from(EXIT_CONFIG)
    } else {
        ExitCode::SUCCESS
    }
}

async fn check(
    config: &Config,
    findings: Vec<Finding>,
    deploy: bool,
    format: Format,
    fail_level: FailLevel,
) -> ExitCode {
    let (plan, mut findings) = validate(config, findings);
    let level = if deploy { Level::Error } else { Level::Warning };
    findings.extend(deploy::static_checks(config, &plan.active_plugins(), level));
    if deploy {
        let mut ignored = Vec::new();
        let db = lazy_db(config, &mut ignored);
        match deploy::database_check(&db, level).await {
            Some(unreachable) => findings.push(unreachable),
            None => findings.extend(deploy::data_checks(&plan, &db, level).await),
        }
    }
    let threshold = match fail_level {
        FailLevel::Error => Level::Error,
        FailLevel::Warning => Level::Warning,
    };
    let failed = any_at_least(&findings, threshold);
    match format {
        Format::Json => println!("{}", report::check_json(!failed, config, &plan.plugins, &findings)),
        Format::Text => {
            println!("{}", config.file_line());
            for p in &plan.plugins {
                match p.status {
                    boot::PluginStatus::Active => println!("{}", report::registered_line(p)),
                    boot::PluginStatus::Disabled => println!("{}", report::degraded_line(p)),
                    _ => {}
                }
            }
            for finding in &findings {
                for line in finding.lines() {
                    println!("{line}");
                }
            }
            if failed {
                println!("{}", report::fatal_line(&findings));
            } else {
                let (errors, warnings) = crate::finding::counts(&findings);
                println!(
                    "[BOOT] check passed: plugins={} routes={} errors={errors} warnings={warnings}",
                    plan.active.len(),
                    plan.routes.len()
                );
            }
        }
    }
    if failed {
        ExitCode::from(EXIT_CONFIG)
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs a command a plugin contributes (`admin` from `permissions`): validation must pass, and a
/// command that uses the database gets it migrated first, so it works on a fresh database.
async fn run_plugin_command(
    command: &PluginCommand,
    matches: clap::ArgMatches,
    config: &Config,
    findings: Vec<Finding>,
) -> ExitCode {
    let name = command.name;
    let refusal = format!("callplane {name}: refusing: boot validation failed");
    let Some((plan, db)) = validated(config, findings, &refusal) else {
        return ExitCode::FAILURE;
    };
    if command.database
        && let Err(e) = plan.migrate(&db).await
    {
        eprintln!(
            "callplane {name}: cannot use the database {} (bringing its schema up to date first failed): {e}",
            db.redacted_url()
        );
        return ExitCode::FAILURE;
    }
    let context = callplane_plugin_api::CommandContext {
        matches,
        db: db.clone(),
        settings: config.settings.clone(),
    };
    let result = (command.run)(context).await;
    db.close().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("callplane {name}: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The boot plan and the database for a command that needs both, or `None` after printing the
/// findings and `refusal` when validation fails.
fn validated(config: &Config, findings: Vec<Finding>, refusal: &str) -> Option<(BootPlan, Db)> {
    let (plan, findings) = validate(config, findings);
    if any_at_least(&findings, Level::Error) {
        print_findings(&findings);
        eprintln!("{refusal}");
        return None;
    }
    let mut ignored = Vec::new();
    Some((plan, lazy_db(config, &mut ignored)))
}

/// Every finding's two lines on standard error.
fn print_findings(findings: &[Finding]) {
    for finding in findings {
        for line in finding.lines() {
            eprintln!("{line}");
        }
    }
}

async fn migrate_status(config: &Config, findings: Vec<Finding>, format: Format) -> ExitCode {
    let Some((plan, db)) = validated(config, findings, "[MIGRATE] ❌ cannot tell: boot validation failed") else {
        return ExitCode::FAILURE;
    };
    let list = match plan.migration_status(&db).await {
        Ok(list) => list,
        Err(e) => {
            eprintln!(
                "[MIGRATE] ❌ cannot read the schema versions of {}: {e}",
                db.redacted_url()
            );
            return ExitCode::FAILURE;
        }
    };
    let behind = list.iter().filter(|m| m.state.needs_attention()).count();
    match format {
        Format::Json => println!(
            "{}",
            serde_json::json!({ "database": db.redacted_url(), "up_to_date": behind == 0, "migrations": list })
        ),
        Format::Text => {
            print!("{}", report::migrations_text(&list));
            if behind == 0 {
                println!(
                    "[MIGRATE] up to date: {} migration(s) applied to {}",
                    list.len(),
                    db.redacted_url()
                );
            } else {
                println!(
                    "[MIGRATE] {behind} migration(s) pending or changed in {}: run `callplane migrate`",
                    db.redacted_url()
                );
            }
        }
    }
    if behind == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn run_migrate(config: &Config, findings: Vec<Finding>) -> ExitCode {
    let Some((plan, db)) = validated(
        config,
        findings,
        "[MIGRATE] ❌ refusing to migrate: boot validation failed",
    ) else {
        return ExitCode::FAILURE;
    };
    match plan.migrate(&db).await {
        Ok(applied) => {
            for m in &applied {
                println!(
                    "[MIGRATE] applied plugin={} version={} ({})",
                    m.plugin, m.version, m.description
                );
            }
            println!(
                "[MIGRATE] done: {} migration(s) applied to {}",
                applied.len(),
                db.redacted_url()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("[MIGRATE] ❌ {e}");
            ExitCode::FAILURE
        }
    }
}
