//! The knowledge graph's outbox: item fact batches (`UpsertItems`, `UpdateItems`) the graph
//! could not take when their items were stored, kept on the primary's disk and sent, in the
//! order they were stored, once it answers again. Without it a graph restarting during a feed
//! missed those items' facts for good, and worse, the old values they replaced: a load sent
//! again computes its removals from the stored items, which already carry the new values.
//!
//! Order matters (an item recoloured twice must end with the second colour), so a batch goes
//! straight to the graph only while nothing waits; otherwise it queues behind the others.
//! Delivery is at least once: a batch the graph applied whose answer was lost is sent again,
//! which changes nothing (loading a triple that exists and removing one that does not are
//! no-ops).
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use souk_ranker_core::RankError;
use souk_ranker_core::item::Fact;
use souk_shared::storage::WriteLatch;
use tokio::sync::{Mutex, Notify, watch};

use crate::outbox::{next_key, unreachable};
use crate::replica::Backoff;
use crate::sources::GrpcGraph;
use crate::store::sled_error;

fn internal(e: impl std::fmt::Display) -> RankError {
    RankError::Internal(format!("graph outbox: {e}"))
}

/// One graph batch: removals, then facts to add.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Pending {
    remove: Vec<Fact>,
    add: Vec<Fact>,
}

/// The queued batches in the primary's sled tree `graph_outbox`: key = a big-endian number,
/// rising; value = the batch as JSON.
pub(crate) struct GraphOutbox {
    tree: sled::Tree,
    next: AtomicU64,
    /// Batches in `tree` (sled's own `len` scans the whole tree).
    waiting: AtomicU64,
    /// Held while batches are sent or queued: one sender at a time keeps them in order.
    sending: Mutex<()>,
    /// Rung when a batch is queued.
    queued: Notify,
    /// `souk_graph_outbox_batches`.
    gauge: prometheus::IntGauge,
    /// The store's ([`crate::store::RankerStore::latch`]): the tree is in its database.
    latch: Arc<WriteLatch<RankError>>,
}

impl GraphOutbox {
    /// The outbox in `tree`, with what an earlier run left in it; its gauge registered in
    /// `registry`. Its writes are refused once one of the store's failed on the disk
    /// (`latch`, the store's).
    ///
    /// # Errors
    /// When the tree cannot be read or the gauge registered.
    pub fn open(
        tree: sled::Tree,
        registry: &prometheus::Registry,
        latch: Arc<WriteLatch<RankError>>,
    ) -> Result<Self, RankError> {
        let gauge = prometheus::IntGauge::new(
            "graph_outbox_batches",
            "Item fact batches stored in the catalog that the knowledge graph has not taken \
             yet (it was unreachable); sent in order once it answers.",
        )
        .map_err(internal)?;
        registry
            .register(Box::new(gauge.clone()))
            .map_err(internal)?;
        let waiting = tree.len() as u64;
        gauge.set(waiting as i64);
        let next = next_key(&tree).map_err(internal)?;
        Ok(Self {
            tree,
            next: AtomicU64::new(next),
            waiting: AtomicU64::new(waiting),
            sending: Mutex::new(()),
            queued: Notify::new(),
            gauge,
            latch,
        })
    }

    /// Batches waiting for the graph.
    pub fn len(&self) -> u64 {
        self.waiting.load(Ordering::Acquire)
    }

    /// Sends one stored batch's facts: at once when nothing waits (the number of removals
    /// the graph made), else, or when the graph cannot be reached, queued behind the others
    /// ([`Sent::Queued`]; the drain sends it). A batch the graph refuses (a fact it finds invalid, a
    /// wrong admin token) is logged and dropped: sending it again would be refused again,
    /// and it would hold up every batch behind it.
    ///
    /// # Errors
    /// When the batch cannot be queued (the store cannot be written).
    pub async fn send(
        &self,
        graph: &GrpcGraph,
        remove: Vec<Fact>,
        add: Vec<Fact>,
        timeout: Duration,
    ) -> Result<Sent, RankError> {
        let _sending = self.sending.lock().await;
        if self.flush(graph, timeout).await? {
            match graph
                .change_facts(remove.clone(), add.clone(), timeout)
                .await
            {
                Ok(removed) => return Ok(Sent::Taken(removed)),
                Err(status) if !unreachable(&status) => {
                    refused(&status);
                    return Ok(Sent::Refused);
                }
                Err(status) => {
                    tracing::warn!(
                        code = ?status.code(),
                        message = status.message(),
                        "item facts did not reach the knowledge graph: queued"
                    );
                }
            }
        }
        self.push(&Pending { remove, add })?;
        Ok(Sent::Queued)
    }

    /// Queues a batch after the others, durably.
    fn push(&self, pending: &Pending) -> Result<(), RankError> {
        let value = serde_json::to_vec(pending).map_err(internal)?;
        let key = self.next.fetch_add(1, Ordering::AcqRel);
        self.latch.write(|| {
            self.tree
                .insert(key.to_be_bytes(), value)
                .map_err(sled_error)?;
            self.tree.flush().map_err(sled_error)
        })?;
        let now = self.waiting.fetch_add(1, Ordering::AcqRel) + 1;
        self.gauge.set(now as i64);
        self.queued.notify_one();
        Ok(())
    }

    /// Sends the queued batches in order, each removed once the graph took it; stops at the
    /// first the graph cannot take. True when none is left. The caller holds `sending`.
    async fn flush(&self, graph: &GrpcGraph, timeout: Duration) -> Result<bool, RankError> {
        // A batch sent now could not be removed: it would go again at every try.
        self.latch.writable()?;
        while let Some((key, value)) = self.tree.first().map_err(internal)? {
            match serde_json::from_slice::<Pending>(&value) {
                Ok(pending) => match graph
                    .change_facts(pending.remove, pending.add, timeout)
                    .await
                {
                    Ok(_) => {}
                    Err(status) if !unreachable(&status) => refused(&status),
                    Err(status) => {
                        tracing::debug!(
                            code = ?status.code(),
                            waiting = self.len(),
                            "knowledge graph still unreachable"
                        );
                        return Ok(false);
                    }
                },
                Err(error) => {
                    tracing::error!(%error, "dropping a damaged graph outbox entry");
                }
            }
            self.latch
                .write(|| self.tree.remove(&key).map_err(sled_error))?;
            let now = self
                .waiting
                .fetch_sub(1, Ordering::AcqRel)
                .saturating_sub(1);
            self.gauge.set(now as i64);
        }
        Ok(true)
    }
}

/// Logs a batch the graph refused (it is not sent again).
/// What became of a batch of item facts given to [`GraphOutbox::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// The graph took it, and removed this many of its removals.
    Taken(u64),
    /// It waits in the outbox, sent when the graph answers.
    Queued,
    /// The graph refused it (logged): dropped.
    Refused,
}

fn refused(status: &tonic::Status) {
    tracing::error!(
        code = ?status.code(),
        message = status.message(),
        "the knowledge graph refused a batch of item facts; it is dropped (the items are stored)"
    );
}

/// Sends what the outbox holds whenever something is queued, retrying with a back-off while
/// the graph is away, until `stopped`.
pub(crate) async fn drain(
    outbox: Arc<GraphOutbox>,
    graph: Arc<GrpcGraph>,
    timeout: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new();
    loop {
        if outbox.len() == 0 {
            tokio::select! {
                () = outbox.queued.notified() => {}
                _ = stopped.wait_for(|stop| *stop) => return,
            }
            // A batch was queued because the graph just failed: wait before trying it.
            backoff.reset();
            if !backoff.wait(&mut stopped).await {
                return;
            }
        }
        let (waiting, emptied) = {
            let _sending = outbox.sending.lock().await;
            (outbox.len(), outbox.flush(&graph, timeout).await)
        };
        match emptied {
            Ok(true) => {
                if waiting > 0 {
                    tracing::info!(
                        batches = waiting,
                        "the knowledge graph took the item fact batches that waited for it"
                    );
                }
                backoff.reset();
            }
            Ok(false) => {
                if !backoff.wait(&mut stopped).await {
                    return;
                }
            }
            Err(error) => {
                tracing::error!(%error, "graph outbox");
                if !backoff.wait(&mut stopped).await {
                    return;
                }
            }
        }
    }
}
