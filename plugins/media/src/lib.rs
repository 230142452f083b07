//! `callplane-plugin-media`: the Twilio Media Streams relay, so the last hop of a call is seen,
//! bounded and survives a dead agent.
//!
//! With this plugin active, the twilio plugin answers a business that has a media server with
//! `<Connect><Stream url="wss://{public host}/ws/twilio/media">` instead of the media server's own
//! URL, and a fallback `<Say>` after `</Connect>`. Twilio's socket arrives here ([`relay`]), signed
//! like a webhook; the relay checks the call, opens the business's media server (the agent) and
//! relays frames both ways through bounded queues; it traces every step (`[TWILIO][STREAM] …`) and
//! adds it to the call's timeline, so `callplane trace` names the cause when an agent was down.
//! Twilio's own stream events arrive at [`status`].
//!
//! The plugin is the worked example of a **non-critical** plugin that cooperates with another
//! without importing it: it offers [`MediaRelay`] (which the twilio plugin wants) and needs
//! [`CallLedger`] (which the twilio plugin offers), both defined in the plugin API. If it fails to
//! register, the host runs `[BOOT][DEGRADED]` and calls stream straight to the media servers, as
//! they did before it existed.

pub mod config;
#[cfg(feature = "fake")]
pub mod fake;
pub mod messages;
pub mod metrics;
pub mod queue;
pub mod relay;
pub mod status;

use std::sync::Arc;

use callplane_plugin_api::openapi::RouteDoc;
use callplane_plugin_api::{Access, CallLedger, MediaRelay, RegisterError, Registrar, RoutePlugin};

/// The plugin, as the host links it.
pub const PLUGIN: RoutePlugin = RoutePlugin {
    name: "media",
    version: env!("CARGO_PKG_VERSION"),
    summary: "Media Streams relay at /ws/twilio/media",
    requires: &["twilio"],
    critical: false,
    register,
    commands: &[],
    config: config::KEYS,
    deploy_checks: &[],
};

inventory::submit! { PLUGIN }

/// Declares the relay's socket and its status webhook, offers the relay to the twilio plugin and
/// asks for the call ledger.
///
/// # Errors
/// A `ca_file` that cannot be read.
pub fn register(reg: &mut Registrar<'_>) -> Result<(), RegisterError> {
    let config = config::RelayConfig::of(reg.config())?;
    let ledger = reg.need::<dyn CallLedger>();
    let metrics = metrics::Metrics::register(reg.metrics());
    reg.state(relay::RelayState {
        config,
        ledger,
        metrics,
        instance_id: reg.settings().instance_id.clone(),
    });
    reg.offer(Arc::new(MediaRelay {
        path: relay::PATH,
        status_callback: status::PATH,
    }));
    reg.get(relay::PATH, Access::TwilioSignature, relay::upgrade)
        .doc(
            RouteDoc::new("Twilio Media Streams: the WebSocket a relayed call's audio arrives on (signed upgrade)")
                .empty(101, "the socket: Twilio's Media Streams messages both ways")
                .error(400, "not a WebSocket handshake")
                .error(503, "this instance relays as many streams as it may"),
        )
        .post(status::PATH, Access::TwilioSignature, status::stream_status)
        .doc(
            RouteDoc::new("Twilio: a relayed stream's events (`<Stream statusCallback>`)").text(
                200,
                "empty TwiML",
                "text/xml",
            ),
        );
    Ok(())
}
