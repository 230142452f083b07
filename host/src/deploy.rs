//! Deploy checks (CP1xx): what is fine on a laptop but wrong in production. Warnings by default,
//! errors under `check --deploy`.

use std::time::Duration;

use callplane_plugin_api::RoutePlugin;
use callplane_storage::{Db, DbKind};
use callplane_telemetry::logging;

use crate::config::Config;
use crate::finding::{Finding, Level};

/// Checks that need no network: the host's (URLs, instance count, proxies, log directory) and
/// every plugin's own ([`callplane_plugin_api::DeployCheck`]: Twilio's placeholders, say).
pub fn static_checks(config: &Config, plugins: &[&'static RoutePlugin], level: Level) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut push = |id: &'static str, message: String, hint: &str| {
        findings.push(Finding {
            id,
            level,
            plugin: None,
            message,
            hint: hint.to_owned(),
        });
    };
    let base = &config.settings.public_base_url;
    if !base.starts_with("https://") {
        push(
            "CP103",
            format!("public base URL {base} is not https: Twilio would send call data in clear text"),
            "terminate TLS in front of callplane and set CALLPLANE_PUBLIC_BASE_URL=https://…",
        );
    }
    if let Ok(url) = url::Url::parse(base) {
        let loopback = match url.host() {
            Some(url::Host::Domain(d)) => d == "localhost" || d.ends_with(".localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback() || ip.is_unspecified(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback() || ip.is_unspecified(),
            None => true,
        };
        if loopback {
            push(
                "CP108",
                format!("public base URL {base} is a loopback address: Twilio cannot reach it"),
                "set CALLPLANE_PUBLIC_BASE_URL to the public URL configured in the Twilio console",
            );
        }
    }
    if DbKind::from_url(&config.database_url).ok() == Some(DbKind::Sqlite) && config.settings.instances > 1 {
        push(
            "CP104",
            format!(
                "{} instances share an embedded SQLite database: each would keep its own calls and sessions",
                config.settings.instances
            ),
            "use CALLPLANE_DATABASE_URL=postgres://… for more than one instance",
        );
    }
    if let Err(e) = logging::check_log_dir(&config.log_dir) {
        push(
            "CP105",
            e.to_string(),
            "create the directory and give the service user write access, or set CALLPLANE_LOG_DIR",
        );
    }
    if config.settings.trusted_proxies.is_empty() {
        push(
            "CP106",
            "no trusted proxies configured: behind a load balancer, client addresses and request ids are the balancer's".to_owned(),
            "set CALLPLANE_TRUSTED_PROXIES to the load balancer's addresses (CIDRs)",
        );
    }
    for plugin in plugins {
        for check in plugin.deploy_checks {
            if let Some((message, hint)) = (check.run)(&config.settings, config.settings.plugin(plugin.name)) {
                findings.push(Finding {
                    id: check.id,
                    level,
                    plugin: Some(plugin.name.to_owned()),
                    message,
                    hint,
                });
            }
        }
    }
    findings.sort_by_key(|f| f.id);
    findings
}

/// Whether the database answers (CP107). Only `check --deploy` asks: `serve` connects anyway.
pub async fn database_check(db: &Db, level: Level) -> Option<Finding> {
    let error = db.ping(Duration::from_secs(5)).await.err()?;
    Some(Finding {
        id: "CP107",
        level,
        plugin: None,
        message: format!("database {} is unreachable: {error}", db.redacted_url()),
        hint: "check CALLPLANE_DATABASE_URL, the network path and the credentials".to_owned(),
    })
}

/// The plugins' checks of their data ([`callplane_plugin_api::Registrar::data_check`]), once the
/// database answers (CP107 says when it does not).
pub async fn data_checks(plan: &crate::boot::BootPlan, db: &Db, level: Level) -> Vec<Finding> {
    let mut findings = Vec::new();
    for active in &plan.active {
        for (id, check) in &active.registration.data_checks {
            if let Some((message, hint)) = check(db.clone()).await {
                findings.push(Finding {
                    id,
                    level,
                    plugin: Some(active.plugin.name.to_owned()),
                    message,
                    hint,
                });
            }
        }
    }
    findings
}
