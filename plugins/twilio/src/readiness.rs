//! The plugin's readiness check and spool gauges: whether calls can still be kept while the
//! database is away (the spool's directory is writable and the spool below its bound), and how
//! much waits in it.

use std::path::Path;

use callplane_plugin_api::ReadinessReport;
use callplane_plugin_api::storage::Spool;
use callplane_plugin_api::telemetry::logging::check_dir_writable;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::event::{CallEvent, now};

/// `callplane_twilio_spool_backlog` and `callplane_twilio_spool_oldest_seconds`.
#[derive(Debug, Clone, Default)]
pub struct SpoolGauges {
    backlog: Gauge,
    oldest_seconds: Gauge,
}

impl SpoolGauges {
    /// Registers the gauges in the plugin's registry.
    pub fn register(metrics: &mut Registry) -> Self {
        let gauges = Self::default();
        metrics.register(
            "spool_backlog",
            "Call events waiting in the spool for the database",
            gauges.backlog.clone(),
        );
        metrics.register(
            "spool_oldest_seconds",
            "How long the oldest call event in the spool has waited (0 when none waits)",
            gauges.oldest_seconds.clone(),
        );
        gauges
    }

    /// Reads the spool's backlog and oldest record into the gauges; returns them.
    ///
    /// # Errors
    /// When the spool cannot be read.
    pub fn update(&self, spool: &Spool) -> std::io::Result<(usize, i64)> {
        let backlog = spool.backlog();
        let oldest = spool
            .oldest()?
            .and_then(|line| serde_json::from_str::<CallEvent>(&line).ok())
            .map_or(0, |event| (now() - event.received_at).max(0));
        self.backlog.set(i64::try_from(backlog).unwrap_or(i64::MAX));
        self.oldest_seconds.set(oldest);
        Ok((backlog, oldest))
    }
}

/// The spool check: always ready (a backlog is reported, not a reason to leave rotation: the
/// instance still answers every webhook and keeps every record), and able to do without the
/// database while the spool is open, its directory can be written and it is below `max_bytes`.
pub fn spool_readiness(spool: &Spool, gauges: &SpoolGauges, max_bytes: u64) -> ReadinessReport {
    let dir = spool
        .path()
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let writable = spool.is_open() && check_dir_writable(dir).is_ok();
    let (size, counted) = (spool.size(), gauges.update(spool));
    match (size, counted) {
        (Ok(bytes), Ok((backlog, oldest_seconds))) => ReadinessReport {
            ready: true,
            without_database: writable && bytes < max_bytes,
            detail: json!({
                "backlog": backlog,
                "bytes": bytes,
                "max_bytes": max_bytes,
                "oldest_seconds": oldest_seconds,
                "writable": writable,
            }),
        },
        _ => ReadinessReport {
            ready: false,
            without_database: false,
            detail: json!({ "error": "spool unreadable" }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_can_be_kept_without_the_database_until_the_spool_is_full_or_unwritable() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path().join("spool/calls.jsonl")).unwrap();
        let gauges = SpoolGauges::default();
        let empty = spool_readiness(&spool, &gauges, 100);
        assert!(empty.ready && empty.without_database, "{:?}", empty.detail);
        assert_eq!(empty.detail["backlog"], 0);
        spool.append(&"x".repeat(120)).await.unwrap();
        let full = spool_readiness(&spool, &gauges, 100);
        assert!(full.ready, "a backlog alone is not a reason to leave");
        assert!(!full.without_database, "past its bound the spool keeps no more calls");
        assert_eq!(gauges.backlog.get(), 1);

        let file = dir.path().join("a-file");
        std::fs::write(&file, "").unwrap();
        let nowhere = Spool::at(file.join("spool.jsonl"));
        let unwritable = spool_readiness(&nowhere, &gauges, 100);
        assert!(!unwritable.without_database, "{:?}", unwritable.detail);

        let closed = Spool::at(dir.path().join("spool/other.jsonl"));
        let not_open = spool_readiness(&closed, &gauges, 100);
        assert!(!not_open.without_database, "a spool without its writer keeps nothing");
    }
}
