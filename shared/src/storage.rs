//! Opening the sled database a stateful service keeps under its `--data-dir`.
use std::time::{Duration, Instant};

/// How long [`open_sled`] waits for a lock that the same process is letting go of.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Opens the sled database `config` names, retrying for up to [`LOCK_WAIT`] while its lock
/// file is held. sled 0.34 returns from dropping a `Db` before its flusher thread has closed
/// the locked file (spacejam/sled#1234), so a store reopened at once in the same process (a
/// service restarted in place, a test's second open) failed now and then with "could not
/// acquire lock"; the thread lets go within milliseconds. Another process holding the store
/// still gets that error, after the wait.
///
/// # Errors
/// What sled answers: another holder of the lock past the wait, permissions, damage.
pub fn open_sled(config: &sled::Config) -> sled::Result<sled::Db> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            opened => return opened,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Reopened as soon as the last handle is dropped, many times over: never the lock error.
    /// Held by a live handle, the store is refused once the wait is over.
    #[test]
    fn a_dropped_store_reopens_at_once_and_a_held_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = sled::Config::new().path(dir.path());
        for i in 0u32..50 {
            let db = open_sled(&config).unwrap();
            db.insert(b"n", &i.to_be_bytes()).unwrap();
            db.flush().unwrap();
        }
        let held = open_sled(&config).unwrap();
        let started = Instant::now();
        let err = open_sled(&config).unwrap_err().to_string();
        assert!(err.contains("could not acquire lock"), "{err}");
        assert!(started.elapsed() >= LOCK_WAIT);
        drop(held);
    }
}

/// A store's failed write as a person reads it, and whether the disk is full. sled hands an
/// IO error on as one built from the first's `Debug` text (`Os { code: 28, kind:
/// StorageFull, .. }`), so that one is named by its kind ("no storage space").
pub fn io_failure(error: &std::io::Error) -> (String, bool) {
    let full = error.kind() == std::io::ErrorKind::StorageFull;
    let message = match error.raw_os_error() {
        Some(_) => error.to_string(),
        None => error.kind().to_string(),
    };
    (message, full)
}

/// Keeps the first write of a sled store that failed on its disk, and refuses every later
/// write with it without calling sled. After a failed write of its log, sled 0.34 answers
/// later calls with the error again, or waits forever in a flush (seen with a full disk: a
/// load hung, and held SIGTERM off); the store takes writes again only when the service
/// restarts and sled reopens it. Reported as `souk_store_write_failed{reason}` once
/// [`WriteLatch::report_to`] names the gauge ([`write_failed_gauge`]).
///
/// A store whose write failed is never closed: sled's close flushes, and that flush waited
/// forever too (a graph told to stop hung in `Drop for TreeInner`, holding SIGTERM off until
/// killed). The latch keeps a handle to the database past its own end once it trips, so the
/// process exits without it; every write acknowledged before the failure was flushed by
/// then, and none is acknowledged after.
///
/// `E` is the store's error type, which names such a failure (the graph's and the ranker's
/// `StoreFailed { message, full }`): [`DiskFault`] says how.
#[derive(Debug)]
pub struct WriteLatch<E> {
    fault: DiskFault<E>,
    /// Named in the log line: "the graph's store".
    store: &'static str,
    /// What the service goes on doing, for the log line: "reads are answered from memory".
    goes_on: &'static str,
    dir: std::path::PathBuf,
    /// The store's database: leaked when the latch trips, so that it is never closed.
    db: sled::Db,
    /// (the OS error as [`io_failure`] reads it, whether the disk is full).
    failed: std::sync::OnceLock<(String, bool)>,
    gauge: std::sync::OnceLock<prometheus::IntGaugeVec>,
}

/// How a store's error type `E` names a write failed on the disk (see [`io_failure`]).
#[derive(Debug, Clone, Copy)]
pub struct DiskFault<E> {
    /// `(message, full)` when the error is such a failure.
    pub failure: fn(&E) -> Option<(&str, bool)>,
    /// The error a write refused by the latch answers.
    pub refusal: fn(String, bool) -> E,
}

impl<E> WriteLatch<E> {
    /// The latch of the store `db`, opened from `dir`; `store` and `goes_on` name it and what
    /// the service goes on doing in the log line of a failure ("the graph's store", "reads
    /// are answered from memory").
    pub fn new(
        store: &'static str,
        goes_on: &'static str,
        dir: &std::path::Path,
        db: &sled::Db,
        fault: DiskFault<E>,
    ) -> Self {
        Self {
            fault,
            store,
            goes_on,
            dir: dir.to_path_buf(),
            db: db.clone(),
            failed: std::sync::OnceLock::new(),
            gauge: std::sync::OnceLock::new(),
        }
    }

    /// Whether a write failed on the disk: `(message, full)`.
    pub fn failure(&self) -> Option<(&str, bool)> {
        self.failed.get().map(|(m, full)| (m.as_str(), *full))
    }

    /// Refuses a write once one failed on the disk.
    ///
    /// # Errors
    /// The failure of the first write that failed, as `E`.
    pub fn writable(&self) -> Result<(), E> {
        match self.failed.get() {
            Some((message, full)) => Err((self.fault.refusal)(message.clone(), *full)),
            None => Ok(()),
        }
    }

    /// `result` of a write, its failure on the disk noted (and logged, the first time) for
    /// [`Self::writable`].
    ///
    /// # Errors
    /// `result`'s.
    pub fn watch<T>(&self, result: Result<T, E>) -> Result<T, E> {
        if let Err(error) = &result
            && let Some((message, full)) = (self.fault.failure)(error)
            && self.failed.set((message.to_string(), full)).is_ok()
        {
            std::mem::forget(self.db.clone());
            tracing::error!(
                dir = %self.dir.display(),
                error = %message,
                "{} failed to write to its disk: it takes no more writes until the service \
                 restarts; {}",
                self.store,
                self.goes_on
            );
            if let Some(gauge) = self.gauge.get() {
                gauge.with_label_values(&[reason(full)]).set(1);
            }
        }
        result
    }

    /// Runs `write` unless a write failed on the disk before ([`Self::writable`]), and notes
    /// its own failure ([`Self::watch`]).
    ///
    /// # Errors
    /// [`Self::writable`]'s, or `write`'s.
    pub fn write<T>(&self, write: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        self.writable()?;
        self.watch(write())
    }

    /// Reports this store's failure, from now on and any that came before, in `gauge` (one
    /// gauge per service: a store that replaces another reports into the same one).
    pub fn report_to(&self, gauge: &prometheus::IntGaugeVec) {
        if self.gauge.set(gauge.clone()).is_ok()
            && let Some((_, full)) = self.failure()
        {
            gauge.with_label_values(&[reason(full)]).set(1);
        }
    }
}

fn reason(full: bool) -> &'static str {
    if full { "disk_full" } else { "io_error" }
}

/// Registers `souk_store_write_failed{reason}`: 1 once the service's store failed a write on
/// its disk (`disk_full`, or `io_error` for any other failure: a read-only remount, a file
/// size limit, a failing device), until the service restarts. Both reasons are listed at 0
/// from the start, so an alert sees the series before it turns.
///
/// # Errors
/// When a metric of that name is registered already.
pub fn write_failed_gauge(
    registry: &prometheus::Registry,
) -> prometheus::Result<prometheus::IntGaugeVec> {
    let gauge = prometheus::IntGaugeVec::new(
        prometheus::Opts::new(
            "store_write_failed",
            "1 once the store failed a write on its disk (by reason: disk_full, io_error): \
             it takes no more writes until the service restarts.",
        ),
        &["reason"],
    )?;
    registry.register(Box::new(gauge.clone()))?;
    for full in [true, false] {
        gauge.with_label_values(&[reason(full)]).set(0);
    }
    Ok(gauge)
}

#[cfg(test)]
mod io_failure_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_full_disk_is_named_whether_sled_passes_the_os_error_or_its_text() {
        let os = std::io::Error::from_raw_os_error(28);
        let (message, full) = io_failure(&os);
        assert!(full);
        assert!(message.contains("No space left on device"), "{message}");
        let rebuilt = std::io::Error::new(os.kind(), format!("{os:?}"));
        assert_eq!(io_failure(&rebuilt), ("no storage space".to_string(), true));
        let other = std::io::Error::from_raw_os_error(27);
        assert!(!io_failure(&other).1);
    }

    #[derive(Debug, PartialEq)]
    enum Fault {
        Disk(String, bool),
        Other,
    }

    fn disk(fault: &Fault) -> Option<(&str, bool)> {
        match fault {
            Fault::Disk(message, full) => Some((message, *full)),
            Fault::Other => None,
        }
    }

    const FAULT: DiskFault<Fault> = DiskFault {
        failure: disk,
        refusal: Fault::Disk,
    };

    fn gauge_of(registry: &prometheus::Registry, reason: &str) -> i64 {
        registry
            .gather()
            .iter()
            .find(|family| family.name() == "store_write_failed")
            .unwrap()
            .get_metric()
            .iter()
            .find(|m| m.get_label().iter().any(|l| l.value() == reason))
            .unwrap()
            .get_gauge()
            .get_value() as i64
    }

    /// Other errors pass; the first disk failure is kept, refuses every later write without
    /// running it, and turns the gauge of its reason (a second failure changes nothing).
    #[test]
    fn the_first_disk_failure_refuses_later_writes_and_turns_the_gauge() {
        let registry = prometheus::Registry::new();
        let gauge = write_failed_gauge(&registry).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let db = open_sled(&sled::Config::new().path(dir.path())).unwrap();
        let latch = WriteLatch::new("a store", "reads go on", dir.path(), &db, FAULT);
        latch.report_to(&gauge);
        assert_eq!(
            latch.write(|| Err::<(), _>(Fault::Other)),
            Err(Fault::Other)
        );
        assert_eq!(latch.write(|| Ok(1)), Ok(1));
        assert_eq!(gauge_of(&registry, "io_error"), 0);

        let failed = latch.write(|| Err::<(), _>(Fault::Disk("EFBIG".into(), false)));
        assert_eq!(failed, Err(Fault::Disk("EFBIG".into(), false)));
        let mut ran = false;
        let refused = latch.write(|| {
            ran = true;
            Ok(())
        });
        assert_eq!(refused, Err(Fault::Disk("EFBIG".into(), false)));
        assert!(!ran, "a write after the failure is not run");
        let _ = latch.watch(Err::<(), _>(Fault::Disk("ENOSPC".into(), true)));
        assert_eq!(latch.failure(), Some(("EFBIG", false)));
        assert_eq!(gauge_of(&registry, "io_error"), 1);
        assert_eq!(gauge_of(&registry, "disk_full"), 0);

        // A store that failed before it was reported (at its start) turns the gauge when it is.
        let registry = prometheus::Registry::new();
        let gauge = write_failed_gauge(&registry).unwrap();
        let early = WriteLatch::new("a store", "reads go on", dir.path(), &db, FAULT);
        let _ = early.watch(Err::<(), _>(Fault::Disk("ENOSPC".into(), true)));
        assert_eq!(gauge_of(&registry, "disk_full"), 0);
        early.report_to(&gauge);
        assert_eq!(gauge_of(&registry, "disk_full"), 1);
    }

    /// A store whose latch tripped stays open (its close would flush, which may wait
    /// forever): the directory stays locked after every handle is dropped. One that did not
    /// trip closes as ever.
    #[test]
    fn a_tripped_store_is_never_closed() {
        let dir = tempfile::tempdir().unwrap();
        let config = sled::Config::new().path(dir.path());
        let db = open_sled(&config).unwrap();
        let latch = WriteLatch::new("a store", "reads go on", dir.path(), &db, FAULT);
        assert_eq!(latch.write(|| Ok(1)), Ok(1));
        drop((latch, db));
        let db = open_sled(&config).unwrap();
        let latch = WriteLatch::new("a store", "reads go on", dir.path(), &db, FAULT);
        let _ = latch.watch(Err::<(), _>(Fault::Disk("ENOSPC".into(), true)));
        drop((latch, db));
        let err = open_sled(&config).unwrap_err().to_string();
        assert!(err.contains("could not acquire lock"), "{err}");
    }
}
