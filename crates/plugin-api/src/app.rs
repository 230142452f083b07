//! Assembling the app: what the host (`serve`) and the test kit ([`crate::testing::TestHost`])
//! share, so that tests mount exactly what production serves. Plugins do not need this module:
//! they declare through [`crate::Registrar`].
//!
//! [`build`] makes the actix app of a validated route table: the extractor configuration, every
//! plugin's state, the routes (each wrapped with its access policy, [`mount`]), a JSON 404 for
//! anything else, and the outer middleware ([`crate::deadline::edge`]: request context, body
//! deadline, the headers every answer carries).

use std::collections::BTreeMap;
use std::sync::Arc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode, header};
use actix_web::middleware::{Next, from_fn};
use actix_web::{App, Error, HttpRequest, HttpResponse, ResponseError as _, web};
use callplane_storage::Db;
use callplane_telemetry::HttpTelemetry;

pub use crate::deadline::{edge, time_body};
pub use crate::error::extractor_configs;
pub use crate::registrar::{HandlerFactory, StateInstaller};
use crate::{Access, AccessProvider, ApiError, Capability, RouteSpec};

/// What an app is built from; built once, shared by every worker's app.
#[derive(Clone)]
pub struct AppParts {
    /// The validated route table (the host's own routes included).
    pub routes: Vec<RouteSpec>,
    /// One access provider per capability.
    pub providers: BTreeMap<Capability, Arc<dyn AccessProvider>>,
    /// Shared state: every plugin's, and the host's own.
    pub states: Vec<StateInstaller>,
    /// Request ids, trusted proxies, request metrics.
    pub telemetry: web::Data<HttpTelemetry>,
    /// The database pool handlers take as `web::Data<Db>`.
    pub db: web::Data<Db>,
}

impl std::fmt::Debug for AppParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppParts")
            .field("routes", &self.routes.len())
            .field("providers", &self.providers.keys().collect::<Vec<_>>())
            .field("states", &self.states.len())
            .finish_non_exhaustive()
    }
}

/// The app of `parts`, as every worker serves it.
pub fn build(
    parts: &AppParts,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody + use<>>,
        Error = Error,
        InitError = (),
    > + use<>,
> {
    let parts = parts.clone();
    App::new()
        .app_data(parts.telemetry.clone())
        .app_data(parts.db.clone())
        .configure(extractor_configs)
        .configure(move |cfg| {
            for install in &parts.states {
                install(cfg);
            }
            mount(cfg, &parts.routes, &parts.providers);
        })
        .default_service(web::to(not_found))
        .wrap(from_fn(edge))
}

/// Any path no route takes: a JSON 404.
async fn not_found(req: HttpRequest) -> HttpResponse {
    ApiError::not_found(format!("no route for {} {}", req.method(), req.path())).error_response()
}

/// Mounts `routes` into `cfg`: one actix resource per path (so several methods share it and any
/// other method gets a JSON 405 with `Allow`), each route wrapped with the provider of its access
/// policy. A route whose capability has no provider is refused at boot; should one ever get here,
/// it fails closed with 500.
pub fn mount(
    cfg: &mut web::ServiceConfig,
    routes: &[RouteSpec],
    providers: &BTreeMap<Capability, Arc<dyn AccessProvider>>,
) {
    for (path, group) in mount_order(routes) {
        let allow = group.iter().map(|r| r.method.as_str()).collect::<Vec<_>>().join(", ");
        let mut resource = web::resource(path).default_service(web::to(move || {
            let allow = allow.clone();
            async move {
                let mut res = ApiError::response(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    &format!("allowed methods: {allow}"),
                );
                if let Ok(value) = header::HeaderValue::from_str(&allow) {
                    res.headers_mut().insert(header::ALLOW, value);
                }
                res
            }
        }));
        for spec in group {
            let (access, sign_in) = (spec.access, spec.sign_in);
            let policy = access
                .capability()
                .map(|capability| providers.get(&capability).cloned());
            resource = resource.route((spec.handler)().wrap(from_fn(move |req, next| {
                guard(policy.clone(), access, sign_in, req, next)
            })));
        }
        cfg.service(resource);
    }
}

/// The routes grouped by path, in the order actix is to try them.
///
/// Actix serves a request from the first resource whose pattern matches, trying them in turn, so
/// a literal segment must come before a parameter in the same position (`/api/calls/outbound`
/// before `/api/calls/{call_sid}`), whatever order the plugins declared them in. Paths without
/// any parameter go first of all, and among them Twilio's webhooks: the busiest routes, whose
/// caller waits on the answer, are matched first. (Two literal paths never match the same
/// request, so their order changes nothing else.)
fn mount_order(routes: &[RouteSpec]) -> Vec<(&str, Vec<&RouteSpec>)> {
    let mut by_path: Vec<(&str, Vec<&RouteSpec>)> = Vec::new();
    for route in routes {
        match by_path.iter_mut().find(|(path, _)| *path == route.path) {
            Some((_, group)) => group.push(route),
            None => by_path.push((&route.path, vec![route])),
        }
    }
    fn key<'a>((path, group): &(&'a str, Vec<&RouteSpec>)) -> (bool, bool, Vec<(bool, &'a str)>) {
        let webhook = group.iter().any(|r| r.access == Access::TwilioSignature);
        (path.contains('{'), !webhook, specificity(path))
    }
    by_path.sort_by(|a, b| key(a).cmp(&key(b)));
    by_path
}

/// Sort key of a path pattern: per segment, literals (`false`) before parameters (`true`).
fn specificity(path: &str) -> Vec<(bool, &str)> {
    path.split('/')
        .map(|segment| (segment.starts_with('{'), segment))
        .collect()
}

/// `303 See Other` to the sign-in `page`, which takes the page asked for (`uri`) from `?next=`.
fn to_sign_in(page: &str, uri: &actix_web::http::Uri) -> HttpResponse {
    let asked = uri
        .path_and_query()
        .map_or("/", actix_web::http::uri::PathAndQuery::as_str);
    let next: String = url::form_urlencoded::byte_serialize(asked.as_bytes()).collect();
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, format!("{page}?next={next}")))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

/// Every route's own middleware: its access policy, then its handler, and a panic in either
/// answers 500 (JSON, with the request id) for this request only: the panic is caught, logged
/// and counted (`callplane_http_handler_panics_total`), and the worker keeps serving.
///
/// `policy` is `None` for a public route, `Some(None)` for a policy whose provider is missing
/// (refused at boot; should such a route ever be mounted, it fails closed with 500).
async fn guard(
    policy: Option<Option<Arc<dyn AccessProvider>>>,
    access: Access,
    sign_in: Option<&'static str>,
    mut req: ServiceRequest,
    next: Next<actix_web::body::BoxBody>,
) -> Result<ServiceResponse<EitherBody<actix_web::body::BoxBody>>, actix_web::Error> {
    use futures_util::FutureExt as _;
    // Routing is done by now, so holding a second handle on the request is harmless.
    let request = req.request().clone();
    let served = std::panic::AssertUnwindSafe(async move {
        match policy {
            None => {}
            Some(None) => {
                tracing::error!(access = %access, path = %req.path(), "[HTTP] no provider for access policy; refusing");
                let res = ApiError::response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "access policy cannot be enforced",
                );
                return Ok(req.into_response(res).map_into_right_body());
            }
            Some(Some(provider)) => {
                if let Err(denied) = provider.authorize(&mut req, access).await {
                    let denied = match sign_in {
                        Some(page) if denied.status() == StatusCode::UNAUTHORIZED && req.method() == Method::GET => {
                            to_sign_in(page, req.uri())
                        }
                        _ => denied,
                    };
                    return Ok(req.into_response(denied).map_into_right_body());
                }
            }
        }
        Ok(next.call(req).await?.map_into_left_body())
    });
    match served.catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            // A label, so the route pattern and never the path a client sent.
            let route = request.match_pattern().unwrap_or_else(|| "unmatched".to_owned());
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(route = %route, panic = %message, "[HTTP] handler panicked; answered 500");
            if let Some(telemetry) = request.app_data::<web::Data<callplane_telemetry::HttpTelemetry>>() {
                telemetry.metrics.panicked(&route);
            }
            let res = ApiError::response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error; see the server log for this request id",
            );
            Ok(ServiceResponse::new(request, res).map_into_right_body())
        }
    }
}

#[cfg(test)]
mod tests {
    use actix_web::dev::Service;
    use actix_web::test as atest;
    use actix_web::{App, HttpMessage, HttpResponse};
    use callplane_storage::Db;
    use futures_util::future::LocalBoxFuture;
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::{Principal, Registrar, Settings};

    #[actix_rt::test]
    async fn literal_segments_win_over_parameters_whatever_the_declaration_order() {
        let settings = Settings::default();
        let db = Db::connect_lazy("sqlite::memory:").unwrap();
        let mut metrics = Registry::default();
        let mut reg = Registrar::new("calls", &settings, &db, &mut metrics);
        reg.get(
            "/api/calls/{sid}",
            Access::Public,
            |sid: web::Path<String>| async move { format!("call {sid}") },
        )
        .post("/api/calls/outbound", Access::Public, || async { "dialling" });
        let routes = reg.finish().routes;
        let app = atest::init_service(App::new().configure(|cfg| mount(cfg, &routes, &BTreeMap::new()))).await;
        let post =
            atest::call_and_read_body(&app, atest::TestRequest::post().uri("/api/calls/outbound").to_request()).await;
        assert_eq!(post, "dialling");
        let get = atest::call_and_read_body(&app, atest::TestRequest::get().uri("/api/calls/CA1").to_request()).await;
        assert_eq!(get, "call CA1");
    }

    #[actix_rt::test]
    async fn webhooks_are_tried_first_and_parameters_last() {
        let settings = Settings::default();
        let db = Db::connect_lazy("sqlite::memory:").unwrap();
        let mut metrics = Registry::default();
        let mut reg = Registrar::new("calls", &settings, &db, &mut metrics);
        reg.get("/api/calls/{sid}", Access::Public, || async { "" })
            .get("/livez", Access::Public, || async { "" })
            .post("/webhook/b", Access::TwilioSignature, || async { "" })
            .get("/api/calls/recent", Access::Public, || async { "" })
            .post("/webhook/a", Access::TwilioSignature, || async { "" })
            .post("/api/calls/recent", Access::Public, || async { "" });
        let routes = reg.finish().routes;
        let order: Vec<(&str, usize)> = mount_order(&routes)
            .into_iter()
            .map(|(path, group)| (path, group.len()))
            .collect();
        assert_eq!(
            order,
            [
                ("/webhook/a", 1),
                ("/webhook/b", 1),
                ("/api/calls/recent", 2),
                ("/livez", 1),
                ("/api/calls/{sid}", 1)
            ]
        );
    }

    /// Lets a request in when it carries `x-user: <business>`, as a `Principal` of that business.
    struct HeaderSessions;

    impl AccessProvider for HeaderSessions {
        fn authorize<'a>(
            &'a self,
            req: &'a mut ServiceRequest,
            access: Access,
        ) -> LocalBoxFuture<'a, Result<(), HttpResponse>> {
            Box::pin(async move {
                let business = req
                    .headers()
                    .get("x-user")
                    .and_then(|v| v.to_str().ok()?.parse::<i64>().ok())
                    .ok_or_else(|| ApiError::response(StatusCode::UNAUTHORIZED, "unauthenticated", "no session"))?;
                if access == Access::PageAccess("secret") {
                    return Err(ApiError::response(StatusCode::FORBIDDEN, "forbidden", "no page"));
                }
                req.extensions_mut().insert(Principal {
                    user_id: 1,
                    business_id: business,
                    email: "a@example.com".into(),
                    role: "agent".into(),
                    pages: vec!["calls".into()],
                    write_pages: vec![],
                    admin: false,
                });
                Ok(())
            })
        }
    }

    async fn whoami(who: Principal) -> String {
        who.business_id.to_string()
    }

    fn table() -> Vec<RouteSpec> {
        let settings = Settings::default();
        let db = Db::connect_lazy("sqlite::memory:").unwrap();
        let mut metrics = Registry::default();
        let mut reg = Registrar::new("demo", &settings, &db, &mut metrics);
        reg.get("/open", Access::Public, || async { "open" })
            .get("/calls", Access::PageAccess("calls"), whoami)
            .post("/calls", Access::PageAccess("calls"), whoami)
            .get("/secret", Access::PageAccess("secret"), whoami)
            .get("/unprovided", Access::TwilioSignature, || async { "should never run" });
        let out = reg.finish();
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        out.routes
    }

    #[actix_rt::test]
    async fn a_page_without_a_session_redirects_to_its_sign_in_page_and_nothing_else_does() {
        let settings = Settings::default();
        let db = Db::connect_lazy("sqlite::memory:").unwrap();
        let mut metrics = Registry::default();
        let mut reg = Registrar::new("pages", &settings, &db, &mut metrics);
        reg.get("/page", Access::PageAccess("calls"), whoami)
            .sign_in("/login")
            .post("/page", Access::PageAccess("calls"), whoami)
            .sign_in("/login")
            .get("/secret-page", Access::PageAccess("secret"), whoami)
            .sign_in("/login");
        let routes = reg.finish().routes;
        let mut providers: BTreeMap<Capability, Arc<dyn AccessProvider>> = BTreeMap::new();
        providers.insert(Capability::Sessions, Arc::new(HeaderSessions));
        let app = atest::init_service(App::new().configure(|cfg| mount(cfg, &routes, &providers))).await;
        let res = app
            .call(atest::TestRequest::get().uri("/page?since=1h&x=%2F").to_request())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::SEE_OTHER);
        assert_eq!(
            res.headers().get(header::LOCATION).unwrap(),
            "/login?next=%2Fpage%3Fsince%3D1h%26x%3D%252F"
        );
        let status = |req: atest::TestRequest| {
            let app = &app;
            async move { app.call(req.to_request()).await.unwrap().status().as_u16() }
        };
        assert_eq!(
            status(atest::TestRequest::post().uri("/page")).await,
            401,
            "a write is not a visit"
        );
        assert_eq!(
            status(atest::TestRequest::get().uri("/page").insert_header(("x-user", "7"))).await,
            200
        );
        assert_eq!(
            status(
                atest::TestRequest::get()
                    .uri("/secret-page")
                    .insert_header(("x-user", "7"))
            )
            .await,
            403,
            "a role without the page is refused, not sent to sign in again"
        );
    }

    #[actix_rt::test]
    async fn mounted_routes_enforce_their_policies() {
        let routes = table();
        let mut providers: BTreeMap<Capability, Arc<dyn AccessProvider>> = BTreeMap::new();
        providers.insert(Capability::Sessions, Arc::new(HeaderSessions));
        let app = atest::init_service(App::new().configure(|cfg| mount(cfg, &routes, &providers))).await;
        let status = |req: atest::TestRequest| {
            let app = &app;
            async move { app.call(req.to_request()).await.unwrap().status().as_u16() }
        };
        assert_eq!(status(atest::TestRequest::get().uri("/open")).await, 200);
        assert_eq!(status(atest::TestRequest::get().uri("/calls")).await, 401);
        assert_eq!(
            status(atest::TestRequest::get().uri("/calls").insert_header(("x-user", "7"))).await,
            200
        );
        assert_eq!(
            status(atest::TestRequest::post().uri("/calls").insert_header(("x-user", "7"))).await,
            200
        );
        assert_eq!(
            status(atest::TestRequest::get().uri("/secret").insert_header(("x-user", "7"))).await,
            403
        );
        assert_eq!(
            status(atest::TestRequest::get().uri("/unprovided")).await,
            500,
            "fails closed"
        );
        let res = app
            .call(
                atest::TestRequest::delete()
                    .uri("/calls")
                    .insert_header(("x-user", "7"))
                    .to_request(),
            )
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 405);
        assert_eq!(res.headers().get("allow").unwrap(), "GET, POST");
        let body = atest::read_body(
            app.call(
                atest::TestRequest::get()
                    .uri("/calls")
                    .insert_header(("x-user", "7"))
                    .to_request(),
            )
            .await
            .unwrap(),
        )
        .await;
        assert_eq!(body, "7");
    }

    /// Panics when asked for `PageAccess("boom")`.
    struct PanickyProvider;

    fn explode() -> &'static str {
        panic!("handler fixture")
    }

    impl AccessProvider for PanickyProvider {
        fn authorize<'a>(
            &'a self,
            _: &'a mut ServiceRequest,
            access: Access,
        ) -> LocalBoxFuture<'a, Result<(), HttpResponse>> {
            Box::pin(async move {
                assert_ne!(access, Access::PageAccess("boom"), "provider fixture: boom");
                Ok(())
            })
        }
    }

    #[actix_rt::test]
    async fn a_panic_in_a_provider_or_a_guarded_handler_answers_500_for_that_request_only() {
        let settings = Settings::default();
        let db = Db::connect_lazy("sqlite::memory:").unwrap();
        let mut metrics = Registry::default();
        let mut reg = Registrar::new("demo", &settings, &db, &mut metrics);
        reg.get("/provider-panics", Access::PageAccess("boom"), || async { "never" })
            .get("/handler-panics", Access::PageAccess("calls"), || async { explode() })
            .get("/fine", Access::PageAccess("calls"), || async { "fine" });
        let routes = reg.finish().routes;
        let mut providers: BTreeMap<Capability, Arc<dyn AccessProvider>> = BTreeMap::new();
        providers.insert(Capability::Sessions, Arc::new(PanickyProvider));
        let app = atest::init_service(App::new().configure(|cfg| mount(cfg, &routes, &providers))).await;
        for path in ["/provider-panics", "/handler-panics"] {
            let res = app
                .call(atest::TestRequest::get().uri(path).to_request())
                .await
                .unwrap();
            assert_eq!(res.status().as_u16(), 500, "{path}");
            let body: serde_json::Value = serde_json::from_slice(&atest::read_body(res).await).unwrap();
            assert_eq!(body["error"]["code"], "internal", "{path}");
        }
        let fine = atest::call_and_read_body(&app, atest::TestRequest::get().uri("/fine").to_request()).await;
        assert_eq!(fine, "fine", "the worker keeps serving");
    }
}
