//! `callplane-plugin-api`: the contract between the callplane host and its plugins.
//!
//! A plugin is one crate that submits one [`RoutePlugin`] value with `inventory`. At boot the host
//! collects every submission, orders them (requirements first, then name), calls each plugin's
//! `register` with a [`Registrar`], and gets back **data**: a route table in which every route
//! carries its [`Access`] policy, the plugin's migrations, shared state, access providers and
//! readiness checks. The host validates that whole table before anything is served, then mounts
//! it ([`app::build`], which the test kit uses too). `callplane check` and `callplane routes` use the same table without binding a
//! port.
//!
//! Handlers never check access themselves. The host wraps each route with the [`AccessProvider`]
//! registered for its policy's [`Capability`]: the `permissions` plugin resolves sessions
//! ([`Access::Authenticated`], [`Access::Admin`], [`Access::PageAccess`]) and the `twilio` plugin
//! verifies webhook signatures ([`Access::TwilioSignature`]). A route whose policy has no provider
//! is a boot error, never a runtime crash.
//!
//! # Example
//!
//! A complete plugin crate's `lib.rs` (the database pool is the host's: handlers take it as
//! `web::Data<Db>`; docs/plugins.md and the `examples/notes` crate show configuration keys, deploy
//! checks and commands too):
//!
//! ```
//! use actix_web::{HttpResponse, web};
//! use callplane_plugin_api::{
//!     Access, ApiError, Migration, Principal, RegisterError, Registrar, RoutePlugin,
//! };
//! use callplane_plugin_api::storage::{Db, sqlx};
//!
//! inventory::submit! {
//!     RoutePlugin {
//!         name: "notes",
//!         version: env!("CARGO_PKG_VERSION"),
//!         summary: "call notes",
//!         requires: &["permissions"],
//!         critical: false,
//!         register,
//!         commands: &[],
//!         config: &[],
//!         deploy_checks: &[],
//!     }
//! }
//!
//! const MIGRATIONS: &[Migration] = &[Migration::portable(
//!     1,
//!     "notes table",
//!     "CREATE TABLE notes (id {id}, business_id BIGINT NOT NULL, body TEXT NOT NULL);",
//! )];
//!
//! /// Declares the plugin's routes, migrations and state.
//! pub fn register(reg: &mut Registrar<'_>) -> Result<(), RegisterError> {
//!     reg.migrations(MIGRATIONS);
//!     reg.get("/api/notes", Access::PageAccess("calls"), list_notes);
//!     Ok(())
//! }
//!
//! async fn list_notes(who: Principal, db: web::Data<Db>) -> Result<HttpResponse, ApiError> {
//!     let rows: Vec<(i64, String)> =
//!         db.run(|pool| sqlx::query_as("SELECT id, body FROM notes WHERE business_id = $1 ORDER BY id")
//!             .bind(who.business_id)
//!             .fetch_all(pool))
//!             .await
//!             .map_err(|e| ApiError::internal(format!("listing notes: {e}")))?;
//!     Ok(HttpResponse::Ok().json(rows))
//! }
//! # fn main() {}
//! ```
//!
//! The host links the crate behind a `plugin-notes` feature with one line in `host/src/main.rs`
//! (`use callplane_plugin_notes as _;`): a crate that nothing references is not linked, and its
//! submission silently vanishes — which is why the host also checks a manifest of critical
//! plugins.

mod access;
pub mod app;
pub mod calls;
mod command;
mod config;
mod deadline;
mod error;
pub mod openapi;
mod registrar;
pub mod services;
mod settings;
pub mod testing;
pub mod timestamps;

pub use access::{Access, AccessProvider, Capability, Principal, changes_state};
pub use calls::{CallBook, CallLine, CallQuery, Trace};
pub use command::{CommandContext, PluginCommand};
pub use config::{ConfigKey, PluginConfig, ValueCheck, ValueKind, base_url};
pub use deadline::{BODY_DEADLINE, is_body_timeout, protective_headers};
pub use error::{ApiError, MAX_BODY, RegisterError, paging};
pub use registrar::{
    BackgroundTask, DataCheck, ReadinessCheck, ReadinessReport, Registrar, Registration, RouteSpec, StartFailure,
    StartHook,
};
pub use services::{CallLedger, CallNote, MediaRelay, StreamTarget, Wanted};
pub use settings::{Secret, Settings};

pub use callplane_storage as storage;
pub use callplane_storage::Migration;
pub use callplane_telemetry as telemetry;
pub use inventory;
pub use utoipa;

/// One plugin, submitted with `inventory::submit!` from the plugin's crate.
#[derive(Debug)]
pub struct RoutePlugin {
    /// Unique, lowercase `[a-z0-9_-]` name (`twilio`, `calendar`, …).
    pub name: &'static str,
    /// The plugin's version, usually `env!("CARGO_PKG_VERSION")`.
    pub version: &'static str,
    /// One line shown in the boot log after `registered`.
    pub summary: &'static str,
    /// Names of plugins this one needs; they register (and migrate) first.
    pub requires: &'static [&'static str],
    /// Whether the host must refuse to start when this plugin fails to register. (The host's
    /// critical manifest can make a plugin critical too; only the manifest can notice a plugin
    /// that is absent.)
    pub critical: bool,
    /// Declares the plugin's routes, migrations and state.
    pub register: fn(&mut Registrar<'_>) -> Result<(), RegisterError>,
    /// Command-line commands the plugin adds to `callplane` (usually none).
    pub commands: &'static [PluginCommand],
    /// The plugin's configuration keys (its table in `callplane.toml`; usually none).
    pub config: &'static [ConfigKey],
    /// Checks of the plugin's configuration for production, run by `check` (warnings) and
    /// `check --deploy` (errors).
    pub deploy_checks: &'static [DeployCheck],
}

/// A production check of a plugin (`CP1xx`): what is fine on a laptop but wrong in production.
#[derive(Debug, Clone, Copy)]
pub struct DeployCheck {
    /// The finding id, `CP1` and two digits, unique in the binary.
    pub id: &'static str,
    /// Returns the problem and a hint, or `None` when all is well. Gets the host's settings and
    /// the plugin's own configuration.
    pub run: fn(&Settings, &PluginConfig) -> Option<(String, String)>,
}

inventory::collect!(RoutePlugin);

/// Every plugin linked into this binary, in unspecified order (the host sorts them).
pub fn linked_plugins() -> Vec<&'static RoutePlugin> {
    inventory::iter::<RoutePlugin>.into_iter().collect()
}

/// Whether `name` is a valid plugin name: 1–32 characters of `[a-z0-9_-]`, starting with a letter.
pub fn is_valid_plugin_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= 32
        && bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_names() {
        for ok in ["twilio", "calendar", "a", "page-access_2"] {
            assert!(is_valid_plugin_name(ok), "{ok}");
        }
        for bad in ["", "Twilio", "2fa", "-x", "a b", "café", &"x".repeat(33)] {
            assert!(!is_valid_plugin_name(bad), "{bad}");
        }
    }
}
