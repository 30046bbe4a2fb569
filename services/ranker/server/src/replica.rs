//! Ranker replicas: a primary streams its store ([`stream_store`], the `Follow` RPC) and a
//! replica started with `--primary URL` keeps a copy of it ([`follow`]): a snapshot of every
//! record, then every write as the primary stores it, in order. The replica's own sled store
//! holds the copy (so a restart serves the last copy at once while it connects again), and
//! its in-memory catalog takes each write as the primary's did. A replica serves reads
//! (`Rank`, `Suggest`, `UserProfile`, `Stats`); it refuses admin writes, naming the primary,
//! and passes `RecordInteractions` on to it, so a shop can send events to any replica.
//!
//! Consistency: a write is served by the replica once it arrives (milliseconds behind on a
//! local network); a replica cut off (it restarted, its connection dropped, the primary
//! restarted, or it fell [`BACKLOG_BYTES`] of writes behind) serves what it has meanwhile.
//! When it gets through again it names the last write it holds (its store keeps that number
//! with each write): if the primary is the same process and still keeps every later write
//! (its latest [`crate::store::RECENT_BYTES`]), it sends just those; otherwise the replica
//! copies a new snapshot, which rebuilds the catalog (and its HNSW graph) from the copied
//! store, as a restart does.
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use souk_proto::ranker::v1 as pb;
use souk_ranker_core::RankError;
use souk_ranker_core::item::Interaction;
use souk_shared::server::Health;
use tokio::sync::{broadcast, mpsc, watch};
use tonic::Status;

use crate::store::{Change, Decoded, RankerStore, TreeName, Write, write_bytes};
use crate::{Ready, lock_poisoned};

/// Records per snapshot message, and the most bytes one holds (a record is never split).
const SNAPSHOT_RECORDS: usize = 1024;
const SNAPSHOT_BYTES: usize = 4 * 1024 * 1024;

/// The largest message a replica takes from its primary: one write is one batch of a load,
/// or a whole fitted model (an item-kNN model's neighbour lists, a factor model's vectors).
pub const MAX_CHANGE_BYTES: usize = 512 * 1024 * 1024;

/// One record on the wire.
fn record_pb(tree: TreeName, (key, value): Write) -> pb::StoreRecord {
    pb::StoreRecord {
        tree: tree as u32,
        key,
        removed: value.is_none(),
        value: value.unwrap_or_default(),
    }
}

fn to_pb(seq: u64, tree: TreeName, writes: &[Write]) -> pb::StoreChange {
    pb::StoreChange {
        seq,
        records: writes.iter().map(|w| record_pb(tree, w.clone())).collect(),
        ..Default::default()
    }
}

/// The most bytes of writes held for one follower that has not taken them yet (while its
/// snapshot streams, or while its network is slower than the primary's writes): past them it
/// is cut off and copies a snapshot again. A copy of 100k items and 1M events streams for
/// ~25 s on this project's 2-core box; a bulk load writes ~10 MB/s of events.
pub const BACKLOG_BYTES: usize = 256 * 1024 * 1024;

/// What a follower's backlog hands on.
enum Held {
    Write(Arc<Change>),
    /// The follower fell [`BACKLOG_BYTES`] behind; nothing comes after this.
    Behind,
}

/// The writes the primary stored and one follower has not taken yet, in order: a task moves
/// each from the store's journal (which holds few) as soon as it is written, so that a
/// follower busy with its snapshot is not cut off by the number of writes meanwhile, only by
/// their bytes.
struct Backlog {
    queue: mpsc::UnboundedReceiver<Held>,
    bytes: Arc<AtomicUsize>,
}

impl Backlog {
    fn hold(mut journal: broadcast::Receiver<Arc<Change>>, budget: usize) -> Self {
        let (tx, queue) = mpsc::unbounded_channel();
        let bytes = Arc::new(AtomicUsize::new(0));
        let held = bytes.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = journal.recv() => next,
                    () = tx.closed() => return,
                };
                let change = match next {
                    Ok(change) => change,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = tx.send(Held::Behind);
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let size = change.bytes();
                // One write larger than the budget still goes to a follower that holds no other.
                let before = held.fetch_add(size, Ordering::AcqRel);
                if before > 0 && before + size > budget {
                    let _ = tx.send(Held::Behind);
                    return;
                }
                if tx.send(Held::Write(change)).is_err() {
                    return;
                }
            }
        });
        Self { queue, bytes }
    }

    /// The next write; `None` once the store is gone.
    async fn next(&mut self) -> Option<Held> {
        let held = self.queue.recv().await?;
        if let Held::Write(change) = &held {
            self.bytes.fetch_sub(change.bytes(), Ordering::AcqRel);
        }
        Some(held)
    }
}

/// The `Follow` stream of the primary's store: the user-id key check and this store's
/// origin, a snapshot of every record, the writes applied while the snapshot was read,
/// `snapshot_done`, then each write as it is stored, until the replica goes away, falls
/// [`BACKLOG_BYTES`] behind (RESOURCE_EXHAUSTED) or the server stops (`stopping`).
///
/// `resume`: where the replica's copy stands (origin, last write taken); when the store
/// kept every write since, the first message says `resumed` and those writes follow it,
/// without a snapshot. `of_replica`: the store is a replica's (a primary restores from it),
/// whose last write of its history is the last one it took from its primary.
pub(crate) fn stream_store(
    ready: Arc<Ready>,
    resume: Option<(u64, u64)>,
    of_replica: bool,
    mut stopping: watch::Receiver<bool>,
) -> Result<mpsc::Receiver<Result<pb::StoreChange, Status>>, Status> {
    let (tx, rx) = mpsc::channel(4);
    // Subscribed before the first record is read: every write from here on is sent, and
    // applying one the snapshot already holds again changes nothing.
    let subscription = ready.store.subscribe(resume).map_err(crate::status)?;
    let subscribed = subscription.seq;
    let lineage = ready.store.lineage().map_err(crate::status)?.unwrap_or(0);
    let ancestors = ready
        .store
        .ancestors()
        .map_err(crate::status)?
        .into_iter()
        .map(|(lineage, through)| pb::Ancestor { lineage, through })
        .collect();
    let through = if of_replica {
        let position = ready.store.position().map_err(crate::status)?;
        position.map(|(_, after)| after)
    } else {
        Some(subscribed)
    };
    let mut changes = Backlog::hold(subscription.changes, BACKLOG_BYTES);
    // First, the user-id key check: a replica with another user-id key would file every
    // event under other users and find nobody's history.
    let check = ready.hasher.check().as_str().as_bytes().to_vec();
    tokio::spawn(async move {
        let first = pb::StoreChange {
            user_key_check: check,
            origin: subscription.origin,
            lineage,
            ancestors,
            through,
            diverged: subscription.diverged,
            resumed: subscription.missed.is_some(),
            resumed_through: if subscription.missed.is_some() {
                subscribed
            } else {
                0
            },
            ..Default::default()
        };
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        if let Some(missed) = subscription.missed {
            for change in missed {
                if tx.send(Ok(to_change(&change))).await.is_err() {
                    return;
                }
            }
            live(&mut changes, &tx, &mut stopping).await;
            return;
        }
        let copied = {
            let (ready, tx, stopping) = (ready.clone(), tx.clone(), stopping.clone());
            tokio::task::spawn_blocking(move || send_snapshot(&ready, &tx, &stopping)).await
        };
        let (numbered_by, last) = match copied {
            Ok(Ok(Some(last))) => last,
            // The replica went away, or the server stops.
            Ok(Ok(None)) => return,
            Ok(Err(error)) => {
                let _ = tx.send(Err(crate::status(error))).await;
                return;
            }
            Err(error) => {
                let _ = tx
                    .send(Err(Status::internal(format!(
                        "snapshot task failed: {error}"
                    ))))
                    .await;
                return;
            }
        };
        // The writes numbered `subscribed + 1 ..= last` come first through the backlog: sent
        // before the end of the snapshot, so that the replica's copy is the primary's as of
        // `last`.
        let mut caught_up = subscribed;
        while caught_up < last {
            let next = tokio::select! {
                next = changes.next() => next,
                _ = stopping.wait_for(|stop| *stop) => return,
            };
            match next {
                Some(Held::Write(change)) => {
                    caught_up = change.seq;
                    if tx
                        .send(Ok(to_pb(0, change.tree, &change.writes)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Some(Held::Behind) => {
                    let _ = tx.send(Err(behind())).await;
                    return;
                }
                None => return,
            }
        }
        let done = pb::StoreChange {
            seq: last,
            numbered_by,
            snapshot_done: true,
            ..Default::default()
        };
        if tx.send(Ok(done)).await.is_err() {
            return;
        }
        live(&mut changes, &tx, &mut stopping).await;
    });
    Ok(rx)
}

/// Sends each write as it is stored, until the follower goes away, falls behind or the
/// server stops.
async fn live(
    changes: &mut Backlog,
    tx: &mpsc::Sender<Result<pb::StoreChange, Status>>,
    stopping: &mut watch::Receiver<bool>,
) {
    loop {
        let next = tokio::select! {
            next = changes.next() => next,
            _ = tx.closed() => return,
            _ = stopping.wait_for(|stop| *stop) => return,
        };
        match next {
            Some(Held::Write(change)) => {
                if tx.send(Ok(to_change(&change))).await.is_err() {
                    return;
                }
            }
            Some(Held::Behind) => {
                let _ = tx.send(Err(behind())).await;
                return;
            }
            None => return,
        }
    }
}

fn to_change(change: &Change) -> pb::StoreChange {
    pb::StoreChange {
        numbered_by: change.origin,
        ..to_pb(change.seq, change.tree, &change.writes)
    }
}

fn behind() -> Status {
    Status::resource_exhausted(
        "this replica fell too far behind the primary's writes: copy a snapshot again",
    )
}

/// Sends every record of `ready`'s store in messages of [`SNAPSHOT_RECORDS`] or
/// [`SNAPSHOT_BYTES`], then its HNSW graph in pieces of [`SNAPSHOT_BYTES`]; returns the
/// name of the last write before the end of the copy (see [`RankerStore::last_written`]),
/// or `None` when the replica went away or the server stops (`stopping`: a graceful stop
/// does not wait for a copy, which takes a minute at 100k items and 1M events; the replica
/// copies again from the next primary).
fn send_snapshot(
    ready: &Ready,
    tx: &mpsc::Sender<Result<pb::StoreChange, Status>>,
    stopping: &watch::Receiver<bool>,
) -> Result<Option<(u64, u64)>, RankError> {
    let mut message = pb::StoreChange::default();
    let mut bytes = 0;
    for record in ready.store.records() {
        let (tree, write) = record?;
        bytes += write_bytes(&write);
        message.records.push(record_pb(tree, write));
        if message.records.len() >= SNAPSHOT_RECORDS || bytes >= SNAPSHOT_BYTES {
            if *stopping.borrow() || tx.blocking_send(Ok(std::mem::take(&mut message))).is_err() {
                return Ok(None);
            }
            bytes = 0;
        }
    }
    if !message.records.is_empty() && tx.blocking_send(Ok(message)).is_err() {
        return Ok(None);
    }
    // The graph as it is now (the copy holds the catalog's read lock: writes wait, `Rank`
    // does not). It may hold items the records above lack, or lack some they hold: the
    // replica reads back only points whose item and vector it holds, and adds the rest.
    let graph = ready
        .ranker
        .catalog()
        .read()
        .map_err(|_| lock_poisoned())?
        .ann_snapshot();
    for piece in graph.as_deref().unwrap_or_default().chunks(SNAPSHOT_BYTES) {
        if *stopping.borrow() {
            return Ok(None);
        }
        let message = pb::StoreChange {
            graph: piece.to_vec(),
            ..Default::default()
        };
        if tx.blocking_send(Ok(message)).is_err() {
            return Ok(None);
        }
    }
    ready.store.last_written().map(Some)
}

/// How a replica stands, for `Stats` and `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct ReplicaState {
    /// Holds the primary's state and receives its writes.
    in_sync: std::sync::atomic::AtomicBool,
    /// `souk_replica_in_sync` and `souk_replica_catch_ups_total{how}`, which counts the
    /// whole copies and the resumes since start (replicas only).
    metrics: Option<(prometheus::IntGauge, prometheus::IntCounterVec)>,
    /// Why the replica refuses to copy its primary's store, while it does.
    refused: std::sync::Mutex<Option<String>>,
}

impl ReplicaState {
    /// A replica's state, reported as `souk_replica_in_sync` and
    /// `souk_replica_catch_ups_total{how="copy"|"resume"}` in `registry`.
    pub fn registered(registry: &prometheus::Registry) -> prometheus::Result<Self> {
        let gauge = prometheus::IntGauge::new(
            "replica_in_sync",
            "1 while this ranker replica holds its primary's state and receives its writes; \
             0 while it connects, copies or takes the writes it missed (it serves its \
             last copy meanwhile).",
        )?;
        registry.register(Box::new(gauge.clone()))?;
        let catch_ups = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "replica_catch_ups_total",
                "Connections of this ranker replica to its primary that took its state: \
                 how=\"copy\" copied the whole store, how=\"resume\" took only the writes \
                 since the last one held.",
            ),
            &["how"],
        )?;
        registry.register(Box::new(catch_ups.clone()))?;
        Ok(Self {
            metrics: Some((gauge, catch_ups)),
            ..Self::default()
        })
    }

    pub fn in_sync(&self) -> bool {
        self.in_sync.load(Ordering::Relaxed)
    }

    /// Whole copies taken and catch-ups without one, since start (0 on a primary).
    pub fn catch_ups(&self) -> (u64, u64) {
        self.metrics.as_ref().map_or((0, 0), |(_, catch_ups)| {
            let count = |how| catch_ups.with_label_values(&[how]).get();
            (count("copy"), count("resume"))
        })
    }

    fn set(&self, in_sync: bool) {
        self.in_sync.store(in_sync, Ordering::Relaxed);
        if let Some((gauge, _)) = &self.metrics {
            gauge.set(i64::from(in_sync));
        }
    }

    /// Why the replica refuses to copy its primary's store (`None`: it does not).
    pub fn refused(&self) -> Option<String> {
        self.refused.lock().ok().and_then(|r| r.clone())
    }

    fn refuse(&self, why: Option<String>) {
        if let Ok(mut refused) = self.refused.lock() {
            *refused = why;
        }
    }

    /// Counts one catch-up: `how` is "copy" or "resume".
    fn caught_up(&self, how: &str) {
        if let Some((_, catch_ups)) = &self.metrics {
            catch_ups.with_label_values(&[how]).inc();
        }
    }
}

/// Longest wait between two tries to reach the primary.
pub(crate) const RETRY_MAX: Duration = Duration::from_secs(5);

/// How long a `--restore-from` start asks again a replica that refuses because it still
/// follows its primary (it sees a stopped primary's stream end within moments, a killed
/// one's at its connection's reset), before it gives up with that refusal.
const RESTORE_WAIT: Duration = Duration::from_secs(20);

/// The wait between tries to reach the primary (following it, passing events on): from
/// 100 ms, doubling to [`RETRY_MAX`].
pub(crate) struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);

    pub fn new() -> Self {
        Self(Self::FIRST)
    }

    /// Back to the first wait, after a try that got through.
    pub fn reset(&mut self) {
        self.0 = Self::FIRST;
    }

    /// Sleeps the current wait and doubles the next; false when `stopped` came first.
    pub async fn wait(&mut self, stopped: &mut watch::Receiver<bool>) -> bool {
        let slept = tokio::select! {
            _ = tokio::time::sleep(self.0) => true,
            _ = stopped.wait_for(|stop| *stop) => false,
        };
        self.0 = (self.0 * 2).min(RETRY_MAX);
        slept
    }
}

/// Follows the primary at `url` until `stopped`: copies its store, then applies its writes;
/// cut off, tries again (from 100 ms, doubling to [`RETRY_MAX`]) and copies a new snapshot.
/// `health` turns SERVING after each whole copy (a replica with no earlier copy reports
/// SERVING only then).
pub(crate) async fn follow(
    ready: Arc<Ready>,
    url: String,
    token: Option<String>,
    state: Arc<ReplicaState>,
    (ann_min_items, accept_new_store): (usize, bool),
    health: Health,
    mut stopped: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new();
    loop {
        let followed = tokio::select! {
            followed = follow_once(&ready, &url, &token, &state, (ann_min_items, accept_new_store), &health) => followed,
            _ = stopped.wait_for(|stop| *stop) => return,
        };
        state.set(false);
        let synced = match followed {
            Ok(synced) => {
                tracing::warn!(primary = %url, "the primary ended the replica's stream");
                synced
            }
            Err(FollowError { synced, error }) => {
                tracing::warn!(primary = %url, %error, "cannot follow the primary; trying again");
                synced
            }
        };
        if synced {
            backoff.reset();
        }
        if !backoff.wait(&mut stopped).await {
            return;
        }
    }
}

struct FollowError {
    /// Whether a whole copy was taken before the error.
    synced: bool,
    error: String,
}

/// One connection to the primary: the copy (or, when the primary kept every write since
/// the last one this replica took, those writes), then its writes until the stream ends
/// (`Ok`, with whether the replica held the primary's state) or fails.
async fn follow_once(
    ready: &Arc<Ready>,
    url: &str,
    token: &Option<String>,
    state: &ReplicaState,
    (ann_min_items, accept_new_store): (usize, bool),
    health: &Health,
) -> Result<bool, FollowError> {
    let fail = |synced: bool| move |error: String| FollowError { synced, error };
    let channel = souk_shared::client::lazy_channel(url, Duration::from_secs(5))
        .map_err(|e| e.to_string())
        .map_err(fail(false))?;
    let mut client =
        pb::ranker_client::RankerClient::new(channel).max_decoding_message_size(MAX_CHANGE_BYTES);
    let position = blocking(ready, |ready| ready.store.position())
        .await
        .map_err(fail(false))?;
    let (origin, after) = position.unwrap_or_default();
    let request = follow_request(
        pb::FollowRequest {
            origin,
            after,
            restore: false,
        },
        token,
    )
    .map_err(fail(false))?;
    let mut stream = client
        .follow(request)
        .await
        .map_err(|s| format!("{}: {}", s.code(), s.message()))
        .map_err(fail(false))?
        .into_inner();
    let Some(first) = next(&mut stream).await.map_err(fail(false))? else {
        return Ok(false);
    };
    let ours = ready.hasher.check();
    if first.user_key_check != ours.as_str().as_bytes() {
        return Err(fail(false)(
            "the primary pseudonymises user ids with another key (--user-id-key): a replica must use the same one"
                .into(),
        ));
    }
    let origin = first.origin;
    if first.resumed && position.is_none() {
        return Err(fail(false)(
            "the primary resumed a stream this replica asked to copy".into(),
        ));
    }
    // A copy empties this store first: not for a primary whose store lacks writes this
    // copy holds (its volume was lost and it started empty, a backup was put back, a
    // replica further behind was promoted) or holds another shop's, unless the operator
    // said so.
    let held = blocking(ready, |ready| ready.store.lineage())
        .await
        .map_err(fail(false))?;
    if !first.resumed
        && !accept_new_store
        && let Some(refused) = refusal(held, after, &first)
    {
        state.refuse(Some(refused.clone()));
        return Err(fail(false)(refused));
    }
    state.refuse(None);
    if first.resumed && first.lineage != 0 && held != Some(first.lineage) {
        // A copy taken before lineages were kept belongs to the primary's history.
        let lineage = first.lineage;
        blocking(ready, move |ready| ready.store.set_lineage(lineage))
            .await
            .map_err(fail(false))?;
    }
    // A resumed replica holds the primary's state once it applied the writes it missed
    // (up to `store::RECENT_BYTES` of them): until then it reports not in sync.
    let mut missed_through = 0;
    if first.resumed {
        state.caught_up("resume");
        missed_through = first.resumed_through;
        tracing::info!(primary = %url, after, through = missed_through, "the primary kept every write since this replica's last: following from there");
    } else {
        copy(ready, url, &mut stream, &first, ann_min_items)
            .await
            .map_err(fail(false))?;
        state.caught_up("copy");
    }
    if missed_through <= after {
        state.set(true);
    }
    health.set_ready().await;
    // Checked at once: the copy may come from another model than the last check's.
    crate::check_model_now(ready).await;
    while let Some(message) = next(&mut stream).await.map_err(fail(true))? {
        let seq = message.seq;
        let position = (numbered(&message, origin), seq);
        let writes = by_tree(message.records).map_err(fail(true))?;
        let probe_changed = blocking(ready, move |ready| {
            apply_live(ready, &writes, position).inspect_err(|_| {
                // The store may hold the write and the served catalog not: the next
                // connection copies the whole store again.
                if let Err(error) = ready.store.forget_position() {
                    tracing::warn!(%error, "cannot drop the replica's position");
                }
            })
        })
        .await
        .map_err(fail(true))?;
        if probe_changed {
            crate::check_model_now(ready).await;
        }
        if seq >= missed_through && !state.in_sync() {
            tracing::info!(primary = %url, seq, "the replica took every write it missed");
            state.set(true);
        }
    }
    Ok(true)
}

/// Why a replica holding a copy of the history `held`, its primary's write `after` last
/// (that history's numbering; 0: none), must not copy the store whose stream begins with
/// `first` over it; `None` when it may. It may when the store is of its history and holds
/// every write the copy does, or continues its history from a fork that did; a store of an
/// older version (naming no history) or a copy naming none is copied as before.
fn refusal(held: Option<u64>, after: u64, first: &pb::StoreChange) -> Option<String> {
    const ADVICE: &str = "so this replica keeps serving its copy instead of taking the \
        primary's over it. To bring the primary back with the latest writes, start it from \
        the copy of the replica that took the most (see README \"Losing the primary's \
        store\"); to take the primary's store anyway, restart this replica with \
        --accept-new-primary-store";
    let held = held?;
    if first.lineage == 0 {
        return None;
    }
    if first.lineage == held {
        if first.diverged {
            return Some(format!(
                "the primary's store lacks writes this replica's copy holds (its write {after} \
                 is another than the copy's): it was put back from a backup and took writes \
                 of its own, {ADVICE}"
            ));
        }
        let through = first.through?;
        return (after > through).then(|| {
            format!(
                "the primary's store lacks writes this replica's copy holds (it ends at write \
                 {through} of their history, the copy at {after}): it was put back from a \
                 backup or lost its latest writes, {ADVICE}"
            )
        });
    }
    match first.ancestors.iter().find(|a| a.lineage == held) {
        Some(fork) if fork.through != 0 && after > fork.through => Some(format!(
            "the primary's store went on from a copy of this replica's history that lacks \
             writes this copy holds (the copy it went on from ends at write {}, this one at \
             {after}): a replica further behind was promoted or restored from, {ADVICE}",
            fork.through
        )),
        Some(_) => None,
        None => Some(format!(
            "the primary's store is not of the history this replica copied (its history \
             {:016x}, the copy's {held:016x}): it was replaced or lost, {ADVICE}",
            first.lineage
        )),
    }
}

/// `Follow`'s request, with the admin token when there is one.
fn follow_request(
    request: pb::FollowRequest,
    token: &Option<String>,
) -> Result<tonic::Request<pb::FollowRequest>, String> {
    crate::sources::with_token(request, token)
}

/// A primary's start with `--restore-from`: when its store holds no item, copies the store
/// of the ranker at `url` (a replica that kept its copy of the store this primary lost) as a
/// replica copies its primary's, then serves it as the primary: the copy's lineage is the
/// lost store's, so the other replicas take it. Returns the events the store held before
/// (shops sent them to the empty primary meanwhile), to record again over the copy; the
/// rest it held (settings written to an empty shop) is replaced. A store holding items is
/// left alone, unless it is a copy cut short (a restore that stopped midway is taken again).
pub(crate) async fn restore(
    ready: &Arc<Ready>,
    url: &str,
    token: &Option<String>,
    ann_min_items: usize,
) -> Result<Vec<Interaction>, String> {
    let held = blocking(ready, |ready| {
        if ready.store.mid_sync()? {
            // A restore (or a replica's copy) cut short: its own events went with the
            // store's emptying, the rest is part of the copy.
            return Ok(Some(Vec::new()));
        }
        if ready.store.holds_items()? {
            return Ok(None);
        }
        ready.store.stored_events().map(Some)
    })
    .await?;
    let Some(events) = held else {
        tracing::info!(from = %url, "the store holds a shop: not restored (--restore-from)");
        return Ok(Vec::new());
    };
    let channel = souk_shared::client::lazy_channel(url, Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    let mut client =
        pb::ranker_client::RankerClient::new(channel).max_decoding_message_size(MAX_CHANGE_BYTES);
    // A replica refuses while it still follows its primary: one restarted at once after
    // its store was lost (a supervisor's restart) can ask before the replica has seen the
    // old process go, so that refusal is waited out for a while.
    let asked = std::time::Instant::now();
    let mut stream = loop {
        let request = follow_request(
            pb::FollowRequest {
                restore: true,
                ..Default::default()
            },
            token,
        )?;
        match client.follow(request).await {
            Ok(response) => break response.into_inner(),
            Err(status)
                if status.code() == tonic::Code::FailedPrecondition
                    && asked.elapsed() < RESTORE_WAIT =>
            {
                tracing::info!(
                    from = %url,
                    refused = status.message(),
                    "the replica still follows its primary; asking again"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => return Err(format!("{}: {}", status.code(), status.message())),
        }
    };
    let Some(first) = next(&mut stream).await? else {
        return Err("the ranker ended the stream before its copy".into());
    };
    if first.user_key_check != ready.hasher.check().as_str().as_bytes() {
        return Err(
            "that ranker pseudonymises user ids with another key (--user-id-key): this \
             primary would find nobody's history in its copy"
                .into(),
        );
    }
    tracing::info!(from = %url, "restoring the store from another ranker's copy");
    copy(ready, url, &mut stream, &first, ann_min_items).await?;
    // The copy goes on as a history of its own, from the last write the replica took.
    let through = first.through.unwrap_or(0);
    let lineage = blocking(ready, move |ready| ready.store.fork(through)).await?;
    tracing::info!(
        from = %url,
        lineage = format!("{lineage:016x}"),
        "the store is restored; serving it as the primary"
    );
    Ok(events)
}

/// The origin that numbered a write the stream sends (`origin`: the stream's), under which
/// the replica keeps its position. A write numbered before the primary's start (sent from
/// its store at a resume, or the last one of a copy before the primary's first write) keeps
/// its earlier open's name, which the primary's later opens still know by the write's key
/// list; under the stream's origin, a replica whose last kept write was such one would copy
/// after the primary's next crash.
fn numbered(message: &pb::StoreChange, origin: u64) -> u64 {
    if message.numbered_by == 0 {
        origin
    } else {
        message.numbered_by
    }
}

/// The next message of the primary's stream; its errors as text.
async fn next(
    stream: &mut tonic::Streaming<pb::StoreChange>,
) -> Result<Option<pb::StoreChange>, String> {
    stream
        .next()
        .await
        .transpose()
        .map_err(|s| format!("{}: {}", s.code(), s.message()))
}

/// Copies the primary's store from its stream: empties this one, stores the snapshot's
/// records and the writes during it, then rebuilds the catalog from the copy (as of the
/// primary's write `snapshot_done` names; `first`: the stream's first message, naming its
/// origin and history).
async fn copy(
    ready: &Arc<Ready>,
    url: &str,
    stream: &mut tonic::Streaming<pb::StoreChange>,
    first: &pb::StoreChange,
    ann_min_items: usize,
) -> Result<(), String> {
    let origin = first.origin;
    let history = (
        first.lineage,
        first
            .ancestors
            .iter()
            .map(|a| (a.lineage, a.through))
            .collect::<Vec<_>>(),
    );
    blocking(ready, |ready| ready.store.begin_sync()).await?;
    tracing::info!(primary = %url, "copying the primary's store");
    let started = std::time::Instant::now();
    let mut copied = 0u64;
    let mut graph = Vec::new();
    let last = loop {
        let Some(message) = next(stream).await? else {
            return Err("the primary ended the stream during the copy".into());
        };
        if message.snapshot_done {
            break (numbered(&message, origin), message.seq);
        }
        graph.extend_from_slice(&message.graph);
        copied += message.records.len() as u64;
        let writes = by_tree(message.records)?;
        blocking(ready, move |ready| {
            for (tree, writes) in &writes {
                ready.store.apply(*tree, writes)?;
            }
            Ok(())
        })
        .await?;
    };
    let graph_bytes = graph.len();
    let received = started.elapsed();
    blocking(ready, move |ready| {
        take_copy(ready, &graph, last, &history, ann_min_items)
    })
    .await?;
    let items = ready.ranker.catalog().read().map(|c| c.len()).unwrap_or(0);
    tracing::info!(
        primary = %url,
        records = copied,
        graph_bytes,
        items,
        seconds = started.elapsed().as_secs_f64(),
        receive_seconds = received.as_secs_f64(),
        "the primary's store is copied; following its writes"
    );
    Ok(())
}

/// Runs `work` on the blocking pool; its panics and errors as text.
async fn blocking<T: Send + 'static>(
    ready: &Arc<Ready>,
    work: impl FnOnce(&Ready) -> Result<T, RankError> + Send + 'static,
) -> Result<T, String> {
    let ready = ready.clone();
    tokio::task::spawn_blocking(move || work(&ready))
        .await
        .map_err(|e| format!("replica task failed: {e}"))?
        .map_err(|e| e.to_string())
}

/// A message's records, grouped by tree in the order they came (one write touches one tree).
fn by_tree(records: Vec<pb::StoreRecord>) -> Result<Vec<(TreeName, Vec<Write>)>, String> {
    let mut grouped: Vec<(TreeName, Vec<Write>)> = Vec::new();
    for record in records {
        let tree = TreeName::from_wire(record.tree).map_err(|e| e.to_string())?;
        let value = (!record.removed).then_some(record.value);
        match grouped.last_mut() {
            Some((last, writes)) if *last == tree => writes.push((record.key, value)),
            _ => grouped.push((tree, vec![(record.key, value)])),
        }
    }
    Ok(grouped)
}

/// The copy is whole: the primary's graph (when it sent one) is saved as this store's, and
/// the catalog, models and settings are rebuilt from the store, as at a start (the graph read
/// back, not built), and replace the ones served (the spelling lexicon read from the encoder
/// stays); the store keeps the primary's history (lineage and ancestors) as its own.
fn take_copy(
    ready: &Ready,
    graph: &[u8],
    position: (u64, u64),
    (lineage, ancestors): &(u64, Vec<(u64, u64)>),
    ann_min_items: usize,
) -> Result<(), RankError> {
    let mut file = ready.store.lock_ann_file()?;
    if !graph.is_empty() {
        ready.store.save_ann(graph)?;
    }
    let (mut catalog, saved) = ready.store.served_catalog(ann_min_items)?;
    *file = saved;
    let fusion = ready.store.fusion()?;
    let probe = ready.store.probe()?;
    {
        let mut served = ready
            .ranker
            .catalog()
            .write()
            .map_err(|_| lock_poisoned())?;
        catalog.set_lexicon(served.lexicon());
        *served = catalog;
    }
    drop(file);
    ready.ranker.set_model(fusion.unwrap_or_default())?;
    *ready.catalog_probe.write().map_err(|_| lock_poisoned())? = probe;
    ready.store.end_sync(position, *lineage, ancestors)
}

/// Applies one live write of the primary to the store (with its `position`, see
/// [`RankerStore::position`]) and to memory; returns whether it set the probe's vector (the
/// catalog's model changed: checked against the encoder's).
fn apply_live(
    ready: &Ready,
    writes: &[(TreeName, Vec<Write>)],
    position: (u64, u64),
) -> Result<bool, RankError> {
    let mut probe_changed = false;
    for (tree, writes) in writes {
        // Events the write removes (shoppers forgotten: `ForgetUsers`) leave memory too: read
        // before the write takes them out of the store.
        let forgotten = match tree {
            TreeName::Events => ready.store.events_at(
                writes
                    .iter()
                    .filter(|(_, value)| value.is_none())
                    .map(|(key, _)| key.as_slice()),
            )?,
            _ => Vec::new(),
        };
        ready.store.apply_at(*tree, writes, position)?;
        ready.store.note_events(&forgotten, false)?;
        let Decoded {
            upserted,
            vectors,
            deleted,
            probe,
            events,
            models,
        } = RankerStore::decode(*tree, writes)?;
        ready.store.note_events(&events, true)?;
        {
            let catalog = ready.ranker.catalog();
            let mut catalog = catalog.write().map_err(|_| lock_poisoned())?;
            for id in &deleted {
                catalog.delete(id);
            }
            if !upserted.is_empty() {
                catalog.upsert_many(upserted)?;
            }
            if !vectors.is_empty() {
                catalog.replace_vectors(&vectors)?;
            }
            if !forgotten.is_empty() {
                catalog.forget(&forgotten);
            }
            for event in &events {
                catalog.record(event);
            }
            for model in &models {
                match model.as_str() {
                    "cf" => catalog.set_trained_cf(ready.store.cf()?.map(Arc::new)),
                    "synonyms" => {
                        if let Some(synonyms) = ready.store.usable_synonyms() {
                            catalog.set_synonyms(Arc::new(synonyms));
                        }
                    }
                    "pins" => {
                        if let Some(pins) = ready.store.usable_pins() {
                            catalog.set_pins(Arc::new(pins));
                        }
                    }
                    _ => {}
                }
            }
        }
        if models.iter().any(|m| m == "fusion") {
            ready
                .ranker
                .set_model(ready.store.fusion()?.unwrap_or_default())?;
        }
        if let Some(probe) = probe {
            *ready.catalog_probe.write().map_err(|_| lock_poisoned())? = Some(probe);
            probe_changed = true;
        }
    }
    Ok(probe_changed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::TreeName;

    fn first(lineage: u64, through: Option<u64>, ancestors: &[(u64, u64)]) -> pb::StoreChange {
        pb::StoreChange {
            lineage,
            through,
            ancestors: ancestors
                .iter()
                .map(|&(lineage, through)| pb::Ancestor { lineage, through })
                .collect(),
            ..Default::default()
        }
    }

    /// A replica copies a primary of its history that holds every write its copy does,
    /// or one forked from its history at or after its last write; it refuses a primary
    /// behind its copy (a backup put back), one forked before its last write (a replica
    /// further behind promoted) and one of another history. Older versions on either
    /// side (no history named, no last write sent) are copied as before.
    #[test]
    fn a_replica_copies_only_a_store_that_holds_every_write_of_its_copy() {
        let may = |held, after, first: pb::StoreChange| refusal(held, after, &first).is_none();
        assert!(may(Some(7), 40, first(7, Some(40), &[])), "level");
        assert!(may(Some(7), 40, first(7, Some(41), &[])), "ahead");
        let behind = refusal(Some(7), 40, &first(7, Some(39), &[])).unwrap();
        assert!(
            behind.contains("write 39") && behind.contains("at 40"),
            "{behind}"
        );
        assert!(behind.contains("--accept-new-primary-store"), "{behind}");
        assert!(may(Some(7), 40, first(7, None, &[])), "an older primary");
        let diverged = pb::StoreChange {
            diverged: true,
            ..first(7, Some(90), &[])
        };
        let separate = refusal(Some(7), 40, &diverged).unwrap();
        assert!(separate.contains("writes of its own"), "{separate}");
        let forked = pb::StoreChange {
            diverged: true,
            ..first(9, Some(90), &[(7, 40)])
        };
        assert!(may(Some(7), 40, forked), "a fork numbers its own writes");
        assert!(
            may(Some(7), 0, first(7, Some(3), &[])),
            "a copy with no position"
        );

        assert!(
            may(Some(7), 40, first(9, Some(2), &[(7, 40)])),
            "forked at its last"
        );
        assert!(
            may(Some(7), 30, first(9, Some(2), &[(8, 5), (7, 40)])),
            "forked later"
        );
        let forked_before = refusal(Some(7), 41, &first(9, Some(2), &[(7, 40)])).unwrap();
        assert!(forked_before.contains("promoted"), "{forked_before}");
        assert!(
            may(Some(7), 41, first(9, Some(2), &[(7, 0)])),
            "fork point not known"
        );

        let other = refusal(Some(7), 40, &first(9, Some(90), &[(8, 40)])).unwrap();
        assert!(other.contains("not of the history"), "{other}");
        assert!(
            may(Some(7), 40, first(0, None, &[])),
            "a primary naming none"
        );
        assert!(may(None, 40, first(9, Some(1), &[])), "a copy naming none");
    }

    fn write(seq: u64, bytes: usize) -> Arc<Change> {
        Arc::new(Change {
            seq,
            origin: 1,
            tree: TreeName::Events,
            writes: vec![(seq.to_be_bytes().to_vec(), Some(vec![0; bytes - 8]))],
        })
    }

    /// A follower streaming its snapshot takes no writes for seconds: the primary's journal
    /// holds 512, a bulk load writes thousands meanwhile. Its backlog keeps them all, in
    /// order, up to its bytes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_busy_follower_keeps_more_writes_than_the_journal_holds() {
        let (journal, rx) = broadcast::channel(4);
        let mut backlog = Backlog::hold(rx, 1 << 20);
        for seq in 1..=1000 {
            journal.send(write(seq, 100)).unwrap();
            // The store's writers and the backlog's task run side by side.
            tokio::task::yield_now().await;
            while journal.len() > 2 {
                tokio::task::yield_now().await;
            }
        }
        for seq in 1..=1000 {
            match backlog.next().await {
                Some(Held::Write(change)) => assert_eq!(change.seq, seq),
                Some(Held::Behind) => panic!("cut off at write {seq} of 100 KB held"),
                None => panic!("the backlog ended at write {seq}"),
            }
        }
        assert_eq!(backlog.bytes.load(Ordering::Acquire), 0);
    }

    /// Past its bytes a follower is cut off (it copies again) instead of holding the
    /// primary's memory without bound; one write larger than the budget still goes through.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_follower_too_far_behind_is_cut_off() {
        let (journal, rx) = broadcast::channel(16);
        let mut backlog = Backlog::hold(rx, 1000);
        journal.send(write(1, 5000)).unwrap();
        assert!(matches!(backlog.next().await, Some(Held::Write(c)) if c.seq == 1));
        for seq in 2..=12 {
            journal.send(write(seq, 100)).unwrap();
        }
        // All taken from the journal and weighed before the follower takes any: ten writes
        // and the cut-off queued. (An empty journal is not enough: the backlog's task may
        // hold write 12 unweighed while the follower drains, and then it fits.)
        let weighed = async {
            while backlog.queue.len() < 11 {
                tokio::task::yield_now().await;
            }
        };
        let queued = tokio::time::timeout(Duration::from_secs(10), weighed).await;
        assert!(queued.is_ok(), "queued {} of 11", backlog.queue.len());
        for seq in 2..=11 {
            assert!(matches!(backlog.next().await, Some(Held::Write(c)) if c.seq == seq));
        }
        assert!(matches!(backlog.next().await, Some(Held::Behind)));
        assert!(backlog.next().await.is_none());
    }
}
