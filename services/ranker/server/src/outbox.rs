//! A replica's outbox: the events a shop sent through a replica while its primary could not
//! be reached (restarting, rolled by an update, a network cut), kept on the replica's disk
//! and passed on to the primary, in the order they came, once it answers again. Without it
//! those events failed (UNAVAILABLE) for as long as the primary was away: a minute or more
//! for a large shop's cold start, during every rolling update of pod 0.
//!
//! Delivery is at least once: a message the primary stored but whose answer was lost (the
//! connection cut after the store, or the replica stopped before it removed the message)
//! is sent again. Each message is passed on alone, so that is one message at most.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prost::Message;
use souk_proto::ranker::v1 as pb;
use souk_ranker_core::RankError;
use souk_shared::storage::WriteLatch;
use tokio::sync::{Notify, watch};
use tonic::Status;
use tonic::transport::Channel;

use crate::replica::{Backoff, RETRY_MAX, ReplicaState};
use crate::store::sled_error;

/// The most bytes of events an outbox holds; past them `RecordInteractions` on the replica
/// answers RESOURCE_EXHAUSTED (the shop keeps them and tries again) rather than fill the
/// disk. A 1,000-event message is ~60 KB: this holds ~4M events.
pub const OUTBOX_BYTES: u64 = 256 * 1024 * 1024;

fn internal(e: impl std::fmt::Display) -> RankError {
    RankError::Internal(format!("replica outbox: {e}"))
}

/// Whether `status` says the primary (or the graph) could not take a message now (try again
/// later), rather than that it refused it: a message refused is dropped. RESOURCE_EXHAUSTED
/// is a server over its concurrency limit, or a store whose disk is full: it passes (in this
/// system no message is refused with it for what it holds).
pub(crate) fn unreachable(status: &Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::ResourceExhausted
    )
}

/// The queued messages, in a sled tree of the replica's store that a copy of the primary
/// neither sends nor clears: key = a big-endian number, rising; value = the message as
/// protobuf.
pub(crate) struct Outbox {
    tree: sled::Tree,
    /// The key of the next message.
    next: AtomicU64,
    events: AtomicU64,
    bytes: AtomicU64,
    /// Rung when a message is queued.
    queued: Notify,
    /// `souk_replica_outbox_events`.
    gauge: prometheus::IntGauge,
    /// The store's ([`crate::store::RankerStore::latch`]): the tree is in its database.
    latch: Arc<WriteLatch<RankError>>,
}

impl Outbox {
    /// The outbox in `tree`, with what an earlier run left in it; `souk_replica_outbox_events`
    /// registered in `registry`. Its writes are refused once one of the store's failed on
    /// the disk (`latch`, the store's).
    ///
    /// # Errors
    /// When the tree cannot be read or the gauge registered.
    pub fn open(
        tree: sled::Tree,
        registry: &prometheus::Registry,
        latch: Arc<WriteLatch<RankError>>,
    ) -> Result<Self, RankError> {
        let gauge = prometheus::IntGauge::new(
            "replica_outbox_events",
            "Events this replica took while its primary was unreachable and has not yet \
             passed on to it.",
        )
        .map_err(internal)?;
        registry
            .register(Box::new(gauge.clone()))
            .map_err(internal)?;
        let (mut events, mut bytes) = (0u64, 0u64);
        for entry in tree.iter() {
            let (_, value) = entry.map_err(internal)?;
            bytes += value.len() as u64;
            // A damaged message is counted as none; the drain logs and drops it.
            events += pb::RecordInteractionsRequest::decode(value.as_ref())
                .map_or(0, |m| m.interactions.len() as u64);
        }
        gauge.set(events as i64);
        let next = next_key(&tree).map_err(internal)?;
        Ok(Self {
            tree,
            next: AtomicU64::new(next),
            events: AtomicU64::new(events),
            bytes: AtomicU64::new(bytes),
            queued: Notify::new(),
            gauge,
            latch,
        })
    }

    /// Events waiting for the primary.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// Queues `message` after the others, durably (flushed before it returns).
    ///
    /// # Errors
    /// RESOURCE_EXHAUSTED when the outbox holds [`OUTBOX_BYTES`] or the disk is full;
    /// UNAVAILABLE when the store failed another write on its disk (see
    /// [`crate::status`]).
    pub fn push(&self, message: &pb::RecordInteractionsRequest) -> Result<(), Status> {
        let value = message.encode_to_vec();
        let size = value.len() as u64;
        if self.bytes.load(Ordering::Acquire) + size > OUTBOX_BYTES {
            return Err(Status::resource_exhausted(format!(
                "the primary is unreachable and this replica's outbox holds {} events \
                 ({OUTBOX_BYTES} bytes): send them again later",
                self.events()
            )));
        }
        let key = self.next.fetch_add(1, Ordering::AcqRel);
        self.latch
            .write(|| {
                self.tree
                    .insert(key.to_be_bytes(), value)
                    .map_err(sled_error)?;
                self.tree.flush().map_err(sled_error)
            })
            .map_err(crate::status)?;
        self.bytes.fetch_add(size, Ordering::AcqRel);
        let events = message.interactions.len() as u64;
        let now = self.events.fetch_add(events, Ordering::AcqRel) + events;
        self.gauge.set(now as i64);
        self.queued.notify_one();
        Ok(())
    }

    /// Removes the oldest message, `key`, once the primary took it. Not flushed: a removal
    /// lost to a crash sends the message once more, which a flush here would not prevent
    /// either (the crash may come before it).
    fn remove(&self, key: &[u8], bytes: u64, events: u64) -> Result<(), RankError> {
        self.latch
            .write(|| self.tree.remove(key).map_err(sled_error))?;
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
        let now = self.events.fetch_sub(events, Ordering::AcqRel) - events;
        self.gauge.set(now as i64);
        Ok(())
    }
}

/// The number after the last key of a queue `tree` keyed by big-endian numbers (0 when
/// empty): where the next message goes (this outbox and the graph's).
pub(crate) fn next_key(tree: &sled::Tree) -> sled::Result<u64> {
    Ok(tree.last()?.map_or(0, |(key, _)| key_number(&key) + 1))
}

fn key_number(key: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = key.len().min(8);
    bytes[8 - n..].copy_from_slice(&key[key.len() - n..]);
    u64::from_be_bytes(bytes)
}

/// Passes the outbox's messages on to `primary`, oldest first, one per call, until
/// `stopped`: a message leaves the outbox once the primary answered for it. While the
/// primary is unreachable it waits ([`Backoff`]); a message the
/// primary refuses (it was checked as the primary checks it, so only a primary with other
/// rules does) is logged and dropped, so one bad message cannot hold up the rest. While the
/// replica refuses its primary's store ([`ReplicaState::refused`]) nothing is sent.
pub(crate) async fn drain(
    outbox: Arc<Outbox>,
    primary: pb::ranker_client::RankerClient<Channel>,
    replica: Arc<ReplicaState>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new();
    loop {
        if replica.refused().is_some() {
            // The primary's store is another history than the replica's copy: the events
            // wait for one that holds it (see `replica::follow`).
            tokio::select! {
                _ = tokio::time::sleep(RETRY_MAX) => continue,
                _ = stopped.wait_for(|stop| *stop) => return,
            }
        }
        let oldest = match outbox.tree.first() {
            Ok(oldest) => oldest,
            Err(error) => {
                tracing::error!(%error, "cannot read the replica's outbox");
                None
            }
        };
        let Some((key, value)) = oldest else {
            tokio::select! {
                _ = outbox.queued.notified() => continue,
                _ = tokio::time::sleep(RETRY_MAX) => continue,
                _ = stopped.wait_for(|stop| *stop) => return,
            }
        };
        let bytes = value.len() as u64;
        let message = match pb::RecordInteractionsRequest::decode(value.as_ref()) {
            Ok(message) => message,
            Err(error) => {
                tracing::error!(%error, "a damaged message in the replica's outbox; dropped");
                if let Err(error) = outbox.remove(&key, bytes, 0) {
                    tracing::error!(%error, "cannot remove it");
                }
                continue;
            }
        };
        let events = message.interactions.len() as u64;
        let mut client = primary.clone();
        let sent = tokio::select! {
            sent = client.record_interactions(futures::stream::iter([message])) => sent,
            _ = stopped.wait_for(|stop| *stop) => return,
        };
        match sent {
            Ok(answer) => {
                backoff.reset();
                let answer = answer.into_inner();
                let (forgotten, duplicates) = (answer.forgotten, answer.duplicates);
                if forgotten > 0 || duplicates > 0 {
                    // Duplicates: a message whose answer was lost, sent again.
                    tracing::info!(
                        forgotten,
                        duplicates,
                        "queued events not recorded: of shoppers forgotten since, or \
                         recorded already"
                    );
                }
                if let Err(error) = outbox.remove(&key, bytes, events) {
                    tracing::error!(%error, "cannot remove a delivered message from the outbox");
                    return;
                }
                if outbox.is_empty() {
                    tracing::info!("the replica's outbox is delivered to the primary");
                }
            }
            Err(status) if unreachable(&status) => {
                if !backoff.wait(&mut stopped).await {
                    return;
                }
            }
            Err(status) => {
                tracing::error!(
                    code = ?status.code(),
                    message = status.message(),
                    events,
                    "the primary refused queued events; dropped"
                );
                if let Err(error) = outbox.remove(&key, bytes, events) {
                    tracing::error!(%error, "cannot remove a refused message from the outbox");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::unreachable;
    use tonic::{Code, Status};

    #[test]
    fn messages_a_server_could_not_take_now_are_kept_and_refused_ones_dropped() {
        let kept = [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Cancelled,
            // Over the concurrency limit, or the store's disk full: it passes.
            Code::ResourceExhausted,
        ];
        for code in kept {
            assert!(unreachable(&Status::new(code, "")), "{code:?} is dropped");
        }
        let refused = [
            Code::InvalidArgument,
            Code::Internal,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::FailedPrecondition,
        ];
        for code in refused {
            assert!(
                !unreachable(&Status::new(code, "")),
                "{code:?} is kept forever"
            );
        }
    }
}
