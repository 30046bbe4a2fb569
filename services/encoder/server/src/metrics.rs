//! The encoder's own Prometheus metrics, next to the per-RPC ones every souk server has:
//!
//! | metric | kind | what |
//! |---|---|---|
//! | `souk_encoder_queue_depth` | gauge (read at scrape) | requests waiting for the inference thread |
//! | `souk_encoder_batch_texts` | histogram | texts per forward pass |
//! | `souk_encoder_batch_tokens` | histogram | real word pieces per forward pass |
//! | `souk_encoder_batch_padding_ratio` | histogram | padded / real tokens per forward pass |
//! | `souk_encoder_tokenize_seconds` | histogram | tokenization of one request |
//! | `souk_encoder_inference_seconds` | histogram | one forward pass |
//! | `souk_encoder_abandoned_texts_total` | counter | texts not computed: their caller had gone (deadline, cancel) |
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};
use souk_encoder_core::batcher::{BatchObserver, Batcher};

/// Histograms the batcher reports into.
pub struct EncoderMetrics {
    texts: Histogram,
    tokens: Histogram,
    padding: Histogram,
    tokenize: Histogram,
    inference: Histogram,
    abandoned: IntCounter,
}

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Result<Histogram, prometheus::Error> {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
}

impl EncoderMetrics {
    /// Creates and registers the histograms.
    ///
    /// # Errors
    /// When a metric of the same name is already registered.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let sizes = vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
        let tokens = vec![
            16.0, 64.0, 256.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0,
        ];
        let times = prometheus::exponential_buckets(0.000_25, 2.0, 14)?;
        let metrics = Self {
            texts: histogram("encoder_batch_texts", "Texts per forward pass.", sizes)?,
            tokens: histogram(
                "encoder_batch_tokens",
                "Real word pieces per forward pass.",
                tokens,
            )?,
            padding: histogram(
                "encoder_batch_padding_ratio",
                "Padded over real tokens per forward pass (1 = no padding).",
                vec![1.0, 1.05, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0],
            )?,
            tokenize: histogram(
                "encoder_tokenize_seconds",
                "Tokenization of one request.",
                times.clone(),
            )?,
            inference: histogram("encoder_inference_seconds", "One forward pass.", times)?,
            abandoned: IntCounter::new(
                "encoder_abandoned_texts_total",
                "Texts not computed because their caller had gone (a deadline, a cancelled call).",
            )?,
        };
        for h in [
            &metrics.texts,
            &metrics.tokens,
            &metrics.padding,
            &metrics.tokenize,
            &metrics.inference,
        ] {
            registry.register(Box::new(h.clone()))?;
        }
        registry.register(Box::new(metrics.abandoned.clone()))?;
        Ok(metrics)
    }
}

impl BatchObserver for EncoderMetrics {
    fn tokenized(&self, _texts: usize, elapsed: Duration) {
        self.tokenize.observe(elapsed.as_secs_f64());
    }

    fn forward(&self, texts: usize, real_tokens: usize, padded_tokens: usize, elapsed: Duration) {
        self.texts.observe(texts as f64);
        self.tokens.observe(real_tokens as f64);
        if real_tokens > 0 {
            self.padding
                .observe(padded_tokens as f64 / real_tokens as f64);
        }
        self.inference.observe(elapsed.as_secs_f64());
    }

    fn abandoned(&self, texts: usize) {
        self.abandoned.inc_by(texts as u64);
    }
}

/// `souk_encoder_queue_depth`, read from the batcher at scrape time.
pub struct QueueDepth {
    batcher: Batcher,
    gauge: IntGauge,
}

impl QueueDepth {
    /// # Errors
    /// When the gauge's options are invalid (they are constants).
    pub fn new(batcher: Batcher) -> Result<Self, prometheus::Error> {
        Ok(Self {
            batcher,
            gauge: IntGauge::new(
                "encoder_queue_depth",
                "Requests waiting for the inference thread.",
            )?,
        })
    }
}

impl Collector for QueueDepth {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.gauge.set(self.batcher.queue_depth() as i64);
        self.gauge.collect()
    }
}
