//! Configuration: `callplane.toml` overridden by environment variables (docs/cli.md has the table).
//!
//! Every problem becomes a CP010 finding naming the key (and the variable it came from), and every
//! problem is reported, not only the first. A key with a bad value keeps its default so the rest of
//! the validation can still run; the finding alone stops the boot. Secret values are never echoed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use callplane_plugin_api::{ConfigKey, RoutePlugin, Settings, ValueKind, is_valid_plugin_name};
use callplane_storage::{DbKind, redact_url};
use callplane_telemetry::{LogFormat, TrustedProxies, logging};

use crate::finding::Finding;

/// The environment variable naming the config file.
pub const CONFIG_ENV: &str = "CALLPLANE_CONFIG";
/// The config file read when none is named.
pub const DEFAULT_CONFIG_FILE: &str = "callplane.toml";
/// The system-wide config file, looked for last.
pub const SYSTEM_CONFIG_FILE: &str = "/etc/callplane/callplane.toml";

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `CALLPLANE_BIND`.
    pub bind: SocketAddr,
    /// `CALLPLANE_DATABASE_URL`.
    pub database_url: String,
    /// `CALLPLANE_CRITICAL_PLUGINS`, de-duplicated, in the order given.
    pub critical_plugins: Vec<String>,
    /// `CALLPLANE_LOG_DIR`.
    pub log_dir: PathBuf,
    /// `CALLPLANE_LOG_FORMAT`.
    pub log_format: LogFormat,
    /// `RUST_LOG`.
    pub log_filter: String,
    /// `CALLPLANE_SHUTDOWN_DRAIN_SECS`.
    pub shutdown_drain_secs: u64,
    /// What plugins see: public base URL, trusted proxies, instances, Twilio account.
    pub settings: Settings,
    /// The file the configuration came from, if any.
    pub file: Option<PathBuf>,
    /// How that file was found (`--config`, `CALLPLANE_CONFIG`, `./callplane.toml`, …), or the
    /// places looked in when there is none.
    pub file_origin: String,
    /// Where each key's effective value came from, by its name in the file (`bind`,
    /// `twilio.auth_token`); absent: the default.
    pub sources: BTreeMap<String, Source>,
    /// `CALLPLANE_*` variables the platform injected (Kubernetes service links), ignored.
    pub platform_variables: Vec<String>,
}

/// Where a configuration value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The built-in default.
    Default,
    /// The configuration file.
    File,
    /// An environment variable.
    Env,
}

impl Source {
    /// `default`, `file` or `env`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::File => "file",
            Self::Env => "env",
        }
    }
}

impl Config {
    /// Which configuration file is in use and how it was found, for every command to say:
    /// `config file: /srv/cp/callplane.toml (from --config)`, or `config file: none (looked for …)`.
    pub fn file_line(&self) -> String {
        match &self.file {
            Some(file) => format!("config file: {} (from {})", file.display(), self.file_origin),
            None => format!(
                "config file: none (looked for {}; defaults and environment only)",
                self.file_origin
            ),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: "sqlite://data/callplane.db".to_owned(),
            critical_plugins: ["permissions", "calendar", "twilio"].map(str::to_owned).to_vec(),
            log_dir: PathBuf::from("data/logs"),
            log_format: LogFormat::Text,
            log_filter: "info".to_owned(),
            shutdown_drain_secs: 5,
            settings: Settings::default(),
            file: None,
            file_origin: String::new(),
            sources: BTreeMap::new(),
            platform_variables: Vec::new(),
        }
    }
}

/// One configuration key of the host: its name in the file and its environment variable.
#[derive(Debug)]
pub struct Key {
    /// The key in `callplane.toml`.
    pub file: &'static str,
    /// Its environment variable.
    pub env: &'static str,
    /// Whether its value is never shown.
    pub secret: bool,
}

const fn key(file: &'static str, env: &'static str) -> Key {
    Key {
        file,
        env,
        secret: false,
    }
}

/// The host's keys, in the order of the configuration table in docs/cli.md. Each plugin declares
/// its own ([`callplane_plugin_api::ConfigKey`]), under its table.
pub const KEYS: &[Key] = &[
    key("bind", "CALLPLANE_BIND"),
    key("database_url", "CALLPLANE_DATABASE_URL"),
    key("public_base_url", "CALLPLANE_PUBLIC_BASE_URL"),
    key("trusted_proxies", "CALLPLANE_TRUSTED_PROXIES"),
    key("critical_plugins", "CALLPLANE_CRITICAL_PLUGINS"),
    key("instances", "CALLPLANE_INSTANCES"),
    key("instance_id", "CALLPLANE_INSTANCE_ID"),
    key("log_dir", "CALLPLANE_LOG_DIR"),
    key("log_format", "CALLPLANE_LOG_FORMAT"),
    key("log_filter", "RUST_LOG"),
    key("shutdown_drain_secs", "CALLPLANE_SHUTDOWN_DRAIN_SECS"),
];

/// A key as findings name it: its name in the file (`twilio.auth_token` for a plugin's), its
/// variable, and whether its value may be shown.
#[derive(Debug, Clone, Copy)]
struct Named<'a> {
    file: &'a str,
    env: &'a str,
    secret: bool,
}

impl<'a> From<&'a Key> for Named<'a> {
    fn from(key: &'a Key) -> Self {
        Named {
            file: key.file,
            env: key.env,
            secret: key.secret,
        }
    }
}

/// One key of one plugin, with its full name and variable.
struct PluginKey {
    plugin: &'static str,
    key: &'static ConfigKey,
    file: String,
    env: String,
}

impl PluginKey {
    fn named(&self) -> Named<'_> {
        Named {
            file: &self.file,
            env: &self.env,
            secret: self.key.secret,
        }
    }
}

/// Every key of every plugin in `plugins`.
fn plugin_keys(plugins: &[&'static RoutePlugin]) -> Vec<PluginKey> {
    plugins
        .iter()
        .flat_map(|p| {
            p.config.iter().map(|key| PluginKey {
                plugin: p.name,
                key,
                file: format!("{}.{}", p.name, key.name),
                env: key.variable(p.name),
            })
        })
        .collect()
}

/// A raw value and where it came from.
enum Raw {
    File(toml::Value),
    Env(String),
}

struct Loader {
    findings: Vec<Finding>,
    file_label: String,
    platform_variables: Vec<String>,
}

impl Loader {
    fn bad<'k>(&mut self, key: impl Into<Named<'k>>, raw: &Raw, problem: &str, hint: &str) {
        let key = key.into();
        let source = match raw {
            Raw::File(_) => format!("configuration key `{}` in {}", key.file, self.file_label),
            Raw::Env(_) => format!("environment variable {} (key `{}`)", key.env, key.file),
        };
        // URLs may carry credentials (`postgres://app:password@…`): shown with the password masked.
        let text = |value: &str| {
            if key.file.ends_with("url") || key.file.ends_with("api_base") {
                redact_url(value)
            } else {
                value.to_owned()
            }
        };
        let shown = match (key.secret, raw) {
            (true, _) => "<secret>".to_owned(),
            (false, Raw::File(toml::Value::String(value))) => format!("{:?}", text(value)),
            (false, Raw::File(value)) => value.to_string(),
            (false, Raw::Env(value)) => format!("{:?}", text(value)),
        };
        self.findings.push(Finding::error(
            "CP010",
            None,
            format!("{source} has an invalid value {shown}: {problem}"),
            hint,
        ));
    }

    fn string(&mut self, key: &Key, raw: &Raw) -> Option<String> {
        match raw {
            Raw::Env(value) => Some(value.clone()),
            Raw::File(toml::Value::String(value)) => Some(value.clone()),
            Raw::File(_) => {
                self.bad(key, raw, "expected a string", "quote the value");
                None
            }
        }
    }

    fn list(&mut self, key: &Key, raw: &Raw) -> Option<Vec<String>> {
        match raw {
            Raw::Env(value) => Some(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ),
            Raw::File(toml::Value::Array(items)) => {
                let strings: Option<Vec<String>> = items.iter().map(|v| v.as_str().map(str::to_owned)).collect();
                if strings.is_none() {
                    self.bad(key, raw, "expected an array of strings", "write e.g. [\"a\", \"b\"]");
                }
                strings
            }
            Raw::File(_) => {
                self.bad(key, raw, "expected an array of strings", "write e.g. [\"a\", \"b\"]");
                None
            }
        }
    }

    fn integer(&mut self, key: &Key, raw: &Raw, range: std::ops::RangeInclusive<u64>) -> Option<u64> {
        let parsed = match raw {
            Raw::Env(value) => value.trim().parse::<u64>().ok(),
            Raw::File(toml::Value::Integer(n)) => u64::try_from(*n).ok(),
            Raw::File(_) => None,
        };
        match parsed {
            Some(n) if range.contains(&n) => Some(n),
            _ => {
                let problem = format!("expected a whole number from {} to {}", range.start(), range.end());
                self.bad(key, raw, &problem, "write a plain number, e.g. 5");
                None
            }
        }
    }
}

/// The configuration files looked for when none is named, in order: `./callplane.toml`,
/// `$XDG_CONFIG_HOME/callplane/callplane.toml` (`~/.config/…` when that is unset), then
/// [`SYSTEM_CONFIG_FILE`]. Each with how it is shown.
pub fn config_candidates(env: &BTreeMap<String, String>) -> Vec<(PathBuf, String)> {
    let mut candidates = vec![(PathBuf::from(DEFAULT_CONFIG_FILE), format!("./{DEFAULT_CONFIG_FILE}"))];
    let non_empty = |name: &str| env.get(name).filter(|v| !v.is_empty());
    if let Some(xdg) = non_empty("XDG_CONFIG_HOME") {
        candidates.push((
            Path::new(xdg).join("callplane").join(DEFAULT_CONFIG_FILE),
            format!("$XDG_CONFIG_HOME/callplane/{DEFAULT_CONFIG_FILE}"),
        ));
    } else if let Some(home) = non_empty("HOME") {
        candidates.push((
            Path::new(home).join(".config/callplane").join(DEFAULT_CONFIG_FILE),
            format!("~/.config/callplane/{DEFAULT_CONFIG_FILE}"),
        ));
    }
    candidates.push((PathBuf::from(SYSTEM_CONFIG_FILE), SYSTEM_CONFIG_FILE.to_owned()));
    candidates
}

/// The configuration file to read and how it was found: `file` (`--config`), else
/// `CALLPLANE_CONFIG`, else the first of [`config_candidates`] that exists. `None` with the places
/// looked in when there is none.
fn discover(file: Option<&Path>, env: &BTreeMap<String, String>) -> (Option<PathBuf>, String) {
    if let Some(file) = file {
        return (Some(file.to_path_buf()), "--config".to_owned());
    }
    if let Some(file) = env.get(CONFIG_ENV).filter(|v| !v.is_empty()) {
        return (Some(PathBuf::from(file)), CONFIG_ENV.to_owned());
    }
    let candidates = config_candidates(env);
    match candidates.iter().find(|(path, _)| path.is_file()) {
        Some((path, shown)) => (Some(path.clone()), shown.clone()),
        None => (
            None,
            candidates
                .into_iter()
                .map(|(_, shown)| shown)
                .collect::<Vec<_>>()
                .join(", "),
        ),
    }
}

/// Reads the configuration of the host and of `plugins` from `file` (or the file [`discover`]
/// finds) and the environment `env`. Returns the configuration (defaults where values were bad;
/// every plugin's keys filled in; relative paths of the file and of the defaults resolved against
/// the file's directory) and the findings: CP010 for every problem, CP011 when neither a file nor
/// the environment configures anything.
pub fn load(
    file: Option<&Path>,
    env: &BTreeMap<String, String>,
    plugins: &[&'static RoutePlugin],
) -> (Config, Vec<Finding>) {
    let mut config = Config::default();
    let (path, origin) = discover(file, env);
    let mut loader = Loader {
        findings: Vec::new(),
        platform_variables: Vec::new(),
        file_label: path
            .as_ref()
            .map_or_else(|| "the config file".to_owned(), |p| p.display().to_string()),
    };
    config.file_origin = origin;

    let plugin_keys = plugin_keys(plugins);
    loader.findings.extend(declaration_problems(&plugin_keys));
    let mut raw: BTreeMap<String, Raw> = BTreeMap::new();
    if let Some(path) = &path {
        match read_file(path) {
            Ok(table) => collect_file_keys(&table, &plugin_keys, plugins, &mut raw, &mut loader),
            Err(message) => loader.findings.push(Finding::error(
                "CP010",
                None,
                format!("configuration file {}: {message}", path.display()),
                "fix the file, or point CALLPLANE_CONFIG / --config at another one",
            )),
        }
        config.file = Some(path.clone());
    }
    collect_env_keys(env, &plugin_keys, &mut raw, &mut loader);
    // Configured by the environment alone (a container, a systemd unit) is a choice; nothing at
    // all is most likely a command run from the wrong directory.
    if path.is_none() && raw.is_empty() {
        loader.findings.push(Finding::warning(
            "CP011",
            None,
            format!(
                "no configuration file (looked for {}) and no setting in the environment: using the built-in defaults",
                config.file_origin
            ),
            format!(
                "run from the directory holding {DEFAULT_CONFIG_FILE}, or name the file with --config or {CONFIG_ENV} \
                 (its relative paths are taken from its own directory)"
            ),
        ));
    }

    let source = |value: &Raw| match value {
        Raw::File(_) => Source::File,
        Raw::Env(_) => Source::Env,
    };
    for key in KEYS {
        if let Some(value) = raw.get(key.file) {
            let before = loader.findings.len();
            apply(&mut config, key, value, &mut loader);
            if loader.findings.len() == before {
                config.sources.insert(key.file.to_owned(), source(value));
            }
        }
    }
    if !config.sources.contains_key("instance_id") {
        config.settings.instance_id = format!("{}:{}", callplane_telemetry::hostname(), config.bind.port());
    }
    for plugin in plugins {
        let values = config.settings.plugins.entry(plugin.name.to_owned()).or_default();
        for key in plugin.config {
            values.fill(key);
        }
    }
    for pk in &plugin_keys {
        let Some(value) = raw.get(&pk.file) else { continue };
        let Some(text) = single_value(value) else {
            loader.bad(pk.named(), value, "expected a single value", pk.key.help);
            continue;
        };
        match pk.key.parse(&text) {
            Ok(valid) => {
                config.settings.set(pk.plugin, pk.key.name, valid);
                config.sources.insert(pk.file.clone(), source(value));
            }
            Err(problem) => loader.bad(pk.named(), value, &problem, pk.key.help),
        }
    }
    if let Some(dir) = path.as_deref().and_then(Path::parent) {
        anchor_paths(&mut config, dir, &plugin_keys);
    }
    config.platform_variables = loader.platform_variables;
    (config, loader.findings)
}

/// Resolves the relative paths that came from the configuration file, or are defaults, against
/// `dir`, the file's directory: the same file gives the same database, logs and spool from any
/// working directory. A path from an environment variable stays as given (relative to the working
/// directory, like any path typed on a command line).
fn anchor_paths(config: &mut Config, dir: &Path, plugin_keys: &[PluginKey]) {
    if dir.as_os_str().is_empty() {
        return;
    }
    let from_env = |config: &Config, key: &str| config.sources.get(key) == Some(&Source::Env);
    if !from_env(config, "database_url") {
        config.database_url = callplane_storage::sqlite_url_relative_to(&config.database_url, dir);
    }
    if !from_env(config, "log_dir") && config.log_dir.is_relative() {
        config.log_dir = dir.join(&config.log_dir);
    }
    let paths = plugin_keys
        .iter()
        .filter(|pk| matches!(pk.key.kind, ValueKind::Path | ValueKind::OptionalPath));
    for pk in paths {
        let current = config.settings.plugin(pk.plugin).path(pk.key.name);
        if !from_env(config, &pk.file) && current.is_relative() && !current.as_os_str().is_empty() {
            let anchored = dir.join(current).display().to_string();
            config.settings.set(pk.plugin, pk.key.name, anchored);
        }
    }
}

/// Keys declared wrong (CP006, naming the plugin): a name that is not `[a-z0-9_]`, a key declared
/// twice, a variable two keys claim, a default its own key refuses. Found when the configuration is
/// read, so `check` reports them rather than a later `serve`.
fn declaration_problems(keys: &[PluginKey]) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut problem = |pk: &PluginKey, message: String| {
        findings.push(Finding::error(
            "CP006",
            Some(pk.plugin),
            format!(
                "plugin '{}' declares configuration key `{}` wrongly: {message}",
                pk.plugin, pk.key.name
            ),
            "fix the plugin's ConfigKey declarations",
        ));
    };
    for (i, pk) in keys.iter().enumerate() {
        let valid_name = !pk.key.name.is_empty()
            && pk
                .key
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid_name {
            problem(pk, "names are lowercase [a-z0-9_]".to_owned());
        }
        if let Some(first) = keys[..i].iter().find(|k| k.file == pk.file) {
            problem(pk, format!("declared twice (both as `{}`)", first.file));
        } else if let Some(first) = keys[..i].iter().find(|k| k.env == pk.env) {
            problem(pk, format!("its variable {} is also `{}`'s", pk.env, first.file));
        } else if KEYS.iter().any(|k| k.env == pk.env) {
            problem(pk, format!("its variable {} is one of the host's", pk.env));
        }
        if let Err(e) = pk.key.parse(pk.key.default) {
            problem(pk, format!("its default {:?} is refused: {e}", pk.key.default));
        }
    }
    findings
}

/// A plugin key's value as text: a string, or a number or boolean written bare in the file.
fn single_value(raw: &Raw) -> Option<String> {
    match raw {
        Raw::Env(value) | Raw::File(toml::Value::String(value)) => Some(value.clone()),
        Raw::File(toml::Value::Integer(n)) => Some(n.to_string()),
        Raw::File(toml::Value::Boolean(b)) => Some(b.to_string()),
        Raw::File(_) => None,
    }
}

fn read_file(path: &Path) -> Result<toml::Table, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot be read: {e}"))?;
    toml::from_str::<toml::Table>(&text).map_err(|e| {
        // The message alone: the default rendering quotes the offending line, which could hold a secret.
        let line = e.span().map(|span| text[..span.start].matches('\n').count() + 1);
        match line {
            Some(line) => format!("is not valid TOML (line {line}): {}", e.message()),
            None => format!("is not valid TOML: {}", e.message()),
        }
    })
}

fn collect_file_keys(
    table: &toml::Table,
    plugin_keys: &[PluginKey],
    plugins: &[&'static RoutePlugin],
    raw: &mut BTreeMap<String, Raw>,
    loader: &mut Loader,
) {
    let known = || {
        KEYS.iter()
            .map(|k| k.file)
            .chain(plugin_keys.iter().map(|k| k.file.as_str()))
    };
    let mut unknown = Vec::new();
    for (name, value) in table {
        match value {
            toml::Value::Table(inner) => {
                if !plugins.iter().any(|p| p.name == name) {
                    // A table for a plugin this build leaves out: the same file serves every build.
                    loader.findings.push(Finding::warning(
                        "CP010",
                        None,
                        format!(
                            "configuration table [{name}] in {} is for a plugin this build does not link",
                            loader.file_label
                        ),
                        format!(
                            "plugins of this build: {}; remove the table if no build needs it",
                            plugins.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
                        ),
                    ));
                    continue;
                }
                for (inner_name, inner_value) in inner {
                    let full = format!("{name}.{inner_name}");
                    if plugin_keys.iter().any(|k| k.file == full) {
                        raw.insert(full, Raw::File(inner_value.clone()));
                    } else {
                        unknown.push(full);
                    }
                }
            }
            _ if KEYS.iter().any(|k| k.file == name) => {
                raw.insert(name.clone(), Raw::File(value.clone()));
            }
            _ => unknown.push(name.clone()),
        }
    }
    for name in unknown {
        loader.findings.push(Finding::error(
            "CP010",
            None,
            format!("unknown configuration key `{name}` in {}", loader.file_label),
            with_suggestion(
                &name,
                known(),
                format!("known keys: {}", known().collect::<Vec<_>>().join(", ")),
            ),
        ));
    }
}

fn collect_env_keys(
    env: &BTreeMap<String, String>,
    plugin_keys: &[PluginKey],
    raw: &mut BTreeMap<String, Raw>,
    loader: &mut Loader,
) {
    for (name, value) in env {
        // An empty RUST_LOG means "not set" (an empty filter would silence everything).
        if name == "RUST_LOG" && value.trim().is_empty() {
            continue;
        }
        if let Some(key) = KEYS.iter().find(|k| k.env == name) {
            raw.insert(key.file.to_owned(), Raw::Env(value.clone()));
        } else if let Some(pk) = plugin_keys.iter().find(|k| k.env == *name) {
            raw.insert(pk.file.clone(), Raw::Env(value.clone()));
        } else if is_platform_variable(name, value) {
            loader.platform_variables.push(name.clone());
        } else if name.starts_with("CALLPLANE_") && name != CONFIG_ENV {
            let known = || {
                KEYS.iter()
                    .map(|k| k.env)
                    .chain(plugin_keys.iter().map(|k| k.env.as_str()))
                    .filter(|e| e.starts_with("CALLPLANE_"))
            };
            loader.findings.push(Finding::error(
                "CP010",
                None,
                format!("unknown environment variable {name}"),
                with_suggestion(
                    name,
                    known(),
                    format!(
                        "known variables: {CONFIG_ENV}, {}",
                        known().collect::<Vec<_>>().join(", ")
                    ),
                ),
            ));
        }
    }
}

/// An instance id is written bare on every log line: it must need no quoting.
fn valid_instance_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

fn apply(config: &mut Config, key: &Key, raw: &Raw, loader: &mut Loader) {
    match key.file {
        "bind" => {
            if let Some(text) = loader.string(key, raw) {
                match text.trim().parse::<SocketAddr>() {
                    Ok(addr) => config.bind = addr,
                    Err(_) => loader.bad(
                        key,
                        raw,
                        "expected an IP address and port",
                        "e.g. 127.0.0.1:8080 or 0.0.0.0:8080",
                    ),
                }
            }
        }
        "database_url" => {
            if let Some(url) = loader.string(key, raw) {
                match DbKind::from_url(url.trim()) {
                    Ok(_) => config.database_url = url.trim().to_owned(),
                    Err(_) => loader.bad(
                        key,
                        raw,
                        "expected sqlite://… or postgres://…",
                        "e.g. sqlite://data/callplane.db or postgres://user:password@host/db",
                    ),
                }
            }
        }
        "public_base_url" => {
            if let Some(url) = loader.string(key, raw) {
                match callplane_plugin_api::base_url(&url) {
                    Ok(url) => config.settings.public_base_url = url,
                    Err(problem) => loader.bad(
                        key,
                        raw,
                        &problem,
                        "the URL Twilio calls, e.g. https://voice.example.com",
                    ),
                }
            }
        }
        "trusted_proxies" => {
            if let Some(entries) = loader.list(key, raw) {
                match TrustedProxies::parse(&entries) {
                    Ok(proxies) => config.settings.trusted_proxies = proxies,
                    Err(e) => loader.bad(
                        key,
                        raw,
                        &e.to_string(),
                        "comma-separated CIDRs, e.g. 10.0.0.0/8,127.0.0.1/32",
                    ),
                }
            }
        }
        "critical_plugins" => {
            if let Some(names) = loader.list(key, raw) {
                let mut seen = BTreeSet::new();
                let mut ok = true;
                for name in &names {
                    if !is_valid_plugin_name(name) {
                        ok = false;
                        loader.bad(
                            key,
                            raw,
                            &format!("{name:?} is not a plugin name"),
                            "lowercase names such as permissions,calendar,twilio",
                        );
                    }
                }
                if ok {
                    config.critical_plugins = names.into_iter().filter(|n| seen.insert(n.clone())).collect();
                }
            }
        }
        "instances" => {
            if let Some(n) = loader.integer(key, raw, 1..=1000) {
                config.settings.instances = u32::try_from(n).unwrap_or(1);
            }
        }
        "instance_id" => {
            if let Some(id) = loader.string(key, raw) {
                let id = id.trim();
                if valid_instance_id(id) {
                    config.settings.instance_id = id.to_owned();
                } else {
                    loader.bad(
                        key,
                        raw,
                        "expected 1–64 characters of letters, digits, `.`, `_`, `:` and `-`",
                        "e.g. web-1 or web-1.example.net:8080 (it is written bare on every log line)",
                    );
                }
            }
        }
        "log_dir" => {
            if let Some(dir) = loader.string(key, raw) {
                if dir.trim().is_empty() {
                    loader.bad(key, raw, "expected a directory", "e.g. data/logs or /var/log/callplane");
                } else {
                    config.log_dir = PathBuf::from(dir);
                }
            }
        }
        "log_format" => {
            if let Some(format) = loader.string(key, raw) {
                match format.trim() {
                    "text" => config.log_format = LogFormat::Text,
                    "json" => config.log_format = LogFormat::Json,
                    _ => loader.bad(
                        key,
                        raw,
                        "expected text or json",
                        "text for people, json for log shippers",
                    ),
                }
            }
        }
        "log_filter" => {
            if let Some(filter) = loader.string(key, raw) {
                match logging::parse_filter(&filter) {
                    Ok(_) => config.log_filter = filter,
                    Err(e) => loader.bad(key, raw, &e.to_string(), "e.g. info, or info,sqlx=warn"),
                }
            }
        }
        "shutdown_drain_secs" => {
            if let Some(n) = loader.integer(key, raw, 0..=3600) {
                config.shutdown_drain_secs = n;
            }
        }
        other => unreachable!("key {other} is in KEYS but not applied"),
    }
}

/// The effective value of `key` as `callplane config` shows it: secrets as `<secret>`, URLs with
/// their password masked.
pub fn effective(config: &Config, key: &Key) -> String {
    if key.secret {
        return "<secret>".to_owned();
    }
    let s = &config.settings;
    match key.file {
        "bind" => config.bind.to_string(),
        "database_url" => redact_url(&config.database_url),
        "public_base_url" => s.public_base_url.clone(),
        "trusted_proxies" => s
            .trusted_proxies
            .nets()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        "critical_plugins" => config.critical_plugins.join(","),
        "instances" => s.instances.to_string(),
        "instance_id" => s.instance_id.clone(),
        "log_dir" => config.log_dir.display().to_string(),
        "log_format" => match config.log_format {
            LogFormat::Text => "text".to_owned(),
            LogFormat::Json => "json".to_owned(),
        },
        "log_filter" => config.log_filter.clone(),
        "shutdown_drain_secs" => config.shutdown_drain_secs.to_string(),
        other => unreachable!("key {other} is in KEYS but has no effective value"),
    }
}

/// One key as `callplane config` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConfigRow {
    /// Its name in the file (`bind`, `twilio.auth_token`).
    pub key: String,
    /// Its environment variable.
    pub env: String,
    /// `host`, or the plugin that declared it.
    pub owner: String,
    /// `default`, `file` or `env`.
    pub source: &'static str,
    /// The effective value (`<secret>` for a secret).
    pub value: String,
    /// Whether the value is secret.
    pub secret: bool,
}

/// Every key of the host and of `plugins`, as `callplane config` lists them.
pub fn rows(config: &Config, plugins: &[&'static RoutePlugin]) -> Vec<ConfigRow> {
    let source = |name: &str| config.sources.get(name).copied().unwrap_or(Source::Default).as_str();
    let host = KEYS.iter().map(|key| ConfigRow {
        key: key.file.to_owned(),
        env: key.env.to_owned(),
        owner: "host".to_owned(),
        source: source(key.file),
        value: effective(config, key),
        secret: key.secret,
    });
    let plugin = plugin_keys(plugins).into_iter().map(|pk| ConfigRow {
        source: source(&pk.file),
        value: if pk.key.secret {
            "<secret>".to_owned()
        } else {
            config.settings.plugin(pk.plugin).text(pk.key.name).to_owned()
        },
        secret: pk.key.secret,
        owner: pk.plugin.to_owned(),
        key: pk.file,
        env: pk.env,
    });
    host.chain(plugin).collect()
}

/// Whether `name` is a variable Kubernetes injects for a Service named `callplane` or
/// `callplane-…` (`CALLPLANE_SERVICE_HOST`, `CALLPLANE_SERVICE_PORT[_NAME]`,
/// `CALLPLANE_PORT=tcp://…`, `CALLPLANE_PORT_8080_TCP[_PROTO|_PORT|_ADDR]`, and the same with
/// `CALLPLANE_<SERVICE>_` in front). Those are the platform's, not configuration; every pod would
/// otherwise refuse to start.
pub fn is_platform_variable(name: &str, value: &str) -> bool {
    let Some(rest) = name.strip_prefix("CALLPLANE_") else {
        return false;
    };
    // `rest` is `[SERVICE_]SERVICE_HOST`, `[SERVICE_]SERVICE_PORT[_NAME]`, `[SERVICE_]PORT`
    // or `[SERVICE_]PORT_<n>_<PROTO>[_FIELD]`.
    let parts: Vec<&str> = rest.split('_').collect();
    let link = |v: &str| ["tcp://", "udp://", "sctp://"].iter().any(|p| v.starts_with(p));
    (0..parts.len()).any(|start| match &parts[start..] {
        ["SERVICE", "HOST"] => true,
        ["SERVICE", "PORT", ..] => true,
        ["PORT"] => link(value),
        ["PORT", port, proto, field @ ..] => {
            !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && matches!(*proto, "TCP" | "UDP" | "SCTP")
                && matches!(field, [] | ["PROTO" | "PORT" | "ADDR"])
        }
        _ => false,
    })
}

/// `hint`, preceded by "did you mean `x`?" when one of `known` is close to `name`.
fn with_suggestion<'a>(name: &str, known: impl Iterator<Item = &'a str>, hint: String) -> String {
    match closest(name, known) {
        Some(close) => format!("did you mean `{close}`? {hint}"),
        None => hint,
    }
}

/// The one of `candidates` closest to `name`, if it is close (Jaro-Winkler similarity of at least
/// 0.8, case and a shared `CALLPLANE_` prefix ignored: how clap suggests subcommands).
pub fn closest<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let bare = |s: &str| {
        let lower = s.to_lowercase();
        lower.strip_prefix("callplane_").map(str::to_owned).unwrap_or(lower)
    };
    let name = bare(name);
    candidates
        .map(|c| (strsim::jaro_winkler(&name, &bare(c)), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// The process environment as a map (variables that are not valid UTF-8 are kept, lossily, so a
/// bad value is still reported rather than ignored).
pub fn process_env() -> BTreeMap<String, String> {
    std::env::vars_os()
        .map(|(k, v)| (k.to_string_lossy().into_owned(), v.to_string_lossy().into_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use callplane_plugin_api::ValueKind;

    use super::*;

    fn sid(value: &str) -> Result<(), String> {
        if value.starts_with("AC") && value.len() == 34 {
            Ok(())
        } else {
            Err("expected AC followed by 32 hex digits".to_owned())
        }
    }

    /// A plugin declaring keys the way the twilio plugin does (the host's tests link no plugin).
    static TWILIO_LIKE: RoutePlugin = RoutePlugin {
        name: "twilio",
        version: "0",
        summary: "",
        requires: &[],
        critical: false,
        register: |_| Ok(()),
        commands: &[],
        config: &[
            ConfigKey::new(
                "account_sid",
                ValueKind::Text,
                "AC00000000000000000000000000000000",
                "the SID",
            )
            .env("TWILIO_ACCOUNT_SID")
            .check(sid),
            ConfigKey::new("auth_token", ValueKind::Text, "dev", "the token")
                .env("TWILIO_AUTH_TOKEN")
                .secret()
                .check(|t| {
                    if t.is_empty() {
                        Err("the auth token is empty".to_owned())
                    } else {
                        Ok(())
                    }
                }),
            ConfigKey::new("api_base", ValueKind::Url, "https://api.twilio.com", "the REST API").env("TWILIO_API_BASE"),
            ConfigKey::new("max_minutes", ValueKind::Integer { min: 1, max: 10 }, "5", "minutes"),
            ConfigKey::new("spool_dir", ValueKind::Path, "data/spool", "the spool").env("CALLPLANE_SPOOL_DIR"),
        ],
        deploy_checks: &[],
    };

    fn load(file: Option<&Path>, env: &BTreeMap<String, String>) -> (Config, Vec<Finding>) {
        super::load(file, env, &[&TWILIO_LIKE])
    }

    fn twilio(config: &Config, key: &str) -> String {
        config.settings.plugin("twilio").text(key).to_owned()
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn defaults_match_the_contract() {
        let (config, findings) = load(None, &env(&[("CALLPLANE_CONFIG", "")]));
        let codes: Vec<&str> = findings.iter().map(|f| f.id).collect();
        assert_eq!(codes, ["CP011"], "no file: defaults, said plainly");
        assert_eq!(config.file, None);
        assert_eq!(config.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(config.database_url, "sqlite://data/callplane.db");
        assert_eq!(config.settings.public_base_url, "http://127.0.0.1:8080");
        assert!(config.settings.trusted_proxies.is_empty());
        assert_eq!(config.critical_plugins, ["permissions", "calendar", "twilio"]);
        assert_eq!(config.log_dir, PathBuf::from("data/logs"));
        assert_eq!(config.log_format, LogFormat::Text);
        assert_eq!(config.log_filter, "info");
        assert_eq!(config.shutdown_drain_secs, 5);
        assert_eq!(twilio(&config, "api_base"), "https://api.twilio.com");
        assert_eq!(
            config.settings.plugin("twilio").integer("max_minutes"),
            5,
            "plugin defaults filled in"
        );
    }

    #[test]
    fn relative_paths_of_the_file_and_the_defaults_follow_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("callplane.toml");
        std::fs::write(&path, "log_dir = \"logs\"\n[twilio]\nspool_dir = \"spool\"\n").unwrap();
        let (config, findings) = load(Some(&path), &env(&[]));
        assert!(findings.is_empty(), "{findings:?}");
        let base = dir.path().display();
        assert_eq!(
            config.database_url,
            format!("sqlite://{base}/data/callplane.db"),
            "a default"
        );
        assert_eq!(config.log_dir, dir.path().join("logs"), "from the file");
        assert_eq!(
            twilio(&config, "spool_dir"),
            format!("{base}/spool"),
            "a plugin's path key"
        );

        // From the environment: relative to the working directory, as typed.
        let (config, _) = load(
            Some(&path),
            &env(&[
                ("CALLPLANE_DATABASE_URL", "sqlite://here.db"),
                ("CALLPLANE_LOG_DIR", "here-logs"),
                ("CALLPLANE_SPOOL_DIR", "here-spool"),
            ]),
        );
        assert_eq!(config.database_url, "sqlite://here.db");
        assert_eq!(config.log_dir, PathBuf::from("here-logs"));
        assert_eq!(twilio(&config, "spool_dir"), "here-spool");

        // Absolute paths and other databases are left alone.
        std::fs::write(
            &path,
            "database_url = \"postgres://u@h/db\"\nlog_dir = \"/var/log/cp\"\n",
        )
        .unwrap();
        let (config, _) = load(Some(&path), &env(&[]));
        assert_eq!(config.database_url, "postgres://u@h/db");
        assert_eq!(config.log_dir, PathBuf::from("/var/log/cp"));
    }

    #[test]
    fn the_file_is_found_by_flag_variable_then_the_usual_places() {
        let xdg = tempfile::tempdir().unwrap();
        let home = tempfile::tempdir().unwrap();
        let vars = |pairs: &[(&str, &Path)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.display().to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        let env = vars(&[("XDG_CONFIG_HOME", xdg.path()), ("HOME", home.path())]);
        let shown: Vec<String> = config_candidates(&env).into_iter().map(|(_, s)| s).collect();
        assert_eq!(
            shown,
            [
                "./callplane.toml",
                "$XDG_CONFIG_HOME/callplane/callplane.toml",
                "/etc/callplane/callplane.toml"
            ]
        );
        let home_only = vars(&[("HOME", home.path())]);
        assert_eq!(
            config_candidates(&home_only)[1].0,
            home.path().join(".config/callplane/callplane.toml"),
            "~/.config when XDG_CONFIG_HOME is unset"
        );

        // (The unit tests run in host/, which holds no callplane.toml.)
        let in_xdg = xdg.path().join("callplane/callplane.toml");
        std::fs::create_dir_all(in_xdg.parent().unwrap()).unwrap();
        std::fs::write(&in_xdg, "").unwrap();
        let (found, origin) = discover(None, &env);
        assert_eq!(
            (found.as_deref(), origin.as_str()),
            (Some(in_xdg.as_path()), "$XDG_CONFIG_HOME/callplane/callplane.toml")
        );
        let mut with_variable = env.clone();
        with_variable.insert(CONFIG_ENV.to_owned(), "/x/named.toml".to_owned());
        let (found, origin) = discover(None, &with_variable);
        assert_eq!(
            (found, origin.as_str()),
            (Some(PathBuf::from("/x/named.toml")), CONFIG_ENV)
        );
        let (found, origin) = discover(Some(Path::new("flag.toml")), &with_variable);
        assert_eq!((found, origin.as_str()), (Some(PathBuf::from("flag.toml")), "--config"));
    }

    #[test]
    fn keys_declared_wrong_are_cp006_naming_the_plugin() {
        static CLASHING: RoutePlugin = RoutePlugin {
            name: "clash",
            config: &[
                ConfigKey::new("colour", ValueKind::Text, "red", "a colour"),
                ConfigKey::new("colour", ValueKind::Text, "blue", "the same key"),
                ConfigKey::new("Bad-Name", ValueKind::Text, "", "a bad name"),
                ConfigKey::new("size", ValueKind::Integer { min: 1, max: 9 }, "10", "a bad default"),
                ConfigKey::new("bind", ValueKind::Text, "", "the host's variable").env("CALLPLANE_BIND"),
                ConfigKey::new("sid", ValueKind::Text, "", "Twilio's variable").env("TWILIO_ACCOUNT_SID"),
            ],
            ..TWILIO_LIKE
        };
        let (_, findings) = super::load(Some(file("").path()), &env(&[]), &[&TWILIO_LIKE, &CLASHING]);
        let messages: Vec<&str> = findings.iter().map(|f| f.message.as_str()).collect();
        assert!(
            findings
                .iter()
                .all(|f| f.id == "CP006" && f.plugin.as_deref() == Some("clash")),
            "{messages:?}"
        );
        for needle in [
            "`colour` wrongly: declared twice",
            "`Bad-Name` wrongly: names are lowercase",
            "`size` wrongly: its default \"10\" is refused",
            "`bind` wrongly: its variable CALLPLANE_BIND is one of the host's",
            "`sid` wrongly: its variable TWILIO_ACCOUNT_SID is also `twilio.account_sid`'s",
        ] {
            assert!(messages.iter().any(|m| m.contains(needle)), "{needle}: {messages:?}");
        }
    }

    #[test]
    fn plugin_keys_come_from_their_table_or_their_variable() {
        let (config, findings) = load(
            Some(file("[twilio]\nmax_minutes = 7\n[billing]\nplan = \"gold\"\n").path()),
            &env(&[
                ("CALLPLANE_TWILIO_MAX_MINUTES", "9"),
                ("TWILIO_ACCOUNT_SID", "AC0123456789abcdef0123456789abcdef"),
            ]),
        );
        assert_eq!(
            config.settings.plugin("twilio").integer("max_minutes"),
            9,
            "the environment wins"
        );
        assert_eq!(config.sources.get("twilio.max_minutes"), Some(&Source::Env));
        assert_eq!(twilio(&config, "account_sid"), "AC0123456789abcdef0123456789abcdef");
        // A table for a plugin this build does not link is a warning: one file serves every build.
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert_eq!(findings[0].level, crate::finding::Level::Warning);
        assert!(findings[0].message.contains("[billing]"), "{}", findings[0].message);
        let (_, findings) = load(Some(file("[twilio]\nmax_minutes = 70\n").path()), &env(&[]));
        assert_eq!(findings.len(), 1);
        assert!(
            findings[0]
                .message
                .starts_with("configuration key `twilio.max_minutes` in "),
            "{}",
            findings[0].message
        );
        let (_, findings) = load(Some(file("").path()), &env(&[("CALLPLANE_TWILIO_MAX_MINUTS", "3")]));
        assert!(
            findings[0]
                .hint
                .starts_with("did you mean `CALLPLANE_TWILIO_MAX_MINUTES`?"),
            "{}",
            findings[0].hint
        );
    }

    #[test]
    fn environment_overrides_the_file() {
        let f =
            file("bind = \"127.0.0.1:9000\"\nlog_format = \"text\"\n[twilio]\napi_base = \"http://127.0.0.1:1/\"\n");
        let (config, findings) = load(
            Some(f.path()),
            &env(&[
                ("CALLPLANE_BIND", "0.0.0.0:9100"),
                ("CALLPLANE_TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1"),
                ("CALLPLANE_CRITICAL_PLUGINS", "twilio,twilio,calendar"),
                ("CALLPLANE_LOG_FORMAT", "json"),
                ("CALLPLANE_PUBLIC_BASE_URL", "https://voice.example.com/"),
                ("TWILIO_AUTH_TOKEN", "tok"),
                ("RUST_LOG", "debug,sqlx=warn"),
                ("TWILIO_API_KEY", "unrelated variables of other tools are fine"),
            ]),
        );
        assert!(findings.is_empty(), "{findings:?}");
        assert_eq!(config.bind.to_string(), "0.0.0.0:9100");
        assert_eq!(config.settings.trusted_proxies.nets().len(), 2);
        assert_eq!(config.critical_plugins, ["twilio", "calendar"]);
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.log_filter, "debug,sqlx=warn");
        assert_eq!(config.settings.public_base_url, "https://voice.example.com");
        assert_eq!(twilio(&config, "auth_token"), "tok");
        assert_eq!(twilio(&config, "api_base"), "http://127.0.0.1:1");
    }

    #[test]
    fn every_bad_value_and_unknown_key_is_reported() {
        let f = file(
            "bind = \"nope\"\ninstances = 0\ncolour = \"blue\"\n[twilio]\naccount_sid = \"XX1\"\nregion = \"ie1\"\n",
        );
        let (_, findings) = load(
            Some(f.path()),
            &env(&[
                ("CALLPLANE_LOG_FORMAT", "xml"),
                ("CALLPLANE_SHUTDOWN_DRAIN_SECS", "-1"),
                ("CALLPLANE_DATABSE_URL", "sqlite://typo.db"),
                ("CALLPLANE_TRUSTED_PROXIES", "10.0.0.0/99"),
                ("CALLPLANE_PUBLIC_BASE_URL", "ftp://x"),
                ("CALLPLANE_DATABASE_URL", "mysql://x"),
                ("TWILIO_AUTH_TOKEN", " "),
            ]),
        );
        assert!(
            findings
                .iter()
                .all(|f| f.id == "CP010" && f.level == crate::finding::Level::Error)
        );
        let text: Vec<&str> = findings.iter().map(|f| f.message.as_str()).collect();
        for needle in [
            "`bind`",
            "`instances`",
            "unknown configuration key `colour`",
            "`twilio.account_sid`",
            "unknown configuration key `twilio.region`",
            "CALLPLANE_LOG_FORMAT",
            "CALLPLANE_SHUTDOWN_DRAIN_SECS",
            "unknown environment variable CALLPLANE_DATABSE_URL",
            "CALLPLANE_TRUSTED_PROXIES",
            "CALLPLANE_PUBLIC_BASE_URL",
            "CALLPLANE_DATABASE_URL",
            "TWILIO_AUTH_TOKEN",
        ] {
            assert!(
                text.iter().any(|m| m.contains(needle)),
                "no finding names {needle}: {text:#?}"
            );
        }
        assert_eq!(findings.len(), 12, "{text:#?}");
    }

    #[test]
    fn kubernetes_service_links_are_not_configuration() {
        let injected = [
            ("CALLPLANE_SERVICE_HOST", "10.96.0.12"),
            ("CALLPLANE_SERVICE_PORT", "8080"),
            ("CALLPLANE_SERVICE_PORT_HTTP", "8080"),
            ("CALLPLANE_PORT", "tcp://10.96.0.12:8080"),
            ("CALLPLANE_PORT_8080_TCP", "tcp://10.96.0.12:8080"),
            ("CALLPLANE_PORT_8080_TCP_PROTO", "tcp"),
            ("CALLPLANE_PORT_8080_TCP_PORT", "8080"),
            ("CALLPLANE_PORT_8080_TCP_ADDR", "10.96.0.12"),
            ("CALLPLANE_DB_SERVICE_HOST", "10.96.0.13"),
            ("CALLPLANE_DB_PORT", "tcp://10.96.0.13:5432"),
            ("CALLPLANE_DB_PORT_5432_TCP_ADDR", "10.96.0.13"),
        ];
        let (config, findings) = load(Some(file("").path()), &env(&injected));
        assert!(findings.is_empty(), "{findings:?}");
        let mut listed = config.platform_variables.clone();
        listed.sort();
        let mut expected: Vec<String> = injected.iter().map(|(k, _)| (*k).to_owned()).collect();
        expected.sort();
        assert_eq!(listed, expected);
        // Look-alikes that are not the platform's shapes stay errors.
        for (name, value) in [
            ("CALLPLANE_PORT", "8080"),
            ("CALLPLANE_PORT_HTTP_TCP", "tcp://10.96.0.12:8080"),
            ("CALLPLANE_PORT_8080_TCP_COLOUR", "x"),
            ("CALLPLANE_SERVICE", "x"),
        ] {
            let (_, findings) = load(Some(file("").path()), &env(&[(name, value)]));
            assert_eq!(findings.len(), 1, "{name}={value}");
            assert!(findings[0].message.contains(name), "{}", findings[0].message);
        }
    }

    #[test]
    fn unknown_keys_get_the_closest_known_one() {
        let (_, findings) = load(
            Some(file("databse_url = \"sqlite://x.db\"\n").path()),
            &env(&[("CALLPLANE_LOG_FROMAT", "json"), ("CALLPLANE_ZZZ", "1")]),
        );
        let hints: Vec<&str> = findings.iter().map(|f| f.hint.as_str()).collect();
        assert!(
            hints.iter().any(|h| h.starts_with("did you mean `database_url`?")),
            "{hints:?}"
        );
        assert!(
            hints
                .iter()
                .any(|h| h.starts_with("did you mean `CALLPLANE_LOG_FORMAT`?")),
            "{hints:?}"
        );
        assert!(
            hints.iter().any(|h| h.starts_with("known variables:")),
            "no wild guess: {hints:?}"
        );
    }

    #[test]
    fn bad_values_name_the_variable_and_its_key_plainly() {
        let (_, findings) = load(
            Some(file("bind = 5\n").path()),
            &env(&[("CALLPLANE_LOG_FORMAT", "xml")]),
        );
        let messages: Vec<&str> = findings.iter().map(|f| f.message.as_str()).collect();
        assert!(
            messages.iter().any(|m| m.starts_with(
                "environment variable CALLPLANE_LOG_FORMAT (key `log_format`) has an invalid value \"xml\""
            )),
            "{messages:?}"
        );
        assert!(
            messages.iter().any(|m| m.starts_with("configuration key `bind` in ")),
            "{messages:?}"
        );
    }

    #[test]
    fn every_key_has_an_effective_value_and_secrets_stay_hidden() {
        let (config, _) = load(
            Some(file("").path()),
            &env(&[
                ("TWILIO_AUTH_TOKEN", "hunter2-token"),
                ("CALLPLANE_DATABASE_URL", "postgres://app:s3cret@db/cp"),
            ]),
        );
        let listed = rows(&config, &[&TWILIO_LIKE]);
        assert_eq!(listed.len(), KEYS.len() + TWILIO_LIKE.config.len());
        let all = format!("{listed:?}");
        assert!(!all.contains("hunter2") && !all.contains("s3cret"), "{all}");
        let token = listed.iter().find(|r| r.key == "twilio.auth_token").unwrap();
        assert_eq!(
            (token.value.as_str(), token.owner.as_str(), token.source),
            ("<secret>", "twilio", "env")
        );
        assert!(all.contains("postgres://app:***@db/cp"), "{all}");
    }

    #[test]
    fn sources_say_where_each_value_came_from() {
        let (config, _) = load(
            Some(file("bind = \"127.0.0.1:9000\"\n").path()),
            &env(&[("CALLPLANE_LOG_FORMAT", "json")]),
        );
        assert_eq!(config.sources.get("bind"), Some(&Source::File));
        assert_eq!(config.sources.get("log_format"), Some(&Source::Env));
        assert_eq!(config.sources.get("database_url"), None, "the default");
    }

    #[test]
    fn passwords_in_bad_urls_are_masked() {
        let (_, findings) = load(
            Some(file("").path()),
            &env(&[
                ("CALLPLANE_DATABASE_URL", "postgress://app:s3cret@db/cp"),
                ("RUST_LOG", ""),
            ]),
        );
        assert_eq!(findings.len(), 1, "an empty RUST_LOG is not an error: {findings:?}");
        assert!(!findings[0].message.contains("s3cret"), "{}", findings[0].message);
        assert!(
            findings[0].message.contains("postgress://app:***@db/cp"),
            "{}",
            findings[0].message
        );
    }

    #[test]
    fn secrets_are_never_echoed() {
        let f = file("[twilio]\nauth_token = [\"12345\"]\n");
        let (_, findings) = load(Some(f.path()), &env(&[]));
        assert_eq!(findings.len(), 1);
        assert!(!findings[0].message.contains("12345"), "{}", findings[0].message);
        let f = file("[twilio]\nauth_token = \"hunter2\nbind = 1\n");
        let (_, findings) = load(Some(f.path()), &env(&[]));
        assert!(!findings[0].message.contains("hunter2"), "{}", findings[0].message);
        assert!(findings[0].message.contains("line 2"), "{}", findings[0].message);
    }

    #[test]
    fn a_missing_named_file_is_an_error_but_a_missing_default_is_not() {
        let (_, findings) = load(Some(Path::new("/nonexistent/callplane.toml")), &env(&[]));
        assert_eq!(findings.len(), 1);
        assert!(findings[0].message.contains("cannot be read"));
        let (_, findings) = load(None, &env(&[("CALLPLANE_CONFIG", "/nonexistent/x.toml")]));
        assert_eq!(findings.len(), 1);
    }
}
