//! The outside security probe's findings against the sign-in throttle and the grants, replayed
//! on the mounted routes: the throttle bypass by a successful login, concurrent guesses racing
//! past the limits (on SQLite and on PostgreSQL), IPv6 clients of one /64, an admin stripping the
//! owner role, two `Origin` headers, and the headers of the answer that carries the token.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::dev::Service;
use actix_web::http::{StatusCode, header};
use actix_web::test::TestRequest;
use base64::Engine as _;
use callplane_plugin_api::testing::ScratchPostgres;
use callplane_plugin_permissions::{ACCOUNT_FAILURES, CLIENT_FAILURES, THROTTLE_WINDOW_SECS, session};
use common::*;
use futures_util::future::join_all;
use serde_json::json;

/// A hash with few iterations: a wrong guess against it costs microseconds, so a whole round of
/// guesses fits in one second, as it did for the probe (whose server was a release build).
fn cheap_hash(password: &str) -> String {
    let salt = b"probe-salt-16byt";
    let mut out = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        NonZeroU32::new(1000).unwrap(),
        salt,
        password.as_bytes(),
        &mut out,
    );
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    format!("pbkdf2-sha256$1000${}${}", b64.encode(salt), b64.encode(out))
}

async fn seed_cheap_user(f: &Fixture, business: i64, email: &str) {
    f.store
        .create_user(business, email, &cheap_hash("the right one"), "agent", session::now())
        .await
        .unwrap();
}

fn login_from(email: &str, password: &str, from: &str) -> actix_http::Request {
    TestRequest::post()
        .uri("/api/auth/login")
        .peer_addr(from.parse::<SocketAddr>().unwrap())
        .set_json(json!({ "email": email, "password": password }))
        .to_request()
}

/// Sleeps until just after the start of the next second (the probe started each round there).
async fn start_of_a_second() {
    let into = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_millis();
    actix_web::rt::time::sleep(Duration::from_millis(u64::from(1000 - into) + 5)).await;
}

#[actix_rt::test]
async fn a_successful_login_forgives_only_its_own_failure() {
    let f = fixture().await;
    let b = seed_business(&f, "+15550101").await;
    for i in 0..18 {
        seed_cheap_user(&f, b, &format!("victim{i}@example.com")).await;
    }
    let own = "attacker@example.com";
    f.store
        .create_user(b, own, &cheap_hash("my own password"), "agent", session::now())
        .await
        .unwrap();
    let app = app!(f);
    let (mut unauthorized, mut throttled) = (0, 0);
    for _round in 0..4 {
        start_of_a_second().await;
        for i in 0..18 {
            let res = app
                .call(login_from(
                    &format!("victim{i}@example.com"),
                    "guess",
                    "203.0.113.77:4000",
                ))
                .await
                .unwrap();
            match res.status() {
                StatusCode::UNAUTHORIZED => unauthorized += 1,
                StatusCode::TOO_MANY_REQUESTS => throttled += 1,
                other => panic!("{other}"),
            }
        }
        // The attacker's own correct login, in the same second as the guesses.
        let res = app
            .call(login_from(own, "my own password", "203.0.113.77:4000"))
            .await
            .unwrap();
        assert!(
            matches!(res.status(), StatusCode::OK | StatusCode::TOO_MANY_REQUESTS),
            "{}",
            res.status()
        );
    }
    assert_eq!(
        unauthorized, CLIENT_FAILURES,
        "guesses answered 401 (the rest, {throttled}, 429)"
    );
    assert_eq!(throttled, 72 - CLIENT_FAILURES);
    let on_record = f
        .store
        .failures("client", "203.0.113.77", session::now() - THROTTLE_WINDOW_SECS)
        .await
        .unwrap();
    assert_eq!(on_record, CLIENT_FAILURES, "every counted guess stays on record");
}

/// Fires `n` wrong logins at once: for `n` accounts from one address, or for one account from
/// `n` addresses. Returns how many got 401 and how many 429.
async fn concurrent_guesses(f: &Fixture, n: usize, one_account: bool) -> (i64, i64) {
    let b = seed_business(f, "+15550102").await;
    let accounts = if one_account { 1 } else { n };
    for i in 0..accounts {
        seed_cheap_user(f, b, &format!("user{i}@example.com")).await;
    }
    let app = app!(f);
    let requests = (0..n).map(|i| {
        let (email, from) = if one_account {
            ("user0@example.com".to_owned(), format!("198.51.100.{}:5000", i + 1))
        } else {
            (format!("user{i}@example.com"), "203.0.113.9:5000".to_owned())
        };
        app.call(login_from(&email, "wrong guess", &from))
    });
    let mut counts = (0, 0);
    for res in join_all(requests).await {
        match res.unwrap().status() {
            StatusCode::UNAUTHORIZED => counts.0 += 1,
            StatusCode::TOO_MANY_REQUESTS => counts.1 += 1,
            other => panic!("{other}"),
        }
    }
    counts
}

async fn concurrent_guesses_stay_within_the_limits(postgres: Option<ScratchPostgres>, one_account: bool) {
    let (n, limit) = if one_account {
        (40, ACCOUNT_FAILURES)
    } else {
        (60, CLIENT_FAILURES)
    };
    let f = fixture_on(postgres).await;
    let (unauthorized, throttled) = concurrent_guesses(&f, n, one_account).await;
    // Attempts that overlap may all be refused (each counts the others), never too many let in.
    assert!(
        unauthorized <= limit,
        "{unauthorized} of {n} concurrent guesses were tried (limit {limit})"
    );
    assert_eq!(unauthorized + throttled, i64::try_from(n).unwrap());
}

#[actix_rt::test]
async fn concurrent_guesses_from_one_address_stay_within_the_limit() {
    concurrent_guesses_stay_within_the_limits(None, false).await;
}

#[actix_rt::test]
async fn concurrent_guesses_at_one_account_stay_within_the_limit() {
    concurrent_guesses_stay_within_the_limits(None, true).await;
}

#[actix_rt::test]
async fn concurrent_guesses_stay_within_the_limits_on_postgres() {
    let test = "concurrent_guesses_stay_within_the_limits_on_postgres";
    for one_account in [false, true] {
        let Some(postgres) = ScratchPostgres::create(test) else {
            return;
        };
        concurrent_guesses_stay_within_the_limits(Some(postgres), one_account).await;
    }
}

#[actix_rt::test]
async fn ipv6_clients_of_one_slash_64_share_a_bucket() {
    let f = fixture().await;
    let app = app!(f);
    for i in 0..CLIENT_FAILURES {
        let from = format!("[2001:db8:1:2::{:x}]:4000", i + 1);
        let res = app
            .call(login_from(&format!("nobody{i}@example.com"), "guess", &from))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{from}");
    }
    let same_64 = app
        .call(login_from(
            "next@example.com",
            "guess",
            "[2001:db8:1:2:ffff:ffff:ffff:ffff]:4000",
        ))
        .await
        .unwrap();
    assert_eq!(same_64.status(), StatusCode::TOO_MANY_REQUESTS);
    let next_64 = app
        .call(login_from("next@example.com", "guess", "[2001:db8:1:3::1]:4000"))
        .await
        .unwrap();
    assert_eq!(
        next_64.status(),
        StatusCode::UNAUTHORIZED,
        "another /64 is another client"
    );
}

#[actix_rt::test]
async fn only_owners_change_the_owner_roles_pages() {
    let f = fixture().await;
    let b = seed_business(&f, "+15550103").await;
    seed_user(&f, b, "owner@example.com", "owner").await;
    seed_user(&f, b, "admin@example.com", "admin").await;
    let app = app!(f);
    let admin = login(&app, "admin@example.com").await;
    let owner = login(&app, "owner@example.com").await;
    let strip = |token: &str| {
        bearer(TestRequest::put().uri("/api/permissions/roles/owner"), token)
            .set_json(json!({ "pages": [] }))
            .to_request()
    };
    let (status, body, _) = body_json(app.call(strip(&admin)).await.unwrap()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    assert_eq!(
        f.store.pages(b, "owner").await.unwrap(),
        ["calendar", "calls", "leads", "settings"],
        "nothing changed"
    );
    let (status, _, _) = body_json(app.call(strip(&owner)).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "an owner may");
    assert!(f.store.pages(b, "owner").await.unwrap().is_empty());
}

#[actix_rt::test]
async fn two_origin_headers_are_refused() {
    let f = fixture().await;
    let b = seed_business(&f, "+15550104").await;
    seed_user(&f, b, "dana@example.com", "agent").await;
    let app = app!(f);
    let token = login(&app, "dana@example.com").await;
    let post = |origins: &[&str]| {
        let mut req = peer(TestRequest::post().uri("/test/calendar"))
            .insert_header((header::COOKIE, format!("callplane_session={token}")));
        for origin in origins {
            req = req.append_header((header::ORIGIN, *origin));
        }
        req.to_request()
    };
    assert_eq!(app.call(post(&[ORIGIN])).await.unwrap().status(), StatusCode::OK);
    for origins in [
        [ORIGIN, "https://evil.example"],
        ["https://evil.example", ORIGIN],
        [ORIGIN, ORIGIN],
    ] {
        let res = app.call(post(&origins)).await.unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{origins:?}");
    }
}

#[actix_rt::test]
async fn the_token_answer_is_not_cached_or_sniffed() {
    let f = fixture().await;
    let b = seed_business(&f, "+15550105").await;
    seed_user(&f, b, "dana@example.com", "agent").await;
    let app = app!(f);
    let res = app
        .call(login_req("dana@example.com", "correct horse battery"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers().get(header::CACHE_CONTROL).unwrap(), "no-store");
    assert_eq!(res.headers().get(header::X_CONTENT_TYPE_OPTIONS).unwrap(), "nosniff");
    let (_, body, _) = body_json(res).await;
    assert!(body["token"].is_string());
}
