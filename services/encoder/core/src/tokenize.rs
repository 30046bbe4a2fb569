use tokenizers::models::ModelWrapper;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::{EncoderError, ModelFiles};

/// One tokenized text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sequence {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
}

/// Bytes of one text that are tokenized; see [`TextTokenizer::max_len`].
pub const MAX_TOKENIZED_BYTES: usize = 64 * 1024;

/// Tokenizes like sentence-transformers: truncation at the model's `max_seq_length` and no
/// padding. The default model's `tokenizer.json` pads every input to 128 and truncates at 128;
/// both are overridden here, or the model would compute on padding and cut long texts short.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    max_len: usize,
}

impl TextTokenizer {
    /// # Errors
    /// When `tokenizer.json` cannot be read or parsed.
    pub fn load(files: &ModelFiles) -> Result<Self, EncoderError> {
        let mut inner = Tokenizer::from_file(&files.tokenizer)
            .map_err(|e| EncoderError::Model(format!("{}: {e}", files.tokenizer.display())))?;
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                max_length: files.max_seq_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| EncoderError::Model(format!("truncation: {e}")))?;
        Ok(Self {
            inner,
            max_len: files.max_seq_length,
        })
    }

    /// Longest sequence in word pieces.
    ///
    /// Texts longer than [`MAX_TOKENIZED_BYTES`] are cut there before tokenizing (when
    /// truncating): 256 word pieces of any natural text lie far inside 64 KiB (a piece spans at
    /// most 100 characters plus the whitespace before it), so the result matches tokenizing the
    /// whole text, except for a text padded with more than 64 KiB of whitespace.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The vocabulary's whole words: entries that begin a word (WordPiece: without the
    /// continuation prefix, "##"; byte-level BPE: with the word-start marker "Ġ"; Unigram:
    /// with "▁", the marker dropped), lower-cased, letters only and at least two of them,
    /// sorted and without repeats. A dictionary of the language the model was trained on:
    /// all-MiniLM-L6-v2's has ~21,700 ("lover", "lightweight", but not "headfones").
    pub fn words(&self) -> Vec<String> {
        let vocab = self.inner.get_vocab(false);
        let model = self.inner.get_model();
        let start = |t: &'_ String| -> Option<String> {
            let word = match model {
                ModelWrapper::WordPiece(wp) => {
                    (!t.starts_with(wp.continuing_subword_prefix.as_str())).then_some(t.as_str())
                }
                ModelWrapper::BPE(_) => t.strip_prefix('Ġ'),
                ModelWrapper::Unigram(_) => t.strip_prefix('▁'),
                ModelWrapper::WordLevel(_) => Some(t.as_str()),
            }?;
            (word.chars().count() >= 2 && word.chars().all(char::is_alphabetic))
                .then(|| word.to_lowercase())
        };
        let mut words: Vec<String> = vocab.keys().filter_map(start).collect();
        words.sort_unstable();
        words.dedup();
        words
    }

    /// Tokenizes one text with [CLS]/[SEP]. With `truncate` false, a text longer than the
    /// maximum is an error.
    ///
    /// # Errors
    /// `InvalidInput` when the text is too long and `truncate` is false, or the tokenizer fails.
    pub fn encode_one(&self, text: &str, truncate: bool) -> Result<Sequence, EncoderError> {
        let text = if text.len() > MAX_TOKENIZED_BYTES {
            if !truncate {
                return Err(EncoderError::InvalidInput(format!(
                    "text is {} bytes, longer than {} tokens can be, and truncate is false",
                    text.len(),
                    self.max_len
                )));
            }
            // Only the first `max_len` word pieces count; tokenizing 10 MB to keep 256 of them
            // took seconds of a core and gigabytes of overflow encodings.
            &text[..text.floor_char_boundary(MAX_TOKENIZED_BYTES)]
        } else {
            text
        };
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| EncoderError::InvalidInput(format!("cannot tokenize: {e}")))?;
        if !truncate && !encoding.get_overflowing().is_empty() {
            let total = encoding.get_ids().len()
                + encoding
                    .get_overflowing()
                    .iter()
                    .map(|o| o.get_ids().len())
                    .sum::<usize>();
            return Err(EncoderError::InvalidInput(format!(
                "text is longer than {} tokens (about {total}) and truncate is false",
                self.max_len
            )));
        }
        Ok(Sequence {
            ids: encoding.get_ids().to_vec(),
            type_ids: encoding.get_type_ids().to_vec(),
        })
    }

    /// Tokenizes every text; an error names the index of the text that failed.
    ///
    /// # Errors
    /// As [`Self::encode_one`], prefixed with `texts[i]`.
    pub fn encode_all(
        &self,
        texts: &[String],
        truncate: bool,
    ) -> Result<Vec<Sequence>, EncoderError> {
        texts
            .iter()
            .enumerate()
            .map(|(i, text)| {
                self.encode_one(text, truncate).map_err(|e| match e {
                    EncoderError::InvalidInput(m) => {
                        EncoderError::InvalidInput(format!("texts[{i}]: {m}"))
                    }
                    other => other,
                })
            })
            .collect()
    }
}
