//! Dynamic batching under a token budget (the idea of TEI's `max_batch_tokens`).
//!
//! Callers tokenize on the blocking pool, then queue a job on a bounded channel. One inference
//! thread owns the [`Backend`]: it takes the first waiting job, drains whatever else is queued
//! up to the token budget, sorts all sequences by length (so each forward pass pads little),
//! cuts them into passes of at most `max_batch_tokens` padded tokens, and replies to every job.
//! A full queue answers [`EncoderError::Overloaded`] at once instead of growing memory.
//! A request whose caller has gone (a deadline passed, the call was cancelled) is dropped
//! unanswered before each forward pass, so a burst that callers gave up on costs the next
//! caller one pass, not every abandoned one.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use crate::{Backend, Batch, EncoderError, Sequence, TextTokenizer, l2_normalize};

/// One forward pass before any request, checked like a real answer (a vector per sequence,
/// the backend's dimension, finite values): a device setup that cannot run (kernels that do not
/// load, a missing library, weights that give NaN in this dtype) then fails the start with its
/// cause, before the service reports ready, instead of failing every request; and the first
/// caller does not pay for loading kernels. With the longest sequence the model takes, it also
/// reserves the device memory of a full-length pass.
///
/// # Errors
/// `Backend`, naming the device and dtype, when the pass fails or its answer is malformed.
pub fn warm_up<B: Backend>(backend: &mut B, batch: &Batch) -> Result<(), EncoderError> {
    let context = format!("warm-up pass on {} {}", backend.device(), backend.dtype());
    let vectors = backend
        .embed(batch)
        .map_err(|e| EncoderError::Backend(format!("{context} failed: {e}")))?;
    let dimension = backend.dimension();
    if vectors.len() != batch.sequences.len() {
        return Err(EncoderError::Backend(format!(
            "{}: {} vectors for {} sequences",
            context,
            vectors.len(),
            batch.sequences.len()
        )));
    }
    for (i, v) in vectors.iter().enumerate() {
        if v.len() != dimension {
            return Err(EncoderError::Backend(format!(
                "{}: vector {i} has {} values, the model's dimension is {dimension}",
                context,
                v.len()
            )));
        }
        if !v.iter().all(|x| x.is_finite()) {
            return Err(EncoderError::Backend(format!(
                "{}: vector {i} is not finite (NaN or infinity)",
                context
            )));
        }
    }
    Ok(())
}

/// Limits of the batcher.
#[derive(Debug, Clone, Copy)]
pub struct BatcherOptions {
    /// Padded tokens (longest sequence x sequences) in one forward pass.
    pub max_batch_tokens: usize,
    /// Jobs (requests) waiting for the inference thread before new ones are refused.
    pub queue_capacity: usize,
}

impl Default for BatcherOptions {
    fn default() -> Self {
        Self {
            max_batch_tokens: 16_384,
            queue_capacity: 256,
        }
    }
}

/// One embedded text.
#[derive(Debug, Clone)]
pub struct Embedded {
    pub vector: Vec<f32>,
    /// Word pieces the model saw.
    pub tokens: usize,
}

/// Counters the server exports as metrics.
#[derive(Debug, Default)]
pub struct BatcherStats {
    pub forward_passes: AtomicU64,
    pub sequences: AtomicU64,
    pub padded_tokens: AtomicU64,
    pub real_tokens: AtomicU64,
    pub inference_micros: AtomicU64,
    /// Texts not computed because their caller had gone.
    pub abandoned_texts: AtomicU64,
}

struct Job {
    sequences: Vec<Sequence>,
    normalize: bool,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, EncoderError>>,
}

/// Told about each tokenization and forward pass, for metrics (the server's Prometheus
/// histograms); the batcher never waits on it.
pub trait BatchObserver: Send + Sync + 'static {
    /// One request's texts were tokenized.
    fn tokenized(&self, _texts: usize, _elapsed: std::time::Duration) {}
    /// One forward pass ran: its texts, real and padded token counts, and its duration.
    fn forward(
        &self,
        _texts: usize,
        _real_tokens: usize,
        _padded_tokens: usize,
        _elapsed: std::time::Duration,
    ) {
    }
    /// Texts of requests whose caller had gone were dropped without a forward pass.
    fn abandoned(&self, _texts: usize) {}
}

struct Unobserved;

impl BatchObserver for Unobserved {}

/// Handle to the inference thread; cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Job>,
    tokenizer: Arc<TextTokenizer>,
    stats: Arc<BatcherStats>,
    observer: Arc<dyn BatchObserver>,
    dimension: usize,
    device: String,
    dtype: String,
}

impl Batcher {
    /// Starts the inference thread, which owns `backend` until every handle is dropped.
    ///
    /// # Errors
    /// When the thread cannot be spawned.
    pub fn spawn<B: Backend>(
        backend: B,
        tokenizer: TextTokenizer,
        options: BatcherOptions,
    ) -> Result<Self, EncoderError> {
        Self::spawn_observed(backend, tokenizer, options, Arc::new(Unobserved))
    }

    /// As [`Batcher::spawn`], reporting to `observer`.
    ///
    /// # Errors
    /// When the thread cannot be spawned.
    pub fn spawn_observed<B: Backend>(
        backend: B,
        tokenizer: TextTokenizer,
        options: BatcherOptions,
        observer: Arc<dyn BatchObserver>,
    ) -> Result<Self, EncoderError> {
        Self::spawn_workers(vec![backend], tokenizer, options, observer)
    }

    /// One inference thread per backend, all taking batches from the one queue: on a CPU
    /// with few cores, two single-threaded workers on concurrent batches use the cores better
    /// than one worker whose matrix products barely split (BENCHMARKS.md).
    ///
    /// Every backend first runs [`warm_up`] on a short and a longest-possible text.
    ///
    /// # Errors
    /// When `backends` is empty, a warm-up pass fails or a thread cannot be spawned.
    pub fn spawn_workers<B: Backend>(
        mut backends: Vec<B>,
        tokenizer: TextTokenizer,
        options: BatcherOptions,
        observer: Arc<dyn BatchObserver>,
    ) -> Result<Self, EncoderError> {
        let Some(first) = backends.first() else {
            return Err(EncoderError::Backend("no inference backend to run".into()));
        };
        let (dimension, device, dtype) = (first.dimension(), first.device(), first.dtype());
        let warm = Batch {
            sequences: vec![
                tokenizer.encode_one("warm-up", true)?,
                tokenizer.encode_one(&"warm-up ".repeat(tokenizer.max_len()), true)?,
            ],
        };
        for backend in &mut backends {
            warm_up(backend, &warm)?;
        }
        let (tx, rx) = mpsc::channel(options.queue_capacity.max(1));
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let stats = Arc::new(BatcherStats::default());
        for (i, backend) in backends.into_iter().enumerate() {
            let (rx, worker_stats, worker_observer) = (rx.clone(), stats.clone(), observer.clone());
            std::thread::Builder::new()
                .name(format!("souk-encoder-inference-{i}"))
                .spawn(move || {
                    run_inference(backend, &rx, options, &worker_stats, &*worker_observer)
                })
                .map_err(|e| {
                    EncoderError::Backend(format!("cannot start an inference thread: {e}"))
                })?;
        }
        Ok(Self {
            tx,
            tokenizer: Arc::new(tokenizer),
            stats,
            observer,
            dimension,
            device,
            dtype,
        })
    }

    /// Tokenizes and embeds `texts`, sharing forward passes with concurrent callers.
    ///
    /// # Errors
    /// `InvalidInput` for a text over the limit with `truncate` false (naming its index);
    /// `Overloaded` when the queue is full; `Backend` when the forward pass fails.
    pub async fn embed(
        &self,
        texts: Vec<String>,
        truncate: bool,
        normalize: bool,
    ) -> Result<Vec<Embedded>, EncoderError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let tokenizer = self.tokenizer.clone();
        let observer = self.observer.clone();
        let sequences = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let sequences = tokenizer.encode_all(&texts, truncate);
            observer.tokenized(texts.len(), started.elapsed());
            sequences
        })
        .await
        .map_err(|e| EncoderError::Backend(format!("tokenizer task failed: {e}")))??;
        let tokens: Vec<usize> = sequences.iter().map(|s| s.ids.len()).collect();
        let (reply, answer) = oneshot::channel();
        self.tx
            .try_send(Job {
                sequences,
                normalize,
                reply,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => EncoderError::Overloaded(format!(
                    "{} requests already queued; retry with backoff",
                    self.tx.max_capacity()
                )),
                mpsc::error::TrySendError::Closed(_) => EncoderError::Closed,
            })?;
        let vectors = answer.await.map_err(|_| EncoderError::Closed)??;
        Ok(vectors
            .into_iter()
            .zip(tokens)
            .map(|(vector, tokens)| Embedded { vector, tokens })
            .collect())
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    pub fn dimension(&self) -> usize {
        self.dimension
    }

    pub fn device(&self) -> &str {
        &self.device
    }

    pub fn dtype(&self) -> &str {
        &self.dtype
    }

    /// Jobs waiting for the inference thread.
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    pub fn stats(&self) -> &BatcherStats {
        &self.stats
    }
}

/// Sequence `index` of job `job`.
struct Slot {
    job: usize,
    index: usize,
    sequence: Sequence,
}

fn run_inference<B: Backend>(
    mut backend: B,
    rx: &std::sync::Mutex<mpsc::Receiver<Job>>,
    options: BatcherOptions,
    stats: &BatcherStats,
    observer: &dyn BatchObserver,
) {
    loop {
        // The queue is held only while a batch is collected; the forward pass runs unlocked,
        // so another worker can collect the next batch meanwhile.
        // It blocks for the first job whose caller still waits, then takes what else is
        // queued up to the token budget; jobs whose callers have gone are dropped on the way.
        let jobs = {
            let Ok(mut rx) = rx.lock() else { return };
            let mut jobs: Vec<Job> = Vec::new();
            let mut queued = 0;
            while jobs.is_empty() || queued < options.max_batch_tokens {
                let job = if jobs.is_empty() {
                    let Some(job) = rx.blocking_recv() else {
                        return;
                    };
                    job
                } else {
                    match rx.try_recv() {
                        Ok(job) => job,
                        Err(_) => break,
                    }
                };
                if job.reply.is_closed() {
                    abandon(stats, observer, job.sequences.len());
                    continue;
                }
                queued += job.sequences.iter().map(|s| s.ids.len()).sum::<usize>();
                jobs.push(job);
            }
            jobs
        };
        let mut slots = Vec::new();
        let mut results: Vec<Result<Vec<Vec<f32>>, EncoderError>> = Vec::with_capacity(jobs.len());
        let mut replies = Vec::with_capacity(jobs.len());
        for (j, job) in jobs.into_iter().enumerate() {
            results.push(Ok(vec![Vec::new(); job.sequences.len()]));
            replies.push((job.reply, job.normalize));
            for (index, sequence) in job.sequences.into_iter().enumerate() {
                slots.push(Slot {
                    job: j,
                    index,
                    sequence,
                });
            }
        }
        slots.sort_by_key(|s| s.sequence.ids.len());
        for mut pass in split_by_budget(slots, options.max_batch_tokens) {
            // A caller may give up while earlier passes run: its texts are not computed.
            let before = pass.len();
            pass.retain(|s| !replies[s.job].0.is_closed());
            if pass.len() < before {
                abandon(stats, observer, before - pass.len());
            }
            if pass.is_empty() {
                continue;
            }
            let owners: Vec<(usize, usize)> = pass.iter().map(|s| (s.job, s.index)).collect();
            let batch = Batch {
                sequences: pass.into_iter().map(|s| s.sequence).collect(),
            };
            let started = std::time::Instant::now();
            let outcome = backend.embed(&batch);
            let elapsed = started.elapsed();
            record(stats, &batch, elapsed);
            observer.forward(
                batch.sequences.len(),
                batch.sequences.iter().map(|s| s.ids.len()).sum(),
                batch.max_len() * batch.sequences.len(),
                elapsed,
            );
            match outcome {
                Ok(vectors) if vectors.len() == owners.len() => {
                    for ((job, index), vector) in owners.into_iter().zip(vectors) {
                        // A NaN or infinite vector (half-precision overflow, a kernel fault)
                        // would poison every index it reaches: fail that request instead.
                        if !vector.iter().all(|v| v.is_finite()) {
                            let message = format!(
                                "the forward pass gave non-finite values for text {index} of a request"
                            );
                            tracing::error!("{message}");
                            results[job] = Err(EncoderError::Backend(message));
                            continue;
                        }
                        if let Ok(out) = &mut results[job] {
                            out[index] = vector;
                        }
                    }
                }
                Ok(vectors) => {
                    let message = format!(
                        "backend returned {} vectors for {} texts",
                        vectors.len(),
                        owners.len()
                    );
                    tracing::error!("{message}");
                    for (job, _) in owners {
                        results[job] = Err(EncoderError::Backend(message.clone()));
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "forward pass failed");
                    let message = error.to_string();
                    for (job, _) in owners {
                        results[job] = Err(EncoderError::Backend(message.clone()));
                    }
                }
            }
        }
        for ((reply, normalize), mut result) in replies.into_iter().zip(results) {
            if let (Ok(vectors), true) = (&mut result, normalize) {
                vectors.iter_mut().for_each(|v| l2_normalize(v));
            }
            // The caller may have gone (deadline); nothing to do then.
            let _ = reply.send(result);
        }
    }
}

fn abandon(stats: &BatcherStats, observer: &dyn BatchObserver, texts: usize) {
    stats
        .abandoned_texts
        .fetch_add(texts as u64, Ordering::Relaxed);
    observer.abandoned(texts);
}

fn record(stats: &BatcherStats, batch: &Batch, elapsed: std::time::Duration) {
    stats.forward_passes.fetch_add(1, Ordering::Relaxed);
    stats
        .sequences
        .fetch_add(batch.sequences.len() as u64, Ordering::Relaxed);
    stats.padded_tokens.fetch_add(
        (batch.max_len() * batch.sequences.len()) as u64,
        Ordering::Relaxed,
    );
    stats.real_tokens.fetch_add(
        batch.sequences.iter().map(|s| s.ids.len() as u64).sum(),
        Ordering::Relaxed,
    );
    stats
        .inference_micros
        .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
}

/// Cuts length-sorted slots into passes whose padded size (count x longest) stays within
/// `budget`; a single sequence longer than the budget gets a pass of its own.
fn split_by_budget(slots: Vec<Slot>, budget: usize) -> Vec<Vec<Slot>> {
    let mut passes = Vec::new();
    let mut current: Vec<Slot> = Vec::new();
    for slot in slots {
        let len = slot.sequence.ids.len().max(1);
        if !current.is_empty() && (current.len() + 1) * len > budget {
            passes.push(std::mem::take(&mut current));
        }
        current.push(slot);
    }
    if !current.is_empty() {
        passes.push(current);
    }
    passes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(len: usize) -> Slot {
        Slot {
            job: 0,
            index: 0,
            sequence: Sequence {
                ids: vec![1; len],
                type_ids: vec![0; len],
            },
        }
    }

    #[test]
    fn passes_respect_the_token_budget() {
        let slots: Vec<Slot> = [2, 3, 3, 4, 8, 8, 9].into_iter().map(slot).collect();
        let passes = split_by_budget(slots, 16);
        for pass in &passes {
            let longest = pass.iter().map(|s| s.sequence.ids.len()).max().unwrap_or(0);
            assert!(
                pass.len() == 1 || pass.len() * longest <= 16,
                "pass over budget"
            );
        }
        assert_eq!(
            passes.iter().map(Vec::len).sum::<usize>(),
            7,
            "every sequence lands in a pass"
        );
    }

    #[test]
    fn an_oversized_sequence_gets_its_own_pass() {
        let passes = split_by_budget(vec![slot(2), slot(100)], 16);
        assert_eq!(passes.len(), 2);
        assert_eq!(passes[1][0].sequence.ids.len(), 100);
    }

    /// A backend that fails in the one way a real model cannot be made to on demand: a NaN
    /// vector for any sequence holding token 666.
    struct NanOn666;

    impl Backend for NanOn666 {
        fn embed(&mut self, batch: &Batch) -> Result<Vec<Vec<f32>>, EncoderError> {
            Ok(batch
                .sequences
                .iter()
                .map(|s| {
                    if s.ids.contains(&666) {
                        vec![f32::NAN, 1.0]
                    } else {
                        vec![s.ids.len() as f32, 1.0]
                    }
                })
                .collect())
        }

        fn dimension(&self) -> usize {
            2
        }

        fn device(&self) -> String {
            "test".into()
        }

        fn dtype(&self) -> String {
            "f32".into()
        }
    }

    #[test]
    fn warm_up_passes_a_sound_backend_and_names_what_is_wrong_with_another() {
        let sequence = |ids: Vec<u32>| Sequence {
            type_ids: vec![0; ids.len()],
            ids,
        };
        let sound = Batch {
            sequences: vec![sequence(vec![101, 102]), sequence(vec![101, 7, 8, 102])],
        };
        assert!(warm_up(&mut NanOn666, &sound).is_ok());
        let poisoned = Batch {
            sequences: vec![sequence(vec![101, 102]), sequence(vec![101, 666, 102])],
        };
        let error = warm_up(&mut NanOn666, &poisoned).unwrap_err().to_string();
        assert!(
            error.contains("warm-up pass on test f32") && error.contains("vector 1 is not finite"),
            "{error}"
        );

        /// Answers one value short of its dimension.
        struct Short;
        impl Backend for Short {
            fn embed(&mut self, batch: &Batch) -> Result<Vec<Vec<f32>>, EncoderError> {
                Ok(vec![vec![0.5]; batch.sequences.len()])
            }
            fn dimension(&self) -> usize {
                2
            }
            fn device(&self) -> String {
                "test".into()
            }
            fn dtype(&self) -> String {
                "f16".into()
            }
        }
        let error = warm_up(&mut Short, &sound).unwrap_err().to_string();
        assert!(error.contains("vector 0 has 1 values"), "{error}");
    }

    #[test]
    fn a_request_whose_caller_has_gone_is_not_computed() {
        /// Counts the sequences it is given.
        struct Counting(Arc<AtomicU64>);
        impl Backend for Counting {
            fn embed(&mut self, batch: &Batch) -> Result<Vec<Vec<f32>>, EncoderError> {
                self.0
                    .fetch_add(batch.sequences.len() as u64, Ordering::Relaxed);
                Ok(vec![vec![1.0, 0.0]; batch.sequences.len()])
            }
            fn dimension(&self) -> usize {
                2
            }
            fn device(&self) -> String {
                "test".into()
            }
            fn dtype(&self) -> String {
                "f32".into()
            }
        }
        let (tx, rx) = mpsc::channel(4);
        let sequence = Sequence {
            ids: vec![101, 7, 102],
            type_ids: vec![0; 3],
        };
        let mut answers = Vec::new();
        for texts in [3, 2, 1] {
            let (reply, answer) = oneshot::channel();
            let job = Job {
                sequences: vec![sequence.clone(); texts],
                normalize: false,
                reply,
            };
            assert!(tx.try_send(job).is_ok());
            answers.push(answer);
        }
        drop(tx);
        // The first and last callers gave up before the worker took their requests.
        let mut answers = answers.into_iter();
        drop(answers.next());
        let waiting = answers.next();
        drop(answers.next());
        let seen = Arc::new(AtomicU64::new(0));
        let stats = BatcherStats::default();
        run_inference(
            Counting(seen.clone()),
            &std::sync::Mutex::new(rx),
            BatcherOptions::default(),
            &stats,
            &Unobserved,
        );
        assert_eq!(
            seen.load(Ordering::Relaxed),
            2,
            "only the waiting caller's texts"
        );
        assert_eq!(stats.abandoned_texts.load(Ordering::Relaxed), 4);
        let answer = waiting.map(|mut a| a.try_recv().map(|r| r.map(|v| v.len()).ok()));
        assert_eq!(answer, Some(Ok(Some(2))));
    }

    #[test]
    fn a_non_finite_vector_fails_its_request_and_no_other() {
        let (tx, rx) = mpsc::channel(4);
        let sequence = |ids: Vec<u32>| Sequence {
            type_ids: vec![0; ids.len()],
            ids,
        };
        let mut replies = Vec::new();
        for ids in [
            vec![vec![101, 5, 102]],
            vec![vec![101, 102], vec![101, 666, 102]],
        ] {
            let (reply, answer) = oneshot::channel();
            let job = Job {
                sequences: ids.into_iter().map(sequence).collect(),
                normalize: false,
                reply,
            };
            assert!(tx.try_send(job).is_ok());
            replies.push(answer);
        }
        drop(tx);
        // Both jobs share one forward pass; the worker returns when the queue closes.
        let options = BatcherOptions {
            max_batch_tokens: 1_000,
            queue_capacity: 4,
        };
        let stats = BatcherStats::default();
        run_inference(
            NanOn666,
            &std::sync::Mutex::new(rx),
            options,
            &stats,
            &Unobserved,
        );
        let mut answers = replies.into_iter().map(|mut r| r.try_recv());
        let first = answers
            .next()
            .map(|a| a.map(|r| r.map_err(|e| e.to_string())));
        assert_eq!(first, Some(Ok(Ok(vec![vec![3.0, 1.0]]))));
        let second = answers.next();
        assert!(
            matches!(&second, Some(Ok(Err(EncoderError::Backend(m)))) if m.contains("non-finite")),
            "{second:?}"
        );
    }
}
