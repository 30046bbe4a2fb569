//! The ranker's view of its two dependencies, over gRPC: the encoder (query vectors, cached
//! for a short time, and item vectors) and the knowledge graph (paths, and item facts).
//! Every call carries a deadline so a slow dependency cannot hold a `Rank` past it.
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use souk_proto::encoder::v1 as enc;
use souk_proto::encoder::v1::encoder_client::EncoderClient;
use souk_proto::kg::v1 as kg;
use souk_proto::kg::v1::knowledge_graph_client::KnowledgeGraphClient;
use souk_ranker_core::item::Fact;
use souk_ranker_core::rank::{EmbeddingSource, GraphPath, GraphSource, GraphStep, SourceError};
use tonic::transport::Channel;

fn failed(what: &str, status: &tonic::Status) -> SourceError {
    SourceError(format!("{what}: {:?} {}", status.code(), status.message()))
}

/// `call`'s answer, or "`what`: no answer within `limit`" when it takes longer.
async fn within<T>(
    limit: Duration,
    what: &str,
    call: impl std::future::Future<Output = T>,
) -> Result<T, SourceError> {
    tokio::time::timeout(limit, call)
        .await
        .map_err(|_| SourceError(format!("{what}: no answer within {limit:?}")))
}

/// Query vectors by query string, kept `ttl`; at most `capacity` entries.
struct QueryCache {
    entries: HashMap<String, (Instant, Vec<f32>)>,
    ttl: Duration,
    capacity: usize,
}

impl QueryCache {
    fn get(&self, query: &str) -> Option<Vec<f32>> {
        self.entries
            .get(query)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v.clone())
    }

    fn put(&mut self, query: String, vector: Vec<f32>) {
        if self.entries.len() >= self.capacity {
            let ttl = self.ttl;
            self.entries.retain(|_, (at, _)| at.elapsed() < ttl);
            if self.entries.len() >= self.capacity {
                self.entries.clear();
            }
        }
        self.entries.insert(query, (Instant::now(), vector));
    }
}

pub struct GrpcEncoder {
    client: EncoderClient<Channel>,
    /// Deadline of a query embedding inside `Rank`.
    query_timeout: Duration,
    cache: Mutex<QueryCache>,
    /// Set while the encoder serves another model than the one the catalog's vectors come
    /// from: its query vectors would be compared with vectors of another space, so queries
    /// are not embedded and `Rank` reports the dense signal missing.
    differs: AtomicBool,
    /// What the probe said of each model the encoder has answered with, by fingerprint.
    models: Mutex<Models>,
    /// Woken when an answer comes from another model than the last probe's: the ranker's
    /// watcher then checks it at once instead of at its next period.
    recheck: tokio::sync::Notify,
    /// `EmbedRequest.dimensions` of every request: vectors cut to this length (`None`: whole).
    dimensions: Option<u32>,
}

/// The models the encoder's answers came from, as [`GrpcEncoder::record_model`] learnt them.
#[derive(Default)]
struct Models {
    /// Fingerprint -> whether its vectors are comparable with the catalog's (its model's, or
    /// any while the catalog is empty). Forgotten when the catalog's model changes.
    comparable: HashMap<u64, bool>,
    /// The fingerprint of the last probe's answer.
    last_probed: u64,
}

impl Models {
    fn note(&mut self, model: u64, comparable: bool) {
        self.last_probed = model;
        if model != 0 {
            self.comparable.insert(model, comparable);
        }
    }
}

/// Why a query is not embedded while the encoder serves another model ([`GrpcEncoder::differs`]).
pub const OTHER_MODEL: &str = "the encoder serves another model than the one the catalog's vectors come from (`soukctl reembed` re-embeds the catalog)";

/// Why a query is not embedded when its answer came from a model not compared yet.
const UNCHECKED_MODEL: &str =
    "the encoder answered with a model not yet compared with the catalog's; it is being checked";

/// The encoder's answer for some texts.
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    /// The model that made them (`EmbedResponse.model_fingerprint`; 0: not said).
    pub model: u64,
}

impl GrpcEncoder {
    pub fn new(
        channel: Channel,
        query_timeout: Duration,
        cache_ttl: Duration,
        dimensions: Option<u32>,
    ) -> Self {
        Self {
            client: EncoderClient::new(channel).max_decoding_message_size(256 * 1024 * 1024),
            query_timeout,
            cache: Mutex::new(QueryCache {
                entries: HashMap::new(),
                ttl: cache_ttl,
                capacity: 10_000,
            }),
            differs: AtomicBool::new(false),
            models: Mutex::new(Models::default()),
            recheck: tokio::sync::Notify::new(),
            dimensions,
        }
    }

    /// Records what the probe found of `model`, the encoder's model now: whether its vectors
    /// are comparable with the catalog's. Queries are embedded or not from then on by it
    /// ([`Self::differs`]; by fingerprint in [`Self::admit`], where 0, an encoder that does
    /// not say, records nothing).
    pub fn record_model(&self, model: u64, comparable: bool) {
        self.differs.store(!comparable, Ordering::Relaxed);
        if let Ok(mut models) = self.models.lock() {
            models.note(model, comparable);
        }
    }

    /// The catalog's vectors now come from `model`: what was recorded of every other model is
    /// forgotten (it was said against the previous vectors). Whether the encoder differs is
    /// left to the next [`Self::record_model`].
    pub fn adopt_model(&self, model: u64) {
        if let Ok(mut models) = self.models.lock() {
            models.comparable.clear();
            models.note(model, true);
        }
    }

    /// Whether the vectors of `model` may be compared with the catalog's: the probe said so,
    /// or, for an encoder that does not say which model answered (0), none is flagged.
    /// Before the first probe every model passes (as before models were checked); later an
    /// unknown one does not, and the watcher is woken to check it.
    ///
    /// # Errors
    /// Why the vectors must not be used.
    fn admit(&self, model: u64) -> Result<(), SourceError> {
        if model == 0 {
            return if self.differs() {
                Err(SourceError(OTHER_MODEL.into()))
            } else {
                Ok(())
            };
        }
        let models = self
            .models
            .lock()
            .map_err(|_| SourceError("encoder state lock poisoned".into()))?;
        if model != models.last_probed {
            self.recheck.notify_one();
        }
        match models.comparable.get(&model) {
            Some(true) => Ok(()),
            Some(false) => Err(SourceError(OTHER_MODEL.into())),
            None if models.comparable.is_empty() => Ok(()),
            None => Err(SourceError(UNCHECKED_MODEL.into())),
        }
    }

    /// Waits until an answer came from another model than the last probe's.
    pub async fn recheck_wanted(&self) {
        self.recheck.notified().await;
    }

    pub fn differs(&self) -> bool {
        self.differs.load(Ordering::Relaxed)
    }

    /// Forgets every cached query vector (they are the previous model's).
    pub fn clear_cache(&self) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.entries.clear();
        }
    }

    /// The encoder's vector of [`crate::store::PROBE_TEXT`], which identifies its model, and
    /// the fingerprint its answer came with.
    ///
    /// # Errors
    /// When the encoder is unreachable, refuses, or runs past `timeout`.
    pub async fn probe(&self, timeout: Duration) -> Result<(Vec<f32>, u64), SourceError> {
        let mut embedded = self
            .embed_many(vec![crate::store::PROBE_TEXT.to_string()], timeout)
            .await?;
        let vector = embedded
            .vectors
            .pop()
            .ok_or_else(|| SourceError("encoder returned no embedding".into()))?;
        Ok((vector, embedded.model))
    }

    /// Embeds item texts (normalised, as documents: with the model's document prompt, if
    /// any), in requests of at most 64 texts.
    ///
    /// # Errors
    /// When the encoder is unreachable, refuses, runs past `timeout` per request, or its
    /// answers come from two models (it was replaced meanwhile).
    pub async fn embed_many(
        &self,
        texts: Vec<String>,
        timeout: Duration,
    ) -> Result<Embedded, SourceError> {
        let mut out = Vec::with_capacity(texts.len());
        let mut model = None;
        for chunk in texts.chunks(64) {
            let mut request = tonic::Request::new(enc::EmbedRequest {
                texts: chunk.to_vec(),
                truncate: Some(true),
                normalize: Some(true),
                // Products are what searches look for: a model's document prompt, if any.
                kind: enc::TextKind::Document.into(),
                prompt_name: String::new(),
                dimensions: self.dimensions,
            });
            request.set_timeout(timeout);
            let response = self
                .client
                .clone()
                .embed(request)
                .await
                .map_err(|s| failed("encoder", &s))?
                .into_inner();
            if *model.get_or_insert(response.model_fingerprint) != response.model_fingerprint {
                return Err(SourceError(
                    "the encoder's model changed while these texts were embedded".into(),
                ));
            }
            out.extend(response.embeddings.into_iter().map(|e| e.values));
        }
        Ok(Embedded {
            vectors: out,
            model: model.unwrap_or(0),
        })
    }

    /// The model's whole words (`Encoder.Words`) as the spelling lexicon.
    ///
    /// # Errors
    /// When the encoder is unreachable, still loading, or runs past `timeout`.
    pub async fn words(&self, timeout: Duration) -> Result<Arc<HashSet<String>>, SourceError> {
        let mut request = tonic::Request::new(enc::WordsRequest {});
        request.set_timeout(timeout);
        let mut client = self.client.clone();
        let response = within(timeout, "encoder", client.words(request))
            .await?
            .map_err(|s| failed("encoder", &s))?;
        Ok(souk_ranker_core::bm25::lexicon(response.into_inner().words))
    }
}

impl EmbeddingSource for GrpcEncoder {
    async fn embed_query(&self, text: &str) -> Result<Vec<f32>, SourceError> {
        // A cached vector was admitted when it was made, and the cache is emptied when the
        // catalog's model changes.
        if let Some(v) = self.cache.lock().ok().and_then(|cache| cache.get(text)) {
            return Ok(v);
        }
        let mut request = tonic::Request::new(enc::EmbedRequest {
            texts: vec![text.to_string()],
            truncate: Some(true),
            normalize: Some(true),
            // The model's query prompt, if any (e5's "query: ", bge's instruction).
            kind: enc::TextKind::Query.into(),
            prompt_name: String::new(),
            dimensions: self.dimensions,
        });
        request.set_timeout(self.query_timeout);
        let mut client = self.client.clone();
        let call = client.embed(request);
        let response = within(self.query_timeout, "encoder", call)
            .await?
            .map_err(|s| failed("encoder", &s))?
            .into_inner();
        // Asked even while the model is flagged: the first answer from the catalog's model
        // again is used at once.
        self.admit(response.model_fingerprint)?;
        let vector = response
            .embeddings
            .into_iter()
            .next()
            .map(|e| e.values)
            .ok_or_else(|| SourceError("encoder returned no embedding".into()))?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.put(text.to_string(), vector.clone());
        }
        Ok(vector)
    }
}

/// A request carrying this ranker's admin token, when there is one: for the admin calls it
/// makes itself (a replica's `Follow` and search counts to its primary, which share the
/// token; item facts to the knowledge graph).
pub(crate) fn with_token<T>(
    message: T,
    token: &Option<String>,
) -> Result<tonic::Request<T>, String> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token.as_deref().filter(|t| !t.is_empty()) {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| "the admin token is not a valid header value".to_string())?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
}

pub struct GrpcGraph {
    client: KnowledgeGraphClient<Channel>,
    timeout: Duration,
    admin_token: Option<String>,
}

impl GrpcGraph {
    pub fn new(channel: Channel, timeout: Duration, admin_token: Option<String>) -> Self {
        Self {
            client: KnowledgeGraphClient::new(channel).max_decoding_message_size(64 << 20),
            timeout,
            admin_token,
        }
    }

    /// Removes `remove` and adds `add` in one atomic graph batch. Returns how many of
    /// `remove` the graph held (and removed).
    ///
    /// # Errors
    /// The graph's status when it is unreachable, refuses the batch or runs past `timeout`
    /// (the caller tells a retry from a refusal by its code).
    pub async fn change_facts(
        &self,
        remove: Vec<Fact>,
        add: Vec<Fact>,
        timeout: Duration,
    ) -> Result<u64, tonic::Status> {
        if remove.is_empty() && add.is_empty() {
            return Ok(0);
        }
        let triple = |(head, relation, tail): Fact| kg::Triple {
            head,
            relation,
            tail,
        };
        let batch = kg::LoadTriplesRequest {
            triples: add.into_iter().map(triple).collect(),
            remove: remove.into_iter().map(triple).collect(),
            remove_entities: Vec::new(),
        };
        let mut request = with_token(futures::stream::iter(vec![batch]), &self.admin_token)
            .map_err(tonic::Status::failed_precondition)?;
        request.set_timeout(timeout);
        let applied = self
            .client
            .clone()
            .load_triples(request)
            .await?
            .into_inner();
        Ok(applied.removed)
    }

    /// Each entity's out-edges `(relation, tail)` of `relations` (one `NeighborsOfEach` call
    /// per relation, at once), up to [`EDGES_READ`] per relation, and whether it has more
    /// (`SyncGraph`); at most 256 entities. An entity the graph does not know has none.
    ///
    /// # Errors
    /// The graph's status when it is unreachable, refuses or runs past `timeout`.
    pub async fn out_edges_of_each(
        &self,
        entities: &[String],
        relations: &[&str],
        timeout: Duration,
    ) -> Result<Vec<(Vec<(String, String)>, bool)>, tonic::Status> {
        let calls = relations.iter().map(|relation| {
            let mut request = tonic::Request::new(kg::NeighborsOfEachRequest {
                entities: entities.to_vec(),
                relation: (*relation).to_string(),
                direction: kg::Direction::Out as i32,
                limit: EDGES_READ,
                prefix: String::new(),
            });
            request.set_timeout(timeout);
            let mut client = self.client.clone();
            async move {
                tokio::time::timeout(timeout, client.neighbors_of_each(request))
                    .await
                    .map_err(|_| {
                        tonic::Status::deadline_exceeded(format!("no answer within {timeout:?}"))
                    })?
                    .map(tonic::Response::into_inner)
            }
        });
        let answers = futures::future::try_join_all(calls).await?;
        let mut each = vec![(Vec::new(), false); entities.len()];
        for answer in answers {
            if answer.results.len() != entities.len() {
                return Err(tonic::Status::internal(format!(
                    "the knowledge graph answered for {} of {} entities",
                    answer.results.len(),
                    entities.len()
                )));
            }
            for ((edges, more), found) in each.iter_mut().zip(answer.results) {
                *more |= found.total > found.neighbors.len() as u64;
                edges.extend(found.neighbors.into_iter().map(|n| (n.relation, n.entity)));
            }
        }
        Ok(each)
    }
}

/// Edges of one relation [`GrpcGraph::out_edges_of_each`] reads per entity: 256 entities of
/// 1,000 edges each are ~15 MB, under the client's 64 MB.
pub const EDGES_READ: u32 = 1_000;

impl GrpcGraph {
    /// Out-edges `(relation, entity)` of `entities` and of every category they reach, following
    /// `category` and `parent` edges up (one round of concurrent `Neighbors` calls per level,
    /// at most 8 levels), all within the dependency deadline. An entity the graph does not
    /// know has no edges.
    ///
    /// # Errors
    /// When the graph is unreachable, refuses, or runs past the deadline.
    pub async fn out_edges_up(
        &self,
        entities: Vec<String>,
    ) -> Result<HashMap<String, Vec<(String, String)>>, SourceError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut edges: HashMap<String, Vec<(String, String)>> = HashMap::new();
        let mut frontier = entities;
        for _ in 0..8 {
            if frontier.is_empty() {
                break;
            }
            let calls = frontier.iter().map(|entity| {
                let mut client = self.client.clone();
                let mut request = tonic::Request::new(kg::NeighborsRequest {
                    entity: entity.clone(),
                    relation: String::new(),
                    direction: kg::Direction::Out as i32,
                    limit: 500,
                });
                request.set_timeout(self.timeout);
                async move { (entity.clone(), client.neighbors(request).await) }
            });
            let answers = tokio::time::timeout_at(deadline, futures::future::join_all(calls))
                .await
                .map_err(|_| {
                    SourceError(format!(
                        "knowledge graph facts: no answer within {:?}",
                        self.timeout
                    ))
                })?;
            let mut next = Vec::new();
            for (entity, answer) in answers {
                let list: Vec<(String, String)> = match answer {
                    Ok(r) => r
                        .into_inner()
                        .neighbors
                        .into_iter()
                        .map(|n| (n.relation, n.entity))
                        .collect(),
                    Err(status) if status.code() == tonic::Code::NotFound => Vec::new(),
                    Err(status) => return Err(failed("knowledge graph", &status)),
                };
                next.extend(
                    list.iter()
                        .filter(|(r, _)| r == "category" || r == "parent")
                        .map(|(_, tail)| tail.clone()),
                );
                edges.insert(entity, list);
            }
            next.sort_unstable();
            next.dedup();
            next.retain(|e| !edges.contains_key(e));
            frontier = next;
        }
        Ok(edges)
    }
}

impl GraphSource for GrpcGraph {
    async fn paths(
        &self,
        sources: Vec<String>,
        targets: Vec<String>,
        max_hops: u32,
    ) -> Result<Vec<GraphPath>, SourceError> {
        let mut request = tonic::Request::new(kg::PathsRequest {
            sources,
            targets,
            max_hops,
            limit: 1,
            relations: Vec::new(),
        });
        request.set_timeout(self.timeout);
        let mut client = self.client.clone();
        let call = client.paths(request);
        let response = match within(self.timeout, "knowledge graph", call).await? {
            // None of the user's items is in the graph: no paths, not an outage.
            Err(status) if status.code() == tonic::Code::NotFound => return Ok(Vec::new()),
            Err(status) => return Err(failed("knowledge graph", &status)),
            Ok(response) => response.into_inner(),
        };
        Ok(response
            .paths
            .into_iter()
            .map(|p| GraphPath {
                source: p.source,
                target: p.target,
                steps: p
                    .steps
                    .into_iter()
                    .map(|s| GraphStep {
                        relation: s.relation,
                        forward: s.direction == kg::Direction::Out as i32,
                        entity: s.entity,
                    })
                    .collect(),
            })
            .collect())
    }

    async fn entity_vectors(
        &self,
        entities: Vec<String>,
    ) -> Result<HashMap<String, Vec<f32>>, SourceError> {
        let mut request = tonic::Request::new(kg::EntityEmbeddingsRequest { entities });
        request.set_timeout(self.timeout);
        let mut client = self.client.clone();
        let call = client.entity_embeddings(request);
        match within(self.timeout, "knowledge graph embeddings", call).await? {
            // No embeddings trained yet: the signal is simply absent.
            Err(status) if status.code() == tonic::Code::FailedPrecondition => Ok(HashMap::new()),
            Err(status) => Err(failed("knowledge graph", &status)),
            Ok(response) => Ok(response
                .into_inner()
                .embeddings
                .into_iter()
                .map(|e| (e.entity, e.values))
                .collect()),
        }
    }

    /// One `NeighborsOfEach` call: every item's edges to other items, both ways.
    async fn related_items(
        &self,
        items: Vec<String>,
        per_item: usize,
    ) -> Result<Vec<String>, SourceError> {
        let mut request = tonic::Request::new(kg::NeighborsOfEachRequest {
            entities: items,
            relation: String::new(),
            direction: kg::Direction::Both as i32,
            limit: u32::try_from(per_item).unwrap_or(u32::MAX).clamp(1, 10_000),
            prefix: "item:".into(),
        });
        request.set_timeout(self.timeout);
        let mut client = self.client.clone();
        let call = client.neighbors_of_each(request);
        let response = within(self.timeout, "knowledge graph neighbours", call)
            .await?
            .map_err(|status| failed("knowledge graph", &status))?
            .into_inner();
        let mut related: Vec<String> = response
            .results
            .into_iter()
            .flat_map(|r| r.neighbors)
            .map(|n| n.entity)
            .collect();
        related.sort_unstable();
        related.dedup();
        Ok(related)
    }
}
