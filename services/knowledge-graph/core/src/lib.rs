//! Knowledge-graph domain: validated [`Triple`]s, line parsers for the load formats
//! ([`parse`]), the [`TripleStore`] persistence trait (sled lives in `souk-kg`), and the
//! in-memory [`Graph`] over petgraph that answers neighbours and explanation paths.
//!
//! ```
//! use souk_kg_core::{Graph, Triple, PathQuery};
//! let mut graph = Graph::default();
//! graph.insert(&[
//!     Triple::new("item:tent", "brand", "brand:acme").unwrap(),
//!     Triple::new("item:stove", "brand", "brand:acme").unwrap(),
//! ]);
//! let query = PathQuery { sources: vec!["item:tent".into()], targets: vec!["item:stove".into()],
//!     max_hops: 2, limit: 1, relations: vec![] };
//! let found = graph.paths(&query).unwrap();
//! assert_eq!(found.paths[0].steps.len(), 2); // tent -brand-> acme <-brand- stove
//! ```

mod graph;
pub mod parse;

pub use graph::{
    Direction, Graph, Neighbor, NeighborQuery, NeighborsFound, Path, PathQuery, PathStep,
    PathsFound, Snapshot,
};

/// Longest entity id or relation name, in bytes.
pub const MAX_FIELD_BYTES: usize = 1024;
/// Longest path `Paths` searches.
pub const MAX_HOPS: u32 = 4;

/// One fact: `head -relation-> tail`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Triple {
    pub head: String,
    pub relation: String,
    pub tail: String,
}

impl Triple {
    /// A triple whose three fields are non-empty, at most 1 KiB and free of control characters
    /// other than none (tabs and newlines would break the TSV format).
    ///
    /// # Errors
    /// `InvalidInput` naming the field and what is wrong with it.
    pub fn new(
        head: impl Into<String>,
        relation: impl Into<String>,
        tail: impl Into<String>,
    ) -> Result<Self, KgError> {
        let triple = Self {
            head: head.into(),
            relation: relation.into(),
            tail: tail.into(),
        };
        triple.validate()?;
        Ok(triple)
    }

    /// # Errors
    /// As [`Triple::new`].
    pub fn validate(&self) -> Result<(), KgError> {
        for (name, value) in [
            ("head", &self.head),
            ("relation", &self.relation),
            ("tail", &self.tail),
        ] {
            validate_field(name, value)?;
        }
        Ok(())
    }
}

/// Checks one entity id or relation name.
///
/// # Errors
/// `InvalidInput` when it is empty, over [`MAX_FIELD_BYTES`] or holds control characters.
pub fn validate_field(name: &str, value: &str) -> Result<(), KgError> {
    if value.trim().is_empty() {
        return Err(KgError::InvalidInput(format!("{name} is empty")));
    }
    if value.len() > MAX_FIELD_BYTES {
        return Err(KgError::InvalidInput(format!(
            "{name} is {} bytes; the limit is {MAX_FIELD_BYTES}",
            value.len()
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(KgError::InvalidInput(format!(
            "{name} contains a control character"
        )));
    }
    Ok(())
}

/// What one batch changes, with the ids the store assigned: its removals first, then its
/// new names and triples.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    /// (head, relation, tail) ids of stored triples the batch takes out.
    pub removed: Vec<(u32, u32, u32)>,
    pub new_entities: Vec<(u32, String)>,
    pub new_relations: Vec<(u32, String)>,
    /// (head, relation, tail) ids of triples that were not stored before.
    pub new_triples: Vec<(u32, u32, u32)>,
    /// Removals asked for of triples the graph did not hold (a count for the caller; not
    /// stored).
    pub absent: usize,
}

impl Change {
    /// Nothing to store: no removal, no new name, no new triple.
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty()
            && self.new_entities.is_empty()
            && self.new_relations.is_empty()
            && self.new_triples.is_empty()
    }
}

/// Persistence of the graph. Implementations assign dense ids (0, 1, 2, ...) to entities and
/// relations in insertion order, so the in-memory [`Graph`] can mirror them by index.
pub trait TripleStore: Send + Sync {
    /// Persists a plan made by [`Graph::plan_edit`] atomically and durably: after a crash
    /// either all of it is there or none. (The plan already left out triples that exist and
    /// removals of triples that do not, so loading twice is idempotent without the store
    /// reading anything.)
    ///
    /// # Errors
    /// `Storage` when the write fails; nothing of the batch is stored then.
    fn persist(&self, change: &Change) -> Result<(), KgError>;
    /// Everything stored, to rebuild the in-memory graph at start.
    ///
    /// # Errors
    /// `Storage` when the store cannot be read or is inconsistent.
    fn snapshot(&self) -> Result<Snapshot, KgError>;
    /// Bytes the store occupies on disk.
    fn size_on_disk(&self) -> u64;
}

/// Errors of the graph domain.
#[derive(Debug, thiserror::Error)]
pub enum KgError {
    #[error("{0}")]
    InvalidInput(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("storage: {0}")]
    Storage(String),
    /// The store failed to write to its disk (`full`: no space left). The store it came from
    /// takes no further write until the service restarts: sled's state after a failed write
    /// is not to be trusted (later calls repeat the error, or a flush waits forever).
    #[error(
        "the graph's store cannot write to its disk ({message}): it takes no more writes until the \
         service restarts{}; reads are still answered",
        if *full { " with room on its disk" } else { "" }
    )]
    StoreFailed { message: String, full: bool },
}
