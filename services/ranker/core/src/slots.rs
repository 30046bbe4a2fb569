//! Sets of catalog slots: [`SlotSet`], the facet index's items under one value, and
//! [`SlotBits`], one bit per slot for a request's passing items.
//!
//! Why two shapes in one [`SlotSet`]: a facet value held by few items (a brand of 50 at 1M
//! items) is cheapest as a hash set, but one held by many (a department, a colour, the items
//! in stock) cost ~8-11 bytes a member that way, and a search's facet counts walked each of
//! its members in hash order with a bit test apiece: at 300k items three facets walked 900k
//! entries per search, 31% of its time (`perf` of `KIND=facet rank_cost -- 300000 30000`).
//! As a bitmap such a set is an eighth of a byte per slot, and counting it against a
//! request's passing bits is a word-wise AND and popcount (BENCHMARKS.md, "Session 34").
use std::collections::HashSet;

use crate::catalog::IdHash;

/// A set turns into a bitmap once it holds at least this many members and one slot in
/// [`DENSE_SHARE`] of its span (the bitmap is then no larger than the hash set would be).
const DENSE_MIN: usize = 512;
/// See [`DENSE_MIN`]: a hash set costs ~8 bytes a member, a bitmap 1/8 byte a slot.
const DENSE_SHARE: usize = 64;
/// A bitmap turns back into a hash set below a quarter of the density that made it one (or
/// half [`DENSE_MIN`]), so that a set near the line does not change shape at every write.
const SPARSE_SHARE: usize = 4 * DENSE_SHARE;

/// Slots, unordered: a hash set while few, a bitmap once dense (see the module's doc).
#[derive(Debug, Clone, Default)]
pub struct SlotSet {
    repr: Repr,
    len: usize,
}

#[derive(Debug, Clone)]
enum Repr {
    /// With one past the highest slot ever inserted (an upper bound of the span).
    Sparse(HashSet<u32, IdHash>, usize),
    /// One bit per slot from 0, no trailing zero words beyond what removals left.
    Dense(SlotBits),
}

impl Default for Repr {
    fn default() -> Self {
        Repr::Sparse(HashSet::default(), 0)
    }
}

impl SlotSet {
    /// Members.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `slot`; false when it was there.
    pub fn insert(&mut self, slot: u32) -> bool {
        let added = match &mut self.repr {
            Repr::Sparse(set, bound) => {
                *bound = (*bound).max(slot as usize + 1);
                set.insert(slot)
            }
            Repr::Dense(bits) => bits.insert(slot),
        };
        if added {
            self.len += 1;
            if let Repr::Sparse(set, bound) = &self.repr
                && self.len >= DENSE_MIN
                && self.len * DENSE_SHARE >= *bound
            {
                let mut bits = SlotBits::with_slots(*bound);
                for &slot in set {
                    bits.insert(slot);
                }
                self.repr = Repr::Dense(bits);
            }
        }
        added
    }

    /// Takes `slot` out; false when it was not there.
    pub fn remove(&mut self, slot: u32) -> bool {
        let removed = match &mut self.repr {
            Repr::Sparse(set, _) => set.remove(&slot),
            Repr::Dense(bits) => bits.remove(slot),
        };
        if removed {
            self.len -= 1;
            if let Repr::Dense(bits) = &self.repr
                && (self.len < DENSE_MIN / 2 || self.len * SPARSE_SHARE < bits.words.len() * 64)
            {
                let set: HashSet<u32, IdHash> = bits.iter().collect();
                let bound = set.iter().max().map_or(0, |&s| s as usize + 1);
                self.repr = Repr::Sparse(set, bound);
            }
        }
        removed
    }

    pub fn contains(&self, slot: u32) -> bool {
        match &self.repr {
            Repr::Sparse(set, _) => set.contains(&slot),
            Repr::Dense(bits) => bits.contains(slot),
        }
    }

    /// Every member: in no particular order while sparse, ascending once dense.
    pub fn iter(&self) -> Iter<'_> {
        match &self.repr {
            Repr::Sparse(set, _) => Iter::Sparse(set.iter()),
            Repr::Dense(bits) => Iter::Dense(bits.iter()),
        }
    }

    /// What walking the set costs, in steps of [`Self::count_within`]: its members while
    /// sparse, its words once dense.
    pub fn walk_cost(&self) -> usize {
        match &self.repr {
            Repr::Sparse(..) => self.len,
            Repr::Dense(bits) => bits.words.len(),
        }
    }

    /// How many members `bits` holds, and the lowest of them (`None` when none).
    ///
    /// # Complexity
    /// A bit test per member while sparse; once dense, an AND and a popcount per 64 slots.
    pub fn count_within(&self, bits: &SlotBits) -> (usize, Option<u32>) {
        match &self.repr {
            Repr::Sparse(set, _) => {
                let mut n = 0;
                let mut lowest = u32::MAX;
                for &slot in set {
                    if bits.contains(slot) {
                        n += 1;
                        lowest = lowest.min(slot);
                    }
                }
                (n, (n > 0).then_some(lowest))
            }
            Repr::Dense(dense) => count_both(&dense.words, &bits.words),
        }
    }
}

/// How many bits `a` and `b` both set, and the lowest of them: with the CPU's popcount
/// instruction where it has one (the build targets baseline x86-64, whose `count_ones` is a
/// dozen instructions: 11% of a search with three facet counts at 300k items went to them).
fn count_both(a: &[u64], b: &[u64]) -> (usize, Option<u32>) {
    #[inline(always)]
    fn count(a: &[u64], b: &[u64]) -> (usize, Option<u32>) {
        // Without a branch per word (most words of a value's AND with a search's matches
        // are 0, but not predictably); the lowest is then found from the front.
        let n: usize = a
            .iter()
            .zip(b)
            .map(|(a, b)| (a & b).count_ones() as usize)
            .sum();
        let lowest = (n > 0)
            .then(|| {
                a.iter()
                    .zip(b)
                    .position(|(a, b)| a & b != 0)
                    .map(|i| i as u32 * 64 + (a[i] & b[i]).trailing_zeros())
            })
            .flatten();
        (n, lowest)
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "popcnt")]
        fn count_popcnt(a: &[u64], b: &[u64]) -> (usize, Option<u32>) {
            count(a, b)
        }
        if std::is_x86_feature_detected!("popcnt") {
            // SAFETY: the CPU has POPCNT, checked at run time just above.
            #[allow(unsafe_code)]
            return unsafe { count_popcnt(a, b) };
        }
    }
    count(a, b)
}

/// A slot's word and bit in a bitmap.
fn place(slot: u32) -> (usize, u64) {
    (slot as usize / 64, 1 << (slot % 64))
}

/// A bitmap's words, in order.
type Words<'a> = std::iter::Copied<std::slice::Iter<'a, u64>>;

/// The slots whose bits are set in `words` (bit `slot % 64` of word `slot / 64`), ascending.
fn ones<W: Iterator<Item = u64>>(words: W) -> Ones<W> {
    Ones {
        words,
        taken: 0,
        rest: 0,
    }
}

/// A [`SlotSet`]'s members (see [`SlotSet::iter`]): one plain iterator rather than adapters
/// stacked on both shapes, since filters walk a side's members per request (a colour's 30k
/// at 300k items).
pub enum Iter<'a> {
    Sparse(std::collections::hash_set::Iter<'a, u32>),
    Dense(Ones<Words<'a>>),
}

impl Iterator for Iter<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        match self {
            Iter::Sparse(slots) => slots.next().copied(),
            Iter::Dense(ones) => ones.next(),
        }
    }
}

/// The set bits of a bitmap's words, as slots, ascending.
pub struct Ones<W> {
    words: W,
    /// Words taken from `words`: `rest` is left of the last of them.
    taken: usize,
    /// The bits of that word not yet yielded.
    rest: u64,
}

impl<W: Iterator<Item = u64>> Iterator for Ones<W> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        while self.rest == 0 {
            self.rest = self.words.next()?;
            self.taken += 1;
        }
        let bit = self.rest.trailing_zeros();
        self.rest &= self.rest - 1;
        // `rest` is non-zero only once a word was taken.
        Some((self.taken - 1) as u32 * 64 + bit)
    }
}

/// Slots as one bit each: a membership test that neither hashes nor reads the item.
#[derive(Debug, Clone, Default)]
pub struct SlotBits {
    words: Vec<u64>,
}

impl SlotBits {
    /// An empty set sized for slots below `slots` (it grows past them).
    pub fn with_slots(slots: usize) -> Self {
        Self {
            words: vec![0; slots.div_ceil(64)],
        }
    }

    /// Adds `slot`; false when it was there.
    pub fn insert(&mut self, slot: u32) -> bool {
        let (word, bit) = place(slot);
        if self.words.len() <= word {
            self.words.resize(word + 1, 0);
        }
        let added = self.words[word] & bit == 0;
        self.words[word] |= bit;
        added
    }

    /// Takes `slot` out; false when it was not there.
    pub fn remove(&mut self, slot: u32) -> bool {
        let (word, bit) = place(slot);
        match self.words.get_mut(word) {
            Some(w) if *w & bit != 0 => {
                *w &= !bit;
                true
            }
            _ => false,
        }
    }

    pub fn contains(&self, slot: u32) -> bool {
        let (word, bit) = place(slot);
        self.words.get(word).is_some_and(|w| w & bit != 0)
    }

    /// The slots held, ascending.
    pub fn iter(&self) -> Ones<Words<'_>> {
        ones(self.words.iter().copied())
    }

    /// How many slots it holds.
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The union of `sets` when every one of them is a bitmap (`None` otherwise): a word-wise
    /// OR, no member visited.
    pub fn union_of_dense(sets: &[&SlotSet]) -> Option<Self> {
        let mut words: Vec<u64> = Vec::new();
        for set in sets {
            let Repr::Dense(dense) = &set.repr else {
                return None;
            };
            if words.len() < dense.words.len() {
                words.resize(dense.words.len(), 0);
            }
            for (w, d) in words.iter_mut().zip(&dense.words) {
                *w |= d;
            }
        }
        Some(Self { words })
    }

    /// The slots whose entry in `entries` (one per slot, slot 0 first) `holds` answers true
    /// for: 64 entries a word, read front to back without a branch per entry.
    pub fn of_entries<T: Copy>(entries: &[T], holds: impl Fn(T) -> bool) -> Self {
        let words = entries
            .chunks(64)
            .map(|chunk| {
                chunk
                    .iter()
                    .enumerate()
                    .fold(0u64, |word, (bit, &e)| word | (u64::from(holds(e)) << bit))
            })
            .collect();
        Self { words }
    }

    /// How many slots it holds that `other` holds too: an AND and a popcount per 64 slots.
    pub fn count_and(&self, other: &SlotBits) -> usize {
        count_both(&self.words, &other.words).0
    }

    /// The slots it holds that `other` holds too, ascending.
    pub fn iter_and<'a>(&'a self, other: &'a SlotBits) -> impl Iterator<Item = u32> + 'a {
        ones(self.words.iter().zip(&other.words).map(|(a, b)| a & b))
    }

    /// Keeps the slots `other` holds too.
    pub fn intersect(&mut self, other: &SlotBits) {
        self.words.truncate(other.words.len());
        for (w, o) in self.words.iter_mut().zip(&other.words) {
            *w &= o;
        }
    }

    /// Keeps the slots `keep` answers true for, asked in ascending order.
    pub fn retain(&mut self, mut keep: impl FnMut(u32) -> bool) {
        for (i, word) in self.words.iter_mut().enumerate() {
            let mut rest = *word;
            while rest != 0 {
                let bit = rest.trailing_zeros();
                rest &= rest - 1;
                if !keep(i as u32 * 64 + bit) {
                    *word &= !(1 << bit);
                }
            }
        }
    }
}

/// Slots as bits that also say where a slot falls among those held: the position of an
/// entry in a list kept in slot order (a query's BM25 matches), found by a popcount instead of
/// a binary search through the list.
#[derive(Debug, Clone, Default)]
pub struct RankedBits {
    bits: SlotBits,
    /// How many slots the words before each hold.
    before: Vec<u32>,
}

impl RankedBits {
    /// The bits of `slots`, given ascending.
    pub fn of_ascending(slots: impl IntoIterator<Item = u32>) -> Self {
        let mut bits = SlotBits::default();
        for slot in slots {
            bits.insert(slot);
        }
        let mut before = Vec::with_capacity(bits.words.len());
        let mut count = 0;
        for word in &bits.words {
            before.push(count);
            count += word.count_ones();
        }
        Self { bits, before }
    }

    pub fn bits(&self) -> &SlotBits {
        &self.bits
    }

    /// Where `slot` falls among the slots held, counting from 0 in ascending order; `None`
    /// when it is not held.
    pub fn position(&self, slot: u32) -> Option<usize> {
        let (at, bit) = place(slot);
        let word = *self.bits.words.get(at)?;
        if word & bit == 0 {
            return None;
        }
        let before = *self.before.get(at)? as usize;
        Some(before + (word & (bit - 1)).count_ones() as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::XorShift;

    fn is_dense(set: &SlotSet) -> bool {
        matches!(set.repr, Repr::Dense(_))
    }

    /// Random inserts and removals over a span, checked against a plain hash set at every
    /// step: members, length, `contains` and `count_within` agree whichever shape the set is
    /// in, and it is a bitmap while dense and a hash set again once thinned out.
    #[test]
    fn a_slot_set_answers_as_a_hash_set_in_either_shape() {
        let mut rng = XorShift::new(7);
        let span = 20_000u64;
        let mut set = SlotSet::default();
        let mut want: HashSet<u32> = HashSet::new();
        let mut bits = SlotBits::with_slots(span as usize);
        for slot in (0..span as u32).filter(|s| s % 3 == 0) {
            bits.insert(slot);
        }
        let (mut was_dense, mut was_sparse_again) = (false, false);
        // Grow to ~60% of the span, then thin out to a few members.
        for step in 0..40_000 {
            let slot = (rng.unit() * span as f64) as u32;
            let grow = step < 20_000 || rng.unit() < 0.125;
            if grow {
                assert_eq!(set.insert(slot), want.insert(slot), "insert {slot}");
            } else {
                let victim = want.iter().next().copied().unwrap_or(slot);
                assert_eq!(set.remove(victim), want.remove(&victim), "remove {victim}");
                assert!(!set.remove(victim), "removed {victim} twice");
            }
            was_dense |= is_dense(&set);
            was_sparse_again |= was_dense && !is_dense(&set);
            if step % 997 == 0 || step == 39_999 {
                assert_eq!(set.len(), want.len());
                let mut got: Vec<u32> = set.iter().collect();
                got.sort_unstable();
                let mut expected: Vec<u32> = want.iter().copied().collect();
                expected.sort_unstable();
                assert_eq!(got, expected, "members at step {step}");
                for probe in 0..span as u32 {
                    assert_eq!(set.contains(probe), want.contains(&probe), "slot {probe}");
                }
                let within: Vec<u32> = expected
                    .iter()
                    .copied()
                    .filter(|&s| bits.contains(s))
                    .collect();
                assert_eq!(
                    set.count_within(&bits),
                    (within.len(), within.first().copied()),
                    "count at step {step}"
                );
            }
        }
        assert!(was_dense, "the set never became a bitmap");
        assert!(was_sparse_again, "the thinned-out set stayed a bitmap");
        assert!(want.len() < DENSE_MIN / 2, "{} left", want.len());
    }

    /// What a set shares with a search's matches (ranked bits built from ascending slots),
    /// counted and listed, against a plain intersection; slots past either end share
    /// nothing. Each match's position is its index in the ascending list, and a slot not
    /// held has none.
    #[test]
    fn slots_shared_with_ranked_bits_are_counted_listed_and_placed() {
        let mut rng = XorShift::new(7);
        for (span, other_span) in [(5_000, 3_000), (3_000, 5_000), (64, 64), (0, 100)] {
            let mut bits = SlotBits::default();
            let (mut mine, mut theirs) = (Vec::new(), Vec::new());
            for slot in 0..span {
                if rng.uniform() < 0.3 {
                    bits.insert(slot);
                    mine.push(slot);
                }
            }
            for slot in 0..other_span {
                if rng.uniform() < 0.5 {
                    theirs.push(slot);
                }
            }
            let ranked = RankedBits::of_ascending(theirs.iter().copied());
            let held: std::collections::HashSet<u32> = theirs.iter().copied().collect();
            let both: Vec<u32> = mine.into_iter().filter(|s| held.contains(s)).collect();
            assert_eq!(bits.count_and(ranked.bits()), both.len());
            assert_eq!(bits.iter_and(ranked.bits()).collect::<Vec<_>>(), both);
            for slot in 0..other_span + 70 {
                let want = theirs.binary_search(&slot).ok();
                assert_eq!(ranked.position(slot), want, "slot {slot}");
            }
        }
    }

    /// A set of few members at high slots (new items in a large catalog) stays a hash set: a
    /// bitmap from slot 0 would be far larger than its members.
    #[test]
    fn few_members_at_high_slots_stay_a_hash_set() {
        let mut set = SlotSet::default();
        for slot in 0..2_000u32 {
            set.insert(1_000_000 + slot * 1_000);
        }
        assert!(!is_dense(&set));
        // Dense ones at the same slots do turn into a bitmap.
        let mut dense = SlotSet::default();
        for slot in 0..2_000u32 {
            dense.insert(slot * 2);
        }
        assert!(is_dense(&dense));
        assert_eq!(dense.iter().take(3).collect::<Vec<_>>(), [0, 2, 4]);
    }
}
