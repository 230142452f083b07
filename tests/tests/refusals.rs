//! Every boot finding, from a real fixture host process: the exit code, the finding ids, and no
//! port bound (see `Sandbox::serve_refused`).

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::path::Path;

use callplane_e2e::harness::Sandbox;

fn bin(name: &str) -> &'static Path {
    match name {
        "ok" => Path::new(env!("CARGO_BIN_EXE_fixture-ok")),
        "duplicate" => Path::new(env!("CARGO_BIN_EXE_fixture-duplicate")),
        "collision" => Path::new(env!("CARGO_BIN_EXE_fixture-collision")),
        "unmet" => Path::new(env!("CARGO_BIN_EXE_fixture-unmet")),
        "cycle" => Path::new(env!("CARGO_BIN_EXE_fixture-cycle")),
        "register-fail" => Path::new(env!("CARGO_BIN_EXE_fixture-register-fail")),
        "webhook-policy" => Path::new(env!("CARGO_BIN_EXE_fixture-webhook-policy")),
        "public-api" => Path::new(env!("CARGO_BIN_EXE_fixture-public-api")),
        "no-sessions" => Path::new(env!("CARGO_BIN_EXE_fixture-no-sessions")),
        other => panic!("no fixture {other}"),
    }
}

/// Runs `serve` (holding its port) and `check`; both must refuse with exactly `expected` error ids.
fn assert_refused(fixture: &str, env: &[(&str, &str)], expected: &[&str]) -> String {
    let sandbox = Sandbox::new();
    let served = sandbox.serve_refused(bin(fixture), env);
    assert_eq!(
        served.code,
        Some(78),
        "serve must exit 78:\n{}\n{}",
        served.stdout,
        served.stderr
    );
    assert_eq!(served.finding_ids(), expected, "serve findings:\n{}", served.stdout);
    assert!(
        served.stdout.contains("[BOOT] ❌ [BOOT][FATAL] refusing to start"),
        "{}",
        served.stdout
    );
    let logged = sandbox.log_text();
    assert_eq!(
        callplane_e2e::harness::finding_ids(&logged),
        expected,
        "the log file has the findings too"
    );

    let checked = sandbox.run(bin(fixture), &["check"], env);
    assert_eq!(checked.code, Some(78), "check must exit 78:\n{}", checked.stdout);
    assert_eq!(checked.finding_ids(), expected, "check findings:\n{}", checked.stdout);
    let json = sandbox.run(bin(fixture), &["check", "--format", "json"], env);
    assert_eq!(json.code, Some(78));
    let report: serde_json::Value = serde_json::from_str(&json.stdout).expect("check --format json prints JSON");
    assert_eq!(report["ok"], false);
    let ids: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, expected);
    served.stdout
}

/// Errors only: the dev defaults' CP1xx warnings are silenced by a production-like environment.
const QUIET: &[(&str, &str)] = &[
    ("CALLPLANE_PUBLIC_BASE_URL", "https://voice.example.com"),
    ("CALLPLANE_TRUSTED_PROXIES", "127.0.0.1"),
    ("TWILIO_ACCOUNT_SID", "AC0123456789abcdef0123456789abcdef"),
    ("TWILIO_AUTH_TOKEN", "test-token-not-the-dev-one"),
];

fn env<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    QUIET.iter().chain(extra).copied().collect()
}

#[test]
fn missing_critical_plugin_is_cp001() {
    let out = assert_refused(
        "ok",
        &env(&[("CALLPLANE_CRITICAL_PLUGINS", "permissions,notes,ghost")]),
        &["CP001"],
    );
    assert!(
        out.contains("CP001 critical plugin 'ghost' is missing: not compiled into this binary"),
        "{out}"
    );
    // No feature of this build provides 'ghost': the hint says what the binary links instead.
    assert!(
        out.contains(
            "[BOOT]    hint: no plugin of this build is named 'ghost' (it links: notes, permissions, slow, twilio)"
        ),
        "{out}"
    );
}

#[test]
fn duplicate_plugin_name_is_cp002() {
    assert_refused("duplicate", &env(&[("CALLPLANE_CRITICAL_PLUGINS", "")]), &["CP002"]);
}

#[test]
fn route_collision_is_cp003() {
    let out = assert_refused("collision", &env(&[("CALLPLANE_CRITICAL_PLUGINS", "")]), &["CP003"]);
    assert!(
        out.contains("GET /api/notes of plugin 'notes' collides with GET /api/notes of plugin 'memos'"),
        "{out}"
    );
}

#[test]
fn unmet_requirement_is_cp004() {
    let out = assert_refused("unmet", &env(&[("CALLPLANE_CRITICAL_PLUGINS", "notes")]), &["CP004"]);
    assert!(
        out.contains("plugin 'notes' requires 'permissions', which is absent from this binary"),
        "{out}"
    );
}

#[test]
fn page_access_without_permissions_is_cp004_before_serving() {
    let out = assert_refused("no-sessions", &env(&[("CALLPLANE_CRITICAL_PLUGINS", "")]), &["CP004"]);
    assert!(
        out.contains("need session and page-access resolution but no plugin of this build provides it"),
        "{out}"
    );
}

#[test]
fn requirement_cycle_is_cp005() {
    let out = assert_refused("cycle", &env(&[("CALLPLANE_CRITICAL_PLUGINS", "")]), &["CP005"]);
    assert!(out.contains("'alpha' → 'beta' → 'alpha'"), "{out}");
}

#[test]
fn critical_registration_error_and_panic_are_cp006() {
    let out = assert_refused(
        "register-fail",
        &env(&[("CALLPLANE_CRITICAL_PLUGINS", "")]),
        &["CP006", "CP006"],
    );
    assert!(
        out.contains("registration returned an error: fixture: cannot reach its dependency"),
        "{out}"
    );
    assert!(
        out.contains("registration panicked: fixture: registration panicked"),
        "{out}"
    );
}

#[test]
fn webhook_policies_are_cp007_and_cp008() {
    assert_refused(
        "webhook-policy",
        &env(&[("CALLPLANE_CRITICAL_PLUGINS", "")]),
        &["CP007", "CP008"],
    );
}

#[test]
fn public_api_route_is_cp009() {
    let out = assert_refused("public-api", &env(&[("CALLPLANE_CRITICAL_PLUGINS", "")]), &["CP009"]);
    assert!(
        out.contains("GET /api/leak is Public but not on the public allow-list"),
        "{out}"
    );
}

#[test]
fn bad_configuration_is_cp010_with_every_key_named() {
    let extra = [
        ("CALLPLANE_CRITICAL_PLUGINS", "permissions,notes"),
        ("CALLPLANE_SHUTDOWN_DRAIN_SECS", "soon"),
        ("CALLPLANE_LOG_FORMAT", "yaml"),
        ("CALLPLANE_TRUSTED_PROXY", "10.0.0.0/8"),
    ];
    let out = assert_refused("ok", &env(&extra), &["CP010", "CP010", "CP010"]);
    for key in [
        "CALLPLANE_SHUTDOWN_DRAIN_SECS",
        "CALLPLANE_LOG_FORMAT",
        "unknown environment variable CALLPLANE_TRUSTED_PROXY",
    ] {
        assert!(out.contains(key), "{key} not named:\n{out}");
    }
}

#[test]
fn bad_config_file_is_cp010() {
    let sandbox = Sandbox::new();
    std::fs::write(
        sandbox.path().join("callplane.toml"),
        "bind = \"127.0.0.1:0\"\nworkers = 4\n",
    )
    .unwrap();
    let out = sandbox.run(bin("ok"), &["check"], &env(&[("CALLPLANE_CRITICAL_PLUGINS", "")]));
    assert_eq!(out.code, Some(78), "{}", out.stdout);
    assert_eq!(out.finding_ids(), ["CP010"]);
    assert!(
        out.stdout
            .contains("unknown configuration key `workers` in callplane.toml"),
        "{}",
        out.stdout
    );
}

#[test]
fn deploy_checks_warn_by_default_and_fail_under_deploy() {
    let sandbox = Sandbox::new();
    let dev = [("CALLPLANE_CRITICAL_PLUGINS", "permissions,notes")];
    let plain = sandbox.run(bin("ok"), &["check"], &dev);
    assert_eq!(plain.code, Some(0), "{}", plain.stdout);
    // The host's own checks (the fixture plugins declare none; the real twilio plugin's are
    // covered in host/tests/binary.rs).
    assert_eq!(plain.finding_ids(), ["CP103", "CP106", "CP108"], "{}", plain.stdout);
    assert!(plain.stdout.contains("[BOOT][WARN] CP103"));
    let strict = sandbox.run(bin("ok"), &["check", "--fail-level", "warning"], &dev);
    assert_eq!(strict.code, Some(78));
    let deploy = sandbox.run(bin("ok"), &["check", "--deploy", "--format", "json"], &dev);
    assert_eq!(deploy.code, Some(78));
    let report: serde_json::Value = serde_json::from_str(&deploy.stdout).unwrap();
    assert!(
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["level"] == "error")
    );
    let production = sandbox.run(bin("ok"), &["check", "--deploy"], &env(&dev));
    assert_eq!(production.code, Some(0), "{}", production.stdout);
    assert!(
        production.stdout.contains("[BOOT] check passed: plugins=4"),
        "{}",
        production.stdout
    );
    // The sandbox database is SQLite: fine for one instance, an error for two.
    let two = env(&[dev[0], ("CALLPLANE_INSTANCES", "2")]);
    let shared_sqlite = sandbox.run(bin("ok"), &["check", "--deploy"], &two);
    assert_eq!(shared_sqlite.code, Some(78), "{}", shared_sqlite.stdout);
    assert_eq!(shared_sqlite.finding_ids(), ["CP104"], "{}", shared_sqlite.stdout);
    assert!(
        shared_sqlite
            .stdout
            .contains("hint: use CALLPLANE_DATABASE_URL=postgres://"),
        "{}",
        shared_sqlite.stdout
    );
}

#[test]
fn deploy_check_reports_unwritable_log_dir_and_unreachable_database() {
    let sandbox = Sandbox::new();
    let blocker = sandbox.path().join("not-a-dir");
    std::fs::write(&blocker, "file").unwrap();
    let log_dir = blocker.join("logs");
    let extra = [
        ("CALLPLANE_CRITICAL_PLUGINS", ""),
        ("CALLPLANE_LOG_DIR", log_dir.to_str().unwrap()),
        ("CALLPLANE_DATABASE_URL", "postgres://nobody:secretpw@127.0.0.1:1/none"),
    ];
    let out = sandbox.run(bin("ok"), &["check", "--deploy"], &env(&extra));
    assert_eq!(out.code, Some(78), "{}", out.stdout);
    assert_eq!(out.finding_ids(), ["CP105", "CP107"], "{}", out.stdout);
    assert!(
        !out.stdout.contains("secretpw"),
        "passwords are redacted:\n{}",
        out.stdout
    );
    // serve refuses to run without its log file: the call trace would be lost.
    let served = sandbox.serve_refused(bin("ok"), &env(&extra[..2]));
    assert_eq!(served.code, Some(78));
    assert_eq!(served.finding_ids(), ["CP105"], "{}", served.stdout);
}
