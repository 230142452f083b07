//! Tenant isolation and API input, table-driven over the live route table (`callplane routes
//! --format json`), so a route added later is covered without touching this file: every route
//! that is not public refuses a caller without a session, and no route shows or changes another
//! tenant's data when called with that tenant's ids. Then hostile API bodies: malformed JSON,
//! wrong types, huge strings, SQL metacharacters, unicode edge cases — a clear 4xx or a faithful
//! round trip, never a 5xx. On SQLite, and on PostgreSQL when `TEST_POSTGRES_URL` is set.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::io::Write as _;
use std::path::Path;

use callplane_e2e::harness::{PgDatabase, Reply, Sandbox, Server};
use serde_json::{Value, json};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_callplane");
const PUBLIC: &str = "https://voice.example.com";
const TOKEN: &str = "isolation-auth-token-2b8d";
const A_PHONE: &str = "+972501234567";
const B_PHONE: &str = "+972509876543";
const B_SID: &str = "CAbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const B_TITLE: &str = "tenant-b-secret-appointment";
const B_EMAIL: &str = "owner@tenant-b.example";

fn env(database: Option<&str>) -> Vec<(&str, &str)> {
    let mut env = vec![
        ("CALLPLANE_PUBLIC_BASE_URL", PUBLIC),
        ("TWILIO_AUTH_TOKEN", TOKEN),
        ("TWILIO_ACCOUNT_SID", "AC0123456789abcdef0123456789abcdef"),
        // Outbound calls must not leave the machine: nothing listens here.
        ("TWILIO_API_BASE", "http://127.0.0.1:9"),
    ];
    if let Some(url) = database {
        env.push(("CALLPLANE_DATABASE_URL", url));
    }
    env
}

fn json_request(server: &Server, method: &str, path: &str, token: Option<&str>, body: &str) -> Reply {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(b) = &bearer {
        headers.push(("authorization", b.as_str()));
    }
    server.request(method, path, &headers, Some(body))
}

struct Tenants {
    server: Server,
    a: String,
    b: String,
    b_appointment: i64,
    b_user: i64,
}

/// Two businesses with an owner each; business B gets an appointment, a call and a second user.
fn tenants(sandbox: &Sandbox, env: &[(&str, &str)]) -> Tenants {
    let bin = Path::new(BIN);
    sandbox.bootstrap(
        bin,
        env,
        A_PHONE,
        ("owner@tenant-a.example", "owner", "tenant a password"),
    );
    let business = sandbox.run(
        bin,
        &["admin", "create-business", "--name", "Tenant B", "--phone", B_PHONE],
        env,
    );
    assert_eq!(business.code, Some(0), "{}", business.stdout);
    let user = sandbox.run_with_input(
        bin,
        &[
            "admin",
            "create-user",
            "--business",
            "2",
            "--email",
            B_EMAIL,
            "--role",
            "owner",
        ],
        env,
        "tenant b password\n",
    );
    assert_eq!(user.code, Some(0), "{}", user.stdout);
    let server = sandbox.serve(bin, env);
    let a = server.login("owner@tenant-a.example", "tenant a password");
    let b = server.login(B_EMAIL, "tenant b password");

    let created = json_request(
        &server,
        "POST",
        "/api/calendar/appointments",
        Some(&b),
        &json!({"title": B_TITLE, "starts_at": "2026-12-01T09:00:00Z", "ends_at": "2026-12-01T09:30:00Z"}).to_string(),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let b_appointment = created.json()["id"].as_i64().unwrap();
    let staff = json_request(
        &server,
        "POST",
        "/api/users",
        Some(&b),
        &json!({"email": "agent@tenant-b.example", "password": "tenant b agent pw", "role": "agent"}).to_string(),
    );
    assert_eq!(staff.status, 201, "{}", staff.body);
    let b_user = staff.json()["id"].as_i64().unwrap();

    let hook = common::post_signed(
        &server,
        PUBLIC,
        TOKEN,
        "/webhook/incoming_call",
        &[("CallSid", B_SID), ("From", "+972541112222"), ("To", B_PHONE)],
    )
    .unwrap();
    assert_eq!(hook.status, 200, "{}", hook.body);
    Tenants {
        server,
        a,
        b,
        b_appointment,
        b_user,
    }
}

/// The live route table as the binary reports it.
fn routes(sandbox: &Sandbox, env: &[(&str, &str)]) -> Vec<(String, String, String, bool)> {
    let out = sandbox.run(Path::new(BIN), &["routes", "--format", "json"], env);
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    let table: Value = serde_json::from_str(&out.stdout).unwrap();
    table["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["method"].as_str().unwrap().to_owned(),
                r["path"].as_str().unwrap().to_owned(),
                r["access"].as_str().unwrap().to_owned(),
                !r["sign_in"].is_null(),
            )
        })
        .collect()
}

/// `path` with every `{param}` replaced by tenant B's value for it.
///
/// # Panics
/// On a parameter this test does not know: a new route must say which of B's values it takes,
/// or it would be called with a literal `{…}` and prove nothing.
fn with_b_ids(path: &str, t: &Tenants) -> String {
    let target = path
        .replace("{id}", &t.b_appointment.to_string())
        .replace("{call_sid}", B_SID)
        .replace("{call}", B_SID)
        .replace("{user_id}", &t.b_user.to_string())
        .replace("{role}", "agent");
    assert!(!target.contains('{'), "{path}: teach with_b_ids this parameter");
    target
}

/// A body that passes validation where the route takes one, so that the tenant check is what
/// decides (an unknown route gets `{}`: still no leak allowed).
fn body_for(method: &str, path: &str) -> &'static str {
    match (method, path) {
        ("PATCH", p) if p.starts_with("/api/calendar/") => r#"{"title":"hijacked"}"#,
        ("PUT", p) if p.starts_with("/api/permissions/roles/") => r#"{"pages":["calendar"]}"#,
        _ => "{}",
    }
}

fn tenant_isolation(database: Option<&str>) {
    let sandbox = Sandbox::new();
    let env = env(database);
    let t = tenants(&sandbox, &env);
    let table = routes(&sandbox, &env);
    let grants_before = json_request(&t.server, "GET", "/api/permissions/roles", Some(&t.b), "").body;
    let mut walked = 0;
    for (method, path, access, page) in &table {
        let target = with_b_ids(path, &t);
        let body = body_for(method, path);
        // Without a session: 401 (webhooks: 403, they take Twilio's signature instead; a page for
        // people, 303 to its sign-in page).
        if access != "Public" {
            let anonymous = json_request(&t.server, method, &target, None, body);
            let expected = match (access.as_str(), page) {
                ("TwilioSignature", _) => 403,
                (_, true) => 303,
                _ => 401,
            };
            assert_eq!(
                anonymous.status, expected,
                "{method} {path} without a session: {}",
                anonymous.body
            );
        }
        if access == "Public" || access == "TwilioSignature" || path == "/api/auth/logout" {
            continue;
        }
        // Tenant A's owner (every page, admin) with tenant B's ids.
        let reply = json_request(&t.server, method, &target, Some(&t.a), body);
        walked += 1;
        assert!(reply.status < 500, "{method} {target}: {} {}", reply.status, reply.body);
        for secret in [B_TITLE, B_SID, B_EMAIL, B_PHONE, "agent@tenant-b.example"] {
            assert!(
                !reply.body.contains(secret),
                "{method} {target} as tenant A shows tenant B's {secret}: {}",
                reply.body
            );
        }
        if path.contains('{') && !path.starts_with("/api/permissions/roles/") {
            assert_eq!(reply.status, 404, "{method} {target} as tenant A: {}", reply.body);
        }
    }
    // Nothing of B's changed: the appointment, the user, the role grants.
    let appointment = json_request(
        &t.server,
        "GET",
        &format!("/api/calendar/appointments/{}", t.b_appointment),
        Some(&t.b),
        "",
    );
    assert_eq!(appointment.status, 200);
    assert_eq!(appointment.json()["title"], B_TITLE);
    assert_eq!(appointment.json()["version"], 1);
    let users = json_request(&t.server, "GET", "/api/users", Some(&t.b), "").json();
    let agent = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["id"] == t.b_user)
        .unwrap()
        .clone();
    assert_eq!(agent["active"], true, "{agent}");
    let grants_after = json_request(&t.server, "GET", "/api/permissions/roles", Some(&t.b), "").body;
    assert_eq!(grants_before, grants_after, "tenant A's role change stays in tenant A");
    let call = json_request(&t.server, "GET", &format!("/api/calls/{B_SID}"), Some(&t.b), "");
    assert_eq!(call.status, 200, "B still sees its own call");
    let _ = writeln!(
        std::io::stderr(),
        "tenant isolation: {} routes checked without a session, {walked} with another tenant's ids, 0 leaks",
        table.iter().filter(|r| r.2 != "Public").count()
    );
}

#[test]
fn every_route_refuses_strangers_and_keeps_tenants_apart_on_sqlite() {
    tenant_isolation(None);
}

#[test]
fn every_route_refuses_strangers_and_keeps_tenants_apart_on_postgres() {
    let Some(pg) = PgDatabase::create("every_route_refuses_strangers_and_keeps_tenants_apart_on_postgres") else {
        return;
    };
    tenant_isolation(Some(&pg.url));
}

fn hostile_api_bodies(database: Option<&str>) {
    let sandbox = Sandbox::new();
    let env = env(database);
    let t = tenants(&sandbox, &env);
    let create = "/api/calendar/appointments";
    let slot = |title: &Value| {
        json!({"title": title, "starts_at": "2026-12-02T09:00:00Z", "ends_at": "2026-12-02T09:15:00Z"}).to_string()
    };
    // Refused with a clear 4xx and a JSON error.
    let refused: Vec<(&str, &str, String, &[u16])> = vec![
        ("malformed JSON", create, r#"{"title": "x", "#.to_owned(), &[400]),
        ("not an object", create, "[1, 2, 3]".to_owned(), &[400, 422]),
        (
            "wrong types",
            create,
            r#"{"title": 5, "starts_at": true, "ends_at": null}"#.to_owned(),
            &[422],
        ),
        (
            "unknown field",
            create,
            r#"{"title": "x", "owner_id": 1}"#.to_owned(),
            &[422],
        ),
        ("huge string (60 KB)", create, slot(&json!("x".repeat(60_000))), &[422]),
        ("body over 64 KiB", create, slot(&json!("x".repeat(70_000))), &[413]),
        (
            "NUL and control characters",
            create,
            slot(&json!("a\u{0}b\u{7}c")),
            &[422],
        ),
        (
            "invalid dates",
            create,
            r#"{"title":"x","starts_at":"2026-13-45T99:00:00Z","ends_at":"tomorrow"}"#.to_owned(),
            &[422],
        ),
        (
            "login with wrong types",
            "/api/auth/login",
            r#"{"email": ["a"], "password": {}}"#.to_owned(),
            &[422],
        ),
        (
            "login with a huge password",
            "/api/auth/login",
            json!({"email": "x@y.z", "password": "p".repeat(60_000)}).to_string(),
            &[401, 422],
        ),
        (
            "user with SQL in the role",
            "/api/users",
            json!({"email": "e@x.example", "password": "long enough pw", "role": "owner' OR '1'='1"}).to_string(),
            &[422],
        ),
        (
            "user with a malformed email",
            "/api/users",
            json!({"email": "not an email", "password": "long enough pw", "role": "agent"}).to_string(),
            &[422],
        ),
    ];
    let tried = refused.len();
    for (what, path, body, expected) in refused {
        let token = (path != "/api/auth/login").then_some(t.a.as_str());
        let reply = json_request(&t.server, "POST", path, token, &body);
        assert!(
            expected.contains(&reply.status),
            "{what}: {} {}",
            reply.status,
            reply.body
        );
        let error = reply.json();
        assert!(
            error["error"]["code"].is_string() && error["error"]["message"].is_string(),
            "{what}: {error}"
        );
    }
    // Accepted and stored exactly: SQL metacharacters and unicode are data, not code.
    let verbatim = [
        "Robert'); DROP TABLE appointments;--",
        "\" OR 1=1 -- ; /* */ \\ %_",
        "שלום עולם — مرحبا 你好 🚀👩🏽‍⚕️",
        "e\u{301}\u{200d}\u{feff}\u{202e}reversed",
    ];
    for (starts, title) in (10..).zip(verbatim) {
        let body = json!({"title": title, "starts_at": format!("2026-12-03T{starts}:00:00Z"), "ends_at": format!("2026-12-03T{starts}:30:00Z")});
        let reply = json_request(&t.server, "POST", create, Some(&t.a), &body.to_string());
        assert_eq!(reply.status, 201, "{title}: {}", reply.body);
        let id = reply.json()["id"].as_i64().unwrap();
        let back = json_request(&t.server, "GET", &format!("{create}/{id}"), Some(&t.a), "").json();
        assert_eq!(back["title"], title, "stored verbatim");
    }
    let listed = json_request(&t.server, "GET", "/api/calendar/appointments?limit=100", Some(&t.a), "").json();
    assert_eq!(
        listed["appointments"].as_array().map(Vec::len),
        Some(verbatim.len()),
        "{listed}"
    );
    let _ = writeln!(
        std::io::stderr(),
        "hostile API bodies: {tried} refused with 4xx, {} stored verbatim, 0 server errors",
        verbatim.len()
    );
}

#[test]
fn hostile_api_bodies_get_clear_4xx_or_a_faithful_round_trip_on_sqlite() {
    hostile_api_bodies(None);
}

#[test]
fn hostile_api_bodies_get_clear_4xx_or_a_faithful_round_trip_on_postgres() {
    let Some(pg) = PgDatabase::create("hostile_api_bodies_get_clear_4xx_or_a_faithful_round_trip_on_postgres") else {
        return;
    };
    hostile_api_bodies(Some(&pg.url));
}
