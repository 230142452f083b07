//! `callplane-plugin-notes`: an example plugin, complete and tested, that docs/plugins.md walks
//! through. Agents keep notes on calls: `GET /api/notes` and `POST /api/notes` (page `calls`: a
//! role that only reads the page can list but not write), a configuration key of its own
//! (`[notes] max_length`, `CALLPLANE_NOTES_MAX_LENGTH`), a deploy check (CP190) and a command
//! (`callplane notes count --business 1`). It is not linked into the `callplane` binary: a host
//! links it with one cargo feature and one `use` line (docs/plugins.md).

use actix_web::{HttpResponse, web};
use callplane_plugin_api::storage::Db;
use callplane_plugin_api::storage::sqlx::{self, Row as _};
use callplane_plugin_api::{
    Access, ApiError, CommandContext, ConfigKey, DeployCheck, Migration, PluginCommand, Principal, RegisterError,
    Registrar, RoutePlugin, ValueKind,
};
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use serde::Deserialize;
use serde_json::json;

/// The plugin: what the host collects (`inventory`) and what tests mount (`TestHost`).
pub const PLUGIN: RoutePlugin = RoutePlugin {
    name: "notes",
    version: env!("CARGO_PKG_VERSION"),
    summary: "call notes",
    requires: &["permissions"],
    critical: false,
    register,
    commands: &[COMMAND],
    config: CONFIG,
    deploy_checks: DEPLOY_CHECKS,
};

inventory::submit! { PLUGIN }

/// `[notes]` in `callplane.toml`; `CALLPLANE_NOTES_MAX_LENGTH` in the environment.
pub const CONFIG: &[ConfigKey] = &[ConfigKey::new(
    "max_length",
    ValueKind::Integer { min: 1, max: 100_000 },
    "2000",
    "the longest note, in characters",
)];

/// Checked by `callplane check` (a warning) and `check --deploy` (an error).
pub const DEPLOY_CHECKS: &[DeployCheck] = &[DeployCheck {
    id: "CP190",
    run: |_, config| {
        (config.integer("max_length") > 10_000).then(|| {
            (
                format!("notes may be {} characters long", config.integer("max_length")),
                "keep CALLPLANE_NOTES_MAX_LENGTH at 10000 or less: notes are read on a phone".to_owned(),
            )
        })
    },
}];

const MIGRATIONS: &[Migration] = &[Migration::portable(
    1,
    "notes",
    "CREATE TABLE notes (
        id {id},
        business_id BIGINT NOT NULL,
        author_id BIGINT NOT NULL,
        call_sid TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE INDEX notes_business ON notes (business_id, id);",
)];

/// The plugin's own state: a type of its own, so it can never shadow another plugin's.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_length: usize,
}

/// Declares the routes, the migrations and the state; creates nothing.
///
/// # Errors
/// Never: its one key is validated by the host.
pub fn register(reg: &mut Registrar<'_>) -> Result<(), RegisterError> {
    let max_length = usize::try_from(reg.config().integer("max_length")).unwrap_or(usize::MAX);
    reg.migrations(MIGRATIONS);
    reg.state(Limits { max_length });
    reg.get("/api/notes", Access::PageAccess("calls"), list)
        .post("/api/notes", Access::PageAccess("calls"), create);
    Ok(())
}

fn database(error: &sqlx::Error) -> ApiError {
    ApiError::database("[NOTES] notes", error)
}

/// `GET /api/notes`: the caller's business's notes, newest first.
async fn list(who: Principal, db: web::Data<Db>) -> Result<HttpResponse, ApiError> {
    let rows = db
        .run(|pool| {
            sqlx::query(
                "SELECT id, call_sid, body, author_id FROM notes WHERE business_id = $1 ORDER BY id DESC LIMIT 100",
            )
            .bind(who.business_id)
            .fetch_all(pool)
        })
        .await
        .map_err(|e| database(&e))?;
    let notes: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            json!({
                "id": r.get::<i64, _>(0),
                "call_sid": r.get::<String, _>(1),
                "body": r.get::<String, _>(2),
                "author_id": r.get::<i64, _>(3),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "notes": notes })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewNote {
    call_sid: String,
    body: String,
}

/// `POST /api/notes {call_sid, body}`: 201 with the note, 422 for an empty or too long body.
async fn create(
    who: Principal,
    db: web::Data<Db>,
    limits: web::Data<Limits>,
    note: web::Json<NewNote>,
) -> Result<HttpResponse, ApiError> {
    let NewNote { call_sid, body } = note.into_inner();
    let length = body.trim().chars().count();
    if length == 0 || length > limits.max_length {
        return Err(ApiError::unprocessable(format!(
            "body must be 1 to {} characters",
            limits.max_length
        )));
    }
    if call_sid.len() != 34 || !call_sid.starts_with("CA") {
        return Err(ApiError::unprocessable("call_sid must be a CallSid (CA…)"));
    }
    let id: i64 = db.run(|pool| sqlx::query(
        "INSERT INTO notes (business_id, author_id, call_sid, body, created_at) VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(who.business_id)
    .bind(who.user_id)
    .bind(&call_sid)
    .bind(body.trim())
    .bind(callplane_plugin_api::timestamps::now())
    .fetch_one(pool))
    .await
    .map_err(|e| database(&e))?
    .get(0);
    Ok(HttpResponse::Created().json(json!({ "id": id, "call_sid": call_sid, "body": body.trim() })))
}

/// `callplane notes …`.
#[derive(Debug, Parser)]
#[command(name = "notes", about = "Call notes")]
struct NotesCli {
    #[command(subcommand)]
    command: NotesCommand,
}

#[derive(Debug, Subcommand)]
enum NotesCommand {
    /// How many notes a business has.
    Count {
        /// The business id.
        #[arg(long)]
        business: i64,
    },
}

/// `callplane notes count --business ID`.
pub const COMMAND: PluginCommand = PluginCommand {
    name: "notes",
    summary: "Call notes: count",
    definition: NotesCli::command,
    database: true,
    run: |ctx| Box::pin(run(ctx)),
};

async fn run(ctx: CommandContext) -> Result<(), String> {
    let cli = NotesCli::from_arg_matches(&ctx.matches).map_err(|e| e.to_string())?;
    match cli.command {
        NotesCommand::Count { business } => {
            let count: i64 = ctx
                .db
                .run(|pool| {
                    sqlx::query("SELECT COUNT(*) FROM notes WHERE business_id = $1")
                        .bind(business)
                        .fetch_one(pool)
                })
                .await
                .map_err(|e| e.to_string())?
                .get(0);
            println!("business={business} notes={count}");
        }
    }
    Ok(())
}
