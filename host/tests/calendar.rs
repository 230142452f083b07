//! The real binary: concurrent creates for one calendar slot have exactly one winner, on SQLite
//! and on PostgreSQL (when `TEST_POSTGRES_URL` is set).

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::path::Path;

use callplane_e2e::harness::{PgDatabase, Sandbox};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_callplane");

fn one_slot_one_winner(database: Option<&str>) {
    let sandbox = Sandbox::new();
    let mut env = vec![];
    if let Some(url) = database {
        env.push(("CALLPLANE_DATABASE_URL", url));
    }
    let bin = Path::new(BIN);
    sandbox.bootstrap(
        bin,
        &env,
        "+15550001",
        ("agent@a.example", "agent", "agent password 123"),
    );
    let server = sandbox.serve(bin, &env);
    let token = server.login("agent@a.example", "agent password 123");
    let auth = format!("Bearer {token}");
    let body = json!({ "title": "Check-up", "starts_at": "2026-12-01T09:00:00+02:00", "ends_at": "2026-12-01T09:30:00+02:00" }).to_string();
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..16)
            .map(|_| {
                scope.spawn(|| {
                    server
                        .request(
                            "POST",
                            "/api/calendar/appointments",
                            &[("authorization", &auth), ("content-type", "application/json")],
                            Some(&body),
                        )
                        .status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 15, "{statuses:?}");
    let listed = server
        .request("GET", "/api/calendar/appointments", &[("authorization", &auth)], None)
        .json();
    assert_eq!(listed["appointments"].as_array().unwrap().len(), 1);
}

#[test]
fn concurrent_creates_on_sqlite() {
    one_slot_one_winner(None);
}

#[test]
fn concurrent_creates_on_postgresql() {
    let Some(pg) = PgDatabase::create("concurrent_creates_on_postgresql") else {
        return;
    };
    one_slot_one_winner(Some(&pg.url));
}
