//! Plugin discovery, ordering, registration and validation of the whole route table.
//!
//! [`plan`] turns the linked plugins and the configuration into a [`BootPlan`]: the plugins in boot
//! order with their status, every finding (CP001–CP010), and the validated route table. It binds
//! nothing and runs no migration, so `serve`, `check`, `routes` and `plugins` all share it.
//!
//! Order of work: names (CP002) → critical manifest (CP001) → requirement cycles (CP005) → absent
//! requirements (CP004) → registration in dependency order (CP006, CP010 from plugins) → route
//! table (CP002 capability providers, CP004 missing providers, CP003, CP007, CP008, CP009).

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use callplane_plugin_api::{Access, ReadinessCheck};
use callplane_plugin_api::{
    AccessProvider, Capability, RegisterError, Registrar, Registration, RoutePlugin, RouteSpec, is_valid_plugin_name,
};
use callplane_storage::Db;
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::config::Config;
use crate::finding::{Finding, Level};

/// Public routes allowed under `/api/` (CP009): signing in needs no session.
pub const PUBLIC_API_ALLOWLIST: &[(&str, &str)] = &[("POST", "/api/auth/login")];

/// The name routes of the host itself carry.
pub const HOST: &str = "host";

/// Where a plugin ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginStatus {
    /// Registered; its routes are served.
    Active,
    /// Non-critical and failed: left out, the host runs degraded.
    Disabled,
    /// In the critical manifest but not in this binary.
    Missing,
    /// Failed and critical (or invalid): the host refuses to start.
    Failed,
}

/// One plugin as `plugins`, `check` and `/readyz` show it.
#[derive(Debug, Clone, Serialize)]
pub struct PluginReport {
    /// Name.
    pub name: String,
    /// Version (empty when missing).
    pub version: String,
    /// One-line summary.
    pub summary: String,
    /// Whether the host refuses to start without it.
    pub critical: bool,
    /// Plugins it needs.
    pub requires: Vec<String>,
    /// Where it ended up.
    pub status: PluginStatus,
    /// How many routes it serves.
    pub routes: usize,
    /// Why it is not active.
    pub reason: Option<String>,
}

/// A registered plugin and its declarations.
pub struct ActivePlugin {
    /// The submission.
    pub plugin: &'static RoutePlugin,
    /// Whether it is critical (own flag or manifest).
    pub critical: bool,
    /// What it declared.
    pub registration: Registration,
}

/// Everything boot validation decided.
pub struct BootPlan {
    /// Every finding, requirements order then name.
    pub findings: Vec<Finding>,
    /// Every plugin: boot order first, then those that never got that far, by name.
    pub plugins: Vec<PluginReport>,
    /// Active plugins in boot order.
    pub active: Vec<ActivePlugin>,
    /// The route table that will be served (host routes included).
    pub routes: Vec<RouteSpec>,
    /// The access providers, one per capability.
    pub providers: BTreeMap<Capability, Arc<dyn AccessProvider>>,
}

impl BootPlan {
    /// Whether any finding is an error.
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.level == Level::Error)
    }

    /// Readiness checks of the active plugins, as (plugin, name, check).
    pub fn readiness_checks(&self) -> Vec<(String, String, ReadinessCheck)> {
        self.active
            .iter()
            .flat_map(|a| {
                a.registration
                    .readiness
                    .iter()
                    .map(|(name, check)| (a.plugin.name.to_owned(), name.clone(), check.clone()))
            })
            .collect()
    }

    /// The plugins that registered.
    pub fn active_plugins(&self) -> Vec<&'static RoutePlugin> {
        self.active.iter().map(|a| a.plugin).collect()
    }

    /// Applies the active plugins' pending migrations, in boot order.
    ///
    /// # Errors
    /// The storage error of the first migration that fails (nothing is committed then).
    pub async fn migrate(
        &self,
        db: &Db,
    ) -> Result<Vec<callplane_storage::AppliedMigration>, callplane_storage::StorageError> {
        callplane_storage::migrate(db, &self.migration_sets()).await
    }

    /// Where each active plugin's migrations stand in `db`, in boot order; reads only.
    ///
    /// # Errors
    /// The storage error (the database cannot be reached).
    pub async fn migration_status(
        &self,
        db: &Db,
    ) -> Result<Vec<callplane_storage::MigrationStatus>, callplane_storage::StorageError> {
        callplane_storage::status(db, &self.migration_sets()).await
    }

    fn migration_sets(&self) -> Vec<callplane_storage::PluginMigrations<'_>> {
        self.active
            .iter()
            .map(|a| callplane_storage::PluginMigrations {
                plugin: a.plugin.name,
                migrations: &a.registration.migrations,
            })
            .collect()
    }

    /// Whether `route` belongs to a critical plugin (host routes are critical).
    pub fn route_is_critical(&self, route: &RouteSpec) -> bool {
        route.plugin == HOST || self.active.iter().any(|a| a.plugin.name == route.plugin && a.critical)
    }
}

struct Planner<'a> {
    config: &'a Config,
    findings: Vec<Finding>,
    /// Why each plugin that will not run is out, and whether that is fatal.
    out: BTreeMap<&'static str, (PluginStatus, String)>,
}

impl Planner<'_> {
    fn critical(&self, plugin: &RoutePlugin) -> bool {
        plugin.critical || self.config.critical_plugins.iter().any(|n| n == plugin.name)
    }

    /// Records that `plugin` cannot register (CP006): an error (status failed) when it is
    /// critical, otherwise a warning and the plugin is disabled: the host runs degraded.
    fn fail(&mut self, plugin: &RoutePlugin, id: &'static str, message: String, hint: String) {
        let critical = self.critical(plugin);
        let (finding, status) = if critical {
            (
                Finding::error(id, Some(plugin.name), message.clone(), hint),
                PluginStatus::Failed,
            )
        } else {
            (
                Finding::warning(id, Some(plugin.name), message.clone(), hint),
                PluginStatus::Disabled,
            )
        };
        self.findings.push(finding);
        self.out.entry(plugin.name).or_insert((status, message));
    }

    /// Records an error that stops the boot whether or not `plugin` is critical (CP004, CP010).
    fn refuse(&mut self, plugin: &RoutePlugin, id: &'static str, message: String, hint: String) {
        self.findings
            .push(Finding::error(id, Some(plugin.name), message.clone(), hint));
        self.out.entry(plugin.name).or_insert((PluginStatus::Failed, message));
    }
}

/// Discovers, orders, registers and validates `linked` plugins plus the host's own routes, in
/// phases: [`Planner::discover`] (names, the critical manifest, requirements), [`Planner::register`]
/// (in dependency order), [`Planner::link`] (what plugins share: capabilities, commands, state)
/// and the route table ([`check_routes`]), then [`Planner::finish`] (reports, finding order).
pub fn plan(
    config: &Config,
    linked: &[&'static RoutePlugin],
    db: &Db,
    registry: &mut Registry,
    host_routes: Vec<RouteSpec>,
) -> BootPlan {
    let mut planner = Planner {
        config,
        findings: Vec::new(),
        out: BTreeMap::new(),
    };
    let mut found = planner.discover(linked);
    let (order, active, offered) = planner.register(&found, db, registry);
    let (active, providers) = planner.link(active, &offered);

    let mut routes: Vec<RouteSpec> = host_routes;
    for a in &active {
        routes.extend(a.registration.routes.iter().cloned());
    }
    check_routes(&routes, &mut planner.findings);
    let (findings, plugins) = planner.finish(&order, &active, &mut found.reports);
    BootPlan {
        findings,
        plugins,
        active,
        routes,
        providers,
    }
}

/// What discovery found: the plugins still in the running, and a report
/// for every plugin named anywhere (linked or in the critical manifest).
struct Discovered {
    candidates: BTreeMap<&'static str, &'static RoutePlugin>,
    reports: BTreeMap<String, PluginReport>,
}

/// Who offered each capability while registering, even a plugin whose registration then failed.
type Offered = BTreeMap<Capability, &'static str>;

/// One access provider per capability, with the plugin that provides it.
type Providers = BTreeMap<Capability, (&'static str, Arc<dyn AccessProvider>)>;

impl Planner<'_> {
    /// Names (CP002, CP006), the critical manifest (CP001), requirement cycles (CP005) and absent
    /// requirements (CP004).
    fn discover(&mut self, linked: &[&'static RoutePlugin]) -> Discovered {
        let mut reports: BTreeMap<String, PluginReport> = BTreeMap::new();
        // Names: valid and unique.
        let mut by_name: BTreeMap<&'static str, Vec<&'static RoutePlugin>> = BTreeMap::new();
        for &plugin in linked {
            by_name.entry(plugin.name).or_default().push(plugin);
        }
        let mut candidates: BTreeMap<&'static str, &'static RoutePlugin> = BTreeMap::new();
        for (name, copies) in &by_name {
            let first = copies[0];
            reports.insert(name.to_string(), report(first, self.critical(first)));
            if !is_valid_plugin_name(name) {
                self.findings.push(Finding::error(
                    "CP006",
                    Some(name),
                    format!("plugin name {name:?} is invalid"),
                    "plugin names are lowercase [a-z0-9_-], starting with a letter",
                ));
                self.out.insert(name, (PluginStatus::Failed, "invalid name".to_owned()));
            } else if copies.len() > 1 {
                let versions: Vec<&str> = copies.iter().map(|p| p.version).collect();
                self.findings.push(Finding::error(
                    "CP002",
                    Some(name),
                    format!(
                        "{} plugins share the name '{name}' (versions {})",
                        copies.len(),
                        versions.join(", ")
                    ),
                    "each plugin crate submits one RoutePlugin with a unique name; remove or rename the duplicate",
                ));
                self.out
                    .insert(name, (PluginStatus::Failed, "duplicate name".to_owned()));
            } else {
                candidates.insert(name, first);
            }
        }

        // The critical manifest: a plugin cannot announce its own absence.
        for name in &self.config.critical_plugins {
            if !by_name.contains_key(name.as_str()) {
                self.findings.push(Finding::error(
                    "CP001",
                    Some(name),
                    format!("critical plugin '{name}' is missing: not compiled into this binary"),
                    missing_plugin_hint(name, by_name.keys().copied()),
                ));
                reports.insert(
                    name.clone(),
                    PluginReport {
                        name: name.clone(),
                        version: String::new(),
                        summary: String::new(),
                        critical: true,
                        requires: Vec::new(),
                        status: PluginStatus::Missing,
                        routes: 0,
                        reason: Some("not compiled into this binary".to_owned()),
                    },
                );
            }
        }

        // Requirement cycles, then absent requirements (propagated to whoever needs a plugin that is out).
        for cycle in find_cycles(&candidates) {
            let path = cycle
                .iter()
                .chain(cycle.first())
                .map(|n| format!("'{n}'"))
                .collect::<Vec<_>>()
                .join(" → ");
            for name in &cycle {
                self.out
                    .insert(name, (PluginStatus::Failed, format!("requirement cycle {path}")));
            }
            self.findings.push(Finding::error(
                "CP005",
                Some(cycle[0]),
                format!("plugin requirements form a cycle: {path}"),
                "requirements must form a tree: move the shared part into a plugin both can require",
            ));
        }
        propagate_requirements(self, &candidates);

        Discovered { candidates, reports }
    }

    /// Orders the plugins still in the running and registers each (CP004 when a requirement
    /// failed first, CP006 or CP010 when its registration fails).
    fn register(
        &mut self,
        found: &Discovered,
        db: &Db,
        registry: &mut Registry,
    ) -> (Vec<&'static str>, Vec<ActivePlugin>, Offered) {
        let candidates = &found.candidates;
        // Registration in dependency order.
        let order = boot_order(candidates, &self.out);
        // Every plugin still in the running must have a place in the order; one without would be
        // silently absent. (Cycles were removed above, so this is a safety net, not a path.)
        let unordered: Vec<&'static str> = candidates
            .keys()
            .filter(|n| !self.out.contains_key(*n) && !order.contains(n))
            .copied()
            .collect();
        for name in unordered {
            self.refuse(
                candidates[name],
                "CP005",
                format!("plugin '{name}' could not be ordered after its requirements"),
                "check the plugin's requires list".to_owned(),
            );
        }
        let mut active: Vec<ActivePlugin> = Vec::new();
        let mut offered: BTreeMap<Capability, &'static str> = BTreeMap::new();
        for name in &order {
            let plugin = candidates[name];
            if let Some(missing) = plugin.requires.iter().find(|r| self.out.contains_key(*r)) {
                let (message, hint) = requirement_finding(plugin, missing, "failed to register");
                self.refuse(plugin, "CP004", message, hint);
                continue;
            }
            let mut registrar = Registrar::new(
                plugin.name,
                &self.config.settings,
                db,
                registry.sub_registry_with_prefix(plugin.name.replace('-', "_")),
            );
            let outcome = catch_unwind(AssertUnwindSafe(|| (plugin.register)(&mut registrar)));
            let registration = registrar.finish();
            // Who offers what, even if the registration then fails: a finding about a capability
            // nobody provides can name the plugin that would have.
            for (capability, _) in &registration.providers {
                offered.entry(*capability).or_insert(plugin.name);
            }
            let failure = match outcome {
                Ok(Ok(())) if registration.problems.is_empty() => None,
                Ok(Ok(())) => Some((
                    "CP006",
                    format!("made invalid declarations: {}", registration.problems.join("; ")),
                )),
                Ok(Err(RegisterError::Config { key, message })) => Some((
                    "CP010",
                    format!("configuration key {key} is invalid for plugin '{name}': {message}"),
                )),
                Ok(Err(error)) => Some(("CP006", format!("registration returned an error: {error}"))),
                Err(panic) => Some(("CP006", format!("registration panicked: {}", panic_message(&panic)))),
            };
            match failure {
                None => active.push(ActivePlugin {
                    plugin,
                    critical: self.critical(plugin),
                    registration,
                }),
                Some((id, message)) => {
                    let hint = if id == "CP010" {
                        "fix the configuration value named above".to_owned()
                    } else if self.critical(plugin) {
                        format!(
                            "fix plugin '{name}' or its configuration; a critical plugin that cannot register stops the boot"
                        )
                    } else {
                        format!(
                            "plugin '{name}' is not critical, so the host starts without it (DEGRADED); fix it to restore its routes"
                        )
                    };
                    if id == "CP010" {
                        self.refuse(plugin, id, message, hint);
                    } else {
                        self.fail(plugin, id, message, hint);
                    }
                }
            }
        }

        (order, active, offered)
    }

    /// What plugins share: one provider per capability (CP002) and one for every route that needs
    /// it (CP004), one owner per command name and per state type (CP002). Plugins refused here
    /// leave `active`.
    fn link(
        &mut self,
        mut active: Vec<ActivePlugin>,
        offered: &Offered,
    ) -> (Vec<ActivePlugin>, BTreeMap<Capability, Arc<dyn AccessProvider>>) {
        // Capability providers: exactly one each, and present for every route that needs one.
        let mut providers: Providers = BTreeMap::new();
        for a in &active {
            for (capability, provider) in &a.registration.providers {
                if let Some((first, _)) = providers.get(capability) {
                    self.findings.push(Finding::error(
                        "CP002",
                        Some(a.plugin.name),
                        format!(
                            "plugins '{first}' and '{}' both provide {}",
                            a.plugin.name,
                            capability.describe()
                        ),
                        "exactly one plugin may enforce each access capability; drop one of them",
                    ));
                } else {
                    providers.insert(*capability, (a.plugin.name, provider.clone()));
                }
            }
        }
        // Command-line commands: one name, one command (the host's own included).
        let mut command_owners: BTreeMap<String, &'static str> = crate::cli::host_command_names()
            .into_iter()
            .map(|name| (name, "host"))
            .collect();
        for a in &active {
            for command in a.plugin.commands {
                match command_owners.get(command.name) {
                    Some(first) => self.findings.push(Finding::error(
                        "CP002",
                        Some(a.plugin.name),
                        format!(
                            "plugin '{}' defines the command `callplane {}`, which '{first}' already defines",
                            a.plugin.name, command.name
                        ),
                        "give the plugin's command a name of its own",
                    )),
                    None => {
                        command_owners.insert(command.name.to_owned(), a.plugin.name);
                    }
                }
            }
        }

        // Shared state: one value per type in the app, or the later plugin's shadows the earlier's.
        let mut state_owners: BTreeMap<std::any::TypeId, &'static str> = BTreeMap::new();
        for a in &active {
            for (type_id, type_name) in &a.registration.state_types {
                match state_owners.get(type_id) {
                    Some(first) if *first != a.plugin.name => self.findings.push(Finding::error(
                        "CP002",
                        Some(a.plugin.name),
                        format!(
                            "plugins '{first}' and '{}' both share state of type {type_name}: handlers would see only one",
                            a.plugin.name
                        ),
                        "wrap the state in a type of the plugin's own (a newtype) so each plugin's handlers get theirs",
                    )),
                    _ => {
                        state_owners.insert(*type_id, a.plugin.name);
                    }
                }
            }
        }
        let mut unprovided: Vec<(usize, Capability, Vec<String>)> = Vec::new();
        for (index, a) in active.iter().enumerate() {
            let mut needs: BTreeMap<Capability, Vec<String>> = BTreeMap::new();
            for route in &a.registration.routes {
                if let Some(capability) = route.access.capability().filter(|c| !providers.contains_key(c)) {
                    needs
                        .entry(capability)
                        .or_default()
                        .push(format!("{} {} ({})", route.method, route.path, route.access));
                }
            }
            unprovided.extend(needs.into_iter().map(|(c, routes)| (index, c, routes)));
        }
        for (index, capability, routes) in unprovided {
            let plugin = active[index].plugin;
            let (source, hint) = match offered.get(&capability) {
                Some(provider) => {
                    let why = self
                        .out
                        .get(provider)
                        .map_or_else(|| "it is not active".to_owned(), |(_, reason)| format!("it failed ({reason})"));
                    (
                        format!("from plugin '{provider}', but {why}"),
                        format!("fix plugin '{provider}' so it registers, or change the routes' access policy"),
                    )
                }
                None => (
                    "but no plugin of this build provides it".to_owned(),
                    "link a plugin that provides it (one that registers an access provider for it), or change the routes' access policy".to_owned(),
                ),
            };
            let message = format!(
                "plugin '{}' has {} route(s) that need {} {source}: {}",
                plugin.name,
                routes.len(),
                capability.describe(),
                routes.join(", ")
            );
            self.refuse(plugin, "CP004", message, hint);
        }
        let out: BTreeSet<&str> = self.out.keys().copied().collect();
        active.retain(|a| !out.contains(a.plugin.name));
        let active = self.share_services(active);

        let providers = providers.into_iter().map(|(c, (_, p))| (c, p)).collect();
        (active, providers)
    }

    /// Services between plugins ([`callplane_plugin_api::services`]): one offer per type (CP002),
    /// every need met by an active plugin (CP004, as a failed registration: a non-critical plugin
    /// is left out, which may leave another's need unmet, hence the loop), then every want filled.
    fn share_services(&mut self, mut active: Vec<ActivePlugin>) -> Vec<ActivePlugin> {
        use callplane_plugin_api::services::{Offer, fill, unmet};
        let mut owners: BTreeMap<std::any::TypeId, &'static str> = BTreeMap::new();
        for a in &active {
            for offer in &a.registration.offers {
                match owners.get(&offer.type_id) {
                    Some(first) if *first != a.plugin.name => self.refuse(
                        a.plugin,
                        "CP002",
                        format!(
                            "plugins '{first}' and '{}' both offer the service {}",
                            a.plugin.name, offer.type_name
                        ),
                        "exactly one plugin may offer each service; drop one of them".to_owned(),
                    ),
                    _ => {
                        owners.insert(offer.type_id, a.plugin.name);
                    }
                }
            }
        }
        loop {
            active.retain(|a| !self.out.contains_key(a.plugin.name));
            // A plugin left out here takes those that require it along, as in registration.
            let orphans: Vec<(&'static RoutePlugin, &'static str)> = active
                .iter()
                .filter_map(|a| {
                    let missing = a.plugin.requires.iter().find(|r| self.out.contains_key(*r))?;
                    Some((a.plugin, *missing))
                })
                .collect();
            if !orphans.is_empty() {
                for (plugin, missing) in orphans {
                    let (message, hint) = requirement_finding(plugin, missing, "was left out");
                    self.refuse(plugin, "CP004", message, hint);
                }
                continue;
            }
            let offers: Vec<&Offer> = active.iter().flat_map(|a| &a.registration.offers).collect();
            let lacking: Vec<(&'static RoutePlugin, Vec<String>)> = active
                .iter()
                .map(|a| {
                    let unmet = unmet(&a.registration.wants, &offers);
                    (a.plugin, unmet.into_iter().map(str::to_owned).collect::<Vec<_>>())
                })
                .filter(|(_, unmet)| !unmet.is_empty())
                .collect();
            if lacking.is_empty() {
                for a in &active {
                    fill(&a.registration.wants, &offers);
                }
                return active;
            }
            for (plugin, unmet) in lacking {
                let name = plugin.name;
                let hint = if self.critical(plugin) {
                    "link and enable the plugin that offers it; a critical plugin cannot run without it".to_owned()
                } else {
                    format!(
                        "link and enable the plugin that offers it; plugin '{name}' is not critical, so the host starts without it (DEGRADED)"
                    )
                };
                self.fail(
                    plugin,
                    "CP004",
                    format!(
                        "plugin '{name}' needs the service {} which no active plugin offers",
                        unmet.join(", ")
                    ),
                    hint,
                );
            }
        }
    }

    /// The plugin reports in boot order, and the findings in a deterministic order (by plugin in
    /// boot order, then id).
    fn finish(
        self,
        order: &[&'static str],
        active: &[ActivePlugin],
        reports: &mut BTreeMap<String, PluginReport>,
    ) -> (Vec<Finding>, Vec<PluginReport>) {
        // Reports and deterministic finding order.
        for a in active {
            if let Some(r) = reports.get_mut(a.plugin.name) {
                r.status = PluginStatus::Active;
                r.routes = a.registration.routes.len();
            }
        }
        for (name, (status, reason)) in &self.out {
            if let Some(r) = reports.get_mut(*name) {
                r.status = *status;
                r.reason = Some(reason.clone());
            }
        }
        let display: Vec<String> = order
            .iter()
            .map(|n| n.to_string())
            .chain(reports.keys().filter(|n| !order.contains(&n.as_str())).cloned())
            .collect();
        let rank = |plugin: &Option<String>| match plugin {
            None => 0,
            Some(p) if p == HOST => display.len() + 1,
            Some(p) => display.iter().position(|n| n == p).map_or(display.len() + 1, |i| i + 1),
        };
        let mut findings = self.findings;
        findings.sort_by_key(|f| (rank(&f.plugin), f.id));
        let plugins = display.iter().filter_map(|n| reports.remove(n)).collect();
        (findings, plugins)
    }
}

fn report(plugin: &RoutePlugin, critical: bool) -> PluginReport {
    PluginReport {
        name: plugin.name.to_owned(),
        version: plugin.version.to_owned(),
        summary: plugin.summary.to_owned(),
        critical,
        requires: plugin.requires.iter().map(|r| r.to_string()).collect(),
        status: PluginStatus::Failed,
        routes: 0,
        reason: None,
    }
}

fn requirement_finding(plugin: &RoutePlugin, required: &str, state: &str) -> (String, String) {
    (
        format!("plugin '{}' requires '{required}', which {state}", plugin.name),
        format!("build with plugin-{required} and make sure it registers, or remove the requirement"),
    )
}

/// Marks, until nothing changes, every plugin whose requirement is absent or out.
fn propagate_requirements(planner: &mut Planner<'_>, candidates: &BTreeMap<&'static str, &'static RoutePlugin>) {
    loop {
        let mut changed = false;
        for (name, plugin) in candidates {
            if planner.out.contains_key(name) {
                continue;
            }
            let problem = plugin.requires.iter().find_map(|r| {
                if !candidates.contains_key(r) {
                    Some((r, "is absent from this binary".to_owned()))
                } else {
                    planner
                        .out
                        .get(r)
                        .map(|(_, reason)| (r, format!("cannot run ({reason})")))
                }
            });
            if let Some((required, state)) = problem {
                let (message, hint) = requirement_finding(plugin, required, &state);
                planner.refuse(plugin, "CP004", message, hint);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
}

/// Every elementary cycle reachable in the requirement graph, each reported once, rotated to start
/// at its smallest name.
fn find_cycles(candidates: &BTreeMap<&'static str, &'static RoutePlugin>) -> Vec<Vec<&'static str>> {
    fn visit(
        node: &'static str,
        candidates: &BTreeMap<&'static str, &'static RoutePlugin>,
        stack: &mut Vec<&'static str>,
        done: &mut BTreeSet<&'static str>,
        cycles: &mut BTreeSet<Vec<&'static str>>,
    ) {
        if let Some(pos) = stack.iter().position(|n| *n == node) {
            let mut cycle = stack[pos..].to_vec();
            let min = cycle.iter().enumerate().min_by_key(|(_, n)| **n).map_or(0, |(i, _)| i);
            cycle.rotate_left(min);
            cycles.insert(cycle);
            return;
        }
        if done.contains(node) {
            return;
        }
        stack.push(node);
        for required in candidates[node].requires {
            if let Some((name, _)) = candidates.get_key_value(required) {
                visit(name, candidates, stack, done, cycles);
            }
        }
        stack.pop();
        done.insert(node);
    }
    let mut cycles = BTreeSet::new();
    let mut done = BTreeSet::new();
    for name in candidates.keys() {
        visit(name, candidates, &mut Vec::new(), &mut done, &mut cycles);
    }
    cycles.into_iter().collect()
}

/// Requirements first, then name (Kahn's algorithm with a sorted ready set).
fn boot_order(
    candidates: &BTreeMap<&'static str, &'static RoutePlugin>,
    out: &BTreeMap<&'static str, (PluginStatus, String)>,
) -> Vec<&'static str> {
    let runnable: BTreeMap<&'static str, &'static RoutePlugin> = candidates
        .iter()
        .filter(|(n, _)| !out.contains_key(*n))
        .map(|(n, p)| (*n, *p))
        .collect();
    let mut pending: BTreeMap<&'static str, usize> = runnable
        .iter()
        .map(|(n, p)| {
            (
                *n,
                // Distinct requirements: each lowers the count once when it registers.
                p.requires
                    .iter()
                    .filter(|r| runnable.contains_key(*r))
                    .collect::<BTreeSet<_>>()
                    .len(),
            )
        })
        .collect();
    let mut ready: BTreeSet<&'static str> = pending.iter().filter(|(_, d)| **d == 0).map(|(n, _)| *n).collect();
    let mut order = Vec::with_capacity(runnable.len());
    while let Some(name) = ready.pop_first() {
        pending.remove(name);
        order.push(name);
        for (other, plugin) in &runnable {
            if plugin.requires.contains(&name)
                && let Some(degree) = pending.get_mut(other)
            {
                *degree -= 1;
                if *degree == 0 {
                    ready.insert(other);
                }
            }
        }
    }
    order
}

/// CP003 (collisions), CP007/CP008 (webhook policies), CP009 (public API routes), CP013 (sign-in
/// pages).
fn check_routes(routes: &[RouteSpec], findings: &mut Vec<Finding>) {
    for route in routes {
        let Some(page) = route.sign_in else { continue };
        let served = routes
            .iter()
            .any(|r| r.method == actix_web::http::Method::GET && r.path == page && r.access == Access::Public);
        if !served {
            findings.push(Finding::error(
                "CP013",
                Some(route.plugin),
                format!(
                    "route {} {} sends visitors without a session to {page}, which is no public GET route",
                    route.method, route.path
                ),
                format!("declare GET {page} with Access::Public, or name the sign-in page that exists"),
            ));
        }
    }
    let mut seen: BTreeMap<(String, String), &RouteSpec> = BTreeMap::new();
    let mut shapes: BTreeMap<String, &RouteSpec> = BTreeMap::new();
    for route in routes {
        let key = (route.method.to_string(), route.shape());
        if let Some(first) = seen.get(&key) {
            findings.push(Finding::error(
                "CP003",
                Some(route.plugin),
                format!(
                    "route {} {} of plugin '{}' collides with {} {} of plugin '{}' (actix would silently serve only the first)",
                    route.method, route.path, route.plugin, first.method, first.path, first.plugin
                ),
                "give one of the routes another path or method",
            ));
        } else if let Some(first) = shapes.get(&route.shape())
            && first.path != route.path
        {
            // Same shape, other parameter names: actix matches the first resource of that shape
            // for every method, so the other routes would answer 405 forever.
            findings.push(Finding::error(
                "CP003",
                Some(route.plugin),
                format!(
                    "route {} {} of plugin '{}' has the shape of {} {} of plugin '{}' with other parameter names (actix would route both to the first)",
                    route.method, route.path, route.plugin, first.method, first.path, first.plugin
                ),
                format!("name the parameters as in {}", first.path),
            ));
        }
        seen.entry(key).or_insert(route);
        shapes.entry(route.shape()).or_insert(route);
        // Twilio's media sockets are webhooks too: signed, never behind a session.
        let webhook =
            route.path == "/webhook" || route.path.starts_with("/webhook/") || route.path.starts_with("/ws/twilio/");
        if webhook {
            match route.access {
                Access::TwilioSignature => {}
                Access::PageAccess(page) => findings.push(Finding::error(
                    "CP008",
                    Some(route.plugin),
                    format!(
                        "webhook route {} {} uses PageAccess({page}): Twilio has no session, so every call would be refused",
                        route.method, route.path
                    ),
                    "declare webhook routes with Access::TwilioSignature",
                )),
                other => findings.push(Finding::error(
                    "CP007",
                    Some(route.plugin),
                    format!("webhook route {} {} is {other}, not TwilioSignature", route.method, route.path),
                    "declare webhook routes with Access::TwilioSignature so forged calls are refused",
                )),
            }
        }
        let api = route.path.starts_with("/api/");
        let allowed = PUBLIC_API_ALLOWLIST
            .iter()
            .any(|(m, p)| route.method.as_str() == *m && route.path == *p);
        if api && route.access == Access::Public && !allowed {
            findings.push(Finding::error(
                "CP009",
                Some(route.plugin),
                format!(
                    "API route {} {} is Public but not on the public allow-list",
                    route.method, route.path
                ),
                format!(
                    "declare it Authenticated, Admin or PageAccess(..); only {} may be public",
                    PUBLIC_API_ALLOWLIST
                        .iter()
                        .map(|(m, p)| format!("{m} {p}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-text panic payload".to_owned())
}

/// The hint of CP001 for `name`: a bundled plugin (one of the default manifest) was compiled out;
/// any other name is not known to this build, so the hint names what is linked and the closest
/// match.
fn missing_plugin_hint<'a>(name: &str, linked: impl Iterator<Item = &'a str> + Clone) -> String {
    if Config::default().critical_plugins.iter().any(|bundled| bundled == name) {
        return format!("build with the default features or remove '{name}' from CALLPLANE_CRITICAL_PLUGINS");
    }
    let known = linked.clone().collect::<Vec<_>>().join(", ");
    let guess = crate::config::closest(name, linked)
        .map(|close| format!("did you mean '{close}'? "))
        .unwrap_or_default();
    format!(
        "{guess}no plugin of this build is named '{name}' (it links: {known}); remove it from CALLPLANE_CRITICAL_PLUGINS or link the crate that provides it"
    )
}

#[cfg(test)]
mod tests {
    use actix_web::HttpResponse;
    use actix_web::dev::ServiceRequest;
    use callplane_plugin_api::{Access, AccessProvider, Capability, Migration};
    use futures_util::future::LocalBoxFuture;

    use super::*;

    struct AllowAll;

    impl AccessProvider for AllowAll {
        fn authorize<'a>(
            &'a self,
            _: &'a mut ServiceRequest,
            _: Access,
        ) -> LocalBoxFuture<'a, Result<(), HttpResponse>> {
            Box::pin(async { Ok(()) })
        }
    }

    async fn ok() -> &'static str {
        "ok"
    }

    const fn plugin(
        name: &'static str,
        requires: &'static [&'static str],
        critical: bool,
        register: fn(&mut Registrar<'_>) -> Result<(), RegisterError>,
    ) -> RoutePlugin {
        RoutePlugin {
            name,
            version: "1.2.3",
            summary: "test plugin",
            requires,
            critical,
            register,
            commands: &[],
            config: &[],
            deploy_checks: &[],
        }
    }

    fn sessions(reg: &mut Registrar<'_>) -> Result<(), RegisterError> {
        reg.provide_access(Capability::Sessions, AllowAll);
        reg.post("/api/auth/login", Access::Public, ok)
            .get("/api/me", Access::Authenticated, ok);
        Ok(())
    }
    fn signatures(reg: &mut Registrar<'_>) -> Result<(), RegisterError> {
        reg.provide_access(Capability::TwilioSignature, AllowAll);
        reg.post("/webhook/incoming_call", Access::TwilioSignature, ok);
        Ok(())
    }
    fn notes(reg: &mut Registrar<'_>) -> Result<(), RegisterError> {
        reg.get("/api/notes/{id}", Access::PageAccess("notes"), ok);
        Ok(())
    }
    fn other_notes(reg: &mut Registrar<'_>) -> Result<(), RegisterError> {
        reg.get("/api/notes/{note_id}", Access::PageAccess("notes"), ok);
        Ok(())
    }
    fn nothing(_: &mut Registrar<'_>) -> Result<(), RegisterError> {
        Ok(())
    }
    fn fails(_: &mut Registrar<'_>) -> Result<(), RegisterError> {
        Err(RegisterError::Other("database schema too new".into()))
    }
    fn panics(_: &mut Registrar<'_>) -> Result<(), RegisterError> {
        panic!("boom at registration")
    }
    fn bad_config(_: &mut Registrar<'_>) -> Result<(), RegisterError> {
        Err(RegisterError::Config {
            key: "twilio.api_base".into(),
            message: "unreachable".into(),
        })
    }
    fn bad_path(reg: &mut Registrar<'_>) -> Result<(), RegisterError> {
        reg.get("/api/x//y", Access::Authenticated, ok);
        Ok(())
    }
    fn webhook_public(reg: &mut Registrar<'_>) -> Result<(), RegisterError> {
        reg.post("/webhook/open", Access::Public, ok)
            .post("/webhook/paged", Access::PageAccess("calls"), ok);
        Ok(())
    }
    fn public_api(reg: &mut Registrar<'_>) -> Result<(), RegisterError> {
        reg.get("/api/leak", Access::Public, ok);
        Ok(())
    }
    fn pages(reg: &mut Registrar<'_>) -> Result<(), RegisterError> {
        reg.get("/pages/login", Access::Public, ok)
            .get("/pages/a", Access::PageAccess("calls"), ok)
            .sign_in("/pages/login")
            .get("/pages/b", Access::PageAccess("calls"), ok)
            .sign_in("/pages/nowhere")
            .get("/pages/guarded-login", Access::PageAccess("calls"), ok)
            .get("/pages/c", Access::PageAccess("calls"), ok)
            .sign_in("/pages/guarded-login");
        Ok(())
    }
    fn shadows_livez(reg: &mut Registrar<'_>) -> Result<(), RegisterError> {
        reg.get("/livez", Access::Public, ok);
        Ok(())
    }

    static PERMISSIONS: RoutePlugin = plugin("permissions", &[], false, sessions);
    static TWILIO: RoutePlugin = plugin("twilio", &[], false, signatures);
    static NOTES: RoutePlugin = plugin("notes", &["permissions"], false, notes);
    static NOTES_AGAIN: RoutePlugin = plugin("notes", &[], false, nothing);
    static MEMOS: RoutePlugin = plugin("memos", &["permissions"], false, other_notes);
    static LONELY: RoutePlugin = plugin("lonely", &[], false, notes);
    static NEEDS_GHOST: RoutePlugin = plugin("needs-ghost", &["ghost"], false, nothing);
    static NEEDS_NEEDY: RoutePlugin = plugin("needs-needy", &["needs-ghost"], false, nothing);
    static CYCLE_A: RoutePlugin = plugin("cycle-a", &["cycle-b"], false, nothing);
    static CYCLE_B: RoutePlugin = plugin("cycle-b", &["cycle-a"], false, nothing);
    static FAILS: RoutePlugin = plugin("fails", &[], false, fails);
    static FAILS_CRITICAL: RoutePlugin = plugin("fails-critical", &[], true, fails);
    static PANICS: RoutePlugin = plugin("panics", &[], false, panics);
    static BAD_CONFIG: RoutePlugin = plugin("bad-config", &[], false, bad_config);
    static BAD_PATH: RoutePlugin = plugin("bad-path", &[], false, bad_path);
    static WEBHOOKS: RoutePlugin = plugin("webhooks", &[], false, webhook_public);
    static PUBLIC_API: RoutePlugin = plugin("public-api", &[], false, public_api);
    static SHADOW: RoutePlugin = plugin("shadow", &[], false, shadows_livez);
    static PAGES: RoutePlugin = plugin("pages", &["permissions"], false, pages);
    static SECOND_SESSIONS: RoutePlugin = plugin("sessions-two", &[], false, |reg| {
        reg.provide_access(Capability::Sessions, AllowAll);
        Ok(())
    });
    static BAD_NAME: RoutePlugin = plugin("Bad Name", &[], false, nothing);
    static REPEATS: RoutePlugin = plugin("repeats", &["permissions", "permissions"], true, notes);
    static DELETES: RoutePlugin = plugin("deletes", &["permissions"], false, |reg| {
        reg.delete("/api/notes/{note}", Access::PageAccess("notes"), ok);
        Ok(())
    });

    fn run(linked: &[&'static RoutePlugin], critical: &[&str]) -> BootPlan {
        let config = Config {
            critical_plugins: critical.iter().map(|s| s.to_string()).collect(),
            ..Config::default()
        };
        let db = Db::connect_lazy("sqlite::memory:").unwrap();
        plan(
            &config,
            linked,
            &db,
            &mut Registry::default(),
            crate::health::host_routes(),
        )
    }

    fn ids(plan: &BootPlan) -> Vec<(&'static str, Level, Option<&str>)> {
        plan.findings
            .iter()
            .map(|f| (f.id, f.level, f.plugin.as_deref()))
            .collect()
    }

    fn status(plan: &BootPlan, name: &str) -> PluginStatus {
        plan.plugins.iter().find(|p| p.name == name).map(|p| p.status).unwrap()
    }

    #[tokio::test]
    async fn a_valid_table_boots_in_requirement_then_name_order() {
        let plan = run(&[&TWILIO, &NOTES, &PERMISSIONS], &["permissions", "notes", "twilio"]);
        assert!(plan.findings.is_empty(), "{:?}", plan.findings);
        let order: Vec<&str> = plan.active.iter().map(|a| a.plugin.name).collect();
        assert_eq!(order, ["permissions", "notes", "twilio"]);
        assert_eq!(plan.routes.len(), crate::health::host_routes().len() + 2 + 1 + 1);
        assert_eq!(plan.providers.len(), 2);
        assert!(
            plan.plugins
                .iter()
                .all(|p| p.status == PluginStatus::Active && p.critical)
        );
    }

    #[tokio::test]
    async fn missing_critical_plugins_are_cp001() {
        let plan = run(&[&PERMISSIONS], &["permissions", "calendar", "twilio"]);
        assert_eq!(
            ids(&plan),
            [
                ("CP001", Level::Error, Some("calendar")),
                ("CP001", Level::Error, Some("twilio"))
            ]
        );
        assert_eq!(status(&plan, "twilio"), PluginStatus::Missing);
        assert!(
            plan.findings[1]
                .message
                .contains("'twilio' is missing: not compiled into this binary")
        );
    }

    #[tokio::test]
    async fn an_unknown_critical_name_gets_a_hint_that_names_what_is_linked() {
        let plan = run(&[&PERMISSIONS, &NOTES], &["permissions", "billing", "note"]);
        let hints: Vec<&str> = plan.findings.iter().map(|f| f.hint.as_str()).collect();
        assert_eq!(
            hints,
            [
                "no plugin of this build is named 'billing' (it links: notes, permissions); remove it from CALLPLANE_CRITICAL_PLUGINS or link the crate that provides it",
                "did you mean 'notes'? no plugin of this build is named 'note' (it links: notes, permissions); remove it from CALLPLANE_CRITICAL_PLUGINS or link the crate that provides it",
            ]
        );
        let bundled = run(&[&PERMISSIONS], &["permissions", "twilio"]);
        assert!(
            bundled.findings[0].hint
                == "build with the default features or remove 'twilio' from CALLPLANE_CRITICAL_PLUGINS",
            "{}",
            bundled.findings[0].hint
        );
    }

    fn noop_command() -> clap::Command {
        clap::Command::new("x")
    }
    const CHECK_AGAIN: callplane_plugin_api::PluginCommand = callplane_plugin_api::PluginCommand {
        name: "check",
        summary: "clashes with the host's",
        definition: noop_command,
        database: false,
        run: |_| Box::pin(async { Ok(()) }),
    };
    const REPORT: callplane_plugin_api::PluginCommand = callplane_plugin_api::PluginCommand {
        name: "report",
        ..CHECK_AGAIN
    };
    static CLASHES_WITH_HOST: RoutePlugin = RoutePlugin {
        commands: &[CHECK_AGAIN],
        ..plugin("clash-host", &[], true, nothing)
    };
    static REPORTS_A: RoutePlugin = RoutePlugin {
        commands: &[REPORT],
        ..plugin("reports-a", &[], true, nothing)
    };
    static REPORTS_B: RoutePlugin = RoutePlugin {
        commands: &[REPORT],
        ..plugin("reports-b", &[], true, nothing)
    };

    #[tokio::test]
    async fn command_names_taken_by_the_host_or_another_plugin_are_cp002() {
        let plan = run(&[&CLASHES_WITH_HOST, &REPORTS_A, &REPORTS_B], &[]);
        assert_eq!(
            ids(&plan),
            [
                ("CP002", Level::Error, Some("clash-host")),
                ("CP002", Level::Error, Some("reports-b"))
            ]
        );
        assert!(plan.findings[0].message.contains("which 'host' already defines"));
        assert!(plan.findings[1].message.contains("which 'reports-a' already defines"));
    }

    static STATE_A: RoutePlugin = plugin("state-a", &[], true, |reg| {
        reg.state(7_u32);
        Ok(())
    });
    static STATE_B: RoutePlugin = plugin("state-b", &[], true, |reg| {
        reg.state(8_u32);
        Ok(())
    });
    static STATE_TWICE: RoutePlugin = plugin("state-twice", &[], true, |reg| {
        reg.state(7_u32);
        reg.state(8_u32);
        Ok(())
    });
    static MIGRATIONS_BACKWARDS: RoutePlugin = plugin("backwards", &[], true, |reg| {
        reg.migrations(&[
            Migration::portable(2, "two", "SELECT 1;"),
            Migration::portable(1, "one", "SELECT 1;"),
        ]);
        Ok(())
    });

    #[tokio::test]
    async fn shadowed_state_and_migrations_out_of_order_are_found_at_plan_time() {
        let plan = run(&[&STATE_A, &STATE_B], &[]);
        assert_eq!(ids(&plan), [("CP002", Level::Error, Some("state-b"))]);
        assert!(
            plan.findings[0].message.contains("type u32"),
            "{}",
            plan.findings[0].message
        );
        let plan = run(&[&STATE_TWICE, &MIGRATIONS_BACKWARDS], &[]);
        assert_eq!(
            ids(&plan),
            [
                ("CP006", Level::Error, Some("backwards")),
                ("CP006", Level::Error, Some("state-twice"))
            ]
        );
        assert!(
            plan.findings[0]
                .message
                .contains("migration version 1 follows version 2"),
            "{}",
            plan.findings[0].message
        );
        assert!(
            plan.findings[1].message.contains("declared twice"),
            "{}",
            plan.findings[1].message
        );
    }

    #[tokio::test]
    async fn duplicate_names_are_cp002() {
        let plan = run(&[&NOTES, &PERMISSIONS, &NOTES_AGAIN], &[]);
        assert_eq!(ids(&plan), [("CP002", Level::Error, Some("notes"))]);
        assert!(plan.findings[0].message.contains("2 plugins share the name 'notes'"));
        assert_eq!(status(&plan, "notes"), PluginStatus::Failed);
    }

    #[tokio::test]
    async fn two_providers_of_one_capability_are_cp002() {
        let plan = run(&[&PERMISSIONS, &SECOND_SESSIONS], &[]);
        assert_eq!(ids(&plan), [("CP002", Level::Error, Some("sessions-two"))]);
    }

    #[tokio::test]
    async fn colliding_routes_are_cp003_even_with_other_parameter_names() {
        let plan = run(&[&PERMISSIONS, &NOTES, &MEMOS, &SHADOW], &[]);
        let found = ids(&plan);
        assert_eq!(
            found,
            [
                ("CP003", Level::Error, Some("notes")),
                ("CP003", Level::Error, Some("shadow"))
            ]
        );
        assert!(
            plan.findings[0].message.contains(
                "GET /api/notes/{id} of plugin 'notes' collides with GET /api/notes/{note_id} of plugin 'memos'"
            ),
            "{}",
            plan.findings[0].message
        );
        assert!(plan.findings[1].message.contains("plugin 'host'"));
    }

    #[tokio::test]
    async fn absent_requirements_are_cp004_and_propagate() {
        let plan = run(&[&NEEDS_GHOST, &NEEDS_NEEDY], &["needs-needy"]);
        assert_eq!(
            ids(&plan),
            [
                ("CP004", Level::Error, Some("needs-ghost")),
                ("CP004", Level::Error, Some("needs-needy"))
            ]
        );
        assert_eq!(
            status(&plan, "needs-ghost"),
            PluginStatus::Failed,
            "CP004 is an error, critical or not"
        );
        assert_eq!(status(&plan, "needs-needy"), PluginStatus::Failed);
        assert!(plan.findings[0].message.contains("requires 'ghost', which is absent"));
    }

    #[tokio::test]
    async fn page_access_without_a_session_provider_is_cp004() {
        let plan = run(&[&LONELY], &["lonely"]);
        assert_eq!(ids(&plan), [("CP004", Level::Error, Some("lonely"))]);
        let message = &plan.findings[0].message;
        assert!(
            message.contains("need session and page-access resolution but no plugin of this build provides it"),
            "{message}"
        );
        assert!(message.contains("GET /api/notes/{id} (PageAccess(notes))"), "{message}");
        // Not critical either: a page-access route without page-access resolution never serves.
        let plan = run(&[&LONELY], &[]);
        assert_eq!(ids(&plan), [("CP004", Level::Error, Some("lonely"))]);
        assert_eq!(status(&plan, "lonely"), PluginStatus::Failed);
        assert_eq!(
            plan.routes.len(),
            crate::health::host_routes().len(),
            "only the host routes remain"
        );
    }

    #[tokio::test]
    async fn requirement_cycles_are_cp005() {
        let plan = run(&[&CYCLE_B, &CYCLE_A, &PERMISSIONS], &[]);
        assert_eq!(ids(&plan), [("CP005", Level::Error, Some("cycle-a"))]);
        assert!(plan.findings[0].message.contains("'cycle-a' → 'cycle-b' → 'cycle-a'"));
        assert_eq!(plan.active.len(), 1);
    }

    #[tokio::test]
    async fn registration_errors_and_panics_are_cp006() {
        let plan = run(
            &[&FAILS, &PANICS, &FAILS_CRITICAL, &BAD_PATH, &PERMISSIONS],
            &["panics"],
        );
        assert_eq!(
            ids(&plan),
            [
                ("CP006", Level::Warning, Some("bad-path")),
                ("CP006", Level::Warning, Some("fails")),
                ("CP006", Level::Error, Some("fails-critical")),
                ("CP006", Level::Error, Some("panics")),
            ]
        );
        assert!(plan.findings[3].message.contains("panicked: boom at registration"));
        assert!(plan.findings[0].message.contains("empty path segment"));
        assert_eq!(status(&plan, "fails"), PluginStatus::Disabled);
        assert_eq!(status(&plan, "panics"), PluginStatus::Failed);
        assert_eq!(status(&plan, "permissions"), PluginStatus::Active);
    }

    #[tokio::test]
    async fn webhook_policies_are_cp007_and_cp008() {
        let plan = run(&[&WEBHOOKS, &PERMISSIONS], &[]);
        assert_eq!(
            ids(&plan),
            [
                ("CP007", Level::Error, Some("webhooks")),
                ("CP008", Level::Error, Some("webhooks"))
            ]
        );
    }

    #[tokio::test]
    async fn public_api_routes_off_the_allow_list_are_cp009() {
        let plan = run(&[&PUBLIC_API, &PERMISSIONS], &[]);
        assert_eq!(
            ids(&plan),
            [("CP009", Level::Error, Some("public-api"))],
            "login itself is allowed"
        );
    }

    #[tokio::test]
    async fn a_sign_in_page_that_is_no_public_get_route_is_cp013() {
        let plan = run(&[&PAGES, &PERMISSIONS], &[]);
        assert_eq!(
            ids(&plan),
            [
                ("CP013", Level::Error, Some("pages")),
                ("CP013", Level::Error, Some("pages"))
            ],
            "a missing page and one behind a session; the public one is fine"
        );
    }

    #[tokio::test]
    async fn plugin_configuration_errors_are_cp010_and_invalid_names_cp006() {
        let plan = run(&[&BAD_CONFIG, &BAD_NAME], &[]);
        assert_eq!(
            ids(&plan),
            [
                ("CP010", Level::Error, Some("bad-config")),
                ("CP006", Level::Error, Some("Bad Name"))
            ]
        );
    }

    #[tokio::test]
    async fn a_requirement_listed_twice_still_registers() {
        let plan = run(&[&REPEATS, &PERMISSIONS], &["repeats"]);
        assert!(plan.findings.is_empty(), "{:?}", plan.findings);
        assert_eq!(status(&plan, "repeats"), PluginStatus::Active);
    }

    #[tokio::test]
    async fn one_shape_with_other_parameter_names_is_cp003_across_methods() {
        let plan = run(&[&PERMISSIONS, &NOTES, &DELETES], &[]);
        // `deletes` registers first (name order), so `notes` is the one reported.
        assert_eq!(ids(&plan), [("CP003", Level::Error, Some("notes"))]);
        assert!(
            plan.findings[0].hint.contains("/api/notes/{note}"),
            "{:?}",
            plan.findings[0]
        );
    }

    #[tokio::test]
    async fn findings_are_deterministic_whatever_the_link_order() {
        let a = run(
            &[&FAILS, &CYCLE_A, &NEEDS_GHOST, &CYCLE_B, &WEBHOOKS, &PERMISSIONS],
            &["ghost"],
        );
        let b = run(
            &[&PERMISSIONS, &WEBHOOKS, &CYCLE_B, &NEEDS_GHOST, &CYCLE_A, &FAILS],
            &["ghost"],
        );
        assert_eq!(a.findings, b.findings);
        assert_eq!(
            a.plugins.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            b.plugins.iter().map(|p| p.name.as_str()).collect::<Vec<_>>()
        );
        assert_eq!(a.findings.len(), 6, "{:#?}", a.findings);
    }

    /// A service of the tests' own: what one plugin offers and another needs.
    #[derive(Debug, PartialEq)]
    struct Greeting(&'static str);

    static HEARD: std::sync::Mutex<Vec<callplane_plugin_api::Wanted<Greeting>>> = std::sync::Mutex::new(Vec::new());

    fn offers(reg: &mut Registrar<'_>) -> Result<(), RegisterError> {
        reg.offer(Arc::new(Greeting("hello")));
        Ok(())
    }
    fn needs(reg: &mut Registrar<'_>) -> Result<(), RegisterError> {
        let wanted = reg.need::<Greeting>();
        HEARD.lock().unwrap().push(wanted);
        Ok(())
    }

    fn offers_then_fails(reg: &mut Registrar<'_>) -> Result<(), RegisterError> {
        reg.offer(Arc::new(Greeting("never heard")));
        Err(RegisterError::Other("failed after offering".into()))
    }

    static OFFERS: RoutePlugin = plugin("offers", &[], false, offers);
    static OFFERS_THEN_FAILS: RoutePlugin = plugin("offers-then-fails", &[], false, offers_then_fails);
    static OFFERS_TOO: RoutePlugin = plugin("offers-too", &[], false, offers);
    static NEEDS: RoutePlugin = plugin("needs", &[], false, needs);
    static NEEDS_CRITICAL: RoutePlugin = plugin("needs-critical", &[], true, needs);
    static NEEDS_NEEDS: RoutePlugin = plugin("needs-needs", &["needs"], false, nothing);

    #[actix_rt::test]
    async fn services_reach_active_plugins_and_unmet_needs_fail_like_registrations() {
        // Offered and needed: both active, the handle filled once every plugin registered.
        HEARD.lock().unwrap().clear();
        let plan = run(&[&NEEDS, &OFFERS], &[]);
        assert!(!plan.has_errors(), "{:#?}", plan.findings);
        assert_eq!(status(&plan, "needs"), PluginStatus::Active);
        let heard = HEARD.lock().unwrap().pop().unwrap();
        assert_eq!(heard.get(), Some(&Greeting("hello")));

        // Nobody offers it: a non-critical plugin is left out (and what requires it goes too),
        // a critical one stops the boot.
        let plan = run(&[&NEEDS, &NEEDS_NEEDS], &[]);
        assert_eq!(status(&plan, "needs"), PluginStatus::Disabled);
        assert_eq!(status(&plan, "needs-needs"), PluginStatus::Failed);
        assert!(
            ids(&plan).contains(&("CP004", Level::Warning, Some("needs"))),
            "{:#?}",
            plan.findings
        );
        let unmet = plan
            .findings
            .iter()
            .find(|f| f.plugin.as_deref() == Some("needs"))
            .unwrap();
        assert!(
            unmet.message.contains("needs the service") && unmet.message.contains("Greeting"),
            "{}",
            unmet.message
        );
        let plan = run(&[&NEEDS_CRITICAL], &[]);
        assert!(plan.has_errors());
        assert_eq!(status(&plan, "needs-critical"), PluginStatus::Failed);

        // An offer of a plugin that failed reaches no one; two offers of one type are CP002.
        let plan = run(&[&NEEDS, &OFFERS_THEN_FAILS], &[]);
        assert_eq!(status(&plan, "offers-then-fails"), PluginStatus::Disabled);
        assert_eq!(status(&plan, "needs"), PluginStatus::Disabled, "{:#?}", plan.findings);
        let plan = run(&[&OFFERS, &OFFERS_TOO], &[]);
        assert!(
            ids(&plan).contains(&("CP002", Level::Error, Some("offers-too"))),
            "{:#?}",
            plan.findings
        );
    }
}
