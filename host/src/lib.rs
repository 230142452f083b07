//! `callplane`: the host. Configuration, the CLI, boot validation of every plugin and route, the
//! HTTP server with its health routes, and graceful shutdown.
//!
//! The binary (`src/main.rs`) only links the bundled plugins and calls [`cli::main`]. Test fixture
//! binaries link other plugins and call the same function, so every boot path is exercised as a
//! real process.

pub mod boot;
pub mod cli;
pub mod config;
pub mod deploy;
pub mod finding;
pub mod health;
pub mod report;
pub mod server;

pub use cli::{EXIT_CONFIG, main};
