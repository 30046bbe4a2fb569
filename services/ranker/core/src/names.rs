//! An index from names (item ids) to the numbers of things that keep their own name: a
//! catalog slot holds its item, whose id is the name; a CF id's name is in the catalog's list
//! of CF names. A `HashMap<String, u32>` beside them held every id a second time (24 bytes
//! of `String` plus its heap copy, ~56 bytes an id at a shop's id lengths, and more with the
//! table's slack); this table holds 4-byte numbers and finds names through the owner
//! (BENCHMARKS.md, "Session 36: ids held once").
//!
//! Every call takes `name_of`, the owner's lookup from a number to its name. It must give the
//! name each number was inserted under for as long as the number is in the index: insert a
//! number once its owner holds the name, and remove it before the owner lets the name go.

use hashbrown::HashTable;
use std::hash::BuildHasher;

#[derive(Debug, Default)]
pub(crate) struct NameIndex {
    table: HashTable<u32>,
    hasher: std::hash::RandomState,
}

impl NameIndex {
    fn hash(&self, name: &str) -> u64 {
        self.hasher.hash_one(name)
    }

    /// The number `name` is indexed under.
    pub fn get<'a>(&self, name: &str, name_of: impl Fn(u32) -> &'a str) -> Option<u32> {
        self.table
            .find(self.hash(name), |&n| name_of(n) == name)
            .copied()
    }

    /// Indexes `number` under `name` (which the index does not hold yet: see
    /// [`Self::get`]). `name_of` names the numbers already indexed, to rehash them when the
    /// table grows.
    pub fn insert<'a>(&mut self, name: &str, number: u32, name_of: impl Fn(u32) -> &'a str) {
        let hash = self.hash(name);
        let hasher = &self.hasher;
        self.table
            .insert_unique(hash, number, |&n| hasher.hash_one(name_of(n)));
    }

    /// Takes `name` out of the index; its number, if it was there.
    pub fn remove<'a>(&mut self, name: &str, name_of: impl Fn(u32) -> &'a str) -> Option<u32> {
        let entry = self
            .table
            .find_entry(self.hash(name), |&n| name_of(n) == name)
            .ok()?;
        Some(entry.remove().0)
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Thousands of inserts and removals through the table's growth find what a plain map
    /// finds: every held name its number, every removed or never-held name nothing.
    #[test]
    fn finds_what_a_map_finds_through_growth_and_removals() {
        let mut names: Vec<String> = Vec::new();
        let mut index = NameIndex::default();
        let mut map: HashMap<String, u32> = HashMap::new();
        let mut rng = crate::rng::XorShift::new(7);
        for i in 0..5_000u32 {
            let name = format!("item-{i}");
            names.push(name.clone());
            index.insert(&name, i, |n| names[n as usize].as_str());
            map.insert(name, i);
            if rng.unit() < 0.3 {
                let gone = format!("item-{}", (rng.unit() * f64::from(i)) as u32);
                let was = map.remove(&gone);
                assert_eq!(index.remove(&gone, |n| names[n as usize].as_str()), was);
            }
        }
        assert_eq!(index.len(), map.len());
        for (i, name) in names.iter().enumerate() {
            let got = index.get(name, |n| names[n as usize].as_str());
            assert_eq!(got, map.get(name).copied(), "{name}");
            if got.is_some() {
                assert_eq!(got, Some(i as u32));
            }
        }
        assert_eq!(index.get("nobody", |n| names[n as usize].as_str()), None);
    }
}
