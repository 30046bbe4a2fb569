//! The sled store of the graph: one tree, prefixed keys, one atomic `apply_batch` per load batch.
//!
//! | key                         | value        | answers            |
//! |-----------------------------|--------------|--------------------|
//! | `e` name                    | id (u32 BE)  | name -> id         |
//! | `E` id                      | name         | id -> name         |
//! | `r` name / `R` id           | id / name    | relation dictionary|
//! | `s` h r t (3 x u32 BE)      | -            | (h, ?, ?), (h, r, ?), dedup |
//! | `p` r t h                   | -            | (?, r, t)          |
//! | `m` counter name            | u64 BE       | entity/relation/triple counts |
//!
//! Ids are dense and assigned in insertion order, so the in-memory graph mirrors them by index.
use std::path::Path;

use souk_kg_core::{Inserted, KgError, Snapshot, TripleStore};

const ENTITIES: &[u8] = b"mentities";
const RELATIONS: &[u8] = b"mrelations";
const TRIPLES: &[u8] = b"mtriples";

pub struct SledStore {
    db: sled::Db,
    tree: sled::Tree,
}

fn storage(e: sled::Error) -> KgError {
    KgError::Storage(e.to_string())
}

fn key(prefix: u8, body: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + body.len());
    k.push(prefix);
    k.extend_from_slice(body);
    k
}

fn triple_key(prefix: u8, a: u32, b: u32, c: u32) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[0] = prefix;
    k[1..5].copy_from_slice(&a.to_be_bytes());
    k[5..9].copy_from_slice(&b.to_be_bytes());
    k[9..13].copy_from_slice(&c.to_be_bytes());
    k
}

fn be_u32(bytes: &[u8]) -> Result<u32, KgError> {
    bytes
        .try_into()
        .map(u32::from_be_bytes)
        .map_err(|_| KgError::Storage(format!("corrupt id of {} bytes", bytes.len())))
}

impl SledStore {
    /// Opens (or creates) the store under `dir`.
    ///
    /// # Errors
    /// When sled cannot open the directory (permissions, another process holds it).
    pub fn open(dir: &Path) -> Result<Self, KgError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| KgError::Storage(format!("{}: {e}", dir.display())))?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(256 * 1024 * 1024)
            .open()
            .map_err(|e| KgError::Storage(format!("{}: {e}", dir.display())))?;
        let tree = db.open_tree("graph").map_err(storage)?;
        Ok(Self { db, tree })
    }

    fn counter(&self, name: &[u8]) -> Result<u64, KgError> {
        match self.tree.get(name).map_err(storage)? {
            Some(v) => v
                .as_ref()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| KgError::Storage("corrupt counter".into())),
            None => Ok(0),
        }
    }

    /// The database, for the embeddings' trees.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Counts of (entities, relations, triples).
    ///
    /// # Errors
    /// When the store cannot be read.
    pub fn counts(&self) -> Result<(u64, u64, u64), KgError> {
        Ok((
            self.counter(ENTITIES)?,
            self.counter(RELATIONS)?,
            self.counter(TRIPLES)?,
        ))
    }
}

impl TripleStore for SledStore {
    fn persist(&self, inserted: &Inserted) -> Result<(), KgError> {
        if inserted.new_triples.is_empty()
            && inserted.new_entities.is_empty()
            && inserted.new_relations.is_empty()
        {
            return Ok(());
        }
        let (entities, relations, stored) = self.counts()?;
        let mut batch = sled::Batch::default();
        for (id, name) in &inserted.new_entities {
            batch.insert(key(b'e', name.as_bytes()), &id.to_be_bytes());
            batch.insert(key(b'E', &id.to_be_bytes()), name.as_bytes());
        }
        for (id, name) in &inserted.new_relations {
            batch.insert(key(b'r', name.as_bytes()), &id.to_be_bytes());
            batch.insert(key(b'R', &id.to_be_bytes()), name.as_bytes());
        }
        for &(h, r, t) in &inserted.new_triples {
            batch.insert(&triple_key(b's', h, r, t), &[]);
            batch.insert(&triple_key(b'p', r, t, h), &[]);
        }
        batch.insert(
            ENTITIES,
            &(entities + inserted.new_entities.len() as u64).to_be_bytes(),
        );
        batch.insert(
            RELATIONS,
            &(relations + inserted.new_relations.len() as u64).to_be_bytes(),
        );
        batch.insert(
            TRIPLES,
            &(stored + inserted.new_triples.len() as u64).to_be_bytes(),
        );
        // One atomic batch, flushed before the caller acknowledges it: a crash keeps whole
        // batches or nothing of them.
        self.tree.apply_batch(batch).map_err(storage)?;
        self.db.flush().map_err(storage)?;
        Ok(())
    }

    fn snapshot(&self) -> Result<Snapshot, KgError> {
        let (entities, relations, triples) = self.counts()?;
        let names = |prefix: u8, count: u64| -> Result<Vec<String>, KgError> {
            let mut out = Vec::with_capacity(count as usize);
            for item in self.tree.scan_prefix([prefix]) {
                let (k, v) = item.map_err(storage)?;
                let id = be_u32(&k[1..])?;
                if id as usize != out.len() {
                    return Err(KgError::Storage(format!(
                        "id {id} missing from the dictionary"
                    )));
                }
                out.push(
                    String::from_utf8(v.to_vec()).map_err(|e| KgError::Storage(e.to_string()))?,
                );
            }
            if out.len() as u64 != count {
                return Err(KgError::Storage(format!(
                    "dictionary holds {} names, counter says {count}",
                    out.len()
                )));
            }
            Ok(out)
        };
        let entity_names = names(b'E', entities)?;
        let relation_names = names(b'R', relations)?;
        let mut all = Vec::with_capacity(triples as usize);
        for item in self.tree.scan_prefix([b's']) {
            let (k, _) = item.map_err(storage)?;
            if k.len() != 13 {
                return Err(KgError::Storage("corrupt triple key".into()));
            }
            all.push((be_u32(&k[1..5])?, be_u32(&k[5..9])?, be_u32(&k[9..13])?));
        }
        Ok(Snapshot {
            entities: entity_names,
            relations: relation_names,
            triples: all,
        })
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persisted_plans_survive_reopen_and_replanning_is_idempotent() {
        use souk_kg_core::{Graph, Triple};
        let t = |h: &str, r: &str, tl: &str| Triple::new(h, r, tl).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let batch = vec![t("a", "r", "b"), t("b", "r", "c"), t("a", "r", "b")];
        {
            let store = SledStore::open(dir.path()).unwrap();
            let mut graph = Graph::default();
            let plan = graph.plan(&batch);
            assert_eq!(
                plan.new_triples.len(),
                2,
                "the duplicate inside the batch counts once"
            );
            assert_eq!(plan.new_entities.len(), 3);
            store.persist(&plan).unwrap();
            graph.apply(&plan).unwrap();
            let again = graph.plan(&batch);
            assert_eq!(again, Inserted::default(), "nothing new the second time");
            store.persist(&again).unwrap();
            assert_eq!(store.counts().unwrap(), (3, 1, 2));
        }
        let store = SledStore::open(dir.path()).unwrap();
        let snapshot = store.snapshot().unwrap();
        assert_eq!(snapshot.entities, vec!["a", "b", "c"]);
        assert_eq!(snapshot.triples.len(), 2);
        let graph = Graph::from_snapshot(snapshot).unwrap();
        assert_eq!(graph.triple_count(), 2);
        assert_eq!(
            graph.plan(&batch),
            Inserted::default(),
            "the rebuilt graph knows every triple"
        );
    }
}
