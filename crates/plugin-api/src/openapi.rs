//! The HTTP API as an OpenAPI 3.1 document, generated from the validated route table.
//!
//! A plugin documents a route next to its declaration with [`crate::Registrar::doc`]: a summary,
//! the request body's and the answers' schemas (types deriving `utoipa::ToSchema`), the query
//! parameters (`utoipa::IntoParams`). The host adds what the route table already knows: the path
//! parameters, the security of each [`Access`] policy and the errors it implies (every error has
//! the one shape of [`crate::ApiError`]; a webhook's errors are an empty TwiML document, which is
//! what Twilio reads). So a new plugin's routes appear with no host change, and
//! an undocumented route still appears, with its access and its errors.
//!
//! ```
//! use callplane_plugin_api::openapi::RouteDoc;
//! # #[derive(serde::Deserialize, utoipa::ToSchema)]
//! # struct Note { body: String }
//! let doc = RouteDoc::new("Create a note").json_body::<Note>().json::<Note>(201, "the note");
//! # let _ = doc;
//! ```

use std::collections::BTreeMap;

use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::path::{OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, HttpMethod, InfoBuilder, OpenApi, OpenApiBuilder, Paths, Ref, RefOr, Required, Schema,
};
use utoipa::{IntoParams, PartialSchema, ToSchema};

use crate::{Access, RouteSpec};

/// A content type and the schema of what it carries.
type Content = (&'static str, RefOr<Schema>);

/// What a route takes and answers, declared by its plugin.
#[derive(Clone, Default)]
pub struct RouteDoc {
    summary: String,
    body: Option<Content>,
    query: Vec<utoipa::openapi::path::Parameter>,
    responses: Vec<(u16, String, Option<Content>)>,
    schemas: Vec<(String, RefOr<Schema>)>,
    links: Vec<DocLink>,
}

/// An OpenAPI link: the answer with `status` feeds `parameter` of the route `method path` with
/// `expression` (`$response.body#/id`), so clients and fuzzers can follow it.
#[derive(Clone)]
struct DocLink {
    status: u16,
    method: &'static str,
    path: &'static str,
    parameter: &'static str,
    expression: &'static str,
}

impl std::fmt::Debug for RouteDoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteDoc")
            .field("summary", &self.summary)
            .field("responses", &self.responses.iter().map(|r| r.0).collect::<Vec<_>>())
            .field("links", &self.links.len())
            .finish_non_exhaustive()
    }
}

impl RouteDoc {
    /// A route doing `summary`.
    pub fn new(summary: impl Into<String>) -> Self {
        Self {
            summary: summary.into(),
            ..Self::default()
        }
    }

    fn component<T: ToSchema>(&mut self) -> RefOr<Schema> {
        T::schemas(&mut self.schemas);
        self.schemas.push((T::name().into_owned(), T::schema()));
        RefOr::Ref(Ref::from_schema_name(T::name()))
    }

    /// A JSON request body of type `T`.
    #[must_use]
    pub fn json_body<T: ToSchema>(mut self) -> Self {
        let schema = self.component::<T>();
        self.body = Some(("application/json", schema));
        self
    }

    /// Query parameters, from a type deriving `IntoParams`.
    #[must_use]
    pub fn query<T: IntoParams>(mut self) -> Self {
        self.query = T::into_params(|| Some(ParameterIn::Query));
        self
    }

    /// A JSON answer of type `T` with `status`.
    #[must_use]
    pub fn json<T: ToSchema>(mut self, status: u16, description: &str) -> Self {
        let schema = self.component::<T>();
        self.responses
            .push((status, description.to_owned(), Some(("application/json", schema))));
        self
    }

    /// A JSON answer that is a list of `T`, under `key` (`{"calls": [...]}`).
    #[must_use]
    pub fn json_list<T: ToSchema>(mut self, status: u16, description: &str, key: &str) -> Self {
        let item = self.component::<T>();
        let list = ObjectBuilder::new()
            .property(key, utoipa::openapi::schema::ArrayBuilder::new().items(item))
            .required(key)
            .build();
        self.responses
            .push((status, description.to_owned(), Some(("application/json", list.into()))));
        self
    }

    /// An answer of `content_type` that is text (TwiML, Prometheus text).
    #[must_use]
    pub fn text(mut self, status: u16, description: &str, content_type: &'static str) -> Self {
        self.responses
            .push((status, description.to_owned(), Some((content_type, String::schema()))));
        self
    }

    /// An error answer beyond those the route's access implies (`{"error": {…}}`, with any extra
    /// fields the route adds).
    #[must_use]
    pub fn error(mut self, status: u16, description: &str) -> Self {
        let schema = RefOr::Ref(Ref::from_schema_name(ErrorBody::name()));
        self.responses
            .push((status, description.to_owned(), Some(("application/json", schema))));
        self
    }

    /// A JSON object answer whose fields are not described.
    #[must_use]
    pub fn object(mut self, status: u16, description: &str) -> Self {
        let any = ObjectBuilder::new().schema_type(SchemaType::new(Type::Object)).build();
        self.responses
            .push((status, description.to_owned(), Some(("application/json", any.into()))));
        self
    }

    /// Links the answer with `status` to the route `method path`: its path parameter
    /// `parameter` is `expression` of this answer (`"$response.body#/id"`).
    #[must_use]
    pub fn link(
        mut self,
        status: u16,
        (method, path): (&'static str, &'static str),
        parameter: &'static str,
        expression: &'static str,
    ) -> Self {
        self.links.push(DocLink {
            status,
            method,
            path,
            parameter,
            expression,
        });
        self
    }

    /// An answer with no body.
    #[must_use]
    pub fn empty(mut self, status: u16, description: &str) -> Self {
        self.responses.push((status, description.to_owned(), None));
        self
    }
}

/// The one error shape (`{"error": {"code", "message", "request_id"}}`).
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable code (`bad_request`, `not_found`, `forbidden`, …).
    pub code: String,
    /// For people.
    pub message: String,
    /// The request's id (also in `X-Request-Id`), when there is one.
    pub request_id: Option<String>,
}

/// Security scheme names in the document.
const BEARER: &str = "session_bearer";
const COOKIE: &str = "session_cookie";
const TWILIO: &str = "twilio_signature";

/// The errors every route can answer, whatever it does: a body too large, a body that takes too
/// long, too many requests.
const ALWAYS: &[(u16, &str)] = &[
    (400, "the request is malformed"),
    (408, "the request body took too long"),
    (413, "the request body is too large"),
];

/// The errors `access` implies.
fn access_errors(access: &Access) -> &'static [(u16, &'static str)] {
    match access {
        Access::Public => &[],
        Access::TwilioSignature => &[
            (403, "the X-Twilio-Signature header is missing or does not verify"),
            (415, "the body is not application/x-www-form-urlencoded"),
            (
                503,
                "the call cannot be kept right now (database and spool unavailable): Twilio retries",
            ),
        ],
        Access::Authenticated | Access::Admin | Access::PageAccess(_) => &[
            (401, "no valid session (bearer token or session cookie)"),
            (
                403,
                "the session's role may not use this route, or the Origin is foreign",
            ),
            (415, "the body is not JSON"),
            (422, "the values are refused (the message says which)"),
            (429, "too many requests"),
            (503, "the database is unreachable: retry after Retry-After"),
        ],
    }
}

fn security(access: &Access) -> Vec<SecurityRequirement> {
    match access {
        Access::Public => Vec::new(),
        Access::TwilioSignature => vec![SecurityRequirement::new(TWILIO, Vec::<String>::new())],
        Access::Authenticated | Access::Admin | Access::PageAccess(_) => vec![
            SecurityRequirement::new(BEARER, Vec::<String>::new()),
            SecurityRequirement::new(COOKIE, Vec::<String>::new()),
        ],
    }
}

/// The `{name}` parameters of an actix path (a `{name:regex}` keeps its name only), and the path
/// as OpenAPI writes it.
fn path_parameters(path: &str) -> (String, Vec<String>) {
    let mut out = String::with_capacity(path.len());
    let mut names = Vec::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').map_or(rest.len(), |c| open + c);
        let inner = &rest[open + 1..close];
        let name = inner.split(':').next().unwrap_or(inner);
        out.push('{');
        out.push_str(name);
        out.push('}');
        names.push(name.to_owned());
        rest = rest.get(close + 1..).unwrap_or_default();
    }
    out.push_str(rest);
    (out, names)
}

/// The operation id of `method path` (an OpenAPI path): `post_api_calendar_appointments`.
fn operation_id(method: &str, path: &str) -> String {
    format!(
        "{}_{}",
        method.to_ascii_lowercase(),
        path.trim_matches('/').replace(['/', '{', '}', '.'], "_")
    )
}

fn method(route: &RouteSpec) -> Option<HttpMethod> {
    Some(match route.method.as_str() {
        "GET" => HttpMethod::Get,
        "POST" => HttpMethod::Post,
        "PUT" => HttpMethod::Put,
        "PATCH" => HttpMethod::Patch,
        "DELETE" => HttpMethod::Delete,
        "HEAD" => HttpMethod::Head,
        "OPTIONS" => HttpMethod::Options,
        _ => return None,
    })
}

/// The OpenAPI 3.1 document of `routes` (the validated route table, host routes included).
pub fn document(routes: &[RouteSpec], version: &str) -> OpenApi {
    let error = RefOr::Ref(Ref::from_schema_name(ErrorBody::name()));
    let mut components = ComponentsBuilder::new()
        .security_scheme(
            BEARER,
            SecurityScheme::Http(Http::builder().scheme(HttpAuthScheme::Bearer).build()),
        )
        .security_scheme(COOKIE, SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new("callplane_session"))))
        .security_scheme(
            TWILIO,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Twilio-Signature",
                "HMAC-SHA1 of the public URL and the sorted form parameters with the account's auth token, as Twilio signs webhooks",
            ))),
        );
    let mut schemas: BTreeMap<String, RefOr<Schema>> = BTreeMap::new();
    let mut nested = Vec::new();
    ErrorBody::schemas(&mut nested);
    schemas.extend(nested);
    schemas.insert(ErrorBody::name().into_owned(), ErrorBody::schema());

    let mut sorted: Vec<&RouteSpec> = routes.iter().collect();
    sorted.sort_by(|a, b| (&a.path, a.method.as_str()).cmp(&(&b.path, b.method.as_str())));
    let mut paths = Paths::new();
    for route in sorted {
        let Some(http_method) = method(route) else { continue };
        let (path, names) = path_parameters(&route.path);
        let mut doc = route.doc.as_deref().cloned().unwrap_or_default();
        if doc.responses.is_empty() {
            doc = doc.object(200, "the route's answer");
        }
        schemas.extend(doc.schemas.iter().cloned());
        let summary = if doc.summary.is_empty() {
            format!("{} {}", route.method, route.path)
        } else {
            doc.summary.clone()
        };
        let mut operation = OperationBuilder::new()
            .summary(Some(summary))
            .operation_id(Some(operation_id(route.method.as_str(), &path)))
            .tag(route.plugin)
            .securities(Some(security(&route.access)));
        for name in &names {
            operation = operation.parameter(
                ParameterBuilder::new()
                    .name(name)
                    .parameter_in(ParameterIn::Path)
                    .required(Required::True)
                    .schema(Some(String::schema())),
            );
        }
        for parameter in doc.query {
            operation = operation.parameter(parameter);
        }
        if let Some((content_type, schema)) = doc.body {
            operation = operation.request_body(Some(
                RequestBodyBuilder::new()
                    .content(content_type, ContentBuilder::new().schema(Some(schema)).build())
                    .required(Some(Required::True))
                    .build(),
            ));
        }
        let mut documented = Vec::new();
        for (status, description, content) in doc.responses {
            let mut response = ResponseBuilder::new().description(description);
            if let Some((content_type, schema)) = content {
                response = response.content(content_type, ContentBuilder::new().schema(Some(schema)).build());
            }
            for link in doc.links.iter().filter(|l| l.status == status) {
                let target = path_parameters(link.path).0;
                response = response.link(
                    operation_id(link.method, &target),
                    utoipa::openapi::link::LinkBuilder::new()
                        .operation_id(operation_id(link.method, &target))
                        .parameter(link.parameter, link.expression)
                        .build(),
                );
            }
            operation = operation.response(status.to_string(), response.build());
            documented.push(status);
        }
        let mut errors: Vec<(u16, &str)> = ALWAYS.iter().chain(access_errors(&route.access)).copied().collect();
        if !names.is_empty() {
            errors.push((404, "no such resource (or another tenant's)"));
        }
        // Twilio reads TwiML: a webhook's errors are an empty TwiML document.
        let (error_type, error_schema) = match route.access {
            Access::TwilioSignature => ("text/xml", String::schema()),
            _ => ("application/json", error.clone()),
        };
        for (status, description) in errors {
            if documented.contains(&status) {
                continue;
            }
            operation = operation.response(
                status.to_string(),
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        error_type,
                        ContentBuilder::new().schema(Some(error_schema.clone())).build(),
                    )
                    .build(),
            );
        }
        paths.add_path_operation(&path, vec![http_method], operation.build());
    }
    for (name, schema) in schemas {
        components = components.schema(name, schema);
    }
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("callplane")
                .version(version)
                .description(Some(
                    "The call plane's HTTP API: Twilio webhooks (signed), the calls, calendar and permissions APIs \
                     (a session: POST /api/auth/login), health and metrics. Generated from the validated route table.",
                ))
                .build(),
        )
        .paths(paths)
        .components(Some(components.build()))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::HttpResponse;
    use actix_web::http::Method;

    /// A plugin's request body, as any plugin declares one.
    #[derive(serde::Deserialize, ToSchema)]
    #[allow(dead_code)] // a schema only
    struct NewNote {
        body: String,
    }

    async fn handler() -> HttpResponse {
        HttpResponse::Ok().finish()
    }

    fn route(method: Method, path: &str, access: Access, doc: Option<RouteDoc>) -> RouteSpec {
        RouteSpec {
            doc: doc.map(std::sync::Arc::new),
            ..RouteSpec::new("notes", method, path, access, handler)
        }
    }

    #[test]
    fn every_route_is_in_the_document_with_its_security_errors_and_schemas() {
        let routes = [
            route(
                Method::POST,
                "/api/notes",
                Access::PageAccess("calls"),
                Some(
                    RouteDoc::new("Create a note")
                        .json_body::<NewNote>()
                        .empty(201, "created"),
                ),
            ),
            route(Method::GET, "/api/notes/{id}", Access::Authenticated, None),
            route(Method::POST, "/webhook/notes", Access::TwilioSignature, None),
            route(Method::GET, "/livez", Access::Public, None),
        ];
        let doc = serde_json::to_value(document(&routes, "1.2.3")).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["version"], "1.2.3");
        let create = &doc["paths"]["/api/notes"]["post"];
        assert_eq!(create["summary"], "Create a note");
        assert_eq!(
            create["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/NewNote"
        );
        assert_eq!(doc["components"]["schemas"]["NewNote"]["required"][0], "body");
        assert!(create["responses"]["201"].is_object());
        assert_eq!(
            create["responses"]["401"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorBody"
        );
        assert_eq!(
            create["security"],
            serde_json::json!([{ "session_bearer": [] }, { "session_cookie": [] }])
        );
        // Undocumented: still there, with its path parameter, access and errors.
        let get = &doc["paths"]["/api/notes/{id}"]["get"];
        assert_eq!(get["parameters"][0]["name"], "id");
        assert_eq!(get["parameters"][0]["in"], "path");
        assert!(get["responses"]["404"].is_object());
        assert_eq!(
            get["responses"]["200"]["content"]["application/json"]["schema"]["type"],
            "object"
        );
        let webhook = &doc["paths"]["/webhook/notes"]["post"];
        assert_eq!(webhook["security"], serde_json::json!([{ "twilio_signature": [] }]));
        assert!(
            webhook["responses"]["403"]["content"]["text/xml"].is_object(),
            "TwiML errors"
        );
        let livez = &doc["paths"]["/livez"]["get"];
        assert_eq!(livez["security"], serde_json::json!([]));
        assert!(livez["responses"]["401"].is_null(), "public: no auth errors");
    }

    #[test]
    fn actix_paths_become_openapi_paths_with_their_parameters() {
        assert_eq!(
            path_parameters("/api/calls/{call_sid}/trace"),
            ("/api/calls/{call_sid}/trace".to_owned(), vec!["call_sid".to_owned()])
        );
        assert_eq!(
            path_parameters("/a/{id:\\d+}/b/{x}"),
            ("/a/{id}/b/{x}".to_owned(), vec!["id".to_owned(), "x".to_owned()])
        );
        assert_eq!(path_parameters("/livez"), ("/livez".to_owned(), vec![]));
    }
}
