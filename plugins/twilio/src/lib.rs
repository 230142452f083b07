//! `callplane-plugin-twilio`: Twilio voice webhooks, validated and traced, with call records that
//! are never lost.
//!
//! * [`signature`]: `X-Twilio-Signature` exactly as Twilio's SDKs compute it.
//! * [`provider`]: the `TwilioSignature` access provider; logs the `[TWILIO][…] hit` line of every
//!   webhook on arrival, before the signature check or any database work.
//! * [`records`]: call records in the database, or the durable spool when the database is down or
//!   slow; replayed in the background; idempotent by CallSid, ordered by SequenceNumber.
//! * The webhooks answer TwiML; `GET /api/calls` and `GET /api/calls/{call_sid}` list a business's
//!   calls.

mod api;
pub mod config;
pub mod directory;
pub mod event;
mod migrations;
mod outbound;
pub mod params;
pub mod provider;
pub mod readiness;
pub mod records;
pub mod signature;
pub mod simulate;
mod sql;
pub mod twiml;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use callplane_plugin_api::storage::Spool;
use callplane_plugin_api::{Access, Capability, RegisterError, Registrar, RoutePlugin, StartFailure};

/// The plugin, as the host links it (and as tests mount it with `testing::TestHost`).
pub const PLUGIN: RoutePlugin = RoutePlugin {
    name: "twilio",
    version: env!("CARGO_PKG_VERSION"),
    summary: "call webhooks active",
    requires: &["permissions"],
    critical: true,
    register,
    commands: &[simulate::SIMULATE],
    config: config::KEYS,
    deploy_checks: config::DEPLOY_CHECKS,
};

inventory::submit! { PLUGIN }

/// The spool file under `spool_dir` (`CALLPLANE_SPOOL_DIR`).
pub const SPOOL_FILE: &str = "twilio-calls.jsonl";
/// How often the spool is replayed.
pub const REPLAY_EVERY: Duration = Duration::from_secs(2);

/// Declares the webhooks, the calls API, the signature provider, the migrations, the spool (created
/// when the server starts), its replay and its readiness check.
///
/// # Errors
/// Never: everything it needs is validated configuration.
pub fn register(reg: &mut Registrar<'_>) -> Result<(), RegisterError> {
    let settings = reg.settings().clone();
    let account = config::Account::of(reg.config());
    let record_calls = reg.config().boolean("record_calls");
    let gauges = readiness::SpoolGauges::register(reg.metrics());
    let spool_max_bytes = reg.config().integer("spool_max_bytes");
    let spool = Arc::new(Spool::at(reg.config().path("spool_dir").join(SPOOL_FILE)).with_max_bytes(spool_max_bytes));
    let preparing = spool.clone();
    reg.on_start(
        "spool",
        Arc::new(move || {
            preparing.prepare().map_err(|e| match e.kind() {
                std::io::ErrorKind::ResourceBusy => StartFailure {
                    id: "CP111",
                    message: format!("{e}: two processes would corrupt one spool"),
                    hint: "stop the other process, or give this one its own CALLPLANE_SPOOL_DIR".to_owned(),
                },
                _ => StartFailure::from(format!(
                    "cannot open the call spool {} (CALLPLANE_SPOOL_DIR): {e}",
                    preparing.path().display()
                )),
            })
        }),
    );
    let provider = provider::SignatureProvider::new(
        account.auth_token.clone(),
        settings.public_base_url.clone(),
        reg.metrics(),
    );
    let db = reg.db().clone();
    let recorder = records::Recorder::new(db.clone(), spool, record_calls, reg.metrics());
    reg.migrations(migrations::MIGRATIONS);
    reg.provide_access(Capability::TwilioSignature, provider);
    reg.state(webhooks::WebhookState {
        recorder: recorder.clone(),
        directory: records::Directory::new(db, recorder.outage().clone()),
    });
    let outbound = outbound::OutboundState::new(settings.public_base_url.clone(), account, reg.metrics());
    reg.state(outbound);
    reg.post(
        webhooks::INCOMING_CALL,
        Access::TwilioSignature,
        webhooks::incoming_call,
    )
    .post(
        webhooks::OUTBOUND_CALL,
        Access::TwilioSignature,
        webhooks::outbound_call,
    )
    .post(webhooks::CALL_STATUS, Access::TwilioSignature, webhooks::call_status)
    .post("/api/calls/outbound", Access::PageAccess("calls"), outbound::create)
    .get("/api/calls", Access::PageAccess("calls"), api::list_calls)
    .get("/api/calls/{call_sid}", Access::PageAccess("calls"), api::get_call);
    let (replayer, replay_gauges) = (recorder.clone(), gauges.clone());
    reg.background(
        "spool-replay",
        Arc::new(move || Box::pin(replayer.clone().replay_forever(REPLAY_EVERY, replay_gauges.clone()))),
    );
    reg.readiness(
        "spool",
        Arc::new(move || {
            let report = readiness::spool_readiness(recorder.spool(), &gauges, spool_max_bytes);
            Box::pin(std::future::ready(report))
        }),
    );
    Ok(())
}
