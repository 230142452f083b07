//! The configuration values plugins may read.

use std::fmt;

use callplane_telemetry::TrustedProxies;

/// A secret string: never printed by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for signing or authenticating. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Twilio account settings (`TWILIO_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwilioSettings {
    /// `TWILIO_ACCOUNT_SID`.
    pub account_sid: String,
    /// `TWILIO_AUTH_TOKEN`: signs webhooks and authenticates REST calls.
    pub auth_token: Secret,
    /// `TWILIO_API_BASE`, without a trailing slash.
    pub api_base: String,
}

/// The validated configuration a plugin sees through [`crate::Registrar::settings`].
#[derive(Debug, Clone)]
pub struct Settings {
    /// The URL Twilio calls, without a trailing slash (`CALLPLANE_PUBLIC_BASE_URL`). Webhook
    /// signatures are computed over it, never over the `Host` header.
    pub public_base_url: String,
    /// Whose forwarding headers are believed (`CALLPLANE_TRUSTED_PROXIES`).
    pub trusted_proxies: TrustedProxies,
    /// How many instances share the database (`CALLPLANE_INSTANCES`).
    pub instances: u32,
    /// Where records that cannot reach the database wait, per instance (`CALLPLANE_SPOOL_DIR`).
    pub spool_dir: std::path::PathBuf,
    /// The longest appointment the calendar accepts, in minutes (`CALLPLANE_CALENDAR_MAX_MINUTES`).
    pub calendar_max_minutes: u32,
    /// Whether webhooks record calls (`CALLPLANE_RECORD_CALLS`, default true). `false` exists only to
    /// measure the webhook path without its database write (`just bench`); `check --deploy` refuses it.
    pub record_calls: bool,
    /// Twilio account settings.
    pub twilio: TwilioSettings,
}

/// The development placeholder account SID (`callplane check --deploy` rejects it).
pub const DEV_ACCOUNT_SID: &str = "AC00000000000000000000000000000000";
/// The development auth token (`callplane check --deploy` rejects it).
pub const DEV_AUTH_TOKEN: &str = "dev-auth-token-not-secret";

impl Default for Settings {
    /// The development defaults of `callplane.toml`.
    fn default() -> Self {
        Self {
            public_base_url: "http://127.0.0.1:8080".to_owned(),
            trusted_proxies: TrustedProxies::default(),
            instances: 1,
            spool_dir: std::path::PathBuf::from("data/spool"),
            calendar_max_minutes: 480,
            record_calls: true,
            twilio: TwilioSettings {
                account_sid: DEV_ACCOUNT_SID.to_owned(),
                auth_token: Secret::new(DEV_AUTH_TOKEN),
                api_base: "https://api.twilio.com".to_owned(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let settings = Settings::default();
        let shown = format!("{settings:?}");
        assert!(!shown.contains(DEV_AUTH_TOKEN), "{shown}");
        assert_eq!(settings.twilio.auth_token.expose(), DEV_AUTH_TOKEN);
    }
}
