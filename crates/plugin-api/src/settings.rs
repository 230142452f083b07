//! The configuration values plugins may read: the host's, and each plugin's own.

use std::fmt;

use std::collections::BTreeMap;

use callplane_telemetry::TrustedProxies;

use crate::PluginConfig;

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

/// The validated configuration a plugin sees through [`crate::Registrar::settings`]: the host's
/// values every plugin may need, and each plugin's own keys ([`crate::ConfigKey`]).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The URL Twilio calls, without a trailing slash (`CALLPLANE_PUBLIC_BASE_URL`). Webhook
    /// signatures are computed over it, never over the `Host` header.
    pub public_base_url: String,
    /// Whose forwarding headers are believed (`CALLPLANE_TRUSTED_PROXIES`).
    pub trusted_proxies: TrustedProxies,
    /// How many instances share the database (`CALLPLANE_INSTANCES`).
    pub instances: u32,
    /// This process's name among them (`CALLPLANE_INSTANCE_ID`; by default the host name and the
    /// port): on every log line and every recorded call event.
    pub instance_id: String,
    /// Each plugin's own configuration, by plugin name.
    pub plugins: BTreeMap<String, PluginConfig>,
}

impl Default for Settings {
    /// The development defaults of `callplane.toml`.
    fn default() -> Self {
        Self {
            public_base_url: "http://127.0.0.1:8080".to_owned(),
            trusted_proxies: TrustedProxies::default(),
            instances: 1,
            instance_id: format!("{}:8080", callplane_telemetry::hostname()),
            plugins: BTreeMap::new(),
        }
    }
}

impl Settings {
    /// The configuration of `plugin` (empty when the plugin declared no key).
    pub fn plugin(&self, plugin: &str) -> &PluginConfig {
        static NONE: std::sync::OnceLock<PluginConfig> = std::sync::OnceLock::new();
        self.plugins
            .get(plugin)
            .unwrap_or_else(|| NONE.get_or_init(PluginConfig::default))
    }

    /// Sets `key` of `plugin` to `value` (tests; the host fills every key from the file, the
    /// environment and the defaults).
    pub fn set(&mut self, plugin: &str, key: &str, value: impl Into<String>) -> &mut Self {
        self.plugins.entry(plugin.to_owned()).or_default().set(key, value);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "Secret(***)");
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn a_plugin_without_keys_reads_an_empty_configuration() {
        let mut settings = Settings::default();
        assert_eq!(settings.plugin("notes"), &PluginConfig::default());
        settings.set("notes", "colour", "blue");
        assert_eq!(settings.plugin("notes").text("colour"), "blue");
    }
}
