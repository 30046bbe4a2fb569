//! Approximate nearest neighbours over the catalog's item vectors: an HNSW graph (Malkov and
//! Yashunin 2018; M = 16, 32 links on the base layer, ef_construction = 100, the paper's
//! neighbour-selection heuristic) that the first pass asks for the dense candidates of a query
//! once the catalog is large enough that scanning every vector costs more than walking the
//! graph (see [`crate::catalog::Catalog::set_ann_min_items`] and BENCHMARKS.md).
//!
//! Our own rather than `hnsw_rs` (used until session 10) so that the graph can be saved with
//! the store and read back at start (20 s of rebuild at 100k items became a read), with a
//! reader that refuses a damaged file with a reason instead of asserting, and so that points
//! are inserted in parallel batches (see [`AnnIndex::build`]). The graph walks 8-bit copies of
//! the vectors ([`crate::quant`], since session 32; f16 before, f32 before that): a walk at a
//! million items waits on memory, so a row of 7 cache lines instead of 12, and every
//! unvisited neighbour's row asked for before any is read, made searches and the build
//! faster at the same recall (BENCHMARKS.md). The catalog keeps its vectors in f16 (since
//! session 30) and scores every answer from those; the graph has its own copy because a
//! replaced item's old point keeps the vector it was linked by.
//!
//! HNSW cannot delete. Each indexed point remembers the slot and the slot's version it was
//! inserted for; a replaced or deleted item bumps its slot's version, so its old point is
//! skipped on search and the graph is rebuilt once such stale points pass a quarter of it.
use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

use rayon::prelude::*;

use crate::cooccur::prefetch_slice;
use crate::quant::{Row, SCALE_BYTES, push_row};
use crate::rng::XorShift;

/// Links per node above the base layer, and on the base layer; the construction beam. The
/// usual defaults (hnswlib's); recall against an exact scan is in BENCHMARKS.md.
const M: usize = 16;
const M0: usize = 2 * M;
const EF_CONSTRUCTION: usize = 100;
const MAX_LEVEL: usize = 15;

/// A point's slot when it stands for no item (read back from a file whose item is gone).
const NO_SLOT: u32 = u32::MAX;

/// A slot's point when it has none.
const NO_POINT: u32 = u32::MAX;

/// Points inserted one at a time before batches start; a batch is then at most 1/32 of the
/// points already linked, so a point misses few true neighbours that share its batch.
const SERIAL_POINTS: usize = 1024;
const MAX_BATCH: usize = 4096;

/// Distances a search may compute per place in its beam before it gives up on filling the
/// beam with points its filter accepts. Measured in `rank_cost`'s searches (beam 128): 4-9
/// per place unfiltered (100k and 10k items), 26-50 (at most 57) with a filter an eighth of
/// the items pass; so the walk gives up only on filters that ~2% or fewer pass.
const FILTERED_BUDGET: usize = 256;

/// How far a beam search on one layer goes (see [`AnnIndex::search_layer`]).
#[derive(Debug, Clone, Copy)]
struct Beam {
    ef: usize,
    layer: usize,
    /// Distances it may compute.
    budget: usize,
    /// The farthest distance answered.
    within: f32,
}

/// Where a search's walk on the base layer starts besides the query's entry, what it answers
/// and which points it hops over (see [`AnnIndex::search_from`]).
#[derive(Clone, Copy)]
pub struct Walk<'s> {
    /// Slots whose points the walk starts from too (those without a point are skipped).
    pub seeds: &'s [u32],
    /// Only points whose dot product with the query is at least this are answered: the walk
    /// stops once every point it could still expand is below it.
    pub min_dot: f32,
    /// The walk keeps to the points whose slots this passes: one it refuses is hopped over,
    /// not walked through (its neighbours that pass are walked to, and it is neither given a
    /// distance nor expanded: ACORN's two-hop expansion). Points on the path that the
    /// search's `accept` refuses are still walked through. For a filter whose items lie away
    /// from the query (a department not the query's: every point near the query is refused
    /// and nearer than any that passes, so a walk through them visits the query's whole
    /// region first), started from seeds spread over the items that pass. `rank_cost` at
    /// 300k items, a department: 8.8 -> 1.8 ms, the same top 10s; one colour (a tenth of the
    /// items, all over): 2.7 -> 2.3 ms, the same.
    pub keep_to: Option<&'s dyn Fn(u32) -> bool>,
}

impl Default for Walk<'_> {
    fn default() -> Self {
        Self {
            seeds: &[],
            min_dot: f32::NEG_INFINITY,
            keep_to: None,
        }
    }
}

/// Distance of a unit vector to a stored point's: 1 - dot (only its order matters;
/// rounding may make it < 0).
fn distance(a: &[f32], b: Row<'_>) -> f32 {
    1.0 - b.dot(a)
}

/// A vector in f16 (as bits), as the catalog keeps it and hands it to the graph.
pub fn to_f16_row(v: &[f32]) -> Vec<u16> {
    let mut row = vec![0; v.len()];
    write_f16(&mut row, v);
    row
}

/// Writes `v` in f16 (as bits) into `row` (as many numbers as both hold): [`to_f16_row`]
/// without the allocation, for a row of the catalog's array.
pub fn write_f16(row: &mut [u16], v: &[f32]) {
    for (kept, &x) in row.iter_mut().zip(v) {
        *kept = half::f16::from_f32(x).to_bits();
    }
}

/// A row of f16 bits back in f32.
pub fn widen(row: &[u16]) -> Vec<f32> {
    row.iter()
        .map(|&h| half::f16::from_bits(h).to_f32())
        .collect()
}

/// A point and its distance to whatever is being searched for; ordered by distance, then id.
#[derive(Debug, Clone, Copy)]
struct Near {
    d: f32,
    id: u32,
}

impl PartialEq for Near {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Near {}
impl PartialOrd for Near {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Near {
    fn cmp(&self, other: &Self) -> Ordering {
        self.d.total_cmp(&other.d).then(self.id.cmp(&other.id))
    }
}

/// Points seen by one search: a mark per point, reset by bumping the epoch (one per thread).
#[derive(Default)]
struct Visited {
    marks: Vec<u32>,
    epoch: u32,
}

impl Visited {
    fn start(&mut self, n: usize) {
        if self.marks.len() < n {
            self.marks.resize(n, 0);
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.marks.fill(0);
            self.epoch = 1;
        }
    }

    fn seen(&self, id: u32) -> bool {
        self.marks[id as usize] == self.epoch
    }

    /// True the first time `id` is seen in this search.
    fn first(&mut self, id: u32) -> bool {
        let mark = &mut self.marks[id as usize];
        let first = *mark != self.epoch;
        *mark = self.epoch;
        first
    }
}

thread_local! {
    static VISITED: RefCell<Visited> = RefCell::new(Visited::default());
}

/// The level a point is drawn at (geometric, mean 1/ln M), a function of its number so that a
/// build is the same however its batches are spread over threads.
fn level_of(point: usize) -> usize {
    let u = XorShift::new(0x4e53_5748 ^ point as u64).unit();
    let level = -(1.0 - u).ln() / (M as f64).ln();
    (level as usize).min(MAX_LEVEL)
}

pub struct AnnIndex {
    dim: usize,
    /// Each point's vector in 8 bits ([`crate::quant`]: `dim` codes and a scale, `stride`
    /// bytes), one after another: the graph's own copy (a replaced item's old point keeps
    /// the vector it was linked by).
    vectors: Vec<i8>,
    levels: Vec<u8>,
    /// Base-layer links, `M0` places per point, `base_len` of them used.
    base: Vec<u32>,
    base_len: Vec<u8>,
    /// Links on layers 1..=level, per point (empty for the ~15/16 of points on layer 0 only).
    upper: Vec<Vec<Vec<u32>>>,
    entry: Option<u32>,
    top: usize,
    /// Point id -> (slot, slot version at insertion).
    points: Vec<(u32, u32)>,
    /// Slot -> its newest point ([`NO_POINT`]: none), where a seeded search starts.
    point_of: Vec<u32>,
    stale: usize,
}

impl std::fmt::Debug for AnnIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnnIndex")
            .field("points", &self.points.len())
            .field("stale", &self.stale)
            .field("top", &self.top)
            .finish()
    }
}

impl AnnIndex {
    fn empty(dim: usize) -> Self {
        Self {
            dim,
            vectors: Vec::new(),
            levels: Vec::new(),
            base: Vec::new(),
            base_len: Vec::new(),
            upper: Vec::new(),
            entry: None,
            top: 0,
            points: Vec::new(),
            point_of: Vec::new(),
            stale: 0,
        }
    }

    /// Builds the graph over `(slot, version, vector)`, on all cores (rayon) once past the
    /// first [`SERIAL_POINTS`].
    pub fn build<'a>(items: impl Iterator<Item = (u32, u32, &'a [u16])>) -> Self {
        let mut items = items.peekable();
        let dim = items.peek().map_or(0, |(_, _, v)| v.len());
        let mut index = Self::empty(dim);
        index.add_all(items);
        index
    }

    /// Adds points `(slot, version, vector)` (f16 bits, [`to_f16_row`]) and links them: one
    /// at a time while the graph is small, then in batches whose searches run in parallel
    /// against the graph as it was before the batch.
    pub fn add_all<'a>(&mut self, items: impl Iterator<Item = (u32, u32, &'a [u16])>) {
        let first = self.points.len();
        for (slot, version, vector) in items {
            self.push(slot, version, vector);
        }
        let mut done = first;
        while done < self.points.len() {
            let size = if done < SERIAL_POINTS {
                1
            } else {
                (done / 32).min(MAX_BATCH)
            };
            let end = (done + size).min(self.points.len());
            self.link(done, end);
            done = end;
        }
    }

    /// Appends a point, not yet linked (no search reaches it until [`Self::link`]).
    fn push(&mut self, slot: u32, version: u32, vector: &[u16]) {
        if self.points.is_empty() {
            self.dim = vector.len();
        }
        let level = level_of(self.points.len());
        self.note_point(slot, self.points.len() as u32);
        self.points.push((slot, version));
        push_row(&mut self.vectors, &widen(vector));
        self.levels.push(level as u8);
        self.base.extend(std::iter::repeat_n(0, M0));
        self.base_len.push(0);
        self.upper.push(vec![Vec::new(); level]);
    }

    /// Records `point` as the newest one of `slot`.
    fn note_point(&mut self, slot: u32, point: u32) {
        if slot == NO_SLOT {
            return;
        }
        let at = slot as usize;
        if self.point_of.len() <= at {
            self.point_of.resize(at + 1, NO_POINT);
        }
        self.point_of[at] = point;
    }

    /// Bytes per point in [`Self::vectors`].
    fn stride(&self) -> usize {
        self.dim + SCALE_BYTES
    }

    /// Point `p`'s row as stored: its codes and its scale's bytes.
    fn stored(&self, p: u32) -> &[i8] {
        let start = p as usize * self.stride();
        &self.vectors[start..start + self.stride()]
    }

    fn vector(&self, p: u32) -> Row<'_> {
        Row::read(self.stored(p), self.dim)
    }

    /// Asks the CPU to fetch point `p`'s vector, ahead of [`Self::vector`].
    fn prefetch_vector(&self, p: u32) {
        prefetch_slice(self.stored(p));
    }

    fn links(&self, p: u32, layer: usize) -> &[u32] {
        let p = p as usize;
        if layer == 0 {
            &self.base[p * M0..p * M0 + self.base_len[p] as usize]
        } else {
            &self.upper[p][layer - 1]
        }
    }

    fn set_links(&mut self, p: u32, layer: usize, links: &[u32]) {
        let p = p as usize;
        if layer == 0 {
            self.base[p * M0..p * M0 + links.len()].copy_from_slice(links);
            self.base_len[p] = links.len() as u8;
        } else {
            self.upper[p][layer - 1] = links.to_vec();
        }
    }

    /// Links points `first..end` (pushed, unlinked): each one's neighbours are chosen against
    /// the graph without the batch (in parallel), then set, then every neighbour's list takes
    /// its new back-links, pruned by the heuristic when full (in parallel by neighbour).
    fn link(&mut self, mut first: usize, end: usize) {
        if self.entry.is_none() {
            self.entry = Some(first as u32);
            self.top = self.levels[first] as usize;
            first += 1;
        }
        if first >= end {
            return;
        }
        let plans: Vec<Vec<Vec<u32>>> = if end - first == 1 {
            vec![self.plan(first as u32)]
        } else {
            (first..end)
                .into_par_iter()
                .map(|p| self.plan(p as u32))
                .collect()
        };
        let mut back: Vec<(u32, u8, u32)> = Vec::new();
        for (p, plan) in (first..end).zip(&plans) {
            for (layer, neighbours) in plan.iter().enumerate() {
                self.set_links(p as u32, layer, neighbours);
                back.extend(neighbours.iter().map(|&n| (n, layer as u8, p as u32)));
            }
        }
        back.sort_unstable();
        let groups: Vec<&[(u32, u8, u32)]> =
            back.chunk_by(|a, b| a.0 == b.0 && a.1 == b.1).collect();
        let merge = |group: &&[(u32, u8, u32)]| {
            let (node, layer, _) = group[0];
            let added: Vec<u32> = group.iter().map(|&(_, _, p)| p).collect();
            (node, layer, self.merged(node, layer as usize, &added))
        };
        let updated: Vec<(u32, u8, Vec<u32>)> = if groups.len() < 64 {
            groups.iter().map(merge).collect()
        } else {
            groups.par_iter().map(merge).collect()
        };
        for (node, layer, links) in updated {
            self.set_links(node, layer as usize, &links);
        }
        for p in first..end {
            if self.levels[p] as usize > self.top {
                self.top = self.levels[p] as usize;
                self.entry = Some(p as u32);
            }
        }
    }

    /// `node`'s links on `layer` with `added` joined: all of them while they fit, else the
    /// heuristic's pick among old and new.
    fn merged(&self, node: u32, layer: usize, added: &[u32]) -> Vec<u32> {
        let cap = if layer == 0 { M0 } else { M };
        let current = self.links(node, layer);
        if current.len() + added.len() <= cap {
            return current.iter().chain(added).copied().collect();
        }
        let v = self.vector(node).widen();
        let mut candidates: Vec<Near> = current
            .iter()
            .chain(added)
            .map(|&id| Near {
                d: distance(&v, self.vector(id)),
                id,
            })
            .collect();
        candidates.sort_unstable();
        self.select(&candidates, cap)
    }

    /// The neighbours point `p` links to on each layer up to its level (or the graph's top),
    /// found by a greedy descent and a beam of [`EF_CONSTRUCTION`] per layer.
    fn plan(&self, p: u32) -> Vec<Vec<u32>> {
        let Some(entry) = self.entry else {
            return Vec::new();
        };
        let q = self.vector(p).widen();
        let q = q.as_slice();
        let level = (self.levels[p as usize] as usize).min(self.top);
        let ep = self.descend(q, entry, level);
        let mut plan = vec![Vec::new(); level + 1];
        let mut entries = vec![ep];
        VISITED.with_borrow_mut(|visited| {
            for layer in (0..=level).rev() {
                let beam = Beam {
                    ef: EF_CONSTRUCTION,
                    layer,
                    budget: usize::MAX,
                    within: f32::INFINITY,
                };
                let found = self.search_layer(q, &entries, visited, |_| true, None, beam);
                plan[layer] = self.select(&found, M);
                entries = found;
            }
        });
        plan
    }

    /// The heuristic of the HNSW paper (hnswlib's form): walking `candidates` nearest first,
    /// keep one unless it is nearer to a kept neighbour than to the base point, up to `m`. It
    /// links across clusters instead of filling every list with one clump's members.
    fn select(&self, candidates: &[Near], m: usize) -> Vec<u32> {
        let mut kept: Vec<u32> = Vec::with_capacity(m);
        for c in candidates {
            if kept.len() == m {
                break;
            }
            let v = self.vector(c.id).widen();
            if kept.iter().all(|&k| distance(&v, self.vector(k)) >= c.d) {
                kept.push(c.id);
            }
        }
        kept
    }

    /// The point nearest `q` found by greedy moves from `entry` on each layer above `level`,
    /// top down: where the beam search on `level` starts.
    fn descend(&self, q: &[f32], entry: u32, level: usize) -> Near {
        let mut ep = Near {
            d: distance(q, self.vector(entry)),
            id: entry,
        };
        for layer in (level + 1..=self.top).rev() {
            ep = self.greedy(q, ep, layer);
        }
        ep
    }

    /// Moves to a nearer neighbour on `layer` until none is nearer.
    fn greedy(&self, q: &[f32], mut best: Near, layer: usize) -> Near {
        loop {
            let mut moved = false;
            for &n in self.links(best.id, layer) {
                let d = distance(q, self.vector(n));
                if d < best.d {
                    best = Near { d, id: n };
                    moved = true;
                }
            }
            if !moved {
                return best;
            }
        }
    }

    /// The `beam.ef` nearest points to `q` on `beam.layer` that `accept`, reachable from
    /// `entries`, nearest first. Points `accept` refuses are walked through but never answered
    /// (hnswlib's filtered search), so the beam widens until it holds `ef` accepted points or
    /// its nearest unexpanded point is farther than all of them; it also stops after
    /// `beam.budget` distances, since a filter few points pass would otherwise walk most of the
    /// graph (the caller then gets fewer than `ef`). Points `keep_to` refuses are hopped over
    /// (see [`Walk::keep_to`]).
    fn search_layer(
        &self,
        q: &[f32],
        entries: &[Near],
        visited: &mut Visited,
        accept: impl Fn(u32) -> bool,
        keep_to: Option<&dyn Fn(u32) -> bool>,
        beam: Beam,
    ) -> Vec<Near> {
        let Beam {
            ef,
            layer,
            budget,
            within,
        } = beam;
        let on_path = |p: u32| keep_to.is_none_or(|keep| keep(p));
        visited.start(self.points.len());
        let mut frontier: BinaryHeap<std::cmp::Reverse<Near>> = BinaryHeap::new();
        let mut found: BinaryHeap<Near> = BinaryHeap::with_capacity(ef + 1);
        let mut computed = 0usize;
        let mut fresh: Vec<u32> = Vec::with_capacity(M0);
        for &e in entries {
            if visited.first(e.id) {
                frontier.push(std::cmp::Reverse(e));
                if e.d <= within && accept(e.id) {
                    found.push(e);
                    if found.len() > ef {
                        found.pop();
                    }
                }
            }
        }
        while let Some(std::cmp::Reverse(c)) = frontier.pop() {
            if c.d > within
                || (found.len() >= ef && found.peek().is_some_and(|worst| c.d > worst.d))
            {
                break;
            }
            if computed >= budget {
                break;
            }
            // The unvisited neighbours' vectors are asked for before any is read, so their
            // cache misses overlap instead of following one another. A neighbour off the path
            // is hopped over; its own neighbours off the path are not marked, so that a later
            // hop through them still walks on.
            fresh.clear();
            for &n in self.links(c.id, layer) {
                if !visited.first(n) {
                    continue;
                }
                if on_path(n) {
                    fresh.push(n);
                    self.prefetch_vector(n);
                    continue;
                }
                for &m in self.links(n, layer) {
                    if !visited.seen(m) && on_path(m) {
                        visited.first(m);
                        fresh.push(m);
                        self.prefetch_vector(m);
                    }
                }
            }
            for &n in &fresh {
                let d = distance(q, self.vector(n));
                computed += 1;
                if found.len() < ef || found.peek().is_some_and(|worst| d < worst.d) {
                    let near = Near { d, id: n };
                    frontier.push(std::cmp::Reverse(near));
                    if d <= within && accept(n) {
                        found.push(near);
                        if found.len() > ef {
                            found.pop();
                        }
                    }
                }
            }
        }
        found.into_sorted_vec()
    }

    /// Counts a point that no longer stands for its slot (the item was replaced or deleted).
    pub fn mark_stale(&mut self) {
        self.stale += 1;
    }

    /// True once stale points are over a quarter of the graph: time to rebuild.
    pub fn needs_rebuild(&self) -> bool {
        self.stale * 4 > self.points.len()
    }

    pub fn len(&self) -> usize {
        self.points.len() - self.stale.min(self.points.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The vectors' dimension (0 before the first point).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The `k` nearest slots to `query` that `accept(slot, version)` (beam `ef`), nearest
    /// first. `accept` must refuse a point that no longer stands for its slot (its version is
    /// not the slot's), and may refuse more: a request's filters. Refused points are walked
    /// through, not answered, and the walk stops after [`FILTERED_BUDGET`] distances per beam
    /// place, so a filter that few items pass can return fewer than `k` (the caller scans).
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        accept: impl Fn(u32, u32) -> bool,
    ) -> Vec<u32> {
        self.search_from(query, k, ef, Walk::default(), accept)
    }

    /// [`Self::search`], walking the base layer as `walk` says. A filter that items all over
    /// the graph pass (the matches of a common word) has its nearest items in several
    /// regions, and a walk from one entry explores the nearest region and stops there; seeds
    /// spread over the accepted items start it in each region they reach, and a `min_dot`
    /// keeps it from filling its beam with far points no caller wants (a region with 75 near
    /// matches, asked for 128, otherwise walks to the budget).
    pub fn search_from(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        walk: Walk<'_>,
        accept: impl Fn(u32, u32) -> bool,
    ) -> Vec<u32> {
        let Some(entry) = self.entry else {
            return Vec::new();
        };
        if query.len() != self.dim {
            return Vec::new();
        }
        let ef = ef.max(k);
        let seeds: Vec<u32> = walk
            .seeds
            .iter()
            .filter_map(|&slot| self.point_of.get(slot as usize).copied())
            .filter(|&p| p != NO_POINT)
            .collect();
        // Every seed's vector is asked for before the descent, whose reads overlap them.
        for &p in &seeds {
            self.prefetch_vector(p);
        }
        let mut entries = vec![self.descend(query, entry, 0)];
        entries.extend(seeds.into_iter().map(|p| Near {
            d: distance(query, self.vector(p)),
            id: p,
        }));
        let accept = |id: u32| {
            let (slot, version) = self.points[id as usize];
            slot != NO_SLOT && accept(slot, version)
        };
        let keep_to = walk.keep_to.map(|keep| {
            move |id: u32| {
                let slot = self.points[id as usize].0;
                slot != NO_SLOT && keep(slot)
            }
        });
        let beam = Beam {
            ef,
            layer: 0,
            budget: ef.saturating_mul(FILTERED_BUDGET),
            within: 1.0 - walk.min_dot,
        };
        let found = VISITED.with_borrow_mut(|visited| {
            let keep_to = keep_to.as_ref().map(|k| k as &dyn Fn(u32) -> bool);
            self.search_layer(query, &entries, visited, accept, keep_to, beam)
        });
        found
            .into_iter()
            .map(|n| self.points[n.id as usize].0)
            .take(k)
            .collect()
    }
}

/// The saved graph's first bytes, and its layout's version.
const MAGIC: &[u8; 8] = b"SOUKHNSW";
/// 3: vectors in 8 bits (session 32); 2 (f16 vectors) is still read.
const FORMAT: u32 = 3;
const FORMAT_F16: u32 = 2;

/// Little-endian reads over a saved graph that answer a short or bad file with a reason.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(format!("cut short at byte {}", self.at));
        };
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// A saved point's vector as [`AnnIndex::decode`] read it, for its caller to compare with an
/// item's vector now.
#[derive(Clone, Copy)]
pub struct SavedVector<'a> {
    /// The row as saved: 8-bit codes and a scale, or f16 numbers (format 2).
    bytes: &'a [u8],
    f16: bool,
}

impl SavedVector<'_> {
    /// Whether `row` (f16 bits, as the catalog keeps vectors) is the vector the point was
    /// linked by: bit for bit in a file of f16 vectors, the same codes and scale (what the
    /// graph would store for it) in a file of 8-bit ones.
    pub fn is(&self, row: &[u16]) -> bool {
        if self.f16 {
            return self.bytes.len() == row.len() * 2
                && row
                    .iter()
                    .zip(self.bytes.chunks_exact(2))
                    .all(|(h, b)| h.to_le_bytes() == [b[0], b[1]]);
        }
        let mut codes = Vec::with_capacity(row.len() + SCALE_BYTES);
        push_row(&mut codes, &widen(row));
        codes.len() == self.bytes.len() && codes.iter().zip(self.bytes).all(|(&c, &b)| c as u8 == b)
    }
}

/// What [`AnnIndex::decode`] made of a saved graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    pub points: usize,
    /// Points whose item is gone or whose vector changed since the save.
    pub stale: usize,
}

impl AnnIndex {
    /// The graph as bytes: settings, every point's level, links and item id (`id_of(slot,
    /// version)`, `None` for a stale point), the vectors, and a BLAKE3 hash of all of it.
    pub fn encode<'a>(&self, id_of: impl Fn(u32, u32) -> Option<&'a str>) -> Vec<u8> {
        let n = self.points.len();
        let mut out = Vec::with_capacity(64 + n * (M0 * 4 + 24) + self.vectors.len());
        out.extend_from_slice(MAGIC);
        for x in [
            FORMAT,
            self.dim as u32,
            n as u32,
            M as u32,
            M0 as u32,
            self.entry.unwrap_or(u32::MAX),
            self.top as u32,
        ] {
            out.extend_from_slice(&x.to_le_bytes());
        }
        for p in 0..n {
            let level = self.levels[p] as usize;
            out.push(level as u8);
            for layer in 0..=level {
                let links = self.links(p as u32, layer);
                out.push(links.len() as u8);
                out.extend(links.iter().flat_map(|l| l.to_le_bytes()));
            }
            let (slot, version) = self.points[p];
            match id_of(slot, version).filter(|id| id.len() < u16::MAX as usize) {
                Some(id) => {
                    out.extend_from_slice(&(id.len() as u16).to_le_bytes());
                    out.extend_from_slice(id.as_bytes());
                }
                None => out.extend_from_slice(&u16::MAX.to_le_bytes()),
            }
        }
        out.extend(self.vectors.iter().map(|&b| b as u8));
        let hash = blake3::hash(&out);
        out.extend_from_slice(hash.as_bytes());
        out
    }

    /// Reads back what [`Self::encode`] wrote (or a graph of f16 vectors, format 2, whose
    /// vectors are put in 8 bits). `resolve(id, saved vector)` gives the slot and version a
    /// point stands for now, `None` when its item is gone or changed (the point is then kept
    /// for the links through it but counted stale). A damaged or foreign file, or one saved
    /// with other settings, is refused with the reason.
    ///
    /// # Errors
    /// The reason the bytes are not a graph this build can use.
    pub fn decode(
        bytes: &[u8],
        mut resolve: impl FnMut(&str, SavedVector<'_>) -> Option<(u32, u32)>,
    ) -> Result<(Self, Decoded), String> {
        let Some(body_len) = bytes.len().checked_sub(32) else {
            return Err("too short to be a saved graph".into());
        };
        let (body, hash) = bytes.split_at(body_len);
        if body.len() < MAGIC.len() || &body[..MAGIC.len()] != MAGIC {
            return Err("not a saved HNSW graph".into());
        }
        if blake3::hash(body).as_bytes() != hash {
            return Err("its checksum does not match (damaged or cut short)".into());
        }
        let mut r = Reader {
            bytes: body,
            at: MAGIC.len(),
        };
        let format = r.u32()?;
        if format != FORMAT && format != FORMAT_F16 {
            return Err(format!(
                "format {format}, this build reads {FORMAT_F16} and {FORMAT}"
            ));
        }
        let dim = r.u32()? as usize;
        let n = r.u32()? as usize;
        let (m, m0) = (r.u32()? as usize, r.u32()? as usize);
        if (m, m0) != (M, M0) {
            return Err(format!("built with M {m}/{m0}, this build uses {M}/{M0}"));
        }
        let entry = r.u32()?;
        let top = r.u32()? as usize;
        // Every point takes at least 4 bytes and every vector its row: a header claiming
        // more than the file holds is refused before anything is allocated for it.
        let row_bytes = if format == FORMAT_F16 {
            dim.checked_mul(2)
        } else {
            dim.checked_add(SCALE_BYTES)
        };
        let vector_bytes = row_bytes.and_then(|row| n.checked_mul(row));
        if vector_bytes.is_none_or(|v| v.saturating_add(n.saturating_mul(4)) > body.len()) {
            return Err(format!(
                "{n} points of {dim} dimensions do not fit in the file"
            ));
        }
        let mut index = Self::empty(dim);
        index.levels.reserve(n);
        index.base.resize(n * M0, 0);
        index.base_len.resize(n, 0);
        let mut ids: Vec<Option<String>> = Vec::with_capacity(n);
        for p in 0..n {
            let level = r.u8()? as usize;
            if level > MAX_LEVEL || level > top {
                return Err(format!(
                    "point {p} is on level {level}, above the graph's top"
                ));
            }
            index.levels.push(level as u8);
            let mut upper = Vec::with_capacity(level);
            for layer in 0..=level {
                let len = r.u8()? as usize;
                let cap = if layer == 0 { M0 } else { M };
                if len > cap {
                    return Err(format!("point {p} has {len} links on layer {layer}"));
                }
                let raw = r.take(len * 4)?;
                let links: Vec<u32> = raw
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                if let Some(bad) = links.iter().find(|&&l| l as usize >= n) {
                    return Err(format!("point {p} links to point {bad} of {n}"));
                }
                if layer == 0 {
                    index.base[p * M0..p * M0 + len].copy_from_slice(&links);
                    index.base_len[p] = len as u8;
                } else {
                    upper.push(links);
                }
            }
            index.upper.push(upper);
            let id_len = r.u16()?;
            ids.push(if id_len == u16::MAX {
                None
            } else {
                let raw = r.take(id_len as usize)?;
                Some(
                    std::str::from_utf8(raw)
                        .map_err(|_| format!("point {p}'s item id is not UTF-8"))?
                        .to_owned(),
                )
            });
        }
        // (Checked above: n * row_bytes fits in the file.)
        let row_bytes = row_bytes.unwrap_or(0);
        let raw = r.take(n * row_bytes)?;
        if r.at != body.len() {
            return Err(format!("{} bytes after the vectors", body.len() - r.at));
        }
        if format == FORMAT_F16 {
            // One 8-bit row per point (a row of `dim` numbers and a scale, even at 0
            // dimensions, so that every point's row is where `vector` reads it).
            index.vectors.reserve(n * index.stride());
            for p in 0..n {
                let row = raw.get(p * row_bytes..(p + 1) * row_bytes).unwrap_or(&[]);
                let bits: Vec<u16> = row
                    .chunks_exact(2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]))
                    .collect();
                push_row(&mut index.vectors, &widen(&bits));
            }
        } else {
            index.vectors = raw.iter().map(|&b| b as i8).collect();
        }
        if n > 0 {
            if entry as usize >= n || index.levels[entry as usize] as usize != top {
                return Err(format!("entry point {entry} is not on the top level {top}"));
            }
            index.entry = Some(entry);
            index.top = top;
        }
        for (p, id) in ids.iter().enumerate() {
            let saved = SavedVector {
                bytes: raw.get(p * row_bytes..(p + 1) * row_bytes).unwrap_or(&[]),
                f16: format == FORMAT_F16,
            };
            let point = id.as_deref().and_then(|id| resolve(id, saved));
            let (slot, version) = point.unwrap_or((NO_SLOT, 0));
            index.note_point(slot, p as u32);
            index.points.push((slot, version));
            if point.is_none() {
                index.stale += 1;
            }
        }
        let decoded = Decoded {
            points: n,
            stale: index.stale,
        };
        Ok((index, decoded))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn unit(mut v: Vec<f32>) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-9);
        v.iter_mut().for_each(|x| *x /= n);
        v
    }

    /// `n` unit vectors around 40 centres (clustered, as product texts are).
    fn clustered(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = XorShift::new(seed);
        let centres: Vec<Vec<f32>> = (0..40)
            .map(|_| unit((0..dim).map(|_| rng.uniform() as f32).collect()))
            .collect();
        (0..n)
            .map(|i| {
                let c = &centres[i % centres.len()];
                unit(c.iter().map(|x| x + 0.3 * rng.uniform() as f32).collect())
            })
            .collect()
    }

    /// A graph over `vectors`, point i standing for slot i (version 1).
    fn built(vectors: &[Vec<f32>]) -> AnnIndex {
        let rows: Vec<Vec<u16>> = vectors.iter().map(|v| to_f16_row(v)).collect();
        AnnIndex::build(
            rows.iter()
                .enumerate()
                .map(|(i, v)| (i as u32, 1, v.as_slice())),
        )
    }

    fn exact(vectors: &[Vec<f32>], q: &[f32], k: usize) -> Vec<u32> {
        let mut all: Vec<Near> = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| Near {
                d: 1.0 - crate::rank::dot(q, v),
                id: i as u32,
            })
            .collect();
        all.sort_unstable();
        all.iter().take(k).map(|n| n.id).collect()
    }

    fn recall(index: &AnnIndex, vectors: &[Vec<f32>], queries: &[Vec<f32>]) -> f64 {
        let mut hits = 0;
        for q in queries {
            let want = exact(vectors, q, 10);
            let got = index.search(q, 10, 64, |_, _| true);
            hits += got.iter().filter(|s| want.contains(s)).count();
        }
        hits as f64 / (10 * queries.len()) as f64
    }

    /// Built in parallel batches or one point at a time, the graph finds the exact top 10 for
    /// nearly every query, every list stays within its cap, and every point is reachable.
    #[test]
    fn batched_and_serial_builds_find_the_exact_neighbours() {
        let vectors = clustered(4000, 24, 3);
        let queries = clustered(100, 24, 4);
        let batched = built(&vectors);
        let mut serial = AnnIndex::build(std::iter::empty());
        for (i, v) in vectors.iter().enumerate() {
            serial.add_all(std::iter::once((i as u32, 1, to_f16_row(v).as_slice())));
        }
        for index in [&batched, &serial] {
            let r = recall(index, &vectors, &queries);
            assert!(r >= 0.95, "recall@10 at ef 64: {r:.3}");
            assert!(index.base_len.iter().all(|&l| l as usize <= M0));
            assert!(index.upper.iter().flatten().all(|l| l.len() <= M));
            // Each point is its own nearest neighbour: the search reaches every point.
            let lost = vectors
                .iter()
                .enumerate()
                .filter(|(i, v)| index.search(v, 1, 64, |_, _| true) != vec![*i as u32])
                .count();
            assert!(lost <= vectors.len() / 200, "{lost} points not found");
        }
    }

    /// Stale points are skipped, and the answer still has k live slots.
    #[test]
    fn stale_points_are_skipped() {
        let vectors = clustered(1500, 16, 5);
        let mut index = built(&vectors);
        let q = &vectors[7];
        let first = index.search(q, 5, 64, |_, _| true);
        assert_eq!(first[0], 7);
        index.mark_stale();
        let live = |slot: u32, _| slot != 7;
        let after = index.search(q, 5, 64, live);
        assert_eq!(after.len(), 5);
        assert!(!after.contains(&7));
        assert_eq!(after[..4], first[1..]);
    }

    /// A filter that a tenth of the clusters, a tenth of each cluster or half of the points
    /// pass: the answer holds only points it accepts and is nearly the exact top 10 among them,
    /// also for queries whose own cluster has none of them, whether the walk passes through
    /// refused points or keeps to those that pass (hopping over the rest) from eight seeds
    /// among them. A filter nothing passes answers nothing, within its budget.
    #[test]
    fn filtered_searches_find_the_nearest_points_that_pass() {
        let vectors = clustered(4000, 24, 6);
        let queries = clustered(60, 24, 7);
        let index = built(&vectors);
        // Slot % 40 is the cluster: a tenth of the clusters, a tenth of each cluster, or
        // every other point.
        let tenth = |s: u32| s % 40 < 4;
        let scattered = |s: u32| (s / 40) % 10 == 3;
        let half = |s: u32| s.is_multiple_of(2);
        for (passes, keep) in [
            (&tenth as &dyn Fn(u32) -> bool, false),
            (&scattered, false),
            (&half, false),
            (&tenth, true),
            (&scattered, true),
            (&half, true),
        ] {
            // Eight seeds: the walk must still find its way to the rest.
            let passing: Vec<u32> = (0..vectors.len() as u32).filter(|&s| passes(s)).collect();
            let seeds: Vec<u32> = passing.iter().copied().step_by(passing.len() / 8).collect();
            let walk = Walk {
                seeds: &seeds,
                keep_to: Some(passes),
                ..Walk::default()
            };
            let kept: Vec<Vec<f32>> = (0..vectors.len() as u32)
                .map(|s| {
                    if passes(s) {
                        vectors[s as usize].clone()
                    } else {
                        vec![0.0; 24] // as far as any unit vector can be from the rest
                    }
                })
                .collect();
            let mut hits = 0;
            for q in &queries {
                let want: Vec<u32> = exact(&kept, q, 10);
                let got = if keep {
                    index.search_from(q, 10, 64, walk, |s, _| passes(s))
                } else {
                    index.search(q, 10, 64, |s, _| passes(s))
                };
                assert_eq!(got.len(), 10);
                assert!(got.iter().all(|&s| passes(s)), "{got:?}");
                hits += got.iter().filter(|s| want.contains(s)).count();
            }
            let r = hits as f64 / (10 * queries.len()) as f64;
            assert!(r >= 0.95, "filtered recall@10: {r:.3} (kept to it: {keep})");
        }
        assert!(index.search(&queries[0], 10, 64, |_, _| false).is_empty());
    }

    /// A walk among the points of five clusters, with a query as near to each of them: from
    /// seeds spread over those points it answers the exact nearest among them, and with a
    /// floor on the dot product only the points above it (fewer than asked), nearest first.
    #[test]
    fn seeded_walks_answer_what_passes_above_the_floor() {
        let vectors = clustered(4000, 24, 9);
        let index = built(&vectors);
        let fifth = |s: u32| s % 40 < 5;
        let q = unit(
            (0..24)
                .map(|d| (0..5).map(|c| vectors[c][d]).sum::<f32>())
                .collect(),
        );
        let kept: Vec<Vec<f32>> = (0..vectors.len() as u32)
            .map(|s| {
                if fifth(s) {
                    vectors[s as usize].clone()
                } else {
                    vec![0.0; 24]
                }
            })
            .collect();
        let seeds: Vec<u32> = (0..4000).filter(|&s| fifth(s)).step_by(20).collect();
        let want = exact(&kept, &q, 100);
        let walk = |min_dot: f32| {
            let walk = Walk {
                seeds: &seeds,
                min_dot,
                keep_to: None,
            };
            index.search_from(&q, 100, 100, walk, |s, _| fifth(s))
        };
        let got = walk(f32::NEG_INFINITY);
        let hits = got.iter().filter(|s| want.contains(s)).count();
        assert!(hits >= 98, "{hits} of the exact 100");
        // The floor: the 30th nearest's dot product.
        let floor = crate::rank::dot(&q, &vectors[want[29] as usize]) - 1e-3;
        let got = walk(floor);
        // (The graph's 8-bit vectors may move a dot product across the floor by ~1e-3:
        // the 28 surest are all found, and nothing from beyond the exact 32.)
        assert!((28..=32).contains(&got.len()), "{}", got.len());
        assert!(want[..28].iter().all(|s| got.contains(s)), "{got:?}");
        assert!(got.iter().all(|s| want[..32].contains(s)), "{got:?}");
    }

    fn halved(v: &[f32]) -> Vec<u16> {
        to_f16_row(v)
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("item-{i}")).collect()
    }

    /// A saved graph reads back to the same answers; a point whose item is gone or changed
    /// comes back stale; any flipped byte, a cut, or other bytes are refused with a reason.
    #[test]
    fn saved_graphs_read_back_and_damage_is_refused() {
        let vectors = clustered(1500, 16, 8);
        let names = ids(vectors.len());
        let index = built(&vectors);
        let bytes = index.encode(|slot, _| Some(names[slot as usize].as_str()));
        let by_name = |id: &str| names.iter().position(|n| n == id);
        let (back, decoded) = AnnIndex::decode(&bytes, |id, v| {
            let i = by_name(id)?;
            v.is(&halved(&vectors[i])).then_some((i as u32 + 10_000, 3))
        })
        .unwrap();
        assert_eq!(
            decoded,
            Decoded {
                points: 1500,
                stale: 0
            }
        );
        for q in vectors.iter().step_by(50) {
            let want: Vec<u32> = index.search(q, 10, 64, |_, _| true);
            let got: Vec<u32> = back.search(q, 10, 64, |_, v| v == 3);
            assert_eq!(got, want.iter().map(|s| s + 10_000).collect::<Vec<_>>());
        }

        // Item 7 deleted, item 8 re-embedded (another vector now): both stale, the rest
        // found as before.
        let (back, decoded) = AnnIndex::decode(&bytes, |id, v| {
            let i = by_name(id)?;
            let now = if i == 8 { &vectors[100] } else { &vectors[i] };
            (i != 7 && v.is(&halved(now))).then_some((i as u32, 1))
        })
        .unwrap();
        assert_eq!(decoded.stale, 2);
        assert!(!back.search(&vectors[7], 5, 64, |_, _| true).contains(&7));
        assert_eq!(back.search(&vectors[9], 1, 64, |_, _| true), vec![9]);

        let resolve = |_: &str, _: SavedVector<'_>| Some((0, 0));
        let mut rng = XorShift::new(1);
        for _ in 0..200 {
            let mut damaged = bytes.clone();
            let at = (rng.unit() * damaged.len() as f64) as usize;
            damaged[at] ^= 1 << (at % 8);
            let err = AnnIndex::decode(&damaged, resolve).unwrap_err();
            assert!(!err.is_empty());
        }
        for cut in [0, 10, 40, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                AnnIndex::decode(&bytes[..cut], resolve).is_err(),
                "cut at {cut}"
            );
        }
        let err = AnnIndex::decode(
            b"{\"not\": \"a graph at all, but long enough to hash\"}",
            resolve,
        )
        .unwrap_err();
        assert_eq!(err, "not a saved HNSW graph");
    }

    /// A graph saved before session 32 (format 2: f16 vectors) is still read: its vectors
    /// are put in 8 bits, a point is matched to its item by the f16 bits, and searches find
    /// the points nearest as before.
    #[test]
    fn saved_graphs_of_f16_vectors_still_read_back() {
        let vectors = clustered(1500, 16, 8);
        let names = ids(vectors.len());
        let index = built(&vectors);
        let bytes = index.encode(|slot, _| Some(names[slot as usize].as_str()));
        // The same file as format 2 wrote it: the format field, then f16 rows after the
        // points instead of 8-bit ones.
        let rows = vectors.len() * (16 + SCALE_BYTES);
        let mut old = bytes[..bytes.len() - 32 - rows].to_vec();
        old[8..12].copy_from_slice(&FORMAT_F16.to_le_bytes());
        for v in &vectors {
            old.extend(halved(v).iter().flat_map(|h| h.to_le_bytes()));
        }
        let hash = blake3::hash(&old);
        old.extend_from_slice(hash.as_bytes());
        let by_name = |id: &str| names.iter().position(|n| n == id);
        let (back, decoded) = AnnIndex::decode(&old, |id, v| {
            let i = by_name(id)?;
            let now = if i == 8 { &vectors[100] } else { &vectors[i] };
            v.is(&halved(now)).then_some((i as u32, 1))
        })
        .unwrap();
        assert_eq!(
            decoded,
            Decoded {
                points: 1500,
                stale: 1
            }
        );
        let mut same = 0;
        for q in vectors.iter().step_by(10) {
            let want = exact(&vectors, q, 10);
            let got = back.search(q, 10, 64, |s, _| s != 8);
            same += got.iter().filter(|s| want.contains(s) && **s != 8).count();
            assert_eq!(got[0], want[0], "each point finds itself first");
        }
        // (Every query's 10 less point 8 where it is among them.)
        assert!(same >= 1450, "{same} of the exact top 10s");
        // Re-encoded, it is a file of this format.
        assert_eq!(back.encode(|_, _| None)[8..12], FORMAT.to_le_bytes());
    }

    /// A header that lies (links past the end, a level above the top) is refused even when
    /// its checksum is right: the reader checks what it trusts, not only the hash.
    #[test]
    fn a_consistent_hash_over_wrong_structure_is_refused() {
        let vectors = clustered(200, 8, 9);
        let index = built(&vectors);
        let bytes = index.encode(|_, _| None);
        let rehash = |mut body: Vec<u8>| {
            body.truncate(body.len() - 32);
            let hash = blake3::hash(&body);
            body.extend_from_slice(hash.as_bytes());
            body
        };
        // The point count in the header (bytes 16..20) claims far more than the file holds.
        let mut lying = bytes.clone();
        lying[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = AnnIndex::decode(&rehash(lying), |_, _| None).unwrap_err();
        assert!(err.contains("do not fit"), "{err}");
        // Point 0's first link (after its level and link count) names a point past the end.
        let header = 8 + 7 * 4;
        let mut lying = bytes.clone();
        lying[header + 2..header + 6].copy_from_slice(&999u32.to_le_bytes());
        let err = AnnIndex::decode(&rehash(lying), |_, _| None).unwrap_err();
        assert!(err.contains("links to point 999 of 200"), "{err}");
        let (back, decoded) = AnnIndex::decode(&bytes, |_, _| None).unwrap();
        assert_eq!(decoded.stale, 200);
        assert!(back.search(&vectors[0], 5, 32, |_, _| true).is_empty());
    }
}
