//! `callplane simulate inbound|outbound-webhook|status`: signs a Twilio-shaped webhook with the
//! configured auth token, over the configured public URL, and posts it to a running server, so an
//! operator can verify a deployment without a phone.

use std::time::Duration;

use callplane_plugin_api::{CommandContext, PluginCommand};
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use ring::rand::{SecureRandom, SystemRandom};

use crate::config::Account;
use crate::signature;

#[derive(Debug, Parser)]
#[command(
    name = "simulate",
    about = "Sign and send a Twilio-shaped webhook to a running server"
)]
struct SimulateCli {
    /// Where to send it (default: the configured public base URL). The signature is always
    /// computed over the public base URL, as Twilio's would be.
    #[arg(long, global = true)]
    target: Option<String>,
    #[command(subcommand)]
    command: Simulation,
}

#[derive(Debug, Subcommand)]
enum Simulation {
    /// A call arriving at a business number (`/webhook/incoming_call`).
    Inbound {
        /// The called number (the business's).
        #[arg(long)]
        to: String,
        /// The caller.
        #[arg(long, default_value = "+15005550006")]
        from: String,
        /// The CallSid (default: a new random one).
        #[arg(long)]
        call_sid: Option<String>,
    },
    /// The callee of an outbound call answering (`/webhook/outbound_call`).
    OutboundWebhook {
        /// The callee.
        #[arg(long)]
        to: String,
        /// The business number calling.
        #[arg(long)]
        from: String,
        /// The lead.
        #[arg(long, default_value = "1")]
        lead_id: String,
        /// The business.
        #[arg(long, default_value = "1")]
        business_id: String,
        /// The CallSid (default: a new random one).
        #[arg(long)]
        call_sid: Option<String>,
    },
    /// A status callback (`/webhook/call_status`).
    Status {
        /// The call.
        #[arg(long)]
        call_sid: String,
        /// queued, initiated, ringing, in-progress, completed, busy, no-answer, canceled, failed.
        #[arg(long, default_value = "completed")]
        status: String,
        /// The callback's SequenceNumber.
        #[arg(long, default_value_t = 0)]
        sequence: u32,
        /// The called number.
        #[arg(long, default_value = "")]
        to: String,
        /// The caller.
        #[arg(long, default_value = "")]
        from: String,
    },
}

/// `callplane simulate …`: talks to a running server only, so it works while the database is down.
pub const SIMULATE: PluginCommand = PluginCommand {
    name: "simulate",
    summary: "Sign and send a Twilio-shaped webhook to a running server: inbound, outbound-webhook, status",
    definition: SimulateCli::command,
    database: false,
    run: |ctx| Box::pin(run(ctx)),
};

/// A random CallSid: `CA` and 32 hex digits.
pub fn random_call_sid() -> String {
    let mut bytes = [0u8; 16];
    let _ = SystemRandom::new().fill(&mut bytes);
    format!("CA{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

async fn run(ctx: CommandContext) -> Result<(), String> {
    let cli = SimulateCli::from_arg_matches(&ctx.matches).map_err(|e| e.to_string().trim_end().to_owned())?;
    let twilio = Account::of(ctx.settings.plugin("twilio"));
    let account = twilio.sid.clone();
    let (path, params) = match cli.command {
        Simulation::Inbound { to, from, call_sid } => {
            let sid = call_sid.unwrap_or_else(random_call_sid);
            let params = pairs(&[
                ("AccountSid", &account),
                ("ApiVersion", "2010-04-01"),
                ("CallSid", &sid),
                ("CallStatus", "ringing"),
                ("Called", &to),
                ("Caller", &from),
                ("Direction", "inbound"),
                ("From", &from),
                ("To", &to),
            ]);
            ("/webhook/incoming_call".to_owned(), params)
        }
        Simulation::OutboundWebhook {
            to,
            from,
            lead_id,
            business_id,
            call_sid,
        } => {
            let sid = call_sid.unwrap_or_else(random_call_sid);
            let query = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("lead_id", &lead_id)
                .append_pair("business_id", &business_id)
                .finish();
            let params = pairs(&[
                ("AccountSid", &account),
                ("ApiVersion", "2010-04-01"),
                ("CallSid", &sid),
                ("CallStatus", "in-progress"),
                ("Direction", "outbound-api"),
                ("From", &from),
                ("To", &to),
            ]);
            (format!("/webhook/outbound_call?{query}"), params)
        }
        Simulation::Status {
            call_sid,
            status,
            sequence,
            to,
            from,
        } => {
            let sequence = sequence.to_string();
            let params = pairs(&[
                ("AccountSid", &account),
                ("ApiVersion", "2010-04-01"),
                ("CallSid", &call_sid),
                ("CallStatus", &status),
                ("Direction", "inbound"),
                ("From", &from),
                ("SequenceNumber", &sequence),
                ("To", &to),
            ]);
            ("/webhook/call_status".to_owned(), params)
        }
    };
    let public = &ctx.settings.public_base_url;
    let signed_url = format!("{public}{path}");
    let signature = signature::compute(twilio.auth_token.expose(), &signed_url, &params);
    let target = format!(
        "{}{path}",
        cli.target.as_deref().unwrap_or(public).trim_end_matches('/')
    );
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params.iter())
        .finish();
    let client = awc::Client::builder().timeout(Duration::from_secs(20)).finish();
    let mut response = client
        .post(&target)
        .insert_header(("content-type", "application/x-www-form-urlencoded"))
        .insert_header(("x-twilio-signature", signature))
        .insert_header(("user-agent", "TwilioProxy/1.1 (callplane simulate)"))
        .send_body(body)
        .await
        .map_err(|e| format!("POST {target}: {e}"))?;
    let status = response.status();
    let text = response
        .body()
        .limit(1024 * 1024)
        .await
        .map_err(|e| format!("reading the answer: {e}"))?;
    println!("POST {target} -> {}", status.as_u16());
    if let Some(id) = response.headers().get("x-request-id").and_then(|v| v.to_str().ok()) {
        println!("X-Request-Id: {id}");
    }
    println!("{}", String::from_utf8_lossy(&text));
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the server answered {status}"))
    }
}
