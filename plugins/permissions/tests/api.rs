//! The permissions plugin's routes: sign-in, sessions, roles and pages, tenant isolation.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use actix_web::dev::Service;
use actix_web::http::{StatusCode, header};
use actix_web::test::TestRequest;
use callplane_plugin_api::storage::sqlx;
use callplane_plugin_permissions::session;
use common::*;
use serde_json::{Value, json};

#[actix_rt::test]
async fn login_sets_a_locked_down_cookie_and_returns_a_bearer_token() {
    let f = fixture().await;
    let b = seed_business(&f, "+15550001").await;
    seed_user(&f, b, "dana@example.com", "agent").await;
    let app = app!(f);
    let (status, body, cookie) = body_json(
        app.call(login_req("DANA@example.com ", "correct horse battery"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let token = body["token"].as_str().unwrap();
    assert_eq!(token.len(), 43);
    assert_eq!(body["pages"], json!(["calendar", "calls", "leads"]));
    let expected = format!("callplane_session={token}");
    for part in [expected.as_str(), "HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
        assert!(cookie.contains(part), "{part} missing: {cookie}");
    }
    let text = body.to_string();
    assert!(
        !text.contains("correct horse") && !text.contains("pbkdf2"),
        "no password or hash in the answer: {text}"
    );
    // Only the hash of the token is stored.
    let stored: Vec<(String,)> =
        f.db.run(|pool| sqlx::query_as("SELECT token_hash FROM sessions").fetch_all(pool))
            .await
            .unwrap();
    assert_eq!(stored, [(session::token_hash(token),)]);

    let me = app
        .call(bearer(TestRequest::get().uri("/api/me"), token).to_request())
        .await
        .unwrap();
    let (status, me, _) = body_json(me).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["user"]["email"], "dana@example.com");
    assert_eq!(me["business"]["phone_number"], "+15550001");
    assert_eq!(me["role"], "agent");
}

#[actix_rt::test]
async fn failures_look_the_same_and_are_throttled() {
    let f = fixture().await;
    let b = seed_business(&f, "+15550002").await;
    seed_user(&f, b, "dana@example.com", "agent").await;
    let gone = seed_user(&f, b, "gone@example.com", "agent").await;
    f.store.deactivate_user(b, gone, session::now()).await.unwrap();
    let app = app!(f);
    let mut messages = Vec::new();
    for (email, pw) in [
        ("dana@example.com", "wrong password"),
        ("nobody@example.com", "whatever"),
        ("gone@example.com", "correct horse battery"),
    ] {
        let (status, body, cookie) = body_json(app.call(login_req(email, pw)).await.unwrap()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{email}");
        assert!(cookie.is_empty());
        messages.push(body["error"]["message"].as_str().unwrap().to_owned());
    }
    assert!(
        messages.iter().all(|m| m == &messages[0]),
        "one message for every failure: {messages:?}"
    );

    // Per account: 5 failures within the window, then 429 even with the right password.
    for _ in 0..4 {
        let (status, _, _) = body_json(app.call(login_req("dana@example.com", "wrong password")).await.unwrap()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let res = app
        .call(login_req("dana@example.com", "correct horse battery"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: i64 = res
        .headers()
        .get(header::RETRY_AFTER)
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=900).contains(&retry), "{retry}");

    // Malformed input is 422/400, never a 5xx, and not counted.
    let bad = peer(TestRequest::post().uri("/api/auth/login"))
        .set_json(json!({"email": "x", "password": "y"}))
        .to_request();
    assert_eq!(app.call(bad).await.unwrap().status(), StatusCode::UNPROCESSABLE_ENTITY);
    let extra = peer(TestRequest::post().uri("/api/auth/login"))
        .set_json(json!({"email": "a@b.co", "password": "y", "admin": true}))
        .to_request();
    assert_eq!(
        app.call(extra).await.unwrap().status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let huge = peer(TestRequest::post().uri("/api/auth/login"))
        .set_json(json!({"email": "a@b.co", "password": "x".repeat(5000)}))
        .to_request();
    assert_eq!(app.call(huge).await.unwrap().status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[actix_rt::test]
async fn client_throttle_spans_accounts() {
    let f = fixture().await;
    let app = app!(f);
    for i in 0..callplane_plugin_permissions::CLIENT_FAILURES {
        let (status, _, _) = body_json(
            app.call(login_req(&format!("guess{i}@example.com"), "nope nope"))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let res = app.call(login_req("another@example.com", "nope nope")).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().contains_key(header::RETRY_AFTER));
}

#[actix_rt::test]
async fn logout_revokes_and_expired_sessions_are_refused() {
    let f = fixture().await;
    let b = seed_business(&f, "+15550003").await;
    let user = seed_user(&f, b, "dana@example.com", "agent").await;
    let app = app!(f);
    let token = login(&app, "dana@example.com").await;
    let res = app
        .call(bearer(TestRequest::post().uri("/api/auth/logout"), &token).to_request())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert!(
        res.headers()
            .get(header::SET_COOKIE)
            .unwrap()
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let after = app
        .call(bearer(TestRequest::get().uri("/api/me"), &token).to_request())
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);

    let expired = session::new_token();
    let now = session::now();
    f.store
        .create_session(&session::token_hash(&expired), user, now - 100, now - 1)
        .await
        .unwrap();
    let res = app
        .call(bearer(TestRequest::get().uri("/api/me"), &expired).to_request())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let garbage = app
        .call(bearer(TestRequest::get().uri("/api/me"), "not-a-token").to_request())
        .await
        .unwrap();
    assert_eq!(garbage.status(), StatusCode::UNAUTHORIZED);
}

#[actix_rt::test]
async fn each_role_sees_exactly_its_pages() {
    let f = fixture().await;
    let b = seed_business(&f, "+15550004").await;
    for role in ["owner", "admin", "agent", "viewer"] {
        seed_user(&f, b, &format!("{role}@example.com"), role).await;
    }
    let app = app!(f);
    // (role, /api/me, /api/users, /test/calendar, /test/settings)
    let table = [
        ("owner", 200, 200, 200, 200),
        ("admin", 200, 200, 200, 200),
        ("agent", 200, 403, 200, 403),
        ("viewer", 200, 403, 200, 403),
    ];
    for (role, me, users, calendar, settings) in table {
        let token = login(&app, &format!("{role}@example.com")).await;
        for (path, expected) in [
            ("/api/me", me),
            ("/api/users", users),
            ("/test/calendar", calendar),
            ("/test/settings", settings),
        ] {
            let res = app
                .call(bearer(TestRequest::get().uri(path), &token).to_request())
                .await
                .unwrap();
            assert_eq!(res.status().as_u16(), expected, "{role} {path}");
        }
    }
    for path in [
        "/api/me",
        "/api/users",
        "/test/calendar",
        "/test/settings",
        "/api/permissions/roles",
    ] {
        let res = app.call(peer(TestRequest::get().uri(path)).to_request()).await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{path} without a session");
        let (_, body, _) = body_json(res).await;
        assert_eq!(body["error"]["code"], "unauthenticated");
    }

    // Grants are live: give agents settings and take calendar away.
    let owner = login(&app, "owner@example.com").await;
    let res = app
        .call(
            bearer(TestRequest::put().uri("/api/permissions/roles/agent"), &owner)
                .set_json(json!({"pages": ["settings"]}))
                .to_request(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let agent = login(&app, "agent@example.com").await;
    let settings = app
        .call(bearer(TestRequest::get().uri("/test/settings"), &agent).to_request())
        .await
        .unwrap();
    assert_eq!(settings.status(), StatusCode::OK);
    let calendar = app
        .call(bearer(TestRequest::get().uri("/test/calendar"), &agent).to_request())
        .await
        .unwrap();
    assert_eq!(calendar.status(), StatusCode::FORBIDDEN);
    let bad_page = app
        .call(
            bearer(TestRequest::put().uri("/api/permissions/roles/agent"), &owner)
                .set_json(json!({"pages": ["payroll"]}))
                .to_request(),
        )
        .await
        .unwrap();
    assert_eq!(bad_page.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let bad_role = app
        .call(
            bearer(TestRequest::put().uri("/api/permissions/roles/root"), &owner)
                .set_json(json!({"pages": []}))
                .to_request(),
        )
        .await
        .unwrap();
    assert_eq!(bad_role.status(), StatusCode::NOT_FOUND);
}

#[actix_rt::test]
async fn another_tenants_ids_are_404_and_nothing_changes() {
    let f = fixture().await;
    let a = seed_business(&f, "+15550005").await;
    let b = seed_business(&f, "+15550006").await;
    seed_user(&f, a, "admin-a@example.com", "admin").await;
    let victim = seed_user(&f, b, "agent-b@example.com", "agent").await;
    let app = app!(f);
    let admin_a = login(&app, "admin-a@example.com").await;
    let victim_token = login(&app, "agent-b@example.com").await;

    let res = app
        .call(
            bearer(
                TestRequest::post().uri(&format!("/api/users/{victim}/deactivate")),
                &admin_a,
            )
            .to_request(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = app
        .call(bearer(TestRequest::post().uri("/api/users/999999/deactivate"), &admin_a).to_request())
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::NOT_FOUND,
        "an id that exists nowhere answers the same"
    );
    let res = app
        .call(bearer(TestRequest::post().uri("/api/users/abc/deactivate"), &admin_a).to_request())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let still = app
        .call(bearer(TestRequest::get().uri("/api/me"), &victim_token).to_request())
        .await
        .unwrap();
    assert_eq!(still.status(), StatusCode::OK, "the other tenant's user is untouched");

    let (_, users, _) = body_json(
        app.call(bearer(TestRequest::get().uri("/api/users"), &admin_a).to_request())
            .await
            .unwrap(),
    )
    .await;
    let emails: Vec<&str> = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails, ["admin-a@example.com"]);
    assert!(!users.to_string().contains("pbkdf2"), "no hashes in listings");

    let before = f.store.grants(b).await.unwrap();
    let res = app
        .call(
            bearer(TestRequest::put().uri("/api/permissions/roles/agent"), &admin_a)
                .set_json(json!({"pages": []}))
                .to_request(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        f.store.grants(b).await.unwrap(),
        before,
        "business B's grants are unchanged"
    );
    assert!(f.store.grants(a).await.unwrap()["agent"].is_empty());
}

#[actix_rt::test]
async fn admins_create_and_deactivate_users_in_their_business() {
    let f = fixture().await;
    let a = seed_business(&f, "+15550007").await;
    seed_user(&f, a, "admin@example.com", "admin").await;
    let app = app!(f);
    let admin = login(&app, "admin@example.com").await;
    let create = |body: Value| {
        bearer(TestRequest::post().uri("/api/users"), &admin)
            .set_json(body)
            .to_request()
    };
    let (status, user, _) = body_json(
        app.call(create(
            json!({"email": "New@Example.com", "password": "correct horse battery", "role": "agent"}),
        ))
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(user["email"], "new@example.com");
    assert_eq!(user["business_id"], a);
    assert!(user.get("password_hash").is_none());
    for (body, expected) in [
        (
            json!({"email": "new@example.com", "password": "another password", "role": "agent"}),
            409,
        ),
        (
            json!({"email": "bad", "password": "long enough pw", "role": "agent"}),
            422,
        ),
        (
            json!({"email": "x@example.com", "password": "short", "role": "agent"}),
            422,
        ),
        (
            json!({"email": "x@example.com", "password": "long enough pw", "role": "root"}),
            422,
        ),
        (
            json!({"email": "x@example.com", "password": "long enough pw", "role": "owner"}),
            403,
        ),
        (
            json!({"email": "x@example.com", "password": "long enough pw", "role": "agent", "business_id": 2}),
            422,
        ),
        (json!({"email": 5, "password": "long enough pw", "role": "agent"}), 422),
    ] {
        let res = app.call(create(body.clone())).await.unwrap();
        assert_eq!(res.status().as_u16(), expected, "{body}");
    }
    // An admin cannot lock the owners out.
    let owner = seed_user(&f, a, "owner@example.com", "owner").await;
    let res = app
        .call(
            bearer(
                TestRequest::post().uri(&format!("/api/users/{owner}/deactivate")),
                &admin,
            )
            .to_request(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let new_token = login(&app, "new@example.com").await;
    let id = user["id"].as_i64().unwrap();
    let res = app
        .call(bearer(TestRequest::post().uri(&format!("/api/users/{id}/deactivate")), &admin).to_request())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let after = app
        .call(bearer(TestRequest::get().uri("/api/me"), &new_token).to_request())
        .await
        .unwrap();
    assert_eq!(
        after.status(),
        StatusCode::UNAUTHORIZED,
        "deactivation ends the user's sessions"
    );
    let (status, _, _) = body_json(
        app.call(login_req("new@example.com", "correct horse battery"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[actix_rt::test]
async fn cookie_requests_that_change_state_must_come_from_the_public_origin() {
    let f = fixture().await;
    let b = seed_business(&f, "+15550008").await;
    seed_user(&f, b, "dana@example.com", "agent").await;
    let app = app!(f);
    let token = login(&app, "dana@example.com").await;
    let cookie = format!("callplane_session={token}");
    let with_cookie = |req: TestRequest| peer(req).insert_header((header::COOKIE, cookie.clone()));
    let read = app
        .call(with_cookie(TestRequest::get().uri("/test/calendar")).to_request())
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK, "reads need no Origin");
    let no_origin = app
        .call(with_cookie(TestRequest::post().uri("/test/calendar")).to_request())
        .await
        .unwrap();
    assert_eq!(no_origin.status(), StatusCode::FORBIDDEN);
    let foreign = app
        .call(
            with_cookie(TestRequest::post().uri("/test/calendar"))
                .insert_header((header::ORIGIN, "https://evil.example"))
                .to_request(),
        )
        .await
        .unwrap();
    assert_eq!(foreign.status(), StatusCode::FORBIDDEN);
    let same = app
        .call(
            with_cookie(TestRequest::post().uri("/test/calendar"))
                .insert_header((header::ORIGIN, ORIGIN))
                .to_request(),
        )
        .await
        .unwrap();
    assert_eq!(same.status(), StatusCode::OK);
    let bearer_post = app
        .call(bearer(TestRequest::post().uri("/test/calendar"), &token).to_request())
        .await
        .unwrap();
    assert_eq!(bearer_post.status(), StatusCode::OK, "bearer requests are exempt");
}

#[actix_rt::test]
async fn weak_hashes_are_upgraded_on_login() {
    let f = fixture().await;
    let b = seed_business(&f, "+15550009").await;
    let id = seed_user(&f, b, "old@example.com", "agent").await;
    // A hash from the days of fewer iterations (same format, lower count).
    let weak = "pbkdf2-sha256$1000$c2FsdHNhbHRzYWx0c2FsdA$";
    let mut out = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(1000).unwrap(),
        b"saltsaltsaltsalt",
        b"correct horse battery",
        &mut out,
    );
    use base64::Engine as _;
    let stored = format!("{weak}{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(out));
    f.store.set_password_hash(id, &stored).await.unwrap();
    let app = app!(f);
    login(&app, "old@example.com").await;
    let creds = f.store.credentials("old@example.com").await.unwrap().unwrap();
    assert!(
        creds.password_hash.starts_with("pbkdf2-sha256$600000$"),
        "{}",
        creds.password_hash
    );
}

#[actix_rt::test]
async fn viewers_read_pages_and_only_write_grants_change_them() {
    let f = fixture().await;
    let b = seed_business(&f, "+15550010").await;
    seed_user(&f, b, "owner@example.com", "owner").await;
    seed_user(&f, b, "viewer@example.com", "viewer").await;
    let app = app!(f);
    let owner = login(&app, "owner@example.com").await;
    let viewer = login(&app, "viewer@example.com").await;
    let read = |token: &str| bearer(TestRequest::get().uri("/test/calendar"), token).to_request();
    let write = |token: &str| bearer(TestRequest::post().uri("/test/calendar"), token).to_request();

    assert_eq!(app.call(read(&viewer)).await.unwrap().status(), StatusCode::OK);
    let (status, body, _) = body_json(app.call(write(&viewer)).await.unwrap()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("may read the calendar page but not change it"),
        "{body}"
    );
    assert_eq!(app.call(write(&owner)).await.unwrap().status(), StatusCode::OK);
    let (_, me, _) = body_json(
        app.call(bearer(TestRequest::get().uri("/api/me"), &viewer).to_request())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(me["pages"], json!(["calendar", "leads"]));
    assert_eq!(me["write_pages"], json!([]));

    // The role API takes the level; a bare page name grants write.
    let put = |pages: Value| {
        bearer(TestRequest::put().uri("/api/permissions/roles/viewer"), &owner)
            .set_json(json!({ "pages": pages }))
            .to_request()
    };
    let (status, body, _) = body_json(
        app.call(put(json!(["calendar", {"page": "leads", "level": "read"}])))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["levels"], json!({"calendar": "write", "leads": "read"}));
    assert_eq!(app.call(write(&viewer)).await.unwrap().status(), StatusCode::OK);
    let (_, grants, _) = body_json(
        app.call(bearer(TestRequest::get().uri("/api/permissions/roles"), &owner).to_request())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        grants["levels"]["viewer"],
        json!({"calendar": "write", "leads": "read"})
    );
    assert_eq!(grants["roles"]["viewer"], json!(["calendar", "leads"]));

    let (status, _, _) = body_json(
        app.call(put(json!([{"page": "calendar", "level": "read"}])))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.call(write(&viewer)).await.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(app.call(read(&viewer)).await.unwrap().status(), StatusCode::OK);
    for bad in [
        json!([{"page": "calendar", "level": "admin"}]),
        json!([{"page": "calendar"}]),
        json!([7]),
    ] {
        let (status, _, _) = body_json(app.call(put(bad.clone())).await.unwrap()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    assert_eq!(
        f.store.page_levels(b, "viewer").await.unwrap(),
        [("calendar".to_owned(), callplane_plugin_permissions::Level::Read)],
        "refused bodies changed nothing"
    );
}
