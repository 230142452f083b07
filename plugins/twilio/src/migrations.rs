//! Call records: `calls` (one row per CallSid) and `call_events` (every webhook, once).
//!
//! `call_events` is unique on `(call_sid, kind, sequence)` (sequence `-1` for the call's first
//! webhook), so a webhook Twilio retries is stored once. `calls.last_sequence` only ever grows:
//! a late, out-of-order status callback is kept as an event but never moves the call backwards.

use callplane_plugin_api::Migration;

/// The plugin's migrations. Never edit a shipped one: add a version.
pub(crate) const MIGRATIONS: &[Migration] = &[Migration::portable(
    1,
    "calls and call events",
    "
    CREATE TABLE calls (
        id {id},
        call_sid TEXT UNIQUE,
        req_id TEXT UNIQUE,
        business_id BIGINT,
        direction TEXT NOT NULL,
        from_number TEXT NOT NULL,
        to_number TEXT NOT NULL,
        status TEXT NOT NULL,
        lead_id TEXT,
        last_sequence BIGINT NOT NULL DEFAULT -1,
        error TEXT,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    CREATE INDEX calls_business_created ON calls (business_id, created_at);
    CREATE TABLE call_events (
        id {id},
        call_sid TEXT NOT NULL,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        sequence BIGINT NOT NULL,
        request_id TEXT,
        payload TEXT NOT NULL,
        received_at BIGINT NOT NULL,
        UNIQUE (call_sid, kind, sequence)
    );
",
)];
