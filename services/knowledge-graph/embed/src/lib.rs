//! Knowledge-graph embeddings: TransE, DistMult and RotatE.
//!
//! Training ([`train`]) uses hand-written gradients, negative sampling (uniform, or
//! self-adversarial as in the RotatE paper) and lazy Adam, split over a rayon pool. Scoring
//! ([`Embeddings`]) and filtered link-prediction evaluation ([`eval`]) share the same kernels,
//! so what is measured is what the service answers with.
//!
//! Every model scores a triple through an *anchor*: the known side composed with the relation
//! (`h + r`, `h ∘ r` or `h · e^{iθ}` to predict tails; the inverse composition of `t` to predict
//! heads), compared with each candidate entity. One anchor per query, one cheap comparison per
//! candidate: that is what makes scoring all 40k WN18RR entities per test triple affordable.
//!
//! ```
//! use souk_kg_embed::{train, Config, Model, Side};
//! // a ring: 0 -next-> 1 -next-> 2 -next-> 3 -next-> 0
//! let triples = vec![[0, 0, 1], [1, 0, 2], [2, 0, 3], [3, 0, 0]];
//! let config = Config { model: Model::RotatE, dim: 8, epochs: 200, batch_size: 4,
//!     negatives: 3, learning_rate: 0.05, ..Config::default() };
//! let trained = train::train(&config, 4, 1, &triples, |_, _| true).unwrap();
//! let scores = trained.embeddings.score_all(Side::Tail, 0, 0);
//! let best = (0..4).max_by(|&a, &b| scores[a].total_cmp(&scores[b])).unwrap();
//! assert_eq!(best, 1);
//! ```
use serde::{Deserialize, Serialize};

pub mod dataset;
pub mod eval;
mod kernels;
pub mod train;

pub use dataset::Dataset;
pub use eval::{Metrics, evaluate};

/// `ε` of the RotatE paper: the initialisation range is `(γ + ε) / dim`.
const INIT_EPSILON: f32 = 2.0;

#[cfg(feature = "proto")]
impl From<Model> for souk_proto::kg::v1::EmbeddingModel {
    fn from(model: Model) -> Self {
        match model {
            Model::TransE => Self::Transe,
            Model::DistMult => Self::Distmult,
            Model::RotatE => Self::Rotate,
        }
    }
}

#[cfg(feature = "proto")]
impl Model {
    /// The model a wire enum value names; `None` for unspecified or unknown values.
    pub fn from_pb(value: i32) -> Option<Self> {
        use souk_proto::kg::v1::EmbeddingModel as Pb;
        match Pb::try_from(value).ok()? {
            Pb::Transe => Some(Model::TransE),
            Pb::Distmult => Some(Model::DistMult),
            Pb::Rotate => Some(Model::RotatE),
            Pb::Unspecified => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Model {
    /// `γ - ‖h + r - t‖₁` (Bordes et al. 2013).
    TransE,
    /// `⟨h, r, t⟩` (Yang et al. 2015).
    DistMult,
    /// `γ - Σ |h ∘ r - t|` with `|r_i| = 1` (Sun et al. 2019); entities are complex.
    RotatE,
}

impl Model {
    /// Floats per entity row.
    #[must_use]
    pub fn entity_width(self, dim: usize) -> usize {
        match self {
            Self::RotatE => 2 * dim,
            Self::TransE | Self::DistMult => dim,
        }
    }

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::TransE => "transe",
            Self::DistMult => "distmult",
            Self::RotatE => "rotate",
        }
    }
}

impl std::str::FromStr for Model {
    type Err = EmbedError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "transe" => Ok(Self::TransE),
            "distmult" => Ok(Self::DistMult),
            "rotate" => Ok(Self::RotatE),
            other => Err(EmbedError::InvalidConfig(format!(
                "unknown model {other:?}; expected transe, distmult or rotate"
            ))),
        }
    }
}

/// Hyper-parameters of one training run. Stored with the embeddings (JSON; fields added later
/// read as their defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub model: Model,
    /// Vector size; RotatE entities hold `dim` complex numbers (`2 * dim` floats).
    pub dim: usize,
    pub epochs: usize,
    /// Positive triples per Adam step.
    pub batch_size: usize,
    /// Corrupted triples per positive (head or tail, alternating by batch).
    pub negatives: usize,
    pub learning_rate: f32,
    /// After this epoch the learning rate drops tenfold (the RotatE code's schedule drops it at
    /// half the steps); 0 keeps it constant.
    pub lr_drop_epoch: usize,
    /// `γ`: the margin of the distance models (TransE, RotatE); DistMult ignores it.
    pub margin: f32,
    /// Self-adversarial temperature `α`; 0 weighs negatives uniformly.
    pub adversarial_temperature: f32,
    /// L2 weight on the embeddings a step touches (the RotatE code uses it for DistMult).
    pub regularization: f32,
    /// Weigh each positive by `1 / sqrt(#(h, r) + #(t, r⁻¹))` (the RotatE reference code's
    /// default), so triples around hub entities count less.
    pub subsampling: bool,
    pub seed: u64,
    /// Worker threads; 0 means one per core.
    pub threads: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            model: Model::RotatE,
            dim: 200,
            epochs: 100,
            batch_size: 512,
            negatives: 128,
            learning_rate: 1e-3,
            lr_drop_epoch: 0,
            margin: 6.0,
            adversarial_temperature: 0.5,
            regularization: 0.0,
            subsampling: false,
            seed: 42,
            threads: 0,
        }
    }
}

impl Config {
    /// # Errors
    /// `InvalidConfig` naming the first out-of-range field.
    pub fn validate(&self) -> Result<(), EmbedError> {
        let bad = |m: String| Err(EmbedError::InvalidConfig(m));
        if !(1..=4096).contains(&self.dim) {
            return bad(format!("dim must be 1..=4096, got {}", self.dim));
        }
        if !(1..=100_000).contains(&self.epochs) {
            return bad(format!("epochs must be 1..=100000, got {}", self.epochs));
        }
        if !(1..=65_536).contains(&self.batch_size) {
            return bad(format!(
                "batch size must be 1..=65536, got {}",
                self.batch_size
            ));
        }
        if !(1..=4096).contains(&self.negatives) {
            return bad(format!(
                "negatives must be 1..=4096, got {}",
                self.negatives
            ));
        }
        if !(self.learning_rate.is_finite()
            && self.learning_rate > 0.0
            && self.learning_rate < 10.0)
        {
            return bad(format!(
                "learning rate must be in (0, 10), got {}",
                self.learning_rate
            ));
        }
        if self.lr_drop_epoch > self.epochs {
            return bad(format!(
                "the learning-rate drop epoch {} is past the last epoch {}",
                self.lr_drop_epoch, self.epochs
            ));
        }
        if !(self.margin.is_finite() && self.margin > 0.0) {
            return bad(format!("margin must be positive, got {}", self.margin));
        }
        if !(self.adversarial_temperature.is_finite() && self.adversarial_temperature >= 0.0) {
            return bad(format!(
                "adversarial temperature must be >= 0, got {}",
                self.adversarial_temperature
            ));
        }
        if !(self.regularization.is_finite() && self.regularization >= 0.0) {
            return bad(format!(
                "regularization must be >= 0, got {}",
                self.regularization
            ));
        }
        if self.threads > 1024 {
            return bad(format!("threads must be <= 1024, got {}", self.threads));
        }
        Ok(())
    }

    fn init_range(&self) -> f32 {
        (self.margin + INIT_EPSILON) / self.dim as f32
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    #[error("{0}")]
    InvalidData(String),
    #[error("{0}")]
    Io(String),
}

/// Which side of `(h, r, t)` a query predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `(h, r, ?)`: the known entity is the head.
    Tail,
    /// `(?, r, t)`: the known entity is the tail.
    Head,
}

/// Trained vectors and what is needed to score with them.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    pub model: Model,
    pub dim: usize,
    pub margin: f32,
    /// RotatE: relation parameter -> phase factor (`π / init_range`, as in the paper's code).
    pub phase_scale: f32,
    /// `entity_count x Model::entity_width(dim)`, row-major.
    pub entities: Vec<f32>,
    /// `relation_count x dim`, row-major (RotatE: phase parameters).
    pub relations: Vec<f32>,
}

impl Embeddings {
    /// Random initialisation, uniform in `±(γ + 2) / dim` like the RotatE code.
    #[must_use]
    pub fn init(config: &Config, entities: usize, relations: usize, seed: u64) -> Self {
        let range = config.init_range();
        let mut rng = SplitMix64::new(seed);
        let width = config.model.entity_width(config.dim);
        let mut uniform = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| (rng.next_f32() * 2.0 - 1.0) * range)
                .collect()
        };
        let entity_values = uniform(entities * width);
        let relation_values = uniform(relations * config.dim);
        Self {
            model: config.model,
            dim: config.dim,
            margin: config.margin,
            phase_scale: std::f32::consts::PI / range,
            entities: entity_values,
            relations: relation_values,
        }
    }

    #[must_use]
    pub fn entity_width(&self) -> usize {
        self.model.entity_width(self.dim)
    }

    #[must_use]
    pub fn entity_count(&self) -> usize {
        self.entities.len() / self.entity_width().max(1)
    }

    #[must_use]
    pub fn relation_count(&self) -> usize {
        self.relations.len() / self.dim.max(1)
    }

    /// The entity's row; `None` past the trained entities.
    #[must_use]
    pub fn entity(&self, id: u32) -> Option<&[f32]> {
        let w = self.entity_width();
        self.entities.get(id as usize * w..(id as usize + 1) * w)
    }

    fn relation(&self, id: u32) -> Option<&[f32]> {
        self.relations
            .get(id as usize * self.dim..(id as usize + 1) * self.dim)
    }

    /// The anchor of a query: `known` composed with relation `r` for the given side.
    /// `None` when an id is out of range.
    #[must_use]
    pub fn anchor(&self, side: Side, known: u32, relation: u32) -> Option<Vec<f32>> {
        let e = self.entity(known)?;
        let r = self.relation(relation)?;
        let mut x = vec![0.0; e.len()];
        kernels::anchor(self.model, side, self.phase_scale, e, r, &mut x);
        Some(x)
    }

    /// Score of one candidate against an anchor: higher is more plausible.
    #[must_use]
    pub fn score_candidate(&self, anchor: &[f32], candidate: &[f32]) -> f32 {
        kernels::score(self.model, self.margin, anchor, candidate)
    }

    /// Scores of every entity as the missing side of `(known, relation)`. Empty when an id is
    /// out of range.
    #[must_use]
    pub fn score_all(&self, side: Side, known: u32, relation: u32) -> Vec<f32> {
        let Some(x) = self.anchor(side, known, relation) else {
            return Vec::new();
        };
        self.entities
            .chunks_exact(self.entity_width())
            .map(|c| self.score_candidate(&x, c))
            .collect()
    }

    /// Plausibility of one triple.
    #[must_use]
    pub fn score_triple(&self, head: u32, relation: u32, tail: u32) -> Option<f32> {
        let x = self.anchor(Side::Tail, head, relation)?;
        Some(self.score_candidate(&x, self.entity(tail)?))
    }
}

/// A small, fast, seedable generator (Steele et al.'s SplitMix64): sampling negatives must not
/// cost more than scoring them.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; `n > 0`).
    pub fn below(&mut self, n: u32) -> u32 {
        (((self.next_u64() >> 32) * u64::from(n)) >> 32) as u32
    }
}
