//! The encoder's domain: what a model directory holds ([`ModelFiles`]), tokenization with the
//! sentence-transformers conventions ([`TextTokenizer`]), the [`Backend`] trait a forward pass
//! implements (candle lives in `souk-encoder-candle`), and the dynamic [`batcher`] that packs
//! concurrent requests into shared forward passes under a token budget, like TEI's queue.
//!
//! ```no_run
//! # fn demo() -> Result<(), souk_encoder_core::EncoderError> {
//! use souk_encoder_core::{ModelFiles, TextTokenizer};
//! let files = ModelFiles::open("models/all-MiniLM-L6-v2")?;
//! let tokenizer = TextTokenizer::load(&files)?;
//! let seq = tokenizer.encode_one("red running shoes", true)?;
//! assert_eq!(seq.ids.first(), Some(&101)); // [CLS]
//! # Ok(()) }
//! ```

pub mod batcher;
mod model;
mod tokenize;

pub use model::{Activation, DenseFiles, HeadModule, ModelFiles, Pooling, Positions, TextKind};
pub use tokenize::{Sequence, TextTokenizer};

/// A padded batch handed to a backend: `ids[i]` and `type_ids[i]` are sequence i, unpadded.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub sequences: Vec<Sequence>,
}

impl Batch {
    /// Longest sequence, the padded width of a dense forward pass.
    pub fn max_len(&self) -> usize {
        self.sequences
            .iter()
            .map(|s| s.ids.len())
            .max()
            .unwrap_or(0)
    }
}

/// A forward pass: token ids in, one pooled (not yet normalised) vector per sequence out.
/// Implementations run on the batcher's inference thread and may block.
pub trait Backend: Send + 'static {
    /// Embeds every sequence of the batch; the result has `batch.sequences.len()` vectors.
    ///
    /// # Errors
    /// When the forward pass fails (out of memory, a device error).
    fn embed(&mut self, batch: &Batch) -> Result<Vec<Vec<f32>>, EncoderError>;
    /// Length of every vector.
    fn dimension(&self) -> usize;
    /// "cpu" or "cuda:N".
    fn device(&self) -> String;
    /// "f32", "f16" or "bf16".
    fn dtype(&self) -> String;
}

/// Everything the encoder can answer with an error, split by whose fault it is.
#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    /// The caller's input is wrong (maps to INVALID_ARGUMENT).
    #[error("{0}")]
    InvalidInput(String),
    /// The queue is full (maps to RESOURCE_EXHAUSTED).
    #[error("encoder overloaded: {0}")]
    Overloaded(String),
    /// The model directory is missing or malformed (a startup error).
    #[error("model: {0}")]
    Model(String),
    /// The forward pass failed.
    #[error("backend: {0}")]
    Backend(String),
    /// The batcher stopped (shutdown).
    #[error("encoder is shutting down")]
    Closed,
}

/// The fingerprint of `model`'s vectors cut to their first `dimensions` values (`Embed`'s
/// Matryoshka truncation): another vector space for each length, so callers that keep
/// vectors by fingerprint never compare a cut vector with a whole one, or two lengths. At
/// the model's whole `dimension` (or more) it is `model` itself. Never 0.
#[must_use]
pub fn cut_fingerprint(model: u64, dimensions: usize, dimension: usize) -> u64 {
    if dimensions >= dimension {
        return model;
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"souk matryoshka cut");
    hasher.update(&model.to_le_bytes());
    hasher.update(&(dimensions as u64).to_le_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
    u64::from_le_bytes(first).max(1)
}

/// Scales `v` to unit length; a zero vector stays zero.
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cut_length_is_its_own_space_and_the_whole_length_is_the_model() {
        let model = 0x1234_5678_9abc_def0;
        assert_eq!(cut_fingerprint(model, 384, 384), model);
        let cuts: Vec<u64> = [1, 64, 128, 256, 383]
            .into_iter()
            .map(|d| cut_fingerprint(model, d, 384))
            .collect();
        for (i, a) in cuts.iter().enumerate() {
            assert!(*a != 0 && *a != model);
            assert!(
                cuts[i + 1..].iter().all(|b| b != a),
                "lengths share a print"
            );
        }
        // Another model cut to the same length is another space.
        assert_ne!(cut_fingerprint(model + 1, 128, 384), cuts[2]);
        assert_eq!(cut_fingerprint(model, 128, 384), cuts[2], "stable");
    }

    #[test]
    fn normalizing_gives_unit_length_and_keeps_zero() {
        let mut v = vec![3.0, 4.0];
        l2_normalize(&mut v);
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        let mut z = vec![0.0; 3];
        l2_normalize(&mut z);
        assert_eq!(z, vec![0.0; 3]);
    }
}
