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

    /// A short name for the model: its directory name.
    pub fn model_id(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.dir.display().to_string())
    }
}
