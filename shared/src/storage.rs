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

#[cfg(test)]
mod io_failure_tests {
    use super::io_failure;

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
}
