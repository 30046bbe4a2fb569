//! The knowledge graph's own Prometheus metrics, next to the per-RPC ones every souk server
//! has:
//!
//! | metric | kind | what |
//! |---|---|---|
//! | `souk_kg_compactions_total{result}` | counter | compactions of the store while serving: `ok` or `failed` |
//! | `souk_kg_compaction_writes_held_seconds` | histogram | how long a compaction held loads off (copying what was loaded during its catch-up, naming the new store) |
//! | `souk_kg_removed_triples_in_store` | gauge | removed triples still in the store's log (what the next compaction drops) |
//! | `souk_store_write_failed{reason}` | gauge | 1 once the store failed a write on its disk (`disk_full`, `io_error`): loads are refused until the service restarts (`souk_shared::storage::WriteLatch`) |
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};

/// What the service reports about its store's compactions.
#[derive(Clone)]
pub struct KgMetrics {
    compactions: IntCounterVec,
    writes_held: Histogram,
    removed_in_store: IntGauge,
    /// `souk_store_write_failed`, which the store in use reports into.
    pub store_write_failed: prometheus::IntGaugeVec,
}

impl KgMetrics {
    /// Creates and registers the metrics.
    ///
    /// # Errors
    /// When a metric of the same name is already registered.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            compactions: IntCounterVec::new(
                Opts::new(
                    "kg_compactions_total",
                    "Compactions of the graph's store while serving, by result (ok, failed).",
                ),
                &["result"],
            )?,
            writes_held: Histogram::with_opts(
                HistogramOpts::new(
                    "kg_compaction_writes_held_seconds",
                    "How long a compaction held loads off (catching up on the batches loaded \
                     while it copied the graph).",
                )
                .buckets(prometheus::exponential_buckets(0.005, 2.0, 12)?),
            )?,
            removed_in_store: IntGauge::new(
                "kg_removed_triples_in_store",
                "Removed triples still in the store's log, read at every start; the next \
                 compaction drops them.",
            )?,
            store_write_failed: souk_shared::storage::write_failed_gauge(registry)?,
        };
        registry.register(Box::new(metrics.compactions.clone()))?;
        registry.register(Box::new(metrics.writes_held.clone()))?;
        registry.register(Box::new(metrics.removed_in_store.clone()))?;
        // Both results are listed from the start, so an alert on `failed` sees a 0 first.
        for result in ["ok", "failed"] {
            metrics.compactions.with_label_values(&[result]);
        }
        Ok(metrics)
    }

    pub fn compacted(&self, writes_held: std::time::Duration) {
        self.compactions.with_label_values(&["ok"]).inc();
        self.writes_held.observe(writes_held.as_secs_f64());
    }

    pub fn compaction_failed(&self) {
        self.compactions.with_label_values(&["failed"]).inc();
    }

    pub fn removed_in_store(&self, removed: u64) {
        self.removed_in_store
            .set(i64::try_from(removed).unwrap_or(i64::MAX));
    }
}
