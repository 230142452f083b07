//! The calendar mounted as the host mounts it, with the real permissions plugin guarding it.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::header;
use actix_web::test::{self as atest, TestRequest};
use callplane_plugin_api::Settings;
use callplane_plugin_api::storage::Db;
use callplane_plugin_api::testing::TestHost;
use callplane_plugin_permissions::{Store, password};
use serde_json::{Value, json};

const PATH: &str = "/api/calendar/appointments";

async fn host(dir: &tempfile::TempDir) -> TestHost {
    let db = Db::connect_lazy(&format!("sqlite://{}/c.db", dir.path().display())).unwrap();
    let host = TestHost::new(
        Settings::default(),
        db.clone(),
        &[
            &callplane_plugin_permissions::PLUGIN,
            &callplane_plugin_calendar::PLUGIN,
        ],
    )
    .await;
    let store = Store::new(db);
    let a = store.create_business("A", "+15550001", "hi", None, 1).await.unwrap();
    let b = store.create_business("B", "+15550002", "hi", None, 1).await.unwrap();
    let hash = password::hash("correct horse battery");
    for (business, email, role) in [
        (a, "agent@a.example", "agent"),
        (a, "viewer@a.example", "viewer"),
        (b, "agent@b.example", "agent"),
    ] {
        store.create_user(business, email, &hash, role, 1).await.unwrap();
    }
    // Viewers of A lose the calendar page.
    store.set_pages(a, "viewer", &["leads".to_owned()]).await.unwrap();
    host
}

async fn send<S, B>(app: &S, req: TestRequest) -> (u16, Value, Option<String>)
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: actix_web::body::MessageBody,
{
    let res = app
        .call(req.peer_addr("203.0.113.1:1".parse().unwrap()).to_request())
        .await
        .unwrap();
    let status = res.status().as_u16();
    let etag = res.headers().get(header::ETAG).map(|v| v.to_str().unwrap().to_owned());
    let bytes = actix_web::body::to_bytes(res.into_body()).await.ok().unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null), etag)
}

async fn login<S, B>(app: &S, email: &str) -> String
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: actix_web::body::MessageBody,
{
    let req = TestRequest::post()
        .uri("/api/auth/login")
        .set_json(json!({ "email": email, "password": "correct horse battery" }));
    let (status, body, _) = send(app, req).await;
    assert_eq!(status, 200, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

fn with(token: &str, req: TestRequest) -> TestRequest {
    req.insert_header((header::AUTHORIZATION, format!("Bearer {token}")))
}

fn slot(start: &str, end: &str) -> Value {
    json!({ "title": "Check-up", "starts_at": start, "ends_at": end })
}

#[actix_rt::test]
async fn crud_with_versions() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(&dir).await;
    let app = atest::init_service(host.app()).await;
    let t = login(&app, "agent@a.example").await;
    let body = json!({ "title": "Cleaning", "starts_at": "2026-12-01T09:00:00+02:00", "ends_at": "2026-12-01T09:30:00+02:00",
                       "lead_id": "42", "call_sid": "CA0123456789abcdef0123456789abcdef", "notes": "first visit" });
    let (status, created, etag) = send(&app, with(&t, TestRequest::post().uri(PATH).set_json(body))).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        created["starts_at"], "2026-12-01T07:00:00Z",
        "stored and returned in UTC"
    );
    assert_eq!(created["status"], "scheduled");
    assert_eq!(etag.as_deref(), Some("\"1\""));
    let id = created["id"].as_i64().unwrap();

    let (status, got, _) = send(&app, with(&t, TestRequest::get().uri(&format!("{PATH}/{id}")))).await;
    assert_eq!((status, &got), (200, &created));

    let patch = |version: &str, body: Value| {
        with(
            &t,
            TestRequest::patch()
                .uri(&format!("{PATH}/{id}"))
                .insert_header((header::IF_MATCH, version.to_owned()))
                .set_json(body),
        )
    };
    let (status, patched, etag) = send(&app, patch("\"1\"", json!({ "title": "Deep cleaning" }))).await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["title"], "Deep cleaning");
    assert_eq!(patched["version"], 2);
    assert_eq!(etag.as_deref(), Some("\"2\""));
    let (status, stale, _) = send(&app, patch("\"1\"", json!({ "title": "Lost update" }))).await;
    assert_eq!(status, 412, "{stale}");
    let (status, _, _) = send(&app, patch("one", json!({ "title": "x" }))).await;
    assert_eq!(status, 400);
    let (_, still, _) = send(&app, with(&t, TestRequest::get().uri(&format!("{PATH}/{id}")))).await;
    assert_eq!(still["title"], "Deep cleaning", "the stale PATCH changed nothing");

    let (status, listed, _) = send(
        &app,
        with(
            &t,
            TestRequest::get().uri(&format!("{PATH}?from=2026-12-01T00:00:00Z&to=2026-12-02T00:00:00Z")),
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(listed["appointments"].as_array().unwrap().len(), 1);
    let (_, outside, _) = send(
        &app,
        with(&t, TestRequest::get().uri(&format!("{PATH}?from=2026-12-02T00:00:00Z"))),
    )
    .await;
    assert!(outside["appointments"].as_array().unwrap().is_empty());

    let (status, _, _) = send(
        &app,
        with(
            &t,
            TestRequest::delete()
                .uri(&format!("{PATH}/{id}"))
                .insert_header((header::IF_MATCH, "\"1\"")),
        ),
    )
    .await;
    assert_eq!(status, 412);
    let (status, _, _) = send(&app, with(&t, TestRequest::delete().uri(&format!("{PATH}/{id}")))).await;
    assert_eq!(status, 204);
    let (status, _, _) = send(&app, with(&t, TestRequest::get().uri(&format!("{PATH}/{id}")))).await;
    assert_eq!(status, 404);
}

#[actix_rt::test]
async fn every_validation_error() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(&dir).await;
    let app = atest::init_service(host.app()).await;
    let t = login(&app, "agent@a.example").await;
    let cases: Vec<(Value, u16)> = vec![
        (slot("2026-12-01T10:00:00Z", "2026-12-01T09:00:00Z"), 422),
        (slot("2026-12-01T10:00:00Z", "2026-12-01T10:00:00Z"), 422),
        (slot("2026-12-01T00:00:00Z", "2026-12-01T09:00:01Z"), 422),
        (slot("2026-12-01 10:00", "2026-12-01T11:00:00Z"), 422),
        (slot("2026-12-01T10:00:00", "2026-12-01T11:00:00Z"), 422),
        (
            json!({ "title": "", "starts_at": "2026-12-01T10:00:00Z", "ends_at": "2026-12-01T11:00:00Z" }),
            422,
        ),
        (
            json!({ "title": "x".repeat(201), "starts_at": "2026-12-01T10:00:00Z", "ends_at": "2026-12-01T11:00:00Z" }),
            422,
        ),
        (
            json!({ "title": "a", "starts_at": "2026-12-01T10:00:00Z", "ends_at": "2026-12-01T11:00:00Z", "status": "maybe" }),
            422,
        ),
        (
            json!({ "title": "a", "starts_at": "2026-12-01T10:00:00Z", "ends_at": "2026-12-01T11:00:00Z", "call_sid": "nope" }),
            422,
        ),
        (
            json!({ "title": "a", "starts_at": "2026-12-01T10:00:00Z", "ends_at": "2026-12-01T11:00:00Z", "lead_id": "'; DROP TABLE" }),
            422,
        ),
        (
            json!({ "title": "a", "starts_at": "2026-12-01T10:00:00Z", "ends_at": "2026-12-01T11:00:00Z", "business_id": 2 }),
            422,
        ),
        (
            json!({ "title": 5, "starts_at": "2026-12-01T10:00:00Z", "ends_at": "2026-12-01T11:00:00Z" }),
            422,
        ),
        (json!({ "starts_at": "2026-12-01T10:00:00Z" }), 422),
    ];
    for (body, expected) in cases {
        let (status, answer, _) = send(&app, with(&t, TestRequest::post().uri(PATH).set_json(&body))).await;
        assert_eq!(status, expected, "{body}: {answer}");
        assert!(answer["error"]["message"].is_string());
    }
    let malformed = with(
        &t,
        TestRequest::post()
            .uri(PATH)
            .insert_header((header::CONTENT_TYPE, "application/json"))
            .set_payload("{"),
    );
    assert_eq!(send(&app, malformed).await.0, 400);
    let huge = json!({ "title": "a", "starts_at": "2026-12-01T10:00:00Z", "ends_at": "2026-12-01T11:00:00Z", "notes": "n".repeat(70_000) });
    assert_eq!(
        send(&app, with(&t, TestRequest::post().uri(PATH).set_json(huge)))
            .await
            .0,
        413
    );
    for query in [
        "from=tomorrow",
        "limit=0",
        "status=lost",
        "from=2026-12-02T00:00:00Z&to=2026-12-01T00:00:00Z",
        "colour=red",
    ] {
        let (status, _, _) = send(&app, with(&t, TestRequest::get().uri(&format!("{PATH}?{query}")))).await;
        assert!((400..500).contains(&status), "{query}: {status}");
    }
}

/// `9999-12-31T23:00:00-02:00` is in the year 10000 in UTC: it used to be stored and then read back
/// as an empty string.
#[actix_rt::test]
async fn times_past_year_9999_utc_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(&dir).await;
    let app = atest::init_service(host.app()).await;
    let t = login(&app, "agent@a.example").await;
    let beyond = slot("9999-12-31T23:00:00-02:00", "9999-12-31T23:30:00-02:00");
    let (status, answer, _) = send(&app, with(&t, TestRequest::post().uri(PATH).set_json(&beyond))).await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["error"]["message"].as_str().unwrap().contains("9999"),
        "{answer}"
    );

    let (status, created, _) = send(
        &app,
        with(
            &t,
            TestRequest::post()
                .uri(PATH)
                .set_json(slot("9999-12-31T20:00:00Z", "9999-12-31T21:00:00Z")),
        ),
    )
    .await;
    assert_eq!(status, 201, "the last representable hours are fine: {created}");
    let id = created["id"].as_i64().unwrap();
    let (status, answer, _) = send(
        &app,
        with(
            &t,
            TestRequest::patch()
                .uri(&format!("{PATH}/{id}"))
                .set_json(json!({ "ends_at": "9999-12-31T23:30:00-02:00" })),
        ),
    )
    .await;
    assert_eq!(status, 422, "{answer}");
    let (_, listed, _) = send(&app, with(&t, TestRequest::get().uri(PATH))).await;
    let listed = listed["appointments"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["ends_at"], "9999-12-31T21:00:00Z");
}

#[actix_rt::test]
async fn overlaps_conflict_but_touching_and_cancelled_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(&dir).await;
    let app = atest::init_service(host.app()).await;
    let t = login(&app, "agent@a.example").await;
    let (_, first, _) = send(
        &app,
        with(
            &t,
            TestRequest::post()
                .uri(PATH)
                .set_json(slot("2026-12-01T09:00:00Z", "2026-12-01T10:00:00Z")),
        ),
    )
    .await;
    let first_id = first["id"].as_i64().unwrap();
    let (status, conflict, _) = send(
        &app,
        with(
            &t,
            TestRequest::post()
                .uri(PATH)
                .set_json(slot("2026-12-01T09:30:00Z", "2026-12-01T10:30:00Z")),
        ),
    )
    .await;
    assert_eq!(status, 409);
    assert_eq!(conflict["error"]["conflicting_id"], first_id);
    assert!(
        conflict["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&first_id.to_string())
    );
    for (start, end) in [
        ("2026-12-01T10:00:00Z", "2026-12-01T11:00:00Z"),
        ("2026-12-01T08:00:00Z", "2026-12-01T09:00:00Z"),
    ] {
        let (status, body, _) = send(&app, with(&t, TestRequest::post().uri(PATH).set_json(slot(start, end)))).await;
        assert_eq!(status, 201, "touching {start}–{end}: {body}");
    }
    let mut cancelled = slot("2026-12-01T09:15:00Z", "2026-12-01T09:45:00Z");
    cancelled["status"] = json!("cancelled");
    assert_eq!(
        send(&app, with(&t, TestRequest::post().uri(PATH).set_json(cancelled)))
            .await
            .0,
        201
    );
    let (_, only_cancelled, _) = send(
        &app,
        with(&t, TestRequest::get().uri(&format!("{PATH}?status=cancelled"))),
    )
    .await;
    assert_eq!(
        only_cancelled["appointments"].as_array().unwrap().len(),
        1,
        "the status filter filters"
    );
    // Moving an appointment onto another is a conflict too.
    let (_, later, _) = send(
        &app,
        with(
            &t,
            TestRequest::post()
                .uri(PATH)
                .set_json(slot("2026-12-01T12:00:00Z", "2026-12-01T13:00:00Z")),
        ),
    )
    .await;
    let moved = with(
        &t,
        TestRequest::patch()
            .uri(&format!("{PATH}/{}", later["id"]))
            .set_json(json!({ "starts_at": "2026-12-01T09:30:00Z" })),
    );
    assert_eq!(send(&app, moved).await.0, 409);
    // Another business has its own calendar.
    let other = login(&app, "agent@b.example").await;
    assert_eq!(
        send(
            &app,
            with(
                &other,
                TestRequest::post()
                    .uri(PATH)
                    .set_json(slot("2026-12-01T09:00:00Z", "2026-12-01T10:00:00Z"))
            )
        )
        .await
        .0,
        201
    );
}

#[actix_rt::test]
async fn concurrent_creates_for_one_slot_have_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(&dir).await;
    let app = atest::init_service(host.app()).await;
    let t = login(&app, "agent@a.example").await;
    let requests = (0..12).map(|_| {
        let req = with(
            &t,
            TestRequest::post()
                .uri(PATH)
                .set_json(slot("2026-12-03T09:00:00Z", "2026-12-03T10:00:00Z")),
        );
        send(&app, req)
    });
    let results = futures_util::future::join_all(requests).await;
    let statuses: Vec<u16> = results.iter().map(|(s, _, _)| *s).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 11, "{statuses:?}");
}

#[actix_rt::test]
async fn tenants_and_pages_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(&dir).await;
    let app = atest::init_service(host.app()).await;
    let a = login(&app, "agent@a.example").await;
    let b = login(&app, "agent@b.example").await;
    let viewer = login(&app, "viewer@a.example").await;
    let (_, created, _) = send(
        &app,
        with(
            &a,
            TestRequest::post()
                .uri(PATH)
                .set_json(slot("2026-12-01T09:00:00Z", "2026-12-01T10:00:00Z")),
        ),
    )
    .await;
    let id = created["id"].as_i64().unwrap();
    let item = format!("{PATH}/{id}");
    assert_eq!(send(&app, with(&b, TestRequest::get().uri(&item))).await.0, 404);
    assert_eq!(
        send(
            &app,
            with(
                &b,
                TestRequest::patch().uri(&item).set_json(json!({ "title": "mine now" }))
            )
        )
        .await
        .0,
        404
    );
    assert_eq!(send(&app, with(&b, TestRequest::delete().uri(&item))).await.0, 404);
    let (_, listed, _) = send(&app, with(&b, TestRequest::get().uri(PATH))).await;
    assert!(listed["appointments"].as_array().unwrap().is_empty());
    let (_, unchanged, _) = send(&app, with(&a, TestRequest::get().uri(&item))).await;
    assert_eq!(unchanged, created, "business B changed nothing");
    assert_eq!(
        send(&app, with(&viewer, TestRequest::get().uri(PATH))).await.0,
        403,
        "a role without the calendar page"
    );
    assert_eq!(send(&app, TestRequest::get().uri(PATH)).await.0, 401);
    assert_eq!(
        send(&app, with(&a, TestRequest::get().uri(&format!("{PATH}/abc"))))
            .await
            .0,
        404
    );
}

/// Random schedules (proptest-generated, reproducible): a new appointment is refused with 409
/// exactly when it overlaps a scheduled one under half-open interval arithmetic (touching is
/// fine), and a cancelled one never blocks.
#[actix_rt::test]
async fn overlap_follows_interval_arithmetic_for_random_schedules() {
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::TestRunner;

    let dir = tempfile::tempdir().unwrap();
    let host = host(&dir).await;
    let app = atest::init_service(host.app()).await;
    let t = login(&app, "agent@a.example").await;
    // Per day: up to 12 requests, start and length in quarter hours, some cancelled right after.
    let schedule = proptest::collection::vec((0u32..40, 1u32..9, proptest::bool::weighted(0.25)), 1..12);
    let mut runner = TestRunner::deterministic();
    let (mut created, mut refused) = (0, 0);
    for day in 1..=28u32 {
        let requests = schedule.new_tree(&mut runner).unwrap().current();
        let mut scheduled: Vec<(u32, u32, i64)> = Vec::new();
        for (start, length, cancel) in requests {
            let (from, to) = (start * 15, (start + length) * 15);
            let at = |minutes: u32| format!("2027-02-{day:02}T{:02}:{:02}:00Z", minutes / 60, minutes % 60);
            let conflicts: Vec<i64> = scheduled
                .iter()
                .filter(|(s, e, _)| from < *e && *s < to)
                .map(|c| c.2)
                .collect();
            let (status, body, _) = send(
                &app,
                with(&t, TestRequest::post().uri(PATH).set_json(slot(&at(from), &at(to)))),
            )
            .await;
            if conflicts.is_empty() {
                assert_eq!(status, 201, "day {day} {from}-{to} overlaps nothing scheduled: {body}");
                let id = body["id"].as_i64().unwrap();
                created += 1;
                if cancel {
                    let req = TestRequest::patch()
                        .uri(&format!("{PATH}/{id}"))
                        .set_json(json!({ "status": "cancelled" }));
                    let (status, body, _) = send(&app, with(&t, req)).await;
                    assert_eq!(status, 200, "{body}");
                } else {
                    scheduled.push((from, to, id));
                }
            } else {
                assert_eq!(status, 409, "day {day} {from}-{to}: {body}");
                let named = body["error"]["conflicting_id"].as_i64();
                assert!(
                    named.is_some_and(|id| conflicts.contains(&id)),
                    "{body} names one of {conflicts:?}"
                );
                refused += 1;
            }
        }
    }
    assert!(
        created > 50 && refused > 20,
        "the schedules exercised both outcomes: {created} created, {refused} refused"
    );
}
