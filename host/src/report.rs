//! Text and JSON renderings shared by `serve`, `check`, `routes`, `plugins` and `config` (shapes in
//! docs/cli.md).

use callplane_plugin_api::{RoutePlugin, RouteSpec, changes_state};
use serde_json::{Value, json};

use crate::boot::{BootPlan, PluginReport, PluginStatus};
use crate::config::{Config, rows};
use crate::finding::{Finding, counts};

/// `[BOOT] ✅ plugin=… version=… routes=… critical=… registered (summary)`.
pub fn registered_line(p: &PluginReport) -> String {
    format!(
        "[BOOT] ✅ plugin={} version={} routes={} critical={} registered ({})",
        p.name, p.version, p.routes, p.critical, p.summary
    )
}

/// `[BOOT][DEGRADED] plugin=… disabled: reason`.
pub fn degraded_line(p: &PluginReport) -> String {
    format!(
        "[BOOT][DEGRADED] plugin={} disabled: {}",
        p.name,
        p.reason.as_deref().unwrap_or("unknown")
    )
}

/// The closing line of a refused boot or failed check.
pub fn fatal_line(findings: &[Finding]) -> String {
    let (errors, warnings) = counts(findings);
    format!("[BOOT] ❌ [BOOT][FATAL] refusing to start: {errors} error(s), {warnings} warning(s); exit 78")
}

/// The routes sorted by path, then method.
pub fn sorted_routes(plan: &BootPlan) -> Vec<&RouteSpec> {
    let mut routes: Vec<&RouteSpec> = plan.routes.iter().collect();
    routes.sort_by(|a, b| (a.path.as_str(), a.method.as_str()).cmp(&(b.path.as_str(), b.method.as_str())));
    routes
}

/// `routes --format json` entries.
pub fn routes_json(plan: &BootPlan) -> Value {
    let routes: Vec<Value> = sorted_routes(plan)
        .into_iter()
        .map(|r| {
            json!({
                "method": r.method.as_str(),
                "path": r.path,
                "plugin": r.plugin,
                "access": r.access.to_string(),
                "page": r.access.page(),
                "level": r.access.page().map(|_| if changes_state(&r.method) { "write" } else { "read" }),
                "critical": plan.route_is_critical(r),
                "sign_in": r.sign_in,
            })
        })
        .collect();
    json!({ "routes": routes })
}

/// `routes` as an aligned table: METHOD PATH PLUGIN ACCESS CRITICAL.
pub fn routes_text(plan: &BootPlan) -> String {
    let rows: Vec<[String; 5]> = sorted_routes(plan)
        .into_iter()
        .map(|r| {
            [
                r.method.to_string(),
                r.path.clone(),
                r.plugin.to_owned(),
                r.access.to_string(),
                plan.route_is_critical(r).to_string(),
            ]
        })
        .collect();
    table(&["METHOD", "PATH", "PLUGIN", "ACCESS", "CRITICAL"], &rows)
}

/// `plugins` as an aligned table: NAME VERSION CRITICAL REQUIRES STATUS.
pub fn plugins_text(plugins: &[PluginReport]) -> String {
    let rows: Vec<[String; 5]> = plugins
        .iter()
        .map(|p| {
            let status = match (&p.status, &p.reason) {
                (PluginStatus::Active, _) | (_, None) => status_name(p.status).to_owned(),
                (_, Some(reason)) => format!("{} ({reason})", status_name(p.status)),
            };
            let requires = if p.requires.is_empty() {
                "-".to_owned()
            } else {
                p.requires.join(",")
            };
            let version = if p.version.is_empty() {
                "-".to_owned()
            } else {
                p.version.clone()
            };
            [p.name.clone(), version, p.critical.to_string(), requires, status]
        })
        .collect();
    table(&["NAME", "VERSION", "CRITICAL", "REQUIRES", "STATUS"], &rows)
}

/// `check --format json`: `{"ok", "plugins", "findings"}`.
pub fn check_json(ok: bool, config: &Config, plugins: &[PluginReport], findings: &[Finding]) -> Value {
    json!({
        "ok": ok,
        "config_file": config.file.as_ref().map(|f| f.display().to_string()),
        "config_file_origin": config.file_origin,
        "plugins": plugins,
        "findings": findings,
    })
}

fn status_name(status: PluginStatus) -> &'static str {
    match status {
        PluginStatus::Active => "active",
        PluginStatus::Disabled => "disabled",
        PluginStatus::Missing => "missing",
        PluginStatus::Failed => "failed",
    }
}

/// The OpenAPI 3.1 document of `routes`, as `routes --format openapi` prints it and
/// `GET /openapi.json` serves it.
pub fn openapi_json(routes: &[callplane_plugin_api::RouteSpec]) -> Value {
    serde_json::to_value(callplane_plugin_api::openapi::document(
        routes,
        env!("CARGO_PKG_VERSION"),
    ))
    .unwrap_or_else(|e| json!({ "error": format!("the document cannot be rendered: {e}") }))
}

/// `callplane migrate status` as text: PLUGIN VERSION STATE APPLIED DESCRIPTION.
pub fn migrations_text(list: &[callplane_storage::MigrationStatus]) -> String {
    let rows: Vec<[String; 5]> = list
        .iter()
        .map(|m| {
            [
                m.plugin.clone(),
                m.version.to_string(),
                m.state.as_str().to_owned(),
                m.applied_at.clone().unwrap_or_else(|| "-".to_owned()),
                m.description.clone(),
            ]
        })
        .collect();
    table(&["PLUGIN", "VERSION", "STATE", "APPLIED", "DESCRIPTION"], &rows)
}

fn table<const N: usize>(headers: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = headers.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// `config` as text: the file used, one line per key (key, variable, owner, source, value), the
/// ignored platform variables.
pub fn config_text(config: &Config, plugins: &[&'static RoutePlugin]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "{}", config.file_line());
    let _ = writeln!(
        out,
        "{:<22} {:<32} {:<12} {:<8} VALUE",
        "KEY", "VARIABLE", "OWNER", "SOURCE"
    );
    for row in rows(config, plugins) {
        let _ = writeln!(
            out,
            "{:<22} {:<32} {:<12} {:<8} {}",
            row.key, row.env, row.owner, row.source, row.value
        );
    }
    if !config.platform_variables.is_empty() {
        let _ = writeln!(
            out,
            "ignored (set by the platform, e.g. Kubernetes service links): {}",
            config.platform_variables.join(", ")
        );
    }
    out
}

/// `config --format json`: `{"file", "keys": [{"key", "env", "owner", "source", "value",
/// "secret"}], "platform_variables"}`.
pub fn config_json(config: &Config, plugins: &[&'static RoutePlugin]) -> Value {
    json!({
        "file": config.file.as_ref().map(|f| f.display().to_string()),
        "file_origin": config.file_origin,
        "keys": rows(config, plugins),
        "platform_variables": config.platform_variables,
    })
}
