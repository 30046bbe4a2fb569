//! The sled store of the graph: a log of atomic, packed batch records.
//!
//! | key                     | value                                                    |
//! |-------------------------|----------------------------------------------------------|
//! | `b` seq (u64 BE)        | one `LoadTriples` batch: its new entity and relation names and its new triples as ids |
//! | `d` seq (u64 BE)        | a batch that also removes triples: the removed ones as ids, then a `b` record |
//! | `m` counter name        | u64 BE: entities, relations, triples, next batch seq     |
//!
//! A batch record is written with the counters in one `apply_batch` and flushed before the
//! caller is acknowledged: after a crash a batch is wholly there or not at all. Ids are dense
//! and assigned in insertion order, so replaying the records in sequence rebuilds the
//! dictionaries and the in-memory graph (petgraph), which answers `(h, r, ?)`, `(?, r, t)` and
//! `(h, ?, ?)` from adjacency lists without scans.
//!
//! Why not a sled key per triple and per index: the first layout (`s`h r t, `p`r t h, `e`name,
//! `E`id) loaded 44k triples/s and sled held 7.8 GB of RSS after a 1M-triple load (24 GB and an
//! OOM kill at 5M), against 0.3 GB for the same graph after a restart. One key per batch keeps
//! sled's write path small; BENCHMARKS.md has the figures. Stores written in that layout are
//! still read (its keys first, then the batch log).
//!
//! Record layout, little-endian: `u32 n` then `n x (u32 id, u32 len, name)` for entities, the
//! same for relations, then `u32 m` and `m x (u32 h, u32 r, u32 t)`. A `d` record starts with
//! `u32 k` and `k x (u32 h, u32 r, u32 t)` removed. Both kinds share one sequence, so a replay
//! applies them in the order they were acknowledged. A batch without removals is still written
//! as `b`, so a store that never removed anything stays readable by older builds (one that did
//! is refused by them: its triple counter no longer matches their replay).
//!
//! Removals only add records, so a store of a shop that recolours items every day grows without
//! end and replays ever more tombstones. [`SledStore::compact_into`] writes the live graph into
//! a new store: names and ids unchanged (trained embeddings index by them, and are copied
//! along), no removal record. Not done in place: sled 0.34 does not delete the blob files of
//! records whose pages were last written before the process started, so replacing the log in
//! place grew a churned 5M-triple store from 460 to 724 MB (BENCHMARKS.md, "Session 47").
//!
//! The service compacts while it serves, in two steps: [`SledStore::begin_generation`] writes
//! the graph the log held at a mark ([`SledStore::mark`]) into a subdirectory of the data
//! directory, `compacted-N`, while writes go on (records are never rewritten, so the log up to
//! the mark stays as it was); [`SledStore::finish_generation`], with writes held off, copies
//! the records written since the mark after it as they are (ids are the same in both stores)
//! and puts a file `CURRENT` naming it in place atomically; from then on
//! [`SledStore::open_data_dir`] opens that one. Until the first compaction the store lives in
//! the data directory itself (as every store written before this layout does). What the
//! switch leaves behind (the old store's files, a compaction cut off before its `CURRENT`) is
//! removed once the old store is closed, or at the next start ([`remove_stale`]).
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use std::collections::{HashMap, HashSet};

use souk_kg_core::{Change, KgError, Snapshot, TripleStore};
use souk_shared::storage::{DiskFault, WriteLatch};

const ENTITIES: &[u8] = b"mentities";
const RELATIONS: &[u8] = b"mrelations";
const TRIPLES: &[u8] = b"mtriples";
const NEXT_BATCH: &[u8] = b"mnextbatch";

/// Removed triples in the log from which the service compacts its store (the default of
/// `--compact-after`): at least this many, and at least an eighth of the triples its records
/// list (so that a compaction, which costs what the live graph holds, is paid for by the
/// replay and disk it saves).
pub const COMPACT_AFTER: u64 = 100_000;
/// The file of a data directory naming the subdirectory that holds its store.
const CURRENT: &str = "CURRENT";
/// Subdirectories of a data directory that hold a compacted store: `compacted-N`.
const GENERATION: &str = "compacted-";
/// What sled 0.34 writes into a store's directory (`Config::get_path` joins these), besides
/// its `snap.*` files: see [`is_sled_file`].
const SLED_FILES: [&str; 3] = ["conf", "db", "blobs"];
/// Bytes of a `b` record of a compacted log (names, or ~87k triples), about what a load's
/// batch of 10k triples with their new names writes.
const COMPACT_RECORD_BYTES: usize = 1 << 20;

pub struct SledStore {
    db: sled::Db,
    tree: sled::Tree,
    /// The directory sled's files are in.
    dir: PathBuf,
    /// Triples removed by the log's `d` records (counted at the last `snapshot`, and by every
    /// `persist` since): each is a dead entry of some `b` record, read and dropped at every
    /// replay.
    removed_in_log: AtomicU64,
    /// Refuses every write once one failed on the disk ([`KgError::StoreFailed`]): after a
    /// failed write of its log, sled 0.34 answers later calls with the error again, or waits
    /// forever in a flush (seen with a full disk).
    latch: WriteLatch<KgError>,
}

/// How [`KgError`] names a write failed on the disk, for the store's [`WriteLatch`].
const DISK_FAULT: DiskFault<KgError> = DiskFault {
    failure: |error| match error {
        KgError::StoreFailed { message, full } => Some((message, *full)),
        _ => None,
    },
    refusal: |message, full| KgError::StoreFailed { message, full },
};

/// A write of a compaction's new store that failed on the disk, as the compaction's failure
/// (not the store in use's, which [`KgError::StoreFailed`] would say).
fn copy_failed(error: KgError) -> KgError {
    match error {
        KgError::StoreFailed { message, .. } => KgError::Storage(format!(
            "the compacted copy could not be written ({message}); the store in use is \
             unchanged, and the copy's files are removed"
        )),
        other => other,
    }
}

/// The latch of the store the service writes to.
fn served_latch(dir: &Path, db: &sled::Db) -> WriteLatch<KgError> {
    WriteLatch::new(
        "the graph's store",
        "reads are answered from memory",
        dir,
        db,
        DISK_FAULT,
    )
}

/// A sled error as the graph's: an IO error is [`KgError::StoreFailed`] (see
/// [`SledStore::writable`]).
pub(crate) fn storage(e: sled::Error) -> KgError {
    match e {
        sled::Error::Io(io) => {
            let (message, full) = souk_shared::storage::io_failure(&io);
            KgError::StoreFailed { message, full }
        }
        other => KgError::Storage(other.to_string()),
    }
}

fn key(prefix: u8, body: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + body.len());
    k.push(prefix);
    k.extend_from_slice(body);
    k
}

#[cfg(test)]
fn triple_key(prefix: u8, a: u32, b: u32, c: u32) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[0] = prefix;
    k[1..5].copy_from_slice(&a.to_be_bytes());
    k[5..9].copy_from_slice(&b.to_be_bytes());
    k[9..13].copy_from_slice(&c.to_be_bytes());
    k
}

fn be_u32(bytes: &[u8]) -> Result<u32, KgError> {
    bytes
        .try_into()
        .map(u32::from_be_bytes)
        .map_err(|_| KgError::Storage(format!("corrupt id of {} bytes", bytes.len())))
}

impl SledStore {
    /// Opens (or creates) the store under `dir`.
    ///
    /// # Errors
    /// When sled cannot open the directory (permissions, another process holds it).
    pub fn open(dir: &Path) -> Result<Self, KgError> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(256 * 1024 * 1024);
        let db = souk_shared::storage::open_sled(&config)
            .map_err(|e| KgError::Storage(format!("{}: {e}", dir.display())))?;
        let tree = db.open_tree("graph").map_err(storage)?;
        let latch = served_latch(dir, &db);
        Ok(Self {
            db,
            tree,
            dir: dir.to_path_buf(),
            removed_in_log: AtomicU64::new(0),
            latch,
        })
    }

    /// Opens the store of a service's data directory: the directory itself, or the
    /// `compacted-N` subdirectory its `CURRENT` file names; then removes what an earlier
    /// compaction left there (see [`remove_stale`]).
    ///
    /// # Errors
    /// `Storage` when `CURRENT` cannot be read or names no compacted store, or the store
    /// cannot be opened.
    pub fn open_data_dir(dir: &Path) -> Result<Self, KgError> {
        Self::open_named(dir, generation(dir)?)
    }

    /// [`SledStore::open_data_dir`] from `named`, the generation `CURRENT` named when it was
    /// read. Another process on this directory may switch stores between that read and the
    /// open: its compaction names the new store, closes the old (releasing sled's lock) and
    /// removes its files, and `open` would then take the old one, or recreate it empty, and
    /// serve an empty graph. So `CURRENT` is read again once the store is ours: a store it no
    /// longer names is closed and the one it names opened instead (while that other process
    /// still holds it, `open` fails on sled's lock, as a second service on one directory
    /// always does).
    fn open_named(dir: &Path, mut named: u64) -> Result<Self, KgError> {
        for _ in 0..3 {
            let store = Self::open(&generation_dir(dir, named))?;
            let now = generation(dir)?;
            if now == named {
                // Only once the store is ours (sled holds its lock): another process on
                // this directory could still be closing the files removed here.
                remove_stale(dir)?;
                return Ok(store);
            }
            drop(store);
            named = now;
        }
        Err(KgError::Storage(format!(
            "{}: its stores were switched three times while this start opened one; is another \
             service compacting this directory?",
            dir.display()
        )))
    }

    /// Refuses a write once one failed on the disk ([`KgError::StoreFailed`]): the store
    /// takes writes again only when the service restarts and sled reopens it.
    ///
    /// # Errors
    /// The failure of the first write that failed.
    pub fn writable(&self) -> Result<(), KgError> {
        self.latch.writable()
    }

    /// This store as a compaction's new one: a write of it that fails on the disk fails the
    /// compaction, and the store is then never closed (sled's close would wait forever in its
    /// flush, and with it the compaction, which holds the next one and the embeddings' save
    /// off, and the service's stop: seen on a full disk). Its files are emptied and removed
    /// ([`remove_unnamed`]), so their room comes back at once.
    fn into_compaction_target(mut self) -> Self {
        self.latch = WriteLatch::new(
            "a compaction's new store",
            "the store in use is unchanged, and the copy's files are emptied and removed",
            &self.dir,
            &self.db,
            DISK_FAULT,
        );
        self
    }

    /// Reports a write failed on the disk in `gauge` (`souk_store_write_failed`).
    pub fn report_to(&self, gauge: &prometheus::IntGaugeVec) {
        self.latch.report_to(gauge);
    }

    /// Stores trained embeddings beside the graph ([`crate::embeddings::save`]), refused as
    /// every write is once one failed on the disk.
    ///
    /// # Errors
    /// As [`crate::embeddings::save`], and [`Self::writable`]'s.
    pub fn save_embeddings(&self, served: &crate::embeddings::Served) -> Result<(), KgError> {
        self.latch
            .write(|| crate::embeddings::save(&self.db, served))
    }

    /// Triples the log's removal records remove (what a compaction would drop).
    pub fn removed_in_log(&self) -> u64 {
        self.removed_in_log.load(Ordering::Relaxed)
    }

    /// Whether the log's removed triples are worth a compaction with `live` triples in the
    /// graph: at least `threshold` of them, and an eighth of the log; never with a
    /// `threshold` of 0.
    pub fn compaction_due(&self, live: u64, threshold: u64) -> bool {
        let removed = self.removed_in_log();
        threshold > 0
            && removed >= threshold
            && removed.saturating_mul(8) >= live.saturating_add(removed)
    }

    /// Where the log stands: the sequence number of its next record and its counters. Taken
    /// with writes held off; a compaction copies the log up to it while writes go on
    /// ([`SledStore::begin_generation`]), then catches up on what came after it up to a later
    /// mark, still while writes go on ([`SledStore::catch_up`]).
    ///
    /// # Errors
    /// When the store cannot be read.
    pub fn mark(&self) -> Result<LogMark, KgError> {
        Ok(LogMark {
            next: self.counter(NEXT_BATCH)?,
            counts: self.counts()?,
        })
    }

    /// Compacts the store of the data directory `dir` (this one, opened by
    /// [`SledStore::open_data_dir`]) while the service runs, first step: writes the graph the
    /// log held at `mark` into the next `compacted-N` subdirectory, and checks it by replaying
    /// it. Writes to this store may go on meanwhile; nothing names the new one yet. Nothing but
    /// the graph's log may change in this store's other trees (the trained embeddings) until
    /// [`SledStore::finish_generation`]: they are copied as they are now.
    ///
    /// # Errors
    /// `Storage` when either store cannot be read or written; the store in use is unchanged.
    /// `StoreFailed` when a write of this store failed ([`Self::writable`]): its tree may hold
    /// the record of a write refused to its caller, which a copy would make durable.
    pub fn begin_generation(&self, dir: &Path, mark: &LogMark) -> Result<NextGeneration, KgError> {
        self.writable()?;
        let generation = generation(dir)? + 1;
        let target = generation_dir(dir, generation);
        // A compaction cut off before its CURRENT; nothing names it.
        if target.exists() {
            std::fs::remove_dir_all(&target).map_err(|e| io(&target, e))?;
        }
        let (store, done) = self
            .compact_in(&target, COMPACT_RECORD_BYTES, Some(mark))
            .inspect_err(|_| remove_unnamed(&target))?;
        Ok(NextGeneration {
            store,
            generation,
            mark: *mark,
            done,
            copied: 0,
            removals: 0,
        })
    }

    /// Between the two steps, with writes going on: copies the records written to this store
    /// since the last mark up to `upto` (a later [`SledStore::mark`]) into the new store, so
    /// that [`SledStore::finish_generation`] holds writes off only for those written during
    /// this copy, not for every batch loaded while the graph was copied.
    ///
    /// # Errors
    /// `Storage` when either store cannot be read or written; the new store is removed, the
    /// store in use is unchanged.
    pub fn catch_up(
        &self,
        dir: &Path,
        next: NextGeneration,
        upto: &LogMark,
    ) -> Result<NextGeneration, KgError> {
        let target = generation_dir(dir, next.generation);
        // On an error the new store is closed (dropped) before its files go.
        self.copy_since_mark(next, Some(upto.next))
            .inspect_err(|_| remove_unnamed(&target))
    }

    /// Copies this store's records from `next`'s mark on (up to the record numbered `upto`,
    /// or all) into the new store as they are (ids are the same in both); moves the mark to
    /// `upto`.
    fn copy_since_mark(
        &self,
        mut next: NextGeneration,
        upto: Option<u64>,
    ) -> Result<NextGeneration, KgError> {
        let from = |prefix: u8| key(prefix, &next.mark.next.to_be_bytes());
        let to = |prefix: u8| match upto {
            Some(n) => key(prefix, &n.to_be_bytes()),
            None => vec![prefix + 1],
        };
        let records = merge_by_seq(
            self.tree.range(from(b'b')..to(b'b')),
            self.tree.range(from(b'd')..to(b'd')),
        );
        // A record at a time, flushed, as `persist` wrote them: copied in one sled batch, the
        // same records left the new store 106-152 MB on disk instead of 84-87 MB at 5M
        // triples (sled rewrote the leaf they extend several times over; BENCHMARKS.md,
        // "Session 49"). Nothing names the new store yet, so a crash here leaves only a
        // directory the next start removes.
        for item in records {
            let (k, v) = item.map_err(storage)?;
            let prefix = k.first().copied().unwrap_or(b'b');
            if prefix == b'd' {
                let mut gone = Vec::new();
                take_triples(&mut &v[..], &mut gone)
                    .map_err(|e| KgError::Storage(format!("batch record {:?}: {e}", &k[1..])))?;
                next.removals += gone.len() as u64;
            }
            let seq = next.done.records + next.copied;
            let store = &next.store;
            store
                .latch
                .write(|| {
                    store
                        .tree
                        .insert(key(prefix, &seq.to_be_bytes()), v)
                        .map_err(storage)?;
                    store.db.flush().map_err(storage)
                })
                .map_err(copy_failed)?;
            next.copied += 1;
        }
        // After the last copy (`upto` None) the mark is not read again.
        if let Some(n) = upto {
            next.mark.next = n;
        }
        Ok(next)
    }

    /// Second step, with writes held off: copies the records written to this store since the
    /// mark (or the last [`SledStore::catch_up`]) into the new one as they are (ids are the
    /// same in both), then names the new store in `CURRENT` (written aside, synced and renamed
    /// into place: a crash leaves the old name or the new one, never half of one). Returns the
    /// new store, open; the caller writes to it from then on, closes this one and calls
    /// [`remove_stale`].
    ///
    /// # Errors
    /// `Storage` when either store or `CURRENT` cannot be read or written; the store in use
    /// stays the old one.
    pub fn finish_generation(
        &self,
        dir: &Path,
        next: NextGeneration,
    ) -> Result<(SledStore, Compacted), KgError> {
        let target = generation_dir(dir, next.generation);
        // On an error the new store is closed (dropped) before its files go.
        self.finish_in(dir, next)
            .inspect_err(|_| remove_unnamed(&target))
    }

    fn finish_in(
        &self,
        dir: &Path,
        next: NextGeneration,
    ) -> Result<(SledStore, Compacted), KgError> {
        let before = next.copied;
        let NextGeneration {
            store,
            generation,
            mut done,
            copied,
            removals,
            ..
        } = self.copy_since_mark(next, None)?;
        let seq = done.records + copied;
        let (entities, relations, triples) = self.counts()?;
        let mut batch = sled::Batch::default();
        batch.insert(NEXT_BATCH, &seq.to_be_bytes());
        for (counter, n) in [
            (ENTITIES, entities),
            (RELATIONS, relations),
            (TRIPLES, triples),
        ] {
            batch.insert(counter, &n.to_be_bytes());
        }
        store
            .latch
            .write(|| {
                store.tree.apply_batch(batch).map_err(storage)?;
                store.db.flush().map_err(storage)
            })
            .map_err(copy_failed)?;
        store.removed_in_log.store(removals, Ordering::Relaxed);
        done.caught_up = copied;
        done.held = copied - before;
        done.triples = triples;

        let aside = dir.join(format!("{CURRENT}.new"));
        let name = format!("{GENERATION}{generation}\n");
        let written = std::fs::File::create(&aside).and_then(|mut file| {
            std::io::Write::write_all(&mut file, name.as_bytes())?;
            file.sync_all()
        });
        written.map_err(|e| io(&aside, e))?;
        let current = dir.join(CURRENT);
        std::fs::rename(&aside, &current).map_err(|e| io(&current, e))?;
        // From the rename on, a start opens the new store: the caller must switch to it even
        // when the directory's sync fails (the rename may then not outlive a power cut, and a
        // start would open the old store, missing the writes after it). Nothing from here on
        // returns an error (`finish_generation` removes the new store on one).
        if let Err(error) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
            tracing::warn!(%error, dir = %dir.display(), "cannot sync the data directory");
        }
        done.bytes = store.size_on_disk();
        // The store the service writes to from now on: a failed write refuses the next.
        let store = Self {
            latch: served_latch(&store.dir, &store.db),
            ..store
        };
        Ok((store, done))
    }

    /// Writes the graph this store holds into a new store at `dir` (which must hold none): the
    /// entity and relation names with their ids, then the live triples in insertion order, in
    /// records of about 1 MiB and no removal record; then every other tree (the trained
    /// embeddings) as it is. The new store replays to the same graph, answers the same, and
    /// is checked by replaying it before this returns. The caller stops the service first
    /// (sled holds the directory) and swaps the directories after.
    ///
    /// # Errors
    /// `Storage` when either store cannot be read or written, or `dir` already holds a graph.
    pub fn compact_into(&self, dir: &Path) -> Result<Compacted, KgError> {
        Ok(self.compact_in(dir, COMPACT_RECORD_BYTES, None)?.1)
    }

    /// [`SledStore::compact_into`] with records of about `record_bytes`, of the log up to
    /// `until` (all of it when `None`); returns the new store, open.
    fn compact_in(
        &self,
        dir: &Path,
        record_bytes: usize,
        until: Option<&LogMark>,
    ) -> Result<(SledStore, Compacted), KgError> {
        let (snapshot, removed) = match until {
            None => (self.snapshot()?, self.removed_in_log()),
            Some(mark) => self.replay(Some(mark))?,
        };
        let target = SledStore::open(dir)?.into_compaction_target();
        if target.tree.iter().next().is_some() || target.db.tree_names().len() > 2 {
            return Err(KgError::Storage(format!(
                "{} already holds a store; compact into a new directory",
                dir.display()
            )));
        }
        // The graph's records are built first, and the other trees measured, to know the room
        // the copy takes before any of it is written.
        let mut batch = sled::Batch::default();
        let mut records = 0u64;
        let mut payload = 0u64;
        compacted_records(
            &snapshot.entities,
            &snapshot.relations,
            &snapshot.triples,
            record_bytes,
            |record| {
                payload += record.len() as u64;
                batch.insert(key(b'b', &records.to_be_bytes()), record);
                records += 1;
            },
        );
        batch.insert(NEXT_BATCH, &records.to_be_bytes());
        for (counter, n) in [
            (ENTITIES, snapshot.entities.len()),
            (RELATIONS, snapshot.relations.len()),
            (TRIPLES, snapshot.triples.len()),
        ] {
            batch.insert(counter, &(n as u64).to_be_bytes());
        }
        let others: Vec<sled::IVec> = self
            .db
            .tree_names()
            .into_iter()
            .filter(|name| name != b"graph")
            .collect();
        for name in &others {
            for item in self.db.open_tree(name).map_err(storage)?.iter() {
                let (k, v) = item.map_err(storage)?;
                payload += (k.len() + v.len()) as u64;
            }
        }
        check_room(dir, payload)?;
        target
            .latch
            .write(|| {
                // The other trees first: a store cut short before its graph's one batch holds no
                // graph, never a graph without its embeddings.
                for name in &others {
                    let from = self.db.open_tree(name).map_err(storage)?;
                    let to = target.db.open_tree(name).map_err(storage)?;
                    let mut batch = sled::Batch::default();
                    for (i, item) in from.iter().enumerate() {
                        let (k, v) = item.map_err(storage)?;
                        batch.insert(k, v);
                        if i % 4096 == 4095 {
                            to.apply_batch(std::mem::take(&mut batch))
                                .map_err(storage)?;
                        }
                    }
                    to.apply_batch(batch).map_err(storage)?;
                }
                target.tree.apply_batch(batch).map_err(storage)?;
                target.db.flush().map_err(storage)
            })
            .map_err(copy_failed)?;
        // Compared by digest, so that the graph is held once, not twice, while it is checked
        // (~100 MB less at the peak of a 5M-triple compaction; BENCHMARKS.md "Session 49").
        let expected = digest(&snapshot);
        drop(snapshot);
        let check = target.snapshot()?;
        if digest(&check) != expected {
            return Err(KgError::Storage(format!(
                "the compacted store at {} does not replay to the graph",
                dir.display()
            )));
        }
        let done = Compacted {
            triples: check.triples.len() as u64,
            removed,
            records,
            caught_up: 0,
            held: 0,
            bytes: target.size_on_disk(),
            payload,
        };
        Ok((target, done))
    }

    fn counter(&self, name: &[u8]) -> Result<u64, KgError> {
        match self.tree.get(name).map_err(storage)? {
            Some(v) => v
                .as_ref()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| KgError::Storage("corrupt counter".into())),
            None => Ok(0),
        }
    }

    /// How many batch records the log holds: (plain `b` records, `d` records that remove).
    ///
    /// # Errors
    /// When the store cannot be read.
    pub fn log_records(&self) -> Result<(usize, usize), KgError> {
        let count = |prefix: u8| -> Result<usize, KgError> {
            let mut n = 0;
            for key in self.tree.scan_prefix([prefix]).keys() {
                key.map_err(storage)?;
                n += 1;
            }
            Ok(n)
        };
        Ok((count(b'b')?, count(b'd')?))
    }

    /// The database, for the embeddings' trees.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Counts of (entities, relations, triples).
    ///
    /// # Errors
    /// When the store cannot be read.
    pub fn counts(&self) -> Result<(u64, u64, u64), KgError> {
        Ok((
            self.counter(ENTITIES)?,
            self.counter(RELATIONS)?,
            self.counter(TRIPLES)?,
        ))
    }
}

fn io(path: &Path, e: std::io::Error) -> KgError {
    KgError::Storage(format!("{}: {e}", path.display()))
}

/// The generation of the store of the data directory `dir`: 0 (the directory itself) or the
/// N of the `compacted-N` its `CURRENT` names.
fn generation(dir: &Path) -> Result<u64, KgError> {
    let path = dir.join(CURRENT);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(&path, e)),
    };
    text.trim()
        .strip_prefix(GENERATION)
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|&n| n > 0 && generation_dir(dir, n).is_dir())
        .ok_or_else(|| {
            KgError::Storage(format!(
                "{}: {:?} names no compacted store of this directory",
                path.display(),
                text.trim()
            ))
        })
}

fn generation_dir(dir: &Path, generation: u64) -> PathBuf {
    if generation == 0 {
        dir.to_path_buf()
    } else {
        dir.join(format!("{GENERATION}{generation}"))
    }
}

/// Removes from the data directory `dir` what no longer belongs to the store its `CURRENT`
/// names: every other `compacted-N` subdirectory (an older store, or a compaction cut off
/// before it was named), and once a compacted store is in use the files sled wrote into `dir`
/// itself for the store before it. Nothing else in `dir` is touched. The stores removed must
/// be closed (by this process; another would have held the lock `open` took).
///
/// # Errors
/// `Storage` when `CURRENT` or `dir` cannot be read or an entry removed.
pub fn remove_stale(dir: &Path) -> Result<(), KgError> {
    let generation = generation(dir)?;
    let entries = std::fs::read_dir(dir).map_err(|e| io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let older = name
            .strip_prefix(GENERATION)
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n != generation);
        let sled_file = generation > 0 && is_sled_file(name);
        if !(older || sled_file) {
            continue;
        }
        let path = entry.path();
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|e| io(&path, e))?;
        tracing::info!(path = %path.display(), "removed what a compaction left");
    }
    Ok(())
}

/// Where a store's log stood: see [`SledStore::mark`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogMark {
    /// The sequence number of the next record.
    next: u64,
    /// (entities, relations, triples) the log held.
    counts: (u64, u64, u64),
}

/// A compacted store written, not yet in use: see [`SledStore::begin_generation`].
pub struct NextGeneration {
    store: SledStore,
    generation: u64,
    mark: LogMark,
    done: Compacted,
    /// Records written after the mark copied so far, and the triples their removals remove.
    copied: u64,
    removals: u64,
}

/// BLAKE3 of a graph's names and triples, each list and name length-prefixed.
fn digest(snapshot: &Snapshot) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    for names in [&snapshot.entities, &snapshot.relations] {
        hasher.update(&(names.len() as u64).to_le_bytes());
        for name in names {
            hasher.update(&(name.len() as u64).to_le_bytes());
            hasher.update(name.as_bytes());
        }
    }
    hasher.update(&(snapshot.triples.len() as u64).to_le_bytes());
    let mut block = Vec::with_capacity(12 * 4096);
    for chunk in snapshot.triples.chunks(4096) {
        block.clear();
        for &(h, r, t) in chunk {
            block.extend_from_slice(&h.to_le_bytes());
            block.extend_from_slice(&r.to_le_bytes());
            block.extend_from_slice(&t.to_le_bytes());
        }
        hasher.update(&block);
    }
    *hasher.finalize().as_bytes()
}

/// Whether `name`, in a store's directory, is one of sled's own files.
fn is_sled_file(name: &str) -> bool {
    SLED_FILES.contains(&name) || name.starts_with("snap.")
}

/// Each of sled's files in a store's directory `dir` (`conf`, `db`, `snap.*` and the files in
/// `blobs/`) with its metadata; nothing else there (a data directory also holds a
/// compaction's `compacted-N/`, and may hold an operator's files). What cannot be read is left
/// out.
fn sled_files(dir: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_str().is_some_and(is_sled_file) {
            continue;
        }
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        if meta.is_dir() {
            let blobs = std::fs::read_dir(entry.path())
                .into_iter()
                .flatten()
                .flatten();
            files.extend(blobs.filter_map(|blob| Some((blob.path(), blob.metadata().ok()?))));
        } else {
            files.push((entry.path(), meta));
        }
    }
    files
}

/// Bytes allocated on disk to sled's files in `dir` ([`sled_files`]).
fn disk_usage(dir: &Path) -> u64 {
    fn allocated(meta: &std::fs::Metadata) -> u64 {
        #[cfg(unix)]
        {
            std::os::unix::fs::MetadataExt::blocks(meta) * 512
        }
        #[cfg(not(unix))]
        {
            meta.len()
        }
    }
    sled_files(dir)
        .iter()
        .map(|(_, meta)| allocated(meta))
        .sum()
}

/// Removes the store a failed compaction wrote and nothing names (a full disk gets its space
/// back at once); what cannot be removed goes at the next start ([`remove_stale`]). Its files
/// are emptied first: a store whose write failed is never closed
/// ([`SledStore::into_compaction_target`]), and a removed file held open keeps its room.
fn remove_unnamed(target: &Path) {
    for (file, _) in sled_files(target) {
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .and_then(|f| f.set_len(0));
    }
    if let Err(error) = std::fs::remove_dir_all(target) {
        tracing::warn!(%error, path = %target.display(), "cannot remove a failed compaction's store");
    }
}

/// What a compaction wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    pub triples: u64,
    /// Removed triples the old log held (up to the mark) and the new one does not.
    pub removed: u64,
    /// Records of the compacted log.
    pub records: u64,
    /// Records written after the mark, copied as they are.
    pub caught_up: u64,
    /// Of those, the records copied with writes held off (written during the last catch-up).
    pub held: u64,
    /// The new store's size on disk, as `du` counts it ([`TripleStore::size_on_disk`]).
    pub bytes: u64,
    /// The bytes of keys and values the copy of the graph and the other trees wrote (what
    /// [`room_for`] is computed from).
    pub payload: u64,
}

/// The most room on disk a compaction's copy of `payload` bytes of keys and values takes:
/// sled writes each record of about 1 MiB into a blob file of its size, and its log (512 KiB
/// segments) and configuration beside them. Measured: 2.27 MB on disk (`du`) for 2.26 MB of
/// payload at 69,000 triples, 53 KB for 45 KB at 1,000 (BENCHMARKS.md "Session 55"); the
/// half and the margin leave room for trees of small values (sled's log) and a catch-up.
fn room_for(payload: u64) -> u64 {
    payload + payload / 2 + ROOM_MARGIN
}

/// What a compacted store takes beside its payload at most (sled's first log segments, its
/// configuration, a catch-up's records).
const ROOM_MARGIN: u64 = 2 << 20;

/// Refuses a compaction whose copy would not fit on the volume of `dir`: a copy that runs out
/// of room fails anyway, after filling the disk the store in use writes to for a while (see
/// [`SledStore::into_compaction_target`]).
/// When the volume cannot be asked, the copy is tried.
fn check_room(dir: &Path, payload: u64) -> Result<(), KgError> {
    let needed = room_for(payload);
    match fs2::available_space(dir) {
        Ok(free) if free < needed => Err(KgError::Storage(format!(
            "not enough room on disk for the compacted copy at {}: it takes up to {:.1} MB \
             ({:.1} MB of records), {:.1} MB are free; the store in use is unchanged",
            dir.display(),
            needed as f64 / 1e6,
            payload as f64 / 1e6,
            free as f64 / 1e6,
        ))),
        Ok(_) => Ok(()),
        Err(error) => {
            tracing::warn!(%error, dir = %dir.display(), "cannot read the free space; compacting");
            Ok(())
        }
    }
}

/// The records of a compacted log, each of about `budget` bytes at most (a single name may pass
/// it), passed to `emit` in order: the entity names, the relation names, then the triples.
/// Small records, as loads write them: sled keeps a leaf's values together, and a leaf of
/// one huge record is written whole again when it changes.
fn compacted_records(
    entities: &[String],
    relations: &[String],
    triples: &[(u32, u32, u32)],
    budget: usize,
    mut emit: impl FnMut(Vec<u8>),
) {
    let zero = 0u32.to_le_bytes();
    for (dictionary, of_relations) in [(entities, false), (relations, true)] {
        let mut first = 0;
        while first < dictionary.len() {
            let mut out = Vec::with_capacity(budget);
            if of_relations {
                out.extend_from_slice(&zero); // no entity names
            }
            let count_at = out.len();
            out.extend_from_slice(&zero);
            let mut n = 0;
            while let Some(name) = dictionary.get(first + n) {
                if n > 0 && out.len() + 8 + name.len() > budget {
                    break;
                }
                put_name(&mut out, (first + n) as u32, name);
                n += 1;
            }
            out[count_at..count_at + 4].copy_from_slice(&(n as u32).to_le_bytes());
            if !of_relations {
                out.extend_from_slice(&zero); // no relation names
            }
            out.extend_from_slice(&zero); // no triples
            emit(out);
            first += n;
        }
    }
    let per_record = (budget.saturating_sub(12) / 12).max(1);
    for chunk in triples.chunks(per_record) {
        // Empty entity and relation dictionaries, then the triples.
        let mut out = Vec::with_capacity(12 + 12 * chunk.len());
        out.extend_from_slice(&[0; 8]);
        put_triples(&mut out, chunk);
        emit(out);
    }
}

impl TripleStore for SledStore {
    fn persist(&self, change: &Change) -> Result<(), KgError> {
        if change.is_empty() {
            return Ok(());
        }
        self.latch.write(|| self.write(change))
    }

    fn snapshot(&self) -> Result<Snapshot, KgError> {
        let (snapshot, removals) = self.replay(None)?;
        self.removed_in_log.store(removals, Ordering::Relaxed);
        Ok(snapshot)
    }

    /// What sled's files take on disk, as `du` counts it. Not sled's own `size_on_disk`: that
    /// adds up file lengths, and its files hold holes where freed segments were punched out
    /// (it read 200 MB for a store `du` put at 85 MB; BENCHMARKS.md "Session 48").
    fn size_on_disk(&self) -> u64 {
        disk_usage(&self.dir)
    }
}

impl SledStore {
    /// One change as one batch record with the counters, flushed.
    fn write(&self, change: &Change) -> Result<(), KgError> {
        let (entities, relations, stored) = self.counts()?;
        let seq = self.counter(NEXT_BATCH)?;
        let mut batch = sled::Batch::default();
        let record = if change.removed.is_empty() {
            key(b'b', &seq.to_be_bytes())
        } else {
            key(b'd', &seq.to_be_bytes())
        };
        batch.insert(record, encode_record(change));
        batch.insert(NEXT_BATCH, &(seq + 1).to_be_bytes());
        batch.insert(
            ENTITIES,
            &(entities + change.new_entities.len() as u64).to_be_bytes(),
        );
        batch.insert(
            RELATIONS,
            &(relations + change.new_relations.len() as u64).to_be_bytes(),
        );
        let triples = (stored + change.new_triples.len() as u64)
            .checked_sub(change.removed.len() as u64)
            .ok_or_else(|| {
                KgError::Storage(format!(
                    "removing {} triples from a store that counts {stored}",
                    change.removed.len()
                ))
            })?;
        batch.insert(TRIPLES, &triples.to_be_bytes());
        // One atomic batch, flushed before the caller acknowledges it: a crash keeps whole
        // batches or nothing of them.
        self.tree.apply_batch(batch).map_err(storage)?;
        self.db.flush().map_err(storage)?;
        self.removed_in_log
            .fetch_add(change.removed.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// The graph the log holds up to `until` (all of it when `None`), and the triples its
    /// removal records remove. Records written after the mark (while this runs, too) are left
    /// out, so a replay to a mark needs no lock.
    fn replay(&self, until: Option<&LogMark>) -> Result<(Snapshot, u64), KgError> {
        let (entities, relations, triples) = match until {
            Some(mark) => mark.counts,
            None => self.counts()?,
        };
        let records = |prefix: u8| match until {
            None => self.tree.scan_prefix([prefix]),
            Some(mark) => self
                .tree
                .range(key(prefix, &[0; 8])..key(prefix, &mark.next.to_be_bytes())),
        };
        // Legacy layout first (a key per name and per triple), then the batch log.
        let names = |prefix: u8| -> Result<Vec<String>, KgError> {
            let mut out = Vec::new();
            for item in self.tree.scan_prefix([prefix]) {
                let (k, v) = item.map_err(storage)?;
                let id = be_u32(&k[1..])?;
                if id as usize != out.len() {
                    return Err(KgError::Storage(format!(
                        "id {id} missing from the dictionary"
                    )));
                }
                out.push(
                    String::from_utf8(v.to_vec()).map_err(|e| KgError::Storage(e.to_string()))?,
                );
            }
            Ok(out)
        };
        let mut entity_names = names(b'E')?;
        let mut relation_names = names(b'R')?;
        let mut all = Vec::with_capacity(triples as usize);
        for item in self.tree.scan_prefix([b's']) {
            let (k, _) = item.map_err(storage)?;
            if k.len() != 13 {
                return Err(KgError::Storage("corrupt triple key".into()));
            }
            all.push((be_u32(&k[1..5])?, be_u32(&k[5..9])?, be_u32(&k[9..13])?));
        }
        // The triples any record removes: only their positions need an index (a first pass
        // over the removal records, which are few and short).
        let mut removed = HashSet::new();
        let mut removals = 0u64;
        for item in records(b'd') {
            let (k, v) = item.map_err(storage)?;
            let mut gone = Vec::new();
            take_triples(&mut &v[..], &mut gone)
                .map_err(|e| KgError::Storage(format!("batch record {:?}: {e}", &k[1..])))?;
            removals += gone.len() as u64;
            removed.extend(gone);
        }
        let mut replay = Replay::new(all, removed);
        for item in merge_by_seq(records(b'b'), records(b'd')) {
            let (k, v) = item.map_err(storage)?;
            let removes = k.first() == Some(&b'd');
            replay
                .record(&v, removes, &mut entity_names, &mut relation_names)
                .map_err(|e| KgError::Storage(format!("batch record {:?}: {e}", &k[1..])))?;
        }
        let all = replay.survivors();
        for (what, have, want) in [
            ("entities", entity_names.len() as u64, entities),
            ("relations", relation_names.len() as u64, relations),
            ("triples", all.len() as u64, triples),
        ] {
            if have != want {
                return Err(KgError::Storage(format!(
                    "the store holds {have} {what}, its counter says {want}"
                )));
            }
        }
        let snapshot = Snapshot {
            entities: entity_names,
            relations: relation_names,
            triples: all,
        };
        Ok((snapshot, removals))
    }
}

fn encode_record(change: &Change) -> Vec<u8> {
    let names: usize = change
        .new_entities
        .iter()
        .chain(&change.new_relations)
        .map(|(_, n)| 8 + n.len())
        .sum();
    let removed = if change.removed.is_empty() {
        0
    } else {
        4 + 12 * change.removed.len()
    };
    let mut out = Vec::with_capacity(removed + 12 + names + 12 * change.new_triples.len());
    if !change.removed.is_empty() {
        put_triples(&mut out, &change.removed);
    }
    for dictionary in [&change.new_entities, &change.new_relations] {
        out.extend_from_slice(&(dictionary.len() as u32).to_le_bytes());
        for (id, name) in dictionary {
            put_name(&mut out, *id, name);
        }
    }
    put_triples(&mut out, &change.new_triples);
    out
}

fn put_name(out: &mut Vec<u8>, id: u32, name: &str) {
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&(name.len() as u32).to_le_bytes());
    out.extend_from_slice(name.as_bytes());
}

fn put_triples(out: &mut Vec<u8>, triples: &[(u32, u32, u32)]) {
    out.extend_from_slice(&(triples.len() as u32).to_le_bytes());
    for &(h, r, t) in triples {
        out.extend_from_slice(&h.to_le_bytes());
        out.extend_from_slice(&r.to_le_bytes());
        out.extend_from_slice(&t.to_le_bytes());
    }
}

/// The `b` and `d` records in one sequence (both are keyed by the shared batch number, and
/// each scan is in key order).
fn merge_by_seq(
    b: sled::Iter,
    d: sled::Iter,
) -> impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>> {
    let mut b = b.peekable();
    let mut d = d.peekable();
    std::iter::from_fn(move || {
        let take_d = match (b.peek(), d.peek()) {
            (_, None) => false,
            (None, Some(_)) => true,
            // An error is handed on from whichever side holds it.
            (Some(Err(_)), _) => false,
            (_, Some(Err(_))) => true,
            (Some(Ok((kb, _))), Some(Ok((kd, _)))) => kd[1..] < kb[1..],
        };
        if take_d { d.next() } else { b.next() }
    })
}

/// Triples in insertion order as the records are replayed. Removals leave tombstones, so the
/// survivors keep the order they were inserted in (which is the order a neighbour list shows).
/// Only the triples some record removes (`watched`) have their positions indexed: a 5M-entry
/// index of every triple cost 0.65 s of a 1.5 s restart.
struct Replay {
    triples: Vec<(u32, u32, u32)>,
    removed: Vec<bool>,
    watched: HashSet<(u32, u32, u32)>,
    /// Where each watched triple now sits in `triples` (at most one live copy at a time).
    at: HashMap<(u32, u32, u32), usize>,
}

impl Replay {
    fn new(triples: Vec<(u32, u32, u32)>, watched: HashSet<(u32, u32, u32)>) -> Self {
        let mut replay = Self {
            triples,
            removed: Vec::new(),
            watched,
            at: HashMap::new(),
        };
        replay.watch_from(0);
        replay
    }

    /// Indexes the watched triples from position `first` on (those just appended).
    fn watch_from(&mut self, first: usize) {
        if self.watched.is_empty() {
            return;
        }
        for (i, triple) in self.triples.iter().enumerate().skip(first) {
            if self.watched.contains(triple) {
                self.at.insert(*triple, i);
            }
        }
    }

    fn record(
        &mut self,
        mut bytes: &[u8],
        removes: bool,
        entities: &mut Vec<String>,
        relations: &mut Vec<String>,
    ) -> Result<(), String> {
        if removes {
            let mut gone = Vec::new();
            take_triples(&mut bytes, &mut gone)?;
            self.removed.resize(self.triples.len(), false);
            for triple in gone {
                let i = self
                    .at
                    .remove(&triple)
                    .ok_or_else(|| format!("removes {triple:?}, which is not stored"))?;
                self.removed[i] = true;
            }
        }
        let first = self.triples.len();
        decode_record(bytes, entities, relations, &mut self.triples)?;
        self.watch_from(first);
        Ok(())
    }

    fn survivors(self) -> Vec<(u32, u32, u32)> {
        if !self.removed.contains(&true) {
            return self.triples;
        }
        let removed = self.removed;
        self.triples
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !removed.get(*i).copied().unwrap_or(false))
            .map(|(_, t)| t)
            .collect()
    }
}

fn u32_at(bytes: &mut &[u8]) -> Result<u32, String> {
    let (head, rest) = bytes.split_at_checked(4).ok_or("truncated record")?;
    *bytes = rest;
    Ok(u32::from_le_bytes([head[0], head[1], head[2], head[3]]))
}

/// Reads `u32 m` and `m` id triples.
fn take_triples(bytes: &mut &[u8], triples: &mut Vec<(u32, u32, u32)>) -> Result<(), String> {
    let m = u32_at(bytes)?;
    // Bounded by what the record holds, not by the count it claims.
    triples.reserve((m as usize).min(bytes.len() / 12));
    for _ in 0..m {
        triples.push((u32_at(bytes)?, u32_at(bytes)?, u32_at(bytes)?));
    }
    Ok(())
}

/// Appends one record's names (checking their ids continue the dictionaries) and triples.
fn decode_record(
    mut bytes: &[u8],
    entities: &mut Vec<String>,
    relations: &mut Vec<String>,
    triples: &mut Vec<(u32, u32, u32)>,
) -> Result<(), String> {
    for dictionary in [entities, relations] {
        let n = u32_at(&mut bytes)?;
        for _ in 0..n {
            let id = u32_at(&mut bytes)?;
            let len = u32_at(&mut bytes)? as usize;
            let (name, rest) = bytes.split_at_checked(len).ok_or("truncated name")?;
            bytes = rest;
            if id as usize != dictionary.len() {
                return Err(format!(
                    "id {id} does not continue the dictionary at {}",
                    dictionary.len()
                ));
            }
            dictionary.push(String::from_utf8(name.to_vec()).map_err(|e| e.to_string())?);
        }
    }
    take_triples(&mut bytes, triples)?;
    if !bytes.is_empty() {
        return Err(format!("{} trailing bytes", bytes.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persisted_plans_survive_reopen_and_replanning_is_idempotent() {
        use souk_kg_core::{Graph, Triple};
        let t = |h: &str, r: &str, tl: &str| Triple::new(h, r, tl).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let batch = vec![t("a", "r", "b"), t("b", "r", "c"), t("a", "r", "b")];
        {
            let store = SledStore::open(dir.path()).unwrap();
            let mut graph = Graph::default();
            let plan = graph.plan(&batch);
            assert_eq!(
                plan.new_triples.len(),
                2,
                "the duplicate inside the batch counts once"
            );
            assert_eq!(plan.new_entities.len(), 3);
            store.persist(&plan).unwrap();
            graph.apply(&plan).unwrap();
            let again = graph.plan(&batch);
            assert_eq!(again, Change::default(), "nothing new the second time");
            store.persist(&again).unwrap();
            assert_eq!(store.counts().unwrap(), (3, 1, 2));
        }
        let store = SledStore::open(dir.path()).unwrap();
        let snapshot = store.snapshot().unwrap();
        assert_eq!(snapshot.entities, vec!["a", "b", "c"]);
        assert_eq!(snapshot.triples.len(), 2);
        let graph = Graph::from_snapshot(snapshot).unwrap();
        assert_eq!(graph.triple_count(), 2);
        assert_eq!(
            graph.plan(&batch),
            Change::default(),
            "the rebuilt graph knows every triple"
        );
    }

    #[test]
    fn removals_replay_in_order_after_a_restart() {
        use souk_kg_core::{Direction, Graph, NeighborQuery, Triple};
        let t = |h: &str, r: &str, tl: &str| Triple::new(h, r, tl).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let first: Vec<Triple> = (0..30)
            .map(|i| t(&format!("item:{i}"), "color", &format!("color:{}", i % 3)))
            .collect();
        let neighbours = |g: &Graph| -> Vec<Vec<souk_kg_core::Neighbor>> {
            (0..3)
                .map(|c| {
                    let query = NeighborQuery {
                        entity: format!("color:{c}"),
                        relation: None,
                        direction: Direction::Both,
                        limit: 100,
                        prefix: None,
                    };
                    g.neighbors(&query).unwrap().neighbors
                })
                .collect()
        };
        let expected = {
            let store = SledStore::open(dir.path()).unwrap();
            let mut graph = Graph::default();
            let mut apply = |remove: &[Triple], insert: &[Triple]| {
                let plan = graph.plan_edit(remove, &[], insert);
                store.persist(&plan).unwrap();
                graph.apply(&plan).unwrap();
                plan
            };
            apply(&[], &first);
            // item 4 turns from colour 1 to colour 2; items 0..10 step 3 lose their colour.
            let plan = apply(
                &[t("item:4", "color", "color:1")],
                &[t("item:4", "color", "color:2")],
            );
            assert_eq!((plan.removed.len(), plan.new_triples.len()), (1, 1));
            let gone: Vec<Triple> = (0..10).step_by(3).map(|i| first[i].clone()).collect();
            assert_eq!(apply(&gone, &[]).removed.len(), 4);
            // A removed triple added back, then a plain batch after the removals.
            apply(&[], &[first[3].clone()]);
            apply(&[], &[t("item:99", "color", "color:0")]);
            // The re-added triple removed and added again in one batch: it moves to the end.
            let plan = apply(&[first[3].clone()], &[first[3].clone()]);
            assert_eq!((plan.removed.len(), plan.new_triples.len()), (1, 1));
            assert_eq!(store.counts().unwrap().2, 30 - 1 + 1 - 4 + 1 + 1);
            assert_eq!(graph.triple_count(), 28);
            neighbours(&graph)
        };
        let store = SledStore::open(dir.path()).unwrap();
        let graph = Graph::from_snapshot(store.snapshot().unwrap()).unwrap();
        assert_eq!(graph.triple_count(), 28);
        assert_eq!(
            neighbours(&graph),
            expected,
            "the restarted graph lists what the running one did, in the same order"
        );
        let c1: Vec<String> = expected[1].iter().map(|n| n.entity.clone()).collect();
        assert!(!c1.contains(&"item:4".to_string()), "item 4 was recoloured");
        assert!(c1.contains(&"item:1".to_string()) && c1.contains(&"item:7".to_string()));
        let c0: Vec<String> = expected[0].iter().map(|n| n.entity.clone()).collect();
        assert!(!c0.contains(&"item:6".to_string()) && c0.contains(&"item:3".to_string()));
    }

    #[test]
    fn a_store_in_the_legacy_layout_is_read_and_extended_by_the_batch_log() {
        use souk_kg_core::{Graph, Triple};
        let dir = tempfile::tempdir().unwrap();
        {
            // What the first layout wrote for a -r-> b.
            let store = SledStore::open(dir.path()).unwrap();
            let t = &store.tree;
            t.insert(key(b'e', b"a"), &0u32.to_be_bytes()).unwrap();
            t.insert(key(b'E', &0u32.to_be_bytes()), b"a").unwrap();
            t.insert(key(b'e', b"b"), &1u32.to_be_bytes()).unwrap();
            t.insert(key(b'E', &1u32.to_be_bytes()), b"b").unwrap();
            t.insert(key(b'r', b"r"), &0u32.to_be_bytes()).unwrap();
            t.insert(key(b'R', &0u32.to_be_bytes()), b"r").unwrap();
            t.insert(triple_key(b's', 0, 0, 1), &[]).unwrap();
            t.insert(triple_key(b'p', 0, 1, 0), &[]).unwrap();
            t.insert(ENTITIES, &2u64.to_be_bytes()).unwrap();
            t.insert(RELATIONS, &1u64.to_be_bytes()).unwrap();
            t.insert(TRIPLES, &1u64.to_be_bytes()).unwrap();
            let mut graph = Graph::from_snapshot(store.snapshot().unwrap()).unwrap();
            let plan = graph.plan(&[Triple::new("b", "r", "c").unwrap()]);
            store.persist(&plan).unwrap();
            graph.apply(&plan).unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        let snapshot = store.snapshot().unwrap();
        assert_eq!(snapshot.entities, vec!["a", "b", "c"]);
        assert_eq!(snapshot.triples, vec![(0, 0, 1), (1, 0, 2)]);
        // Compacted, it is the batch log alone.
        let into = tempfile::tempdir().unwrap();
        store.compact_into(into.path()).unwrap();
        let compacted = SledStore::open(into.path()).unwrap();
        let keys: Vec<u8> = compacted
            .tree
            .iter()
            .keys()
            .map(|k| k.unwrap()[0])
            .collect();
        assert_eq!(
            keys, b"bbbmmmm",
            "entity names, relation names, triples; counters"
        );
        let again = compacted.snapshot().unwrap();
        assert_eq!(
            (again.entities, again.triples),
            (snapshot.entities, snapshot.triples)
        );
    }

    /// Random batches of removals, clears and inserts over a small graph (so that the same
    /// triples are removed, added back and cleared again): after every batch the store's
    /// replay equals the running graph, names, ids and triple order; a compaction midway
    /// replays to it too, and the new store goes on the same way.
    #[test]
    fn random_edits_replay_to_the_running_graph_before_and_after_a_compaction() {
        use souk_kg_core::{Graph, Triple};
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let triple = |next: &mut dyn FnMut(u64) -> u64| {
            let relation = ["color", "brand", "similar"][next(3) as usize];
            let tail = match relation {
                "similar" => format!("item:{}", next(12)),
                other => format!("{other}:{}", next(4)),
            };
            Triple::new(format!("item:{}", next(12)), relation, &tail).unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let into = tempfile::tempdir().unwrap();
        let mut graph = Graph::default();
        let mut store = SledStore::open(dir.path()).unwrap();
        for round in 0..240 {
            if round == 120 {
                drop(store);
                SledStore::open(dir.path())
                    .unwrap()
                    .compact_in(into.path(), 256, None)
                    .unwrap();
                store = SledStore::open(into.path()).unwrap();
                let replayed = store.snapshot().unwrap();
                assert_eq!(replayed.triples, graph.snapshot().triples, "compacted");
            }
            let (removes, inserts) = (next(6) as usize, next(8) as usize);
            // Removals drawn from the live triples (and a few that are not there).
            let live: Vec<(u32, u32, u32)> = graph.triples().collect();
            let snapshot = graph.snapshot();
            let name = |(h, r, t): (u32, u32, u32)| {
                Triple::new(
                    &snapshot.entities[h as usize],
                    &snapshot.relations[r as usize],
                    &snapshot.entities[t as usize],
                )
                .unwrap()
            };
            let mut remove: Vec<Triple> = (0..removes)
                .filter(|_| !live.is_empty())
                .map(|_| name(live[next(live.len() as u64) as usize]))
                .collect();
            remove.push(triple(&mut next));
            let clear: Vec<String> = if next(10) == 0 {
                vec![format!("item:{}", next(12))]
            } else {
                vec![]
            };
            let insert: Vec<Triple> = (0..inserts).map(|_| triple(&mut next)).collect();
            let plan = graph.plan_edit(&remove, &clear, &insert);
            store.persist(&plan).unwrap();
            graph.apply(&plan).unwrap();
            if round % 20 == 19 {
                let replayed = store.snapshot().unwrap();
                let expected = graph.snapshot();
                assert_eq!(replayed.entities, expected.entities, "round {round}");
                assert_eq!(replayed.relations, expected.relations, "round {round}");
                assert_eq!(replayed.triples, expected.triples, "round {round}");
            }
        }
        let dir_of_store = into.path().to_path_buf();
        drop(store);
        let replayed = SledStore::open(&dir_of_store).unwrap().snapshot().unwrap();
        assert_eq!(replayed.triples, graph.snapshot().triples);
        assert!(graph.triple_count() > 10, "the edits left a graph");
    }

    #[test]
    fn a_compacted_store_replays_to_the_same_graph_without_its_removals() {
        use souk_kg_core::{Graph, Triple};
        let t = |h: &str, r: &str, tl: &str| Triple::new(h, r, tl).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let into = tempfile::tempdir().unwrap();
        let items = 6_000;
        let colour = |i: usize, round: usize| format!("color:{}", (i + round) % 5);
        let mut graph = Graph::default();
        {
            let store = SledStore::open(dir.path()).unwrap();
            let apply = |graph: &mut Graph, remove: &[Triple], insert: &[Triple]| {
                let plan = graph.plan_edit(remove, &[], insert);
                store.persist(&plan).unwrap();
                graph.apply(&plan).unwrap();
            };
            let first: Vec<Triple> = (0..items)
                .flat_map(|i| {
                    let item = format!("item:{i}");
                    [
                        t(&item, "color", &colour(i, 0)),
                        t(&item, "brand", "brand:a"),
                    ]
                })
                .collect();
            apply(&mut graph, &[], &first);
            // Recolour 5,000 items, 1,000 a batch, and clear one of them.
            for batch in 0..5 {
                let ids = batch * 1_000..(batch + 1) * 1_000;
                let old: Vec<Triple> = ids
                    .clone()
                    .map(|i| t(&format!("item:{i}"), "color", &colour(i, 0)))
                    .collect();
                let new: Vec<Triple> = ids
                    .map(|i| t(&format!("item:{i}"), "color", &colour(i, 1)))
                    .collect();
                apply(&mut graph, &old, &new);
            }
            let plan = graph.plan_edit(&[], &["item:7".into()], &[]);
            store.persist(&plan).unwrap();
            graph.apply(&plan).unwrap();
            // Another tree (the embeddings') goes along as it is.
            let other = store.db.open_tree("embeddings").unwrap();
            other.insert("current", &7u64.to_be_bytes()).unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        let live = graph.triple_count() as u64;
        assert_eq!(live, 2 * items as u64 - 2);
        assert_eq!(store.snapshot().unwrap().triples.len() as u64, live);
        assert_eq!(store.removed_in_log(), 5_002);
        assert!(store.compaction_due(live, 5_002));
        assert!(
            !store.compaction_due(live, 5_003),
            "fewer removed than the threshold"
        );
        assert!(
            !store.compaction_due(live, 0),
            "a threshold of 0 never compacts"
        );
        assert!(
            !store.compaction_due(8 * live, 1),
            "removed triples under an eighth of the log"
        );
        // Records of at most 16 KiB: ~100 KB of names and 144 KB of triples take several.
        let compacted = store.compact_in(into.path(), 16_384, None).unwrap().1;
        assert_eq!((compacted.triples, compacted.removed), (live, 5_002));
        let again = store.compact_in(into.path(), 16_384, None).err().unwrap();
        assert!(
            again.to_string().contains("already holds a store"),
            "{again}"
        );
        drop(store);
        {
            let target = SledStore::open(into.path()).unwrap();
            let (plain, removing) = target.log_records().unwrap();
            assert_eq!((plain as u64, removing), (compacted.records, 0));
            let sizes: Vec<usize> = target
                .tree
                .scan_prefix([b'b'])
                .map(|kv| kv.unwrap().1.len())
                .collect();
            assert!(sizes.len() > 16, "{} records", sizes.len());
            assert!(sizes.iter().all(|&n| n <= 16_384), "{sizes:?}");
            let other = target.db.open_tree("embeddings").unwrap();
            assert_eq!(other.get("current").unwrap().unwrap(), 7u64.to_be_bytes());
            let replayed = target.snapshot().unwrap();
            assert_eq!(target.removed_in_log(), 0);
            assert!(!target.compaction_due(live, 1));
            let expected = graph.snapshot();
            assert_eq!(replayed.entities, expected.entities, "ids unchanged");
            assert_eq!(replayed.relations, expected.relations);
            assert_eq!(
                replayed.triples, expected.triples,
                "the same triples in the same order as the running graph"
            );
            // The log goes on in the new store: one more recolouring, removals included.
            let plan = graph.plan_edit(
                &[t("item:0", "color", &colour(0, 1))],
                &[],
                &[t("item:0", "color", &colour(0, 2))],
            );
            target.persist(&plan).unwrap();
            graph.apply(&plan).unwrap();
        }
        let target = SledStore::open(into.path()).unwrap();
        assert_eq!(target.snapshot().unwrap().triples, graph.snapshot().triples);
    }

    #[test]
    fn a_damaged_record_is_an_error_not_a_panic() {
        let (mut e, mut r, mut t) = (Vec::new(), Vec::new(), Vec::new());
        let record = encode_record(&Change {
            new_entities: vec![(0, "a".into()), (1, "b".into())],
            new_relations: vec![(0, "r".into())],
            new_triples: vec![(0, 0, 1)],
            ..Change::default()
        });
        for cut in 0..record.len() {
            assert!(decode_record(&record[..cut], &mut e, &mut r, &mut t).is_err());
            e.clear();
            r.clear();
            t.clear();
        }
        decode_record(&record, &mut e, &mut r, &mut t).unwrap();
        assert_eq!(t, vec![(0, 0, 1)]);
        // A record that removes: cut anywhere, or removing what is not stored, is an error.
        let record = encode_record(&Change {
            removed: vec![(0, 0, 1)],
            ..Change::default()
        });
        let watch = || HashSet::from([(0, 0, 1)]);
        for cut in 0..record.len() {
            let mut replay = Replay::new(vec![(0, 0, 1)], watch());
            assert!(replay.record(&record[..cut], true, &mut e, &mut r).is_err());
        }
        let mut replay = Replay::new(vec![(0, 0, 2)], watch());
        assert!(replay.record(&record, true, &mut e, &mut r).is_err());
        let mut replay = Replay::new(vec![(0, 0, 2), (0, 0, 1)], watch());
        replay.record(&record, true, &mut e, &mut r).unwrap();
        assert_eq!(replay.survivors(), vec![(0, 0, 2)]);
    }

    /// `size_on_disk` (what `Stats.store_bytes` reports) holds the records written, and
    /// nothing else in the directory: not an operator's file, not a compaction's store beside
    /// it (both 4 MB here).
    #[test]
    fn the_size_on_disk_counts_the_store_and_nothing_beside_it() {
        use souk_kg_core::{Graph, Triple};
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let mut graph = Graph::default();
        let triples: Vec<Triple> = (0..50_000)
            .map(|i| Triple::new(format!("item:{i}"), "color", format!("c{}", i % 7)).unwrap())
            .collect();
        for chunk in triples.chunks(10_000) {
            let plan = graph.plan_edit(&[], &[], chunk);
            store.persist(&plan).unwrap();
            graph.apply(&plan).unwrap();
        }
        let used = store.size_on_disk();
        // 50k triples of 12 bytes and 50k names of ~10: at least that much.
        assert!(used >= 50_000 * 22, "{used} bytes");
        std::fs::write(dir.path().join("notes.bin"), vec![1u8; 4 << 20]).unwrap();
        let beside = dir.path().join("compacted-1");
        std::fs::create_dir(&beside).unwrap();
        std::fs::write(beside.join("db"), vec![1u8; 4 << 20]).unwrap();
        let again = store.size_on_disk();
        assert!(again < used + (1 << 20), "{used} -> {again} bytes");
    }

    /// The service's compaction: a store in the data directory itself (every store written
    /// before this layout) moves to `compacted-1`, then `compacted-2`; each start opens the one
    /// `CURRENT` names and removes what the switches left (the old sled files, the older
    /// store, a compaction cut off before its `CURRENT`), and nothing else.
    #[test]
    fn compacting_a_data_directory_moves_its_store_and_leaves_nothing_behind() {
        use souk_kg_core::{Graph, Triple};
        let t = |h: &str, r: &str, tl: &str| Triple::new(h, r, tl).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let names = || souk_testkit::dir_names(dir.path());
        std::fs::write(dir.path().join("operator-notes.txt"), "mine").unwrap();
        let mut graph = Graph::default();
        let edit = |store: &SledStore, graph: &mut Graph, remove: &[Triple], insert: &[Triple]| {
            let plan = graph.plan_edit(remove, &[], insert);
            store.persist(&plan).unwrap();
            graph.apply(&plan).unwrap();
        };
        let store = SledStore::open_data_dir(dir.path()).unwrap();
        edit(
            &store,
            &mut graph,
            &[],
            &[t("a", "r", "b"), t("b", "r", "c"), t("c", "r", "a")],
        );
        edit(&store, &mut graph, &[t("b", "r", "c")], &[]);
        assert!(names().contains(&"db".to_string()), "{:?}", names());

        // Writes go on while the graph up to the mark is copied; nothing names the copy yet.
        let mark = store.mark().unwrap();
        let begun = store.begin_generation(dir.path(), &mark).unwrap();
        assert!(!dir.path().join("CURRENT").exists());
        edit(&store, &mut graph, &[t("a", "r", "b")], &[t("x", "s", "y")]);
        edit(&store, &mut graph, &[], &[t("y", "s", "z")]);
        // Those two are copied while writes go on; only what comes after this catch-up's mark
        // is copied with writes held off.
        let upto = store.mark().unwrap();
        let begun = store.catch_up(dir.path(), begun, &upto).unwrap();
        assert!(!dir.path().join("CURRENT").exists());
        edit(&store, &mut graph, &[t("x", "s", "y")], &[t("z", "s", "w")]);
        let (next, done) = store.finish_generation(dir.path(), begun).unwrap();
        assert_eq!(
            (done.triples, done.removed, done.caught_up, done.held),
            (3, 1, 3, 1)
        );
        let current = std::fs::read_to_string(dir.path().join("CURRENT")).unwrap();
        assert_eq!(current, "compacted-1\n");
        assert_eq!(next.counts().unwrap(), store.counts().unwrap());
        assert_eq!(
            next.removed_in_log(),
            2,
            "the removals after the mark, before and after the catch-up, are in the new log"
        );
        assert_eq!(
            next.snapshot().unwrap().triples,
            graph.snapshot().triples,
            "the new log replays to the graph: every record once, in order"
        );
        // The new store takes the next write; the old one is closed, then swept.
        edit(&next, &mut graph, &[], &[t("c", "r", "d")]);
        drop(store);
        remove_stale(dir.path()).unwrap();
        assert_eq!(names(), ["CURRENT", "compacted-1", "operator-notes.txt"]);
        drop(next);

        let reopened = SledStore::open_data_dir(dir.path()).unwrap();
        assert_eq!(
            reopened.snapshot().unwrap().triples,
            graph.snapshot().triples
        );
        let mark = reopened.mark().unwrap();
        let begun = reopened.begin_generation(dir.path(), &mark).unwrap();
        let (second, done) = reopened.finish_generation(dir.path(), begun).unwrap();
        assert_eq!((done.triples, done.removed, done.caught_up), (4, 2, 0));
        drop((reopened, second));
        // A third, cut off before its CURRENT.
        std::fs::create_dir(dir.path().join("compacted-3")).unwrap();
        std::fs::write(dir.path().join("compacted-3").join("db"), "half").unwrap();
        let store = SledStore::open_data_dir(dir.path()).unwrap();
        assert_eq!(names(), ["CURRENT", "compacted-2", "operator-notes.txt"]);
        let replayed = store.snapshot().unwrap();
        let expected = graph.snapshot();
        assert_eq!(
            (replayed.entities, replayed.triples),
            (expected.entities, expected.triples)
        );
        drop(store);

        // A start that read CURRENT before another process's compaction switched stores
        // (and removed the old one's files) opens the store CURRENT names now, not the old
        // one recreated empty.
        let store = SledStore::open_named(dir.path(), 1).unwrap();
        assert_eq!(store.snapshot().unwrap().triples, graph.snapshot().triples);
        assert_eq!(names(), ["CURRENT", "compacted-2", "operator-notes.txt"]);
        drop(store);

        // A CURRENT naming no store is refused, not taken for a new empty one.
        std::fs::write(dir.path().join("CURRENT"), "compacted-9\n").unwrap();
        let refused = SledStore::open_data_dir(dir.path()).err().unwrap();
        assert!(
            refused.to_string().contains("names no compacted store"),
            "{refused}"
        );
        assert!(!dir.path().join("compacted-9").exists());
    }

    /// A compaction whose copy would not fit on the volume is refused before it writes, saying
    /// how much it needs; one that fits goes on.
    #[test]
    fn a_copy_larger_than_the_free_space_is_refused_before_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let free = fs2::available_space(dir.path()).unwrap();
        let refused = check_room(dir.path(), free).unwrap_err().to_string();
        assert!(
            refused.contains("not enough room on disk for the compacted copy")
                && refused.contains("MB are free; the store in use is unchanged"),
            "{refused}"
        );
        check_room(dir.path(), 1_000).unwrap();
    }

    /// The files of a failed compaction's store are emptied as they are removed: that store
    /// is never closed (its close may wait forever), and a removed file held open would keep
    /// its room on a full disk.
    #[test]
    fn a_failed_copy_gives_its_room_back_though_its_files_are_held_open() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("compacted-1");
        std::fs::create_dir_all(target.join("blobs")).unwrap();
        std::fs::write(target.join("db"), vec![7u8; 100_000]).unwrap();
        std::fs::write(target.join("blobs").join("42"), vec![7u8; 300_000]).unwrap();
        let held = [
            std::fs::File::open(target.join("db")).unwrap(),
            std::fs::File::open(target.join("blobs").join("42")).unwrap(),
        ];
        remove_unnamed(&target);
        assert!(!target.exists());
        for file in held {
            assert_eq!(file.metadata().unwrap().len(), 0);
        }
    }
}
