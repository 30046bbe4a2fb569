//! One item's online co-occurrence counts: a small open-addressing table of `(item, count)`
//! pairs in one allocation (linear probing, Fibonacci hashing of the CF id).
//!
//! A replay of the event log counts ~100 pairs per event, each in a different item's row
//! (100k rows at 100k items): the cost is waiting on memory, not arithmetic. Unlike a
//! `HashMap`, this table lets [`Catalog::record`](crate::catalog::Catalog::record) prefetch
//! the slot a count will land in for every neighbour before it counts any of them, so the
//! cache misses overlap instead of following one another.

use std::collections::HashMap;

/// Marks an empty slot (never a CF id: ids count from 0 up to the items seen).
const EMPTY: u32 = u32::MAX;

/// A row's table never holds fewer slots than this.
const MIN_SLOTS: usize = 8;

/// One slot of a row: the other item's CF id and the pair's count, in 6 bytes (a `(u32,
/// f32)` took 8; the rows are most of what events cost in memory: BENCHMARKS.md, "Session 36").
/// A count past `u16::MAX` keeps `u16::MAX` here and the rest in the row's `over`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C, packed(2))]
struct Slot {
    item: u32,
    count: u16,
}

const VACANT: Slot = Slot {
    item: EMPTY,
    count: 0,
};

#[derive(Debug, Default, Clone)]
pub(crate) struct CoRow {
    /// A power of two of slots (or none before the first count).
    slots: Box<[Slot]>,
    len: u32,
    /// What the pairs whose slot holds `u16::MAX` count beyond it (a pair of two best
    /// sellers in a shop of millions): counts stay exact, the slots small. Boxed: a row
    /// without any (nearly every row) pays 8 bytes for it, not an empty map's 48.
    #[allow(clippy::box_collection)]
    over: Option<Box<HashMap<u32, u32>>>,
}

impl CoRow {
    /// Pairs held.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Pairs the table holds before it grows: 7/8 of its slots.
    pub fn capacity(&self) -> usize {
        self.slots.len() / 8 * 7
    }

    /// Every `(item, count)`, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, f32)> + '_ {
        self.pairs().map(|(item, count)| (item, count as f32))
    }

    /// Every `(item, count)` with the count exact.
    fn pairs(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.slots
            .iter()
            .copied()
            .filter(|slot| slot.item != EMPTY)
            .map(|slot| (slot.item, self.full(slot)))
    }

    /// The count a slot stands for.
    fn full(&self, slot: Slot) -> u32 {
        let count = u32::from(slot.count);
        if slot.count < u16::MAX {
            return count;
        }
        let item = slot.item;
        count
            + self
                .over
                .as_ref()
                .and_then(|o| o.get(&item))
                .copied()
                .unwrap_or(0)
    }

    /// The slot `item` starts probing from.
    fn home(&self, item: u32) -> usize {
        // Fibonacci hashing: the top bits of the product, as many as the table needs.
        let bits = self.slots.len().trailing_zeros();
        let hashed = u64::from(item).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (hashed >> (64 - bits)) as usize
    }

    /// Asks the CPU to fetch the slot `item`'s count starts at, ahead of [`Self::count`].
    pub fn prefetch(&self, item: u32) {
        if self.slots.is_empty() {
            return;
        }
        prefetch(&self.slots[self.home(item)]);
    }

    /// Counts one more pair with `item`. A row past `keep` pairs that fills its table is cut
    /// back to its `keep` strongest instead of growing: its memory stays that of the table
    /// it had when it first passed `keep` (448 pairs in 512 slots for 256).
    pub fn count(&mut self, item: u32, keep: usize) {
        self.add(item, 1);
        if self.len() > keep && self.len() >= self.capacity() {
            self.keep_strongest(keep);
        }
    }

    /// Where `item`'s pair is, or the empty slot that ends its probe run.
    fn find(&self, item: u32) -> (usize, bool) {
        let mask = self.slots.len() - 1;
        let mut at = self.home(item);
        loop {
            let held = self.slots[at].item;
            if held == item {
                return (at, true);
            }
            if held == EMPTY {
                return (at, false);
            }
            at = (at + 1) & mask;
        }
    }

    /// Adds `by` to `item`'s count (a new pair starts from 0), growing the table when full.
    fn add(&mut self, item: u32, by: u32) {
        if self.slots.is_empty() {
            self.slots = vec![VACANT; MIN_SLOTS].into_boxed_slice();
        }
        loop {
            let (at, held) = self.find(item);
            if held {
                let count = self.full(self.slots[at]).saturating_add(by);
                self.set(at, item, count);
                return;
            }
            if self.len() < self.capacity() {
                self.set(at, item, by);
                self.len += 1;
                return;
            }
            self.rebuild(self.slots.len() * 2, self.pairs().collect());
        }
    }

    /// Puts `item` with `count` in slot `at`, the part past `u16::MAX` in `over`.
    fn set(&mut self, at: usize, item: u32, count: u32) {
        let narrow = u16::try_from(count).unwrap_or(u16::MAX);
        let beyond = count - u32::from(narrow);
        if beyond > 0 {
            self.over
                .get_or_insert_with(Box::default)
                .insert(item, beyond);
        } else if let Some(over) = &mut self.over {
            over.remove(&item);
            if over.is_empty() {
                self.over = None;
            }
        }
        self.slots[at] = Slot {
            item,
            count: narrow,
        };
    }

    /// Takes `by` off `item`'s count, removing the pair when nothing is left of it; a pair
    /// the row does not hold (a cut-back dropped it) stays out. Removal shifts the pairs
    /// after it back into place (no tombstones: lookups stop at the first empty slot).
    pub fn subtract(&mut self, item: u32, by: u32) {
        if self.slots.is_empty() {
            return;
        }
        let (at, held) = self.find(item);
        if !held {
            return;
        }
        let count = self.full(self.slots[at]).saturating_sub(by);
        self.set(at, item, count);
        if count > 0 {
            return;
        }
        self.slots[at] = VACANT;
        self.len -= 1;
        let mask = self.slots.len() - 1;
        let mut hole = at;
        let mut next = (hole + 1) & mask;
        while self.slots[next].item != EMPTY {
            let home = self.home(self.slots[next].item);
            // The pair at `next` may fill the hole when its home is not cyclically in
            // (hole, next]: probing from its home passes the hole.
            if (next.wrapping_sub(home) & mask) >= (next.wrapping_sub(hole) & mask) {
                self.slots[hole] = self.slots[next];
                self.slots[next] = VACANT;
                hole = next;
            }
            next = (next + 1) & mask;
        }
    }

    /// `item`'s count, found as [`Self::add`] finds it (probing from its home slot).
    #[cfg(test)]
    fn get_by_probe(&self, item: u32) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        let (at, held) = self.find(item);
        held.then(|| self.full(self.slots[at]))
    }

    /// `item`'s count, if the row holds it.
    #[cfg(test)]
    pub fn get(&self, item: u32) -> Option<f32> {
        self.iter()
            .find(|&(i, _)| i == item)
            .map(|(_, count)| count)
    }

    /// Keeps the `keep` highest counts; the table keeps its size. Ties go to the item first
    /// seen later (the higher CF id: a newer product's pairs are the ones still counting up),
    /// decided by id so that a replay keeps what the live catalog kept. (Kept by count /
    /// sqrt(users) instead, what the pairs score with, validation recall fell: rare items'
    /// single pairs crowded out the counted ones; BENCHMARKS.md, "Session 22".)
    fn keep_strongest(&mut self, keep: usize) {
        let mut ranked: Vec<(u32, u32)> = self.pairs().collect();
        if ranked.len() <= keep {
            return;
        }
        ranked.select_nth_unstable_by(keep, |a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
        ranked.truncate(keep);
        self.rebuild(self.slots.len(), ranked);
    }

    /// The table with `slots` slots holding `pairs`.
    fn rebuild(&mut self, slots: usize, pairs: Vec<(u32, u32)>) {
        self.slots = vec![VACANT; slots.max(MIN_SLOTS)].into_boxed_slice();
        self.len = 0;
        self.over = None;
        for (item, count) in pairs {
            let (at, _) = self.find(item);
            self.set(at, item, count);
            self.len += 1;
        }
    }
}

/// A hint that `value`'s cache line will be read soon.
pub(crate) fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: a prefetch is a hint: it never faults and changes no memory, and the
        // pointer comes from a reference. SSE, which it needs, is in every x86_64 CPU.
        #[allow(unsafe_code)]
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(value).cast::<i8>());
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// A hint that every cache line of `values` will be read soon (an item's vector, a graph
/// point's row): an element at least every 64 bytes, and the last.
pub(crate) fn prefetch_slice<T>(values: &[T]) {
    let step = (64 / std::mem::size_of::<T>().max(1)).max(1);
    for at in (0..values.len()).step_by(step) {
        prefetch(&values[at]);
    }
    if let Some(last) = values.last() {
        prefetch(last);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::HashMap;

    use super::*;

    /// Counts, growth and cut-backs agree with a plain map kept beside the row.
    #[test]
    fn a_row_counts_as_a_map_does_and_cuts_back_to_its_strongest() {
        let mut rng = crate::rng::XorShift::new(3);
        let mut row = CoRow::default();
        let mut reference: HashMap<u32, f32> = HashMap::new();
        assert_eq!((row.len(), row.capacity()), (0, 0));
        for _ in 0..5000 {
            let item = ((rng.unit() * rng.unit()) * 300.0) as u32;
            row.add(item, 1);
            *reference.entry(item).or_default() += 1.0;
            assert_eq!(row.len(), reference.len());
            assert!(row.len() <= row.capacity());
        }
        let mut got: Vec<(u32, f32)> = row.iter().collect();
        got.sort_by_key(|&(item, _)| item);
        let mut expected: Vec<(u32, f32)> = reference.into_iter().collect();
        expected.sort_by_key(|&(item, _)| item);
        assert_eq!(got, expected);
        let slots = row.slots.len();
        row.keep_strongest(10);
        assert_eq!(row.len(), 10);
        assert_eq!(row.slots.len(), slots, "the table keeps its size");
        let mut strongest = expected.clone();
        strongest.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.0.cmp(&a.0)));
        for &(item, count) in &strongest[..10] {
            assert_eq!(row.get(item), Some(count));
        }
        assert_eq!(row.get(strongest[10].0), None);
        // Counting goes on in the cut-back table.
        row.add(strongest[0].0, 2);
        assert_eq!(row.get(strongest[0].0), Some(strongest[0].1 + 2.0));
        row.add(999, 1);
        assert_eq!((row.len(), row.get(999)), (11, Some(1.0)));
    }

    /// Taking counts off, down to removing pairs, leaves the row a plain map would hold, and
    /// every pair left still found (removal in the middle of a probe run shifts the rest).
    #[test]
    fn subtracting_counts_removes_pairs_and_keeps_the_rest_found() {
        let mut rng = crate::rng::XorShift::new(11);
        let mut row = CoRow::default();
        let mut reference: HashMap<u32, f32> = HashMap::new();
        for _ in 0..3000 {
            let item = (rng.unit() * 200.0) as u32;
            if rng.unit() < 0.6 {
                row.add(item, 1);
                *reference.entry(item).or_default() += 1.0;
            } else {
                row.subtract(item, 1);
                if let Some(count) = reference.get_mut(&item) {
                    *count -= 1.0;
                    if *count <= 0.0 {
                        reference.remove(&item);
                    }
                }
            }
            assert_eq!(row.len(), reference.len());
            for (&item, &count) in &reference {
                assert_eq!(
                    row.get_by_probe(item),
                    Some(count as u32),
                    "pair {item} lost"
                );
            }
        }
        assert!(!reference.is_empty() && reference.len() < 200);
        row.subtract(100_000, 1);
        assert_eq!(row.len(), reference.len(), "an absent pair changes nothing");
    }

    /// A pair counted past what a slot holds (`u16::MAX`) keeps its exact count through
    /// more counts, the table's growth, a cut-back and subtraction back under the limit,
    /// and its overflow goes when it is under again.
    #[test]
    fn counts_past_a_slots_limit_stay_exact() {
        let mut row = CoRow::default();
        let limit = u32::from(u16::MAX);
        row.add(7, limit - 2);
        row.add(7, 5);
        assert_eq!(row.get_by_probe(7), Some(limit + 3));
        assert!(row.over.is_some());
        // Growth rebuilds the table: the count moves with it.
        for item in 100..200 {
            row.add(item, 1);
        }
        assert_eq!(row.get(7), Some((limit + 3) as f32));
        // A cut-back ranks by the whole count.
        row.keep_strongest(3);
        assert_eq!(row.get_by_probe(7), Some(limit + 3));
        assert_eq!(row.len(), 3);
        row.subtract(7, 4);
        assert_eq!(row.get_by_probe(7), Some(limit - 1));
        assert!(row.over.is_none(), "nothing left past the limit");
        row.subtract(7, limit);
        assert_eq!((row.get_by_probe(7), row.len()), (None, 2));
    }
}
