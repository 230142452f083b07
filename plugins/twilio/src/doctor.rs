//! `callplane twilio doctor [--number +E164] [--fix]`: how Twilio routes each business number,
//! compared with this deployment.
//!
//! A wrong Voice URL, a missing status callback or an `http://` URL looks exactly like the failure
//! callplane exists to prevent — "no log at all" — because the request never reaches us. The
//! doctor asks Twilio's REST API (`IncomingPhoneNumbers`) how every business number (or one) is
//! configured and says, one line per problem, what is wrong and the exact fix; `--fix` updates
//! what the API can update (Voice URL and method, status callback and method, the fallback URL when
//! `twilio.voice_fallback_url` names one) and says what it changed.

use std::time::Duration;

use actix_web::http::{StatusCode, header};
use base64::Engine as _;
use callplane_plugin_api::storage::{Db, sqlx};
use callplane_plugin_api::{CommandContext, PluginCommand, Settings};
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use serde::Deserialize;

use crate::config::Account;
use crate::webhooks::{CALL_STATUS, INCOMING_CALL};

/// How long one call to Twilio's API (or to our own `/livez`) may take.
const API_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Parser)]
#[command(name = "twilio", about = "Twilio's side of this deployment")]
struct TwilioCli {
    #[command(subcommand)]
    command: TwilioCommand,
}

#[derive(Debug, Subcommand)]
enum TwilioCommand {
    /// Compare how Twilio routes each business number with this deployment; exit 1 when
    /// something is wrong.
    #[command(
        after_help = "Checks, per number: it belongs to TWILIO_ACCOUNT_SID; Voice URL = <public URL>/webhook/incoming_call \
                      with POST; status callback = <public URL>/webhook/call_status with POST; a fallback URL on another \
                      host. Once: the public URL is https and answers /livez from here (a warning only); media stream \
                      URLs are wss://."
    )]
    Doctor {
        /// Only this number (E.164, as `admin create-business` took it).
        #[arg(long, value_parser = e164)]
        number: Option<String>,
        /// Update what the API can update, and say what changed.
        #[arg(long)]
        fix: bool,
    },
}

fn e164(text: &str) -> Result<String, String> {
    if crate::outbound::is_e164(text) {
        Ok(text.to_owned())
    } else {
        Err(format!("{text:?} is not an E.164 number such as +15005550006"))
    }
}

/// `callplane twilio doctor`.
pub const TWILIO: PluginCommand = PluginCommand {
    name: "twilio",
    summary: "Check how Twilio routes this deployment's numbers (doctor [--number] [--fix])",
    definition: TwilioCli::command,
    database: true,
    run: |ctx| Box::pin(run(ctx)),
};

async fn run(ctx: CommandContext) -> Result<(), String> {
    let cli = TwilioCli::from_arg_matches(&ctx.matches).map_err(|e| e.to_string().trim_end().to_owned())?;
    let TwilioCommand::Doctor { number, fix } = cli.command;
    let report = examine(&ctx.db, &ctx.settings, number.as_deref(), fix)
        .await
        .map_err(|e| e.to_string())?;
    print!("{}", report.text());
    match report.errors() {
        0 => Ok(()),
        n => Err(format!("doctor: {n} problem(s) (above)")),
    }
}

/// Why the doctor could not look at all.
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    /// Twilio's API could not be reached, or answered something other than JSON.
    #[error("Twilio's API at {api_base} cannot be used: {detail}")]
    Unreachable {
        /// `twilio.api_base`.
        api_base: String,
        /// What went wrong.
        detail: String,
    },
    /// Twilio refused the credentials.
    #[error(
        "Twilio refused the credentials of account {account} (HTTP {status}{code}): check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN"
    )]
    Credentials {
        /// The configured account.
        account: String,
        /// The HTTP status.
        status: u16,
        /// `, code 20003: Authenticate`, or empty.
        code: String,
    },
    /// Twilio's API answered an error.
    #[error("Twilio's API answered HTTP {status} to {what}: {message}")]
    Api {
        /// What was asked.
        what: String,
        /// The HTTP status.
        status: u16,
        /// Twilio's message.
        message: String,
    },
    /// The business numbers could not be read.
    #[error("the business numbers cannot be read from the database: {0}")]
    Database(#[from] sqlx::Error),
    /// Nothing to examine.
    #[error("no business number in the database: create one with `callplane admin create-business`")]
    NoNumbers,
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Calls go wrong: exit 1.
    Error,
    /// Worth knowing; exit 0.
    Warning,
}

/// One problem, for one number (or for the deployment).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// The number concerned, or `None` for the deployment as a whole.
    pub number: Option<String>,
    /// How bad it is.
    pub severity: Severity,
    /// What is wrong.
    pub problem: String,
    /// The exact fix.
    pub fix: String,
}

/// A change `--fix` made to a number.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    /// The number.
    pub number: String,
    /// `VoiceUrl`, `StatusCallback`, … as Twilio names the field.
    pub field: &'static str,
    /// What it was (empty when unset).
    pub from: String,
    /// What it is now.
    pub to: String,
}

/// What the doctor found.
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    /// The numbers examined, in order.
    pub numbers: Vec<String>,
    /// The problems left (after `--fix`, the ones it could not fix).
    pub findings: Vec<Finding>,
    /// What `--fix` changed.
    pub changes: Vec<Change>,
}

impl Report {
    /// The problems that make the doctor exit 1.
    pub fn errors(&self) -> usize {
        self.findings.iter().filter(|f| f.severity == Severity::Error).count()
    }

    /// One line per finding and per change, then a summary line.
    pub fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        for change in &self.changes {
            let from = if change.from.is_empty() {
                "(unset)"
            } else {
                &change.from
            };
            let _ = writeln!(
                out,
                "[DOCTOR] 🔧 {} {} changed: {from} → {}",
                change.number, change.field, change.to
            );
        }
        for number in &self.numbers {
            if !self.findings.iter().any(|f| f.number.as_ref() == Some(number)) {
                let _ = writeln!(
                    out,
                    "[DOCTOR] ✅ {number}: Voice URL, status callback and fallback as expected"
                );
            }
        }
        for f in &self.findings {
            let mark = match f.severity {
                Severity::Error => "❌",
                Severity::Warning => "⚠️",
            };
            let subject = f.number.as_deref().unwrap_or("deployment");
            let _ = writeln!(out, "[DOCTOR] {mark} {subject}: {}", f.problem);
            let _ = writeln!(out, "[DOCTOR]    fix: {}", f.fix);
        }
        let warnings = self.findings.len() - self.errors();
        let _ = writeln!(
            out,
            "[DOCTOR] {} number(s) examined: {} problem(s), {warnings} warning(s), {} change(s)",
            self.numbers.len(),
            self.errors(),
            self.changes.len()
        );
        out
    }
}

/// A number as `IncomingPhoneNumbers` describes it (the fields the doctor reads).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct IncomingNumber {
    /// `PN…`.
    pub sid: String,
    /// The account that owns it.
    #[serde(default)]
    pub account_sid: String,
    /// E.164.
    pub phone_number: String,
    /// "A call comes in".
    #[serde(default)]
    pub voice_url: Option<String>,
    /// Its method.
    #[serde(default)]
    pub voice_method: Option<String>,
    /// "Primary handler fails".
    #[serde(default)]
    pub voice_fallback_url: Option<String>,
    /// "Call status changes".
    #[serde(default)]
    pub status_callback: Option<String>,
    /// Its method.
    #[serde(default)]
    pub status_callback_method: Option<String>,
}

#[derive(Debug, Deserialize)]
struct NumberList {
    incoming_phone_numbers: Vec<IncomingNumber>,
}

/// What this deployment expects of every number.
#[derive(Debug, Clone)]
pub struct Expected {
    /// `<public URL>/webhook/incoming_call`.
    pub voice_url: String,
    /// `<public URL>/webhook/call_status`.
    pub status_callback: String,
    /// `twilio.voice_fallback_url`, when set.
    pub fallback: Option<String>,
    /// The public URL's host.
    pub public_host: String,
    /// `TWILIO_ACCOUNT_SID`.
    pub account: String,
}

impl Expected {
    /// From the host's settings and the plugin's configuration.
    pub fn of(settings: &Settings) -> Self {
        let public = settings.public_base_url.trim_end_matches('/');
        let config = settings.plugin("twilio");
        Self {
            voice_url: format!("{public}{INCOMING_CALL}"),
            status_callback: format!("{public}{CALL_STATUS}"),
            fallback: Some(config.text("voice_fallback_url").to_owned()).filter(|f| !f.is_empty()),
            public_host: host_of(public),
            account: config.text("account_sid").to_owned(),
        }
    }
}

fn host_of(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
        .unwrap_or_default()
}

fn is_post(method: Option<&str>) -> bool {
    method.is_some_and(|m| m.eq_ignore_ascii_case("POST"))
}

/// The fields `--fix` would set on `number` (Twilio's names), each with its current value.
pub fn fixes(expected: &Expected, number: &IncomingNumber) -> Vec<(&'static str, String, String)> {
    let current = |v: &Option<String>| v.clone().unwrap_or_default();
    let mut out = Vec::new();
    if number.voice_url.as_deref() != Some(expected.voice_url.as_str()) {
        out.push(("VoiceUrl", current(&number.voice_url), expected.voice_url.clone()));
    }
    if !is_post(number.voice_method.as_deref()) {
        out.push(("VoiceMethod", current(&number.voice_method), "POST".to_owned()));
    }
    if number.status_callback.as_deref() != Some(expected.status_callback.as_str()) {
        out.push((
            "StatusCallback",
            current(&number.status_callback),
            expected.status_callback.clone(),
        ));
    }
    if !is_post(number.status_callback_method.as_deref()) {
        out.push((
            "StatusCallbackMethod",
            current(&number.status_callback_method),
            "POST".to_owned(),
        ));
    }
    if let Some(fallback) = &expected.fallback
        && number.voice_fallback_url.as_deref() != Some(fallback.as_str())
    {
        out.push((
            "VoiceFallbackUrl",
            current(&number.voice_fallback_url),
            fallback.clone(),
        ));
    }
    out
}

/// Every problem of `number` against `expected`.
pub fn compare(expected: &Expected, number: &IncomingNumber) -> Vec<Finding> {
    let e164 = number.phone_number.clone();
    let fix_cmd = format!("callplane twilio doctor --number {e164} --fix");
    let finding = |problem: String, fix: String| Finding {
        number: Some(e164.clone()),
        severity: Severity::Error,
        problem,
        fix,
    };
    let mut out = Vec::new();
    if !number.account_sid.is_empty() && number.account_sid != expected.account {
        out.push(finding(
            format!(
                "belongs to account {}, not to TWILIO_ACCOUNT_SID {}",
                number.account_sid, expected.account
            ),
            "set TWILIO_ACCOUNT_SID (and TWILIO_AUTH_TOKEN) to the account that owns the number, or move the number"
                .to_owned(),
        ));
    }
    let shown = |v: &Option<String>| {
        v.clone()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "(unset)".to_owned())
    };
    let method = |v: &Option<String>| v.clone().unwrap_or_else(|| "?".to_owned());
    if number.voice_url.as_deref() != Some(expected.voice_url.as_str()) || !is_post(number.voice_method.as_deref()) {
        out.push(finding(
            format!(
                "Voice URL (\"A call comes in\") is {} {}; expected POST {}: calls to this number never reach callplane",
                method(&number.voice_method),
                shown(&number.voice_url),
                expected.voice_url
            ),
            format!(
                "{fix_cmd}, or in the console: Phone Numbers → {e164} → Voice configuration → A call comes in: Webhook, {}, HTTP POST",
                expected.voice_url
            ),
        ));
    }
    if number.status_callback.as_deref() != Some(expected.status_callback.as_str())
        || !is_post(number.status_callback_method.as_deref())
    {
        let problem = if number.status_callback.as_deref().is_none_or(str::is_empty) {
            "no status callback: callplane never learns that a call rang, was answered or ended".to_owned()
        } else {
            format!(
                "status callback is {} {}; expected POST {}",
                method(&number.status_callback_method),
                shown(&number.status_callback),
                expected.status_callback
            )
        };
        out.push(finding(
            problem,
            format!(
                "{fix_cmd}, or in the console: Voice configuration → Call status changes: {}, HTTP POST",
                expected.status_callback
            ),
        ));
    }
    let fallback = number.voice_fallback_url.as_deref().filter(|f| !f.is_empty());
    match (fallback, &expected.fallback) {
        (None, None) => out.push(finding(
            "no fallback URL (\"Primary handler fails\"): when callplane cannot answer, the caller hears Twilio's \
             application-error message"
                .to_owned(),
            "point it at a TwiML Bin or a static page on another host (console: Voice configuration → Primary handler \
             fails), or set twilio.voice_fallback_url and run --fix"
                .to_owned(),
        )),
        (Some(url), None) if host_of(url) == expected.public_host => out.push(finding(
            format!("fallback URL {url} is on callplane's own host: it fails whenever callplane does"),
            "point it at a TwiML Bin or a static page on another host".to_owned(),
        )),
        (_, Some(configured)) if fallback != Some(configured.as_str()) => out.push(finding(
            format!(
                "fallback URL is {}; twilio.voice_fallback_url is {configured}",
                shown(&number.voice_fallback_url)
            ),
            fix_cmd.clone(),
        )),
        _ => {}
    }
    out
}

/// A client for the account's REST API.
struct Api {
    client: awc::Client,
    account: Account,
}

impl Api {
    fn new(account: Account) -> Self {
        Self {
            client: awc::Client::builder().timeout(API_TIMEOUT).disable_redirects().finish(),
            account,
        }
    }

    fn numbers_url(&self) -> String {
        format!(
            "{}/2010-04-01/Accounts/{}/IncomingPhoneNumbers",
            self.account.api_base, self.account.sid
        )
    }

    fn authorization(&self) -> String {
        let pair = format!("{}:{}", self.account.sid, self.account.auth_token.expose());
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
    }

    /// Sends `request` and decodes Twilio's JSON answer.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        request: awc::ClientRequest,
        form: Option<String>,
    ) -> Result<T, DoctorError> {
        // A connection per request: a CLI makes a few, and a pooled connection the server (or a
        // proxy) closed in between would fail the next one.
        let request = request
            .force_close()
            .insert_header((header::AUTHORIZATION, self.authorization()))
            .insert_header((header::ACCEPT, "application/json"));
        let sent = match form {
            Some(body) => {
                request
                    .insert_header((header::CONTENT_TYPE, "application/x-www-form-urlencoded"))
                    .send_body(body)
                    .await
            }
            None => request.send().await,
        };
        let unreachable = |detail: String| DoctorError::Unreachable {
            api_base: self.account.api_base.clone(),
            detail,
        };
        let mut response = sent.map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        let body = response
            .body()
            .limit(1024 * 1024)
            .await
            .map_err(|e| unreachable(format!("the answer could not be read: {e}")))?;
        if status.is_success() {
            return serde_json::from_slice(&body)
                .map_err(|e| unreachable(format!("the answer to {what} is not what Twilio sends: {e}")));
        }
        let error: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let message = error["message"].as_str().unwrap_or("(no message)").to_owned();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let code = error["code"]
                .as_u64()
                .map(|c| format!(", code {c}: {message}"))
                .unwrap_or_default();
            return Err(DoctorError::Credentials {
                account: self.account.sid.clone(),
                status: status.as_u16(),
                code,
            });
        }
        Err(DoctorError::Api {
            what: what.to_owned(),
            status: status.as_u16(),
            message,
        })
    }

    /// The account's record of `e164`, if the account has that number.
    async fn find(&self, e164: &str) -> Result<Option<IncomingNumber>, DoctorError> {
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("PhoneNumber", e164)
            .finish();
        let url = format!("{}.json?{query}", self.numbers_url());
        let list: NumberList = self
            .call(&format!("the lookup of {e164}"), self.client.get(url), None)
            .await?;
        Ok(list.incoming_phone_numbers.into_iter().find(|n| n.phone_number == e164))
    }

    /// Sets `fields` on the number `sid`; returns the record as Twilio now has it.
    async fn update(
        &self,
        sid: &str,
        fields: &[(&'static str, String, String)],
    ) -> Result<IncomingNumber, DoctorError> {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        for (field, _, to) in fields {
            form.append_pair(field, to);
        }
        let url = format!("{}/{sid}.json", self.numbers_url());
        self.call(
            &format!("the update of {sid}"),
            self.client.post(url),
            Some(form.finish()),
        )
        .await
    }
}

/// Examines every business number (or `only`), fixing what the API can fix when `fix` is set.
///
/// # Errors
/// When Twilio's API or the database cannot be used, or there is no number to examine.
pub async fn examine(db: &Db, settings: &Settings, only: Option<&str>, fix: bool) -> Result<Report, DoctorError> {
    let businesses: Vec<(String, Option<String>)> = db
        .run(|pool| sqlx::query_as("SELECT phone_number, media_stream_url FROM businesses ORDER BY id").fetch_all(pool))
        .await?;
    let numbers: Vec<String> = match only {
        Some(number) => vec![number.to_owned()],
        None => businesses.iter().map(|(n, _)| n.clone()).collect(),
    };
    if numbers.is_empty() {
        return Err(DoctorError::NoNumbers);
    }
    let expected = Expected::of(settings);
    let api = Api::new(Account::of(settings.plugin("twilio")));
    let mut report = Report::default();
    report.findings.extend(deployment_findings(settings, &expected).await);
    for (number, media) in &businesses {
        if only.is_some_and(|o| o != number) {
            continue;
        }
        if let Some(url) = media.as_deref().filter(|u| !u.starts_with("wss://")) {
            report.findings.push(Finding {
                number: Some(number.clone()),
                severity: Severity::Error,
                problem: format!(
                    "media stream URL {url} is not wss://: Twilio refuses it (error 31920/31922) and the caller hears silence"
                ),
                fix: "serve the media server over TLS and set the business's media_stream_url to wss://…".to_owned(),
            });
        }
    }
    for e164 in &numbers {
        report.numbers.push(e164.clone());
        let Some(mut record) = api.find(e164).await? else {
            report.findings.push(Finding {
                number: Some(e164.clone()),
                severity: Severity::Error,
                problem: format!(
                    "is not a number of account {}: Twilio routes its calls elsewhere",
                    expected.account
                ),
                fix: "buy or port the number into this account, or set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN to \
                      the account that owns it"
                    .to_owned(),
            });
            continue;
        };
        let wanted = fixes(&expected, &record);
        if fix && !wanted.is_empty() {
            record = api.update(&record.sid, &wanted).await?;
            report
                .changes
                .extend(wanted.into_iter().map(|(field, from, to)| Change {
                    number: e164.clone(),
                    field,
                    from,
                    to,
                }));
        }
        report.findings.extend(compare(&expected, &record));
    }
    Ok(report)
}

/// The deployment's own problems: an `http` public URL (an error), a public URL that does not
/// answer `/livez` from this machine (a warning: the machine may not see its own public name).
async fn deployment_findings(settings: &Settings, expected: &Expected) -> Vec<Finding> {
    let public = settings.public_base_url.trim_end_matches('/');
    let mut out = Vec::new();
    if !public.starts_with("https://") {
        out.push(Finding {
            number: None,
            severity: Severity::Error,
            problem: format!("public URL {public} is not https: Twilio would send call data in clear text"),
            fix: "terminate TLS in front of callplane and set CALLPLANE_PUBLIC_BASE_URL=https://…, then run --fix"
                .to_owned(),
        });
    }
    let livez = format!("{public}/livez");
    let client = awc::Client::builder().timeout(Duration::from_secs(5)).finish();
    let answer = client.get(&livez).send().await;
    let problem = match answer {
        Ok(response) if response.status().is_success() => None,
        Ok(response) => Some(format!("answered HTTP {}", response.status().as_u16())),
        Err(error) => Some(error.to_string()),
    };
    if let Some(problem) = problem {
        out.push(Finding {
            number: None,
            severity: Severity::Warning,
            problem: format!(
                "{livez} does not answer from this machine ({problem}); Twilio must reach {}",
                expected.voice_url
            ),
            fix: "check DNS, TLS and the load balancer for the public URL (this machine may also just not see it)"
                .to_owned(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected() -> Expected {
        Expected {
            voice_url: "https://voice.example.com/webhook/incoming_call".to_owned(),
            status_callback: "https://voice.example.com/webhook/call_status".to_owned(),
            fallback: None,
            public_host: "voice.example.com".to_owned(),
            account: "AC1".to_owned(),
        }
    }

    fn right() -> IncomingNumber {
        IncomingNumber {
            sid: "PN1".to_owned(),
            account_sid: "AC1".to_owned(),
            phone_number: "+15005550006".to_owned(),
            voice_url: Some("https://voice.example.com/webhook/incoming_call".to_owned()),
            voice_method: Some("POST".to_owned()),
            voice_fallback_url: Some("https://handler.twilio.com/twiml/EH1".to_owned()),
            status_callback: Some("https://voice.example.com/webhook/call_status".to_owned()),
            status_callback_method: Some("POST".to_owned()),
        }
    }

    #[test]
    fn a_number_configured_right_has_nothing_to_fix() {
        assert!(compare(&expected(), &right()).is_empty());
        assert!(fixes(&expected(), &right()).is_empty());
    }

    #[test]
    fn each_wrong_field_is_one_finding_with_its_fix() {
        let wrong = IncomingNumber {
            voice_method: Some("GET".to_owned()),
            status_callback: None,
            voice_fallback_url: Some("https://voice.example.com/sorry".to_owned()),
            account_sid: "AC2".to_owned(),
            ..right()
        };
        let problems: Vec<String> = compare(&expected(), &wrong).into_iter().map(|f| f.problem).collect();
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(problems[0].contains("belongs to account AC2"));
        assert!(problems[1].contains("is GET https://voice.example.com/webhook/incoming_call; expected POST"));
        assert!(problems[2].starts_with("no status callback"));
        assert!(problems[3].contains("on callplane's own host"));
        let fields: Vec<&str> = fixes(&expected(), &wrong).into_iter().map(|f| f.0).collect();
        assert_eq!(fields, ["VoiceMethod", "StatusCallback"]);
    }

    #[test]
    fn numbers_are_e164() {
        assert!(e164("+15005550006").is_ok());
        for bad in ["15005550006", "+1", "+1500555000x", "+015005550006", ""] {
            assert!(e164(bad).is_err(), "{bad}");
        }
    }
}
