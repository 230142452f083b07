//! The example plugin mounted as the host mounts it, with the real permissions plugin guarding it.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use actix_web::dev::Service;
use actix_web::http::StatusCode;
use actix_web::test::{self as atest, TestRequest};
use callplane_plugin_api::storage::Db;
use callplane_plugin_api::testing::TestHost;
use callplane_plugin_api::{CommandContext, PluginConfig, Settings};
use callplane_plugin_notes::{COMMAND, CONFIG, DEPLOY_CHECKS, PLUGIN};
use callplane_plugin_permissions::{Store, password};
use serde_json::{Value, json};

const SID: &str = "CA0123456789abcdef0123456789abcdef";

async fn host(dir: &tempfile::TempDir, max_length: &str) -> (TestHost, Db) {
    let db = Db::connect_lazy(&format!("sqlite://{}/n.db", dir.path().display())).unwrap();
    let mut settings = Settings::default();
    settings.set("notes", "max_length", max_length);
    let host = TestHost::new(settings, db.clone(), &[&callplane_plugin_permissions::PLUGIN, &PLUGIN]).await;
    let store = Store::new(db.clone());
    let business = store.create_business("B", "+15550001", "hi", None, 1).await.unwrap();
    let hash = password::hash("correct horse battery");
    for (email, role) in [("agent@b.example", "agent"), ("viewer@b.example", "viewer")] {
        store.create_user(business, email, &hash, role, 1).await.unwrap();
    }
    (host, db)
}

async fn call<S, B>(app: &S, req: TestRequest) -> (StatusCode, Value)
where
    S: Service<actix_http::Request, Response = actix_web::dev::ServiceResponse<B>, Error = actix_web::Error>,
    B: actix_web::body::MessageBody,
{
    let res = app
        .call(req.peer_addr("203.0.113.1:1".parse().unwrap()).to_request())
        .await
        .unwrap();
    let status = res.status();
    let bytes = actix_web::body::to_bytes(res.into_body()).await.ok().unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[actix_rt::test]
async fn agents_write_notes_viewers_do_not_and_the_limit_is_the_plugins_key() {
    let dir = tempfile::tempdir().unwrap();
    let (host, db) = host(&dir, "20").await;
    let app = atest::init_service(host.app()).await;
    let token = |email: &str| {
        TestRequest::post()
            .uri("/api/auth/login")
            .set_json(json!({ "email": email, "password": "correct horse battery" }))
    };
    let (_, agent) = call(&app, token("agent@b.example")).await;
    let agent = format!("Bearer {}", agent["token"].as_str().unwrap());
    let note = |auth: &str, body: &str| {
        TestRequest::post()
            .uri("/api/notes")
            .insert_header(("authorization", auth.to_owned()))
            .set_json(json!({ "call_sid": SID, "body": body }))
    };
    let (status, created) = call(&app, note(&agent, "called back")).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (status, error) = call(&app, note(&agent, &"x".repeat(21))).await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "max_length is 20 here: {error}"
    );
    let (status, listed) = call(
        &app,
        TestRequest::get()
            .uri("/api/notes")
            .insert_header(("authorization", agent.clone())),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["notes"][0]["body"], "called back");
    let (status, _) = call(&app, TestRequest::get().uri("/api/notes")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Viewers have no `calls` page by default: neither list nor write.
    let (_, viewer) = call(&app, token("viewer@b.example")).await;
    let viewer = format!("Bearer {}", viewer["token"].as_str().unwrap());
    let (status, _) = call(&app, note(&viewer, "hello")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // The command counts them.
    let matches = (COMMAND.definition)().get_matches_from(["notes", "count", "--business", "1"]);
    let context = CommandContext {
        matches,
        db,
        settings: Settings::default(),
    };
    assert_eq!((COMMAND.run)(context).await, Ok(()));
}

#[test]
fn the_deploy_check_fires_on_long_notes_only() {
    let settings = Settings::default();
    let mut config = PluginConfig::defaults(CONFIG);
    assert_eq!((DEPLOY_CHECKS[0].run)(&settings, &config), None, "the default passes");
    config.set("max_length", "50000");
    let (message, _) = (DEPLOY_CHECKS[0].run)(&settings, &config).unwrap();
    assert!(message.contains("50000"), "{message}");
    assert_eq!(CONFIG[0].variable("notes"), "CALLPLANE_NOTES_MAX_LENGTH");
}
