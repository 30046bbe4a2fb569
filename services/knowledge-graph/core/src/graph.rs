//! The in-memory mirror of the stored graph: a petgraph `DiGraph` whose node index is the
//! entity id and whose edge weight is the relation id, plus the name dictionaries.
use std::collections::{HashMap, HashSet};

use petgraph::Direction::{Incoming, Outgoing};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;

use crate::{Change, KgError, MAX_HOPS, Triple};

/// The weight of a removed edge until the next compaction (relation ids are dense and far
/// below it).
const DEAD: u32 = u32::MAX;
/// Removed edges the graph keeps as tombstones before it compacts: at least this many, and at
/// least an eighth of its edges.
const COMPACT_AFTER: usize = 4096;

/// Nodes a path search may visit before it stops and reports `truncated`.
pub const PATH_NODE_BUDGET: usize = 200_000;
/// Nodes with more edges than this are "hubs" (a category holding 100k items): a path search
/// reaching one does not enumerate its edges, it only checks which targets touch it directly.
pub const HUB_DEGREE: usize = 2_000;

/// Which edges of an entity to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Out,
    In,
    Both,
}

/// Everything a store holds, ids implied by position.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub entities: Vec<String>,
    pub relations: Vec<String>,
    pub triples: Vec<(u32, u32, u32)>,
}

#[derive(Debug, Clone)]
pub struct NeighborQuery {
    pub entity: String,
    /// Only this relation, when set.
    pub relation: Option<String>,
    pub direction: Direction,
    /// 1..=10,000.
    pub limit: usize,
    /// Only neighbours whose entity id starts with this ("item:"), when set; `total` counts
    /// only those.
    pub prefix: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbor {
    pub entity: String,
    pub relation: String,
    /// `Out` when the asked entity is the head.
    pub direction: Direction,
}

#[derive(Debug, Clone, Default)]
pub struct NeighborsFound {
    pub neighbors: Vec<Neighbor>,
    /// Matching edges before the limit.
    pub total: usize,
}

#[derive(Debug, Clone)]
pub struct PathQuery {
    pub sources: Vec<String>,
    pub targets: Vec<String>,
    /// 1..=4.
    pub max_hops: u32,
    /// Paths per target, 1..=1,000.
    pub limit: usize,
    /// Relations a path may use; empty means any.
    pub relations: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathStep {
    pub relation: String,
    /// `Out`: walked head to tail; `In`: walked against the edge.
    pub direction: Direction,
    /// The entity this step arrives at.
    pub entity: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    pub source: String,
    pub target: String,
    pub steps: Vec<PathStep>,
}

#[derive(Debug, Clone, Default)]
pub struct PathsFound {
    pub paths: Vec<Path>,
    /// The search hit its node budget or skipped a hub's edges: longer paths may exist.
    pub truncated: bool,
    /// The sources, then the targets, that the graph does not hold (never named, or every
    /// triple of theirs removed), in query order: they have no path.
    pub unknown: Vec<String>,
}

/// The graph in memory. Entity `i` is node `i`.
///
/// A removed triple's edge stays as a tombstone (weight [`DEAD`], skipped by every walk) until
/// enough pile up, then the graph is rebuilt without them. petgraph's own `remove_edge` walks
/// the tail's singly linked edge list to unlink: recolouring 10k of 1M items, whose colours
/// are hubs of 100k edges, took 91 s that way. Tombstones cost one walk of the head's (short)
/// out-list, and because no edge is ever moved, edge index order stays insertion order: the
/// compaction (and a restart's replay) rebuild every adjacency list in the order it had.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    graph: DiGraph<(), u32, u32>,
    /// Tombstoned edges in `graph`.
    dead: usize,
    /// Edges touching each entity, both directions (petgraph counts them by walking a list:
    /// at a 10k-edge category that walk cost more than the path search's own work).
    degrees: Vec<u32>,
    /// Entities whose degree is 0: named (their ids stay, trained embeddings index by them)
    /// but no longer in the graph once their last triple is removed.
    isolated: usize,
    names: Vec<String>,
    index: HashMap<String, u32>,
    relations: Vec<String>,
    relation_index: HashMap<String, u32>,
}

/// How the path search takes its last hop: from the frontier (forward), from the targets'
/// side, or whichever reads fewer edges. Both give the same paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))] // the forced directions are for the tests
enum LastHop {
    Cheaper,
    Forward,
    Backward,
}

/// One way into a node found by the path search: from `prev` over relation `rel`.
#[derive(Debug, Clone, Copy)]
struct Pred {
    prev: u32,
    rel: u32,
    dir: Direction,
}

impl Graph {
    /// Rebuilds the graph from a store's snapshot.
    ///
    /// # Errors
    /// `Storage` when a triple refers to an id the snapshot does not name.
    pub fn from_snapshot(snapshot: Snapshot) -> Result<Self, KgError> {
        let mut graph = DiGraph::with_capacity(snapshot.entities.len(), snapshot.triples.len());
        for _ in 0..snapshot.entities.len() {
            graph.add_node(());
        }
        let (n, r) = (
            snapshot.entities.len() as u32,
            snapshot.relations.len() as u32,
        );
        let index = snapshot
            .entities
            .iter()
            .enumerate()
            .map(|(i, name)| (name.clone(), i as u32))
            .collect();
        let relation_index = snapshot
            .relations
            .iter()
            .enumerate()
            .map(|(i, name)| (name.clone(), i as u32))
            .collect();
        let mut out = Self {
            graph,
            dead: 0,
            degrees: vec![0; snapshot.entities.len()],
            isolated: snapshot.entities.len(),
            names: snapshot.entities,
            index,
            relations: snapshot.relations,
            relation_index,
        };
        for &(h, rel, t) in &snapshot.triples {
            if h >= n || t >= n || rel >= r {
                return Err(KgError::Storage(format!(
                    "triple ({h}, {rel}, {t}) refers to an unknown id ({n} entities, {r} relations)"
                )));
            }
            out.link(h, rel, t);
        }
        Ok(out)
    }

    /// Adds the edge `h -rel-> t` (ids in range) and counts it in both ends' degrees.
    fn link(&mut self, h: u32, rel: u32, t: u32) {
        self.graph
            .add_edge(NodeIndex::new(h as usize), NodeIndex::new(t as usize), rel);
        for end in [h, t] {
            let degree = &mut self.degrees[end as usize];
            if *degree == 0 {
                self.isolated -= 1;
            }
            *degree += 1;
        }
    }

    /// Tombstones the edge `h -rel-> t`, if there is one, and uncounts it from both ends'
    /// degrees.
    fn unlink(&mut self, h: u32, rel: u32, t: u32) -> bool {
        let Some(edge) = self.edge(h, rel, t) else {
            return false;
        };
        self.graph[edge] = DEAD;
        self.dead += 1;
        for end in [h, t] {
            let degree = &mut self.degrees[end as usize];
            *degree -= 1;
            if *degree == 0 {
                self.isolated += 1;
            }
        }
        true
    }

    /// The live edge `h -rel-> t`, found from `h`'s out-edges.
    fn edge(&self, h: u32, rel: u32, t: u32) -> Option<petgraph::graph::EdgeIndex<u32>> {
        if h as usize >= self.names.len() || t as usize >= self.names.len() {
            return None;
        }
        self.graph
            .edges_connecting(NodeIndex::new(h as usize), NodeIndex::new(t as usize))
            .find(|e| *e.weight() == rel)
            .map(|e| e.id())
    }

    /// Rebuilds the edges without the tombstones once they are at least [`COMPACT_AFTER`] and
    /// an eighth of all edges. Edges are added back in index (= insertion) order, so every
    /// adjacency list keeps its order. O(nodes + edges), amortised over the removals.
    fn compact_if_due(&mut self) {
        if self.dead < COMPACT_AFTER || self.dead * 8 < self.graph.edge_count() {
            return;
        }
        let live = self.graph.edge_count() - self.dead;
        let mut graph = DiGraph::with_capacity(self.graph.node_count(), live);
        for _ in 0..self.graph.node_count() {
            graph.add_node(());
        }
        for e in self.graph.edge_references() {
            if *e.weight() != DEAD {
                graph.add_edge(e.source(), e.target(), *e.weight());
            }
        }
        self.graph = graph;
        self.dead = 0;
    }

    /// Mirrors what a store applied: removals, then new names and triples. New ids must
    /// continue the graph's own numbering.
    ///
    /// # Errors
    /// `Storage` when the ids do not line up or a removed triple is not in the graph (the
    /// store and the mirror disagree).
    pub fn apply(&mut self, change: &Change) -> Result<(), KgError> {
        for &(h, rel, t) in &change.removed {
            if !self.unlink(h, rel, t) {
                return Err(KgError::Storage(format!(
                    "removed triple ({h}, {rel}, {t}) is not in the graph"
                )));
            }
        }
        for (id, name) in &change.new_entities {
            if *id as usize != self.names.len() {
                return Err(KgError::Storage(format!(
                    "entity id {id} out of sequence (expected {})",
                    self.names.len()
                )));
            }
            self.graph.add_node(());
            self.degrees.push(0);
            self.isolated += 1;
            self.index.insert(name.clone(), *id);
            self.names.push(name.clone());
        }
        for (id, name) in &change.new_relations {
            if *id as usize != self.relations.len() {
                return Err(KgError::Storage(format!(
                    "relation id {id} out of sequence (expected {})",
                    self.relations.len()
                )));
            }
            self.relation_index.insert(name.clone(), *id);
            self.relations.push(name.clone());
        }
        let (n, r) = (self.names.len() as u32, self.relations.len() as u32);
        for &(h, rel, t) in &change.new_triples {
            if h >= n || t >= n || rel >= r {
                return Err(KgError::Storage(format!(
                    "triple ({h}, {rel}, {t}) refers to an unknown id"
                )));
            }
            self.link(h, rel, t);
        }
        self.compact_if_due();
        Ok(())
    }

    /// What inserting `triples` would change: [`Graph::plan_edit`] with no removal.
    pub fn plan(&self, triples: &[Triple]) -> Change {
        self.plan_edit(&[], &[], triples)
    }

    /// What one batch would change, without changing anything: the `remove` triples and
    /// every edge touching a `clear` entity first (a triple the graph does not hold, or an
    /// entity it does not know, is counted in `absent`; entities stay, an entity left without
    /// edges has none to list), then `insert`: existing names keep their ids, new ones
    /// continue the numbering in order of first appearance, and triples already present (or
    /// repeated in the batch) are left out. The store persists the plan, then
    /// [`Graph::apply`] mirrors it, so lookups never touch the disk.
    ///
    /// # Complexity
    /// O(triples x out-degree of their heads + degrees of the cleared entities).
    pub fn plan_edit<'a>(
        &self,
        remove: &[Triple],
        clear: &[String],
        insert: &'a [Triple],
    ) -> Change {
        let mut change = Change::default();
        let mut removed: HashSet<(u32, u32, u32)> = HashSet::new();
        for name in clear {
            let Some(id) = self.entity_id(name) else {
                change.absent += 1;
                continue;
            };
            for (other, rel, direction) in self.edges_of(id, Direction::Both, None) {
                let triple = match direction {
                    Direction::In => (other, rel, id),
                    _ => (id, rel, other),
                };
                if removed.insert(triple) {
                    change.removed.push(triple);
                }
            }
        }
        for triple in remove {
            let ids = (
                self.entity_id(&triple.head),
                self.relation_id(&triple.relation),
                self.entity_id(&triple.tail),
            );
            match ids {
                (Some(h), Some(rel), Some(t)) if self.edge(h, rel, t).is_some() => {
                    // A repeat, or an edge of a cleared entity: removed once.
                    if removed.insert((h, rel, t)) {
                        change.removed.push((h, rel, t));
                    }
                }
                _ => change.absent += 1,
            }
        }
        let mut fresh_entities: HashMap<&'a str, u32> = HashMap::new();
        let mut fresh_relations: HashMap<&'a str, u32> = HashMap::new();
        let mut seen: HashSet<(u32, u32, u32)> = HashSet::new();
        for triple in insert {
            let h = intern(
                &self.index,
                self.names.len(),
                &mut fresh_entities,
                &triple.head,
                &mut change.new_entities,
            );
            let t = intern(
                &self.index,
                self.names.len(),
                &mut fresh_entities,
                &triple.tail,
                &mut change.new_entities,
            );
            let rel = intern(
                &self.relation_index,
                self.relations.len(),
                &mut fresh_relations,
                &triple.relation,
                &mut change.new_relations,
            );
            if !seen.insert((h, rel, t)) {
                continue;
            }
            // A triple this batch removes is added back after the removal.
            let known = self.edge(h, rel, t).is_some() && !removed.contains(&(h, rel, t));
            if !known {
                change.new_triples.push((h, rel, t));
            }
        }
        change
    }

    /// Inserts triples directly (no store): plans, then applies.
    pub fn insert(&mut self, triples: &[Triple]) -> Change {
        self.edit(&[], &[], triples)
    }

    /// Removes triples and clears entities, then inserts, directly (no store).
    pub fn edit(&mut self, remove: &[Triple], clear: &[String], insert: &[Triple]) -> Change {
        let change = self.plan_edit(remove, clear, insert);
        // A plan made from this graph always lines up with it.
        let _ = self.apply(&change);
        change
    }

    pub fn entity_id(&self, name: &str) -> Option<u32> {
        self.index.get(name).copied()
    }

    pub fn entity_name(&self, id: u32) -> Option<&str> {
        self.names.get(id as usize).map(String::as_str)
    }

    pub fn relation_id(&self, name: &str) -> Option<u32> {
        self.relation_index.get(name).copied()
    }

    /// Every entity ever named, including those whose triples were all removed (their ids
    /// stay: the store and trained embeddings index by them).
    pub fn entity_count(&self) -> usize {
        self.names.len()
    }

    /// Entities with no edge left: named, but listed by no query (see [`Graph::has_edges`]).
    pub fn isolated_count(&self) -> usize {
        self.isolated
    }

    /// Whether `id` is still in the graph: it touches at least one triple. An entity whose
    /// triples were all removed (a discontinued brand, an old colour) keeps its id and name
    /// but is no answer to a similarity or link prediction.
    pub fn has_edges(&self, id: u32) -> bool {
        self.degree(id) > 0
    }

    pub fn relation_count(&self) -> usize {
        self.relations.len()
    }

    pub fn triple_count(&self) -> usize {
        self.graph.edge_count() - self.dead
    }

    /// Edges touching `id`, both directions.
    pub fn degree(&self, id: u32) -> usize {
        self.degrees.get(id as usize).map_or(0, |&d| d as usize)
    }

    /// A node the path search does not expand (more than [`HUB_DEGREE`] edges).
    fn is_hub(&self, id: u32) -> bool {
        self.degree(id) > HUB_DEGREE
    }

    /// Entities joined to `id` by `relation`: tails of `(id, relation, ?)` for `Out`, heads of
    /// `(?, relation, id)` for `In`, both for `Both`. O(degree).
    pub fn linked(&self, id: u32, relation: u32, direction: Direction) -> Vec<u32> {
        if id as usize >= self.graph.node_count() {
            return Vec::new();
        }
        self.edges_of(id, direction, Some(relation))
            .map(|(other, _, _)| other)
            .collect()
    }

    /// Edges of entity `id` in `direction` (both: outgoing first), optionally of one relation,
    /// as (the entity at the other end, relation, the direction walked). `id` must be in range.
    fn edges_of(
        &self,
        id: u32,
        direction: Direction,
        relation: Option<u32>,
    ) -> impl Iterator<Item = (u32, u32, Direction)> + '_ {
        let node = NodeIndex::new(id as usize);
        let outgoing = matches!(direction, Direction::Out | Direction::Both).then(|| {
            self.graph
                .edges_directed(node, Outgoing)
                .map(|e| (e.target().index() as u32, *e.weight(), Direction::Out))
        });
        let incoming = matches!(direction, Direction::In | Direction::Both).then(|| {
            self.graph
                .edges_directed(node, Incoming)
                .map(|e| (e.source().index() as u32, *e.weight(), Direction::In))
        });
        outgoing
            .into_iter()
            .flatten()
            .chain(incoming.into_iter().flatten())
            .filter(move |&(_, r, _)| r != DEAD && relation.is_none_or(|want| want == r))
    }

    /// What a store would hold for this graph: every name (with its id as position) and the
    /// live triples in insertion order, the order a replay of the store gives.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            entities: self.names.clone(),
            relations: self.relations.clone(),
            triples: self.triples().collect(),
        }
    }

    /// Every triple as ids, for training and export.
    pub fn triples(&self) -> impl Iterator<Item = (u32, u32, u32)> + '_ {
        self.graph
            .edge_references()
            .filter(|e| *e.weight() != DEAD)
            .map(|e| {
                (
                    e.source().index() as u32,
                    *e.weight(),
                    e.target().index() as u32,
                )
            })
    }

    /// Edges of one entity.
    ///
    /// # Errors
    /// `NotFound` for an unknown entity or relation; `InvalidInput` for a limit outside 1..=10,000.
    ///
    /// # Complexity
    /// O(degree of the entity).
    pub fn neighbors(&self, query: &NeighborQuery) -> Result<NeighborsFound, KgError> {
        if query.limit == 0 || query.limit > 10_000 {
            return Err(KgError::InvalidInput(format!(
                "limit must be 1..=10000, got {}",
                query.limit
            )));
        }
        let id = self
            .entity_id(&query.entity)
            .ok_or_else(|| KgError::NotFound(format!("unknown entity {:?}", query.entity)))?;
        let relation = match &query.relation {
            Some(name) => Some(
                self.relation_id(name)
                    .ok_or_else(|| KgError::NotFound(format!("unknown relation {name:?}")))?,
            ),
            None => None,
        };
        let mut found = NeighborsFound::default();
        for (other, relation, direction) in self.edges_of(id, query.direction, relation) {
            if let Some(prefix) = &query.prefix
                && !self.names[other as usize].starts_with(prefix.as_str())
            {
                continue;
            }
            found.total += 1;
            if found.neighbors.len() < query.limit {
                found.neighbors.push(Neighbor {
                    entity: self.names[other as usize].clone(),
                    relation: self.relations[relation as usize].clone(),
                    direction,
                });
            }
        }
        Ok(found)
    }

    /// Shortest relation chains from any source to each target, walking edges both ways.
    ///
    /// A breadth-first search from all sources at once, level by level up to `max_hops`, that
    /// keeps up to `limit` ways into each node at its shortest distance; paths are read back from
    /// each reached target. Every returned path has the minimal length for its target.
    ///
    /// Bounded on graphs with hubs: a node with more than [`HUB_DEGREE`] edges is not expanded;
    /// instead each target's own (short) edge list is checked for a direct edge to it, so
    /// "item -category-> C <-category- target" is still found without touching C's 100k items.
    /// The search also stops after [`PATH_NODE_BUDGET`] nodes. Either sets `truncated`.
    ///
    /// # Errors
    /// `InvalidInput` for hops outside 1..=4, limit outside 1..=1,000, no sources or targets,
    /// more than 256 sources or 1,000 targets; `NotFound` when no source is in the graph.
    ///
    /// # Complexity
    /// O(min(budget, edges within `max_hops`) + hubs reached x targets x target degree).
    pub fn paths(&self, query: &PathQuery) -> Result<PathsFound, KgError> {
        self.search(query, LastHop::Cheaper)
    }

    fn search(&self, query: &PathQuery, last_hop: LastHop) -> Result<PathsFound, KgError> {
        if query.max_hops == 0 || query.max_hops > MAX_HOPS {
            return Err(KgError::InvalidInput(format!(
                "max_hops must be 1..={MAX_HOPS}, got {}",
                query.max_hops
            )));
        }
        if query.limit == 0 || query.limit > 1_000 {
            return Err(KgError::InvalidInput(format!(
                "limit must be 1..=1000, got {}",
                query.limit
            )));
        }
        if query.sources.is_empty() || query.sources.len() > 256 {
            return Err(KgError::InvalidInput(format!(
                "sources must name 1..=256 entities, got {}",
                query.sources.len()
            )));
        }
        if query.targets.is_empty() || query.targets.len() > 1_000 {
            return Err(KgError::InvalidInput(format!(
                "targets must name 1..=1000 entities, got {}",
                query.targets.len()
            )));
        }
        let allowed: Option<HashSet<u32>> = if query.relations.is_empty() {
            None
        } else {
            Some(
                query
                    .relations
                    .iter()
                    .filter_map(|r| self.relation_id(r))
                    .collect(),
            )
        };
        let allows = |rel: u32| rel != DEAD && allowed.as_ref().is_none_or(|a| a.contains(&rel));
        let mut found = PathsFound::default();
        // Each name's id, noting as it goes the names the graph does not hold.
        let mut resolve = |name: &String| {
            let id = self.entity_id(name);
            if !id.is_some_and(|id| self.has_edges(id)) {
                found.unknown.push(name.clone());
            }
            id
        };
        let sources: Vec<u32> = query.sources.iter().filter_map(&mut resolve).collect();
        if sources.is_empty() {
            return Err(KgError::NotFound(
                "none of the sources is in the graph".into(),
            ));
        }
        let targets: HashSet<u32> = query
            .targets
            .iter()
            .filter_map(&mut resolve)
            .filter(|t| !sources.contains(t))
            .collect();
        if targets.is_empty() {
            return Ok(found);
        }

        let mut depth: HashMap<u32, u32> = HashMap::new();
        let mut preds: HashMap<u32, Vec<Pred>> = HashMap::new();
        for &s in &sources {
            depth.insert(s, 0);
        }
        let mut frontier: Vec<u32> = depth.keys().copied().collect();
        frontier.sort_unstable();
        let mut reached = 0usize;
        'levels: for d in 1..=query.max_hops {
            let last = d == query.max_hops;
            if last {
                let from_targets: usize = targets.iter().map(|&t| self.degree(t)).sum();
                let backward = match last_hop {
                    LastHop::Forward => false,
                    LastHop::Backward => true,
                    // A hub costs the forward walk the targets' edges anyway.
                    LastHop::Cheaper => frontier
                        .iter()
                        .map(|&u| {
                            if self.is_hub(u) {
                                from_targets
                            } else {
                                self.degree(u)
                            }
                        })
                        .sum::<usize>()
                        .gt(&from_targets),
                };
                if backward {
                    let hits = self.last_hop_from_targets(&frontier, &targets, &allows);
                    found.truncated |= frontier.iter().any(|&u| self.is_hub(u));
                    for (t, pred) in hits {
                        record(&mut depth, &mut preds, t, d, pred, query.limit);
                    }
                    break;
                }
            }
            let mut next = Vec::new();
            for &u in &frontier {
                let node = NodeIndex::new(u as usize);
                if self.is_hub(u) {
                    found.truncated = true;
                    // Only direct edges from the hub to a target; walk them from the target side.
                    for &t in &targets {
                        let tn = NodeIndex::new(t as usize);
                        for (edge_dir, pg) in
                            [(Direction::In, Outgoing), (Direction::Out, Incoming)]
                        {
                            for edge in self.graph.edges_directed(tn, pg) {
                                let other = if pg == Outgoing {
                                    edge.target()
                                } else {
                                    edge.source()
                                };
                                if other == node && allows(*edge.weight()) {
                                    // Edge t -> hub walked hub -> t is IN; hub -> t is OUT.
                                    if record(
                                        &mut depth,
                                        &mut preds,
                                        t,
                                        d,
                                        Pred {
                                            prev: u,
                                            rel: *edge.weight(),
                                            dir: edge_dir,
                                        },
                                        query.limit,
                                    ) {
                                        reached += 1;
                                    }
                                }
                            }
                        }
                    }
                    continue;
                }
                for (dir, pg) in [(Direction::Out, Outgoing), (Direction::In, Incoming)] {
                    for edge in self.graph.edges_directed(node, pg) {
                        if !allows(*edge.weight()) {
                            continue;
                        }
                        let v = if pg == Outgoing {
                            edge.target()
                        } else {
                            edge.source()
                        }
                        .index() as u32;
                        // On the last hop only the targets matter: nothing is expanded from
                        // there, and a path is only read back from a target.
                        if last && !targets.contains(&v) {
                            continue;
                        }
                        if record(
                            &mut depth,
                            &mut preds,
                            v,
                            d,
                            Pred {
                                prev: u,
                                rel: *edge.weight(),
                                dir,
                            },
                            query.limit,
                        ) {
                            next.push(v);
                            if targets.contains(&v) {
                                reached += 1;
                            }
                            if depth.len() > PATH_NODE_BUDGET {
                                found.truncated = true;
                                break 'levels;
                            }
                        }
                    }
                }
            }
            if reached >= targets.len() {
                break;
            }
            frontier = next;
        }

        let mut ordered: Vec<u32> = targets
            .into_iter()
            .filter(|t| preds.contains_key(t))
            .collect();
        ordered.sort_by_key(|t| (depth.get(t).copied().unwrap_or(u32::MAX), *t));
        for t in ordered {
            let mut paths = Vec::new();
            let mut trail = Vec::new();
            self.walk_back(t, &preds, &depth, &mut trail, &mut paths, query.limit);
            found.paths.extend(paths);
        }
        Ok(found)
    }

    /// The last hop walked from the targets' side: every edge between a target and a node of
    /// `frontier`, as the ways into that target, in the order the forward walk records them
    /// (by the frontier node's place; then, for an ordinary node, its out-edges before its
    /// in-edges and for a hub the reverse, as `search` scans each; then edge list order, which
    /// petgraph keeps alike at both ends of an edge). It reads the targets' few edges instead
    /// of every edge of the frontier (a brand with a thousand items, for each of them); the
    /// `last_hop_directions_agree` test holds the two walks to the same answers.
    fn last_hop_from_targets(
        &self,
        frontier: &[u32],
        targets: &HashSet<u32>,
        allows: &dyn Fn(u32) -> bool,
    ) -> Vec<(u32, Pred)> {
        let at: HashMap<u32, usize> = frontier.iter().enumerate().map(|(i, &u)| (u, i)).collect();
        let mut hits: Vec<((usize, u8, usize), u32, Pred)> = Vec::new();
        for &t in targets {
            let tn = NodeIndex::new(t as usize);
            let mut seq = 0;
            for pg in [Outgoing, Incoming] {
                for edge in self.graph.edges_directed(tn, pg) {
                    seq += 1;
                    // t -> u is walked from u against the edge (In); u -> t along it (Out).
                    let (other, dir) = if pg == Outgoing {
                        (edge.target(), Direction::In)
                    } else {
                        (edge.source(), Direction::Out)
                    };
                    let other = other.index() as u32;
                    let Some(&place) = at.get(&other) else {
                        continue;
                    };
                    if !allows(*edge.weight()) {
                        continue;
                    }
                    let hub = self.is_hub(other);
                    let phase = u8::from((dir == Direction::In) != hub);
                    let pred = Pred {
                        prev: other,
                        rel: *edge.weight(),
                        dir,
                    };
                    hits.push(((place, phase, seq), t, pred));
                }
            }
        }
        hits.sort_by_key(|&(key, _, _)| key);
        hits.into_iter().map(|(_, t, pred)| (t, pred)).collect()
    }

    /// Reads paths back from `node` to a source through `preds`, up to `limit` of them.
    fn walk_back(
        &self,
        node: u32,
        preds: &HashMap<u32, Vec<Pred>>,
        depth: &HashMap<u32, u32>,
        trail: &mut Vec<(u32, Pred)>,
        out: &mut Vec<Path>,
        limit: usize,
    ) {
        if out.len() >= limit {
            return;
        }
        if depth.get(&node) == Some(&0) {
            let target = trail.first().map(|(n, _)| *n).unwrap_or(node);
            let steps = trail
                .iter()
                .rev()
                .map(|(arrive, pred)| PathStep {
                    relation: self.relations[pred.rel as usize].clone(),
                    direction: pred.dir,
                    entity: self.names[*arrive as usize].clone(),
                })
                .collect();
            out.push(Path {
                source: self.names[node as usize].clone(),
                target: self.names[target as usize].clone(),
                steps,
            });
            return;
        }
        for pred in preds.get(&node).into_iter().flatten() {
            trail.push((node, *pred));
            self.walk_back(pred.prev, preds, depth, trail, out, limit);
            trail.pop();
        }
    }
}

/// The id of `name`: known, already given in this batch, or the next free one.
fn intern<'a>(
    known: &HashMap<String, u32>,
    base: usize,
    fresh: &mut HashMap<&'a str, u32>,
    name: &'a str,
    out: &mut Vec<(u32, String)>,
) -> u32 {
    if let Some(&id) = known.get(name) {
        return id;
    }
    let next = (base + fresh.len()) as u32;
    *fresh.entry(name).or_insert_with(|| {
        out.push((next, name.to_string()));
        next
    })
}

/// Notes a way into `v` at distance `d`. Returns true when `v` is reached for the first time.
fn record(
    depth: &mut HashMap<u32, u32>,
    preds: &mut HashMap<u32, Vec<Pred>>,
    v: u32,
    d: u32,
    pred: Pred,
    limit: usize,
) -> bool {
    match depth.get(&v) {
        None => {
            depth.insert(v, d);
            preds.insert(v, vec![pred]);
            true
        }
        Some(&dv) if dv == d => {
            let ways = preds.entry(v).or_default();
            if ways.len() < limit {
                ways.push(pred);
            }
            false
        }
        Some(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(h: &str, r: &str, tl: &str) -> Triple {
        Triple::new(h, r, tl).unwrap()
    }

    fn shop() -> Graph {
        let mut g = Graph::default();
        g.insert(&[
            t("item:tent", "brand", "brand:acme"),
            t("item:stove", "brand", "brand:acme"),
            t("item:tent", "category", "cat:tents"),
            t("cat:tents", "parent", "cat:camping"),
            t("cat:stoves", "parent", "cat:camping"),
            t("item:stove", "category", "cat:stoves"),
            t("item:pegs", "accessory_of", "item:tent"),
        ]);
        g
    }

    fn query(sources: &[&str], targets: &[&str], hops: u32, limit: usize) -> PathQuery {
        PathQuery {
            sources: sources.iter().map(|s| s.to_string()).collect(),
            targets: targets.iter().map(|s| s.to_string()).collect(),
            max_hops: hops,
            limit,
            relations: vec![],
        }
    }

    #[test]
    fn inserting_twice_changes_nothing() {
        let mut g = shop();
        let before = (g.entity_count(), g.triple_count());
        let again = g.insert(&[t("item:tent", "brand", "brand:acme")]);
        assert!(again.new_triples.is_empty() && again.new_entities.is_empty());
        assert_eq!((g.entity_count(), g.triple_count()), before);
    }

    #[test]
    fn a_removed_triple_is_gone_from_neighbours_paths_and_degrees() {
        let mut g = shop();
        let before = g.entity_count();
        let change = g.edit(
            &[
                t("item:tent", "brand", "brand:acme"),
                t("item:tent", "brand", "brand:acme"),
                t("item:tent", "brand", "brand:nobody"),
                t("item:ghost", "brand", "brand:acme"),
            ],
            &[],
            &[],
        );
        assert_eq!(
            change.removed.len(),
            1,
            "a repeat in the batch removes once"
        );
        assert_eq!(change.absent, 2, "an unknown entity or edge is absent");
        assert_eq!(g.triple_count(), 6);
        assert_eq!(g.entity_count(), before, "entities keep their ids");
        let acme = g.entity_id("brand:acme").unwrap();
        assert_eq!(g.degree(acme), 1);
        let around = |g: &Graph, entity: &str| -> Vec<String> {
            let query = NeighborQuery {
                entity: entity.into(),
                relation: None,
                direction: Direction::Both,
                limit: 100,
                prefix: None,
            };
            g.neighbors(&query)
                .unwrap()
                .neighbors
                .into_iter()
                .map(|n| n.entity)
                .collect()
        };
        assert_eq!(around(&g, "brand:acme"), vec!["item:stove"]);
        assert_eq!(around(&g, "item:tent"), vec!["cat:tents", "item:pegs"]);
        let found = g
            .paths(&query(&["item:tent"], &["item:stove"], 4, 5))
            .unwrap();
        assert_eq!(
            found.paths[0].steps.len(),
            4,
            "without the brand edge only the category route is left"
        );
        // Removing again finds nothing; inserting brings the edge back.
        assert_eq!(
            g.edit(&[t("item:tent", "brand", "brand:acme")], &[], &[])
                .absent,
            1
        );
        g.insert(&[t("item:tent", "brand", "brand:acme")]);
        assert_eq!(around(&g, "brand:acme").len(), 2);
    }

    #[test]
    fn clearing_an_entity_removes_every_edge_it_touches() {
        let mut g = shop();
        let change = g.edit(
            &[t("item:tent", "brand", "brand:acme")],
            &["item:tent".into(), "item:ghost".into(), "item:tent".into()],
            &[],
        );
        // tent -brand-> acme, tent -category-> tents, pegs -accessory_of-> tent; the named
        // triple and the repeated entity count once; the unknown entity is absent.
        assert_eq!(change.removed.len(), 3);
        assert_eq!(change.absent, 1);
        let tent = g.entity_id("item:tent").unwrap();
        assert_eq!(g.degree(tent), 0);
        assert_eq!(g.triple_count(), 4);
        let query = NeighborQuery {
            entity: "item:tent".into(),
            relation: None,
            direction: Direction::Both,
            limit: 10,
            prefix: None,
        };
        assert_eq!(g.neighbors(&query).unwrap().total, 0);
        let pegs = g.entity_id("item:pegs").unwrap();
        assert_eq!(g.degree(pegs), 0, "the edge into the tent went too");
        let stove = NeighborQuery {
            entity: "brand:acme".into(),
            ..query
        };
        let left: Vec<String> = g
            .neighbors(&stove)
            .unwrap()
            .neighbors
            .into_iter()
            .map(|n| n.entity)
            .collect();
        assert_eq!(left, ["item:stove"], "other entities keep their edges");
        assert!(!g.has_edges(tent) && !g.has_edges(pegs));
        assert_eq!(g.isolated_count(), 2, "the tent and its pegs; names stay");
        assert_eq!(g.entity_count(), 7);

        // A restart (a snapshot of what is left) counts the same entities out.
        let rebuilt = Graph::from_snapshot(g.snapshot()).unwrap();
        assert_eq!(rebuilt.isolated_count(), 2);

        // Back in the graph with a new edge; a self-loop counts its entity once.
        g.insert(&[
            t("item:pegs", "accessory_of", "item:tent"),
            t("item:loop", "same_as", "item:loop"),
        ]);
        assert_eq!(g.isolated_count(), 0);
        g.edit(&[], &["item:loop".into()], &[]);
        assert_eq!(g.isolated_count(), 1);
        assert!(!g.has_edges(g.entity_id("item:loop").unwrap()));
    }

    #[test]
    fn a_batch_that_removes_and_adds_a_triple_keeps_it() {
        let mut g = shop();
        let same = t("item:tent", "brand", "brand:acme");
        let change = g.edit(
            std::slice::from_ref(&same),
            &[],
            &[same.clone(), t("item:tent", "color", "color:green")],
        );
        assert_eq!(change.removed.len(), 1);
        assert_eq!(
            change.new_triples.len(),
            2,
            "removed first, then added back"
        );
        assert_eq!(g.triple_count(), 8);
        assert!(g.plan(&[same]).new_triples.is_empty(), "the edge is there");
    }

    #[test]
    fn after_removals_neighbours_are_listed_as_a_rebuild_lists_them() {
        // 60 items: the removals stay tombstones. 12,000: they pass the compaction threshold.
        for (items, compacted) in [(60, false), (12_000, true)] {
            removals_keep_the_rebuilt_order(items, compacted);
        }
    }

    /// A hub with many edges, removals at its start, middle and end and of the last edge,
    /// and a removed triple added back: every entity must list its neighbours in the order a
    /// restart gives (the survivors replayed in insertion order), or a limit would cut other
    /// edges after a restart.
    fn removals_keep_the_rebuilt_order(items: usize, compacted: bool) {
        let mut triples = Vec::new();
        for i in 0..items {
            triples.push(t(&format!("item:{i}"), "category", "cat:hub"));
            triples.push(t(
                &format!("item:{i}"),
                "brand",
                &format!("brand:{}", i % 7),
            ));
            if i % 3 == 0 {
                triples.push(t(&format!("item:{i}"), "with", &format!("item:{}", i + 1)));
            }
        }
        let mut g = Graph::default();
        g.insert(&triples);
        let last = triples.last().unwrap().clone();
        let remove: Vec<Triple> = triples
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 5 == 0 || *i == 1)
            .map(|(_, t)| t.clone())
            .chain([last])
            .collect();
        g.edit(&remove, &[], &[]);
        assert_eq!(g.dead == 0, compacted, "{items} items");
        // Added back: it goes to the end of the insertion order.
        let back = remove[1].clone();
        g.insert(std::slice::from_ref(&back));
        let survivors: Vec<(u32, u32, u32)> = triples
            .iter()
            .filter(|t| !remove.contains(t))
            .chain([&back])
            .map(|t| {
                (
                    g.entity_id(&t.head).unwrap(),
                    g.relation_id(&t.relation).unwrap(),
                    g.entity_id(&t.tail).unwrap(),
                )
            })
            .collect();
        let rebuilt = Graph::from_snapshot(Snapshot {
            entities: g.names.clone(),
            relations: g.relations.clone(),
            triples: survivors,
        })
        .unwrap();
        assert_eq!(g.triple_count(), rebuilt.triple_count());
        let mut all: Vec<_> = g.triples().collect();
        let mut expected: Vec<_> = rebuilt.triples().collect();
        all.sort_unstable();
        expected.sort_unstable();
        assert_eq!(all, expected, "triples() lists the live edges only");
        for name in &g.names {
            let query = NeighborQuery {
                entity: name.clone(),
                relation: None,
                direction: Direction::Both,
                limit: 10_000,
                prefix: None,
            };
            assert_eq!(
                g.neighbors(&query).unwrap().neighbors,
                rebuilt.neighbors(&query).unwrap().neighbors,
                "{name}"
            );
            let id = g.entity_id(name).unwrap();
            assert_eq!(g.degree(id), rebuilt.degree(id), "{name}");
        }
        // Paths never walk a removed edge: item 0 lost its category edge.
        let found = g.paths(&query(&["item:0"], &["item:2"], 2, 5)).unwrap();
        assert!(found.paths.is_empty(), "{:?}", found.paths);
        let found = g.paths(&query(&["item:3"], &["item:6"], 2, 5)).unwrap();
        assert_eq!(found.paths.len(), 1, "both keep the hub edge");
    }

    #[test]
    fn shortest_path_goes_through_the_shared_brand() {
        let g = shop();
        let found = g
            .paths(&query(&["item:tent"], &["item:stove"], 4, 5))
            .unwrap();
        assert!(!found.paths.is_empty());
        let p = &found.paths[0];
        assert_eq!(
            p.steps.len(),
            2,
            "tent -brand-> acme <-brand- stove is the only 2-hop path"
        );
        assert_eq!(p.steps[0].relation, "brand");
        assert_eq!(p.steps[0].direction, Direction::Out);
        assert_eq!(p.steps[1].direction, Direction::In);
        assert_eq!(p.steps[1].entity, "item:stove");
        assert!(
            found.paths.iter().all(|p| p.steps.len() == 2),
            "only shortest paths are returned"
        );
    }

    #[test]
    fn relation_filter_forces_the_longer_route() {
        let g = shop();
        let mut q = query(&["item:tent"], &["item:stove"], 4, 5);
        q.relations = vec!["category".into(), "parent".into()];
        let found = g.paths(&q).unwrap();
        assert_eq!(
            found.paths[0].steps.len(),
            4,
            "tent->tents->camping<-stoves<-stove"
        );
    }

    #[test]
    fn hop_limit_and_bad_arguments() {
        let g = shop();
        let found = g
            .paths(&query(&["item:pegs"], &["item:stove"], 2, 1))
            .unwrap();
        assert!(
            found.paths.is_empty(),
            "pegs->tent->acme<-stove needs 3 hops"
        );
        assert!(matches!(
            g.paths(&query(&["item:tent"], &["item:stove"], 5, 1)),
            Err(KgError::InvalidInput(_))
        ));
        assert!(matches!(
            g.paths(&query(&["item:tent"], &["item:stove"], 2, 0)),
            Err(KgError::InvalidInput(_))
        ));
        assert!(matches!(
            g.paths(&query(&["nope"], &["item:stove"], 2, 1)),
            Err(KgError::NotFound(_))
        ));
    }

    #[test]
    fn neighbors_respect_direction_relation_and_limit() {
        let g = shop();
        let all = g
            .neighbors(&NeighborQuery {
                entity: "item:tent".into(),
                relation: None,
                direction: Direction::Both,
                limit: 10,
                prefix: None,
            })
            .unwrap();
        assert_eq!(all.total, 3, "brand, category out; accessory_of in");
        let inbound = g
            .neighbors(&NeighborQuery {
                entity: "item:tent".into(),
                relation: None,
                direction: Direction::In,
                limit: 10,
                prefix: None,
            })
            .unwrap();
        assert_eq!(
            inbound.neighbors,
            vec![Neighbor {
                entity: "item:pegs".into(),
                relation: "accessory_of".into(),
                direction: Direction::In
            }]
        );
        let limited = g
            .neighbors(&NeighborQuery {
                entity: "brand:acme".into(),
                relation: Some("brand".into()),
                direction: Direction::In,
                limit: 1,
                prefix: None,
            })
            .unwrap();
        assert_eq!((limited.neighbors.len(), limited.total), (1, 2));
        assert!(matches!(
            g.neighbors(&NeighborQuery {
                entity: "ghost".into(),
                relation: None,
                direction: Direction::Both,
                limit: 1,
                prefix: None,
            }),
            Err(KgError::NotFound(_))
        ));
        // Only the items among the tent's neighbours, counted alone.
        let items = g
            .neighbors(&NeighborQuery {
                entity: "item:tent".into(),
                relation: None,
                direction: Direction::Both,
                limit: 10,
                prefix: Some("item:".into()),
            })
            .unwrap();
        assert_eq!(items.total, 1);
        assert_eq!(items.neighbors[0].entity, "item:pegs");
    }

    #[test]
    fn a_hub_is_not_expanded_but_direct_links_through_it_are_found() {
        let mut g = Graph::default();
        let mut triples: Vec<Triple> = (0..HUB_DEGREE + 500)
            .map(|i| t(&format!("item:{i}"), "category", "cat:huge"))
            .collect();
        triples.push(t("item:0", "brand", "brand:x"));
        g.insert(&triples);
        let found = g.paths(&query(&["item:0"], &["item:7"], 4, 1)).unwrap();
        assert!(found.truncated, "the hub was skipped");
        assert_eq!(found.paths.len(), 1);
        assert_eq!(found.paths[0].steps[0].entity, "cat:huge");
        assert_eq!(found.paths[0].steps[1].entity, "item:7");
        // A graph reloaded from the store counts the hub's edges too.
        let back = Graph::from_snapshot(Snapshot {
            entities: (0..g.entity_count() as u32)
                .map(|i| g.entity_name(i).unwrap().to_string())
                .collect(),
            relations: g.relations.clone(),
            triples: g.triples().collect(),
        })
        .unwrap();
        let hub = back.entity_id("cat:huge").unwrap();
        assert_eq!(back.degree(hub), HUB_DEGREE + 500);
        assert_eq!(back.degree(back.entity_id("item:0").unwrap()), 2);
        let again = back.paths(&query(&["item:0"], &["item:7"], 4, 1)).unwrap();
        assert!(again.truncated, "the reloaded graph skips the hub as well");
        assert_eq!(again.paths, found.paths);
    }

    #[test]
    fn snapshot_round_trip_keeps_the_graph() {
        let g = shop();
        let snapshot = Snapshot {
            entities: (0..g.entity_count() as u32)
                .map(|i| g.entity_name(i).unwrap().to_string())
                .collect(),
            relations: g.relations.clone(),
            triples: g.triples().collect(),
        };
        let back = Graph::from_snapshot(snapshot).unwrap();
        assert_eq!(back.triple_count(), g.triple_count());
        assert_eq!(
            back.paths(&query(&["item:tent"], &["item:stove"], 4, 1))
                .unwrap()
                .paths,
            g.paths(&query(&["item:tent"], &["item:stove"], 4, 1))
                .unwrap()
                .paths
        );
    }

    /// A xorshift draw below `n`, from `seed`: the random graphs of the tests below.
    fn draws(seed: u64) -> impl FnMut(usize) -> usize {
        let mut state = seed;
        move |n| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        }
    }

    /// The last hop taken from the targets' side finds exactly what the forward walk finds
    /// (the same paths in the same order, the same `truncated`) on random graphs with a hub,
    /// parallel edges of several relations, self-loops, both edge directions, relation filters
    /// and 1-3 hops.
    #[test]
    fn last_hop_directions_agree() {
        let mut next = draws(0x853c_49e6_748f_ea9b);
        let relations = ["r0", "r1", "r2", "r3"];
        let mut triples = Vec::new();
        for _ in 0..HUB_DEGREE + 300 {
            let n = format!("n{}", next(3000));
            let r = relations[next(2)];
            if next(2) == 0 {
                triples.push(t(&n, r, "hub"));
            } else {
                triples.push(t("hub", r, &n));
            }
        }
        for _ in 0..6000 {
            let (h, tl) = (format!("n{}", next(600)), format!("n{}", next(600)));
            triples.push(t(&h, relations[next(4)], &tl));
            if next(8) == 0 {
                // A parallel edge, same way or back.
                triples.push(t(&h, relations[next(4)], &tl));
                triples.push(t(&tl, relations[next(4)], &h));
            }
        }
        let mut g = Graph::default();
        g.insert(&triples);
        let mut compared = 0;
        for _ in 0..300 {
            let pick = |next: &mut dyn FnMut(usize) -> usize, n: usize| -> Vec<String> {
                (0..n)
                    .map(|_| {
                        let space = if next(4) == 0 { 3000 } else { 600 };
                        format!("n{}", next(space))
                    })
                    .collect()
            };
            let n = 1 + next(4);
            let sources = pick(&mut next, n);
            let n = 1 + next(60);
            let mut targets = pick(&mut next, n);
            if next(5) == 0 {
                targets.push("hub".into());
            }
            let q = PathQuery {
                sources,
                targets,
                max_hops: 1 + next(3) as u32,
                limit: 1 + next(3),
                relations: if next(3) == 0 {
                    vec![relations[next(4)].into(), relations[next(4)].into()]
                } else {
                    vec![]
                },
            };
            let (Ok(forward), Ok(backward)) = (
                g.search(&q, LastHop::Forward),
                g.search(&q, LastHop::Backward),
            ) else {
                continue;
            };
            assert_eq!(forward.paths, backward.paths, "{q:?}");
            assert_eq!(forward.truncated, backward.truncated, "{q:?}");
            compared += usize::from(!forward.paths.is_empty());
        }
        assert!(compared > 100, "only {compared} queries found paths");
    }

    /// A path as (source, steps as (relation, walked head to tail, entity arrived at)).
    type Walk = (String, Vec<(String, bool, String)>);

    /// Every shortest path, by brute force over the live triples: breadth-first distances
    /// from the sources walking edges both ways (allowed relations only), then each walk back
    /// from `target` along edges that step one distance down, to a source.
    fn shortest_paths(
        triples: &[(String, String, String)],
        q: &PathQuery,
        target: &str,
    ) -> Vec<Walk> {
        let allowed = |r: &str| q.relations.is_empty() || q.relations.iter().any(|a| a == r);
        let mut dist: HashMap<&str, u32> = q.sources.iter().map(|s| (s.as_str(), 0)).collect();
        for d in 1..=q.max_hops {
            let mut reached = Vec::new();
            for (h, _, t) in triples.iter().filter(|(_, r, _)| allowed(r)) {
                for (from, to) in [(h, t), (t, h)] {
                    if dist.get(from.as_str()) == Some(&(d - 1)) && !dist.contains_key(to.as_str())
                    {
                        reached.push(to.as_str());
                    }
                }
            }
            for v in reached {
                dist.entry(v).or_insert(d);
            }
        }
        let mut found = Vec::new();
        if !dist.contains_key(target) {
            return found;
        }
        // (node, steps so far, walked back from the target)
        let mut stack = vec![(target, Vec::<(String, bool, String)>::new())];
        while let Some((node, steps)) = stack.pop() {
            let here = dist[node];
            if here == 0 {
                let mut steps = steps;
                steps.reverse();
                found.push((node.to_string(), steps));
                continue;
            }
            for (h, r, t) in triples.iter().filter(|(_, r, _)| allowed(r)) {
                // h -> t walked forward arrives at t from h; walked back arrives at h from t.
                for (prev, next, out) in [(h, t, true), (t, h, false)] {
                    if next == node && dist.get(prev.as_str()) == Some(&(here - 1)) {
                        let mut more = steps.clone();
                        more.push((r.clone(), out, node.to_string()));
                        stack.push((prev.as_str(), more));
                    }
                }
            }
        }
        found
    }

    /// `paths` against brute force on random small graphs (parallel edges both ways,
    /// self-loops, removed triples, relation filters, unknown names, 1-4 hops, limits that
    /// bite and that do not): for each target, paths only of the shortest length, each a real
    /// walk from a source; all of them when there are at most `limit`, else `limit` distinct
    /// ones; none for a target out of reach or among the sources.
    #[test]
    fn paths_are_the_shortest_ones_up_to_the_limit() {
        let mut next = draws(0x9e37_79b9_7f4a_7c15);
        let mut checked = 0;
        for round in 0..300 {
            let nodes = 4 + next(14);
            let name = |i: usize| format!("n{i}");
            let mut triples: Vec<(String, String, String)> = (0..next(3 * nodes))
                .map(|_| {
                    (
                        name(next(nodes)),
                        format!("r{}", next(3)),
                        name(next(nodes)),
                    )
                })
                .collect();
            let mut g = Graph::default();
            let all: Vec<Triple> = triples.iter().map(|(h, r, tl)| t(h, r, tl)).collect();
            g.insert(&all);
            // Some triples removed again (tombstones in the graph).
            let gone: Vec<Triple> = all.iter().filter(|_| next(5) == 0).cloned().collect();
            let plan = g.plan_edit(&gone, &[], &[]);
            g.apply(&plan).unwrap();
            triples.retain(|(h, r, tl)| !gone.contains(&t(h, r, tl)));
            triples.sort();
            triples.dedup();
            for _ in 0..10 {
                let pick = |next: &mut dyn FnMut(usize) -> usize| name(next(nodes + 2));
                let sources: Vec<String> = (0..1 + next(3)).map(|_| pick(&mut next)).collect();
                let targets: Vec<String> = (0..1 + next(4)).map(|_| pick(&mut next)).collect();
                let q = PathQuery {
                    sources,
                    targets,
                    max_hops: 1 + next(4) as u32,
                    limit: 1 + next(4),
                    relations: (0..next(3)).map(|_| format!("r{}", next(4))).collect(),
                };
                let Ok(found) = g.paths(&q) else {
                    continue;
                };
                assert!(!found.truncated, "round {round}: {q:?}");
                // Sources the graph holds (with a live edge); paths start only there.
                let live = |n: &String| triples.iter().any(|(h, _, tl)| h == n || tl == n);
                let mut q_live = q.clone();
                q_live.sources.retain(|s| live(s));
                let mut targets = q.targets.clone();
                targets.sort();
                targets.dedup();
                for target in &targets {
                    let mut got: Vec<Walk> = found
                        .paths
                        .iter()
                        .filter(|p| &p.target == target)
                        .map(|p| {
                            let steps = p
                                .steps
                                .iter()
                                .map(|s| {
                                    (
                                        s.relation.clone(),
                                        s.direction == Direction::Out,
                                        s.entity.clone(),
                                    )
                                })
                                .collect();
                            (p.source.clone(), steps)
                        })
                        .collect();
                    got.sort();
                    let before = got.len();
                    got.dedup();
                    assert_eq!(
                        got.len(),
                        before,
                        "round {round}: a path twice for {target}: {q:?}"
                    );
                    let mut all = if q_live.sources.contains(target) || !live(target) {
                        Vec::new()
                    } else {
                        shortest_paths(&triples, &q_live, target)
                    };
                    all.sort();
                    all.dedup();
                    if all.len() <= q.limit {
                        assert_eq!(
                            got, all,
                            "round {round}, target {target}: {q:?}\n{triples:?}"
                        );
                    } else {
                        assert_eq!(got.len(), q.limit, "round {round}, target {target}: {q:?}");
                        assert!(
                            got.iter().all(|p| all.contains(p)),
                            "round {round}, target {target}: {got:?} not among {all:?}"
                        );
                    }
                    checked += usize::from(!all.is_empty());
                }
            }
        }
        assert!(checked > 500, "only {checked} targets had paths");
    }
}
