//! The ranker's domain: catalog items and filters ([`item`]), the in-memory [`catalog::Catalog`]
//! (vectors, BM25, popularity, histories, online item-kNN), pseudonymous [`UserKey`]s, and
//! [`rank::Ranker`], which fuses the signals and explains each result. No sled, no tonic: the
//! service crate persists the catalog and implements the source traits over gRPC.
//!
//! ```
//! use std::sync::{Arc, RwLock};
//! use souk_ranker_core::catalog::Catalog;
//! use souk_ranker_core::item::Item;
//! let mut catalog = Catalog::default();
//! let tent = Item { id: "p1".into(), title: "Trail Tent".into(), description: String::new(),
//!     category: vec!["Outdoor".into()], brand: "Acme".into(), price: 99.0,
//!     attributes: Default::default(), in_stock: true };
//! catalog.upsert(tent.validated().unwrap(), vec![1.0, 0.0]).unwrap();
//! assert_eq!(catalog.len(), 1);
//! ```

pub mod ann;
pub mod bm25;
pub mod catalog;
pub mod cf;
mod cooccur;
pub mod eval;
pub mod facet;
pub mod fusion;
pub mod item;
mod names;
pub mod pins;
pub mod propensity;
mod quant;
pub mod query;
pub mod rank;
pub mod rng;
mod slots;
pub mod synonyms;
mod user;

pub use user::{UserHasher, UserKey};

/// Errors of the ranker's domain.
#[derive(Debug, thiserror::Error)]
pub enum RankError {
    /// The caller's request or data is wrong (INVALID_ARGUMENT).
    #[error("{0}")]
    InvalidInput(String),
    #[error("{0}")]
    NotFound(String),
    /// Something failed inside (INTERNAL, detail logged).
    #[error("{0}")]
    Internal(String),
    /// The store failed to write to its disk (`full`: no space left). It takes no further
    /// write until the service restarts: sled's state after a failed write is not to be
    /// trusted (later calls repeat the error, or a flush waits forever).
    #[error(
        "the ranker's store cannot write to its disk ({message}): it takes no more writes until \
         the service restarts{}; rankings are still answered",
        if *full { " with room on its disk" } else { "" }
    )]
    StoreFailed { message: String, full: bool },
}
