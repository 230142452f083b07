//! The real binary end to end: bootstrap a business and users with `callplane admin`, serve, sign
//! in over HTTP, and meet the access policies. On SQLite, and on PostgreSQL when
//! `TEST_POSTGRES_URL` is set (`.ci/run` sets it).

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::path::Path;

use callplane_e2e::harness::{PgDatabase, Sandbox};

const BIN: &str = env!("CARGO_BIN_EXE_callplane");
const OWNER_PW: &str = "owner-password-9f3k";
const AGENT_PW: &str = "agent-password-x7q2";

fn bootstrap_sign_in_and_enforce(database_url: Option<&str>) {
    let sandbox = Sandbox::new();
    let mut env = vec![("CALLPLANE_CRITICAL_PLUGINS", "permissions")];
    if let Some(url) = database_url {
        env.push(("CALLPLANE_DATABASE_URL", url));
    }
    let bin = Path::new(BIN);

    let business = sandbox.run(
        bin,
        &[
            "admin",
            "create-business",
            "--name",
            "Dental Care",
            "--phone",
            "+972501234567",
        ],
        &env,
    );
    assert_eq!(business.code, Some(0), "{}{}", business.stdout, business.stderr);
    assert!(
        business
            .stdout
            .contains("created business id=1 name=\"Dental Care\" phone=+972501234567"),
        "{}",
        business.stdout
    );
    let duplicate = sandbox.run(
        bin,
        &["admin", "create-business", "--name", "Copy", "--phone", "+972501234567"],
        &env,
    );
    assert_eq!(duplicate.code, Some(1));
    assert!(duplicate.stderr.contains("already exists"), "{}", duplicate.stderr);
    // Twilio refuses unencrypted media streams: so does create-business, and writes nothing.
    for (url, says) in [
        (
            "ws://media.example.com/s",
            "is ws://: Twilio refuses unencrypted media streams",
        ),
        ("https://media.example.com/s", "is not a wss:// URL"),
    ] {
        let refused = sandbox.run(
            bin,
            &[
                "admin",
                "create-business",
                "--name",
                "Media",
                "--phone",
                "+972501234568",
                "--media-stream-url",
                url,
            ],
            &env,
        );
        assert_eq!(refused.code, Some(1), "{url}: {}{}", refused.stdout, refused.stderr);
        assert!(refused.stderr.contains(says), "{url}: {}", refused.stderr);
    }
    let listed = sandbox.run(bin, &["admin", "list-businesses"], &env);
    assert!(!listed.stdout.contains("+972501234568"), "{}", listed.stdout);

    for (email, role, pw) in [
        ("owner@dental.example", "owner", OWNER_PW),
        ("Agent@Dental.example", "agent", AGENT_PW),
    ] {
        let user = sandbox.run_with_input(
            bin,
            &[
                "admin",
                "create-user",
                "--business",
                "1",
                "--email",
                email,
                "--role",
                role,
            ],
            &env,
            &format!("{pw}\n"),
        );
        assert_eq!(user.code, Some(0), "{}{}", user.stdout, user.stderr);
        assert!(
            !user.stdout.contains(pw) && !user.stderr.contains(pw),
            "the password is never echoed"
        );
    }
    let no_password = sandbox.run(
        bin,
        &[
            "admin",
            "create-user",
            "--business",
            "1",
            "--email",
            "x@dental.example",
            "--role",
            "agent",
        ],
        &env,
    );
    assert_eq!(no_password.code, Some(1));
    assert!(
        no_password.stderr.contains("no password on standard input"),
        "{}",
        no_password.stderr
    );
    let wrong_business = sandbox.run_with_input(
        bin,
        &[
            "admin",
            "create-user",
            "--business",
            "42",
            "--email",
            "y@dental.example",
            "--role",
            "agent",
        ],
        &env,
        "some long password\n",
    );
    assert_eq!(wrong_business.code, Some(1));
    assert!(
        wrong_business.stderr.contains("no such business"),
        "{}",
        wrong_business.stderr
    );
    let listed = sandbox.run(bin, &["admin", "list-businesses"], &env);
    assert!(
        listed.stdout.contains("+972501234567    Dental Care"),
        "{}",
        listed.stdout
    );
    let granted = sandbox.run(
        bin,
        &[
            "admin",
            "grant-page",
            "--business",
            "1",
            "--role",
            "viewer",
            "--page",
            "calls",
        ],
        &env,
    );
    assert!(
        granted
            .stdout
            .contains("business=1 role=viewer pages=calendar,calls,leads"),
        "{}",
        granted.stdout
    );

    let server = sandbox.serve(bin, &env);
    let login = |email: &str, pw: &str| {
        let body = serde_json::json!({ "email": email, "password": pw }).to_string();
        server.request(
            "POST",
            "/api/auth/login",
            &[("content-type", "application/json")],
            Some(&body),
        )
    };
    let agent = login("agent@dental.example", AGENT_PW);
    assert_eq!(agent.status, 200, "{}", agent.body);
    assert!(agent.header("set-cookie").unwrap().contains("HttpOnly"));
    let agent_token = agent.json()["token"].as_str().unwrap().to_owned();
    let owner_token = login("owner@dental.example", OWNER_PW).json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(login("agent@dental.example", "not the password").status, 401);

    let get =
        |path: &str, token: &str| server.request("GET", path, &[("authorization", &format!("Bearer {token}"))], None);
    let me = get("/api/me", &agent_token);
    assert_eq!(me.status, 200);
    assert_eq!(me.json()["business"]["name"], "Dental Care");
    assert_eq!(get("/api/users", &agent_token).status, 403, "agents lack the admin API");
    assert_eq!(get("/api/users", &owner_token).status, 200);
    assert_eq!(server.get("/api/me").status, 401);

    server.signal("TERM");
    let (status, _) = server.wait();
    assert!(status.success());
    let log = sandbox.log_text();
    assert!(log.contains("[AUTH] login user_id=2 business_id=1"), "{log}");
    for secret in [OWNER_PW, AGENT_PW, agent_token.as_str(), owner_token.as_str()] {
        assert!(!log.contains(secret), "a secret reached the log");
    }
}

#[test]
fn bootstrap_then_sign_in_on_sqlite() {
    bootstrap_sign_in_and_enforce(None);
}

#[test]
fn bootstrap_then_sign_in_on_postgresql() {
    let Some(pg) = PgDatabase::create("bootstrap_then_sign_in_on_postgresql") else {
        return;
    };
    bootstrap_sign_in_and_enforce(Some(&pg.url));
}
