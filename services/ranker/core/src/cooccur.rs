//! One item's online co-occurrence counts: a small open-addressing table of `(item, count)`
//! pairs in one allocation (linear probing, Fibonacci hashing of the CF id).
//!
//! A replay of the event log counts ~100 pairs per event, each in a different item's row
//! (100k rows at 100k items): the cost is waiting on memory, not arithmetic. Unlike a
//! `HashMap`, this table lets [`Catalog::record`](crate::catalog::Catalog::record) prefetch
//! the slot a count will land in for every neighbour before it counts any of them, so the
//! cache misses overlap instead of following one another.

/// Marks an empty slot (never a CF id: ids count from 0 up to the items seen).
const EMPTY: u32 = u32::MAX;

/// A row's table never holds fewer slots than this.
const MIN_SLOTS: usize = 8;

#[derive(Debug, Default, Clone)]
pub(crate) struct CoRow {
    /// A power of two of slots (or none before the first count).
    slots: Box<[(u32, f32)]>,
    len: u32,
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
        self.slots
            .iter()
            .copied()
            .filter(|&(item, _)| item != EMPTY)
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
        self.add(item, 1.0);
        if self.len() > keep && self.len() >= self.capacity() {
            self.keep_strongest(keep);
        }
    }

    /// Adds `by` to `item`'s count (a new pair starts from 0), growing the table when full.
    fn add(&mut self, item: u32, by: f32) {
        if self.slots.is_empty() {
            self.slots = vec![(EMPTY, 0.0); MIN_SLOTS].into_boxed_slice();
        }
        loop {
            let mask = self.slots.len() - 1;
            let mut at = self.home(item);
            loop {
                let slot = &mut self.slots[at];
                if slot.0 == item {
                    slot.1 += by;
                    return;
                }
                if slot.0 == EMPTY {
                    break;
                }
                at = (at + 1) & mask;
            }
            if self.len() < self.capacity() {
                self.slots[at] = (item, by);
                self.len += 1;
                return;
            }
            self.rebuild(self.slots.len() * 2, self.iter().collect());
        }
    }

    /// Takes `by` off `item`'s count, removing the pair when nothing is left of it; a pair
    /// the row does not hold (a cut-back dropped it) stays out. Removal shifts the pairs
    /// after it back into place (no tombstones: lookups stop at the first empty slot).
    pub fn subtract(&mut self, item: u32, by: f32) {
        if self.slots.is_empty() {
            return;
        }
        let mask = self.slots.len() - 1;
        let mut at = self.home(item);
        loop {
            match self.slots[at].0 {
                EMPTY => return,
                held if held == item => break,
                _ => at = (at + 1) & mask,
            }
        }
        self.slots[at].1 -= by;
        // Counts are sums of 1s, exact in f32; a pair at 0 is no pair.
        if self.slots[at].1 > 0.0 {
            return;
        }
        self.slots[at] = (EMPTY, 0.0);
        self.len -= 1;
        let mut hole = at;
        let mut next = (hole + 1) & mask;
        while self.slots[next].0 != EMPTY {
            let home = self.home(self.slots[next].0);
            // The pair at `next` may fill the hole when its home is not cyclically in
            // (hole, next]: probing from its home passes the hole.
            if (next.wrapping_sub(home) & mask) >= (next.wrapping_sub(hole) & mask) {
                self.slots[hole] = self.slots[next];
                self.slots[next] = (EMPTY, 0.0);
                hole = next;
            }
            next = (next + 1) & mask;
        }
    }

    /// `item`'s count, found as [`Self::add`] finds it (probing from its home slot).
    #[cfg(test)]
    fn get_by_probe(&self, item: u32) -> Option<f32> {
        let mask = self.slots.len().checked_sub(1)?;
        let mut at = self.home(item);
        loop {
            match self.slots[at] {
                (EMPTY, _) => return None,
                (held, count) if held == item => return Some(count),
                _ => at = (at + 1) & mask,
            }
        }
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
        let mut ranked: Vec<(u32, f32)> = self.iter().collect();
        if ranked.len() <= keep {
            return;
        }
        ranked.select_nth_unstable_by(keep, |a, b| b.1.total_cmp(&a.1).then(b.0.cmp(&a.0)));
        ranked.truncate(keep);
        self.rebuild(self.slots.len(), ranked);
    }

    /// The table with `slots` slots holding `pairs`.
    fn rebuild(&mut self, slots: usize, pairs: Vec<(u32, f32)>) {
        self.slots = vec![(EMPTY, 0.0); slots.max(MIN_SLOTS)].into_boxed_slice();
        self.len = 0;
        let mask = self.slots.len() - 1;
        for (item, count) in pairs {
            let mut at = self.home(item);
            while self.slots[at].0 != EMPTY {
                at = (at + 1) & mask;
            }
            self.slots[at] = (item, count);
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
            row.add(item, 1.0);
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
        row.add(strongest[0].0, 2.0);
        assert_eq!(row.get(strongest[0].0), Some(strongest[0].1 + 2.0));
        row.add(999, 1.0);
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
                row.add(item, 1.0);
                *reference.entry(item).or_default() += 1.0;
            } else {
                row.subtract(item, 1.0);
                if let Some(count) = reference.get_mut(&item) {
                    *count -= 1.0;
                    if *count <= 0.0 {
                        reference.remove(&item);
                    }
                }
            }
            assert_eq!(row.len(), reference.len());
            for (&item, &count) in &reference {
                assert_eq!(row.get_by_probe(item), Some(count), "pair {item} lost");
            }
        }
        assert!(!reference.is_empty() && reference.len() < 200);
        row.subtract(100_000, 1.0);
        assert_eq!(row.len(), reference.len(), "an absent pair changes nothing");
    }
}
