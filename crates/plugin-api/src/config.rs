//! Configuration a plugin declares for itself: its keys live in its own table of `callplane.toml`
//! (`[twilio]`, `[calendar]`, …) and in the environment (`CALLPLANE_<PLUGIN>_<KEY>`, or a variable
//! the key names, such as `TWILIO_AUTH_TOKEN`). The host reads and validates every linked plugin's
//! keys before anything registers, reports bad values and unknown keys as CP010 naming the key
//! (never echoing a secret), and lists them all in `callplane config`. A plugin reads its values,
//! already valid, through [`crate::Registrar::config`].
//!
//! ```
//! use callplane_plugin_api::{ConfigKey, ValueKind};
//!
//! const CONFIG: &[ConfigKey] = &[
//!     ConfigKey::new("max_minutes", ValueKind::Integer { min: 1, max: 10_080 }, "480", "the longest appointment, in minutes"),
//!     ConfigKey::new("api_token", ValueKind::Text, "", "the CRM's token").secret(),
//! ];
//! assert_eq!(CONFIG[0].variable("calendar"), "CALLPLANE_CALENDAR_MAX_MINUTES");
//! assert_eq!(CONFIG[0].parse(" 30 ").as_deref(), Ok("30"));
//! assert!(CONFIG[0].parse("0").is_err());
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::Secret;

/// What the value of a [`ConfigKey`] must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// Any text (trimmed).
    Text,
    /// `true` or `false`.
    Bool,
    /// A whole number in `min..=max`.
    Integer {
        /// The smallest value allowed.
        min: u64,
        /// The largest value allowed.
        max: u64,
    },
    /// A file or directory path (not empty).
    Path,
    /// A file or directory path, or nothing (empty): an optional file such as a CA bundle.
    OptionalPath,
    /// An `http://` or `https://` base URL without credentials, query or fragment (kept without a
    /// trailing slash).
    Url,
}

impl ValueKind {
    /// How a value of this kind is described in findings and `callplane config`.
    pub fn describe(self) -> String {
        match self {
            Self::Text => "text".to_owned(),
            Self::Bool => "true or false".to_owned(),
            Self::Integer { min, max } => format!("a whole number from {min} to {max}"),
            Self::Path => "a path".to_owned(),
            Self::OptionalPath => "a path, or nothing".to_owned(),
            Self::Url => "an http(s) URL".to_owned(),
        }
    }
}

/// One configuration key of a plugin.
#[derive(Debug, Clone, Copy)]
pub struct ConfigKey {
    /// The key in the plugin's table of `callplane.toml`: lowercase `[a-z0-9_]`.
    pub name: &'static str,
    /// The environment variable, when it is not `CALLPLANE_<PLUGIN>_<NAME>` (Twilio's own
    /// `TWILIO_*` names, or a name older than plugin tables).
    pub env: Option<&'static str>,
    /// What the value must be.
    pub kind: ValueKind,
    /// The default, as it would be written in the file (must itself be valid).
    pub default: &'static str,
    /// Never shown: not in findings, not in `callplane config`.
    pub secret: bool,
    /// What the key is for, shown with a bad value.
    pub help: &'static str,
    /// A further check of the value (after its kind's), with the problem as the error.
    pub check: Option<ValueCheck>,
}

/// A check of a key's value beyond its kind: the problem as the error.
pub type ValueCheck = fn(&str) -> Result<(), String>;

impl ConfigKey {
    /// A key with the default variable, not secret, checked by its kind only.
    pub const fn new(name: &'static str, kind: ValueKind, default: &'static str, help: &'static str) -> Self {
        Self {
            name,
            env: None,
            kind,
            default,
            secret: false,
            help,
            check: None,
        }
    }

    /// Reads the value from `variable` instead of `CALLPLANE_<PLUGIN>_<NAME>`.
    pub const fn env(self, variable: &'static str) -> Self {
        Self {
            env: Some(variable),
            ..self
        }
    }

    /// Marks the value secret.
    pub const fn secret(self) -> Self {
        Self { secret: true, ..self }
    }

    /// Adds a check beyond the kind's.
    pub const fn check(self, check: ValueCheck) -> Self {
        Self {
            check: Some(check),
            ..self
        }
    }

    /// The environment variable of this key of `plugin`.
    pub fn variable(&self, plugin: &str) -> String {
        self.env.map_or_else(
            || {
                format!("CALLPLANE_{}_{}", plugin, self.name)
                    .to_uppercase()
                    .replace('-', "_")
            },
            str::to_owned,
        )
    }

    /// Validates `raw` and returns it normalised (trimmed; a URL without its trailing slash).
    ///
    /// # Errors
    /// What is wrong with the value.
    pub fn parse(&self, raw: &str) -> Result<String, String> {
        let value = raw.trim();
        let normal = match self.kind {
            ValueKind::Text => value.to_owned(),
            ValueKind::Bool => match value {
                "true" | "false" => value.to_owned(),
                _ => return Err("expected true or false".to_owned()),
            },
            ValueKind::Integer { min, max } => match value.parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => n.to_string(),
                _ => return Err(format!("expected {}", self.kind.describe())),
            },
            ValueKind::Path if value.is_empty() => return Err("expected a path".to_owned()),
            ValueKind::Path | ValueKind::OptionalPath => value.to_owned(),
            ValueKind::Url => base_url(value)?,
        };
        if let Some(check) = self.check {
            check(&normal)?;
        }
        Ok(normal)
    }
}

/// Validates an http(s) base URL and returns it without a trailing slash.
///
/// # Errors
/// What is wrong with it.
pub fn base_url(raw: &str) -> Result<String, String> {
    let url = url::Url::parse(raw.trim()).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("expected an http:// or https:// URL".to_owned());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".to_owned());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("a base URL has no query or fragment".to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("a base URL carries no credentials".to_owned());
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// The validated values of one plugin's keys, every declared key present (its default when not
/// set). Read with the typed getters; asking for a key the plugin did not declare is a bug in the
/// plugin and panics (inside `register`, the host reports it as CP006).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PluginConfig {
    values: BTreeMap<String, String>,
    secrets: Vec<String>,
}

impl std::fmt::Debug for PluginConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut map = f.debug_map();
        for (key, value) in &self.values {
            if self.secrets.contains(key) {
                map.entry(key, &"***");
            } else {
                map.entry(key, value);
            }
        }
        map.finish()
    }
}

impl PluginConfig {
    /// Every key of `keys` at its default.
    pub fn defaults(keys: &[ConfigKey]) -> Self {
        let mut config = Self::default();
        for key in keys {
            config.fill(key);
        }
        config
    }

    /// Sets `key` to its default unless it has a value.
    pub fn fill(&mut self, key: &ConfigKey) {
        if !self.values.contains_key(key.name) {
            let value = key.parse(key.default).unwrap_or_else(|_| key.default.to_owned());
            self.values.insert(key.name.to_owned(), value);
        }
        if key.secret && !self.secrets.iter().any(|s| s == key.name) {
            self.secrets.push(key.name.to_owned());
        }
    }

    /// Sets `key` to `value` (already valid: the host and tests set values).
    pub fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.values.insert(key.to_owned(), value.into());
        self
    }

    fn get(&self, key: &str) -> &str {
        self.values
            .get(key)
            .unwrap_or_else(|| panic!("configuration key {key:?} is not declared by this plugin"))
    }

    /// A text (or URL) value.
    ///
    /// # Panics
    /// When the plugin did not declare `key`.
    pub fn text(&self, key: &str) -> &str {
        self.get(key)
    }

    /// A secret value.
    ///
    /// # Panics
    /// When the plugin did not declare `key`.
    pub fn secret(&self, key: &str) -> Secret {
        Secret::new(self.get(key))
    }

    /// A `Bool` value.
    ///
    /// # Panics
    /// When the plugin did not declare `key`.
    pub fn boolean(&self, key: &str) -> bool {
        self.get(key) == "true"
    }

    /// An `Integer` value.
    ///
    /// # Panics
    /// When the plugin did not declare `key`, or declared it as another kind.
    pub fn integer(&self, key: &str) -> u64 {
        self.get(key)
            .parse()
            .unwrap_or_else(|_| panic!("configuration key {key:?} is not an integer key"))
    }

    /// A `Path` value.
    ///
    /// # Panics
    /// When the plugin did not declare `key`.
    pub fn path(&self, key: &str) -> PathBuf {
        PathBuf::from(self.get(key))
    }

    /// An `OptionalPath` value: `None` when empty.
    ///
    /// # Panics
    /// When the plugin did not declare `key`.
    pub fn optional_path(&self, key: &str) -> Option<PathBuf> {
        Some(self.get(key)).filter(|p| !p.is_empty()).map(PathBuf::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_checked_by_kind_and_normalised() {
        let url = ConfigKey::new("api_base", ValueKind::Url, "https://api.twilio.com", "");
        assert_eq!(
            url.parse("https://api.example.com/").unwrap(),
            "https://api.example.com"
        );
        for bad in ["ftp://x", "https://u:p@x", "https://x/?q=1", "nope"] {
            assert!(url.parse(bad).is_err(), "{bad}");
        }
        let flag = ConfigKey::new("record_calls", ValueKind::Bool, "true", "");
        assert!(flag.parse("yes").is_err());
        assert_eq!(flag.parse(" false").unwrap(), "false");
        let path = ConfigKey::new("spool_dir", ValueKind::Path, "data/spool", "");
        assert!(path.parse("  ").is_err());
        let checked = ConfigKey::new("sid", ValueKind::Text, "AC1", "").check(|v| {
            if v.starts_with("AC") {
                Ok(())
            } else {
                Err("expected AC…".to_owned())
            }
        });
        assert_eq!(checked.parse("XX").unwrap_err(), "expected AC…");
        assert_eq!(
            ConfigKey::new("x", ValueKind::Text, "", "")
                .env("TWILIO_X")
                .variable("twilio"),
            "TWILIO_X"
        );
        assert_eq!(
            ConfigKey::new("max_minutes", ValueKind::Text, "", "").variable("my-plugin"),
            "CALLPLANE_MY_PLUGIN_MAX_MINUTES"
        );
    }

    #[test]
    fn defaults_fill_every_key_and_secrets_do_not_print() {
        let keys = [
            ConfigKey::new("token", ValueKind::Text, "dev-token", "").secret(),
            ConfigKey::new("minutes", ValueKind::Integer { min: 1, max: 9 }, "5", ""),
        ];
        let mut config = PluginConfig::defaults(&keys);
        assert_eq!(config.integer("minutes"), 5);
        assert_eq!(config.secret("token").expose(), "dev-token");
        config.set("token", "hunter2");
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn an_undeclared_key_is_a_bug() {
        let asked = std::panic::catch_unwind(|| PluginConfig::default().text("nope").to_owned());
        assert!(asked.is_err());
    }
}
