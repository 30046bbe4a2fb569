//! Trained embeddings in sled, next to the graph, written so that a crash never leaves a mix.
//!
//! | tree                 | key                  | value                                   |
//! |----------------------|----------------------|-----------------------------------------|
//! | `embeddings`         | `current`            | generation (u64 BE)                     |
//! | `embeddings`         | `config` generation  | JSON [`Stored`] header (model, counts…) |
//! | `embeddings.<gen>`   | `e` id / `r` id      | row, little-endian f32                  |
//!
//! A new training writes a fresh generation tree, flushes it, then flips `current` and drops
//! the previous tree: readers after a crash see either the old or the new set, never half.
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use souk_kg_core::KgError;

use crate::store::storage;
use souk_kg_embed::{Config, Embeddings};

const META: &str = "embeddings";
const CURRENT: &[u8] = b"current";

/// What the header records besides the rows.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    config: Config,
    entities: usize,
    relations: usize,
    phase_scale: f32,
    /// Triples in the graph when trained.
    triples: usize,
    /// Seconds since the epoch when stored.
    trained_at: u64,
}

/// Embeddings in service, with the configuration that trained them.
#[derive(Debug, Clone)]
pub struct Served {
    pub config: Config,
    pub embeddings: Embeddings,
    /// Triples in the graph when trained.
    pub triples: usize,
    /// L2 norm of each entity row, for cosine similarity.
    pub norms: Vec<f32>,
}

impl Served {
    #[must_use]
    pub fn new(config: Config, embeddings: Embeddings, triples: usize) -> Self {
        let norms = embeddings
            .entities
            .chunks_exact(embeddings.entity_width().max(1))
            .map(|row| row.iter().map(|v| v * v).sum::<f32>().sqrt())
            .collect();
        Self {
            config,
            embeddings,
            triples,
            norms,
        }
    }
}

/// A header that cannot be written or read as JSON.
fn corrupt(e: serde_json::Error) -> KgError {
    KgError::Storage(format!("embeddings header: {e}"))
}

fn config_key(generation: u64) -> Vec<u8> {
    let mut k = b"config".to_vec();
    k.extend_from_slice(&generation.to_be_bytes());
    k
}

fn rows_tree(generation: u64) -> String {
    format!("embeddings.{generation}")
}

fn row_key(kind: u8, id: u32) -> [u8; 5] {
    let mut k = [kind, 0, 0, 0, 0];
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

fn encode(row: &[f32]) -> Vec<u8> {
    row.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn current(db: &sled::Db) -> Result<Option<u64>, KgError> {
    let meta = db.open_tree(META).map_err(storage)?;
    meta.get(CURRENT)
        .map_err(storage)?
        .map(|v| {
            v.as_ref()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| KgError::Storage("corrupt embeddings generation".into()))
        })
        .transpose()
}

/// Stores `served` as the new current generation and drops the previous one.
///
/// # Errors
/// When sled fails; the previous generation then stays current.
pub fn save(db: &sled::Db, served: &Served) -> Result<(), KgError> {
    let previous = current(db)?;
    let generation = previous.map_or(1, |g| g + 1);
    let tree = db.open_tree(rows_tree(generation)).map_err(storage)?;
    tree.clear().map_err(storage)?;
    let e = &served.embeddings;
    let mut batch = sled::Batch::default();
    let mut pending = 0usize;
    let rows = e
        .entities
        .chunks_exact(e.entity_width())
        .map(|r| (b'e', r))
        .enumerate()
        .chain(
            e.relations
                .chunks_exact(e.dim)
                .map(|r| (b'r', r))
                .enumerate(),
        );
    for (id, (kind, row)) in rows {
        batch.insert(&row_key(kind, id as u32), encode(row));
        pending += 1;
        if pending == 4096 {
            tree.apply_batch(std::mem::take(&mut batch))
                .map_err(storage)?;
            pending = 0;
        }
    }
    tree.apply_batch(batch).map_err(storage)?;
    let header = Stored {
        config: served.config.clone(),
        entities: e.entity_count(),
        relations: e.relation_count(),
        phase_scale: e.phase_scale,
        triples: served.triples,
        trained_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    let meta = db.open_tree(META).map_err(storage)?;
    meta.insert(
        config_key(generation),
        serde_json::to_vec(&header).map_err(corrupt)?,
    )
    .map_err(storage)?;
    db.flush().map_err(storage)?;
    // The flip: one key, flushed. Before it the old set is current, after it the new one.
    meta.insert(CURRENT, &generation.to_be_bytes())
        .map_err(storage)?;
    db.flush().map_err(storage)?;
    if let Some(old) = previous {
        db.drop_tree(rows_tree(old)).map_err(storage)?;
        meta.remove(config_key(old)).map_err(storage)?;
    }
    Ok(())
}

/// The current generation, if any was trained.
///
/// # Errors
/// When sled fails or a row does not match its header.
pub fn load(db: &sled::Db) -> Result<Option<Arc<Served>>, KgError> {
    let Some(generation) = current(db)? else {
        return Ok(None);
    };
    let meta = db.open_tree(META).map_err(storage)?;
    let header = meta
        .get(config_key(generation))
        .map_err(storage)?
        .ok_or_else(|| {
            KgError::Storage(format!("embeddings generation {generation} has no header"))
        })?;
    let header: Stored = serde_json::from_slice(&header).map_err(corrupt)?;
    let width = header.config.model.entity_width(header.config.dim);
    let dim = header.config.dim;
    let tree = db.open_tree(rows_tree(generation)).map_err(storage)?;
    let mut entities = vec![0.0f32; header.entities * width];
    let mut relations = vec![0.0f32; header.relations * dim];
    let mut seen = 0usize;
    for item in tree.iter() {
        let (k, v) = item.map_err(storage)?;
        let (kind, id) = match k.as_ref() {
            [kind, a, b, c, d] => (*kind, u32::from_be_bytes([*a, *b, *c, *d]) as usize),
            _ => return Err(KgError::Storage("corrupt embedding key".into())),
        };
        let (target, w) = match kind {
            b'e' => (&mut entities, width),
            b'r' => (&mut relations, dim),
            _ => return Err(KgError::Storage("corrupt embedding key".into())),
        };
        let slot = target
            .get_mut(id * w..(id + 1) * w)
            .filter(|_| v.len() == w * 4)
            .ok_or_else(|| {
                KgError::Storage(format!("embedding row {id} does not fit its header"))
            })?;
        for (value, bytes) in slot.iter_mut().zip(v.chunks_exact(4)) {
            *value = f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
        seen += 1;
    }
    if seen != header.entities + header.relations {
        return Err(KgError::Storage(format!(
            "embeddings generation {generation} holds {seen} rows, its header says {}",
            header.entities + header.relations
        )));
    }
    let embeddings = Embeddings {
        model: header.config.model,
        dim,
        margin: header.config.margin,
        phase_scale: header.phase_scale,
        entities,
        relations,
    };
    Ok(Some(Arc::new(Served::new(
        header.config,
        embeddings,
        header.triples,
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use souk_kg_embed::Model;

    #[test]
    fn a_new_generation_replaces_the_old_one_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            model: Model::RotatE,
            dim: 3,
            ..Config::default()
        };
        let first = Embeddings::init(&config, 5, 2, 1);
        let second = Embeddings::init(&config, 6, 2, 2);
        {
            let db = sled::open(dir.path()).unwrap();
            assert!(load(&db).unwrap().is_none());
            save(&db, &Served::new(config.clone(), first, 10)).unwrap();
            save(&db, &Served::new(config.clone(), second.clone(), 12)).unwrap();
            assert_eq!(
                db.tree_names()
                    .iter()
                    .filter(|n| n.starts_with(b"embeddings."))
                    .count(),
                1
            );
        }
        let db = sled::open(dir.path()).unwrap();
        let served = load(&db).unwrap().unwrap();
        assert_eq!(served.embeddings, second);
        assert_eq!(served.triples, 12);
        assert_eq!(served.config, config);
    }
}
