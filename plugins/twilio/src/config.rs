//! The plugin's configuration (`[twilio]` in `callplane.toml`) and its production checks.
//!
//! Twilio's own variable names (`TWILIO_ACCOUNT_SID`, `TWILIO_AUTH_TOKEN`, `TWILIO_API_BASE`) are
//! kept, and so are `CALLPLANE_SPOOL_DIR` and `CALLPLANE_RECORD_CALLS`, older than plugin tables.

use callplane_plugin_api::telemetry::logging::check_dir_writable;
use callplane_plugin_api::{ConfigKey, DeployCheck, PluginConfig, Secret, Settings, ValueKind};

/// The development placeholder account SID (`callplane check --deploy` rejects it).
pub const DEV_ACCOUNT_SID: &str = "AC00000000000000000000000000000000";
/// The development auth token (`callplane check --deploy` rejects it).
pub const DEV_AUTH_TOKEN: &str = "dev-auth-token-not-secret";

/// The keys.
pub const KEYS: &[ConfigKey] = &[
    ConfigKey::new(
        "account_sid",
        ValueKind::Text,
        DEV_ACCOUNT_SID,
        "the Account SID from the Twilio console",
    )
    .env("TWILIO_ACCOUNT_SID")
    .check(account_sid),
    ConfigKey::new(
        "auth_token",
        ValueKind::Text,
        DEV_AUTH_TOKEN,
        "the Auth Token from the Twilio console: signs webhooks and authenticates REST calls",
    )
    .env("TWILIO_AUTH_TOKEN")
    .secret()
    .check(not_empty),
    ConfigKey::new(
        "api_base",
        ValueKind::Url,
        "https://api.twilio.com",
        "Twilio's REST API: https://api.twilio.com, or a local fake in tests",
    )
    .env("TWILIO_API_BASE"),
    ConfigKey::new(
        "spool_dir",
        ValueKind::Path,
        "data/spool",
        "where call records wait while the database is away, per instance",
    )
    .env("CALLPLANE_SPOOL_DIR"),
    ConfigKey::new(
        "spool_max_bytes",
        ValueKind::Integer {
            min: 1024,
            max: 1 << 40,
        },
        "1073741824",
        "the spool's bound in bytes: past it a call could not be kept while the database is away, and the instance leaves rotation",
    ),
    ConfigKey::new(
        "record_calls",
        ValueKind::Bool,
        "true",
        "whether webhooks record calls (false exists only to benchmark the webhook path)",
    )
    .env("CALLPLANE_RECORD_CALLS"),
    ConfigKey::new(
        "trace_retention_days",
        ValueKind::Integer { min: 1, max: 3650 },
        "30",
        "days a call's timeline (events, outbound steps) and refused webhooks are kept; the call rows stay",
    ),
    ConfigKey::new(
        "unverified_max_rows",
        ValueKind::Integer {
            min: 100,
            max: 10_000_000,
        },
        "10000",
        "refused webhooks kept as evidence at most (the oldest are pruned)",
    ),
    ConfigKey::new(
        "unverified_per_client",
        ValueKind::Integer { min: 1, max: 1_000_000 },
        "100",
        "refused webhooks kept per client address at most (the oldest are pruned)",
    ),
    ConfigKey::new(
        "voice_fallback_url",
        ValueKind::Text,
        "",
        "what `callplane twilio doctor --fix` sets as each number's Voice fallback URL (a TwiML Bin or a page on another host); empty: the doctor only reports a missing one",
    )
    .check(https_or_empty),
];

fn https_or_empty(url: &str) -> Result<(), String> {
    if url.is_empty() || url::Url::parse(url).is_ok_and(|u| u.scheme() == "https" && u.host_str().is_some()) {
        Ok(())
    } else {
        Err("expected an https:// URL (or nothing)".to_owned())
    }
}

fn account_sid(sid: &str) -> Result<(), String> {
    let valid = sid.len() == 34 && sid.starts_with("AC") && sid[2..].bytes().all(|b| b.is_ascii_hexdigit());
    if valid {
        Ok(())
    } else {
        Err("expected AC followed by 32 hex digits".to_owned())
    }
}

fn not_empty(token: &str) -> Result<(), String> {
    if token.is_empty() {
        Err("the auth token is empty".to_owned())
    } else {
        Ok(())
    }
}

/// The Twilio account, as the webhooks, the outbound API and `simulate` use it.
#[derive(Debug, Clone)]
pub struct Account {
    /// `TWILIO_ACCOUNT_SID`.
    pub sid: String,
    /// `TWILIO_AUTH_TOKEN`.
    pub auth_token: Secret,
    /// `TWILIO_API_BASE`, without a trailing slash.
    pub api_base: String,
}

impl Account {
    /// The account of the plugin's configuration.
    pub fn of(config: &PluginConfig) -> Self {
        Self {
            sid: config.text("account_sid").to_owned(),
            auth_token: config.secret("auth_token"),
            api_base: config.text("api_base").to_owned(),
        }
    }
}

/// The production checks.
pub const DEPLOY_CHECKS: &[DeployCheck] = &[
    DeployCheck {
        id: "CP101",
        run: |_, config| {
            (config.secret("auth_token").expose() == DEV_AUTH_TOKEN).then(|| {
                (
                    "TWILIO_AUTH_TOKEN is the development placeholder: real Twilio signatures will not validate"
                        .to_owned(),
                    "set TWILIO_AUTH_TOKEN to the account's auth token (from a secret store, not the config file)"
                        .to_owned(),
                )
            })
        },
    },
    DeployCheck {
        id: "CP102",
        run: |_, config| {
            (config.text("account_sid") == DEV_ACCOUNT_SID).then(|| {
                (
                    "TWILIO_ACCOUNT_SID is the development placeholder: outbound calls will fail".to_owned(),
                    "set TWILIO_ACCOUNT_SID to the account's SID (AC…)".to_owned(),
                )
            })
        },
    },
    DeployCheck {
        id: "CP109",
        run: |_, config| {
            (!config.boolean("record_calls")).then(|| {
                (
                    "call recording is disabled: webhooks are answered but no call is recorded".to_owned(),
                    "remove CALLPLANE_RECORD_CALLS=false (it exists for benchmarks only)".to_owned(),
                )
            })
        },
    },
    DeployCheck {
        id: "CP110",
        run: spool_dir_writable,
    },
];

/// CP112: media servers on `ws://`. Twilio refuses a `<Stream>` that is not `wss://` (error
/// 31922), so the callers of such a business hear silence. `admin create-business` refuses them;
/// rows older than that rule, or written by hand, are found here.
pub async fn unencrypted_media_servers(db: callplane_plugin_api::storage::Db) -> Option<(String, String)> {
    use callplane_plugin_api::storage::sqlx;
    let rows: Vec<(i64, String)> = db
        .run(|pool| {
            sqlx::query_as(
                "SELECT id, media_stream_url FROM businesses WHERE LOWER(media_stream_url) NOT LIKE 'wss://%' ORDER BY id",
            )
            .fetch_all(pool)
        })
        .await
        .ok()?;
    if rows.is_empty() {
        return None;
    }
    let listed: Vec<String> = rows.iter().map(|(id, url)| format!("business {id} ({url})")).collect();
    Some((
        format!(
            "{} media server URL(s) are not wss://: {}; Twilio refuses them (error 31922) and those callers hear silence",
            rows.len(),
            listed.join(", ")
        ),
        "serve the media servers over TLS and set each business's media_stream_url to its wss:// URL".to_owned(),
    ))
}

/// CP110: the spool is what keeps calls while the database is away; a directory it cannot write
/// would lose them exactly then.
fn spool_dir_writable(_: &Settings, config: &PluginConfig) -> Option<(String, String)> {
    let dir = config.path("spool_dir");
    check_dir_writable(&dir).err().map(|e| {
        (
            format!("the call spool directory {} cannot be written: {e}", dir.display()),
            "create the directory and give the service user write access, or set CALLPLANE_SPOOL_DIR".to_owned(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_the_checks_fire_on_them() {
        let config = PluginConfig::defaults(KEYS);
        for key in KEYS {
            assert!(key.parse(key.default).is_ok(), "{}", key.name);
        }
        let settings = Settings::default();
        let fired: Vec<&str> = DEPLOY_CHECKS
            .iter()
            .filter(|c| (c.run)(&settings, &config).is_some())
            .map(|c| c.id)
            .collect();
        assert!(fired.contains(&"CP101") && fired.contains(&"CP102"), "{fired:?}");
        assert!(!fired.contains(&"CP109"));
        assert_eq!(
            KEYS[0].parse("XX1").unwrap_err(),
            "expected AC followed by 32 hex digits"
        );
    }
}
