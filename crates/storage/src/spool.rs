//! The durable local spool: what could not reach the database waits here, one JSON line per
//! record, until [`Spool::replay`] moves it in.
//!
//! The spool is per instance (a file on local disk), and one process at a time: [`Spool::prepare`]
//! takes an exclusive lock beside the file and refuses, naming the holder, when another process has
//! it. Every change to the file goes through one writer thread:
//!
//! * **Appends leave the caller's thread.** [`Spool::append`] hands its line to the writer and waits
//!   for the answer; the writer takes every line queued meanwhile, writes them with one `write` and
//!   makes them durable with one `fsync` (group commit: during an outage many webhooks share one
//!   `fsync`), then answers each. No caller answers before its line is durable.
//! * **A failed write leaves no partial line.** The file is cut back to its last whole line, and
//!   every line of that write is refused; the next write starts clean. A torn last line left by a
//!   crash is ended with a newline when the spool is opened, so it stands alone (and is
//!   dead-lettered, below) instead of gluing onto the next record.
//! * **Replay removes from the front.** [`Spool::replay`] reads whole lines one by one (lossily:
//!   one invalid UTF-8 byte spoils one character, not the file), offers them in order, and asks the
//!   writer to drop the ones it dealt with; appends only ever add lines after them. A line the
//!   caller says can never be written ([`Replayed::Poison`]) is moved to the dead-letter file beside
//!   the spool and replay goes on behind it; a line that waits for the database
//!   ([`Replayed::Unavailable`]) stops the replay, and it and everything after it wait for the next.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::{mpsc, oneshot};

/// The file operations of the spool's writer: the seam where a test injects a full disk
/// ([`Spool::with_file`]). [`File`] is the real one.
pub trait SpoolFile: Send {
    /// Writes all of `bytes` at the end of the file (it is opened for appending).
    ///
    /// # Errors
    /// The write failed, possibly after writing part of `bytes`.
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()>;

    /// Makes what was written durable (`fdatasync`).
    ///
    /// # Errors
    /// The data may not be on disk.
    fn sync(&mut self) -> std::io::Result<()>;

    /// Cuts the file back to `len` bytes.
    ///
    /// # Errors
    /// The file keeps its length.
    fn truncate(&mut self, len: u64) -> std::io::Result<()>;
}

impl SpoolFile for File {
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write_all(bytes)
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.sync_data()
    }

    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        self.set_len(len)
    }
}

/// Wraps the spool file the writer opens ([`Spool::with_file`]).
type FileSeam = Arc<dyn Fn(File) -> Box<dyn SpoolFile> + Send + Sync>;

/// What became of one line offered by [`Spool::replay`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replayed {
    /// Written to the database: the line leaves the spool.
    Applied,
    /// This line can never be written (it cannot be decoded, or the database refuses its data):
    /// it moves to the dead-letter file, with the reason, and replay goes on.
    Poison(String),
    /// The database cannot take it now: replay stops here and tries again later.
    Unavailable,
}

/// A line moved to the dead-letter file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Why it can never be written.
    pub reason: String,
    /// The line (decoded lossily).
    pub line: String,
}

/// What one [`Spool::replay`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Lines written to the database.
    pub applied: usize,
    /// Lines moved to the dead-letter file.
    pub dead_letters: Vec<DeadLetter>,
}

/// A spool file.
pub struct Spool {
    path: PathBuf,
    /// The most bytes the file may hold; an append past it fails (the record is not kept).
    max_bytes: u64,
    file_seam: FileSeam,
    /// Records waiting (whole lines), kept by the writer.
    lines: Arc<AtomicUsize>,
    /// The lock file, held while the spool is open.
    lock: OnceLock<File>,
    /// The writer's queue, once [`Spool::prepare`] started it.
    writer: Mutex<Option<mpsc::UnboundedSender<Command>>>,
    /// Held for a whole replay: one replay at a time.
    replaying: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("path", &self.path)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

/// Work for the writer thread.
enum Command {
    /// Append one line (without its newline) and answer once it is durable.
    Append {
        line: String,
        done: oneshot::Sender<std::io::Result<()>>,
    },
    /// Drop the first `lines` whole lines (a replay dealt with them).
    Remove {
        lines: usize,
        done: oneshot::Sender<std::io::Result<()>>,
    },
}

/// The most lines one write of the writer takes.
const GROUP: usize = 1024;

impl Spool {
    /// The spool at `path`, touching nothing on disk (a plugin declares it while registering;
    /// [`Spool::prepare`] opens it when the server starts).
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            max_bytes: u64::MAX,
            file_seam: Arc::new(|file| Box::new(file)),
            lines: Arc::default(),
            lock: OnceLock::new(),
            writer: Mutex::new(None),
            replaying: tokio::sync::Mutex::new(()),
        }
    }

    /// The same spool, bounded: an append that would take the file past `max_bytes` fails.
    #[must_use]
    pub fn with_max_bytes(self, max_bytes: u64) -> Self {
        Self { max_bytes, ..self }
    }

    /// The same spool, its writer's file wrapped by `seam` (a test's full disk).
    #[must_use]
    pub fn with_file(self, seam: impl Fn(File) -> Box<dyn SpoolFile> + Send + Sync + 'static) -> Self {
        Self {
            file_seam: Arc::new(seam),
            ..self
        }
    }

    /// Opens the spool: creates its directory and file, takes the lock beside it, ends a torn last
    /// line, and starts the writer. Calling it again changes nothing.
    ///
    /// # Errors
    /// The directory or file cannot be created, or another process holds the lock
    /// (`ErrorKind::ResourceBusy`, naming it).
    pub fn prepare(&self) -> std::io::Result<()> {
        let mut writer = self
            .writer
            .lock()
            .map_err(|_| std::io::Error::other("spool writer lock poisoned"))?;
        if writer.as_ref().is_some_and(|w| !w.is_closed()) {
            return Ok(());
        }
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        if self.lock.get().is_none() {
            // Set once; a second caller would be in this critical section anyway.
            let _ = self.lock.set(self.take_lock()?);
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&self.path)?;
        let mut len = file.metadata()?.len();
        if len > 0 {
            let mut last = [0];
            file.seek(SeekFrom::Start(len - 1))?;
            file.read_exact(&mut last)?;
            if last != *b"\n" {
                // A crash tore the last line: end it, so it stands alone.
                file.write_all(b"\n")?;
                file.sync_data()?;
                len += 1;
            }
        }
        self.lines.store(count_lines(&self.path)?, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Writer {
            path: self.path.clone(),
            file: Some((self.file_seam)(file)),
            seam: self.file_seam.clone(),
            len,
            partial: false,
            max_bytes: self.max_bytes,
            lines: self.lines.clone(),
        };
        std::thread::Builder::new()
            .name("callplane-spool".to_owned())
            .spawn(move || state.run(rx))?;
        *writer = Some(tx);
        Ok(())
    }

    /// The lock beside the spool, with who holds it written inside.
    fn take_lock(&self) -> std::io::Result<File> {
        let path = self.lock_path();
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&path)?;
        match file.try_lock() {
            Ok(()) => {
                let holder = format!(
                    "pid {} on {} since {}\n",
                    std::process::id(),
                    callplane_telemetry::hostname(),
                    unix_now()
                );
                file.set_len(0)?;
                file.write_all(holder.as_bytes())?;
                Ok(file)
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() { "another process" } else { holder };
                Err(std::io::Error::new(
                    ErrorKind::ResourceBusy,
                    format!(
                        "the spool {} is in use by {holder} (lock {})",
                        self.path.display(),
                        path.display()
                    ),
                ))
            }
            Err(std::fs::TryLockError::Error(error)) => Err(error),
        }
    }

    /// [`Spool::at`] and [`Spool::prepare`] at once.
    ///
    /// # Errors
    /// As [`Spool::prepare`].
    pub fn open(path: impl Into<PathBuf>) -> std::io::Result<Self> {
        let spool = Self::at(path);
        spool.prepare()?;
        Ok(spool)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The lock file beside the spool.
    pub fn lock_path(&self) -> PathBuf {
        let mut name = self.path.file_name().unwrap_or_default().to_owned();
        name.push(".lock");
        self.path.with_file_name(name)
    }

    /// The dead-letter file beside the spool: lines that can never be written, each a JSON object
    /// with `at` (Unix seconds), `reason` and `line`.
    pub fn dead_letter_path(&self) -> PathBuf {
        self.path.with_extension("dead-letter.jsonl")
    }

    /// Whether the writer is running (opened and not stopped).
    pub fn is_open(&self) -> bool {
        self.writer
            .lock()
            .is_ok_and(|w| w.as_ref().is_some_and(|w| !w.is_closed()))
    }

    fn send(&self, command: Command) -> std::io::Result<()> {
        let writer = self
            .writer
            .lock()
            .map_err(|_| std::io::Error::other("spool writer lock poisoned"))?;
        let Some(writer) = writer.as_ref() else {
            return Err(std::io::Error::other("the spool is not open"));
        };
        writer
            .send(command)
            .map_err(|_| std::io::Error::other("the spool writer stopped"))
    }

    /// Appends one record (a single line of JSON) and returns once it is durable.
    ///
    /// # Errors
    /// An I/O error (disk full, …): the record is not kept and the caller must say so. A record
    /// that would take the file past its bound is refused (`StorageFull`).
    pub async fn append(&self, line: &str) -> std::io::Result<()> {
        debug_assert!(!line.contains('\n'), "one record per line");
        let (done, answer) = oneshot::channel();
        self.send(Command::Append {
            line: line.to_owned(),
            done,
        })?;
        answer
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("the spool writer stopped")))
    }

    /// How many bytes wait (0 when the file does not exist yet).
    ///
    /// # Errors
    /// When the file's size cannot be read.
    pub fn size(&self) -> std::io::Result<u64> {
        match std::fs::metadata(&self.path) {
            Ok(meta) => Ok(meta.len()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// The oldest record waiting, if any (the first line; the rest of the file is not read).
    ///
    /// # Errors
    /// When the file cannot be read.
    pub fn oldest(&self) -> std::io::Result<Option<String>> {
        let mut reader = match File::open(&self.path) {
            Ok(file) => BufReader::new(file),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(next_line(&mut reader)?.map(|line| String::from_utf8_lossy(&line).into_owned()))
    }

    /// How many records wait (counted when the spool was opened and kept since; 0 before).
    pub fn backlog(&self) -> usize {
        self.lines.load(Ordering::Relaxed)
    }

    /// Offers each waiting record, oldest first, to `apply` (up to `chunk` at once, which it may
    /// write concurrently), until one is [`Replayed::Unavailable`]. Applied lines leave the spool;
    /// poison lines go to the dead-letter file first.
    ///
    /// Appends go on meanwhile: they only ever add lines after the ones being replayed.
    ///
    /// # Errors
    /// An I/O error reading the spool or writing the dead-letter file (nothing is lost: the lines
    /// stay in the spool).
    pub async fn replay<F, Fut>(&self, chunk: usize, apply: F) -> std::io::Result<ReplayReport>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Replayed>,
    {
        let _replaying = self.replaying.lock().await;
        let mut report = ReplayReport::default();
        if self.backlog() == 0 {
            return Ok(report);
        }
        // What is there now: lines appended during the replay wait for the next one.
        let mut reader = match File::open(&self.path) {
            Ok(file) => {
                let len = file.metadata()?.len();
                BufReader::new(file.take(len))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(report),
            Err(e) => return Err(e),
        };
        let mut done = 0;
        'replay: loop {
            let mut lines = Vec::with_capacity(chunk);
            while lines.len() < chunk.max(1) {
                match next_line(&mut reader)? {
                    Some(line) => lines.push(String::from_utf8_lossy(&line).into_owned()),
                    None => break,
                }
            }
            if lines.is_empty() {
                break;
            }
            let outcomes = futures_util::future::join_all(lines.iter().map(|line| apply(line.clone()))).await;
            let mut dead = Vec::new();
            let mut stopped = false;
            for (line, outcome) in lines.into_iter().zip(outcomes) {
                match outcome {
                    Replayed::Applied => report.applied += 1,
                    Replayed::Poison(reason) => dead.push(DeadLetter { reason, line }),
                    Replayed::Unavailable => {
                        stopped = true;
                        break;
                    }
                }
                done += 1;
            }
            self.bury(&dead)?;
            report.dead_letters.extend(dead);
            if stopped {
                break 'replay;
            }
        }
        if done > 0 {
            let (tx, answer) = oneshot::channel();
            self.send(Command::Remove { lines: done, done: tx })?;
            answer
                .await
                .unwrap_or_else(|_| Err(std::io::Error::other("the spool writer stopped")))?;
        }
        Ok(report)
    }

    /// Appends `dead` to the dead-letter file, durably.
    fn bury(&self, dead: &[DeadLetter]) -> std::io::Result<()> {
        if dead.is_empty() {
            return Ok(());
        }
        let mut text = String::new();
        for letter in dead {
            let record = serde_json::json!({ "at": unix_now(), "reason": letter.reason, "line": letter.line });
            text.push_str(&record.to_string());
            text.push('\n');
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dead_letter_path())?;
        file.write_all(text.as_bytes())?;
        file.sync_data()
    }
}

/// The next whole line (without its newline, never empty), skipping blank ones; `None` at the end.
/// A last line without its newline is being written (or was torn and is ended when the spool
/// opens): it is not a record yet.
fn next_line(reader: &mut impl BufRead) -> std::io::Result<Option<Vec<u8>>> {
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line)? == 0 || line.last() != Some(&b'\n') {
            return Ok(None);
        }
        line.pop();
        if !line.iter().all(u8::is_ascii_whitespace) {
            return Ok(Some(line));
        }
    }
}

/// How many records the spool file holds.
fn count_lines(path: &Path) -> std::io::Result<usize> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut n = 0;
    while next_line(&mut reader)?.is_some() {
        n += 1;
    }
    Ok(n)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Answers every owner of a write that did not happen with `error`.
fn refuse(owners: Vec<oneshot::Sender<std::io::Result<()>>>, error: &std::io::Error) {
    for done in owners {
        let _ = done.send(Err(std::io::Error::new(error.kind(), error.to_string())));
    }
}

/// The writer thread's side.
struct Writer {
    path: PathBuf,
    /// `None` after a rewrite whose file could not be reopened: opened again by the next write
    /// (never the old, unlinked file).
    file: Option<Box<dyn SpoolFile>>,
    seam: FileSeam,
    /// Bytes of whole lines: where the file is cut back to after a failed write.
    len: u64,
    /// A failed write could not be cut back: the file ends in part of a line.
    partial: bool,
    max_bytes: u64,
    lines: Arc<AtomicUsize>,
}

impl Writer {
    fn run(mut self, mut queue: mpsc::UnboundedReceiver<Command>) {
        let mut next = queue.blocking_recv();
        while let Some(command) = next.take() {
            match command {
                Command::Remove { lines, done } => {
                    let _ = done.send(self.remove(lines));
                }
                Command::Append { line, done } => {
                    let mut group = vec![(line, done)];
                    while group.len() < GROUP {
                        match queue.try_recv() {
                            Ok(Command::Append { line, done }) => group.push((line, done)),
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.append(group);
                }
            }
            if next.is_none() {
                next = queue.blocking_recv();
            }
        }
    }

    /// Writes the lines that fit under the bound with one write and one `fsync`, then answers each.
    fn append(&mut self, group: Vec<(String, oneshot::Sender<std::io::Result<()>>)>) {
        let mut bytes = Vec::new();
        let mut accepted = Vec::with_capacity(group.len());
        for (line, done) in group {
            let size = self.len + bytes.len() as u64 + line.len() as u64 + 1;
            if size > self.max_bytes {
                let _ = done.send(Err(std::io::Error::new(
                    ErrorKind::StorageFull,
                    format!("the spool is full ({} of {} bytes)", self.len, self.max_bytes),
                )));
                continue;
            }
            bytes.extend_from_slice(line.as_bytes());
            bytes.push(b'\n');
            accepted.push(done);
        }
        if accepted.is_empty() {
            return;
        }
        let file = match self.file.take() {
            Some(file) => Ok(file),
            None => OpenOptions::new()
                .append(true)
                .open(&self.path)
                .map(|file| (self.seam)(file)),
        };
        let file = match file {
            Ok(file) => self.file.insert(file),
            Err(error) => return refuse(accepted, &error),
        };
        if self.partial {
            if let Err(error) = file.truncate(self.len) {
                return refuse(accepted, &error);
            }
            self.partial = false;
        }
        let written = file.append(&bytes).and_then(|()| file.sync());
        match written {
            Ok(()) => {
                self.len += bytes.len() as u64;
                self.lines.fetch_add(accepted.len(), Ordering::Relaxed);
                for done in accepted {
                    let _ = done.send(Ok(()));
                }
            }
            Err(error) => {
                // Cut back to the last whole line. Should that fail too, the next write tries
                // again first, and nothing is written after a partial line.
                self.partial = file.truncate(self.len).is_err();
                tracing::error!(spool = %self.path.display(), error = %error, lines = accepted.len(), "[STORAGE] spool write failed; cut back to the last whole line");
                refuse(accepted, &error);
            }
        }
    }

    /// Rewrites the spool without its first `lines` lines (atomically: a new file renamed over the
    /// old one), and reopens it for appending.
    fn remove(&mut self, lines: usize) -> std::io::Result<()> {
        let mut reader = BufReader::new(File::open(&self.path)?);
        let mut removed = 0;
        while removed < lines && next_line(&mut reader)?.is_some() {
            removed += 1;
        }
        let tmp = self.path.with_extension("replaying");
        let mut rest = File::create(&tmp)?;
        let kept = std::io::copy(&mut reader, &mut rest)?;
        rest.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        // From here on the old handle writes to an unlinked file: never again.
        self.file = None;
        self.len = kept;
        self.lines.fetch_sub(removed, Ordering::Relaxed);
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        let file = OpenOptions::new().append(true).open(&self.path)?;
        self.file = Some((self.seam)(file));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Offers every line as applied.
    async fn all_applied(_: String) -> Replayed {
        Replayed::Applied
    }

    #[tokio::test]
    async fn a_declared_spool_touches_the_disk_only_when_prepared() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::at(dir.path().join("spool/calls.jsonl"));
        assert_eq!(spool.backlog(), 0);
        assert!(spool.append("{}").await.is_err(), "not open yet");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing created");
        spool.prepare().unwrap();
        assert!(spool.path().is_file());
        assert_eq!((spool.size().unwrap(), spool.oldest().unwrap()), (0, None));
        spool.append("{\"n\":1}").await.unwrap();
        spool.append("{\"n\":2}").await.unwrap();
        assert_eq!(spool.oldest().unwrap().as_deref(), Some("{\"n\":1}"));
        assert_eq!((spool.size().unwrap(), spool.backlog()), (16, 2));
    }

    #[tokio::test]
    async fn a_full_spool_refuses_a_record_and_keeps_the_ones_it_has() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::at(dir.path().join("s.jsonl")).with_max_bytes(20);
        spool.prepare().unwrap();
        spool.append("{\"n\":1}").await.unwrap();
        spool.append("{\"n\":2}").await.unwrap();
        let full = spool.append("{\"n\":3}").await.unwrap_err();
        assert_eq!(full.kind(), ErrorKind::StorageFull);
        assert_eq!(std::fs::read_to_string(spool.path()).unwrap(), "{\"n\":1}\n{\"n\":2}\n");
        let report = spool.replay(8, all_applied).await.unwrap();
        assert_eq!(report.applied, 2);
        spool.append("{\"n\":3}").await.unwrap();
    }

    #[tokio::test]
    async fn appends_during_a_replay_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(dir.path().join("s.jsonl")).unwrap());
        spool.append("{\"n\":0}").await.unwrap();
        let writer = spool.clone();
        let report = spool
            .replay(8, |_| {
                let writer = writer.clone();
                async move {
                    // A webhook spools while the replay waits on the database.
                    writer.append("{\"n\":1}").await.unwrap();
                    Replayed::Applied
                }
            })
            .await
            .unwrap();
        assert_eq!(report.applied, 1);
        assert_eq!(std::fs::read_to_string(spool.path()).unwrap(), "{\"n\":1}\n");
        assert_eq!(spool.backlog(), 1);
        spool.append("{\"n\":2}").await.unwrap();
        assert_eq!(
            std::fs::read_to_string(spool.path()).unwrap(),
            "{\"n\":1}\n{\"n\":2}\n",
            "appends after a replay go to the rewritten file"
        );
    }

    #[tokio::test]
    async fn appended_records_survive_until_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool/calls.jsonl");
        let spool = Spool::open(&path).unwrap();
        for i in 0..5 {
            spool.append(&format!("{{\"n\":{i}}}")).await.unwrap();
        }
        assert_eq!(spool.backlog(), 5);
        drop(spool);
        // A reopened spool (a restarted process) sees the same records.
        let reopened = Spool::open(&path).unwrap();
        assert_eq!(reopened.backlog(), 5);

        // The database comes back for three records, then fails again.
        let seen = Mutex::new(Vec::new());
        let report = reopened
            .replay(1, |line| {
                let mut seen = seen.lock().unwrap();
                seen.push(line);
                let ok = seen.len() <= 3;
                async move { if ok { Replayed::Applied } else { Replayed::Unavailable } }
            })
            .await
            .unwrap();
        assert_eq!(report.applied, 3);
        assert_eq!(seen.lock().unwrap().len(), 4, "stops at the first unavailable");
        assert_eq!(reopened.backlog(), 2);
        let rest = std::fs::read_to_string(&path).unwrap();
        assert_eq!(rest, "{\"n\":3}\n{\"n\":4}\n");
        let report = reopened.replay(8, all_applied).await.unwrap();
        assert_eq!(report.applied, 2);
        assert_eq!(reopened.backlog(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_share_fsyncs_and_each_line_is_whole() {
        /// Counts `fsync`s.
        struct Counted(File, Arc<AtomicUsize>);
        impl SpoolFile for Counted {
            fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
                self.0.write_all(bytes)
            }
            fn sync(&mut self) -> std::io::Result<()> {
                self.1.fetch_add(1, Ordering::Relaxed);
                // A slow disk: appends queue up behind this one.
                std::thread::sleep(std::time::Duration::from_millis(5));
                self.0.sync_data()
            }
            fn truncate(&mut self, len: u64) -> std::io::Result<()> {
                self.0.set_len(len)
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let syncs = Arc::new(AtomicUsize::new(0));
        let counted = syncs.clone();
        let spool =
            Arc::new(Spool::at(dir.path().join("s.jsonl")).with_file(move |f| Box::new(Counted(f, counted.clone()))));
        spool.prepare().unwrap();
        let appends: Vec<_> = (0..200)
            .map(|i| {
                let spool = spool.clone();
                tokio::spawn(async move { spool.append(&format!("{{\"n\":{i}}}")).await })
            })
            .collect();
        for append in appends {
            append.await.unwrap().unwrap();
        }
        let text = std::fs::read_to_string(spool.path()).unwrap();
        let mut numbers: Vec<u32> = text
            .lines()
            .map(|l| {
                l.strip_prefix("{\"n\":")
                    .unwrap()
                    .strip_suffix('}')
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        numbers.sort_unstable();
        assert_eq!(numbers, (0..200).collect::<Vec<_>>());
        let syncs = syncs.load(Ordering::Relaxed);
        assert!(syncs < 200, "200 appends shared {syncs} fsyncs");
    }

    /// A disk that fills up: the `n`th write (from 0) writes half its bytes, then fails; the
    /// first `refused_truncates` attempts to cut the file back fail too.
    struct FillsUp {
        file: File,
        writes: usize,
        fail_at: usize,
        refused_truncates: usize,
    }

    impl SpoolFile for FillsUp {
        fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
            self.writes += 1;
            if self.writes - 1 == self.fail_at {
                self.file.write_all(&bytes[..bytes.len() / 2])?;
                return Err(std::io::Error::new(ErrorKind::StorageFull, "No space left on device"));
            }
            self.file.write_all(bytes)
        }
        fn sync(&mut self) -> std::io::Result<()> {
            self.file.sync_data()
        }
        fn truncate(&mut self, len: u64) -> std::io::Result<()> {
            if self.refused_truncates > 0 {
                self.refused_truncates -= 1;
                return Err(std::io::Error::other("I/O error"));
            }
            self.file.set_len(len)
        }
    }

    #[tokio::test]
    async fn a_disk_full_mid_write_leaves_no_partial_line_and_later_appends_are_whole() {
        for refused_truncates in [0, 1] {
            let dir = tempfile::tempdir().unwrap();
            let spool = Spool::at(dir.path().join("s.jsonl")).with_file(move |file| {
                Box::new(FillsUp {
                    file,
                    writes: 0,
                    fail_at: 1,
                    refused_truncates,
                })
            });
            spool.prepare().unwrap();
            spool.append("{\"n\":1}").await.unwrap();
            let full = spool
                .append("{\"n\":2,\"long\":\"xxxxxxxxxxxxxxxxxxxx\"}")
                .await
                .unwrap_err();
            assert_eq!(full.kind(), ErrorKind::StorageFull);
            if refused_truncates == 0 {
                assert_eq!(
                    std::fs::read_to_string(spool.path()).unwrap(),
                    "{\"n\":1}\n",
                    "the half-written line is gone"
                );
            }
            // When the cut failed, the next write makes it first.
            spool.append("{\"n\":3}").await.unwrap();
            assert_eq!(
                std::fs::read_to_string(spool.path()).unwrap(),
                "{\"n\":1}\n{\"n\":3}\n",
                "refused truncates: {refused_truncates}"
            );
            assert_eq!(spool.backlog(), 2);
        }
    }

    #[tokio::test]
    async fn torn_undecodable_and_poison_lines_are_dead_lettered_and_replay_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        // Invalid UTF-8 inside a record, a poison record, and a line torn by a crash.
        let mut before = b"{\"n\":1,\"name\":\"caf\xC3\"}\n{\"n\":2,\"poison\":true}\n{\"n\":3}\n".to_vec();
        before.extend_from_slice(b"{\"n\":4,\"to");
        std::fs::write(&path, &before).unwrap();
        let spool = Spool::open(&path).unwrap();
        assert_eq!(spool.backlog(), 4, "the torn line was ended and counted");
        spool.append("{\"n\":5}").await.unwrap();
        let applied = Mutex::new(Vec::new());
        let report = spool
            .replay(2, |line| {
                let outcome = match serde_json::from_str::<serde_json::Value>(&line) {
                    Err(e) => Replayed::Poison(format!("unreadable: {e}")),
                    Ok(v) if v["poison"] == true => Replayed::Poison("refused by the database".to_owned()),
                    Ok(v) => {
                        applied.lock().unwrap().push(v);
                        Replayed::Applied
                    }
                };
                async move { outcome }
            })
            .await
            .unwrap();
        let applied = applied.into_inner().unwrap();
        assert_eq!(report.applied, 3);
        assert_eq!(applied[0]["name"], "caf\u{FFFD}", "decoded lossily");
        assert_eq!(
            applied.iter().map(|v| v["n"].as_i64().unwrap()).collect::<Vec<_>>(),
            [1, 3, 5]
        );
        assert_eq!(report.dead_letters.len(), 2);
        assert_eq!(spool.backlog(), 0);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        let dead: Vec<serde_json::Value> = std::fs::read_to_string(spool.dead_letter_path())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(dead[0]["line"], "{\"n\":2,\"poison\":true}");
        assert_eq!(dead[0]["reason"], "refused by the database");
        assert_eq!(dead[1]["line"], "{\"n\":4,\"to");
    }

    #[test]
    fn a_second_opener_is_refused_and_told_who_holds_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        let first = Spool::open(&path).unwrap();
        let err = Spool::open(&path).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ResourceBusy);
        let message = err.to_string();
        assert!(message.contains(&format!("pid {}", std::process::id())), "{message}");
        drop(first);
        Spool::open(&path).expect("free again once the holder is gone");
    }
}
