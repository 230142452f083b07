//! The real `callplane` binary. A default build holds every critical plugin and boots; a
//! `--no-default-features` build (built here for real, in its own target directory) must refuse
//! with CP001 for each, before binding a port; a build with `calendar` but without `permissions`
//! must refuse with CP004: calendar routes are never served without page-access resolution.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::path::{Path, PathBuf};

use callplane_e2e::harness::{Outcome, Sandbox};

const BIN: &str = env!("CARGO_BIN_EXE_callplane");

fn cp001_plugins(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            l.split_once("[BOOT][FATAL] CP001 critical plugin '")?
                .1
                .split_once('\'')
                .map(|(n, _)| n.to_owned())
        })
        .collect()
}

fn all(o: &Outcome) -> String {
    format!("{}{}", o.stdout, o.stderr)
}

/// `serve` while the test holds the port exits 78 (not 1, which a bind attempt on a held port
/// gives); `check` agrees, in text and JSON; the refusal is in the log file too.
fn assert_refuses(bin: &Path, missing: &[&str]) {
    let sandbox = Sandbox::new();
    let served = sandbox.serve_refused(bin, &[]);
    assert_eq!(served.code, Some(78), "{}", all(&served));
    assert_eq!(cp001_plugins(&served.stdout), missing, "{}", served.stdout);
    assert!(
        served.stdout.contains(
            "[BOOT]    hint: build with the default features or remove 'calendar' from CALLPLANE_CRITICAL_PLUGINS"
        ),
        "{}",
        served.stdout
    );
    assert_eq!(
        cp001_plugins(&sandbox.log_text()),
        missing,
        "the refusal is in the log file too"
    );

    let checked = sandbox.run(bin, &["check"], &[]);
    assert_eq!(checked.code, Some(78));
    assert_eq!(cp001_plugins(&checked.stdout), missing);
    let json = sandbox.run(bin, &["check", "--format", "json"], &[]);
    assert_eq!(json.code, Some(78));
    let report: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(report["ok"], false);
    let reported: Vec<&str> = report["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["status"] == "missing")
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(reported, missing);
}

#[test]
fn stripped_builds_refuse_before_binding() {
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("stripped-builds");
    let build = |features: Option<&str>| {
        let mut cargo = escargot::CargoBuild::new()
            .manifest_path(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .package("callplane")
            .bin("callplane")
            .no_default_features()
            .target_dir(&target);
        if let Some(features) = features {
            cargo = cargo.features(features);
        }
        cargo.run().expect("cargo build -p callplane --no-default-features")
    };
    // One after the other: both builds write the same binary path.
    let bare = build(None);
    assert_refuses(bare.path(), &["calendar", "permissions", "twilio"]);
    let sandbox = Sandbox::new();
    let routes = sandbox.run(bare.path(), &["routes", "--format", "json"], &[]);
    assert_eq!(routes.code, Some(78), "listings report the refusal too");
    let table: serde_json::Value = serde_json::from_str(&routes.stdout).unwrap();
    let plugins: Vec<&str> = table["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["plugin"].as_str().unwrap())
        .collect();
    assert!(
        !plugins.is_empty() && plugins.iter().all(|p| *p == "host"),
        "the host's own routes only: {plugins:?}"
    );
    let migrate = sandbox.run(bare.path(), &["migrate"], &[]);
    assert_eq!(migrate.code, Some(1));
    assert!(migrate.stderr.contains("refusing to migrate"), "{}", migrate.stderr);

    let calendar_only = build(Some("plugin-calendar"));
    let sandbox = Sandbox::new();
    let served = sandbox.serve_refused(calendar_only.path(), &[("CALLPLANE_CRITICAL_PLUGINS", "calendar")]);
    assert_eq!(served.code, Some(78), "{}", all(&served));
    let errors: Vec<String> = served
        .finding_ids()
        .into_iter()
        .filter(|id| !id.starts_with("CP1"))
        .collect();
    assert_eq!(errors, ["CP004"], "{}", served.stdout);
    assert!(
        served
            .stdout
            .contains("plugin 'calendar' requires 'permissions', which is absent from this binary"),
        "{}",
        served.stdout
    );
}

#[test]
fn the_default_build_holds_every_plugin_and_lists_the_calendar_routes() {
    let sandbox = Sandbox::new();
    let check = sandbox.run(Path::new(BIN), &["check"], &[]);
    assert_eq!(check.code, Some(0), "{}", all(&check));
    assert!(
        check.stdout.contains("[BOOT] check passed: plugins="),
        "{}",
        check.stdout
    );
    let routes = sandbox.run(Path::new(BIN), &["routes", "--format", "json"], &[]);
    assert_eq!(routes.code, Some(0));
    let table: serde_json::Value = serde_json::from_str(&routes.stdout).unwrap();
    let listed: Vec<(&str, &str, &str)> = table["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["method"].as_str().unwrap(),
                r["path"].as_str().unwrap(),
                r["access"].as_str().unwrap(),
            )
        })
        .collect();
    for expected in [
        ("GET", "/api/calendar/appointments", "PageAccess(calendar)"),
        ("POST", "/api/calendar/appointments", "PageAccess(calendar)"),
        ("GET", "/api/calendar/appointments/{id}", "PageAccess(calendar)"),
        ("PATCH", "/api/calendar/appointments/{id}", "PageAccess(calendar)"),
        ("DELETE", "/api/calendar/appointments/{id}", "PageAccess(calendar)"),
        ("POST", "/api/auth/login", "Public"),
        ("GET", "/api/users", "Admin"),
        ("POST", "/webhook/incoming_call", "TwilioSignature"),
        ("POST", "/api/calls/outbound", "PageAccess(calls)"),
        ("GET", "/livez", "Public"),
    ] {
        assert!(listed.contains(&expected), "{expected:?} missing from {listed:?}");
    }
    let text = sandbox.run(Path::new(BIN), &["routes"], &[]);
    assert!(
        text.stdout.contains("PATCH   /api/calendar/appointments/{id}"),
        "{}",
        text.stdout
    );
    let plugins = sandbox.run(Path::new(BIN), &["plugins", "--format", "json"], &[]);
    let listed: serde_json::Value = serde_json::from_str(&plugins.stdout).unwrap();
    let statuses: Vec<(&str, &str)> = listed["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["status"].as_str().unwrap()))
        .collect();
    // The bundled plugins are there and active; a build may link more (they are not counted).
    for bundled in [("permissions", "active"), ("calendar", "active"), ("twilio", "active")] {
        assert!(statuses.contains(&bundled), "{bundled:?} in {statuses:?}");
    }
    assert!(statuses.iter().all(|(_, status)| *status == "active"), "{statuses:?}");
    let count = format!("[BOOT] check passed: plugins={} ", statuses.len());
    assert!(check.stdout.contains(&count), "{count} in {}", check.stdout);
    let server = sandbox.serve(Path::new(BIN), &[]);
    assert_eq!(server.get("/readyz").status, 200);
}

#[test]
fn migrate_applies_every_plugin_once() {
    let sandbox = Sandbox::new();
    let migrate = sandbox.run(Path::new(BIN), &["migrate"], &[]);
    assert_eq!(migrate.code, Some(0), "{}", all(&migrate));
    for plugin in ["permissions", "calendar", "twilio"] {
        let line = format!("[MIGRATE] applied plugin={plugin} version=1");
        assert!(migrate.stdout.contains(&line), "{line}\n{}", migrate.stdout);
    }
    assert!(
        sandbox.path().join("callplane.db").exists(),
        "the embedded database is created on first use"
    );
    let again = sandbox.run(Path::new(BIN), &["migrate"], &[]);
    assert!(
        again.stdout.contains("[MIGRATE] done: 0 migration(s) applied"),
        "{}",
        again.stdout
    );
}

#[test]
fn usage_errors_are_reported_by_clap() {
    let sandbox = Sandbox::new();
    let help = sandbox.run(Path::new(BIN), &["--help"], &[]);
    assert_eq!(help.code, Some(0));
    for command in ["serve", "check", "routes", "plugins", "migrate", "admin", "simulate"] {
        assert!(help.stdout.contains(command), "{}", help.stdout);
    }
    let bad = sandbox.run(Path::new(BIN), &["check", "--format", "yaml"], &[]);
    assert_eq!(bad.code, Some(2));
}

/// `KEY=VALUE` lines of a systemd unit's `Environment=` entries or of an environment file.
fn assignments(text: &str, prefix: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(prefix)?.split_once('='))
        .filter(|(key, _)| !key.starts_with('#') && !key.is_empty())
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

#[test]
fn the_systemd_unit_and_environment_example_are_a_valid_configuration() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let unit = std::fs::read_to_string(root.join("deploy/systemd/callplane@.service")).unwrap();
    let example = std::fs::read_to_string(root.join("deploy/callplane.env.example")).unwrap();
    let mut vars = assignments(&example, "");
    vars.extend(assignments(&unit.replace("%i", "8081"), "Environment="));
    assert!(vars.len() >= 10, "{vars:?}");
    let sandbox = Sandbox::new();
    let env: Vec<(&str, &str)> = vars
        .iter()
        .map(|(k, v)| match k.as_str() {
            // Paths the service user owns in production; the test's own here.
            "CALLPLANE_LOG_DIR" | "CALLPLANE_SPOOL_DIR" => (k.as_str(), sandbox.path().to_str().unwrap()),
            _ => (k.as_str(), v.as_str()),
        })
        .collect();
    let out = sandbox.run(Path::new(BIN), &["check", "--format", "json"], &env);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let ids: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    // Not even a deploy warning: https public URL, trusted proxies, PostgreSQL for two instances.
    assert!(ids.is_empty(), "{}", out.stdout);
}

/// Kubernetes injects `CALLPLANE_*` service links into every pod of a namespace with a Service
/// named `callplane`: they are not configuration, so the pod boots; `config` lists them, shows
/// where every value came from, and never a secret.
#[test]
fn kubernetes_service_links_boot_and_config_shows_every_key() {
    let sandbox = Sandbox::new();
    let env = [
        ("CALLPLANE_SERVICE_HOST", "10.96.0.12"),
        ("CALLPLANE_SERVICE_PORT", "8080"),
        ("CALLPLANE_PORT", "tcp://10.96.0.12:8080"),
        ("CALLPLANE_PORT_8080_TCP", "tcp://10.96.0.12:8080"),
        ("CALLPLANE_PORT_8080_TCP_ADDR", "10.96.0.12"),
        ("CALLPLANE_LOG_FORMAT", "json"),
        ("TWILIO_AUTH_TOKEN", "a-real-looking-token-8d1f"),
    ];
    let checked = sandbox.run(Path::new(BIN), &["check"], &env);
    assert_eq!(checked.code, Some(0), "{}", all(&checked));
    let server = sandbox.serve(Path::new(BIN), &env);
    assert_eq!(server.get("/readyz").status, 200);
    drop(server);

    let shown = sandbox.run(Path::new(BIN), &["config", "--format", "json"], &env);
    assert_eq!(shown.code, Some(0), "{}", all(&shown));
    assert!(!all(&shown).contains("a-real-looking-token"), "{}", shown.stdout);
    let report: serde_json::Value = serde_json::from_str(&shown.stdout).unwrap();
    let key = |name: &str| {
        report["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["key"] == name)
            .unwrap_or_else(|| panic!("no key {name}: {report}"))
            .clone()
    };
    assert_eq!(key("log_format")["source"], "env");
    assert_eq!(key("log_format")["value"], "json");
    assert_eq!(key("bind")["source"], "env", "the sandbox sets CALLPLANE_BIND");
    assert_eq!(key("calendar.max_minutes")["source"], "default");
    assert_eq!(key("calendar.max_minutes")["owner"], "calendar");
    assert_eq!(key("twilio.auth_token")["value"], "<secret>");
    assert_eq!(report["platform_variables"].as_array().unwrap().len(), 5, "{report}");

    let text = sandbox.run(Path::new(BIN), &["config"], &env);
    assert_eq!(text.code, Some(0));
    assert!(text.stdout.contains("ignored (set by the platform"), "{}", text.stdout);
    assert!(text.stdout.contains("CALLPLANE_PORT_8080_TCP_ADDR"), "{}", text.stdout);

    // Anything else unknown under CALLPLANE_ still refuses, with the closest known variable.
    let typo = sandbox.run(Path::new(BIN), &["check"], &[("CALLPLANE_LOG_FROMAT", "json")]);
    assert_eq!(typo.code, Some(78));
    assert!(
        all(&typo).contains("did you mean `CALLPLANE_LOG_FORMAT`?"),
        "{}",
        all(&typo)
    );
}

/// `register` declares and nothing more: the commands that only validate and list create no file
/// and no directory (not the SQLite database, not the spool, not the log directory).
#[test]
fn validating_and_listing_leave_an_empty_directory_empty() {
    let sandbox = Sandbox::new();
    for args in [
        &["check"][..],
        &["check", "--format", "json"],
        &["routes"],
        &["plugins"],
        &["config"],
    ] {
        let out = sandbox.run(Path::new(BIN), args, &[]);
        assert_eq!(out.code, Some(0), "{args:?}: {}", all(&out));
        let left: Vec<_> = std::fs::read_dir(sandbox.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{args:?} left {left:?}");
    }
    // `serve` is what creates them.
    let server = sandbox.serve(Path::new(BIN), &[]);
    assert_eq!(server.get("/readyz").status, 200);
    assert!(sandbox.path().join("callplane.db").exists());
    assert!(sandbox.log_dir().is_dir());
}

/// Plugin commands are clap subcommands of `callplane`: their help needs no database (and creates
/// nothing), their usage errors exit 2, and `help` and the completions know them.
#[test]
fn plugin_commands_are_real_subcommands() {
    let sandbox = Sandbox::new();
    let unreachable = [("CALLPLANE_DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")];
    let help = sandbox.run(Path::new(BIN), &["admin", "--help"], &unreachable);
    assert_eq!(help.code, Some(0), "{}", all(&help));
    for sub in [
        "create-business",
        "create-user",
        "grant-page",
        "list-businesses",
        "unlock",
    ] {
        assert!(help.stdout.contains(sub), "{}", help.stdout);
    }
    let sub_help = sandbox.run(Path::new(BIN), &["simulate", "inbound", "--help"], &unreachable);
    assert_eq!(sub_help.code, Some(0), "{}", all(&sub_help));
    assert!(sub_help.stdout.contains("--to"), "{}", sub_help.stdout);
    assert_eq!(
        std::fs::read_dir(sandbox.path()).unwrap().count(),
        0,
        "help touched the disk"
    );

    for usage in [
        &["admin"][..],
        &["admin", "create-business", "--phone", "+15550001"],
        &["admin", "no-such-thing"],
        &["simulate", "inbound"],
        &["admin", "unlock"],
    ] {
        let out = sandbox.run(Path::new(BIN), usage, &unreachable);
        assert_eq!(out.code, Some(2), "{usage:?}: {}", all(&out));
    }

    let listed = sandbox.run(Path::new(BIN), &["help"], &[]);
    assert_eq!(listed.code, Some(0));
    assert!(
        listed.stdout.contains("(from the permissions plugin)"),
        "{}",
        listed.stdout
    );
    assert!(listed.stdout.contains("(from the twilio plugin)"), "{}", listed.stdout);

    let bash = sandbox.run(Path::new(BIN), &["completions", "bash"], &[]);
    assert_eq!(bash.code, Some(0), "{}", all(&bash));
    for word in [
        "create-business",
        "outbound-webhook",
        "completions",
        "--media-stream-url",
    ] {
        assert!(bash.stdout.contains(word), "{word} missing from the bash completions");
    }
    for shell in ["zsh", "fish"] {
        let out = sandbox.run(Path::new(BIN), &["completions", shell], &[]);
        assert_eq!(out.code, Some(0), "{shell}");
        assert!(out.stdout.contains("create-user"), "{shell}");
    }
}

/// The checked-in development configuration is valid as it is: not one finding about a key.
#[test]
fn the_checked_in_dev_config_is_valid() {
    let sandbox = Sandbox::new();
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../callplane.toml");
    let out = sandbox.run(
        Path::new(BIN),
        &["config", "--format", "json", "--config", file.to_str().unwrap()],
        &[],
    );
    assert_eq!(out.code, Some(0), "{}", all(&out));
    assert!(!out.stderr.contains("CP010"), "{}", out.stderr);
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let from_file: Vec<&str> = report["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["source"] == "file")
        .map(|k| k["key"].as_str().unwrap())
        .collect();
    for key in [
        "public_base_url",
        "calendar.max_minutes",
        "twilio.spool_dir",
        "twilio.auth_token",
    ] {
        assert!(from_file.contains(&key), "{key} not read from the file: {from_file:?}");
    }
}

/// The twilio plugin's own production checks: its placeholders (CP101, CP102), recording switched
/// off (CP109) and a spool directory it could not write (CP110), reported under its name.
#[test]
fn the_twilio_plugin_checks_its_own_configuration_for_production() {
    let sandbox = Sandbox::new();
    let ids_of = |out: &Outcome| -> Vec<(String, String)> {
        let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["id"].as_str().unwrap().to_owned(),
                    f["plugin"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    };
    let dev = sandbox.run(Path::new(BIN), &["check", "--format", "json"], &[]);
    assert_eq!(dev.code, Some(0), "warnings only: {}", all(&dev));
    let found = ids_of(&dev);
    for id in ["CP101", "CP102"] {
        assert!(found.contains(&(id.to_owned(), "twilio".to_owned())), "{id}: {found:?}");
    }
    let not_a_dir = sandbox.path().join("a-file");
    std::fs::write(&not_a_dir, "").unwrap();
    let spool = not_a_dir.join("spool");
    let bad = sandbox.run(
        Path::new(BIN),
        &["check", "--deploy", "--format", "json"],
        &[
            ("CALLPLANE_RECORD_CALLS", "false"),
            ("CALLPLANE_SPOOL_DIR", spool.to_str().unwrap()),
        ],
    );
    assert_eq!(bad.code, Some(78), "{}", all(&bad));
    let found = ids_of(&bad);
    for id in ["CP109", "CP110"] {
        assert!(found.contains(&(id.to_owned(), "twilio".to_owned())), "{id}: {found:?}");
    }
}

/// Two processes on one spool would corrupt it: the second refuses before it binds (CP111, exit
/// 78), naming the process that holds the spool; the first serves on.
#[test]
fn a_second_process_on_the_same_spool_refuses_to_start() {
    let sandbox = Sandbox::new();
    let first = sandbox.serve(Path::new(BIN), &[]);
    let second = sandbox.serve_refused(Path::new(BIN), &[]);
    assert_eq!(second.code, Some(78), "{}", all(&second));
    let text = all(&second);
    assert!(text.contains("CP111"), "{text}");
    assert!(
        text.contains(&format!("pid {}", first.pid())),
        "names the holder: {text}"
    );
    assert_eq!(first.get("/readyz").status, 200, "the first one serves on");
}
