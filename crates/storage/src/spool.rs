//! The durable local spool: what could not reach the database waits here, one JSON line per
//! record, each `fsync`ed before the caller answers, until [`Spool::replay`] moves it in.
//!
//! The spool is per instance (a file on local disk). Appends only add lines at the end and a replay
//! only removes the lines it applied from the front, each under one short lock, so no line is lost
//! between reading the file and rewriting it, and appends never wait for the database.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use tokio::sync::Mutex;

/// A spool file.
#[derive(Debug)]
pub struct Spool {
    path: PathBuf,
    /// The most bytes the file may hold; an append past it fails (the record is not kept).
    max_bytes: u64,
    /// Held while the file is read, appended to or rewritten.
    lock: Mutex<()>,
    /// Held for a whole replay: one replay at a time.
    replaying: Mutex<()>,
}

impl Spool {
    /// The spool at `path`, touching nothing on disk (a plugin declares it while registering;
    /// [`Spool::prepare`] creates it when the server starts).
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            max_bytes: u64::MAX,
            lock: Mutex::new(()),
            replaying: Mutex::new(()),
        }
    }

    /// The same spool, bounded: an append that would take the file past `max_bytes` fails.
    #[must_use]
    pub fn with_max_bytes(self, max_bytes: u64) -> Self {
        Self { max_bytes, ..self }
    }

    /// Creates the spool's directory and file if they do not exist.
    ///
    /// # Errors
    /// When the directory or file cannot be created (the directory is not writable, say).
    pub fn prepare(&self) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        OpenOptions::new().create(true).append(true).open(&self.path)?;
        Ok(())
    }

    /// [`Spool::at`] and [`Spool::prepare`] at once.
    ///
    /// # Errors
    /// When the directory or file cannot be created.
    pub fn open(path: impl Into<PathBuf>) -> std::io::Result<Self> {
        let spool = Self::at(path);
        spool.prepare()?;
        Ok(spool)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record (a single line of JSON) and `fsync`s it.
    ///
    /// # Errors
    /// An I/O error (disk full, …): the record is not durable and the caller must say so.
    /// A record that would take the file past its bound is refused (`StorageFull`). A write that
    /// fails halfway (disk full) is cut back to the last whole line, so the next record does not
    /// glue onto a partial one.
    pub async fn append(&self, line: &str) -> std::io::Result<()> {
        debug_assert!(!line.contains('\n'), "one record per line");
        let _guard = self.lock.lock().await;
        let mut file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        let whole = file.metadata()?.len();
        let record = format!("{line}\n");
        if whole.saturating_add(record.len() as u64) > self.max_bytes {
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!("the spool is full ({whole} of {} bytes)", self.max_bytes),
            ));
        }
        let written = file.write_all(record.as_bytes()).and_then(|()| file.sync_data());
        if written.is_err() {
            let _ = file.set_len(whole);
        }
        written
    }

    /// How many bytes wait (0 when the file does not exist yet).
    ///
    /// # Errors
    /// When the file's size cannot be read.
    pub fn size(&self) -> std::io::Result<u64> {
        match std::fs::metadata(&self.path) {
            Ok(meta) => Ok(meta.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// The oldest record waiting, if any (the first line; the rest of the file is not read).
    ///
    /// # Errors
    /// When the file cannot be read.
    pub async fn oldest(&self) -> std::io::Result<Option<String>> {
        let _guard = self.lock.lock().await;
        let file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut first = String::new();
        BufReader::new(file).read_line(&mut first)?;
        let first = first.trim_end();
        Ok((!first.is_empty()).then(|| first.to_owned()))
    }

    /// How many records wait.
    ///
    /// # Errors
    /// When the file cannot be read.
    pub async fn backlog(&self) -> std::io::Result<usize> {
        let _guard = self.lock.lock().await;
        Ok(read_lines(&self.path)?.len())
    }

    /// Offers each waiting record, oldest first, to `apply`; stops at the first failure. The
    /// records applied are removed (the file is rewritten atomically with the rest). Returns how
    /// many were applied.
    ///
    /// The lock is not held while `apply` runs (it may wait seconds for a slow database), so
    /// appends go on meanwhile; they only ever add lines after the ones being replayed, and the
    /// rewrite keeps them.
    ///
    /// # Errors
    /// An I/O error reading or rewriting the spool (nothing is lost: the old file stays).
    pub async fn replay<F, Fut, E>(&self, mut apply: F) -> std::io::Result<usize>
    where
        F: FnMut(String) -> Fut,
        Fut: std::future::Future<Output = Result<(), E>>,
    {
        let _replaying = self.replaying.lock().await;
        let snapshot = {
            let _guard = self.lock.lock().await;
            read_lines(&self.path)?
        };
        let mut applied = 0;
        for line in &snapshot {
            if apply(line.clone()).await.is_err() {
                break;
            }
            applied += 1;
        }
        if applied > 0 {
            let _guard = self.lock.lock().await;
            let now = read_lines(&self.path)?;
            let tmp = self.path.with_extension("replaying");
            let mut file = File::create(&tmp)?;
            for line in &now[applied.min(now.len())..] {
                writeln!(file, "{line}")?;
            }
            file.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)?.sync_all()?;
            }
        }
        Ok(applied)
    }
}

/// The spool's records; none when the file does not exist yet.
fn read_lines(path: &Path) -> std::io::Result<Vec<String>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    BufReader::new(file)
        .lines()
        .filter(|l| l.as_ref().map_or(true, |l| !l.trim().is_empty()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_declared_spool_touches_the_disk_only_when_prepared() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::at(dir.path().join("spool/calls.jsonl"));
        assert_eq!(spool.backlog().await.unwrap(), 0);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing created");
        spool.prepare().unwrap();
        assert!(spool.path().is_file());
        assert_eq!((spool.size().unwrap(), spool.oldest().await.unwrap()), (0, None));
        spool.append("{\"n\":1}").await.unwrap();
        spool.append("{\"n\":2}").await.unwrap();
        assert_eq!(spool.oldest().await.unwrap().as_deref(), Some("{\"n\":1}"));
        assert_eq!(spool.size().unwrap(), 16);
    }

    #[tokio::test]
    async fn a_full_spool_refuses_a_record_and_keeps_the_ones_it_has() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path().join("s.jsonl")).unwrap().with_max_bytes(20);
        spool.append("{\"n\":1}").await.unwrap();
        spool.append("{\"n\":2}").await.unwrap();
        let full = spool.append("{\"n\":3}").await.unwrap_err();
        assert_eq!(full.kind(), std::io::ErrorKind::StorageFull);
        assert_eq!(std::fs::read_to_string(spool.path()).unwrap(), "{\"n\":1}\n{\"n\":2}\n");
        let applied = spool.replay(|_| async { Ok::<(), ()>(()) }).await.unwrap();
        assert_eq!(applied, 2);
        spool.append("{\"n\":3}").await.unwrap();
    }

    #[tokio::test]
    async fn appends_during_a_replay_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let spool = std::sync::Arc::new(Spool::open(dir.path().join("s.jsonl")).unwrap());
        spool.append("{\"n\":0}").await.unwrap();
        let writer = spool.clone();
        let applied = spool
            .replay(|_| {
                let writer = writer.clone();
                async move {
                    // A webhook spools while the replay waits on the database.
                    writer.append("{\"n\":1}").await.map_err(|_| ())
                }
            })
            .await
            .unwrap();
        assert_eq!(applied, 1);
        assert_eq!(std::fs::read_to_string(spool.path()).unwrap(), "{\"n\":1}\n");
    }

    #[tokio::test]
    async fn appended_records_survive_until_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool/calls.jsonl");
        let spool = Spool::open(&path).unwrap();
        for i in 0..5 {
            spool.append(&format!("{{\"n\":{i}}}")).await.unwrap();
        }
        assert_eq!(spool.backlog().await.unwrap(), 5);
        // A reopened spool (a restarted process) sees the same records.
        let reopened = Spool::open(&path).unwrap();
        assert_eq!(reopened.backlog().await.unwrap(), 5);

        // The database comes back for three records, then fails again.
        let mut seen = Vec::new();
        let applied = reopened
            .replay(|line| {
                seen.push(line);
                let ok = seen.len() <= 3;
                async move { if ok { Ok(()) } else { Err(()) } }
            })
            .await
            .unwrap();
        assert_eq!(applied, 3);
        assert_eq!(seen.len(), 4, "stops at the first failure");
        assert_eq!(reopened.backlog().await.unwrap(), 2);
        let rest = std::fs::read_to_string(&path).unwrap();
        assert_eq!(rest, "{\"n\":3}\n{\"n\":4}\n");
        let applied = reopened.replay(|_| async { Ok::<(), ()>(()) }).await.unwrap();
        assert_eq!(applied, 2);
        assert_eq!(reopened.backlog().await.unwrap(), 0);
    }
}
