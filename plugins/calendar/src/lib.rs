//! `callplane-plugin-calendar`: appointments, every route behind `PageAccess("calendar")`.
//!
//! * Times are RFC 3339 with an offset on the way in, stored as UTC Unix seconds, returned as
//!   RFC 3339 UTC.
//! * Scheduled appointments of one business never overlap (touching is fine: one may end when the
//!   next starts). The check and the write happen under a per-database write lock (`BEGIN
//!   IMMEDIATE` on SQLite, a per-business advisory lock on PostgreSQL), so two concurrent creates
//!   for one slot cannot both succeed.
//! * Each appointment has a `version`; `PATCH`/`DELETE` with `If-Match` answer 412 when it is
//!   stale. Responses carry it as the `ETag`.
//! * Another business's ids answer 404, exactly like missing ones.
//!
//! The plugin requires `permissions`: without it the host refuses to start (CP004) instead of
//! serving the calendar unguarded — the failure that took the old service down.

mod handlers;
mod store;

use callplane_plugin_api::openapi::RouteDoc;
use callplane_plugin_api::{Access, ConfigKey, Migration, RegisterError, Registrar, RoutePlugin, ValueKind};

/// The plugin, as the host links it (and as tests mount it with `testing::TestHost`).
pub const PLUGIN: RoutePlugin = RoutePlugin {
    name: "calendar",
    version: env!("CARGO_PKG_VERSION"),
    summary: "appointments",
    requires: &["permissions"],
    critical: true,
    register,
    commands: &[],
    config: CONFIG,
    deploy_checks: &[],
};

inventory::submit! { PLUGIN }

/// The plugin's configuration (`[calendar]` in `callplane.toml`).
pub const CONFIG: &[ConfigKey] = &[ConfigKey::new(
    "max_minutes",
    ValueKind::Integer { min: 1, max: 10_080 },
    "480",
    "the longest appointment the calendar accepts, in minutes",
)];

/// Appointment statuses.
pub const STATUSES: [&str; 3] = ["scheduled", "cancelled", "completed"];

const MIGRATIONS: &[Migration] = &[Migration::portable(
    1,
    "appointments",
    "
        CREATE TABLE appointments (
            id {id},
            business_id BIGINT NOT NULL,
            title TEXT NOT NULL,
            starts_at BIGINT NOT NULL,
            ends_at BIGINT NOT NULL,
            lead_id TEXT,
            call_sid TEXT,
            notes TEXT,
            status TEXT NOT NULL CHECK (status IN ('scheduled', 'cancelled', 'completed')),
            created_by BIGINT NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            version BIGINT NOT NULL
        );
        CREATE INDEX appointments_business_start ON appointments (business_id, starts_at);
    ",
)];

/// One appointment.
const APPOINTMENT: &str = "/api/calendar/appointments/{id}";

/// Declares the appointment routes and the migration.
///
/// # Errors
/// Never.
pub fn register(reg: &mut Registrar<'_>) -> Result<(), RegisterError> {
    let max_secs = i64::try_from(reg.config().integer("max_minutes")).unwrap_or(i64::MAX / 60) * 60;
    reg.migrations(MIGRATIONS);
    reg.state(handlers::CalendarState {
        store: store::Store::new(reg.db().clone()),
        max_secs,
    });
    let page = Access::PageAccess("calendar");
    reg.get("/api/calendar/appointments", page, handlers::list)
        .doc(
            RouteDoc::new("The business's appointments, by start time")
                .query::<handlers::ListQuery>()
                .object(200, "{\"appointments\": […], \"total\": n}"),
        )
        .post("/api/calendar/appointments", page, handlers::create)
        .doc(
            RouteDoc::new("Create an appointment")
                .json_body::<handlers::NewAppointment>()
                .object(201, "the appointment (its version in ETag)")
                .link(201, ("GET", APPOINTMENT), "id", "$response.body#/id")
                .link(201, ("PATCH", APPOINTMENT), "id", "$response.body#/id")
                .link(201, ("DELETE", APPOINTMENT), "id", "$response.body#/id")
                .error(409, "it overlaps a scheduled appointment"),
        )
        .get(APPOINTMENT, page, handlers::get)
        .doc(RouteDoc::new("One appointment (its version in ETag)").object(200, "the appointment"))
        .patch(APPOINTMENT, page, handlers::update)
        .doc(
            RouteDoc::new("Change an appointment (If-Match: its version)")
                .json_body::<handlers::Change>()
                .object(200, "the appointment")
                .error(409, "it would overlap a scheduled appointment")
                .error(412, "the appointment changed since that version")
                .error(428, "If-Match is required"),
        )
        .delete(APPOINTMENT, page, handlers::delete)
        .doc(RouteDoc::new("Delete an appointment").empty(204, "deleted"));
    Ok(())
}
