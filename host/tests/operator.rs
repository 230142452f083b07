//! What an operator does outside the repository root, with the real binary: every command finds
//! the same configuration file (and through it the same database) from any directory and says
//! which file it used; migrations run as a job of their own and `serve --no-migrate` refuses a
//! database that is behind, so the serving role needs no DDL rights.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::path::Path;
use std::process::Command;

use callplane_e2e::harness::{Outcome, PgDatabase, Sandbox, Server, run_command};

const BIN: &str = env!("CARGO_BIN_EXE_callplane");

/// `callplane args…` in `dir` with no callplane setting in its environment at all (as a shell
/// would run it) and a private home, so the operator's own files never count.
fn bare(dir: &Path, home: &Path, args: &[&str], env: &[(&str, &str)]) -> Outcome {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .current_dir(dir)
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME");
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CALLPLANE_") || key.starts_with("TWILIO_") || key == "RUST_LOG" {
            command.env_remove(key.as_ref());
        }
    }
    for (key, value) in env {
        command.env(key, value);
    }
    run_command(command, "")
}

fn ok(out: &Outcome) {
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
}

#[test]
fn every_command_uses_the_same_file_and_database_from_any_directory() {
    let home = tempfile::tempdir().unwrap();
    let deployment = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let file = deployment.path().join("callplane.toml");
    // The checked-in development file: its paths are relative (data/…).
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    std::fs::copy(root.join("callplane.toml"), &file).unwrap();
    let file_arg = file.to_str().unwrap();

    let created = bare(
        elsewhere.path(),
        home.path(),
        &[
            "--config",
            file_arg,
            "admin",
            "create-business",
            "--name",
            "Far away",
            "--phone",
            "+15005550006",
        ],
        &[],
    );
    ok(&created);
    assert!(
        created
            .stderr
            .contains(&format!("config file: {file_arg} (from --config)")),
        "{}",
        created.stderr
    );
    assert!(
        deployment.path().join("data/callplane.db").is_file(),
        "the database beside the file"
    );
    assert!(!elsewhere.path().join("data").exists(), "nothing where the command ran");

    // From the deployment's directory, found as ./callplane.toml: the same database.
    let listed = bare(deployment.path(), home.path(), &["admin", "list-businesses"], &[]);
    ok(&listed);
    assert!(listed.stdout.contains("+15005550006"), "{}", listed.stdout);
    assert!(listed.stderr.contains("(from ./callplane.toml)"), "{}", listed.stderr);

    // Through CALLPLANE_CONFIG, and through ~/.config/callplane/callplane.toml.
    let listed = bare(
        elsewhere.path(),
        home.path(),
        &["admin", "list-businesses"],
        &[("CALLPLANE_CONFIG", file_arg)],
    );
    ok(&listed);
    assert!(listed.stdout.contains("+15005550006"), "{}", listed.stdout);
    let user_dir = home.path().join(".config/callplane");
    std::fs::create_dir_all(&user_dir).unwrap();
    std::fs::copy(&file, user_dir.join("callplane.toml")).unwrap();
    let shown = bare(elsewhere.path(), home.path(), &["config"], &[]);
    ok(&shown);
    assert!(
        shown.stdout.contains("(from ~/.config/callplane/callplane.toml)"),
        "{}",
        shown.stdout
    );
    let expected_db = format!("sqlite://{}/data/callplane.db", user_dir.display());
    assert!(
        shown.stdout.contains(&expected_db),
        "paths follow that file:\n{}",
        shown.stdout
    );

    // Nothing anywhere: said plainly, by `check` and by `config`.
    std::fs::remove_file(user_dir.join("callplane.toml")).unwrap();
    let checked = bare(elsewhere.path(), home.path(), &["check"], &[]);
    ok(&checked);
    assert!(
        checked
            .stdout
            .contains("config file: none (looked for ./callplane.toml"),
        "{}",
        checked.stdout
    );
    assert!(
        checked.finding_ids().contains(&"CP011".to_owned()),
        "{}",
        checked.stdout
    );
    let json = bare(elsewhere.path(), home.path(), &["check", "--format", "json"], &[]);
    let report: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(report["config_file"], serde_json::Value::Null);
    // Configured by the environment alone is a choice, not a mistake: no CP011.
    let env_only = bare(
        elsewhere.path(),
        home.path(),
        &["check"],
        &[("CALLPLANE_DATABASE_URL", "sqlite::memory:")],
    );
    ok(&env_only);
    assert!(
        !env_only.finding_ids().contains(&"CP011".to_owned()),
        "{}",
        env_only.stdout
    );
}

/// A signed inbound call to +15005550006, sent by `callplane simulate` to `server`.
fn call_in(sandbox: &Sandbox, server: &Server, env: &[(&str, &str)]) -> Outcome {
    let target = server.url("");
    let args = ["simulate", "--target", &target, "inbound", "--to", "+15005550006"];
    sandbox.run(Path::new(BIN), &args, env)
}

fn states(out: &Outcome) -> Vec<(String, String)> {
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    report["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                format!("{} {}", m["plugin"].as_str().unwrap(), m["version"]),
                m["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The migration job and `serve --no-migrate` against one database (`env` names it).
fn migrations_as_a_job(sandbox: &Sandbox, env: &[(&str, &str)], serving: &[(&str, &str)]) {
    let pending = sandbox.run(Path::new(BIN), &["migrate", "status", "--format", "json"], env);
    assert_eq!(
        pending.code,
        Some(1),
        "pending: exit 1\n{}{}",
        pending.stdout,
        pending.stderr
    );
    let before = states(&pending);
    assert!(before.iter().any(|(m, _)| m == "twilio 3"), "{before:?}");
    assert!(before.iter().all(|(_, s)| s == "pending"), "{before:?}");
    let text = sandbox.run(Path::new(BIN), &["migrate", "status"], env);
    assert_eq!(text.code, Some(1));
    assert!(text.stdout.contains("PLUGIN"), "{}", text.stdout);
    assert!(text.stdout.contains("run `callplane migrate`"), "{}", text.stdout);

    let refused = sandbox.run(Path::new(BIN), &["serve", "--no-migrate"], serving);
    assert_eq!(refused.code, Some(78), "{}{}", refused.stdout, refused.stderr);
    assert!(
        refused.finding_ids().contains(&"CP012".to_owned()),
        "{}",
        refused.stdout
    );
    assert!(
        refused.stdout.contains("twilio 3 (call timeline"),
        "names what is pending:\n{}",
        refused.stdout
    );
    assert!(!refused.stdout.contains("[BOOT] ready"), "{}", refused.stdout);

    ok(&sandbox.run(Path::new(BIN), &["migrate"], env));
    let done = sandbox.run(Path::new(BIN), &["migrate", "status", "--format", "json"], env);
    ok(&done);
    assert_eq!(states(&done).len(), before.len());
    assert!(states(&done).iter().all(|(_, s)| s == "applied"), "{}", done.stdout);

    // The instances: no migration, and they serve (and record) with the role they were given.
    let server = sandbox.serve_with(Path::new(BIN), &["serve", "--no-migrate"], serving);
    assert_eq!(server.get("/readyz").status, 200);
    ok(&call_in(sandbox, &server, serving));
}

#[test]
fn migrations_run_as_a_job_and_serve_no_migrate_refuses_a_database_behind() {
    let sandbox = Sandbox::new();
    migrations_as_a_job(&sandbox, &[], &[]);
}

/// On PostgreSQL the serving role may only read and write rows: `serve --no-migrate` needs
/// nothing more.
#[test]
fn on_postgres_the_serving_role_needs_no_ddl_rights() {
    let Some(pg) = PgDatabase::create("operator_no_ddl") else {
        return;
    };
    let role = format!("{}_app", pg.name());
    pg.admin(&format!("CREATE ROLE {role} LOGIN"));
    let sandbox = Sandbox::new();
    let owner = [("CALLPLANE_DATABASE_URL", pg.url.as_str())];
    // The owner creates the schema; the grants follow it (as docs/deploy.md shows).
    let app_url = pg.url_as(&role);
    let serving = [("CALLPLANE_DATABASE_URL", app_url.as_str())];

    let pending = sandbox.run(Path::new(BIN), &["migrate", "status"], &serving);
    assert_eq!(pending.code, Some(1), "{}{}", pending.stdout, pending.stderr);
    ok(&sandbox.run(Path::new(BIN), &["migrate"], &owner));
    pg.execute(&format!(
        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role};
         GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role};
         REVOKE CREATE ON SCHEMA public FROM PUBLIC;"
    ));
    let nothing_to_do = sandbox.run(Path::new(BIN), &["migrate"], &serving);
    assert_eq!(
        nothing_to_do.code,
        Some(0),
        "nothing pending: nothing to create\n{}",
        nothing_to_do.stderr
    );
    let done = sandbox.run(Path::new(BIN), &["migrate", "status", "--format", "json"], &serving);
    ok(&done);
    assert!(states(&done).iter().all(|(_, s)| s == "applied"), "{}", done.stdout);

    let server = sandbox.serve_with(Path::new(BIN), &["serve", "--no-migrate"], &serving);
    assert_eq!(server.get("/readyz").status, 200);
    ok(&sandbox.run(
        Path::new(BIN),
        &["admin", "create-business", "--name", "N", "--phone", "+15005550006"],
        &serving,
    ));
    ok(&call_in(&sandbox, &server, &serving));
    callplane_e2e::harness::eventually(std::time::Duration::from_secs(10), "the call's row", || {
        pg.scalar("SELECT COUNT(*) FROM calls") == 1
    });
    drop(server);
    pg.execute(&format!("DROP OWNED BY {role}"));
    pg.admin(&format!("DROP ROLE {role}"));
}

/// `routes --format openapi` and `GET /openapi.json` are the same document, and it holds every
/// route of the table (plugins' and the host's) with the security its access policy implies.
#[test]
fn the_openapi_document_is_the_route_table() {
    let sandbox = Sandbox::new();
    let table = sandbox.run(Path::new(BIN), &["routes", "--format", "json"], &[]);
    ok(&table);
    let table: serde_json::Value = serde_json::from_str(&table.stdout).unwrap();
    let printed = sandbox.run(Path::new(BIN), &["routes", "--format", "openapi"], &[]);
    ok(&printed);
    let document: serde_json::Value = serde_json::from_str(&printed.stdout).unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    let routes = table["routes"].as_array().unwrap();
    assert!(routes.len() > 20, "{table}");
    for route in routes {
        let (method, path) = (route["method"].as_str().unwrap(), route["path"].as_str().unwrap());
        let operation = &document["paths"][path][method.to_ascii_lowercase()];
        assert!(operation.is_object(), "{method} {path} is missing from the document");
        let security = operation["security"].to_string();
        let expected = match route["access"].as_str().unwrap() {
            "Public" => "[]",
            "TwilioSignature" => r#"[{"twilio_signature":[]}]"#,
            _ => r#"[{"session_bearer":[]},{"session_cookie":[]}]"#,
        };
        assert_eq!(security, expected, "{method} {path}");
    }
    let outbound = &document["paths"]["/api/calls/outbound"]["post"];
    assert_eq!(
        outbound["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/OutboundRequest"
    );

    let server = sandbox.serve(Path::new(BIN), &[]);
    let served = server.get("/openapi.json");
    assert_eq!(served.status, 200);
    assert_eq!(served.json(), document, "served as printed");
}
