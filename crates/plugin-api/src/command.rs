//! Command-line commands a plugin contributes: `callplane admin …` (permissions),
//! `callplane simulate …` (twilio).
//!
//! A command is declared in the plugin's [`RoutePlugin`](crate::RoutePlugin) (`commands`), not in
//! `register`, so the host can build its whole command line before it reads any configuration:
//! `callplane admin --help` prints the plugin's own help without touching the database, a usage
//! error exits 2 as every clap usage error does, `callplane help` lists the command with its
//! summary, and `callplane completions <shell>` completes its subcommands and flags.

use callplane_storage::Db;
use futures_util::future::LocalBoxFuture;

use crate::Settings;

/// A `callplane <name> …` command of a plugin.
#[derive(Debug, Clone, Copy)]
pub struct PluginCommand {
    /// The subcommand (`admin`): lowercase, unique among the host's and every plugin's commands.
    pub name: &'static str,
    /// One line for `callplane help` (the host adds which plugin provides it).
    pub summary: &'static str,
    /// Its arguments and subcommands, as a clap command (the host names it `name` and adds it
    /// under `callplane`). A derived parser's `CommandFactory::command` fits.
    pub definition: fn() -> clap::Command,
    /// Whether it uses the database: the host then refuses it when boot validation fails and
    /// applies pending migrations first. A command that only talks to a running server (say)
    /// sets `false` and works while the database is down.
    pub database: bool,
    /// Runs it with the parsed arguments; the error message is printed as
    /// `callplane <name>: <message>` and the process exits 1.
    pub run: fn(CommandContext) -> LocalBoxFuture<'static, Result<(), String>>,
}

/// What a [`PluginCommand`] runs with.
#[derive(Debug, Clone)]
pub struct CommandContext {
    /// The parsed arguments of the command (a derived parser's `FromArgMatches` reads them).
    pub matches: clap::ArgMatches,
    /// The database (migrated, when the command declared `database`).
    pub db: Db,
    /// Validated configuration.
    pub settings: Settings,
}
