//! The real `callplane` binary. Until the feature plugin crates land, a default build holds none of
//! the critical plugins and must refuse to start with CP001 for each, before binding a port; so
//! must a `--no-default-features` build (built here for real, in its own target directory).

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CRITICAL: [&str; 3] = ["calendar", "permissions", "twilio"];

fn run(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> (Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin);
    cmd.args(args).current_dir(dir.path());
    for (key, _) in std::env::vars() {
        if key.starts_with("CALLPLANE_") || key.starts_with("TWILIO_") || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    cmd.env("CALLPLANE_LOG_DIR", dir.path().join("logs")).env(
        "CALLPLANE_DATABASE_URL",
        format!("sqlite://{}/cp.db", dir.path().display()),
    );
    for (k, v) in env {
        cmd.env(k, v);
    }
    (cmd.output().unwrap(), dir)
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

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

/// `serve` while the test holds the port: 78 (not 1, which a bind attempt on a held port gives).
fn assert_refuses_every_missing_plugin(bin: &Path) {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let bind = held.local_addr().unwrap().to_string();
    let (served, dir) = run(bin, &["serve"], &[("CALLPLANE_BIND", &bind)]);
    let out = text(&served);
    assert_eq!(served.status.code(), Some(78), "{out}");
    assert_eq!(cp001_plugins(&out), CRITICAL, "{out}");
    assert!(!out.contains("[BOOT] ready"), "{out}");
    assert!(
        out.contains(
            "[BOOT]    hint: build with the default features or remove 'twilio' from CALLPLANE_CRITICAL_PLUGINS"
        ),
        "{out}"
    );
    let logged: String = std::fs::read_dir(dir.path().join("logs"))
        .unwrap()
        .map(|f| std::fs::read_to_string(f.unwrap().path()).unwrap())
        .collect();
    assert_eq!(
        cp001_plugins(&logged),
        CRITICAL,
        "the refusal is in the log file too"
    );

    let (checked, _) = run(bin, &["check"], &[]);
    assert_eq!(checked.status.code(), Some(78));
    assert_eq!(cp001_plugins(&text(&checked)), CRITICAL);
    let (json, _) = run(bin, &["check", "--format", "json"], &[]);
    assert_eq!(json.status.code(), Some(78));
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["ok"], false);
    let missing: Vec<&str> = report["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["status"] == "missing")
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(missing, CRITICAL);
}

#[test]
fn default_build_refuses_with_cp001_for_each_missing_plugin() {
    assert_refuses_every_missing_plugin(Path::new(env!("CARGO_BIN_EXE_callplane")));
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
    assert_refuses_every_missing_plugin(built.path());
}

#[test]
fn listings_and_migrate_report_the_refusal() {
    let bin = Path::new(env!("CARGO_BIN_EXE_callplane"));
    let (routes, _) = run(bin, &["routes", "--format", "json"], &[]);
    assert_eq!(routes.status.code(), Some(78));
    let table: serde_json::Value = serde_json::from_slice(&routes.stdout).unwrap();
    let paths: Vec<&str> = table["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/livez", "/metrics", "/readyz"]);
    assert_eq!(
        cp001_plugins(&String::from_utf8_lossy(&routes.stderr)),
        CRITICAL
    );

    let (plugins, _) = run(bin, &["plugins"], &[]);
    assert_eq!(plugins.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&plugins.stdout)
            .contains("twilio       -        true      -         missing")
    );

    let (migrate, _) = run(bin, &["migrate"], &[]);
    assert_eq!(migrate.status.code(), Some(1), "{}", text(&migrate));
    assert!(text(&migrate).contains("refusing to migrate"));
}

#[test]
fn without_the_manifest_the_bare_host_migrates() {
    let bin = Path::new(env!("CARGO_BIN_EXE_callplane"));
    let (migrate, dir) = run(bin, &["migrate"], &[("CALLPLANE_CRITICAL_PLUGINS", "")]);
    assert_eq!(migrate.status.code(), Some(0), "{}", text(&migrate));
    assert!(text(&migrate).contains("[MIGRATE] done: 0 migration(s) applied"));
    assert!(
        dir.path().join("cp.db").exists(),
        "the embedded database is created on first use"
    );
}

#[test]
fn usage_errors_are_reported_by_clap() {
    let bin = Path::new(env!("CARGO_BIN_EXE_callplane"));
    let (help, _) = run(bin, &["--help"], &[]);
    assert_eq!(help.status.code(), Some(0));
    let help = String::from_utf8_lossy(&help.stdout);
    for command in ["serve", "check", "routes", "plugins", "migrate"] {
        assert!(help.contains(command), "{help}");
    }
    let (bad, _) = run(bin, &["check", "--format", "yaml"], &[]);
    assert_eq!(bad.status.code(), Some(2));
}
