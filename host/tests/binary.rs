//! The real `callplane` binary. The `calendar` plugin crate has not landed yet, so a default build
//! must refuse to start with CP001 for it, before binding a port; a `--no-default-features` build
//! (built here for real, in its own target directory) must refuse for all three critical plugins.

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
fn default_build_refuses_with_cp001_for_each_plugin_not_yet_built() {
    assert_refuses(Path::new(BIN), &["calendar"]);
}

#[test]
fn no_default_features_build_refuses_with_cp001_for_each_plugin() {
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("no-default-features");
    let built = escargot::CargoBuild::new()
        .manifest_path(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .package("callplane")
        .bin("callplane")
        .no_default_features()
        .target_dir(&target)
        .run()
        .expect("cargo build -p callplane --no-default-features");
    assert_refuses(built.path(), &["calendar", "permissions", "twilio"]);
}

#[test]
fn listings_and_migrate_report_the_refusal() {
    let sandbox = Sandbox::new();
    let routes = sandbox.run(Path::new(BIN), &["routes", "--format", "json"], &[]);
    assert_eq!(routes.code, Some(78));
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
    assert!(listed.contains(&("POST", "/api/auth/login", "Public")), "{listed:?}");
    assert!(listed.contains(&("GET", "/api/users", "Admin")), "{listed:?}");
    assert!(listed.contains(&("GET", "/livez", "Public")), "{listed:?}");
    assert!(
        listed.contains(&("POST", "/webhook/incoming_call", "TwilioSignature")),
        "{listed:?}"
    );
    assert_eq!(cp001_plugins(&routes.stderr), ["calendar"]);

    let plugins = sandbox.run(Path::new(BIN), &["plugins"], &[]);
    assert_eq!(plugins.code, Some(78));
    for row in [
        "permissions  0.1.0    true      -            active",
        "twilio       0.1.0    true      permissions  active",
        "calendar     -        true      -            missing (not compiled into this binary)",
    ] {
        assert!(plugins.stdout.contains(row), "{row}\n{}", plugins.stdout);
    }

    let migrate = sandbox.run(Path::new(BIN), &["migrate"], &[]);
    assert_eq!(migrate.code, Some(1), "{}", all(&migrate));
    assert!(migrate.stderr.contains("refusing to migrate"));
}

#[test]
fn with_a_manifest_of_built_plugins_the_host_migrates() {
    let sandbox = Sandbox::new();
    let migrate = sandbox.run(
        Path::new(BIN),
        &["migrate"],
        &[("CALLPLANE_CRITICAL_PLUGINS", "permissions")],
    );
    assert_eq!(migrate.code, Some(0), "{}", all(&migrate));
    assert!(
        migrate
            .stdout
            .contains("[MIGRATE] applied plugin=permissions version=1"),
        "{}",
        migrate.stdout
    );
    assert!(
        sandbox.path().join("callplane.db").exists(),
        "the embedded database is created on first use"
    );
    let again = sandbox.run(
        Path::new(BIN),
        &["migrate"],
        &[("CALLPLANE_CRITICAL_PLUGINS", "permissions")],
    );
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
