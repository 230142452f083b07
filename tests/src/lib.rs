//! `callplane-e2e`: end-to-end tests that start hosts as real processes.
//!
//! * [`fixtures`]: fixture plugins (register functions, handlers, fake access providers). The
//!   `inventory::submit!` lines live in the fixture binaries under `src/bin/`, one binary per
//!   scenario, because a submission is linked into every binary that links its crate.
//! * [`harness`]: starting a binary in a private sandbox (own port, database, log directory),
//!   waiting for its ready line, talking HTTP to it, signalling it.
//! * [`hop`]: a TCP hop to PostgreSQL that a test (or the bench) cuts to take the database away.

pub mod fixtures;
pub mod harness;
pub mod hop;
