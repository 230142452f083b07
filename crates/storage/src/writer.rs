//! A dedicated writer's own SQLite connection, and the thread that checkpoints its log.
//!
//! SQLite in WAL mode appends every commit to the log and copies the log back into the database
//! file at a checkpoint. By default the committing connection runs the checkpoint itself once the
//! log passes 1,000 pages, and every transaction queued behind it waits for the copy and its
//! `fsync` (tens of milliseconds under load). Here a second connection on a thread of its own does
//! that work: a `PASSIVE` checkpoint every [`CHECKPOINT_EVERY`] copies what it can without holding
//! up the writer, and once the log holds [`RESTART_PAGES`] pages a `RESTART` checkpoint copies the
//! few pages written meanwhile and lets the writer start the log over from its beginning (without
//! that the log would grow for as long as writes keep coming). The writer itself only checkpoints
//! when the log passes [`WRITER_CHECKPOINT_PAGES`], should this thread fall behind or fail.

use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::StorageError;

/// How often the checkpoint thread copies the log into the database while it grows.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(10);
/// How often the checkpoint thread looks while the log does not grow.
pub const IDLE_EVERY: Duration = Duration::from_millis(250);
/// Log pages (4 KiB each) after which the checkpoint thread restarts the log.
pub const RESTART_PAGES: i64 = 4_000;
/// How long a `RESTART` checkpoint waits for readers before it tries again later.
pub const RESTART_WAIT: Duration = Duration::from_millis(100);
/// Log pages after which the writer checkpoints by itself (the checkpoint thread fell behind).
pub const WRITER_CHECKPOINT_PAGES: u32 = 50_000;

/// A connection of its own for a dedicated writer thread (see [`crate::Db::open_sqlite_writer`]).
/// Dropping it stops its checkpoint thread.
#[derive(Debug)]
pub struct SqliteWriter {
    conn: rusqlite::Connection,
    stop: Arc<AtomicBool>,
}

impl SqliteWriter {
    /// Opens `path` with `pragmas` for the writer and for its checkpoint thread, and starts that.
    pub(crate) fn open(path: &Path, pragmas: &str) -> Result<Self, StorageError> {
        let open = || -> Result<rusqlite::Connection, rusqlite::Error> {
            let conn = rusqlite::Connection::open(path)?;
            conn.execute_batch(pragmas)?;
            Ok(conn)
        };
        let conn = open()?;
        conn.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)?;
        conn.busy_handler(Some(retry_soon))?;
        let checkpoints = open()?;
        // A `RESTART` holds new writes back while it waits for readers of older snapshots: it
        // gives up soon and tries again at the next round rather than stall the writer.
        checkpoints.busy_timeout(RESTART_WAIT)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("sqlite-checkpoint".to_owned())
            .spawn(move || checkpoint_loop(&checkpoints, &stopped))
            .map_err(|source| StorageError::Thread {
                name: "sqlite-checkpoint",
                source,
            })?;
        Ok(Self { conn, stop })
    }
}

impl Deref for SqliteWriter {
    type Target = rusqlite::Connection;

    fn deref(&self) -> &rusqlite::Connection {
        &self.conn
    }
}

impl DerefMut for SqliteWriter {
    fn deref_mut(&mut self) -> &mut rusqlite::Connection {
        &mut self.conn
    }
}

impl Drop for SqliteWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// How often the writer looks again while another connection holds the write lock.
pub const BUSY_POLL: Duration = Duration::from_micros(100);
/// How long the writer waits for the write lock in all, like the pool's `busy_timeout`.
pub const BUSY_WAIT: Duration = Duration::from_secs(5);

/// The writer's busy handler. SQLite's own sleeps 1, 2, 5, 10, … ms between tries: a writer that
/// meets a `RESTART` checkpoint holding the lock for 3 ms would sleep 8 ms, and every webhook
/// waiting for its batch with it. This one looks again every [`BUSY_POLL`] for up to [`BUSY_WAIT`].
fn retry_soon(tries: i32) -> bool {
    thread_local! {
        /// When the current wait began (SQLite counts the tries, not the time).
        static SINCE: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
    }
    let since = SINCE.with(|since| {
        let start = since.get().filter(|_| tries > 0).unwrap_or_else(Instant::now);
        since.set(Some(start));
        start
    });
    if since.elapsed() >= BUSY_WAIT {
        return false;
    }
    std::thread::sleep(BUSY_POLL);
    true
}

/// `PASSIVE` checkpoints, and a `RESTART` one when the log has grown long (see the module docs).
fn checkpoint_loop(conn: &rusqlite::Connection, stop: &AtomicBool) {
    let checkpoint = |mode: &str| -> Result<i64, rusqlite::Error> {
        // (busy, pages in the log, pages copied)
        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| row.get(1))
    };
    let (mut failing, mut last) = (false, 0);
    let mut every = CHECKPOINT_EVERY;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(every);
        let result = checkpoint("PASSIVE").and_then(|pages| {
            every = if pages == last { IDLE_EVERY } else { CHECKPOINT_EVERY };
            last = pages;
            if pages >= RESTART_PAGES {
                last = checkpoint("RESTART")?;
            }
            Ok(())
        });
        match result {
            Err(error) if !failing => {
                tracing::warn!(error = %error, "[DB] checkpointing the SQLite log failed; the writer checkpoints by itself meanwhile");
                failing = true;
            }
            Err(_) => {}
            Ok(()) => failing = false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(path: &Path) -> u64 {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }

    #[test]
    fn the_writer_waits_for_a_write_lock_held_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let mut writer = SqliteWriter::open(&path, "PRAGMA journal_mode = WAL;").unwrap();
        writer.execute_batch("CREATE TABLE t (v INTEGER)").unwrap();
        let other = rusqlite::Connection::open(&path).unwrap();
        other
            .execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (1);")
            .unwrap();
        let holder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            other.execute_batch("COMMIT").unwrap();
        });
        let tx = writer
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .expect("the writer waits for the lock instead of failing with SQLITE_BUSY");
        tx.execute("INSERT INTO t VALUES (2)", []).unwrap();
        tx.commit().unwrap();
        holder.join().unwrap();
        let rows: i64 = writer.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 2);
    }

    #[test]
    fn the_log_is_checkpointed_and_restarted_while_the_writer_keeps_writing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let mut writer = SqliteWriter::open(&path, "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000;").unwrap();
        writer.execute_batch("CREATE TABLE t (v BLOB)").unwrap();
        let page = 4096_i64;
        // 40 MB in 1 MB transactions: ten times the restart threshold, far below the writer's own.
        for _ in 0..40 {
            let tx = writer.transaction().unwrap();
            for _ in 0..256 {
                tx.execute("INSERT INTO t VALUES (zeroblob(4000))", []).unwrap();
            }
            tx.commit().unwrap();
            // Paced so that the checkpoint thread, possibly asleep for IDLE_EVERY when the writes
            // start, wakes while the log is still far below twice the restart threshold (at 5 ms
            // the 40 transactions could all land within one idle sleep on a busy machine).
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = dir.path().join("w.db-wal");
        assert!(
            (size(&log) as i64) < 2 * RESTART_PAGES * page,
            "the log was restarted, not grown to {} bytes",
            size(&log)
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while size(&path) < 30_000_000 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            size(&path) >= 30_000_000,
            "the rows reached the database file: {}",
            size(&path)
        );
        let rows: i64 = writer.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 40 * 256);
    }
}
