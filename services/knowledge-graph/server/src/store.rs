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
use std::collections::{HashMap, HashSet};
use std::path::Path;

use souk_kg_core::{Inserted, KgError, Snapshot, Triple, TripleStore};

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

    fn lookup(&self, prefix: u8, name: &str) -> Result<Option<u32>, KgError> {
        self.tree
            .get(key(prefix, name.as_bytes()))
            .map_err(storage)?
            .map(|v| be_u32(&v))
            .transpose()
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

/// Assigns ids to names new in this batch, continuing the stored numbering.
struct Interner<'a> {
    store: &'a SledStore,
    prefix: u8,
    next: u32,
    fresh: HashMap<String, u32>,
    out: Vec<(u32, String)>,
}

impl Interner<'_> {
    fn id(&mut self, name: &str) -> Result<u32, KgError> {
        if let Some(&id) = self.fresh.get(name) {
            return Ok(id);
        }
        if let Some(id) = self.store.lookup(self.prefix, name)? {
            self.fresh.insert(name.to_string(), id);
            return Ok(id);
        }
        let id = self.next;
        self.next = self
            .next
            .checked_add(1)
            .ok_or_else(|| KgError::Storage("more than 2^32 ids".into()))?;
        self.fresh.insert(name.to_string(), id);
        self.out.push((id, name.to_string()));
        Ok(id)
    }
}

impl TripleStore for SledStore {
    fn insert(&self, triples: &[Triple]) -> Result<Inserted, KgError> {
        let (entities, relations, stored) = self.counts()?;
        let mut ents = Interner {
            store: self,
            prefix: b'e',
            next: entities as u32,
            fresh: HashMap::new(),
            out: Vec::new(),
        };
        let mut rels = Interner {
            store: self,
            prefix: b'r',
            next: relations as u32,
            fresh: HashMap::new(),
            out: Vec::new(),
        };
        let mut seen = HashSet::new();
        let mut new_triples = Vec::new();
        for triple in triples {
            let h = ents.id(&triple.head)?;
            let r = rels.id(&triple.relation)?;
            let t = ents.id(&triple.tail)?;
            if !seen.insert((h, r, t)) {
                continue;
            }
            if self
                .tree
                .contains_key(triple_key(b's', h, r, t))
                .map_err(storage)?
            {
                continue;
            }
            new_triples.push((h, r, t));
        }
        let inserted = Inserted {
            new_entities: ents.out,
            new_relations: rels.out,
            new_triples,
        };
        if inserted.new_triples.is_empty()
            && inserted.new_entities.is_empty()
            && inserted.new_relations.is_empty()
        {
            return Ok(inserted);
        }
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
        Ok(inserted)
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

    fn t(h: &str, r: &str, tl: &str) -> Triple {
        Triple::new(h, r, tl).unwrap()
    }

    #[test]
    fn loading_twice_is_idempotent_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let batch = vec![t("a", "r", "b"), t("b", "r", "c"), t("a", "r", "b")];
        {
            let store = SledStore::open(dir.path()).unwrap();
            let first = store.insert(&batch).unwrap();
            assert_eq!(
                first.new_triples.len(),
                2,
                "the duplicate inside the batch counts once"
            );
            assert_eq!(first.new_entities.len(), 3);
            let second = store.insert(&batch).unwrap();
            assert_eq!(second, Inserted::default());
            assert_eq!(store.counts().unwrap(), (3, 1, 2));
        }
        let store = SledStore::open(dir.path()).unwrap();
        let snapshot = store.snapshot().unwrap();
        assert_eq!(snapshot.entities, vec!["a", "b", "c"]);
        assert_eq!(snapshot.triples.len(), 2);
        let graph = souk_kg_core::Graph::from_snapshot(snapshot).unwrap();
        assert_eq!(graph.triple_count(), 2);
    }
}
