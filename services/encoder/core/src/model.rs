use std::path::{Path, PathBuf};

use crate::EncoderError;

/// How token states become one vector (sentence-transformers' `1_Pooling/config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over the tokens the attention mask keeps.
    Mean,
    /// The [CLS] token's state.
    Cls,
}

impl Pooling {
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
        }
    }
}

/// A model directory in the Hugging Face / sentence-transformers layout.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub weights: PathBuf,
    pub tokenizer: PathBuf,
    pub pooling: Pooling,
    /// Longest input in word pieces, [CLS] and [SEP] included.
    pub max_seq_length: usize,
}

fn read_json(path: &Path) -> Result<serde_json::Value, EncoderError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| EncoderError::Model(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| EncoderError::Model(format!("{}: {e}", path.display())))
}

impl ModelFiles {
    /// Checks the directory holds `config.json`, `model.safetensors` and `tokenizer.json`, and
    /// reads pooling (`1_Pooling/config.json`, default mean) and the maximum sequence length
    /// (`sentence_bert_config.json`, else the model's `max_position_embeddings`, else 512).
    ///
    /// # Errors
    /// A missing file or malformed JSON, naming the file.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, EncoderError> {
        let dir = dir.as_ref().to_path_buf();
        let need = |name: &str| {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(EncoderError::Model(format!(
                    "{} is missing (run scripts/fetch-model.sh for the default model)",
                    path.display()
                )))
            }
        };
        let config = need("config.json")?;
        let weights = need("model.safetensors")?;
        let tokenizer = need("tokenizer.json")?;
        let pooling_path = dir.join("1_Pooling/config.json");
        let pooling = if pooling_path.is_file() {
            let json = read_json(&pooling_path)?;
            let flag = |k: &str| json.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
            if flag("pooling_mode_cls_token") {
                Pooling::Cls
            } else if flag("pooling_mode_mean_tokens") {
                Pooling::Mean
            } else {
                return Err(EncoderError::Model(format!(
                    "{}: only mean and CLS pooling are supported",
                    pooling_path.display()
                )));
            }
        } else {
            Pooling::Mean
        };
        let model_max = read_json(&config)?
            .get("max_position_embeddings")
            .and_then(|v| v.as_u64())
            .unwrap_or(512) as usize;
        let st_path = dir.join("sentence_bert_config.json");
        let max_seq_length = if st_path.is_file() {
            read_json(&st_path)?
                .get("max_seq_length")
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .unwrap_or(model_max)
        } else {
            model_max
        }
        .min(model_max)
        .max(2);
        Ok(Self {
            dir,
            config,
            weights,
            tokenizer,
            pooling,
            max_seq_length,
        })
    }

    /// Identifies the vector space this model makes: a hash of everything that shapes its
    /// vectors (configuration, weights, tokenizer, pooling, maximum length), the first 8
    /// bytes of a BLAKE3 digest. A copy of the same files has the same fingerprint wherever
    /// it is loaded; the device and the numeric type do not enter it (f16 and f32 runs of one
    /// model give vectors of one space). Never 0, which `Embed` callers read as "not said".
    /// Reads the weights once (about 60 ms for MiniLM's 90 MB on this 2-core machine).
    ///
    /// # Errors
    /// When a file cannot be read, naming it.
    pub fn fingerprint(&self) -> Result<u64, EncoderError> {
        let mut hasher = blake3::Hasher::new();
        for path in [&self.config, &self.weights, &self.tokenizer] {
            let mut file = std::fs::File::open(path)
                .map_err(|e| EncoderError::Model(format!("{}: {e}", path.display())))?;
            let length = std::io::copy(&mut file, &mut hasher)
                .map_err(|e| EncoderError::Model(format!("{}: {e}", path.display())))?;
            // Lengths keep the files' boundaries in the digest.
            hasher.update(&length.to_le_bytes());
        }
        hasher.update(self.pooling.as_str().as_bytes());
        hasher.update(&(self.max_seq_length as u64).to_le_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
        Ok(u64::from_le_bytes(first).max(1))
    }

    /// A short name for the model: its directory name.
    pub fn model_id(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.dir.display().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model directory with these files (the fingerprint reads bytes, not tensors).
    fn model(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    fn fingerprint(files: &[(&str, &str)]) -> u64 {
        let dir = model(files);
        ModelFiles::open(dir.path()).unwrap().fingerprint().unwrap()
    }

    #[test]
    fn the_fingerprint_follows_what_shapes_the_vectors() {
        let base = [
            ("config.json", r#"{"max_position_embeddings": 512}"#),
            ("model.safetensors", "weights"),
            ("tokenizer.json", "{}"),
        ];
        let first = fingerprint(&base);
        assert_eq!(
            fingerprint(&base),
            first,
            "a copy elsewhere is the same model"
        );
        let with = |name: &'static str, text: &'static str| {
            let mut files = base.to_vec();
            files.retain(|(n, _)| *n != name);
            files.push((name, text));
            fingerprint(&files)
        };
        assert_ne!(with("model.safetensors", "weightz"), first, "weights");
        assert_ne!(with("tokenizer.json", "{ }"), first, "tokenizer");
        assert_ne!(
            with("config.json", r#"{"max_position_embeddings": 256}"#),
            first,
            "configuration (and the length it allows)"
        );
        assert_ne!(
            with("sentence_bert_config.json", r#"{"max_seq_length": 128}"#),
            first,
            "texts cut shorter"
        );
        assert_ne!(
            with(
                "1_Pooling/config.json",
                r#"{"pooling_mode_cls_token": true}"#
            ),
            first,
            "pooling"
        );
        // The same bytes split differently between two files are another model.
        let moved = [
            ("config.json", r#"{"max_position_embeddings": 512}"#),
            ("model.safetensors", "weight"),
            ("tokenizer.json", "s{}"),
        ];
        assert_ne!(fingerprint(&moved), first, "file boundaries");
        // Options that do not change the vectors' space leave it alone.
        assert_eq!(
            with(
                "1_Pooling/config.json",
                r#"{"pooling_mode_mean_tokens": true}"#
            ),
            first,
            "mean pooling said explicitly is the default"
        );
    }
}
