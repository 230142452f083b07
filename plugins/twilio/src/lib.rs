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
//! * [`trace`]: every call's timeline and verdict (`callplane trace`, `callplane calls` in
//!   [`cli`], `GET /api/calls/{call_sid}/trace`); [`unverified`]: refused webhooks kept as
//!   evidence, bounded.

mod api;
mod book;
pub mod cli;
pub mod config;
pub mod directory;
pub mod doctor;
pub mod event;
pub mod ledger;
mod migrations;
mod outbound;
pub mod params;
pub mod provider;
pub mod readiness;
pub mod records;
pub mod signature;
pub mod simulate;
mod sql;
pub mod trace;
pub mod twiml;
pub mod unverified;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use callplane_plugin_api::openapi::RouteDoc;
use callplane_plugin_api::storage::Spool;
use callplane_plugin_api::{
    Access, CallBook, CallLedger, Capability, MediaRelay, RegisterError, Registrar, RoutePlugin, StartFailure,
};

/// The plugin, as the host links it (and as tests mount it with `testing::TestHost`).
pub const PLUGIN: RoutePlugin = RoutePlugin {
    name: "twilio",
    version: env!("CARGO_PKG_VERSION"),
    summary: "call webhooks active",
    requires: &["permissions"],
    critical: true,
    register,
    commands: &[simulate::SIMULATE, cli::TRACE, cli::CALLS, doctor::TWILIO],
    config: config::KEYS,
    deploy_checks: config::DEPLOY_CHECKS,
};

inventory::submit! { PLUGIN }

/// The spool file under `spool_dir` (`CALLPLANE_SPOOL_DIR`).
pub const SPOOL_FILE: &str = "twilio-calls.jsonl";
/// How often the spool is replayed.
pub const REPLAY_EVERY: Duration = Duration::from_secs(2);

/// How often old timeline rows are pruned.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Prunes the call timeline to `days` every [`PRUNE_EVERY`] (the first time a minute after the
/// start, not in the middle of the boot).
async fn prune_forever(db: callplane_plugin_api::storage::Db, days: i64) {
    let mut wait = Duration::from_secs(60);
    loop {
        tokio::time::sleep(wait).await;
        wait = PRUNE_EVERY;
        match trace::prune(&db, days, event::now_ms()).await {
            Ok(Some(0) | None) => {}
            Ok(Some(deleted)) => {
                tracing::info!(
                    deleted,
                    days,
                    "[TWILIO] call timeline rows older than the retention pruned"
                );
            }
            Err(error) => {
                tracing::warn!(error = %error, "[TWILIO] the call timeline could not be pruned; trying again later")
            }
        }
    }
}

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
    let db = reg.db().clone();
    let recorder = records::Recorder::new(db.clone(), spool, record_calls, reg.metrics());
    let caps = unverified::Caps {
        max_rows: reg
            .config()
            .integer("unverified_max_rows")
            .try_into()
            .unwrap_or(i64::MAX),
        per_client: reg
            .config()
            .integer("unverified_per_client")
            .try_into()
            .unwrap_or(i64::MAX),
    };
    let provider = provider::SignatureProvider::new(
        account.auth_token.clone(),
        settings.public_base_url.clone(),
        Some(provider::Evidence {
            recorder: recorder.clone(),
            instance_id: settings.instance_id.clone(),
            caps,
        }),
        reg.metrics(),
    );
    reg.migrations(migrations::MIGRATIONS);
    reg.data_check("CP112", Arc::new(|db| Box::pin(config::unencrypted_media_servers(db))));
    reg.provide_access(Capability::TwilioSignature, provider);
    let ledger = ledger::Ledger::new(db.clone());
    reg.offer::<dyn CallLedger>(Arc::new(ledger.clone()));
    reg.offer::<dyn CallBook>(Arc::new(book::Book::new(db.clone())));
    let relay = reg.want::<MediaRelay>();
    reg.state(webhooks::WebhookState {
        recorder: recorder.clone(),
        directory: records::Directory::new(db.clone(), recorder.outage().clone()),
        instance_id: settings.instance_id.clone(),
        streams: directory::StreamRoute::new(relay, settings.public_base_url.clone()),
        ledger,
    });
    let outbound = outbound::OutboundState::new(
        settings.public_base_url.clone(),
        settings.instance_id.clone(),
        account,
        reg.metrics(),
    );
    reg.state(outbound);
    let twiml = |summary: &str| RouteDoc::new(summary).text(200, "TwiML", "text/xml");
    reg.post(
        webhooks::INCOMING_CALL,
        Access::TwilioSignature,
        webhooks::incoming_call,
    )
    .doc(twiml(
        "Twilio: a call to a business number (\"A call comes in\"); answered with TwiML",
    ))
    .post(
        webhooks::OUTBOUND_CALL,
        Access::TwilioSignature,
        webhooks::outbound_call,
    )
    .doc(twiml(
        "Twilio: an outbound call we placed was answered; answered with TwiML",
    ))
    .post(webhooks::CALL_STATUS, Access::TwilioSignature, webhooks::call_status)
    .doc(twiml("Twilio: a call's status changed (\"Call status changes\")"))
    .post("/api/calls/outbound", Access::PageAccess("calls"), outbound::create)
    .doc(
        RouteDoc::new("Place an outbound call from the business's number through Twilio")
            .json_body::<outbound::OutboundRequest>()
            .object(201, "placed: req_id and Twilio's CallSid")
            .link(
                201,
                ("GET", "/api/calls/{call_sid}"),
                "call_sid",
                "$response.body#/call_sid",
            )
            .link(
                201,
                ("GET", "/api/calls/{call_sid}/trace"),
                "call_sid",
                "$response.body#/call_sid",
            )
            .error(502, "Twilio refused or failed (its code in twilio_code)")
            .error(
                504,
                "Twilio did not answer in time (the call may still be placed: trace the req_id)",
            ),
    )
    .get("/api/calls", Access::PageAccess("calls"), api::list_calls)
    .doc(
        RouteDoc::new("The business's calls, newest first")
            .query::<api::ListQuery>()
            .object(200, "{\"calls\": […], \"total\": n}"),
    )
    .get("/api/calls/{call_sid}", Access::PageAccess("calls"), api::get_call)
    .doc(RouteDoc::new("One call and its events").object(200, "the call"))
    .get(
        "/api/calls/{call_sid}/trace",
        Access::PageAccess("calls"),
        api::get_trace,
    )
    .doc(RouteDoc::new("One call's timeline and verdict, as `callplane trace` shows it").object(200, "the trace"));
    let retention_days = i64::try_from(reg.config().integer("trace_retention_days")).unwrap_or(i64::MAX);
    reg.background(
        "trace-retention",
        Arc::new(move || Box::pin(prune_forever(db.clone(), retention_days))),
    );
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
