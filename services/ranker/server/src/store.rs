//! The ranker's sled store: items and their vectors in one tree (`i`+id -> JSON item,
//! `v`+id -> little-endian f32s, written together in one atomic batch; `p` -> the vector the
//! model that embedded them gives a fixed probe text, see [`RankerStore::probe`]; `d`+id -> a
//! deleted item's JSON, what the graph was told of it, see [`RankerStore::deleted_items`]) and the event log in
//! another (sequence number -> JSON event with the pseudonymised user); fitted models (fusion
//! weights, the trained collaborative filter) as JSON by name in a third, with a factor
//! model's vectors beside its record as little-endian f32s (`cf.vectors`). The HNSW graph
//! over item vectors is a file beside sled's (`hnsw.graph`), written whole and renamed into
//! place, so that a restart reads it instead of rebuilding it (see [`RankerStore::save_ann`]).
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use souk_ranker_core::catalog::Catalog;
use souk_ranker_core::cf::{FoldIn, ItemFactors, TrainedCf};
use souk_ranker_core::item::{Interaction, Item};
use souk_ranker_core::pins::{PinRule, Pins};
use souk_ranker_core::rank::FusionModel;
use souk_ranker_core::synonyms::{SynonymRule, Synonyms};
use souk_ranker_core::{RankError, UserHasher, UserKey};
use souk_shared::storage::{DiskFault, WriteLatch};

pub struct RankerStore {
    dir: PathBuf,
    db: sled::Db,
    catalog: sled::Tree,
    events: sled::Tree,
    /// Fitted models by name (`fusion`, `cf`), JSON with their version inside.
    models: sled::Tree,
    /// Numbers every write and hands it to the replicas following this store (see
    /// [`RankerStore::subscribe`]).
    journal: std::sync::Mutex<Journal>,
    /// Held while `hnsw.graph` is written, or read into a catalog that replaces the served
    /// one (see [`RankerStore::lock_ann_file`]); holds the served catalog's `ann_changes()`
    /// that the file holds ([`ANN_NOT_SAVED`]: none).
    ann_file: std::sync::Mutex<u64>,
    /// Popularity's half-life in days for the catalogs built from this store (`None`, 0 or
    /// less: every event alike); see `Catalog::set_popularity_half_life`.
    popularity_half_life: Option<f64>,
    /// The models tree's [`FORGOTTEN`] records in memory (who, and when), read at open and
    /// kept with every write of them: checked for every event recorded
    /// ([`RankerStore::unforgotten`]; a sled read per shopper cost 0.6x the batch's write).
    forgotten: std::sync::RwLock<HashMap<UserKey, i64>>,
    /// Keys [`RankerStore::fingerprint`] (random per process: the prints live in memory only).
    print_keys: std::hash::RandomState,
    /// The fingerprints of the stored events, built by each replay of the log and kept with
    /// every event stored or removed since (on a replica too, by `replica::apply_live`):
    /// what [`RankerStore::record`] checks a batch against (~19 MB at 1M events).
    prints: std::sync::Mutex<Prints>,
    /// Refuses every write once one failed on the disk ([`RankError::StoreFailed`]): after a
    /// failed write of its log, sled 0.34 answers later calls with the error again, or waits
    /// forever in a flush (seen with a full disk). Shared with the outboxes, whose trees are
    /// in the same sled database.
    latch: Arc<WriteLatch<RankError>>,
}

/// A set of [`RankerStore::fingerprint`]s: already hashes, so not hashed again.
type Prints = HashSet<u64, std::hash::BuildHasherDefault<Prehashed>>;

/// The identity hasher for [`Prints`]: a fingerprint is its own hash.
#[derive(Default)]
struct Prehashed(u64);

impl std::hash::Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// What [`RankerStore::record`] did with a batch of events.
#[derive(Debug)]
pub struct Recorded {
    /// The events stored, in the batch's order.
    pub events: Vec<Interaction>,
    /// Events of forgotten shoppers not stored ([`RankerStore::unforgotten`]).
    pub forgotten: u64,
    /// Events not stored because an identical one was.
    pub duplicates: u64,
}

/// The store's trees, as a replica names them (the `tree` of the `Follow` stream's records).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TreeName {
    Catalog = 0,
    Events = 1,
    Models = 2,
}

impl TreeName {
    /// The tree numbered `n` on the wire.
    ///
    /// # Errors
    /// When no tree has that number.
    pub fn from_wire(n: u32) -> Result<Self, RankError> {
        match n {
            0 => Ok(Self::Catalog),
            1 => Ok(Self::Events),
            2 => Ok(Self::Models),
            other => Err(RankError::InvalidInput(format!("no store tree {other}"))),
        }
    }
}

/// A record's key and its new value (`None`: removed).
pub type Write = (Vec<u8>, Option<Vec<u8>>);

/// One write of the store, as it was applied: every record of it is in one tree and was
/// stored atomically. `seq` numbers the store's writes from 1, on over its restarts.
#[derive(Debug)]
pub struct Change {
    pub seq: u64,
    /// The origin that numbered it: the journal's, or for a write taken from its key list
    /// after a restart, the earlier open's that wrote it. A follower keeps its position
    /// under this name, which every later open of the store still knows (by the list).
    pub origin: u64,
    pub tree: TreeName,
    pub writes: Vec<Write>,
}

impl Change {
    /// The bytes of its keys and values.
    pub fn bytes(&self) -> usize {
        self.writes.iter().map(write_bytes).sum()
    }
}

/// The bytes of a write's key and value.
pub fn write_bytes((key, value): &Write) -> usize {
    key.len() + value.as_ref().map_or(0, Vec::len)
}

/// What a live write from a primary changes in memory ([`RankerStore::decode`]).
#[derive(Debug, Default)]
pub struct Decoded {
    /// Items stored with their vectors (a load).
    pub upserted: Vec<(Item, Vec<f32>)>,
    /// New vectors of stored items, without the items (a re-embedding).
    pub vectors: HashMap<String, Vec<f32>>,
    /// Items removed.
    pub deleted: Vec<String>,
    /// The probe text's vector, when the write set it.
    pub probe: Option<Vec<f32>>,
    /// Events appended.
    pub events: Vec<Interaction>,
    /// Names of the models and settings written (`fusion`, `cf`, `synonyms`, `pins`), to be read back
    /// from the store.
    pub models: Vec<String>,
}

/// Writes waiting in the journal for a follower's backlog to take them (the `Follow` stream
/// moves each into its own backlog at once, bounded by bytes: `replica::BACKLOG_BYTES`).
/// Past them the follower is cut off and copies a snapshot again.
const JOURNAL_CAPACITY: usize = 512;

/// The most bytes of its latest writes a store keeps in memory once a replica has followed
/// it, so that a replica that restarts or loses its connection resumes after the last write
/// it took instead of copying the whole store: a replica's restart (its own store replayed,
/// ~10 s at 100k items and 1M events) during a bulk load of ~10 MB/s of events.
pub const RECENT_BYTES: usize = 64 * 1024 * 1024;

struct Journal {
    /// Names this numbering of writes: drawn at each open.
    origin: u64,
    /// The names (origin, number) of the last write the store held when this open found it,
    /// cleanly closed or not (numbering goes on from there): a follower at exactly one of
    /// them holds this store's state as of that write. Not the same origin again: a copy of
    /// the store (a backup restored while replicas hold later writes of the original) would
    /// number other writes the same.
    continues: Vec<(u64, u64)>,
    /// The store's last write when this open found it: numbering goes on from here.
    start: u64,
    /// The last write numbered (applied to the trees, maybe not yet flushed).
    seq: u64,
    /// The last write handed on to followers: every write up to it is flushed. A follower
    /// never holds a write the store could lose to a crash, so a replica that followed a
    /// killed primary is never ahead of what it kept (it would copy the whole store).
    sent: u64,
    /// Writes numbered but not yet flushed, oldest first, waiting for [`Journal::release`].
    unflushed: VecDeque<(u64, TreeName, Vec<Write>)>,
    sender: tokio::sync::broadcast::Sender<Arc<Change>>,
    /// The latest writes, oldest first, at most [`RECENT_BYTES`] of them; kept once a
    /// follower subscribed (a store nobody follows keeps none).
    recent: VecDeque<Arc<Change>>,
    recent_bytes: usize,
    /// [`RECENT_BYTES`] (smaller in tests).
    recent_budget: usize,
    keep_recent: bool,
    /// [`RankerStore::close`] was called: no more writes.
    closed: bool,
    /// Every write numbered after this one is in `recent`.
    kept_after: u64,
}

impl Journal {
    /// A journal of a new origin, numbering on from the store's last write `start`, which
    /// `continues` names; it keeps its latest writes from the start when that store was
    /// `followed` (its replicas reconnect after the first writes of a restarted primary).
    fn new(start: u64, continues: Vec<(u64, u64)>, followed: bool) -> Self {
        Self {
            origin: draw_origin(),
            continues,
            start,
            seq: start,
            sent: start,
            unflushed: VecDeque::new(),
            sender: tokio::sync::broadcast::channel(JOURNAL_CAPACITY).0,
            recent: VecDeque::new(),
            recent_bytes: 0,
            recent_budget: RECENT_BYTES,
            keep_recent: followed,
            closed: false,
            kept_after: start,
        }
    }

    /// Numbers a write just applied; it waits until a flush passed it ([`Self::release`]).
    fn push(&mut self, tree: TreeName, writes: Vec<Write>) -> u64 {
        self.seq += 1;
        self.unflushed.push_back((self.seq, tree, writes));
        self.seq
    }

    /// Hands on every write numbered up to `flushed`, in order: a flush that began after
    /// write `flushed` was applied returned, so the store keeps them all through a crash
    /// (sled recovers a prefix of its log).
    fn release(&mut self, flushed: u64) {
        while self
            .unflushed
            .front()
            .is_some_and(|(seq, ..)| *seq <= flushed)
        {
            let Some((seq, tree, writes)) = self.unflushed.pop_front() else {
                break;
            };
            self.hand_on(seq, tree, writes);
        }
    }

    fn hand_on(&mut self, seq: u64, tree: TreeName, writes: Vec<Write>) {
        self.sent = seq;
        if !self.keep_recent {
            self.kept_after = seq;
            if self.sender.receiver_count() == 0 {
                return;
            }
        }
        let change = Arc::new(Change {
            seq,
            origin: self.origin,
            tree,
            writes,
        });
        // No receiver left (it went away meanwhile) is not an error.
        let _ = self.sender.send(change.clone());
        if self.keep_recent {
            self.recent_bytes += change.bytes();
            self.recent.push_back(change);
            while self.recent_bytes > self.recent_budget {
                let Some(oldest) = self.recent.pop_front() else {
                    break;
                };
                self.recent_bytes -= oldest.bytes();
                self.kept_after = oldest.seq;
            }
        }
    }

    /// The writes numbered after `after`, when `origin` is this journal's (or `after` is
    /// where the store it continues was closed) and it kept every one of them.
    fn since(&self, origin: u64, after: u64) -> Option<Vec<Arc<Change>>> {
        let ours = origin == self.origin || self.continues.contains(&(origin, after));
        (ours && self.kept_after <= after && after <= self.sent).then(|| {
            self.recent
                .iter()
                .filter(|change| change.seq > after)
                .cloned()
                .collect()
        })
    }
}

/// A nonzero number unlikely to be drawn twice (`RandomState` is seeded from the OS).
fn draw_origin() -> u64 {
    use std::hash::BuildHasher;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    std::collections::hash_map::RandomState::new()
        .hash_one((now, std::process::id()))
        .max(1)
}

/// What [`RankerStore::subscribe`] gives a follower.
pub struct Subscription {
    /// Every write from now on, in order.
    pub changes: tokio::sync::broadcast::Receiver<Arc<Change>>,
    /// The number of the last write before them.
    pub seq: u64,
    /// Names the store's numbering of writes since it was opened.
    pub origin: u64,
    /// When the follower asked to resume and the store kept every write it missed: those
    /// writes, in order (the ones numbered after its last, up to `seq`).
    pub missed: Option<Vec<Arc<Change>>>,
    /// When the follower asked to resume and its last write is not this store's write of
    /// that number (another open numbered it, by the write's key list): the follower's copy
    /// and this store went separate ways after their last common write (a backup put back
    /// took writes of its own). `false` also when the store cannot tell (no write of that
    /// number yet, or its list is gone).
    pub diverged: bool,
}

/// Key in the models tree where a replica keeps where its copy stands: the primary's origin
/// and the number of the last write applied, 16 bytes big-endian (see
/// [`RankerStore::position`]).
const POSITION_KEY: &[u8] = b"replica.position";

/// Key in the models tree where a store closed cleanly by an earlier version kept its
/// journal's origin and last write number (16 bytes, as [`POSITION_KEY`]) and whether anyone
/// followed it (1 byte). Read (and taken out) at open; the key lists ([`LISTED_WRITES`]),
/// [`NAMES_KEY`] and [`FOLLOWED_KEY`] say the same now, crash or not.
const JOURNAL_KEY: &[u8] = b"journal.position";

/// Key in the models tree holding the names (origin, number: 16 bytes each) of the store's
/// last write as an open found it, the new origin's among them (replicas copy from a primary
/// that has not written yet, and their position then names its origin), written at each
/// open; at most [`MAX_NAMES`]. Outdated by the next write (its key list is then later).
const NAMES_KEY: &[u8] = b"journal.names";

/// The most names [`NAMES_KEY`] keeps (opens without a write in between each add one).
const MAX_NAMES: usize = 16;

/// Keys of the store's own records in the catalog and events trees (and in models) start
/// with this byte, which no item, event or model key does.
const OWN: u8 = 0xff;

/// Each write also lists the keys it set or removed, in its own tree under `[OWN, b'w',
/// number]` (value: the writing origin, then each key as a little-endian u32 length and its
/// bytes), in the same atomic batch; a write drops its tree's lists older than
/// [`LISTED_WRITES`] writes, never the tree's newest.
///
/// The newest list of the three trees names the store's last write: opened again after a
/// crash as after a clean stop, the store numbers on from it, so a replica that held exactly
/// the writes the store kept resumes instead of copying it. (sled recovers a prefix of its
/// log and every write is flushed before it is answered or handed to a follower, so the
/// store holds every write up to that one and every write a replica took. A replica at a
/// later number, which only a store restored from a backup can meet, copies.)
/// And a primary restarted after a crash has lost the writes it kept in memory, so a replica
/// a few writes behind its last stored one would copy the whole store; from these lists it
/// sends those writes again instead, each key with its value now (the replica ends in the
/// same state: every later write is sent too, and no two writes set the same event key). See
/// [`RankerStore::subscribe`]. No item, event or model key starts with [`OWN`].
const LISTED_WRITES: u64 = 4096;

fn list_key(seq: u64) -> Vec<u8> {
    [&[OWN, b'w'][..], &seq.to_be_bytes()].concat()
}

fn list_bytes(origin: u64, writes: &[Write]) -> Vec<u8> {
    let mut bytes = origin.to_be_bytes().to_vec();
    for (key, _) in writes {
        bytes.extend((key.len() as u32).to_le_bytes());
        bytes.extend(key);
    }
    bytes
}

/// The store's last write as the newest key list of `trees` tells it: its number, and the
/// origin that numbered it (`None` when that list is damaged); `None` when no tree holds a
/// list (a new store, or one last written by a build before session 25).
fn last_listed(trees: [&sled::Tree; 3]) -> Result<Option<(u64, Option<u64>)>, RankError> {
    let mut last: Option<(u64, Option<u64>)> = None;
    for tree in trees {
        let newest = tree.scan_prefix([OWN, b'w']).next_back();
        let Some((key, value)) = newest.transpose().map_err(internal)? else {
            continue;
        };
        let Some(seq) = key.get(2..).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
            continue;
        };
        let seq = u64::from_be_bytes(seq);
        if last.is_none_or(|(last, _)| seq > last) {
            // Read as `RankerStore::list` reads it: a list damaged anywhere names no writer.
            last = Some((seq, listed(&value).map(|(origin, _)| origin)));
        }
    }
    Ok(last)
}

/// The origin and keys of a [`list_bytes`] record; `None` when it is damaged.
fn listed(bytes: &[u8]) -> Option<(u64, Vec<Vec<u8>>)> {
    let (origin, mut rest) = bytes.split_first_chunk::<8>()?;
    let mut keys = Vec::new();
    while !rest.is_empty() {
        let (len, after) = rest.split_first_chunk::<4>()?;
        let (key, after) = after.split_at_checked(u32::from_le_bytes(*len) as usize)?;
        keys.push(key.to_vec());
        rest = after;
    }
    Some((u64::from_be_bytes(*origin), keys))
}

/// Keys in the models tree that remember a forgotten shopper (`ForgetUsers`): this prefix,
/// then the user's key; the value is when they were forgotten (Unix ms, big-endian i64).
/// Events of theirs stamped at or before it are not recorded again
/// ([`RankerStore::unforgotten`]); later ones are (the shopper came back). In the models
/// tree, which builds before them read by name only, so an older build still opens the
/// store; replicas take them as any write.
const FORGOTTEN: &[u8] = b"forgotten/";

fn forgotten_key(user: &UserKey) -> Vec<u8> {
    [FORGOTTEN, user.as_str().as_bytes()].concat()
}

/// The time of a [`FORGOTTEN`] record's value; `None` when it is not 8 bytes.
fn forgotten_at(value: &[u8]) -> Option<i64> {
    <[u8; 8]>::try_from(value).ok().map(i64::from_be_bytes)
}

/// Every [`FORGOTTEN`] record of `models`: who, and when.
fn read_forgotten(models: &sled::Tree) -> Result<HashMap<UserKey, i64>, RankError> {
    let mut forgotten = HashMap::new();
    for entry in models.scan_prefix(FORGOTTEN) {
        let (key, value) = entry.map_err(internal)?;
        let user = String::from_utf8_lossy(&key[FORGOTTEN.len()..]).into_owned();
        let at = forgotten_at(&value)
            .ok_or_else(|| internal(format!("a damaged record of forgotten shopper {user}")))?;
        forgotten.insert(UserKey::from_stored(user), at);
    }
    Ok(forgotten)
}

/// Key in the models tree set once a follower subscribed: a store restarted after a crash
/// keeps its latest writes from its first one for replicas reconnecting.
const FOLLOWED_KEY: &[u8] = b"journal.followed";

/// Key in the models tree naming the history the store's records belong to (8 bytes,
/// big-endian, never 0): drawn the first time the store serves as a primary
/// ([`RankerStore::ensure_lineage`]) and kept from then on, taken by a replica with each
/// whole copy ([`RankerStore::end_sync`]). A store that is a copy of another (a replica's,
/// one restored from a backup) holds the same; an empty store that replaced a lost one
/// draws another. A replica holding a copy refuses to copy a primary of another history
/// over it: a primary restarted on an empty volume would otherwise empty every replica.
const LINEAGE_KEY: &[u8] = b"store.lineage";

/// Key in the models tree naming the histories the store's history continues, newest
/// first, at most [`MAX_ANCESTORS`]: each a lineage (8 bytes) and the number of its last
/// write the store held when it went on as a history of its own (8 bytes, 0: not known),
/// big-endian. A store forks ([`RankerStore::fork`]) when a copy of another starts serving
/// as a primary (a replica promoted, a primary restored from a replica's copy): its
/// numbering of writes is its own from then on, and a replica of the history it continues
/// copies it only when the replica's copy holds no write the fork did not
/// (`replica::follow_once`). Within one lineage the numbering of writes only grows, so a
/// primary whose last write is older than a replica's is a store that lost writes (a
/// backup put back).
const ANCESTORS_KEY: &[u8] = b"store.ancestors";

/// Key in the models tree holding the user-id key check ([`UserHasher::check`]) of the key
/// the store's shoppers are filed under: a ranker started with another key (a lost
/// `user-id.key`, another `--user-id-key`) would find none of their histories, so it refuses
/// to start. The store's own: a replica checks its primary's key on the `Follow` stream.
const USER_KEY_CHECK_KEY: &[u8] = b"store.user-key-check";

/// The most histories [`ANCESTORS_KEY`] names (promotions one after another).
const MAX_ANCESTORS: usize = 16;

/// The keys a store writes for itself: never sent to a follower nor taken from a primary.
fn store_own(tree: TreeName, key: &[u8]) -> bool {
    key.first() == Some(&OWN)
        || tree == TreeName::Models
            && (key == SYNCING_KEY
                || key == POSITION_KEY
                || key == JOURNAL_KEY
                || key == NAMES_KEY
                || key == FOLLOWED_KEY
                || key == LINEAGE_KEY
                || key == ANCESTORS_KEY
                || key == USER_KEY_CHECK_KEY)
}

/// [`ANCESTORS_KEY`]'s value.
fn ancestors_bytes(ancestors: &[(u64, u64)]) -> Vec<u8> {
    ancestors
        .iter()
        .flat_map(|&pair| position_bytes(pair))
        .collect()
}

/// The pairs of an [`ANCESTORS_KEY`] value (a damaged tail is left out).
fn ancestors_from(bytes: &[u8]) -> Vec<(u64, u64)> {
    bytes.chunks_exact(16).filter_map(position_from).collect()
}

/// The two numbers of [`position_bytes`], `None` when `bytes` is not 16 long.
fn position_from(bytes: &[u8]) -> Option<(u64, u64)> {
    let (origin, seq) = bytes.split_first_chunk::<8>()?;
    let seq: [u8; 8] = seq.try_into().ok()?;
    Some((u64::from_be_bytes(*origin), u64::from_be_bytes(seq)))
}

fn position_bytes((origin, seq): (u64, u64)) -> Vec<u8> {
    [origin.to_be_bytes(), seq.to_be_bytes()].concat()
}

/// Key in the models tree that a replica sets while it copies its primary's store: found at
/// start, the copy was cut short and the store holds part of it.
const SYNCING_KEY: &[u8] = b"replica.syncing";

/// How [`RankError`] names a write failed on the disk, for the store's [`WriteLatch`].
const DISK_FAULT: DiskFault<RankError> = DiskFault {
    failure: |error| match error {
        RankError::StoreFailed { message, full } => Some((message, *full)),
        _ => None,
    },
    refusal: |message, full| RankError::StoreFailed { message, full },
};

fn internal(e: impl Fault) -> RankError {
    e.into_error()
}

/// A sled error of a tree of this store (the outboxes'), as [`RankError`]: an IO error is
/// [`RankError::StoreFailed`], for the store's [`WriteLatch`].
pub(crate) fn sled_error(e: sled::Error) -> RankError {
    e.into_error()
}

/// What failed in the store, as a [`RankError`]: an IO error of sled is
/// [`RankError::StoreFailed`] (see [`RankerStore::writable`]), the rest `Internal`.
trait Fault {
    fn into_error(self) -> RankError;
}

impl Fault for sled::Error {
    fn into_error(self) -> RankError {
        match self {
            sled::Error::Io(io) => {
                let (message, full) = souk_shared::storage::io_failure(&io);
                RankError::StoreFailed { message, full }
            }
            other => RankError::Internal(format!("ranker store: {other}")),
        }
    }
}

/// Errors that are never the disk's: `Internal`.
macro_rules! internal_faults {
    ($($t:ty),*) => {$(
        impl Fault for $t {
            fn into_error(self) -> RankError {
                RankError::Internal(format!("ranker store: {self}"))
            }
        }
    )*};
}
internal_faults!(String, &str, serde_json::Error);

/// The stored form of a [`TrainedCf`]. Records written before factor models existed have no
/// `factors` and read as they did.
#[derive(serde::Serialize, serde::Deserialize)]
struct CfRecord {
    version: String,
    algorithm: String,
    users: usize,
    neighbours: HashMap<String, Vec<(String, f32)>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    factors: Option<FactorRecord>,
}

/// A factor model's items (in row order) and settings; its vectors are `CF_VECTORS`.
#[derive(serde::Serialize, serde::Deserialize)]
struct FactorRecord {
    items: Vec<String>,
    dim: usize,
    reg: f64,
    unobserved: f64,
}

const CF_VECTORS: &str = "cf.vectors";

/// Key of the probe text's vector in the catalog tree (no item key is one byte long).
const PROBE_KEY: &[u8] = b"p";

/// The text whose vector identifies the encoder's model (see [`RankerStore::probe`]): a
/// shop query, a product title and non-English words, so that two models agreeing on it
/// agree on the vector space.
pub const PROBE_TEXT: &str =
    "souk probe: waterproof hiking boots for men, Brewcraft espresso machine 15 bar, 蓝牙耳机";

/// The saved HNSW graph, in the store's directory.
const ANN_FILE: &str = "hnsw.graph";

/// What [`RankerStore::ann_saved`] says while `hnsw.graph` holds no graph of the served
/// catalog (before its first save, or after a start or a copy that built the graph).
pub const ANN_NOT_SAVED: u64 = u64::MAX;

/// A stored item and its vector.
pub type Embedded = (Item, Vec<f32>);

/// Little-endian f32s, how vectors are stored (item vectors, a factor model's vectors).
fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The f32s of [`f32_bytes`] (a trailing partial value is dropped: callers check the length).
fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// A write as its key list tells it: its tree, the origin that numbered it, its keys.
type Listed = (TreeName, u64, Vec<Vec<u8>>);

/// `writes` as one sled batch.
fn batch<'a>(writes: impl IntoIterator<Item = &'a Write>) -> sled::Batch {
    let mut batch = sled::Batch::default();
    for (key, value) in writes {
        match value {
            Some(value) => batch.insert(key.as_slice(), value.as_slice()),
            None => batch.remove(key.as_slice()),
        }
    }
    batch
}

fn key(prefix: u8, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + id.len());
    k.push(prefix);
    k.extend_from_slice(id.as_bytes());
    k
}

/// sled's page cache for the ranker's store. Everything the ranker serves from is in memory
/// already (the catalog is replayed into it at start), so the cache only helps writes and
/// the occasional read; sled's default (1 GiB) kept the pages read by that replay, a second
/// copy of the catalog: 142 MB more RSS at 100k items. 64 MB saved 55 MB more but made a bulk
/// events load ~15% slower (BENCHMARKS.md, "Session 12").
const SLED_CACHE_BYTES: u64 = 128 * 1024 * 1024;

impl RankerStore {
    /// # Errors
    /// When the directory cannot be created or sled cannot open it.
    pub fn open(dir: &Path) -> Result<Self, RankError> {
        std::fs::create_dir_all(dir).map_err(|e| internal(format!("{}: {e}", dir.display())))?;
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(SLED_CACHE_BYTES);
        let db = souk_shared::storage::open_sled(&config)
            .map_err(|e| internal(format!("{}: {e}", dir.display())))?;
        let catalog = db.open_tree("catalog").map_err(internal)?;
        let events = db.open_tree("events").map_err(internal)?;
        let models = db.open_tree("models").map_err(internal)?;
        // Where numbering goes on: the store's last write, by every name it has (its key
        // list's writer, what the last open named, what an earlier version's clean close
        // left).
        let closed = models.remove(JOURNAL_KEY).map_err(internal)?;
        let mut names: Vec<(u64, u64)> = closed
            .as_deref()
            .and_then(|b| position_from(b.get(..16)?))
            .into_iter()
            .collect();
        let named = models.get(NAMES_KEY).map_err(internal)?;
        names.extend(
            named
                .iter()
                .flat_map(|b| b.chunks_exact(16).filter_map(position_from)),
        );
        let listed = last_listed([&catalog, &events, &models])?;
        if let Some((seq, Some(writer))) = listed {
            names.push((writer, seq));
        }
        let start = names
            .iter()
            .map(|&(_, seq)| seq)
            .chain(listed.map(|(seq, _)| seq))
            .max()
            .unwrap_or(0);
        names.retain(|&(_, seq)| seq == start);
        let mut unique = Vec::with_capacity(names.len());
        for name in names {
            if !unique.contains(&name) {
                unique.push(name);
            }
        }
        let names = unique;
        let followed = closed.as_deref().and_then(|b| b.get(16)) == Some(&1)
            || models.contains_key(FOLLOWED_KEY).map_err(internal)?;
        let journal = Journal::new(start, names, followed);
        let mut named: Vec<u8> = journal
            .continues
            .iter()
            .rev()
            .take(MAX_NAMES - 1)
            .rev()
            .flat_map(|&name| position_bytes(name))
            .collect();
        named.extend(position_bytes((journal.origin, journal.seq)));
        models.insert(NAMES_KEY, named).map_err(internal)?;
        db.flush().map_err(internal)?;
        let forgotten = std::sync::RwLock::new(read_forgotten(&models)?);
        let latch = Arc::new(WriteLatch::new(
            "the ranker's store",
            "rankings are answered from memory",
            dir,
            &db,
            DISK_FAULT,
        ));
        Ok(Self {
            dir: dir.to_path_buf(),
            db,
            catalog,
            events,
            models,
            journal: std::sync::Mutex::new(journal),
            ann_file: std::sync::Mutex::new(ANN_NOT_SAVED),
            popularity_half_life: Some(souk_ranker_core::catalog::POPULARITY_HALF_LIFE_DAYS),
            forgotten,
            print_keys: std::hash::RandomState::new(),
            prints: std::sync::Mutex::new(Prints::default()),
            latch,
        })
    }

    /// The store, building catalogs whose popularity fades with `days` (`None`, 0 or less:
    /// never).
    #[must_use]
    pub fn with_popularity_half_life(mut self, days: Option<f64>) -> Self {
        self.popularity_half_life = days;
        self
    }

    /// A replica's outbox (`crate::outbox`): its own tree, which a copy of the primary's
    /// store neither sends ([`Self::records`]) nor clears ([`Self::begin_sync`]).
    ///
    /// # Errors
    /// When the tree cannot be opened.
    pub fn outbox_tree(&self) -> Result<sled::Tree, RankError> {
        self.db.open_tree("outbox").map_err(internal)
    }

    /// A primary's graph outbox (`crate::graph_outbox`): item fact batches the knowledge
    /// graph has not taken yet. Like [`Self::outbox_tree`], never sent to replicas.
    ///
    /// # Errors
    /// When the tree cannot be opened.
    pub fn graph_outbox_tree(&self) -> Result<sled::Tree, RankError> {
        self.db.open_tree("graph_outbox").map_err(internal)
    }

    fn tree(&self, name: TreeName) -> &sled::Tree {
        match name {
            TreeName::Catalog => &self.catalog,
            TreeName::Events => &self.events,
            TreeName::Models => &self.models,
        }
    }

    /// Refuses a write once one failed on the disk ([`RankError::StoreFailed`]): the store
    /// takes writes again only when the service restarts and sled reopens it.
    ///
    /// # Errors
    /// The failure of the first write that failed.
    pub fn writable(&self) -> Result<(), RankError> {
        self.latch.writable()
    }

    /// What refuses this store's writes once one failed on the disk: shared by the outboxes
    /// ([`Self::outbox_tree`], [`Self::graph_outbox_tree`]), whose trees are this store's.
    pub fn latch(&self) -> Arc<WriteLatch<RankError>> {
        self.latch.clone()
    }

    /// Applies `writes` to `tree` atomically and durably, numbers them and, once flushed,
    /// hands them to the replicas following this store, in the order they were applied.
    /// Refused once a write failed on the disk ([`Self::writable`]).
    fn commit(&self, tree: TreeName, writes: Vec<Write>) -> Result<(), RankError> {
        self.latch.write(|| self.commit_unwatched(tree, writes))
    }

    fn commit_unwatched(&self, tree: TreeName, writes: Vec<Write>) -> Result<(), RankError> {
        let mut batch = batch(&writes);
        let seq = {
            // Applied and numbered under one lock, so replicas see writes in the order the
            // store took them. The flush, the slow part, is outside it.
            let mut journal = self
                .journal
                .lock()
                .map_err(|_| internal("journal lock poisoned"))?;
            if journal.closed {
                return Err(internal("the store is closed"));
            }
            let seq = journal.seq + 1;
            let target = self.tree(tree);
            batch.insert(list_key(seq), list_bytes(journal.origin, &writes));
            // A write drops up to two lists past the window: a tree written rarely still
            // sheds its old ones.
            let lists = target.range(list_key(0)..=list_key(seq.saturating_sub(LISTED_WRITES)));
            for old in lists.keys().take(2) {
                batch.remove(old.map_err(internal)?);
            }
            target.apply_batch(batch).map_err(internal)?;
            journal.push(tree, writes)
        };
        self.db.flush().map_err(internal)?;
        // Writes applied before this one are flushed too (they were applied before the flush
        // began): a flush that returns first hands on the writes of those still in theirs.
        self.journal
            .lock()
            .map_err(|_| internal("journal lock poisoned"))?
            .release(seq);
        Ok(())
    }

    /// Every write from now on, in order, and the number of the last write before them: what
    /// a replica needs besides a copy of the records ([`Self::records`]) and the number of the
    /// last write the copy may miss ([`Self::last_written`], read after it). The writes numbered
    /// from the one returned here + 1 to that last one all come through the receiver.
    ///
    /// `resume`: the origin and last write number of a follower's earlier stream; when this
    /// store kept every write since, they are returned (`missed`) and no copy is needed:
    /// from memory, and for the writes before this open (a restart after a crash), from
    /// their key lists (see [`LISTED_WRITES`]), at most [`RECENT_BYTES`] of them.
    /// From the first call on, the store keeps its latest [`RECENT_BYTES`] of writes.
    ///
    /// # Errors
    /// When the journal's lock is poisoned or the store cannot be read; `StoreFailed` once a
    /// write failed on the disk ([`Self::writable`]): the trees may hold a write refused to
    /// its caller and never flushed, which a follower's copy would keep.
    pub fn subscribe(&self, resume: Option<(u64, u64)>) -> Result<Subscription, RankError> {
        self.writable()?;
        let mut journal = self
            .journal
            .lock()
            .map_err(|_| internal("journal lock poisoned"))?;
        let mut missed = resume.and_then(|(origin, after)| journal.since(origin, after));
        let mut diverged = false;
        if let (None, Some((origin, after))) = (&missed, resume) {
            missed = self.listed_since(&journal, origin, after)?;
            diverged = missed.is_none() && self.names(&journal, (origin, after))? == Some(false);
        }
        if !journal.keep_recent {
            journal.keep_recent = true;
            self.latch
                .write(|| self.models.insert(FOLLOWED_KEY, &[]).map_err(internal))?;
        }
        Ok(Subscription {
            changes: journal.sender.subscribe(),
            seq: journal.sent,
            origin: journal.origin,
            missed,
            diverged,
        })
    }

    /// Whether this store's write numbered `after` is the one a follower's position
    /// `(origin, after)` names: `Some(false)` when its key list says another open numbered
    /// it, `None` when the store holds no write of that number or its list is gone.
    fn names(
        &self,
        journal: &Journal,
        (origin, after): (u64, u64),
    ) -> Result<Option<bool>, RankError> {
        if journal.continues.contains(&(origin, after)) {
            return Ok(Some(true));
        }
        Ok(self.list(after)?.map(|(_, writer, _)| writer == origin))
    }

    /// The writes numbered after `after` (of `origin`) up to the first one the journal keeps
    /// in memory, rebuilt from their key lists with each key's value now, followed by the
    /// journal's; `None` when `(origin, after)` names no write the store holds, a list is
    /// gone or damaged, or they pass [`RECENT_BYTES`]. Read under the journal's lock: writes
    /// wait meanwhile (a resume after a restart, at most [`RECENT_BYTES`] read).
    fn listed_since(
        &self,
        journal: &Journal,
        origin: u64,
        after: u64,
    ) -> Result<Option<Vec<Arc<Change>>>, RankError> {
        let through = journal.kept_after;
        if after >= through || after > journal.sent {
            return Ok(None);
        }
        if self.names(journal, (origin, after))? != Some(true) {
            return Ok(None);
        }
        let (mut missed, mut bytes) = (Vec::new(), 0);
        for seq in after + 1..=through {
            let Some((tree, writer, keys)) = self.list(seq)? else {
                return Ok(None);
            };
            let mut writes = Vec::with_capacity(keys.len());
            for key in keys {
                let value = self.tree(tree).get(&key).map_err(internal)?;
                writes.push((key, value.map(|v| v.to_vec())));
            }
            let change = Change {
                seq,
                origin: writer,
                tree,
                writes,
            };
            bytes += change.bytes();
            if bytes > RECENT_BYTES {
                return Ok(None);
            }
            missed.push(Arc::new(change));
        }
        missed.extend(journal.recent.iter().filter(|c| c.seq > through).cloned());
        Ok(Some(missed))
    }

    /// Write `seq`'s tree, origin (the open that numbered it) and keys, from its key list;
    /// `None` when the list is gone or damaged (as if gone: the follower copies, never an
    /// error it would meet again at each reconnection).
    fn list(&self, seq: u64) -> Result<Option<Listed>, RankError> {
        for tree in [TreeName::Catalog, TreeName::Events, TreeName::Models] {
            if let Some(bytes) = self.tree(tree).get(list_key(seq)).map_err(internal)? {
                let listed = listed(&bytes).map(|(origin, keys)| (tree, origin, keys));
                if listed.is_none() {
                    tracing::warn!(seq, "a write's key list is damaged: a follower copies");
                }
                return Ok(listed);
            }
        }
        Ok(None)
    }

    /// Readies the store for a build before session 25, which reads the trees' own records of
    /// this one (the key lists) as damaged items and events: removes them and
    /// the journal's keys in models, and leaves that build's clean-stop record
    /// ([`JOURNAL_KEY`]) naming the last write by its writer, so replicas holding it resume
    /// under the older build too. Returns how many records it removed. Run on a stopped
    /// store; nothing else changes.
    ///
    /// # Errors
    /// When the store cannot be read or written.
    pub fn prepare_downgrade(&self) -> Result<usize, RankError> {
        let last = self.last_written()?;
        let mut removed = 0;
        for tree in [&self.catalog, &self.events, &self.models] {
            let mut batch = sled::Batch::default();
            for key in tree.scan_prefix([OWN]).keys() {
                batch.remove(key.map_err(internal)?);
                removed += 1;
            }
            tree.apply_batch(batch).map_err(internal)?;
        }
        for key in [NAMES_KEY, FOLLOWED_KEY] {
            removed += usize::from(self.models.remove(key).map_err(internal)?.is_some());
        }
        if last.1 > 0 {
            let followed = self.journal.lock().is_ok_and(|j| j.keep_recent);
            let record = [position_bytes(last), vec![u8::from(followed)]].concat();
            self.models.insert(JOURNAL_KEY, record).map_err(internal)?;
        }
        self.db.flush().map_err(internal)?;
        Ok(removed)
    }

    /// Closes the store for writes, flushed. Called once the server has stopped; a write
    /// after it is an error. (Where the journal stands is in the store with every write, so a
    /// crash lets replicas resume as a clean stop does: see [`LISTED_WRITES`].)
    ///
    /// # Errors
    /// When the journal's lock is poisoned or the store cannot be written.
    pub fn close(&self) -> Result<(), RankError> {
        let mut journal = self
            .journal
            .lock()
            .map_err(|_| internal("journal lock poisoned"))?;
        if journal.closed {
            return Ok(());
        }
        journal.closed = true;
        // Not after a write failed on the disk: sled's flush may then wait forever (and
        // every write since was refused).
        self.latch.write(|| self.db.flush().map_err(internal))?;
        let last = journal.seq;
        journal.release(last);
        Ok(())
    }

    /// The store's last write, named by the open that numbered it: (origin, number). Before
    /// this open's first write that is an earlier open's, whose name every later open still
    /// knows by the write's key list (this open's own name for it, only until the next open
    /// after a write): a replica's copy takes it for its position.
    ///
    /// # Errors
    /// When the journal's lock is poisoned or the store cannot be read.
    pub fn last_written(&self) -> Result<(u64, u64), RankError> {
        let journal = self
            .journal
            .lock()
            .map_err(|_| internal("journal lock poisoned"))?;
        if journal.seq == journal.start
            && let Some((_, writer, _)) = self.list(journal.seq)?
        {
            return Ok((writer, journal.seq));
        }
        Ok((journal.origin, journal.seq))
    }

    /// Every record of the store, tree by tree (each tree read as it is while it is read:
    /// writes meanwhile are seen or not, and a replica applies them again after the copy).
    pub fn records(&self) -> impl Iterator<Item = Result<(TreeName, Write), RankError>> + '_ {
        [TreeName::Catalog, TreeName::Events, TreeName::Models]
            .into_iter()
            .flat_map(move |name| {
                self.tree(name).iter().map(move |entry| {
                    entry
                        .map(|(k, v)| (name, (k.to_vec(), Some(v.to_vec()))))
                        .map_err(internal)
                })
            })
            .filter(|r| !matches!(r, Ok((tree, (key, _))) if store_own(*tree, key)))
    }

    /// A replica's first step of a copy of its primary's store: marks the store as mid-copy
    /// (see [`Self::mid_sync`]), then empties it and removes the saved HNSW graph.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub fn begin_sync(&self) -> Result<(), RankError> {
        self.latch.write(|| {
            self.models.insert(SYNCING_KEY, &[]).map_err(internal)?;
            self.db.flush().map_err(internal)?;
            self.catalog.clear().map_err(internal)?;
            self.events.clear().map_err(internal)?;
            for key in self.models.iter().keys() {
                let key = key.map_err(internal)?;
                if key != SYNCING_KEY && key != USER_KEY_CHECK_KEY {
                    self.models.remove(key).map_err(internal)?;
                }
            }
            Ok(())
        })?;
        self.forgotten
            .write()
            .map_err(|_| internal("forgotten shoppers' lock poisoned"))?
            .clear();
        match std::fs::remove_file(self.ann_path()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(internal(format!("{}: {e}", self.ann_path().display())));
            }
            _ => {}
        }
        Ok(())
    }

    /// Stores records copied from a primary as they are (a snapshot's or a live write's),
    /// atomically per tree; not handed on to replicas of this store.
    ///
    /// # Errors
    /// When the write fails.
    pub fn apply(&self, tree: TreeName, writes: &[Write]) -> Result<(), RankError> {
        let batch = batch(writes.iter().filter(|(key, _)| !store_own(tree, key)));
        self.latch
            .write(|| self.tree(tree).apply_batch(batch).map_err(internal))?;
        self.note_forgotten(tree, writes)
    }

    /// Stores a live write copied from a primary ([`Self::apply`]) and, in the same atomic
    /// step, `position`: the primary's origin and the write's number (see [`Self::position`]).
    ///
    /// # Errors
    /// When the write fails.
    pub fn apply_at(
        &self,
        tree: TreeName,
        writes: &[Write],
        position: (u64, u64),
    ) -> Result<(), RankError> {
        use sled::Transactional;
        use sled::transaction::{ConflictableTransactionError, TransactionError};
        let mut batch = batch(writes.iter().filter(|(key, _)| !store_own(tree, key)));
        if tree == TreeName::Models {
            batch.insert(POSITION_KEY, position_bytes(position));
            self.latch
                .write(|| self.models.apply_batch(batch).map_err(internal))?;
            return self.note_forgotten(tree, writes);
        }
        let position = position_bytes(position);
        self.latch.write(|| {
            (self.tree(tree), &self.models)
                .transaction(|(written, models)| {
                    written.apply_batch(&batch)?;
                    models.insert(POSITION_KEY, position.as_slice())?;
                    Ok::<_, ConflictableTransactionError<()>>(())
                })
                .map_err(|e| match e {
                    TransactionError::Storage(e) => internal(e),
                    TransactionError::Abort(()) => internal("a live write's transaction aborted"),
                })
        })
    }

    /// The copy from the primary is whole, as of `position` (the primary's origin and the
    /// number of its last write in the copy): the mark of [`Self::begin_sync`] is replaced by
    /// it, the primary's `lineage` (0: a primary too old to name one) and `ancestors` kept
    /// (see [`Self::ancestors`]), and the store flushed.
    ///
    /// # Errors
    /// When the write fails.
    pub fn end_sync(
        &self,
        position: (u64, u64),
        lineage: u64,
        ancestors: &[(u64, u64)],
    ) -> Result<(), RankError> {
        let mut batch = sled::Batch::default();
        batch.remove(SYNCING_KEY);
        batch.insert(POSITION_KEY, position_bytes(position));
        if lineage != 0 {
            batch.insert(LINEAGE_KEY, &lineage.to_be_bytes());
        }
        if !ancestors.is_empty() {
            batch.insert(ANCESTORS_KEY, ancestors_bytes(ancestors));
        }
        self.latch.write(|| {
            self.models.apply_batch(batch).map_err(internal)?;
            self.db.flush().map_err(internal)?;
            Ok(())
        })
    }

    /// Where a replica's copy stands: its primary's origin and the number of the last write
    /// of it the store holds (every earlier one, and no later one); `None` when the store
    /// holds no whole copy, or the replica forgot it ([`Self::forget_position`]).
    ///
    /// # Errors
    /// When the store cannot be read.
    pub fn position(&self) -> Result<Option<(u64, u64)>, RankError> {
        if self.mid_sync()? {
            return Ok(None);
        }
        let value = self.models.get(POSITION_KEY).map_err(internal)?;
        Ok(value.as_deref().and_then(position_from))
    }

    /// Whether the store holds any item.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub fn holds_items(&self) -> Result<bool, RankError> {
        Ok(self
            .catalog
            .scan_prefix([b'i'])
            .next()
            .transpose()
            .map_err(internal)?
            .is_some())
    }

    /// Every stored event, in the order they were stored (for a store of few: a primary's
    /// that is about to be restored from a replica, see `replica::restore`).
    ///
    /// # Errors
    /// When the store cannot be read or an event does not decode.
    pub fn stored_events(&self) -> Result<Vec<Interaction>, RankError> {
        let mut events = Vec::new();
        for entry in self.events.iter() {
            let (key, value) = entry.map_err(internal)?;
            if key.first() == Some(&OWN) {
                continue;
            }
            events.push(serde_json::from_slice::<Interaction>(&value).map_err(internal)?);
        }
        Ok(events)
    }

    /// The history the store's records belong to (see [`LINEAGE_KEY`]); `None` for a store
    /// that never served as a primary nor holds a whole copy taken by this version.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub fn lineage(&self) -> Result<Option<u64>, RankError> {
        let value = self.models.get(LINEAGE_KEY).map_err(internal)?;
        Ok(value
            .as_deref()
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .filter(|&l| l != 0))
    }

    /// The store's lineage ([`Self::lineage`]), drawn and stored (flushed) when it has none:
    /// a primary's, at its start.
    ///
    /// # Errors
    /// When the store cannot be read or written.
    pub fn ensure_lineage(&self) -> Result<u64, RankError> {
        if let Some(lineage) = self.lineage()? {
            return Ok(lineage);
        }
        let lineage = draw_origin();
        self.set_lineage(lineage)?;
        Ok(lineage)
    }

    /// The histories the store's history continues, newest first: (lineage, the number of
    /// its last write the store held when it forked; 0: not known). See [`ANCESTORS_KEY`].
    ///
    /// # Errors
    /// When the store cannot be read.
    pub fn ancestors(&self) -> Result<Vec<(u64, u64)>, RankError> {
        let value = self.models.get(ANCESTORS_KEY).map_err(internal)?;
        Ok(value.as_deref().map(ancestors_from).unwrap_or_default())
    }

    /// The lineage a primary serves its store under, at its start: the store's own
    /// ([`Self::ensure_lineage`]), unless the store is a replica's whole copy, which then
    /// forks ([`Self::fork`]) at the primary's write it holds last. A copy that numbered
    /// writes of its own already served as a primary (started so by a build before session
    /// 38, which kept the position): its replicas copied it under its lineage, which it
    /// keeps; the position goes.
    ///
    /// # Errors
    /// When the store cannot be read or written.
    pub fn lineage_as_primary(&self) -> Result<u64, RankError> {
        let Some((_, through)) = self.position()? else {
            return self.ensure_lineage();
        };
        // A copy empties the store's key lists, and a replica numbers none of its own.
        if self.last_written()?.1 == 0 {
            return self.fork(through);
        }
        self.forget_position()?;
        self.ensure_lineage()
    }

    /// Starts a history of the store's own, continuing its lineage from its write numbered
    /// `through` (in that lineage's numbering; 0: not known): a copy of another store about
    /// to serve as a primary, whose numbering of writes is its own. The store's lineage goes
    /// first among its ancestors, a new one is drawn, and the position of a replica's copy
    /// is dropped (a primary follows no one), in one flushed step. A store naming no lineage
    /// draws one ([`Self::ensure_lineage`]).
    ///
    /// # Errors
    /// When the store cannot be read or written.
    pub fn fork(&self, through: u64) -> Result<u64, RankError> {
        let Some(lineage) = self.lineage()? else {
            self.forget_position()?;
            return self.ensure_lineage();
        };
        let mut ancestors = vec![(lineage, through)];
        ancestors.extend(self.ancestors()?);
        ancestors.truncate(MAX_ANCESTORS);
        let forked = draw_origin();
        let mut batch = sled::Batch::default();
        batch.insert(LINEAGE_KEY, &forked.to_be_bytes());
        batch.insert(ANCESTORS_KEY, ancestors_bytes(&ancestors));
        batch.remove(POSITION_KEY);
        self.latch.write(|| {
            self.models.apply_batch(batch).map_err(internal)?;
            self.db.flush().map_err(internal)
        })?;
        Ok(forked)
    }

    /// Keeps `lineage` as the store's (a replica that resumed a primary naming one: its
    /// copy, taken before this version, belongs to that history).
    ///
    /// # Errors
    /// When the write fails.
    pub fn set_lineage(&self, lineage: u64) -> Result<(), RankError> {
        self.latch.write(|| {
            self.models
                .insert(LINEAGE_KEY, &lineage.to_be_bytes())
                .map_err(internal)?;
            self.db.flush().map_err(internal)?;
            Ok(())
        })
    }

    /// Drops the position ([`Self::position`]): the next connection copies the whole store
    /// (after a write the store took and the served catalog did not).
    ///
    /// # Errors
    /// When the write fails.
    pub fn forget_position(&self) -> Result<(), RankError> {
        self.latch
            .write(|| self.models.remove(POSITION_KEY).map_err(internal))?;
        Ok(())
    }

    /// Whether a copy from a primary began and did not end (the process stopped during it):
    /// the store holds part of the primary's records.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub fn mid_sync(&self) -> Result<bool, RankError> {
        self.models.contains_key(SYNCING_KEY).map_err(internal)
    }

    /// What a live write copied from a primary changes in memory, decoded from the store's
    /// encoding (see [`Decoded`]).
    ///
    /// # Errors
    /// When a record does not decode.
    pub fn decode(tree: TreeName, writes: &[Write]) -> Result<Decoded, RankError> {
        let mut decoded = Decoded::default();
        match tree {
            TreeName::Catalog => {
                let mut items = Vec::new();
                let mut vectors = HashMap::new();
                for (key, value) in writes {
                    if key.as_slice() == PROBE_KEY {
                        decoded.probe = value.as_deref().map(f32s);
                        continue;
                    }
                    let Some((&kind, id)) = key.split_first() else {
                        continue;
                    };
                    let id = String::from_utf8_lossy(id).into_owned();
                    match (kind, value) {
                        (b'i', Some(value)) => {
                            items.push(serde_json::from_slice::<Item>(value).map_err(internal)?)
                        }
                        (b'i', None) => decoded.deleted.push(id),
                        (b'v', Some(value)) => {
                            vectors.insert(id, f32s(value));
                        }
                        _ => {}
                    }
                }
                for item in items {
                    let vector = vectors
                        .remove(&item.id)
                        .ok_or_else(|| internal(format!("item {:?} has no vector", item.id)))?;
                    decoded.upserted.push((item, vector));
                }
                decoded.vectors = vectors;
            }
            TreeName::Events => {
                for (_, value) in writes {
                    if let Some(value) = value {
                        decoded
                            .events
                            .push(serde_json::from_slice(value).map_err(internal)?);
                    }
                }
            }
            TreeName::Models => {
                decoded.models = writes
                    .iter()
                    .map(|(key, _)| String::from_utf8_lossy(key).into_owned())
                    .collect();
            }
        }
        Ok(decoded)
    }

    /// Stores items with their vectors atomically and durably.
    ///
    /// # Errors
    /// When the write fails; then none of the batch is stored.
    pub fn put_items(&self, items: &[(Item, Vec<f32>)]) -> Result<(), RankError> {
        self.put_items_embedded_by(items, None)
    }

    /// [`Self::put_items`], and in the same atomic batch the probe text's vector from the
    /// model that embedded them (see [`Self::probe`]), when `probe` is given.
    ///
    /// # Errors
    /// When the write fails; then none of the batch is stored.
    pub fn put_items_embedded_by(
        &self,
        items: &[(Item, Vec<f32>)],
        probe: Option<&[f32]>,
    ) -> Result<(), RankError> {
        let mut writes = Vec::with_capacity(2 * items.len() + 1);
        for (item, vector) in items {
            writes.push((
                key(b'i', &item.id),
                Some(serde_json::to_vec(item).map_err(internal)?),
            ));
            writes.push((key(b'v', &item.id), Some(f32_bytes(vector))));
            // Stored again, the item is no longer deleted (only then is a removal written:
            // one per item of every load would lengthen each write's key list).
            let deleted = key(b'd', &item.id);
            if self.catalog.contains_key(&deleted).map_err(internal)? {
                writes.push((deleted, None));
            }
        }
        if let Some(probe) = probe {
            writes.push((PROBE_KEY.to_vec(), Some(f32_bytes(probe))));
        }
        self.commit(TreeName::Catalog, writes)
    }

    /// Up to `limit` stored item ids after `after` (empty: from the first), in byte order,
    /// and whether more follow (`ListItemIds`).
    ///
    /// # Errors
    /// When the store cannot be read.
    pub fn item_ids_after(
        &self,
        after: &str,
        limit: usize,
    ) -> Result<(Vec<String>, bool), RankError> {
        use std::ops::Bound;
        let start = key(b'i', after);
        let from = if after.is_empty() {
            Bound::Included(start)
        } else {
            Bound::Excluded(start)
        };
        let mut ids = Vec::with_capacity(limit.min(10_000));
        for record in self.catalog.range((from, Bound::Unbounded)) {
            let (k, _) = record.map_err(internal)?;
            let Some(id) = k.strip_prefix(b"i") else {
                break;
            };
            if ids.len() == limit {
                return Ok((ids, true));
            }
            ids.push(String::from_utf8_lossy(id).into_owned());
        }
        Ok((ids, false))
    }

    /// Each id's stored item and vector, `None` for an id the store lacks (`UpdateItems`).
    ///
    /// # Errors
    /// When the store cannot be read or a stored item does not decode.
    pub fn items_with_vectors(&self, ids: &[String]) -> Result<Vec<Option<Embedded>>, RankError> {
        ids.iter()
            .map(|id| {
                let Some(stored) = self.catalog.get(key(b'i', id)).map_err(internal)? else {
                    return Ok(None);
                };
                let item: Item = serde_json::from_slice(&stored).map_err(internal)?;
                let vector = self.catalog.get(key(b'v', id)).map_err(internal)?;
                Ok(vector.map(|bytes| (item, f32s(&bytes))))
            })
            .collect()
    }

    /// For each `(id, text)`, the stored vector of that item when the stored item's text
    /// ([`Item::text`]) is `text`: the vector the catalog's model gave that very text, so an
    /// upsert that changes only an item's price, stock or attributes need not embed it again.
    /// `None` for a new item, a changed text, or a vector of the wrong size (`dimension`).
    ///
    /// # Errors
    /// When the store cannot be read or a stored item does not decode.
    pub fn vectors_of_same_texts(
        &self,
        texts: &[(String, String)],
        dimension: Option<usize>,
    ) -> Result<Vec<Option<Vec<f32>>>, RankError> {
        texts
            .iter()
            .map(|(id, text)| {
                let Some(stored) = self.catalog.get(key(b'i', id)).map_err(internal)? else {
                    return Ok(None);
                };
                let stored: Item = serde_json::from_slice(&stored).map_err(internal)?;
                if stored.text() != *text {
                    return Ok(None);
                }
                Ok(self
                    .catalog
                    .get(key(b'v', id))
                    .map_err(internal)?
                    .map(|bytes| f32s(&bytes))
                    .filter(|v| Some(v.len()) == dimension))
            })
            .collect()
    }

    /// Every stored item's id and the text the encoder embeds for it ([`Item::text`]: title
    /// and description), by id. The catalog in memory keeps no descriptions (BM25 has
    /// indexed them), so `Reembed` reads its texts here.
    ///
    /// # Errors
    /// When the store cannot be read or an item does not decode.
    pub fn item_texts(&self) -> Result<Vec<(String, String)>, RankError> {
        self.catalog
            .scan_prefix([b'i'])
            .map(|record| {
                let (_, value) = record.map_err(internal)?;
                let item: Item = serde_json::from_slice(&value).map_err(internal)?;
                let text = item.text();
                Ok((item.id, text))
            })
            .collect()
    }

    /// Replaces the stored items' vectors, and the probe's, in one atomic batch (a new
    /// encoder model's: `Reembed`). Ids without a stored item are skipped.
    ///
    /// # Errors
    /// When the write fails; then nothing changed.
    pub fn put_vectors(
        &self,
        vectors: &HashMap<String, Vec<f32>>,
        probe: &[f32],
    ) -> Result<(), RankError> {
        let mut writes = Vec::with_capacity(vectors.len() + 1);
        for (id, vector) in vectors {
            if self.catalog.contains_key(key(b'i', id)).map_err(internal)? {
                writes.push((key(b'v', id), Some(f32_bytes(vector))));
            }
        }
        writes.push((PROBE_KEY.to_vec(), Some(f32_bytes(probe))));
        self.commit(TreeName::Catalog, writes)
    }

    /// The vector the model that embedded the stored items gave [`PROBE_TEXT`]: an
    /// encoder that gives it another one serves another model, whose vectors are not
    /// comparable with the catalog's. `None`: no item was stored with one (an empty store, or
    /// one written before the check existed).
    ///
    /// # Errors
    /// When the store cannot be read.
    pub fn probe(&self) -> Result<Option<Vec<f32>>, RankError> {
        Ok(self
            .catalog
            .get(PROBE_KEY)
            .map_err(internal)?
            .map(|bytes| f32s(&bytes)))
    }

    /// Stores the probe's vector alone (a store written before the check: its items are
    /// taken to be the current model's).
    ///
    /// # Errors
    /// When the write fails.
    pub fn put_probe(&self, probe: &[f32]) -> Result<(), RankError> {
        self.commit(
            TreeName::Catalog,
            vec![(PROBE_KEY.to_vec(), Some(f32_bytes(probe)))],
        )
    }

    /// Deletes items and their vectors, and keeps, in the same write, each deleted item as
    /// the knowledge graph was told of it, without its title and description (see
    /// [`Self::deleted_items`]). Run so that no put of the same ids runs meanwhile (the
    /// ranker's `editing` lock): it reads the items it deletes.
    ///
    /// # Errors
    /// When the store cannot be read or written, or a stored item does not decode.
    pub fn delete_items(&self, ids: &[String]) -> Result<(), RankError> {
        let mut writes = Vec::with_capacity(3 * ids.len());
        for id in ids {
            if let Some(stored) = self.catalog.get(key(b'i', id)).map_err(internal)? {
                let mut item: Item = serde_json::from_slice(&stored).map_err(internal)?;
                item.title.clear();
                item.description.clear();
                writes.push((
                    key(b'd', id),
                    Some(serde_json::to_vec(&item).map_err(internal)?),
                ));
            }
            writes.extend([(key(b'i', id), None), (key(b'v', id), None)]);
        }
        self.commit(TreeName::Catalog, writes)
    }

    /// Each id's item as it was when last deleted, `None` for one never deleted or stored
    /// again since. The graph keeps a deleted item's facts (histories and profiles read
    /// them), so an item loaded again under its id replaces the facts its deleted version
    /// stated, as a load of a stored item replaces its old ones. One record per deleted id
    /// (its brand, category and attributes: ~100-200 bytes), kept as long as the graph
    /// keeps that item's facts.
    ///
    /// # Errors
    /// When the store cannot be read or a record does not decode.
    pub fn deleted_items(&self, ids: &[&str]) -> Result<Vec<Option<Item>>, RankError> {
        ids.iter()
            .map(|id| {
                self.catalog
                    .get(key(b'd', id))
                    .map_err(internal)?
                    .map(|stored| serde_json::from_slice(&stored).map_err(internal))
                    .transpose()
            })
            .collect()
    }

    /// An event's fingerprint: a 64-bit hash of its user, item, kind, value and time.
    pub fn fingerprint(&self, event: &Interaction) -> u64 {
        std::hash::BuildHasher::hash_one(
            &self.print_keys,
            (
                event.user.as_str(),
                event.item_id.as_str(),
                event.kind as u8,
                event.value.to_bits(),
                event.timestamp_ms,
            ),
        )
    }

    fn prints(&self) -> Result<std::sync::MutexGuard<'_, Prints>, RankError> {
        self.prints
            .lock()
            .map_err(|_| internal("event fingerprints' lock poisoned"))
    }

    /// Stores the new events of a batch, durably, in one write: not those of forgotten
    /// shoppers stamped until their forget ([`Self::unforgotten`]), nor an event identical
    /// (same user, item, kind, value and millisecond: [`Self::fingerprint`]) to one stored
    /// already or by a batch in flight (a file loaded again, a delivery repeated), so that
    /// sending the same events twice stores them once. Identical events within the batch
    /// are each stored: the sender said there were two.
    ///
    /// # Errors
    /// When the write fails: then nothing of the batch is stored.
    pub fn record(&self, mut events: Vec<Interaction>) -> Result<Recorded, RankError> {
        let forgotten = self.unforgotten(&mut events)?;
        let before = events.len();
        let printed: Vec<(Interaction, u64)> = events
            .into_iter()
            .map(|event| {
                let print = self.fingerprint(&event);
                (event, print)
            })
            .collect();
        let (events, prints): (Vec<Interaction>, Vec<u64>) = {
            let mut stored = self.prints()?;
            let new: (Vec<_>, Vec<_>) = printed
                .into_iter()
                .filter(|(_, print)| !stored.contains(print))
                .unzip();
            // Taken now, so that a batch in flight beside this one finds them.
            stored.extend(&new.1);
            new
        };
        let duplicates = (before - events.len()) as u64;
        if !events.is_empty()
            && let Err(error) = self.append_events(&events)
        {
            let mut stored = self.prints()?;
            for print in &prints {
                stored.remove(print);
            }
            return Err(error);
        }
        Ok(Recorded {
            events,
            forgotten,
            duplicates,
        })
    }

    /// Keeps the fingerprints with events a primary stored (`stored`) or removed, applied
    /// on a replica.
    ///
    /// # Errors
    /// When the fingerprints' lock is poisoned.
    pub fn note_events(&self, events: &[Interaction], stored: bool) -> Result<(), RankError> {
        let mut prints = self.prints()?;
        for event in events {
            let print = self.fingerprint(event);
            if stored {
                prints.insert(print);
            } else {
                prints.remove(&print);
            }
        }
        Ok(())
    }

    /// Appends events durably (all of them: [`Self::record`] is what a shop's events go
    /// through).
    ///
    /// # Errors
    /// When the write fails.
    pub fn append_events(&self, events: &[Interaction]) -> Result<(), RankError> {
        self.writable()?;
        let mut writes = Vec::with_capacity(events.len());
        for event in events {
            let seq = self.db.generate_id().map_err(internal)?;
            writes.push((
                seq.to_be_bytes().to_vec(),
                Some(serde_json::to_vec(event).map_err(internal)?),
            ));
        }
        self.commit(TreeName::Events, writes)
    }

    /// A key no stored event passes and every later one does (events are keyed by sled's
    /// monotonic ids): taken while no event is being written, it splits the log in two, the
    /// part before read without holding writers back ([`Self::events_of`]).
    ///
    /// # Errors
    /// When the store cannot number it.
    pub fn event_cut(&self) -> Result<Vec<u8>, RankError> {
        Ok(self
            .db
            .generate_id()
            .map_err(internal)?
            .to_be_bytes()
            .to_vec())
    }

    /// The stored events of `users` keyed before `cut` (`before`) or after it, in the order
    /// they were stored, with their keys. Only each event's user is decoded until one
    /// matches.
    ///
    /// # Errors
    /// When the log cannot be read or an event does not decode (as a start would fail on it).
    pub fn events_of(
        &self,
        users: &HashSet<UserKey>,
        cut: &[u8],
        before: bool,
    ) -> Result<Vec<(Vec<u8>, Interaction)>, RankError> {
        /// An event's user alone: the rest of each event is skipped, not decoded.
        #[derive(serde::Deserialize)]
        struct Whose<'a> {
            #[serde(borrow)]
            user: std::borrow::Cow<'a, str>,
        }
        let users: HashSet<&str> = users.iter().map(UserKey::as_str).collect();
        let range = if before {
            self.events.range(..cut)
        } else {
            self.events.range(cut..)
        };
        let mut found = Vec::new();
        for entry in range {
            let (key, value) = entry.map_err(internal)?;
            if key.first() == Some(&OWN) {
                continue;
            }
            let whose: Whose = serde_json::from_slice(&value).map_err(internal)?;
            if users.contains(whose.user.as_ref()) {
                let event = serde_json::from_slice::<Interaction>(&value).map_err(internal)?;
                found.push((key.to_vec(), event));
            }
        }
        Ok(found)
    }

    /// Forgets `users` as of `at_ms` (Unix ms): remembers each of them with that time (a
    /// [`FORGOTTEN`] record, so that [`Self::unforgotten`] turns away their events stamped
    /// until then when they arrive later), then removes the events under `keys` in one
    /// write (none when `keys` is empty); `events` are those events, whose fingerprints go. Followers take both writes as any. The removal is
    /// one atomic write, so a failed call leaves the events and memory as they were (the
    /// records may stay: the call is repeated); its size is the shoppers' events (~12 bytes
    /// each in the message a replica takes: its 512 MB limit holds tens of millions).
    ///
    /// # Errors
    /// When a write fails.
    pub fn forget(
        &self,
        users: &HashSet<UserKey>,
        at_ms: i64,
        keys: Vec<Vec<u8>>,
        events: &[Interaction],
    ) -> Result<(), RankError> {
        let records: Vec<Write> = users
            .iter()
            .map(|user| (forgotten_key(user), Some(at_ms.to_be_bytes().to_vec())))
            .collect();
        // Memory follows the records as on a replica that applies them.
        self.commit(TreeName::Models, records.clone())?;
        self.note_forgotten(TreeName::Models, &records)?;
        if keys.is_empty() {
            return Ok(());
        }
        self.commit(
            TreeName::Events,
            keys.into_iter().map(|k| (k, None)).collect(),
        )?;
        self.note_events(events, false)
    }

    /// Takes out of `events` those of forgotten shoppers stamped at or before their forget
    /// (see [`FORGOTTEN`]): events that were on their way while they were forgotten (a
    /// replica's outbox, a shop's retry) or an old log loaded again. Returns how many it
    /// took out. One lookup per shopper of the batch, none while nobody was ever forgotten.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub fn unforgotten(&self, events: &mut Vec<Interaction>) -> Result<u64, RankError> {
        let forgotten = self
            .forgotten
            .read()
            .map_err(|_| internal("forgotten shoppers' lock poisoned"))?;
        if forgotten.is_empty() {
            return Ok(0);
        }
        let before = events.len();
        events.retain(|e| forgotten.get(&e.user).is_none_or(|&at| e.timestamp_ms > at));
        Ok((before - events.len()) as u64)
    }

    /// Keeps [`Self::forgotten`] as the models tree's [`FORGOTTEN`] records after `writes`
    /// to `tree` (a forget here, or a primary's write or copy applied on a replica).
    fn note_forgotten(&self, tree: TreeName, writes: &[Write]) -> Result<(), RankError> {
        if tree != TreeName::Models || !writes.iter().any(|(k, _)| k.starts_with(FORGOTTEN)) {
            return Ok(());
        }
        let mut forgotten = self
            .forgotten
            .write()
            .map_err(|_| internal("forgotten shoppers' lock poisoned"))?;
        for (key, value) in writes {
            if let Some(user) = key.strip_prefix(FORGOTTEN) {
                let user = UserKey::from_stored(String::from_utf8_lossy(user).into_owned());
                match value.as_deref().and_then(forgotten_at) {
                    Some(at) => forgotten.insert(user, at),
                    None => forgotten.remove(&user),
                };
            }
        }
        Ok(())
    }

    /// The stored events under `keys` (keys of the events tree; those not stored are
    /// skipped), in the order given: what a follower reads before it applies a write that
    /// removes them, to take them out of memory too.
    ///
    /// # Errors
    /// When the store cannot be read or an event does not decode.
    pub fn events_at<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Vec<Interaction>, RankError> {
        let mut events = Vec::new();
        for key in keys {
            if key.first() == Some(&OWN) {
                continue;
            }
            if let Some(value) = self.events.get(key).map_err(internal)? {
                events.push(serde_json::from_slice(&value).map_err(internal)?);
            }
        }
        Ok(events)
    }

    /// Stores the fusion weights in use, durably (replacing the previous ones in one write).
    ///
    /// # Errors
    /// When the write fails; the previous model stays stored.
    pub fn put_fusion(&self, model: &FusionModel) -> Result<(), RankError> {
        self.put_model("fusion", serde_json::to_vec(model).map_err(internal)?)
    }

    /// Stores the trained collaborative filter, durably: its record and a factor model's
    /// vectors in one atomic batch, so a crash keeps the old model or the new one whole.
    ///
    /// # Errors
    /// When the write fails; the previous model stays stored.
    pub fn put_cf(&self, model: &TrainedCf) -> Result<(), RankError> {
        let record = CfRecord {
            version: model.version.clone(),
            algorithm: model.algorithm.clone(),
            users: model.users,
            neighbours: model.neighbours.clone(),
            factors: model.factors.as_ref().map(|f| FactorRecord {
                items: f.items.clone(),
                dim: f.model.dim(),
                reg: f.model.reg(),
                unobserved: f.model.unobserved(),
            }),
        };
        let vectors = model.factors.as_ref().map(|f| f32_bytes(f.model.vectors()));
        self.commit(
            TreeName::Models,
            vec![
                (
                    b"cf".to_vec(),
                    Some(serde_json::to_vec(&record).map_err(internal)?),
                ),
                (CF_VECTORS.as_bytes().to_vec(), vectors),
            ],
        )
    }

    fn put_model(&self, name: &str, bytes: Vec<u8>) -> Result<(), RankError> {
        self.commit(
            TreeName::Models,
            vec![(name.as_bytes().to_vec(), Some(bytes))],
        )
    }

    /// Stores the shop's synonyms, durably (replacing the previous set in one write).
    ///
    /// # Errors
    /// When the write fails; the previous set stays stored.
    pub fn put_synonyms(&self, rules: &[SynonymRule]) -> Result<(), RankError> {
        self.put_model("synonyms", serde_json::to_vec(rules).map_err(internal)?)
    }

    /// The stored synonyms (none when never set).
    ///
    /// # Errors
    /// When the store cannot be read or the record does not decode.
    pub fn synonyms(&self) -> Result<Vec<SynonymRule>, RankError> {
        Ok(self.model("synonyms")?.unwrap_or_default())
    }

    /// Stores the shop's pin rules, durably (replacing the previous set in one write).
    ///
    /// # Errors
    /// When the write fails; the previous set stays stored.
    pub fn put_pins(&self, rules: &[PinRule]) -> Result<(), RankError> {
        self.put_model("pins", serde_json::to_vec(rules).map_err(internal)?)
    }

    /// The stored pin rules (none when never set).
    ///
    /// # Errors
    /// When the store cannot be read or the record does not decode.
    pub fn pins(&self) -> Result<Vec<PinRule>, RankError> {
        Ok(self.model("pins")?.unwrap_or_default())
    }

    /// The stored fusion weights, if any were set.
    ///
    /// # Errors
    /// When the store cannot be read or the record does not decode.
    pub fn fusion(&self) -> Result<Option<FusionModel>, RankError> {
        self.model("fusion")
    }

    /// The stored collaborative filter, if one was trained.
    ///
    /// # Errors
    /// When the store cannot be read, the record does not decode, or a factor model's vectors
    /// are missing or do not match its record (a damaged model is refused, not served).
    pub fn cf(&self) -> Result<Option<TrainedCf>, RankError> {
        let Some(record) = self.model::<CfRecord>("cf")? else {
            return Ok(None);
        };
        let factors = match record.factors {
            None => None,
            Some(f) => {
                let damaged =
                    |why: String| internal(format!("stored CF model {}: {why}", record.version));
                let bytes = self
                    .models
                    .get(CF_VECTORS)
                    .map_err(internal)?
                    .ok_or_else(|| damaged("its vectors are missing".into()))?;
                if bytes.len() != f.items.len() * f.dim * 4 {
                    return Err(damaged(format!(
                        "{} bytes of vectors for {} items of {}",
                        bytes.len(),
                        f.items.len(),
                        f.dim
                    )));
                }
                let model = FoldIn::new(f32s(&bytes), f.dim, f.reg, f.unobserved)
                    .map_err(|e| damaged(e.to_string()))?;
                Some(ItemFactors {
                    items: f.items,
                    model,
                })
            }
        };
        Ok(Some(TrainedCf {
            version: record.version,
            algorithm: record.algorithm,
            users: record.users,
            neighbours: record.neighbours,
            factors,
        }))
    }

    fn model<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<Option<T>, RankError> {
        self.models
            .get(name)
            .map_err(internal)?
            .map(|bytes| serde_json::from_slice(&bytes).map_err(internal))
            .transpose()
    }

    fn ann_path(&self) -> PathBuf {
        self.dir.join(ANN_FILE)
    }

    /// Serialises saves of the HNSW graph (they share one temporary file) with a replica's
    /// take of a copy (which writes its primary's graph and reads it back): the graph of the
    /// catalog served before a copy is never written between the two. The guard holds the
    /// served catalog's `ann_changes()` that the file holds, for the holder to set.
    ///
    /// # Errors
    /// When the lock is poisoned.
    pub fn lock_ann_file(&self) -> Result<std::sync::MutexGuard<'_, u64>, RankError> {
        self.ann_file
            .lock()
            .map_err(|_| internal("graph file lock poisoned"))
    }

    /// The served catalog's `ann_changes()` that `hnsw.graph` holds ([`ANN_NOT_SAVED`]:
    /// none); `None` while the file is written or read back.
    pub fn ann_saved(&self) -> Option<u64> {
        self.ann_file.try_lock().ok().map(|saved| *saved)
    }

    /// Writes the HNSW graph's bytes ([`Catalog::ann_snapshot`]) durably: to a temporary
    /// file, synced, renamed over the previous one, and the directory synced, so that a crash
    /// leaves the old graph or the new one, never half of one.
    ///
    /// # Errors
    /// When the file cannot be written; the previous one stays, and what was written of the
    /// new one is removed (a graph of a large catalog, left half written on a full disk,
    /// would keep it full for the store's own writes).
    pub fn save_ann(&self, bytes: &[u8]) -> Result<(), RankError> {
        let path = self.ann_path();
        let failed = |e: std::io::Error| internal(format!("{}: {e}", path.display()));
        let tmp = self.dir.join(format!("{ANN_FILE}.tmp"));
        let written = std::fs::File::create(&tmp).and_then(|mut file| {
            use std::io::Write;
            file.write_all(bytes)?;
            file.sync_all()
        });
        if let Err(error) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(failed(error));
        }
        std::fs::rename(&tmp, &path).map_err(failed)?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(failed)
    }

    /// Rebuilds the in-memory catalog: items with vectors, then every event in order; then
    /// the HNSW graph (from `ann_min_items` items): the saved one when it is there and sound
    /// (items it lacks are added to it), else built on all cores. A saved graph that cannot
    /// be used is logged and rebuilt, never an error: it holds nothing the items do not.
    ///
    /// Also returns whether the catalog's graph is the saved file's, unchanged (nothing to save).
    ///
    /// # Errors
    /// When the store cannot be read or a record does not decode.
    pub fn load(&self, ann_min_items: usize) -> Result<(Catalog, bool), RankError> {
        let started = std::time::Instant::now();
        let mut catalog = Catalog::default();
        catalog.set_ann_min_items(usize::MAX);
        catalog.set_popularity_half_life(self.popularity_half_life);
        for entry in self.catalog.scan_prefix([b'i']) {
            let (k, v) = entry.map_err(internal)?;
            let item: Item = serde_json::from_slice(&v).map_err(internal)?;
            let mut vector_key = k.to_vec();
            vector_key[0] = b'v';
            let vector_bytes = self
                .catalog
                .get(vector_key)
                .map_err(internal)?
                .ok_or_else(|| internal(format!("item {:?} has no vector", item.id)))?;
            catalog.upsert(item, f32s(&vector_bytes))?;
        }
        let items_done = started.elapsed();
        self.replay_events(&mut catalog)?;
        let events_done = started.elapsed();
        let mut as_saved = false;
        if catalog.len() >= ann_min_items {
            as_saved = self.restore_ann(&mut catalog);
        }
        let before = catalog.ann_changes();
        catalog.set_ann_min_items(ann_min_items);
        let as_saved = as_saved && catalog.ann_changes() == before;
        tracing::info!(
            items = catalog.len(),
            events = catalog.interactions(),
            items_seconds = items_done.as_secs_f64(),
            events_seconds = (events_done - items_done).as_secs_f64(),
            graph_seconds = (started.elapsed() - events_done).as_secs_f64(),
            "catalog rebuilt from the store"
        );
        Ok((catalog, as_saved))
    }

    /// Replays the stored log into `catalog`, in order. A second thread reads and decodes the
    /// log while this one records it (reading and decoding were a fifth of a replay).
    fn replay_events(&self, catalog: &mut Catalog) -> Result<(), RankError> {
        /// Events decoded per message between the two threads.
        const BATCH: usize = 4096;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<Interaction>, RankError>>(4);
        let prints = std::thread::scope(|scope| {
            // The reader also takes each event's fingerprint, off the recording thread.
            let reader = scope.spawn(move || {
                let mut prints = Prints::default();
                let mut batch = Vec::with_capacity(BATCH);
                for entry in self.events.iter() {
                    if matches!(&entry, Ok((key, _)) if key.first() == Some(&OWN)) {
                        continue;
                    }
                    let event = entry.map_err(internal).and_then(|(_, v)| {
                        serde_json::from_slice::<Interaction>(&v).map_err(internal)
                    });
                    match event {
                        Ok(event) => {
                            prints.insert(self.fingerprint(&event));
                            batch.push(event);
                        }
                        Err(error) => {
                            let _ = tx.send(Err(error));
                            return prints;
                        }
                    }
                    if batch.len() == BATCH
                        && tx
                            .send(Ok(std::mem::replace(&mut batch, Vec::with_capacity(BATCH))))
                            .is_err()
                    {
                        return prints;
                    }
                }
                let _ = tx.send(Ok(batch));
                prints
            });
            let mut failed = None;
            // An error ends the replay and drops `rx` with the iterator: the reader's next
            // send fails and it stops.
            let events = rx
                .into_iter()
                .map_while(|batch| batch.map_err(|error| failed = Some(error)).ok())
                .flatten();
            catalog.replay(events);
            let prints = reader
                .join()
                .map_err(|_| internal("the log's reader panicked"))?;
            failed.map_or(Ok(prints), Err)
        })?;
        *self.prints()? = prints;
        Ok(())
    }

    /// The catalog as it is served: [`Self::load`], with the trained collaborative filter
    /// and the shop's synonyms and pins set on it. What a start serves, and a replica's copy. With it,
    /// what `hnsw.graph` holds of it, for the caller to set under [`Self::lock_ann_file`]: its
    /// `ann_changes()` when the graph was read back as saved, else [`ANN_NOT_SAVED`].
    ///
    /// # Errors
    /// As [`Self::load`] and [`Self::cf`].
    pub fn served_catalog(&self, ann_min_items: usize) -> Result<(Catalog, u64), RankError> {
        let (mut catalog, as_saved) = self.load(ann_min_items)?;
        catalog.set_trained_cf(self.cf()?.map(std::sync::Arc::new));
        if let Some(synonyms) = self.usable_synonyms() {
            catalog.set_synonyms(std::sync::Arc::new(synonyms));
        }
        if let Some(pins) = self.usable_pins() {
            catalog.set_pins(std::sync::Arc::new(pins));
        }
        let saved = if as_saved {
            catalog.ann_changes()
        } else {
            ANN_NOT_SAVED
        };
        Ok((catalog, saved))
    }

    /// The stored synonyms, checked. They passed the same check when they were set; a set
    /// failing it now (a limit lowered since) or a damaged record is logged, left stored and
    /// `None`: search runs without synonyms rather than the ranker not starting.
    pub fn usable_synonyms(&self) -> Option<Synonyms> {
        usable("synonyms", self.synonyms().map(Synonyms::new))
    }

    /// The stored pin rules, checked, as [`Self::usable_synonyms`]: search runs without
    /// pins rather than the ranker not starting.
    pub fn usable_pins(&self) -> Option<Pins> {
        usable("pins", self.pins().map(Pins::new))
    }

    /// Takes the saved graph into `catalog` when it can; true when it was taken as it is.
    fn restore_ann(&self, catalog: &mut Catalog) -> bool {
        let path = self.ann_path();
        let started = std::time::Instant::now();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return false,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the saved HNSW graph; building one");
                return false;
            }
        };
        match catalog.restore_ann(&bytes) {
            Ok((decoded, added)) => {
                tracing::info!(
                    points = decoded.points,
                    stale = decoded.stale,
                    added,
                    seconds = started.elapsed().as_secs_f64(),
                    "read the saved HNSW graph"
                );
                decoded.stale == 0 && added == 0
            }
            Err(e) => {
                tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "the saved HNSW graph cannot be used; building one"
                );
                false
            }
        }
    }

    /// The hasher that pseudonymises user ids: keyed by `given` (`--user-id-key`), else by
    /// the secret in `key_file`, which is drawn at random (owner-only permissions) when the
    /// file is absent or empty and the store files no shopper under a recorded key (a new
    /// store, one written before the check, or one that holds no event yet). A start records
    /// the key's check ([`USER_KEY_CHECK_KEY`]); a later start whose key does not match it is
    /// refused while the store holds shoppers' events (or forgotten shoppers), before anything
    /// is filed under the wrong key. Without them the check is replaced: a replica started
    /// with a wrong key, refused by its primary before it copied anything, starts again with
    /// the right one.
    ///
    /// # Errors
    /// When the key is not the one the store's shoppers are filed under, the key file is
    /// missing for a store that has them, or the store or the file cannot be read or written.
    pub fn user_hasher(
        &self,
        given: Option<&[u8]>,
        key_file: &Path,
    ) -> Result<UserHasher, RankError> {
        let recorded = self.models.get(USER_KEY_CHECK_KEY).map_err(internal)?;
        let secret = match given {
            Some(secret) => secret.to_vec(),
            None => match read_secret(key_file)? {
                Some(secret) => secret,
                None if recorded.is_some() && self.files_shoppers()? => {
                    return Err(RankError::InvalidInput(format!(
                        "{} is missing or empty, and this store's shoppers are filed under the \
                         key it held: put the file back, or pass the key they were stored with \
                         as --user-id-key (SOUK_USER_ID_KEY); a new key would find none of their \
                         histories",
                        key_file.display()
                    )));
                }
                None => create_secret(key_file)?,
            },
        };
        let hasher = UserHasher::new(&secret);
        let check = hasher.check();
        match recorded {
            Some(recorded) if recorded == check.as_str().as_bytes() => Ok(hasher),
            Some(_) if self.files_shoppers()? => {
                let source = match given {
                    Some(_) => "the --user-id-key (SOUK_USER_ID_KEY) given".to_string(),
                    None => format!("the key in {}", key_file.display()),
                };
                Err(RankError::InvalidInput(format!(
                    "{source} is not the key this store's shoppers are filed under: with it, \
                     the ranker would find none of their histories. Start it with the key \
                     they were stored with (the data directory's user-id.key, or \
                     --user-id-key)"
                )))
            }
            replaced => {
                if replaced.is_some() {
                    tracing::info!(
                        "the store holds no shopper yet: its user-id key check now names the \
                         key this start was given"
                    );
                }
                self.latch.write(|| {
                    self.models
                        .insert(USER_KEY_CHECK_KEY, check.as_str().as_bytes())
                        .map_err(internal)?;
                    self.db.flush().map_err(internal)
                })?;
                Ok(hasher)
            }
        }
    }
}

impl RankerStore {
    /// Whether the store holds shoppers' events or forgotten shoppers, all filed under the
    /// user-id key that pseudonymised them.
    fn files_shoppers(&self) -> Result<bool, RankError> {
        let forgotten = self
            .forgotten
            .read()
            .map_err(|_| internal("forgotten shoppers' lock poisoned"))?;
        Ok(!self.events.is_empty() || !forgotten.is_empty())
    }
}

/// The secret in `path`; `None` when the file is absent or empty.
fn read_secret(path: &Path) -> Result<Option<Vec<u8>>, RankError> {
    match std::fs::read(path) {
        Ok(secret) if !secret.is_empty() => Ok(Some(secret)),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(internal(format!("{}: {e}", path.display()))),
    }
}

/// Draws a random secret and writes it to `path` (owner-only permissions), synced.
fn create_secret(path: &Path) -> Result<Vec<u8>, RankError> {
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    use std::io::Write;
    let mut file = options
        .open(path)
        .map_err(|e| internal(format!("{}: {e}", path.display())))?;
    file.write_all(secret.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| internal(format!("{}: {e}", path.display())))?;
    Ok(secret.into_bytes())
}

/// Stored rules (`what`: synonyms, pins) as read and checked: a set failing its check now
/// (a limit lowered since) or a damaged record is logged, left stored and not used.
fn usable<T, E: std::fmt::Display>(what: &str, read: Result<Result<T, E>, RankError>) -> Option<T> {
    match read {
        Ok(Ok(rules)) => Some(rules),
        Ok(Err(error)) => {
            tracing::error!(%error, "stored {what} not used");
            None
        }
        Err(error) => {
            tracing::error!(%error, "stored {what} unreadable, not used");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use souk_ranker_core::cf::{CfAlgorithm, CfOptions, IalsOptions, fit_served};

    fn ials() -> TrainedCf {
        let users: Vec<Vec<String>> = (0..20)
            .map(|u| vec![format!("a{}", u % 3), format!("b{}", u % 4)])
            .collect();
        let options = CfOptions {
            algorithm: CfAlgorithm::Ials,
            ials: IalsOptions {
                dim: 3,
                ..IalsOptions::default()
            },
            ..CfOptions::default()
        };
        fit_served(&users, &options, "ials-1".into()).unwrap()
    }

    fn items(n: usize, seed: u64) -> Vec<(Item, Vec<f32>)> {
        let mut rng = souk_ranker_core::rng::XorShift::new(seed);
        (0..n)
            .map(|i| {
                let item = Item {
                    id: format!("p{i:04}"),
                    title: format!("thing {i}"),
                    description: String::new(),
                    category: vec!["things".into()],
                    brand: String::new(),
                    price: 1.0,
                    attributes: Default::default(),
                    in_stock: true,
                };
                let v: Vec<f32> = (0..8).map(|_| rng.uniform() as f32).collect();
                let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                (item, v.iter().map(|x| x / n).collect())
            })
            .collect()
    }

    /// The catalog a start serves (a graph from the first item), and its graph read back.
    fn served_graph(store: &RankerStore) -> (Catalog, bool, souk_ranker_core::ann::Decoded) {
        let (catalog, as_saved) = store.load(0).unwrap();
        assert!(catalog.uses_ann());
        let (_, decoded) =
            souk_ranker_core::ann::AnnIndex::decode(&catalog.ann_snapshot().unwrap(), |id, _| {
                Some((id[1..].parse().unwrap(), 0))
            })
            .unwrap();
        (catalog, as_saved, decoded)
    }

    /// A deleted item is kept as the graph was told of it (brand, category, attributes, not
    /// its text), through a restart and in the write a follower copies, until it is stored
    /// again; the deleted catalog serves without it, and an id that was not stored leaves
    /// nothing.
    #[test]
    fn a_deleted_item_is_kept_for_the_graph_until_stored_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = RankerStore::open(dir.path()).unwrap();
        let mut stored = items(3, 1);
        stored[1].0.brand = "Acme".into();
        stored[1].0.description = "a long text".into();
        stored[1].0.attributes = [("color".to_string(), "red".to_string())].into();
        store.put_items(&stored).unwrap();
        let mut follower = store.subscribe(None).unwrap().changes;
        store
            .delete_items(&["p0001".to_string(), "never".to_string()])
            .unwrap();
        let copied = follower.try_recv().unwrap();
        assert!(
            copied
                .writes
                .iter()
                .any(|(k, v)| k == b"dp0001" && v.is_some()),
            "a follower copies the deleted item with the delete"
        );
        drop(follower);
        store.close().unwrap();
        drop(store);
        let store = RankerStore::open(dir.path()).unwrap();
        let kept = store.deleted_items(&["p0001", "p0000", "never"]).unwrap();
        let want = Item {
            title: String::new(),
            description: String::new(),
            ..stored[1].0.clone()
        };
        assert_eq!(kept, [Some(want), None, None]);
        let (catalog, _) = store.load(usize::MAX).unwrap();
        assert_eq!(catalog.len(), 2, "the deleted item is not served");
        store.put_items(&stored[1..2]).unwrap();
        assert_eq!(store.deleted_items(&["p0001"]).unwrap(), [None]);
        store.put_items(&stored[1..2]).unwrap();
        let (catalog, _) = store.load(usize::MAX).unwrap();
        assert_eq!(catalog.len(), 3);
    }

    fn event_write(n: u8, bytes: usize) -> Write {
        (vec![n], Some(vec![n; bytes - 1]))
    }

    /// Numbers `write` and hands it on as its flush returned.
    fn flushed(journal: &mut Journal, write: Write) {
        let seq = journal.push(TreeName::Events, vec![write]);
        journal.release(seq);
    }

    /// A write reaches followers only once flushed, in order: writes whose flushes return
    /// out of order (concurrent writers) are handed on with the first flush past them. A
    /// follower handed a write the store then lost to a crash would be ahead of the
    /// restarted primary, and copy the whole store.
    #[test]
    fn a_write_reaches_followers_only_once_flushed() {
        let mut journal = Journal::new(7, Vec::new(), true);
        let mut follower = journal.sender.subscribe();
        let (a, b) = (
            journal.push(TreeName::Events, vec![event_write(1, 10)]),
            journal.push(TreeName::Catalog, vec![event_write(2, 10)]),
        );
        assert_eq!((a, b), (8, 9));
        assert!(follower.try_recv().is_err(), "handed on before its flush");
        assert_eq!(journal.sent, 7);
        assert!(
            journal.since(journal.origin, 8).is_none(),
            "write 8 is not out yet"
        );
        // The second writer's flush returns first: it covers both writes.
        journal.release(b);
        let seqs: Vec<u64> = std::iter::from_fn(|| follower.try_recv().ok())
            .map(|c| c.seq)
            .collect();
        assert_eq!(seqs, vec![8, 9]);
        journal.release(a);
        assert!(follower.try_recv().is_err(), "handed on twice");
        assert_eq!(journal.sent, 9);
        let c = journal.push(TreeName::Events, vec![event_write(3, 10)]);
        assert_eq!(journal.since(journal.origin, 8).map(|m| m.len()), Some(1));
        journal.release(c);
        assert_eq!(follower.try_recv().map(|c| c.seq).ok(), Some(10));
    }

    /// A replica that restarts resumes after its last write when the primary kept every
    /// later one: exactly those, in order; otherwise (another origin, a write the journal
    /// dropped, a number it never reached) it copies the store.
    #[test]
    fn a_follower_resumes_only_while_the_journal_kept_every_later_write() {
        let mut journal = Journal::new(0, Vec::new(), false);
        journal.recent_budget = 1000;
        // Before anyone follows, nothing is kept (a store nobody follows holds no copies).
        flushed(&mut journal, event_write(1, 100));
        assert!(journal.recent.is_empty());
        assert!(journal.since(journal.origin, 0).is_none());
        journal.keep_recent = true;
        for n in 2..=9 {
            flushed(&mut journal, event_write(n, 100));
        }
        let origin = journal.origin;
        let seqs = |journal: &Journal, after| {
            journal
                .since(origin, after)
                .map(|missed| missed.iter().map(|c| c.seq).collect::<Vec<_>>())
        };
        assert_eq!(seqs(&journal, 1), Some((2..=9).collect()));
        assert_eq!(seqs(&journal, 6), Some(vec![7, 8, 9]));
        assert_eq!(seqs(&journal, 9), Some(vec![]));
        assert_eq!(
            seqs(&journal, 0),
            None,
            "write 1 came before anyone followed"
        );
        assert_eq!(
            seqs(&journal, 10),
            None,
            "a number this journal never reached"
        );
        assert!(journal.since(origin ^ 1, 6).is_none(), "another origin");
        // Past its bytes the oldest go: 1,000 bytes hold ten 100-byte writes.
        for n in 10..=14 {
            flushed(&mut journal, event_write(n, 100));
        }
        assert_eq!(journal.recent_bytes, 1000);
        assert_eq!(seqs(&journal, 3), None);
        assert_eq!(seqs(&journal, 4), Some((5..=14).collect()));
        // One write over the budget is handed on but not kept.
        flushed(&mut journal, event_write(15, 2000));
        assert_eq!((journal.recent.len(), journal.recent_bytes), (0, 0));
        assert_eq!(seqs(&journal, 14), None);
        assert_eq!(seqs(&journal, 15), Some(vec![]));
    }

    fn click(user: &str) -> Interaction {
        Interaction {
            user: souk_ranker_core::UserHasher::new(b"k").key(user),
            item_id: "p0001".into(),
            kind: souk_ranker_core::item::InteractionKind::Click,
            value: 1.0,
            timestamp_ms: 1,
        }
    }

    /// `Reembed` embeds what a load embedded, title and description, for every stored item
    /// and only those: the catalog in memory has dropped the descriptions.
    #[test]
    fn item_texts_are_what_a_load_embedded() {
        let dir = tempfile::tempdir().unwrap();
        let store = RankerStore::open(dir.path()).unwrap();
        let mut stored = items(3, 1);
        stored[1].0.description = "Folds flat; holds 2 litres.".into();
        store.put_items(&stored).unwrap();
        store.delete_items(&["p0002".into()]).unwrap();
        let (catalog, _) = store.load(usize::MAX).unwrap();
        assert_eq!(
            catalog.get("p0001").unwrap().description,
            "",
            "not in memory"
        );
        assert_eq!(
            store.item_texts().unwrap(),
            [
                ("p0000".to_string(), "thing 0".to_string()),
                (
                    "p0001".to_string(),
                    "thing 1. Folds flat; holds 2 litres.".to_string()
                ),
            ]
        );
    }

    /// Forgetting shoppers finds their stored events, and only theirs, on both sides of a
    /// cut, and removes them in one write that followers take; a start after it replays the
    /// log without them.
    #[test]
    fn forgetting_users_removes_their_events_and_only_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let store = RankerStore::open(dir.path()).unwrap();
        store
            .append_events(&[click("u1"), click("u2"), click("u1")])
            .unwrap();
        let mut follower = store.subscribe(None).unwrap().changes;
        let gone: HashSet<UserKey> = [click("u1").user].into();
        let cut = store.event_cut().unwrap();
        // Written after the cut: found on its far side only.
        store.append_events(&[click("u2"), click("u1")]).unwrap();
        let before = store.events_of(&gone, &cut, true).unwrap();
        let after = store.events_of(&gone, &cut, false).unwrap();
        assert_eq!((before.len(), after.len()), (2, 1));
        assert!(
            before
                .iter()
                .chain(&after)
                .all(|(_, e)| e.user == click("u1").user)
        );
        assert!(before[1].0 < after[0].0, "in the order stored");
        let keys = before
            .into_iter()
            .chain(after)
            .map(|(key, _)| key)
            .collect();
        follower.try_recv().unwrap();
        store.forget(&gone, 5, keys, &[]).unwrap();
        let change = follower.try_recv().unwrap();
        assert_eq!(change.tree, TreeName::Models, "who was forgotten, and when");
        assert_eq!(change.writes.len(), 1);
        // A replica applying it turns their late events away too (were it made primary).
        let replica_dir = tempfile::tempdir().unwrap();
        let replica = RankerStore::open(replica_dir.path()).unwrap();
        replica
            .apply_at(change.tree, &change.writes, (change.origin, change.seq))
            .unwrap();
        let mut late = vec![click("u1"), click("u2")];
        assert_eq!(replica.unforgotten(&mut late).unwrap(), 1);
        assert_eq!(late, [click("u2")]);
        replica.begin_sync().unwrap();
        let mut late = vec![click("u1")];
        assert_eq!(
            replica.unforgotten(&mut late).unwrap(),
            0,
            "a copy starts empty"
        );
        let change = follower.try_recv().unwrap();
        assert_eq!(change.tree, TreeName::Events);
        assert_eq!(change.writes.len(), 3);
        assert!(change.writes.iter().all(|(_, value)| value.is_none()));
        assert_eq!(
            store
                .events_at(change.writes.iter().map(|(k, _)| k.as_slice()))
                .unwrap()
                .len(),
            0
        );
        assert!(store.events_of(&gone, &cut, true).unwrap().is_empty());
        let nobody: HashSet<UserKey> = [click("u9").user].into();
        store.forget(&nobody, 5, Vec::new(), &[]).unwrap();
        assert_eq!(follower.try_recv().unwrap().tree, TreeName::Models);
        assert!(
            follower.try_recv().is_err(),
            "nothing to remove, no removal"
        );
        drop(follower);
        drop(store);
        let store = RankerStore::open(dir.path()).unwrap();
        let (catalog, _) = store.load(usize::MAX).unwrap();
        assert_eq!((catalog.interactions(), catalog.users()), (2, 1));
        assert!(catalog.history(&click("u1").user).is_empty());
        // Their events stamped up to the forget (time 5) are turned away when they arrive
        // later, after a restart too; later ones and other shoppers' are kept.
        let at = |user: &str, ms: i64| Interaction {
            timestamp_ms: ms,
            ..click(user)
        };
        let mut arriving = vec![at("u1", 1), at("u2", 1), at("u1", 5), at("u1", 6)];
        assert_eq!(store.unforgotten(&mut arriving).unwrap(), 2);
        assert_eq!(arriving, [at("u2", 1), at("u1", 6)]);
    }

    /// Events sent again are stored once, across a restart too; identical events within
    /// one batch are each stored; an event removed by a forget is new again.
    #[test]
    fn an_event_sent_twice_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let at = |user: &str, item: &str, ms: i64| Interaction {
            item_id: item.into(),
            timestamp_ms: ms,
            ..click(user)
        };
        let stored = |store: &RankerStore| store.load(usize::MAX).unwrap().0.interactions();
        {
            let store = RankerStore::open(dir.path()).unwrap();
            let first = store
                .record(vec![at("u1", "a", 10), at("u2", "a", 10)])
                .unwrap();
            assert_eq!((first.events.len(), first.duplicates), (2, 0));
            let again = store
                .record(vec![
                    at("u1", "a", 10),
                    at("u1", "a", 11),
                    at("u1", "b", 10),
                ])
                .unwrap();
            assert_eq!(again.duplicates, 1);
            assert_eq!(again.events, [at("u1", "a", 11), at("u1", "b", 10)]);
            let twice = store
                .record(vec![at("u3", "a", 10), at("u3", "a", 10)])
                .unwrap();
            assert_eq!(
                (twice.events.len(), twice.duplicates),
                (2, 0),
                "the sender said two"
            );
            let rated = Interaction {
                value: 4.0,
                ..at("u1", "a", 10)
            };
            assert_eq!(
                store.record(vec![rated]).unwrap().duplicates,
                0,
                "another value"
            );
            assert_eq!(stored(&store), 7);
        }
        let store = RankerStore::open(dir.path()).unwrap();
        assert_eq!(stored(&store), 7);
        let after_restart = store
            .record(vec![
                at("u1", "a", 10),
                at("u2", "a", 10),
                at("u2", "a", 12),
            ])
            .unwrap();
        assert_eq!(after_restart.duplicates, 2, "the replay took the prints");
        // u2 forgotten as of time 0: their events (at 10 and 12) removed, not turned away.
        let gone: HashSet<UserKey> = [at("u2", "a", 0).user].into();
        let cut = store.event_cut().unwrap();
        let (keys, events): (Vec<_>, Vec<_>) = store
            .events_of(&gone, &cut, true)
            .unwrap()
            .into_iter()
            .unzip();
        assert_eq!(events.len(), 2);
        store.forget(&gone, 0, keys, &events).unwrap();
        let back = store.record(vec![at("u2", "a", 10)]).unwrap();
        assert_eq!((back.events.len(), back.duplicates), (1, 0));
    }

    /// A store where nobody was forgotten keeps every event (and reads no record per event).
    #[test]
    fn no_event_is_turned_away_while_nobody_was_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = RankerStore::open(dir.path()).unwrap();
        let mut arriving = vec![click("u1"), click("u2")];
        assert_eq!(store.unforgotten(&mut arriving).unwrap(), 0);
        assert_eq!(arriving.len(), 2);
    }

    /// The writes a follower missed after `after` of `origin`, by number, or `None` when the
    /// store cannot resume it.
    fn missed(store: &RankerStore, origin: u64, after: u64) -> Option<Vec<u64>> {
        store
            .subscribe(Some((origin, after)))
            .unwrap()
            .missed
            .map(|m| m.iter().map(|c| c.seq).collect())
    }

    /// A primary stopped cleanly numbers on from its last write, so that replicas holding
    /// every write resume after its restart; only those at exactly that point (a backup of
    /// the store restored under replicas that took later writes must not let them resume).
    #[test]
    fn a_store_closed_cleanly_lets_followers_at_its_last_write_resume() {
        let dir = tempfile::tempdir().unwrap();
        let store = RankerStore::open(dir.path()).unwrap();
        let first = store.subscribe(None).unwrap();
        for n in 0..3 {
            store.append_events(&[click(&format!("u{n}"))]).unwrap();
        }
        let origin = first.origin;
        drop(first);
        store.close().unwrap();
        assert!(
            store.append_events(&[click("late")]).is_err(),
            "a write after the close"
        );
        drop(store);
        let store = RankerStore::open(dir.path()).unwrap();
        // A write before the replicas reconnect is kept for them: the store was followed.
        store.append_events(&[click("u3")]).unwrap();
        assert_eq!(missed(&store, origin, 3), Some(vec![4]));
        assert_eq!(
            missed(&store, origin, 2),
            Some(vec![3, 4]),
            "write 3 from its key list"
        );
        let now = store.subscribe(None).unwrap();
        assert_ne!(now.origin, origin, "each open draws a new origin");
        assert_eq!(now.seq, 4);
        store.append_events(&[click("u9")]).unwrap();
        assert_eq!(missed(&store, origin, 3), Some(vec![4, 5]));
        // A store nobody followed keeps nothing after a restart either.
        drop(now);
        drop(store);
        let lone = tempfile::tempdir().unwrap();
        let store = RankerStore::open(lone.path()).unwrap();
        store.append_events(&[click("u1")]).unwrap();
        store.close().unwrap();
        drop(store);
        let store = RankerStore::open(lone.path()).unwrap();
        store.append_events(&[click("u2")]).unwrap();
        assert!(store.journal.lock().unwrap().recent.is_empty());
        assert!(
            store
                .records()
                .all(|r| !matches!(r, Ok((TreeName::Models, _)))),
            "the journal's own keys are never sent to a follower"
        );
        let (catalog, _) = store.load(usize::MAX).unwrap();
        assert_eq!(catalog.interactions(), 2, "the journal's key is no event");
    }

    /// A primary that crashed numbers on from the last write its store kept, as a clean stop
    /// does: a follower at exactly that write resumes, one behind it takes the writes it lacks
    /// from their key lists, one ahead of it (a write the store lost: a backup restored)
    /// copies. The last
    /// write is named by every origin that found it so: a replica that copied from a
    /// restarted primary before its first write holds that primary's origin when the write
    /// has no key list (an earlier build's) or the replica is an earlier build.
    #[test]
    fn a_crashed_store_lets_followers_at_its_last_kept_write_resume() {
        let dir = tempfile::tempdir().unwrap();
        let store = RankerStore::open(dir.path()).unwrap();
        let first = store.subscribe(None).unwrap();
        store.put_items(&items(3, 1)).unwrap();
        store.append_events(&[click("u1")]).unwrap();
        store
            .put_fusion(&souk_ranker_core::rank::FusionModel::default())
            .unwrap();
        let origin = first.origin;
        drop(first);
        drop(store); // no close
        let store = RankerStore::open(dir.path()).unwrap();
        assert_eq!(missed(&store, origin, 3), Some(vec![]));
        assert_eq!(
            missed(&store, origin, 2),
            Some(vec![3]),
            "write 3 from its key list"
        );
        assert_eq!(missed(&store, origin, 4), None, "a write the crash lost");
        // A replica copies from the restarted primary before its first write, then it crashes
        // again: both names of write 3 resume, and the store still keeps writes for them.
        let second = store.subscribe(None).unwrap().origin;
        drop(store);
        let store = RankerStore::open(dir.path()).unwrap();
        assert_eq!(missed(&store, second, 3), Some(vec![]));
        store.append_events(&[click("u2")]).unwrap();
        assert_eq!(missed(&store, origin, 3), Some(vec![4]));
        assert_eq!(missed(&store, second, 3), Some(vec![4]));
        // Writes to any tree number on: the latest of the three trees' keys wins.
        store.delete_items(&["p0000".to_string()]).unwrap();
        let third = store.subscribe(None).unwrap().origin;
        drop(store);
        let store = RankerStore::open(dir.path()).unwrap();
        assert_eq!(missed(&store, third, 5), Some(vec![]));
        assert_eq!(
            missed(&store, third, 4),
            Some(vec![5]),
            "from write 5's list"
        );
        assert_eq!(missed(&store, second, 4), None, "another origin's write 4");
        assert_eq!(store.subscribe(None).unwrap().seq, 5);
        let (catalog, _) = store.load(usize::MAX).unwrap();
        assert_eq!((catalog.len(), catalog.interactions()), (2, 2));
        // Opens without writes add names, at most MAX_NAMES of them.
        drop(store);
        let origins: Vec<u64> = (0..2 * MAX_NAMES)
            .map(|_| {
                let store = RankerStore::open(dir.path()).unwrap();
                store.subscribe(None).unwrap().origin
            })
            .collect();
        let store = RankerStore::open(dir.path()).unwrap();
        assert_eq!(missed(&store, origins[2 * MAX_NAMES - 1], 5), Some(vec![]));
        assert_eq!(missed(&store, origins[0], 5), None, "an old name dropped");
        assert_eq!(
            missed(&store, third, 5),
            Some(vec![]),
            "the writer's name stays"
        );
        let names = store.models.get(NAMES_KEY).unwrap().unwrap();
        assert_eq!(names.len(), 16 * MAX_NAMES);
        // The last write's list damaged: its writer is unknown, its number is not reused.
        store.catalog.insert(list_key(5), &[1, 2][..]).unwrap();
        drop(store);
        let store = RankerStore::open(dir.path()).unwrap();
        assert_eq!(store.subscribe(None).unwrap().seq, 5);
    }

    /// The writes a restarted primary sends from their key lists, and the last write of a
    /// copy before its first own write, carry the name of the open that numbered them: a
    /// follower that kept only some of them (killed before its store flushed the rest)
    /// resumes from there, from the same primary and after the primary's next crash, since
    /// every later open still knows that name by the write's list. The restarted primary's
    /// own name for those numbers is no write's after its first write: a copy.
    #[test]
    fn writes_sent_from_their_lists_keep_the_name_of_their_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store = RankerStore::open(dir.path()).unwrap();
        let first = store.subscribe(None).unwrap().origin;
        for n in 0..4 {
            store.append_events(&[click(&format!("u{n}"))]).unwrap();
        }
        drop(store); // no close
        let store = RankerStore::open(dir.path()).unwrap();
        assert_eq!(
            store.last_written().unwrap(),
            (first, 4),
            "a copy before this open's first write is as of the first open's write 4"
        );
        let resumed = store.subscribe(Some((first, 1))).unwrap();
        let taken = resumed.missed.unwrap();
        assert_eq!(
            taken.iter().map(|c| (c.origin, c.seq)).collect::<Vec<_>>(),
            [(first, 2), (first, 3), (first, 4)]
        );
        store.append_events(&[click("u4")]).unwrap();
        assert_eq!(store.last_written().unwrap(), (resumed.origin, 5));
        // The follower kept write 2 of them: the same primary sends 3 on.
        assert_eq!(missed(&store, first, 2), Some(vec![3, 4, 5]));
        assert_eq!(missed(&store, resumed.origin, 2), None);
        drop(store); // a crash again
        let store = RankerStore::open(dir.path()).unwrap();
        assert_eq!(missed(&store, first, 2), Some(vec![3, 4, 5]));
        assert_eq!(
            missed(&store, first, 4),
            Some(vec![5]),
            "a copy's last write"
        );
        assert_eq!(missed(&store, resumed.origin, 5), Some(vec![]));
        assert_eq!(
            missed(&store, resumed.origin, 2),
            None,
            "write 2 was the first open's"
        );
    }

    /// An older copy of the store (a backup put back) numbers its own writes as the original
    /// numbered later ones: a follower whose last write is one the copy numbered otherwise
    /// is told the two went separate ways; one whose write the copy holds is not (it
    /// resumes), nor one past the copy's last write (nothing to tell by).
    #[test]
    fn a_backup_put_back_tells_a_follower_of_the_original_they_went_separate_ways() {
        let dir = tempfile::tempdir().unwrap();
        let (original, backup) = (dir.path().join("original"), dir.path().join("backup"));
        let store = RankerStore::open(&original).unwrap();
        let first = store.subscribe(None).unwrap().origin;
        for n in 0..3 {
            store.append_events(&[click(&format!("u{n}"))]).unwrap();
        }
        store.close().unwrap();
        drop(store);
        souk_testkit::copy_dir(&original, &backup);
        let store = RankerStore::open(&original).unwrap();
        let later = store.subscribe(None).unwrap().origin;
        store.append_events(&[click("u3")]).unwrap();
        store.append_events(&[click("u4")]).unwrap();
        drop(store);

        let store = RankerStore::open(&backup).unwrap();
        let ahead = store.subscribe(Some((later, 5))).unwrap();
        assert!(
            ahead.missed.is_none() && !ahead.diverged,
            "no write 5 to tell by"
        );
        store.append_events(&[click("v3")]).unwrap();
        store.append_events(&[click("v4")]).unwrap();
        for after in [4, 5] {
            let told = store.subscribe(Some((later, after))).unwrap();
            assert!(told.missed.is_none() && told.diverged, "write {after}");
        }
        let common = store.subscribe(Some((first, 3))).unwrap();
        assert_eq!(common.missed.map(|m| m.len()), Some(2), "resumed");
        assert!(!common.diverged);
        assert!(!store.subscribe(None).unwrap().diverged, "a copy asked for");
    }

    /// A primary restarted after a crash has lost the writes it kept in memory: a follower a
    /// few writes behind its last stored one takes them from their key lists, with each key's
    /// value now, and ends with the primary's records; writes of the new open follow from
    /// memory. Lists past the window are dropped as writes go on.
    #[test]
    fn after_a_crash_a_follower_a_few_writes_behind_takes_them_from_their_lists() {
        let dir = tempfile::tempdir().unwrap();
        let store = RankerStore::open(&dir.path().join("primary")).unwrap();
        let origin = store.subscribe(None).unwrap().origin;
        store.put_items(&items(3, 1)).unwrap();
        store.append_events(&[click("u1")]).unwrap();
        let replica = RankerStore::open(&dir.path().join("replica")).unwrap();
        for record in store.records() {
            let (tree, write) = record.unwrap();
            replica.apply(tree, &[write]).unwrap();
        }
        store.append_events(&[click("u2"), click("u3")]).unwrap();
        store.delete_items(&["p0001".to_string()]).unwrap();
        store.put_items(&items(2, 9)).unwrap(); // p0000 and p0001 again, other vectors
        store
            .put_fusion(&souk_ranker_core::rank::FusionModel::default())
            .unwrap();
        drop(store); // no close
        let store = RankerStore::open(&dir.path().join("primary")).unwrap();
        let taken = store.subscribe(Some((origin, 2))).unwrap().missed.unwrap();
        assert_eq!(
            taken.iter().map(|c| c.seq).collect::<Vec<_>>(),
            [3, 4, 5, 6]
        );
        for change in &taken {
            RankerStore::decode(change.tree, &change.writes).unwrap();
            replica.apply(change.tree, &change.writes).unwrap();
        }
        let all = |s: &RankerStore| s.records().map(Result::unwrap).collect::<Vec<_>>();
        assert_eq!(all(&replica), all(&store));
        assert_eq!(missed(&store, origin ^ 1, 2), None, "another origin");
        store.append_events(&[click("u4")]).unwrap();
        assert_eq!(missed(&store, origin, 2), Some(vec![3, 4, 5, 6, 7]));
        store.events.insert(list_key(3), &[1, 2, 3][..]).unwrap();
        assert_eq!(missed(&store, origin, 2), None, "a damaged list: a copy");
        // The window: lists of older writes go, two per write.
        for n in 0..LISTED_WRITES + 10 {
            store.append_events(&[click(&format!("w{n}"))]).unwrap();
        }
        let lists = |tree: &sled::Tree| tree.scan_prefix([OWN, b'w']).count() as u64;
        assert_eq!(lists(&store.events), LISTED_WRITES);
        assert_eq!(
            lists(&store.catalog),
            3,
            "a tree not written since keeps its lists"
        );
        let (catalog, _) = store.load(usize::MAX).unwrap();
        assert_eq!(catalog.interactions(), 4 + LISTED_WRITES + 10);
    }

    /// Readied for an older build, a store holds nothing that build cannot read (no record of
    /// the store's own in catalog or events, none of the new journal keys; deleted items'
    /// records stay, as that build reads only the `i` keys for items) and that build's
    /// clean-stop record names the last write by its writer; opened again by this build, it
    /// numbers on from it.
    #[test]
    fn a_store_readied_for_an_older_build_holds_only_what_it_reads() {
        let dir = tempfile::tempdir().unwrap();
        let store = RankerStore::open(dir.path()).unwrap();
        let origin = store.subscribe(None).unwrap().origin;
        store.put_items(&items(3, 1)).unwrap();
        store.append_events(&[click("u1"), click("u2")]).unwrap();
        store.delete_items(&["p0002".to_string()]).unwrap();
        drop(store);
        let store = RankerStore::open(dir.path()).unwrap();
        assert!(store.prepare_downgrade().unwrap() >= 4);
        for tree in [&store.catalog, &store.events] {
            assert_eq!(tree.scan_prefix([OWN]).count(), 0);
        }
        for (key, value) in store.events.iter().map(Result::unwrap) {
            assert_eq!(key.len(), 8);
            serde_json::from_slice::<Interaction>(&value).unwrap();
        }
        assert!(store.catalog.iter().keys().all(|k| {
            let k = k.unwrap();
            k.as_ref() == PROBE_KEY || matches!(k.first(), Some(b'i' | b'v' | b'd'))
        }));
        let models: Vec<_> = store.models.iter().keys().map(|k| k.unwrap()).collect();
        assert_eq!(
            models,
            [JOURNAL_KEY],
            "only the older build's clean-stop record"
        );
        let record = store.models.get(JOURNAL_KEY).unwrap().unwrap();
        assert_eq!(
            record.as_ref(),
            [position_bytes((origin, 3)), vec![1]].concat()
        );
        drop(store);
        let store = RankerStore::open(dir.path()).unwrap();
        store.append_events(&[click("u3")]).unwrap();
        assert_eq!(missed(&store, origin, 3), Some(vec![4]));
    }

    /// A store an earlier version closed cleanly kept its position in one record, and numbers
    /// on from it.
    #[test]
    fn a_store_closed_by_an_earlier_version_numbers_on_from_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = RankerStore::open(dir.path()).unwrap();
        store.append_events(&[click("u1")]).unwrap();
        let old = 77;
        for tree in [&store.catalog, &store.events, &store.models] {
            for key in tree.scan_prefix([OWN, b'w']).keys() {
                tree.remove(key.unwrap()).unwrap();
            }
        }
        store.models.remove(NAMES_KEY).unwrap();
        let record = [position_bytes((old, 9)), vec![1]].concat();
        store.models.insert(JOURNAL_KEY, record).unwrap();
        drop(store);
        let store = RankerStore::open(dir.path()).unwrap();
        assert_eq!(store.models.get(JOURNAL_KEY).unwrap(), None);
        store.append_events(&[click("u2")]).unwrap();
        assert_eq!(
            missed(&store, old, 9),
            Some(vec![10]),
            "kept: it was followed"
        );
        assert_eq!(missed(&store, old, 8), None);
    }

    /// Where a replica's copy stands is stored with each live write, atomically, and only
    /// while the store holds a whole copy; it never reaches the replica's own followers.
    #[test]
    fn a_replicas_position_goes_with_its_writes_and_only_with_a_whole_copy() {
        let dir = tempfile::tempdir().unwrap();
        let store = RankerStore::open(dir.path()).unwrap();
        assert_eq!(store.position().unwrap(), None);
        store.begin_sync().unwrap();
        store
            .apply(TreeName::Events, &[event_write(1, 10)])
            .unwrap();
        assert_eq!(store.position().unwrap(), None, "mid-copy");
        store.end_sync((77, 5), 0, &[]).unwrap();
        assert_eq!(store.position().unwrap(), Some((77, 5)));
        store
            .apply_at(TreeName::Events, &[event_write(2, 10)], (77, 6))
            .unwrap();
        store
            .apply_at(TreeName::Models, &[event_write(3, 10)], (77, 7))
            .unwrap();
        assert_eq!(store.position().unwrap(), Some((77, 7)));
        let keys: Vec<_> = store
            .records()
            .map(|r| r.unwrap())
            .map(|(tree, (key, _))| (tree, key))
            .collect();
        assert_eq!(
            keys,
            vec![
                (TreeName::Events, vec![1]),
                (TreeName::Events, vec![2]),
                (TreeName::Models, vec![3])
            ],
            "the position is the replica's own"
        );
        drop(store);
        let store = RankerStore::open(dir.path()).unwrap();
        assert_eq!(
            store.position().unwrap(),
            Some((77, 7)),
            "kept over a restart"
        );
        store.forget_position().unwrap();
        assert_eq!(store.position().unwrap(), None);
        store.end_sync((78, 1), 0, &[]).unwrap();
        store.begin_sync().unwrap();
        assert_eq!(store.position().unwrap(), None, "a new copy drops it");
    }

    /// A store's lineage is drawn once and kept over restarts; a copy takes its primary's
    /// (and none when the primary names none); it is never sent as a record.
    #[test]
    fn a_stores_lineage_is_kept_and_a_copy_takes_its_primarys() {
        let dir = tempfile::tempdir().unwrap();
        let store = RankerStore::open(dir.path()).unwrap();
        assert_eq!(store.lineage().unwrap(), None, "not drawn by an open");
        let drawn = store.ensure_lineage().unwrap();
        assert_ne!(drawn, 0);
        assert_eq!(store.ensure_lineage().unwrap(), drawn, "drawn once");
        assert_eq!(store.records().count(), 0, "the store's own: never sent");
        drop(store);
        let store = RankerStore::open(dir.path()).unwrap();
        assert_eq!(store.lineage().unwrap(), Some(drawn), "kept over a restart");
        let other = tempfile::tempdir().unwrap();
        let other = RankerStore::open(other.path()).unwrap();
        assert_ne!(other.ensure_lineage().unwrap(), drawn, "another store's");

        store.begin_sync().unwrap();
        assert_eq!(
            store.lineage().unwrap(),
            None,
            "a copy under way holds none"
        );
        store.end_sync((5, 1), 42, &[(41, 9)]).unwrap();
        assert_eq!(store.lineage().unwrap(), Some(42), "the primary's");
        assert_eq!(store.ancestors().unwrap(), [(41, 9)], "and its ancestors");
        store.begin_sync().unwrap();
        store.end_sync((6, 1), 0, &[]).unwrap();
        assert_eq!(
            store.lineage().unwrap(),
            None,
            "an older primary names none"
        );
        assert!(store.ancestors().unwrap().is_empty());
        store.set_lineage(43).unwrap();
        assert_eq!(store.ensure_lineage().unwrap(), 43);
    }

    /// A replica's copy started as a primary forks: a new lineage, the copy's first among
    /// its ancestors with the primary's last write it held, no position; once. A primary's
    /// own store keeps its lineage at every start.
    #[test]
    fn a_copy_serving_as_a_primary_forks_its_history_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = RankerStore::open(dir.path()).unwrap();
        let own = store.lineage_as_primary().unwrap();
        assert_eq!(store.lineage_as_primary().unwrap(), own, "a primary's own");
        assert!(store.ancestors().unwrap().is_empty());

        store.begin_sync().unwrap();
        store.end_sync((5, 30), 42, &[(41, 9)]).unwrap();
        store.apply_at(TreeName::Models, &[], (5, 31)).unwrap();
        drop(store);
        let store = RankerStore::open(dir.path()).unwrap();
        let forked = store.lineage_as_primary().unwrap();
        assert!(forked != 42 && forked != 0, "{forked}");
        assert_eq!(store.lineage().unwrap(), Some(forked));
        assert_eq!(
            store.ancestors().unwrap(),
            [(42, 31), (41, 9)],
            "the copy's history, forked at the last write it took"
        );
        assert_eq!(store.position().unwrap(), None, "a primary follows no one");
        drop(store);
        let store = RankerStore::open(dir.path()).unwrap();
        assert_eq!(store.lineage_as_primary().unwrap(), forked, "forked once");
        assert_eq!(store.ancestors().unwrap().len(), 2);
        assert_eq!(store.records().count(), 0, "the store's own: never sent");

        // A copy that served as a primary before this version (it numbered writes of its
        // own and kept its position): its lineage stays, the position goes.
        store.apply_at(TreeName::Models, &[], (5, 32)).unwrap();
        store.append_events(&[click("u1")]).unwrap();
        assert_eq!(store.lineage_as_primary().unwrap(), forked);
        assert_eq!(store.position().unwrap(), None);
        assert_eq!(store.ancestors().unwrap().len(), 2);

        for n in 0..MAX_ANCESTORS as u64 {
            store.fork(n).unwrap();
        }
        let kept = store.ancestors().unwrap();
        assert_eq!(kept.len(), MAX_ANCESTORS, "at most {MAX_ANCESTORS}");
        assert_eq!(kept[0].1, MAX_ANCESTORS as u64 - 1, "newest first");
    }

    /// A graph that cannot be written (here into `/dev/full`, through the temporary file's
    /// name) leaves the saved one as it was and nothing of itself.
    #[test]
    fn a_graph_that_cannot_be_written_leaves_the_saved_one_and_no_part_of_itself() {
        let dir = tempfile::tempdir().unwrap();
        let store = RankerStore::open(dir.path()).unwrap();
        store.save_ann(b"the saved graph").unwrap();
        let tmp = dir.path().join(format!("{ANN_FILE}.tmp"));
        std::os::unix::fs::symlink("/dev/full", &tmp).unwrap();
        let error = store.save_ann(&vec![7u8; 1 << 20]).unwrap_err().to_string();
        assert!(error.contains("No space left on device"), "{error}");
        assert!(
            std::fs::symlink_metadata(&tmp).is_err(),
            "the temporary file is gone"
        );
        assert_eq!(std::fs::read(store.ann_path()).unwrap(), b"the saved graph");
    }

    /// A saved graph is read back as it was (same bytes when saved again); an item deleted
    /// or re-embedded since makes it read back with stale points; a damaged file is not used
    /// and the graph is built instead. The catalog serves from a graph in every case.
    #[test]
    fn the_hnsw_graph_is_saved_read_back_and_rebuilt_when_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let store = RankerStore::open(dir.path()).unwrap();
        store.put_items(&items(600, 1)).unwrap();
        let (catalog, as_saved) = store.load(0).unwrap();
        assert!(catalog.uses_ann() && !as_saved, "no file yet: built");
        let saved = catalog.ann_snapshot().unwrap();
        store.save_ann(&saved).unwrap();

        let (catalog, as_saved) = store.load(0).unwrap();
        assert!(as_saved, "read back as saved");
        assert_eq!(catalog.ann_snapshot().unwrap(), saved);
        // Over the threshold only: a small catalog scans and does not read the file.
        let (catalog, as_saved) = store.load(1000).unwrap();
        assert!(!catalog.uses_ann() && !as_saved);

        let mut changed = items(1, 2);
        changed[0].0.id = "p0003".into();
        store.put_items(&changed).unwrap();
        store.delete_items(&["p0004".into()]).unwrap();
        store.put_items(&items(601, 1)[600..]).unwrap();
        let (_, as_saved, decoded) = served_graph(&store);
        assert!(!as_saved);
        // 600 read (p0003's and p0004's points now stale), p0003 and p0600 added.
        assert_eq!((decoded.points, decoded.stale), (602, 2));

        // Most items re-embedded since the save: not worth reading, built anew.
        let mut moved = items(400, 3);
        for (i, (item, _)) in moved.iter_mut().enumerate() {
            item.id = format!("p{i:04}");
        }
        store.put_items(&moved).unwrap();
        let (catalog, as_saved, decoded) = served_graph(&store);
        assert!(!as_saved);
        assert_eq!(
            (decoded.points, decoded.stale),
            (catalog.len(), 0),
            "built over the items, no stale points"
        );

        let mut damaged = saved.clone();
        damaged[100] ^= 0x10;
        store.save_ann(&damaged).unwrap();
        let (catalog, as_saved) = store.load(0).unwrap();
        assert!(catalog.uses_ann() && !as_saved, "damaged: built instead");
    }

    /// The probe is stored with the first items and replaced with every vector at once by a
    /// re-embedding; vectors of ids no longer stored are not written back.
    #[test]
    fn a_re_embedding_replaces_every_vector_and_the_probe() {
        let dir = tempfile::tempdir().unwrap();
        let store = RankerStore::open(dir.path()).unwrap();
        assert_eq!(store.probe().unwrap(), None);
        let old = items(30, 1);
        store
            .put_items_embedded_by(&old, Some(&[1.0, 0.0]))
            .unwrap();
        store.put_items(&items(31, 1)[30..]).unwrap();
        assert_eq!(store.probe().unwrap(), Some(vec![1.0, 0.0]));
        store.delete_items(&["p0002".to_string()]).unwrap();
        let new: HashMap<String, Vec<f32>> = items(31, 9)
            .into_iter()
            .map(|(item, v)| (item.id, v[..5].to_vec()))
            .collect();
        store.put_vectors(&new, &[0.0, 1.0, 0.0]).unwrap();
        drop(store);
        let store = RankerStore::open(dir.path()).unwrap();
        assert_eq!(store.probe().unwrap(), Some(vec![0.0, 1.0, 0.0]));
        let (catalog, _) = store.load(usize::MAX).unwrap();
        assert_eq!(catalog.len(), 30);
        assert_eq!(catalog.dimension(), Some(5));
        assert!(
            catalog.get("p0002").is_none(),
            "a deleted item stays deleted"
        );
        for item in catalog.items() {
            // As the catalog keeps them: in f16.
            let rounded =
                souk_ranker_core::ann::widen(&souk_ranker_core::ann::to_f16_row(&new[&item.id]));
            assert_eq!(catalog.vector(&item.id), Some(rounded));
        }
    }

    /// A start replays the whole log (read on a second thread); a damaged event in it, however
    /// far in, is an error naming what is wrong, not a hang and not a catalog missing the
    /// events after it.
    #[test]
    fn the_log_is_replayed_whole_and_a_damaged_event_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = RankerStore::open(dir.path()).unwrap();
        store.put_items(&items(20, 3)).unwrap();
        // More events than one batch of the reader's.
        for chunk in 0..3 {
            let events: Vec<Interaction> = (0..5000)
                .map(|i| Interaction {
                    item_id: format!("p{:04}", (chunk * 5000 + i) % 20),
                    ..click(&format!("u{}", i % 300))
                })
                .collect();
            store.append_events(&events).unwrap();
        }
        let (catalog, _) = store.load(usize::MAX).unwrap();
        assert_eq!((catalog.interactions(), catalog.users()), (15_000, 300));
        let (middle, _) = store.events.iter().nth(7_000).unwrap().unwrap();
        store.events.insert(middle, &b"{not json"[..]).unwrap();
        let error = store.load(usize::MAX).unwrap_err().to_string();
        assert!(error.contains("line 1 column 2"), "{error}");
    }

    /// The shop's synonyms come back as set; a damaged record is an error, not an empty set.
    #[test]
    fn synonyms_round_trip_and_a_damaged_record_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let rules = vec![
            SynonymRule {
                phrases: vec!["sofa".into(), "couch".into()],
                replacement: None,
            },
            SynonymRule {
                phrases: vec!["keurig".into()],
                replacement: Some("coffee maker".into()),
            },
        ];
        {
            let store = RankerStore::open(dir.path()).unwrap();
            assert!(store.synonyms().unwrap().is_empty(), "none set");
            store.put_synonyms(&rules).unwrap();
        }
        let store = RankerStore::open(dir.path()).unwrap();
        assert_eq!(store.synonyms().unwrap(), rules);
        store.models.insert("synonyms", &b"{not json"[..]).unwrap();
        assert!(store.synonyms().is_err());
    }

    /// The shop's pin rules come back as set and are served after a start; a damaged
    /// record is an error, and the ranker then starts without pins.
    #[test]
    fn pins_round_trip_and_a_damaged_record_is_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let rules = vec![
            PinRule {
                query: "tent".into(),
                items: vec!["p7".into(), "p1".into()],
                hidden: vec!["p6".into()],
                ..Default::default()
            },
            PinRule {
                query: String::new(),
                category: "Tents".into(),
                items: vec!["p1".into()],
                boosts: vec![souk_ranker_core::pins::Boost {
                    brands: vec!["Bigtop".into()],
                    attributes: vec![("color".into(), vec!["green".into()])],
                    max_price: Some(200.0),
                    amount: -0.25,
                    ..Default::default()
                }],
                ..Default::default()
            },
            PinRule {
                hidden: vec!["p9".into()],
                everywhere: true,
                starts_ms: Some(1_000),
                ..Default::default()
            },
        ];
        {
            let store = RankerStore::open(dir.path()).unwrap();
            assert!(store.pins().unwrap().is_empty(), "none set");
            store.put_pins(&rules).unwrap();
        }
        let store = RankerStore::open(dir.path()).unwrap();
        assert_eq!(store.pins().unwrap(), rules);
        let (served, _) = store
            .served_catalog(souk_ranker_core::catalog::DEFAULT_ANN_MIN_ITEMS)
            .unwrap();
        assert_eq!(
            served.pins().for_query("Tents", 0).unwrap().items,
            ["p7", "p1"]
        );
        let tents = served.pins().for_category("tents", 0).unwrap();
        assert_eq!(tents.items, ["p1"]);
        assert_eq!(tents.boosts[0].0.brands, ["bigtop"]);
        assert_eq!(tents.boosts[0].1, -0.25);
        assert!(
            served.pins().everywhere(999).is_none(),
            "scheduled from 1 s"
        );
        assert_eq!(served.pins().everywhere(1_000).unwrap().hidden, ["p9"]);
        // A record stored before rules could name a category reads as searches' rules.
        store
            .models
            .insert(
                "pins",
                &br#"[{"query":"tent","items":["p7"],"hidden":[]}]"#[..],
            )
            .unwrap();
        let (served, _) = store
            .served_catalog(souk_ranker_core::catalog::DEFAULT_ANN_MIN_ITEMS)
            .unwrap();
        assert_eq!(served.pins().for_query("tent", 0).unwrap().items, ["p7"]);
        assert!(served.pins().everywhere(0).is_none());
        store
            .models
            .insert("pins", &b"[{\"query\": 3}]"[..])
            .unwrap();
        assert!(store.pins().is_err());
        let (served, _) = store
            .served_catalog(souk_ranker_core::catalog::DEFAULT_ANN_MIN_ITEMS)
            .unwrap();
        assert!(served.pins().is_empty());
    }

    /// A factor model comes back as stored; an item-item model stored over it drops its
    /// vectors; damaged vectors are refused with what is wrong, not served.
    #[test]
    fn factor_models_round_trip_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let model = ials();
        {
            let store = RankerStore::open(dir.path()).unwrap();
            store.put_cf(&model).unwrap();
        }
        let store = RankerStore::open(dir.path()).unwrap();
        assert_eq!(store.cf().unwrap(), Some(model.clone()));

        let lists = TrainedCf {
            version: "ease-2".into(),
            algorithm: "ease".into(),
            users: 20,
            neighbours: [("a0".to_string(), vec![("b0".to_string(), 0.5)])].into(),
            factors: None,
        };
        store.put_cf(&lists).unwrap();
        assert_eq!(store.cf().unwrap(), Some(lists));
        assert!(store.models.get(CF_VECTORS).unwrap().is_none());

        store.put_cf(&model).unwrap();
        store.models.insert(CF_VECTORS, &[0u8; 10][..]).unwrap();
        let err = store.cf().unwrap_err().to_string();
        assert!(
            err.contains("stored CF model ials-1: 10 bytes of vectors for 7 items of 3"),
            "{err}"
        );
        let nan: Vec<u8> = std::iter::repeat_n(f32::NAN.to_le_bytes(), 21)
            .flatten()
            .collect();
        store.models.insert(CF_VECTORS, nan).unwrap();
        let err = store.cf().unwrap_err().to_string();
        assert!(err.contains("non-finite"), "{err}");
        store.models.remove(CF_VECTORS).unwrap();
        let err = store.cf().unwrap_err().to_string();
        assert!(err.contains("its vectors are missing"), "{err}");
    }

    #[test]
    fn a_store_refuses_a_user_id_key_other_than_its_shoppers() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("user-id.key");
        let first = {
            let store = RankerStore::open(dir.path()).unwrap();
            store.user_hasher(None, &key_file).unwrap()
        };
        let drawn = std::fs::read(&key_file).unwrap();
        assert_eq!(drawn.len(), 64, "a random key is drawn and kept");
        let store = RankerStore::open(dir.path()).unwrap();
        let again = store.user_hasher(None, &key_file).unwrap();
        assert_eq!(
            again.key("u1"),
            first.key("u1"),
            "restarts file shoppers alike"
        );
        let given = store.user_hasher(Some(&drawn), &key_file).unwrap();
        assert_eq!(
            given.key("u1"),
            first.key("u1"),
            "the file's key given as a flag"
        );
        store.append_events(&[click("u1")]).unwrap();

        let err = store
            .user_hasher(Some(b"another"), &key_file)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the --user-id-key (SOUK_USER_ID_KEY) given is not"),
            "{err}"
        );
        std::fs::write(&key_file, "cut").unwrap();
        let err = store.user_hasher(None, &key_file).unwrap_err().to_string();
        assert!(err.contains("user-id.key is not the key"), "{err}");
        for lost in ["", "removed"] {
            match lost {
                "" => std::fs::write(&key_file, "").unwrap(),
                _ => std::fs::remove_file(&key_file).unwrap(),
            }
            let err = store.user_hasher(None, &key_file).unwrap_err().to_string();
            assert!(err.contains("user-id.key is missing or empty"), "{err}");
        }
        assert!(
            !key_file.exists(),
            "no key is drawn for a store that has one"
        );

        // A store that files no shopper takes another key: a replica started with a wrong
        // one, refused by its primary before it copied anything, and started again.
        let empty = tempfile::tempdir().unwrap();
        let store = RankerStore::open(empty.path()).unwrap();
        store.user_hasher(Some(b"wrong"), &key_file).unwrap();
        let right = store.user_hasher(Some(b"right"), &key_file).unwrap();
        store.append_events(&[click("u1")]).unwrap();
        assert!(store.user_hasher(Some(b"wrong"), &key_file).is_err());
        // A copy for a replica keeps the store's own check, once it holds shoppers again.
        store.begin_sync().unwrap();
        store.append_events(&[click("u2")]).unwrap();
        assert!(store.user_hasher(Some(b"wrong"), &key_file).is_err());
        let again = store.user_hasher(Some(b"right"), &key_file).unwrap();
        assert_eq!(again.key("u1"), right.key("u1"));
    }
}
