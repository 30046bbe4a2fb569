//! The sled store of the graph: a log of atomic, packed batch records.
//!
//! | key                     | value                                                    |
//! |-------------------------|----------------------------------------------------------|
//! | `b` seq (u64 BE)        | one `LoadTriples` batch: its new entity and relation names and its new triples as ids |
//! | `d` seq (u64 BE)        | a batch that also removes triples: the removed ones as ids, then a `b` record |
//! | `m` counter name        | u64 BE: entities, relations, triples, next batch seq     |
//!
//! A batch record is written with the counters in one `apply_batch` and flushed before the
//! caller is acknowledged: after a crash a batch is wholly there or not at all. Ids are dense
//! and assigned in insertion order, so replaying the records in sequence rebuilds the
//! dictionaries and the in-memory graph (petgraph), which answers `(h, r, ?)`, `(?, r, t)` and
//! `(h, ?, ?)` from adjacency lists without scans.
//!
//! Why not a sled key per triple and per index: the first layout (`s`h r t, `p`r t h, `e`name,
//! `E`id) loaded 44k triples/s and sled held 7.8 GB of RSS after a 1M-triple load (24 GB and an
//! OOM kill at 5M), against 0.3 GB for the same graph after a restart. One key per batch keeps
//! sled's write path small; BENCHMARKS.md has the figures. Stores written in that layout are
//! still read (its keys first, then the batch log).
//!
//! Record layout, little-endian: `u32 n` then `n x (u32 id, u32 len, name)` for entities, the
//! same for relations, then `u32 m` and `m x (u32 h, u32 r, u32 t)`. A `d` record starts with
//! `u32 k` and `k x (u32 h, u32 r, u32 t)` removed. Both kinds share one sequence, so a replay
//! applies them in the order they were acknowledged. A batch without removals is still written
//! as `b`, so a store that never removed anything stays readable by older builds (one that did
//! is refused by them: its triple counter no longer matches their replay).
use std::path::Path;

use std::collections::{HashMap, HashSet};

use souk_kg_core::{Change, KgError, Snapshot, TripleStore};

const ENTITIES: &[u8] = b"mentities";
const RELATIONS: &[u8] = b"mrelations";
const TRIPLES: &[u8] = b"mtriples";
const NEXT_BATCH: &[u8] = b"mnextbatch";

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

#[cfg(test)]
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
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(256 * 1024 * 1024);
        let db = souk_shared::storage::open_sled(&config)
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
    fn persist(&self, change: &Change) -> Result<(), KgError> {
        if change.is_empty() {
            return Ok(());
        }
        let (entities, relations, stored) = self.counts()?;
        let seq = self.counter(NEXT_BATCH)?;
        let mut batch = sled::Batch::default();
        let record = if change.removed.is_empty() {
            key(b'b', &seq.to_be_bytes())
        } else {
            key(b'd', &seq.to_be_bytes())
        };
        batch.insert(record, encode_record(change));
        batch.insert(NEXT_BATCH, &(seq + 1).to_be_bytes());
        batch.insert(
            ENTITIES,
            &(entities + change.new_entities.len() as u64).to_be_bytes(),
        );
        batch.insert(
            RELATIONS,
            &(relations + change.new_relations.len() as u64).to_be_bytes(),
        );
        let triples = (stored + change.new_triples.len() as u64)
            .checked_sub(change.removed.len() as u64)
            .ok_or_else(|| {
                KgError::Storage(format!(
                    "removing {} triples from a store that counts {stored}",
                    change.removed.len()
                ))
            })?;
        batch.insert(TRIPLES, &triples.to_be_bytes());
        // One atomic batch, flushed before the caller acknowledges it: a crash keeps whole
        // batches or nothing of them.
        self.tree.apply_batch(batch).map_err(storage)?;
        self.db.flush().map_err(storage)?;
        Ok(())
    }

    fn snapshot(&self) -> Result<Snapshot, KgError> {
        let (entities, relations, triples) = self.counts()?;
        // Legacy layout first (a key per name and per triple), then the batch log.
        let names = |prefix: u8| -> Result<Vec<String>, KgError> {
            let mut out = Vec::new();
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
            Ok(out)
        };
        let mut entity_names = names(b'E')?;
        let mut relation_names = names(b'R')?;
        let mut all = Vec::with_capacity(triples as usize);
        for item in self.tree.scan_prefix([b's']) {
            let (k, _) = item.map_err(storage)?;
            if k.len() != 13 {
                return Err(KgError::Storage("corrupt triple key".into()));
            }
            all.push((be_u32(&k[1..5])?, be_u32(&k[5..9])?, be_u32(&k[9..13])?));
        }
        // The triples any record removes: only their positions need an index (a first pass
        // over the removal records, which are few and short).
        let mut removed = HashSet::new();
        for item in self.tree.scan_prefix([b'd']) {
            let (k, v) = item.map_err(storage)?;
            let mut gone = Vec::new();
            take_triples(&mut &v[..], &mut gone)
                .map_err(|e| KgError::Storage(format!("batch record {:?}: {e}", &k[1..])))?;
            removed.extend(gone);
        }
        let mut replay = Replay::new(all, removed);
        let records = merge_by_seq(self.tree.scan_prefix([b'b']), self.tree.scan_prefix([b'd']));
        for item in records {
            let (k, v) = item.map_err(storage)?;
            let removes = k.first() == Some(&b'd');
            replay
                .record(&v, removes, &mut entity_names, &mut relation_names)
                .map_err(|e| KgError::Storage(format!("batch record {:?}: {e}", &k[1..])))?;
        }
        let all = replay.survivors();
        for (what, have, want) in [
            ("entities", entity_names.len() as u64, entities),
            ("relations", relation_names.len() as u64, relations),
            ("triples", all.len() as u64, triples),
        ] {
            if have != want {
                return Err(KgError::Storage(format!(
                    "the store holds {have} {what}, its counter says {want}"
                )));
            }
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

fn encode_record(change: &Change) -> Vec<u8> {
    let names: usize = change
        .new_entities
        .iter()
        .chain(&change.new_relations)
        .map(|(_, n)| 8 + n.len())
        .sum();
    let removed = if change.removed.is_empty() {
        0
    } else {
        4 + 12 * change.removed.len()
    };
    let mut out = Vec::with_capacity(removed + 12 + names + 12 * change.new_triples.len());
    if !change.removed.is_empty() {
        put_triples(&mut out, &change.removed);
    }
    for dictionary in [&change.new_entities, &change.new_relations] {
        out.extend_from_slice(&(dictionary.len() as u32).to_le_bytes());
        for (id, name) in dictionary {
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&(name.len() as u32).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
        }
    }
    put_triples(&mut out, &change.new_triples);
    out
}

fn put_triples(out: &mut Vec<u8>, triples: &[(u32, u32, u32)]) {
    out.extend_from_slice(&(triples.len() as u32).to_le_bytes());
    for &(h, r, t) in triples {
        out.extend_from_slice(&h.to_le_bytes());
        out.extend_from_slice(&r.to_le_bytes());
        out.extend_from_slice(&t.to_le_bytes());
    }
}

/// The `b` and `d` records in one sequence (both are keyed by the shared batch number, and
/// each scan is in key order).
fn merge_by_seq(
    b: sled::Iter,
    d: sled::Iter,
) -> impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>> {
    let mut b = b.peekable();
    let mut d = d.peekable();
    std::iter::from_fn(move || {
        let take_d = match (b.peek(), d.peek()) {
            (_, None) => false,
            (None, Some(_)) => true,
            // An error is handed on from whichever side holds it.
            (Some(Err(_)), _) => false,
            (_, Some(Err(_))) => true,
            (Some(Ok((kb, _))), Some(Ok((kd, _)))) => kd[1..] < kb[1..],
        };
        if take_d { d.next() } else { b.next() }
    })
}

/// Triples in insertion order as the records are replayed. Removals leave tombstones, so the
/// survivors keep the order they were inserted in (which is the order a neighbour list shows).
/// Only the triples some record removes (`watched`) have their positions indexed: a 5M-entry
/// index of every triple cost 0.65 s of a 1.5 s restart.
struct Replay {
    triples: Vec<(u32, u32, u32)>,
    removed: Vec<bool>,
    watched: HashSet<(u32, u32, u32)>,
    /// Where each watched triple now sits in `triples` (at most one live copy at a time).
    at: HashMap<(u32, u32, u32), usize>,
}

impl Replay {
    fn new(triples: Vec<(u32, u32, u32)>, watched: HashSet<(u32, u32, u32)>) -> Self {
        let mut replay = Self {
            triples,
            removed: Vec::new(),
            watched,
            at: HashMap::new(),
        };
        replay.watch_from(0);
        replay
    }

    /// Indexes the watched triples from position `first` on (those just appended).
    fn watch_from(&mut self, first: usize) {
        if self.watched.is_empty() {
            return;
        }
        for (i, triple) in self.triples.iter().enumerate().skip(first) {
            if self.watched.contains(triple) {
                self.at.insert(*triple, i);
            }
        }
    }

    fn record(
        &mut self,
        mut bytes: &[u8],
        removes: bool,
        entities: &mut Vec<String>,
        relations: &mut Vec<String>,
    ) -> Result<(), String> {
        if removes {
            let mut gone = Vec::new();
            take_triples(&mut bytes, &mut gone)?;
            self.removed.resize(self.triples.len(), false);
            for triple in gone {
                let i = self
                    .at
                    .remove(&triple)
                    .ok_or_else(|| format!("removes {triple:?}, which is not stored"))?;
                self.removed[i] = true;
            }
        }
        let first = self.triples.len();
        decode_record(bytes, entities, relations, &mut self.triples)?;
        self.watch_from(first);
        Ok(())
    }

    fn survivors(self) -> Vec<(u32, u32, u32)> {
        if !self.removed.contains(&true) {
            return self.triples;
        }
        let removed = self.removed;
        self.triples
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !removed.get(*i).copied().unwrap_or(false))
            .map(|(_, t)| t)
            .collect()
    }
}

fn u32_at(bytes: &mut &[u8]) -> Result<u32, String> {
    let (head, rest) = bytes.split_at_checked(4).ok_or("truncated record")?;
    *bytes = rest;
    Ok(u32::from_le_bytes([head[0], head[1], head[2], head[3]]))
}

/// Reads `u32 m` and `m` id triples.
fn take_triples(bytes: &mut &[u8], triples: &mut Vec<(u32, u32, u32)>) -> Result<(), String> {
    let m = u32_at(bytes)?;
    // Bounded by what the record holds, not by the count it claims.
    triples.reserve((m as usize).min(bytes.len() / 12));
    for _ in 0..m {
        triples.push((u32_at(bytes)?, u32_at(bytes)?, u32_at(bytes)?));
    }
    Ok(())
}

/// Appends one record's names (checking their ids continue the dictionaries) and triples.
fn decode_record(
    mut bytes: &[u8],
    entities: &mut Vec<String>,
    relations: &mut Vec<String>,
    triples: &mut Vec<(u32, u32, u32)>,
) -> Result<(), String> {
    for dictionary in [entities, relations] {
        let n = u32_at(&mut bytes)?;
        for _ in 0..n {
            let id = u32_at(&mut bytes)?;
            let len = u32_at(&mut bytes)? as usize;
            let (name, rest) = bytes.split_at_checked(len).ok_or("truncated name")?;
            bytes = rest;
            if id as usize != dictionary.len() {
                return Err(format!(
                    "id {id} does not continue the dictionary at {}",
                    dictionary.len()
                ));
            }
            dictionary.push(String::from_utf8(name.to_vec()).map_err(|e| e.to_string())?);
        }
    }
    take_triples(&mut bytes, triples)?;
    if !bytes.is_empty() {
        return Err(format!("{} trailing bytes", bytes.len()));
    }
    Ok(())
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
            assert_eq!(again, Change::default(), "nothing new the second time");
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
            Change::default(),
            "the rebuilt graph knows every triple"
        );
    }

    #[test]
    fn removals_replay_in_order_after_a_restart() {
        use souk_kg_core::{Direction, Graph, NeighborQuery, Triple};
        let t = |h: &str, r: &str, tl: &str| Triple::new(h, r, tl).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let first: Vec<Triple> = (0..30)
            .map(|i| t(&format!("item:{i}"), "color", &format!("color:{}", i % 3)))
            .collect();
        let neighbours = |g: &Graph| -> Vec<Vec<souk_kg_core::Neighbor>> {
            (0..3)
                .map(|c| {
                    let query = NeighborQuery {
                        entity: format!("color:{c}"),
                        relation: None,
                        direction: Direction::Both,
                        limit: 100,
                        prefix: None,
                    };
                    g.neighbors(&query).unwrap().neighbors
                })
                .collect()
        };
        let expected = {
            let store = SledStore::open(dir.path()).unwrap();
            let mut graph = Graph::default();
            let mut apply = |remove: &[Triple], insert: &[Triple]| {
                let plan = graph.plan_edit(remove, &[], insert);
                store.persist(&plan).unwrap();
                graph.apply(&plan).unwrap();
                plan
            };
            apply(&[], &first);
            // item 4 turns from colour 1 to colour 2; items 0..10 step 3 lose their colour.
            let plan = apply(
                &[t("item:4", "color", "color:1")],
                &[t("item:4", "color", "color:2")],
            );
            assert_eq!((plan.removed.len(), plan.new_triples.len()), (1, 1));
            let gone: Vec<Triple> = (0..10).step_by(3).map(|i| first[i].clone()).collect();
            assert_eq!(apply(&gone, &[]).removed.len(), 4);
            // A removed triple added back, then a plain batch after the removals.
            apply(&[], &[first[3].clone()]);
            apply(&[], &[t("item:99", "color", "color:0")]);
            // The re-added triple removed and added again in one batch: it moves to the end.
            let plan = apply(&[first[3].clone()], &[first[3].clone()]);
            assert_eq!((plan.removed.len(), plan.new_triples.len()), (1, 1));
            assert_eq!(store.counts().unwrap().2, 30 - 1 + 1 - 4 + 1 + 1);
            assert_eq!(graph.triple_count(), 28);
            neighbours(&graph)
        };
        let store = SledStore::open(dir.path()).unwrap();
        let graph = Graph::from_snapshot(store.snapshot().unwrap()).unwrap();
        assert_eq!(graph.triple_count(), 28);
        assert_eq!(
            neighbours(&graph),
            expected,
            "the restarted graph lists what the running one did, in the same order"
        );
        let c1: Vec<String> = expected[1].iter().map(|n| n.entity.clone()).collect();
        assert!(!c1.contains(&"item:4".to_string()), "item 4 was recoloured");
        assert!(c1.contains(&"item:1".to_string()) && c1.contains(&"item:7".to_string()));
        let c0: Vec<String> = expected[0].iter().map(|n| n.entity.clone()).collect();
        assert!(!c0.contains(&"item:6".to_string()) && c0.contains(&"item:3".to_string()));
    }

    #[test]
    fn a_store_in_the_legacy_layout_is_read_and_extended_by_the_batch_log() {
        use souk_kg_core::{Graph, Triple};
        let dir = tempfile::tempdir().unwrap();
        {
            // What the first layout wrote for a -r-> b.
            let store = SledStore::open(dir.path()).unwrap();
            let t = &store.tree;
            t.insert(key(b'e', b"a"), &0u32.to_be_bytes()).unwrap();
            t.insert(key(b'E', &0u32.to_be_bytes()), b"a").unwrap();
            t.insert(key(b'e', b"b"), &1u32.to_be_bytes()).unwrap();
            t.insert(key(b'E', &1u32.to_be_bytes()), b"b").unwrap();
            t.insert(key(b'r', b"r"), &0u32.to_be_bytes()).unwrap();
            t.insert(key(b'R', &0u32.to_be_bytes()), b"r").unwrap();
            t.insert(triple_key(b's', 0, 0, 1), &[]).unwrap();
            t.insert(triple_key(b'p', 0, 1, 0), &[]).unwrap();
            t.insert(ENTITIES, &2u64.to_be_bytes()).unwrap();
            t.insert(RELATIONS, &1u64.to_be_bytes()).unwrap();
            t.insert(TRIPLES, &1u64.to_be_bytes()).unwrap();
            let mut graph = Graph::from_snapshot(store.snapshot().unwrap()).unwrap();
            let plan = graph.plan(&[Triple::new("b", "r", "c").unwrap()]);
            store.persist(&plan).unwrap();
            graph.apply(&plan).unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        let snapshot = store.snapshot().unwrap();
        assert_eq!(snapshot.entities, vec!["a", "b", "c"]);
        assert_eq!(snapshot.triples, vec![(0, 0, 1), (1, 0, 2)]);
    }

    #[test]
    fn a_damaged_record_is_an_error_not_a_panic() {
        let (mut e, mut r, mut t) = (Vec::new(), Vec::new(), Vec::new());
        let record = encode_record(&Change {
            new_entities: vec![(0, "a".into()), (1, "b".into())],
            new_relations: vec![(0, "r".into())],
            new_triples: vec![(0, 0, 1)],
            ..Change::default()
        });
        for cut in 0..record.len() {
            assert!(decode_record(&record[..cut], &mut e, &mut r, &mut t).is_err());
            e.clear();
            r.clear();
            t.clear();
        }
        decode_record(&record, &mut e, &mut r, &mut t).unwrap();
        assert_eq!(t, vec![(0, 0, 1)]);
        // A record that removes: cut anywhere, or removing what is not stored, is an error.
        let record = encode_record(&Change {
            removed: vec![(0, 0, 1)],
            ..Change::default()
        });
        let watch = || HashSet::from([(0, 0, 1)]);
        for cut in 0..record.len() {
            let mut replay = Replay::new(vec![(0, 0, 1)], watch());
            assert!(replay.record(&record[..cut], true, &mut e, &mut r).is_err());
        }
        let mut replay = Replay::new(vec![(0, 0, 2)], watch());
        assert!(replay.record(&record, true, &mut e, &mut r).is_err());
        let mut replay = Replay::new(vec![(0, 0, 2), (0, 0, 1)], watch());
        replay.record(&record, true, &mut e, &mut r).unwrap();
        assert_eq!(replay.survivors(), vec![(0, 0, 2)]);
    }
}
