//! `soukctl eval`: the standard metrics on real data, with the ranker's own scoring code.
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use souk_proto::encoder::v1::TextKind;
use souk_ranker_core::cf::{
    Blend, Ease, Ials, IalsOptions, ItemKnn, Popularity, Recommender, Rp3Beta,
};
use souk_ranker_core::eval::RecSplit;

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Search relevance: NDCG@10 of each signal and of the learned fusion, on graded
    /// (query, product) judgements (CSV `query,product_title,product_description,median_relevance`).
    /// Needs the encoder (`--encoder-url`).
    Search(SearchArgs),
    /// Recommendation: Recall@k and NDCG@k on a fixed train/test split (TSV `user<TAB>item`).
    Rec(RecArgs),
    /// Item pages: each test user's latest training item as the page, Recall@k and NDCG@k of
    /// their held-out items in the page's ranking (`Rank` with `item_id`, in process), for
    /// several weight sets. Needs item titles and timestamps, and the encoder.
    Page(crate::eval_page::PageArgs),
}

#[derive(Debug, Args)]
pub struct RecArgs {
    #[arg(long)]
    pub train: PathBuf,
    #[arg(long)]
    pub test: PathBuf,
    #[arg(long, default_value_t = 20)]
    pub k: usize,
    /// EASE L2 regularisation.
    #[arg(long, default_value_t = 100.0)]
    pub lambda: f64,
    /// Neighbours kept per item by item-kNN.
    #[arg(long, default_value_t = 100)]
    pub neighbours: usize,
    /// Worker threads for scoring.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Knowledge-graph triples (TSV head, relation, tail over entity ids; a header is skipped).
    #[arg(long, requires = "item_entities")]
    pub kg: Option<PathBuf>,
    /// Item id -> entity id (TSV; a header is skipped).
    #[arg(long)]
    pub item_entities: Option<PathBuf>,
    /// Choose lambda (and the graph weight mu) on a validation split carved from train, then
    /// refit on all of train; the test split is never used for choosing.
    #[arg(long)]
    pub tune: bool,
    /// Graph weight mu when not tuning.
    #[arg(long, default_value_t = 0.5)]
    pub mu: f64,
    /// Also evaluate DLAE (dropout linear autoencoder), tuned on the validation split.
    #[arg(long)]
    pub dlae: bool,
    /// Blend the last model with RP3beta (a popularity-damped two-step walk), beta and the
    /// blend weight chosen on the validation split.
    #[arg(long)]
    pub blend: bool,
    /// Also try DLAE with users weighted by |items(u)|^-alpha in the Gram matrix, alpha in
    /// {0.25, 0.5} against 0, chosen on the validation split.
    #[arg(long)]
    pub user_weights: bool,
    /// Also evaluate iALS (user and item vectors by alternating least squares), its L2 weight
    /// and unobserved weight chosen on the validation split.
    #[arg(long)]
    pub ials: bool,
}

#[derive(Debug, Args)]
pub struct SearchArgs {
    /// One labelled file, evaluated by k-fold cross-validation over queries.
    #[arg(long, conflicts_with_all = ["train", "test"])]
    pub dataset: Option<PathBuf>,
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Fit the fusion on this file...
    #[arg(long, requires = "test")]
    pub train: Option<PathBuf>,
    /// ...and report on this one.
    #[arg(long, requires = "train")]
    pub test: Option<PathBuf>,
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Queries with fewer judged products are skipped (the protocol uses 5).
    #[arg(long, default_value_t = 5)]
    pub min_judged: usize,
    /// Reuse vectors across runs: a file of (text hash, vector) written by an earlier run with
    /// the same model. Embedding 11.8k Crowdflower texts takes ~20 min on 2 CPU cores.
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Leave product descriptions out (title-only signals; much faster to embed on CPU).
    #[arg(long)]
    pub titles_only: bool,
    /// Also learn the fusion from simulated clicks (`train fusion --feedback`'s learner): for
    /// each training query, this many sessions are shown the top 10 by dense(title) and click
    /// under position bias (looked at with probability 1/rank, clicked by relevance); the
    /// held-out NDCG is then measured with the real labels (k-fold mode only).
    #[arg(long, default_value_t = 0)]
    pub simulate_clicks: usize,
    /// With `--simulate-clicks`: the simulated shoppers look at rank r with probability
    /// 1/r^this (the position bias the learner must undo).
    #[arg(long, default_value_t = 1.0)]
    pub click_bias: f64,
    /// With `--simulate-clicks`: which rankings the sessions are shown. `dense` (every
    /// session the top 10 by dense(title)) or `dense-and-bm25` (every other session the top 10
    /// by bm25(title) instead, as a shop's changing rankings move items between positions:
    /// then the position bias is also estimated from the clicks and learned with).
    #[arg(long, value_enum, default_value_t = ShownBy::Dense)]
    pub shown_by: ShownBy,
    /// Misspell one word (4+ letters) of every query with one random edit, from this seed:
    /// how the ranking holds up when shoppers mistype.
    #[arg(long)]
    pub typos: Option<u64>,
    /// With `--typos`: edits per misspelt word. 2 misspells a word of 6+ letters twice (one
    /// edit on a 4+ letter word when the query has none that long).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub typo_edits: u8,
    /// Search as you type: cut each query's last word to its first N letters (when longer)
    /// and read it as `Rank` does with `prefix` (completed among the terms found with the
    /// other words).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub half_typed: Option<u64>,
    /// Which signals read the query with misspelt words corrected against the product
    /// texts, as `Rank` does.
    #[arg(long, value_enum, default_value_t = Correct::All)]
    pub correct: Correct,
    /// Correct real words too: without the encoder's words (`Encoder.Words`) as the
    /// spelling lexicon that `Rank` leaves as typed ("lover" is not read as "over").
    #[arg(long)]
    pub no_lexicon: bool,
    /// A synonyms file (`soukctl synonyms load`'s format), applied as `Rank` applies a
    /// shop's synonyms: what they do to relevance before they are set.
    #[arg(long)]
    pub synonyms: Option<PathBuf>,
    /// Also write each query's NDCG@k (each signal and the fusion, tab-separated, one
    /// query a line) to this file: two runs' files side by side say which queries a change
    /// moved.
    #[arg(long)]
    pub per_query: Option<PathBuf>,
    /// Cut every query and product vector to its first N values (normalised again), as the
    /// ranker's `--embedding-dimensions` does: what a shorter vector costs in relevance.
    /// Vectors are cached whole, so one cache serves every N.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub dimensions: Option<u32>,
}

/// The rankings simulated sessions are shown (`--shown-by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ShownBy {
    Dense,
    DenseAndBm25,
}

/// Vectors by text, persisted as a header line (format, model id and fingerprint, dimension), then records of
/// (FNV-1a hash of the text, f32 x dim). A stable hash, so the file works across builds.
struct VectorCache {
    model: String,
    dim: usize,
    vectors: std::collections::HashMap<u64, Vec<f32>>,
}

fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A text's key in the cache: a query's vector (made with the model's query prompt, if any)
/// is kept apart from a document's of the same text; documents keep the keys they had.
fn cache_key(text: &str, kind: TextKind) -> u64 {
    match kind {
        TextKind::Query => fnv1a(&format!("\u{0}query\u{0}{text}")),
        TextKind::Document | TextKind::Unspecified => fnv1a(text),
    }
}

impl VectorCache {
    fn load(path: Option<&Path>, model: &str, dim: usize) -> Self {
        let mut cache = Self {
            model: model.to_string(),
            dim,
            vectors: Default::default(),
        };
        let Some(bytes) = path.and_then(|p| std::fs::read(p).ok()) else {
            return cache;
        };
        let header = format!("souk-vectors v1 {model} {dim}\n");
        let Some(body) = bytes.strip_prefix(header.as_bytes()) else {
            eprintln!("vector cache was written for another model; ignoring it");
            return cache;
        };
        for record in body.chunks_exact(8 + 4 * dim) {
            let mut hash = [0u8; 8];
            hash.copy_from_slice(&record[..8]);
            let v = record[8..]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            cache.vectors.insert(u64::from_le_bytes(hash), v);
        }
        cache
    }

    fn save(&self, path: &Path) -> anyhow::Result<()> {
        let mut out = format!("souk-vectors v1 {} {}\n", self.model, self.dim).into_bytes();
        for (hash, v) in &self.vectors {
            out.extend_from_slice(&hash.to_le_bytes());
            v.iter()
                .for_each(|f| out.extend_from_slice(&f.to_le_bytes()));
        }
        std::fs::write(path, out).with_context(|| path.display().to_string())
    }
}

/// Every text's vector from the encoder behind `client`, in order, embedded as `kind` (queries
/// or products: a model with prompts embeds them differently), reusing and extending the
/// vector cache at `cache_path` (see [`VectorCache`]).
pub(crate) async fn embed_texts(
    client: &mut souk_proto::encoder::v1::encoder_client::EncoderClient<tonic::transport::Channel>,
    encoder_url: &str,
    texts: &[String],
    kind: TextKind,
    cache_path: Option<&Path>,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let info = client
        .info(souk_proto::encoder::v1::InfoRequest {})
        .await?
        .into_inner();
    // Keyed by the model's fingerprint too: another model in a directory of the same name
    // (a re-exported or cut copy) must not reuse the vectors.
    let model = match info.model_fingerprint {
        0 => info.model_id.clone(),
        fingerprint => format!("{}@{fingerprint:016x}", info.model_id),
    };
    let mut cache = VectorCache::load(cache_path, &model, info.dimension as usize);
    let missing: Vec<String> = texts
        .iter()
        .filter(|t| !cache.vectors.contains_key(&cache_key(t, kind)))
        .cloned()
        .collect();
    eprintln!(
        "{} distinct texts, {} cached; embedding {} with the encoder at {encoder_url} ...",
        texts.len(),
        texts.len() - missing.len(),
        missing.len()
    );
    let started = Instant::now();
    for chunk in missing.chunks(64) {
        let response = client
            .embed(souk_proto::encoder::v1::EmbedRequest {
                texts: chunk.to_vec(),
                truncate: Some(true),
                normalize: Some(true),
                kind: kind.into(),
                prompt_name: String::new(),
                // Whole vectors: a cut (`--dimensions`) is made from the cache's.
                dimensions: None,
            })
            .await?
            .into_inner();
        for (text, e) in chunk.iter().zip(response.embeddings) {
            cache.vectors.insert(cache_key(text, kind), e.values);
        }
    }
    eprintln!("embedded in {:.1}s", started.elapsed().as_secs_f64());
    if let (Some(p), false) = (cache_path, missing.is_empty()) {
        cache.save(p)?;
    }
    texts
        .iter()
        .map(|t| {
            cache
                .vectors
                .get(&cache_key(t, kind))
                .cloned()
                .context("vector missing after embedding")
        })
        .collect()
}

/// Each vector's first `dimensions` values, normalised again (the encoder's `dimensions`).
fn cut(mut vectors: Vec<Vec<f32>>, dimensions: usize) -> Vec<Vec<f32>> {
    for v in &mut vectors {
        v.truncate(dimensions);
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        }
    }
    vectors
}

/// Reads `user<TAB>item` pairs; a first line that is not two fields or reads `user item` is a header.
pub(crate) fn read_pairs(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let mut pairs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split(['\t', ' ']).filter(|f| !f.is_empty()).collect();
        if fields.is_empty() {
            continue;
        }
        if i == 0
            && (fields.first().map(|f| f.eq_ignore_ascii_case("user")) == Some(true)
                || fields.first().is_some_and(|f| f.contains(':')))
        {
            continue;
        }
        if fields.len() < 2 {
            anyhow::bail!(
                "{}:{}: expected `user<TAB>item`, found {:?}",
                path.display(),
                i + 1,
                line
            );
        }
        pairs.push((fields[0].to_string(), fields[1].to_string()));
    }
    Ok(pairs)
}

fn read_triples(path: &Path) -> anyhow::Result<Vec<(String, String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.split('\t').collect();
        if line.trim().is_empty() || (i == 0 && line.contains(':')) {
            continue;
        }
        if f.len() != 3 {
            anyhow::bail!(
                "{}:{}: expected head<TAB>relation<TAB>tail",
                path.display(),
                i + 1
            );
        }
        out.push((f[0].to_string(), f[1].to_string(), f[2].to_string()));
    }
    Ok(out)
}

pub async fn run(command: EvalCommand, encoder_url: &str) -> anyhow::Result<()> {
    match command {
        EvalCommand::Rec(args) => rec(args),
        EvalCommand::Search(args) => search(args, encoder_url).await,
        EvalCommand::Page(args) => crate::eval_page::run(args, encoder_url).await,
    }
}

/// One judged (query, product) pair.
#[derive(Debug, Clone)]
pub(crate) struct Judged {
    query: String,
    title: String,
    description: String,
    label: u8,
}

/// Undoes the commonest UTF-8-read-as-cp1252 damage (`â€™` for `'`); other text passes as is.
fn demojibake(s: &str) -> String {
    s.replace("â€™", "'")
        .replace("â€œ", "\"")
        .replace("â€\u{9d}", "\"")
        .replace("â€“", "-")
        .replace("â€”", "-")
        .replace("Â®", "®")
        .replace("Â ", " ")
}

pub(crate) fn read_judged(path: &Path, titles_only: bool) -> anyhow::Result<Vec<Judged>> {
    let bytes = std::fs::read(path).with_context(|| path.display().to_string())?;
    let text = String::from_utf8_lossy(&bytes);
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(text.as_bytes());
    let headers = reader.headers()?.clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim() == name)
            .with_context(|| format!("{}: no `{name}` column", path.display()))
    };
    let (q, t, d, l) = (
        col("query")?,
        col("product_title")?,
        col("product_description")?,
        col("median_relevance")?,
    );
    let mut out = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("{}: row {}", path.display(), i + 2))?;
        let label: u8 = record
            .get(l)
            .unwrap_or("")
            .trim()
            .parse()
            .ok()
            .filter(|v| (1..=4).contains(v))
            .with_context(|| {
                format!(
                    "{}:{}: median_relevance must be 1..4",
                    path.display(),
                    i + 2
                )
            })?;
        out.push(Judged {
            query: demojibake(record.get(q).unwrap_or("").trim()),
            title: demojibake(record.get(t).unwrap_or("").trim()),
            description: if titles_only {
                String::new()
            } else {
                demojibake(record.get(d).unwrap_or("").trim())
            },
            label,
        });
    }
    Ok(out)
}

const SIGNALS: [&str; 8] = [
    "dense(title)",
    "dense(title+desc)",
    "bm25(title)",
    "bm25(title+desc)",
    "term overlap",
    "phrase in title",
    "dense(desc)",
    "lexical (Rank's)",
];

/// The columns of [`SIGNALS`] that `Rank`'s query-time signals are: dense over the item's
/// text (title. description) and its lexical relevance ([`Matches::relevance`]).
///
/// [`Matches::relevance`]: souk_ranker_core::bm25::Matches::relevance
pub(crate) const RANK_DENSE: usize = 1;
pub(crate) const RANK_LEXICAL: usize = 7;

/// Features of every judged pair, grouped by query: the same signals the ranker uses
/// (MiniLM cosine from the encoder service, BM25 max-normalised within the query's candidates).
pub(crate) async fn features(
    rows: &[Judged],
    encoder_url: &str,
    min_judged: usize,
    cache_path: Option<&Path>,
    typing: Typing,
) -> anyhow::Result<Vec<(String, souk_ranker_core::fusion::Group)>> {
    use std::collections::{BTreeMap, HashMap};
    let mut texts: Vec<String> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut intern = |t: String, texts: &mut Vec<String>| -> usize {
        let next = texts.len();
        *index.entry(t.clone()).or_insert_with(|| {
            texts.push(t);
            next
        })
    };
    let full = |r: &Judged| {
        if r.description.is_empty() {
            r.title.clone()
        } else {
            format!("{}. {}", r.title, r.description)
        }
    };
    let products: Vec<(usize, usize)> = rows
        .iter()
        .map(|r| {
            (
                intern(r.title.clone(), &mut texts),
                intern(full(r), &mut texts),
            )
        })
        .collect();
    // The description alone (None without one): a third view the title does not dominate.
    let descriptions: Vec<Option<usize>> = rows
        .iter()
        .map(|r| (!r.description.is_empty()).then(|| intern(r.description.clone(), &mut texts)))
        .collect();
    let mut client = souk_proto::encoder::v1::encoder_client::EncoderClient::new(
        crate::connect(encoder_url, "encoder").await?,
    )
    .max_decoding_message_size(256 << 20);
    // BM25 over every distinct product text in the file.
    let mut bm_title = souk_ranker_core::bm25::Bm25::default();
    let mut bm_full = souk_ranker_core::bm25::Bm25::default();
    if !typing.no_lexicon {
        // The encoder's words as the spelling lexicon, as `Rank` reads them.
        let words = client
            .words(souk_proto::encoder::v1::WordsRequest {})
            .await?
            .into_inner()
            .words;
        let words = Some(souk_ranker_core::bm25::lexicon(words));
        bm_title.set_lexicon(words.clone());
        bm_full.set_lexicon(words);
    }
    for ((t, f), r) in products.iter().zip(rows) {
        bm_title.insert(*t as u32, &texts[*t]);
        // As the ranker's catalog indexes an item: the title's words marked.
        bm_full.insert_titled(*f as u32, &r.title, &r.description);
    }
    if let Some(synonyms) = &typing.synonyms {
        bm_title.set_synonyms(synonyms.clone());
        bm_full.set_synonyms(synonyms.clone());
    }
    // With `typos`, each query as a shopper might mistype it (keyed by the query as judged,
    // so the folds stay the same).
    let typed: HashMap<String, String> = rows
        .iter()
        .map(|r| {
            let t = typing.typos.map_or_else(
                || r.query.clone(),
                |seed| misspell(&r.query, seed, typing.edits),
            );
            let t = match typing.half_typed {
                Some(n) => {
                    let (head, last) = souk_ranker_core::bm25::last_word(&t);
                    format!("{head}{}", last.chars().take(n).collect::<String>())
                }
                None => t,
            };
            (r.query.clone(), t)
        })
        .collect();
    // Each query as the ranker understands it: misspelt words corrected against the indexed
    // product texts and a half-typed last word completed (`Bm25::read`, what `Rank` does),
    // for the lexical signals and, with `Correct::All`, for the dense one too.
    let understood: HashMap<&str, String> = typed
        .iter()
        .map(|(q, t)| {
            let fixed = match typing.correct {
                Correct::None => None,
                Correct::Lexical | Correct::All => bm_full.read(t, typing.half_typed.is_some()),
            };
            (q.as_str(), fixed.unwrap_or_else(|| t.clone()))
        })
        .collect();
    if typing.typos.is_some() || typing.correct != Correct::None {
        // Misspelt or cut short.
        let misspelt = typed.iter().filter(|(q, t)| q != t).count();
        let mut changed: Vec<(&String, &String)> = typed
            .iter()
            .filter(|(q, t)| understood[q.as_str()] != **t)
            .collect();
        changed.sort();
        let restored = typed
            .iter()
            .filter(|(q, _)| understood[q.as_str()] == **q)
            .count();
        eprintln!(
            "{} queries: {misspelt} typed otherwise, {} corrected or completed, {restored} read as judged",
            typed.len(),
            changed.len()
        );
        for (q, t) in changed.into_iter().take(
            std::env::var("SHOWN")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(8),
        ) {
            eprintln!("  {q:?}: typed {t:?}, read {:?}", understood[q.as_str()]);
        }
    }
    let mut query_texts: Vec<String> = Vec::new();
    let mut query_index: HashMap<String, usize> = HashMap::new();
    let ids: Vec<(usize, usize, usize)> = rows
        .iter()
        .zip(&products)
        .map(|(r, (t, f))| {
            let dense = match typing.correct {
                Correct::All => understood[r.query.as_str()].clone(),
                Correct::None | Correct::Lexical => typed[&r.query].clone(),
            };
            let next = query_texts.len();
            let q = *query_index.entry(dense.clone()).or_insert_with(|| {
                query_texts.push(dense);
                next
            });
            (q, *t, *f)
        })
        .collect();
    let vectors = embed_texts(
        &mut client,
        encoder_url,
        &texts,
        TextKind::Document,
        cache_path,
    )
    .await?;
    let query_vectors = embed_texts(
        &mut client,
        encoder_url,
        &query_texts,
        TextKind::Query,
        cache_path,
    )
    .await?;
    let (vectors, query_vectors) = match typing.dimensions {
        Some(d) => (cut(vectors, d), cut(query_vectors, d)),
        None => (vectors, query_vectors),
    };
    // A query's vector against a product text's.
    let cos = |a: usize, b: usize| -> f64 {
        query_vectors[a]
            .iter()
            .zip(&vectors[b])
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum()
    };
    let mut by_query: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        by_query.entry(r.query.as_str()).or_default().push(i);
    }
    let mut groups = Vec::new();
    for (query, members) in by_query {
        if members.len() < min_judged {
            continue;
        }
        let qi = ids[members[0]].0;
        let name = query;
        let query = understood[query].as_str();
        let st = bm_title.scores(query);
        let matches = bm_full.matches(query);
        let sf = |f: usize| matches.get(f as u32).map_or(0.0, |m| m.bm25);
        let max_t = members
            .iter()
            .map(|&m| st.get(&(ids[m].1 as u32)).copied().unwrap_or(0.0))
            .fold(0.0f32, f32::max);
        let max_f = members.iter().map(|&m| sf(ids[m].2)).fold(0.0f32, f32::max);
        let q_terms = souk_ranker_core::bm25::terms(query);
        let mut group = souk_ranker_core::fusion::Group::default();
        for &m in &members {
            let (_, t, f) = ids[m];
            let norm = |v: f32, max: f32| if max > 0.0 { f64::from(v / max) } else { 0.0 };
            let title_terms = souk_ranker_core::bm25::terms(&texts[t]);
            let overlap = if q_terms.is_empty() {
                0.0
            } else {
                q_terms.iter().filter(|q| title_terms.contains(q)).count() as f64
                    / q_terms.len() as f64
            };
            // The whole query, as written, inside the title ("led christmas lights").
            let phrase = if texts[t].to_lowercase().contains(&query.to_lowercase()) {
                1.0
            } else {
                0.0
            };
            group.features.push(vec![
                cos(qi, t),
                cos(qi, f),
                norm(st.get(&(t as u32)).copied().unwrap_or(0.0), max_t),
                norm(sf(f), max_f),
                overlap,
                phrase,
                descriptions[m].map_or(cos(qi, t), |d| cos(qi, d)),
                f64::from(matches.relevance(f as u32)),
            ]);
            group
                .gains
                .push(souk_ranker_core::eval::graded_gain(rows[m].label));
        }
        add_relative_features(&mut group);
        groups.push((name.to_string(), group));
    }
    Ok(groups)
}

/// How the evaluated queries are typed and read.
#[derive(Debug, Clone, Default)]
pub(crate) struct Typing {
    /// The shop's synonyms, as `Rank` applies them: equivalent phrases widen the lexical
    /// signals' words; one-way phrases are read as their replacement with the spelling
    /// check (so not with `--correct none`).
    pub synonyms: Option<std::sync::Arc<souk_ranker_core::synonyms::Synonyms>>,
    /// Misspell one word of each query (seed).
    pub typos: Option<u64>,
    /// Edits in the misspelt word (1 or 2).
    pub edits: u8,
    /// Cut the last word to this many letters and complete it.
    pub half_typed: Option<usize>,
    pub correct: Correct,
    /// Read every word the product texts lack as a possible misspelling, real words too
    /// (without the encoder's words as the lexicon).
    pub no_lexicon: bool,
    /// Query and product vectors cut to their first this many values and normalised again,
    /// as the encoder cuts them for the ranker's `--embedding-dimensions`.
    pub dimensions: Option<usize>,
}

/// Which signals read the corrected query (`Bm25::correct`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Correct {
    /// Every signal reads the query as typed.
    None,
    /// The lexical signals read it corrected, the dense ones as typed.
    Lexical,
    /// Every signal reads it corrected (what `Rank` does).
    #[default]
    All,
}

/// `query` with one random edit (a letter deleted, inserted or replaced, or two neighbours
/// swapped) in one of its words of 4+ ASCII letters, chosen by `seed` and the query; as
/// typed when it has no such word.
/// With `edits` 2, a word of 6+ letters gets two such edits (a query without one gets one
/// edit as above); the first edit's draws are those of one edit.
fn misspell(query: &str, seed: u64, edits: u8) -> String {
    let mut rng = souk_ranker_core::rng::XorShift::new(seed ^ fnv1a(query));
    let mut below = |n: usize| ((rng.unit() * n as f64) as usize).min(n.saturating_sub(1));
    let words: Vec<(usize, usize)> = query
        .match_indices(|c: char| c.is_ascii_alphabetic())
        .map(|(i, _)| i)
        .fold(Vec::<(usize, usize)>::new(), |mut runs, i| {
            match runs.last_mut() {
                Some((_, end)) if *end == i => *end = i + 1,
                _ => runs.push((i, i + 1)),
            }
            runs
        });
    let long: Vec<(usize, usize)> = words.iter().copied().filter(|(a, b)| b - a >= 6).collect();
    let (words, edits) = if edits >= 2 && !long.is_empty() {
        (long, 2)
    } else {
        (words.into_iter().filter(|(a, b)| b - a >= 4).collect(), 1)
    };
    if words.is_empty() {
        return query.to_string();
    }
    let (a, b) = words[below(words.len())];
    let mut word: Vec<u8> = query.as_bytes()[a..b].to_ascii_lowercase();
    for _ in 0..edits {
        edit(&mut word, &mut below);
    }
    format!(
        "{}{}{}",
        &query[..a],
        String::from_utf8_lossy(&word),
        &query[b..]
    )
}

/// One random edit of `word` (2+ letters): a letter deleted, inserted or replaced, or two
/// neighbours swapped.
fn edit(word: &mut Vec<u8>, below: &mut impl FnMut(usize) -> usize) {
    let i = below(word.len());
    let letter = b'a' + below(26) as u8;
    match below(4) {
        0 => {
            word.remove(i);
        }
        1 => word.insert(i, letter),
        2 => {
            word[i] = if word[i] == letter {
                b'a' + (letter - b'a' + 1) % 26
            } else {
                letter
            }
        }
        _ => {
            let i = i.min(word.len() - 2);
            word.swap(i, i + 1);
        }
    }
}

/// Appends, for the fusion only, the title and title+description dense signals relative to the query's other candidates
/// (z-score within the query) and the product of dense similarity and term overlap: a linear
/// model cannot form either from the raw signals, and both carry "better than the alternatives".
fn add_relative_features(group: &mut souk_ranker_core::fusion::Group) {
    let n = group.features.len().max(1) as f64;
    for signal in [0usize, 1] {
        let mean = group.features.iter().map(|f| f[signal]).sum::<f64>() / n;
        let sd = (group
            .features
            .iter()
            .map(|f| (f[signal] - mean).powi(2))
            .sum::<f64>()
            / n)
            .sqrt();
        for f in &mut group.features {
            let z = if sd > 1e-9 {
                (f[signal] - mean) / sd
            } else {
                0.0
            };
            f.push(z);
        }
    }
    for f in &mut group.features {
        let product = f[0] * f[4];
        f.push(product);
    }
}

/// Fold `fold` of `folds` over `items` by position (item i is held out in fold i % folds):
/// (held out, the rest).
pub(crate) fn fold_split<'a, T>(
    items: &'a [T],
    folds: usize,
    fold: usize,
) -> (Vec<&'a T>, Vec<&'a T>) {
    let (held, rest): (Vec<_>, Vec<_>) = items
        .iter()
        .enumerate()
        .partition(|(i, _)| i % folds == fold);
    let strip = |v: Vec<(usize, &'a T)>| v.into_iter().map(|(_, t)| t).collect();
    (strip(held), strip(rest))
}

/// NDCG@k of ranking each group by `score`.
pub(crate) fn mean_ndcg(
    groups: &[&souk_ranker_core::fusion::Group],
    k: usize,
    score: impl Fn(&[f64]) -> f64,
) -> f64 {
    let total: f64 = groups.iter().map(|g| ndcg(g, k, &score)).sum();
    total / groups.len().max(1) as f64
}

/// NDCG@k of ranking one group by `score`.
fn ndcg(group: &souk_ranker_core::fusion::Group, k: usize, score: impl Fn(&[f64]) -> f64) -> f64 {
    let mut order: Vec<usize> = (0..group.gains.len()).collect();
    // Ties broken by position in the file, the same for every signal.
    order.sort_by(|a, b| {
        score(&group.features[*b])
            .total_cmp(&score(&group.features[*a]))
            .then(a.cmp(b))
    });
    let ranked: Vec<f64> = order.iter().map(|&i| group.gains[i]).collect();
    souk_ranker_core::eval::ndcg_at(&ranked, k)
}

/// What `eval search` measured.
#[derive(Debug, Clone)]
pub struct SearchReport {
    pub queries: usize,
    /// (signal, NDCG@k) for each signal alone.
    pub signals: Vec<(String, f64)>,
    pub best_single: f64,
    /// `Rank`'s default weights over dense and BM25 of the title (no training).
    pub default_blend: f64,
    pub fused: f64,
    /// With `--simulate-clicks`: the fusions learned from simulated clicks.
    pub clicks: Option<ClickSimulation>,
}

async fn search(args: SearchArgs, encoder_url: &str) -> anyhow::Result<()> {
    search_report(&args, encoder_url, true).await.map(|_| ())
}

/// Runs the search evaluation; prints the table when `print` is set.
///
/// # Errors
/// Unreadable files, a malformed label, an unreachable encoder.
pub async fn search_report(
    args: &SearchArgs,
    encoder_url: &str,
    print: bool,
) -> anyhow::Result<SearchReport> {
    let mut signals = Vec::new();
    use souk_ranker_core::fusion::{TrainOptions, train};
    let k = args.k;
    let synonyms = match &args.synonyms {
        Some(path) => Some(std::sync::Arc::new(
            crate::files::read_synonyms(path)?.checked,
        )),
        None => None,
    };
    let typing = Typing {
        synonyms,
        typos: args.typos,
        edits: args.typo_edits,
        half_typed: args.half_typed.map(|n| n as usize),
        correct: args.correct,
        no_lexicon: args.no_lexicon,
        dimensions: args.dimensions.map(|d| d as usize),
    };
    let (train_groups, test_groups, folds) = match (&args.dataset, &args.train, &args.test) {
        (Some(dataset), _, _) => {
            let groups = features(
                &read_judged(dataset, args.titles_only)?,
                encoder_url,
                args.min_judged,
                args.cache.as_deref(),
                typing.clone(),
            )
            .await?;
            (None, groups, args.folds.max(2))
        }
        (None, Some(train_file), Some(test_file)) => {
            let tr = features(
                &read_judged(train_file, args.titles_only)?,
                encoder_url,
                args.min_judged,
                args.cache.as_deref(),
                typing.clone(),
            )
            .await?;
            let te = features(
                &read_judged(test_file, args.titles_only)?,
                encoder_url,
                args.min_judged,
                args.cache.as_deref(),
                typing,
            )
            .await?;
            (Some(tr), te, 1)
        }
        _ => anyhow::bail!("give --dataset FILE, or --train A --test B"),
    };
    let test_refs: Vec<&souk_ranker_core::fusion::Group> =
        test_groups.iter().map(|(_, g)| g).collect();
    if print {
        println!(
            "{} queries, {} judged products",
            test_refs.len(),
            test_refs.iter().map(|g| g.gains.len()).sum::<usize>()
        );
    }
    if print {
        println!("{:<22} ndcg@{k}", "signal");
    }
    let mut best_single = 0.0f64;
    for (i, name) in SIGNALS.iter().enumerate() {
        let v = mean_ndcg(&test_refs, k, |x| x[i]);
        best_single = best_single.max(v);
        if print {
            println!("{name:<22} {v:.4}");
        }
        signals.push((name.to_string(), v));
    }
    // What `Rank` does with its default weights and its two query-time signals (the others,
    // personal, are not in a judged set): no training.
    let [dense_weight, bm25_weight, ..] = souk_ranker_core::rank::FusionModel::default().with_query;
    let default_blend = |x: &[f64]| {
        f64::from(dense_weight) * x[RANK_DENSE].max(0.0) + f64::from(bm25_weight) * x[RANK_LEXICAL]
    };
    let blended = mean_ndcg(&test_refs, k, default_blend);
    if print {
        println!(
            "{:<22} {blended:.4}  (Rank's default weights: {dense_weight} dense(title+desc) + {bm25_weight} lexical)",
            "default blend"
        );
    }
    // Each query's fused NDCG, in `test_groups`' order.
    let mut fused_by_query = vec![0.0; test_groups.len()];
    match train_groups {
        Some(train_groups) => {
            let refs: Vec<souk_ranker_core::fusion::Group> =
                train_groups.into_iter().map(|(_, g)| g).collect();
            let model = train(&refs, TrainOptions::default());
            if print {
                println!(
                    "fusion weights (standardised): {:?}",
                    model
                        .weights
                        .iter()
                        .map(|w| format!("{w:.3}"))
                        .collect::<Vec<_>>()
                );
            }
            for (out, group) in fused_by_query.iter_mut().zip(&test_refs) {
                *out = ndcg(group, k, |x| model.score(x));
            }
        }
        None => {
            // k-fold over queries: each query is scored by a model that never saw it.
            for fold in 0..folds {
                let (held, rest) = fold_split(&test_groups, folds, fold);
                let training: Vec<souk_ranker_core::fusion::Group> =
                    rest.into_iter().map(|(_, g)| g.clone()).collect();
                let model = train(&training, TrainOptions::default());
                let held: Vec<&souk_ranker_core::fusion::Group> =
                    held.into_iter().map(|(_, g)| g).collect();
                // `fold_split` holds every `folds`-th query out, from the fold's number on.
                for (i, group) in held.iter().enumerate() {
                    fused_by_query[fold + i * folds] = ndcg(group, k, |x| model.score(x));
                }
            }
        }
    }
    let fused = fused_by_query.iter().sum::<f64>() / fused_by_query.len().max(1) as f64;
    if let Some(path) = &args.per_query {
        let mut out = String::from("query");
        for name in SIGNALS {
            out.push('\t');
            out.push_str(name);
        }
        out.push_str("\tdefault blend\tfused\n");
        for ((name, group), fused) in test_groups.iter().zip(&fused_by_query) {
            out.push_str(name);
            for i in 0..SIGNALS.len() {
                out.push_str(&format!("\t{:.4}", ndcg(group, k, |x| x[i])));
            }
            out.push_str(&format!(
                "\t{:.4}\t{fused:.4}\n",
                ndcg(group, k, default_blend)
            ));
        }
        std::fs::write(path, out)
            .map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", path.display()))?;
    }
    let setup = ClickSetup {
        sessions: args.simulate_clicks,
        bias: args.click_bias,
        shown_by: args.shown_by,
    };
    let clicks = (args.simulate_clicks > 0 && folds > 1)
        .then(|| simulate_clicks(&test_groups, folds, k, setup));
    if let (Some(sim), true) = (&clicks, print) {
        println!(
            "from simulated clicks ({} sessions per training query, top 10 by {} shown, \
             rank r looked at with probability 1/r^{}; mean [min-max] over {CLICK_SEEDS} \
             click seeds):",
            args.simulate_clicks,
            match args.shown_by {
                ShownBy::Dense => "dense(title)",
                ShownBy::DenseAndBm25 => "dense(title) or bm25(title), alternately",
            },
            args.click_bias
        );
        let row = |(mean, min, max): (f64, f64, f64)| format!("{mean:.4} [{min:.4}-{max:.4}]");
        println!("  shown order, dense(title)    {:.4}", sim.shown);
        println!("  naive (clicked > unclicked)  {}", row(sim.naive));
        println!("  propensity-weighted, 1/r     {}", row(sim.weighted));
        if let (Some(exponent), Some(estimated)) = (sim.estimated_bias, sim.weighted_estimated) {
            println!("  position bias estimated      {}", row(exponent));
            println!("  propensity-weighted, 1/r^est {}", row(estimated));
        }
        println!("  propensity-weighted, truth   {}", row(sim.weighted_true));
        println!("  labels (upper bound)         {fused:.4}");
        println!(
            "  clicks per session           {:.2}",
            sim.clicks_per_session
        );
    }
    let how = if folds > 1 {
        format!("{folds}-fold over queries")
    } else {
        "fit on --train".to_string()
    };
    if print {
        println!(
            "{:<22} {fused:.4}  ({how}; best single signal {best_single:.4})",
            "fused"
        );
        println!("ndcg@{k} fused={fused:.3}");
    }
    Ok(SearchReport {
        queries: test_refs.len(),
        signals,
        best_single,
        default_blend: blended,
        fused,
        clicks,
    })
}

/// Held-out NDCG@k of fusions learned from simulated clicks, over several click seeds.
#[derive(Debug, Clone)]
pub struct ClickSimulation {
    /// The order the sessions were shown: dense(title) alone.
    pub shown: f64,
    /// Clicked items as gain 1, the rest of the shown list 0: (mean, min, max) over seeds.
    pub naive: (f64, f64, f64),
    /// Propensity-weighted pairs with the default exponent 1: (mean, min, max).
    pub weighted: (f64, f64, f64),
    /// The exponent estimated from the clicks (`--shown-by dense-and-bm25` only; a log of
    /// one ranking has nothing to estimate it from).
    pub estimated_bias: Option<(f64, f64, f64)>,
    /// Propensity-weighted pairs with the estimated exponent, what `train fusion
    /// --feedback` fits by default.
    pub weighted_estimated: Option<(f64, f64, f64)>,
    /// Propensity-weighted pairs with the simulation's own exponent.
    pub weighted_true: (f64, f64, f64),
    pub clicks_per_session: f64,
}

/// How clicks are simulated (`--simulate-clicks`, `--click-bias`, `--shown-by`).
#[derive(Debug, Clone, Copy)]
pub struct ClickSetup {
    pub sessions: usize,
    pub bias: f64,
    pub shown_by: ShownBy,
}

/// Click seeds per simulation: one seed's figure moved by up to 0.02 NDCG.
const CLICK_SEEDS: u64 = 5;

/// For each seed and fold, `sessions` simulated sessions per training query: the top 10 by
/// dense(title) (the ranking before learning; with [`ShownBy::DenseAndBm25`] every other
/// session the top 10 by bm25(title)) are shown; rank r is looked at with probability
/// 1/r^`bias`, a looked-at item clicked with probability 0.05 + 0.95 x gain / 7 (gains 0, 1,
/// 3, 7). Fusions learned from those clicks, naively (clicked gain 1, the rest of the shown
/// list 0) and from propensity-weighted pairs (exponent 1, the one estimated from the log,
/// the simulation's own), are scored on the held-out queries' labels.
fn simulate_clicks(
    groups: &[(String, souk_ranker_core::fusion::Group)],
    folds: usize,
    k: usize,
    setup: ClickSetup,
) -> ClickSimulation {
    use souk_ranker_core::fusion::{ClickGroup, Group, TrainOptions, train, train_on_clicks};
    use souk_ranker_core::propensity::estimate;
    let n = groups.len().max(1) as f64;
    // The top 10 of a query's products by one feature, best first (ties by index).
    let top = |g: &Group, feature: usize| -> Vec<usize> {
        let mut order: Vec<usize> = (0..g.gains.len()).collect();
        order.sort_by(|a, b| {
            g.features[*b][feature]
                .total_cmp(&g.features[*a][feature])
                .then(a.cmp(b))
        });
        order.truncate(10);
        order
    };
    // Per fold, the same for every seed: the held-out queries, and each training query's
    // products with the rankings its sessions are shown (indices into them).
    let rankings: &[usize] = match setup.shown_by {
        ShownBy::Dense => &[0],
        ShownBy::DenseAndBm25 => &[0, 2],
    };
    // A training query's products and the orders its sessions are shown them in.
    type Shown<'g> = (&'g Group, Vec<Vec<usize>>);
    let splits: Vec<(Vec<&Group>, Vec<Shown>)> = (0..folds)
        .map(|fold| {
            let (held, rest) = fold_split(groups, folds, fold);
            let lists = rest
                .into_iter()
                .map(|(_, g)| (g, rankings.iter().map(|&f| top(g, f)).collect()))
                .collect();
            (held.into_iter().map(|(_, g)| g).collect(), lists)
        })
        .collect();
    let shown: f64 = splits
        .iter()
        .map(|(held, _)| mean_ndcg(held, k, |x| x[0]) * held.len() as f64)
        .sum();
    let (mut clicks, mut lists) = (0usize, 0usize);
    let (mut naive, mut weighted, mut truth) = (Vec::new(), Vec::new(), Vec::new());
    let (mut exponents, mut estimated) = (Vec::new(), Vec::new());
    for seed in 1..=CLICK_SEEDS {
        let mut rng = souk_ranker_core::rng::XorShift::new(seed);
        let (mut naive_sum, mut weighted_sum, mut truth_sum) = (0.0, 0.0, 0.0);
        let (mut exponent_sum, mut estimated_sum, mut all_estimated) = (0.0, 0.0, true);
        for (held, shown_lists) in &splits {
            let mut logged: Vec<ClickGroup> = Vec::new();
            // (query, product, position, clicked) of every shown product, for the estimate.
            let mut log: Vec<(String, String, u32, bool)> = Vec::new();
            for (q, (g, orders)) in shown_lists.iter().enumerate() {
                for session in 0..setup.sessions {
                    let order = &orders[session % orders.len()];
                    let clicked: Vec<bool> = order
                        .iter()
                        .enumerate()
                        .map(|(r, &i)| {
                            rng.unit() < 1.0 / ((r + 1) as f64).powf(setup.bias)
                                && rng.unit() < 0.05 + 0.95 * g.gains[i] / 7.0
                        })
                        .collect();
                    clicks += clicked.iter().filter(|c| **c).count();
                    lists += 1;
                    if orders.len() > 1 {
                        log.extend(
                            order.iter().zip(&clicked).enumerate().map(|(r, (&i, &c))| {
                                (q.to_string(), i.to_string(), r as u32 + 1, c)
                            }),
                        );
                    }
                    logged.push(ClickGroup {
                        features: order.iter().map(|&i| g.features[i].clone()).collect(),
                        positions: (1..=order.len() as u32).collect(),
                        clicked,
                    });
                }
            }
            let as_gains: Vec<Group> = logged
                .iter()
                .map(|c| Group {
                    features: c.features.clone(),
                    gains: c.clicked.iter().map(|&c| f64::from(u8::from(c))).collect(),
                })
                .collect();
            let weight = held.len() as f64;
            let naive_model = train(&as_gains, TrainOptions::default());
            let logged: Vec<&ClickGroup> = logged.iter().collect();
            let score = |bias: f64| {
                let model = train_on_clicks(&logged, bias, TrainOptions::default());
                mean_ndcg(held, k, |x| model.score(x)) * weight
            };
            naive_sum += mean_ndcg(held, k, |x| naive_model.score(x)) * weight;
            let default = score(1.0);
            weighted_sum += default;
            truth_sum += if setup.bias == 1.0 {
                default
            } else {
                score(setup.bias)
            };
            let found = estimate(
                log.iter()
                    .map(|(q, i, p, c)| souk_ranker_core::propensity::Shown {
                        query: q,
                        item: i,
                        position: *p,
                        clicked: *c,
                    }),
                10,
            );
            match found {
                Some(found) => {
                    exponent_sum += found.exponent * weight;
                    estimated_sum += score(found.exponent);
                }
                None => all_estimated = false,
            }
        }
        naive.push(naive_sum / n);
        weighted.push(weighted_sum / n);
        truth.push(truth_sum / n);
        if all_estimated {
            exponents.push(exponent_sum / n);
            estimated.push(estimated_sum / n);
        }
    }
    let spread = |v: &[f64]| {
        let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (mean, min, max)
    };
    let every_seed = |v: &[f64]| (v.len() == CLICK_SEEDS as usize).then(|| spread(v));
    ClickSimulation {
        shown: shown / n,
        naive: spread(&naive),
        weighted: spread(&weighted),
        estimated_bias: every_seed(&exponents),
        weighted_estimated: every_seed(&estimated),
        weighted_true: spread(&truth),
        clicks_per_session: clicks as f64 / lists.max(1) as f64,
    }
}

fn rec(args: RecArgs) -> anyhow::Result<()> {
    let split = RecSplit::from_pairs(&read_pairs(&args.train)?, &read_pairs(&args.test)?);
    if split.test.is_empty() {
        // Every metric would read 0.0000, as if every model had failed.
        anyhow::bail!(
            "{}: no test user ({} users in {}): nothing to evaluate",
            args.test.display(),
            split.train.users.len(),
            args.train.display()
        );
    }
    println!(
        "{} users, {} items, {} test users",
        split.train.users.len(),
        split.train.n_items,
        split.test.len()
    );
    let k = args.k;
    let mut rows: Vec<(String, f64, f64, f64)> = Vec::new();
    let mut measure = |name: String, model: &dyn Recommender, fit_s: f64| {
        let (recall, ndcg) = split.evaluate(k, args.threads, |h| model.scores(h));
        println!("{name:<28} recall@{k}={recall:.4} ndcg@{k}={ndcg:.4}  (fit {fit_s:.1}s)");
        rows.push((name, recall, ndcg, fit_s));
    };
    let t = Instant::now();
    let pop = Popularity::fit(&split.train);
    measure("popularity".into(), &pop, t.elapsed().as_secs_f64());
    let t = Instant::now();
    let knn = ItemKnn::fit(&split.train, args.neighbours);
    measure(
        format!("item-knn (k={})", args.neighbours),
        &knn,
        t.elapsed().as_secs_f64(),
    );
    let groups = match (&args.kg, &args.item_entities) {
        (Some(kg), Some(map)) => {
            let map: std::collections::HashMap<String, String> =
                read_pairs(map)?.into_iter().collect();
            let groups = souk_ranker_core::eval::kg_item_groups(&split, &map, &read_triples(kg)?);
            println!(
                "knowledge graph: {} shared facts over the items",
                groups.len()
            );
            Some(groups)
        }
        _ => None,
    };
    if let Some(groups) = &groups {
        let t = Instant::now();
        let content = ItemKnn::fit(
            &souk_ranker_core::cf::Interactions {
                n_items: split.train.n_items,
                users: groups.clone(),
            },
            args.neighbours,
        );
        measure(
            "kg item-kNN (graph alone)".into(),
            &content,
            t.elapsed().as_secs_f64(),
        );
    }
    // Every tuned family chooses on this one split carved from train, and its best validation
    // recall is kept: the family to deploy can be chosen without looking at the test split.
    let validation = souk_ranker_core::eval::validation_split(&split, 0.2, 42);
    let mut picks: Vec<(&str, f64)> = Vec::new();
    let (lambda, mu) = if args.tune {
        let score = |lambda: f64, mu: f64| -> anyhow::Result<f64> {
            let model = Ease::fit_with_side(
                &validation.train,
                groups.as_deref().unwrap_or(&[]),
                mu,
                lambda,
            )?;
            Ok(validation.evaluate(k, args.threads, |h| model.scores(h)).0)
        };
        let mut best = (f64::MIN, args.lambda);
        for lambda in [50.0, 100.0, 200.0, 500.0, 1000.0] {
            let r = score(lambda, 0.0)?;
            println!("  validation: ease lambda={lambda} recall@{k}={r:.4}");
            if r > best.0 {
                best = (r, lambda);
            }
        }
        let mut best_mu = (best.0, 0.0);
        if groups.is_some() {
            for mu in [0.25, 0.5, 1.0, 2.0] {
                let r = score(best.1, mu)?;
                println!(
                    "  validation: ease+kg lambda={} mu={mu} recall@{k}={r:.4}",
                    best.1
                );
                if r > best_mu.0 {
                    best_mu = (r, mu);
                }
            }
        }
        picks.push(("ease", best_mu.0));
        (best.1, best_mu.1)
    } else {
        (args.lambda, args.mu)
    };
    let t = Instant::now();
    let ease = Ease::fit(&split.train, lambda)?;
    measure(
        format!("ease (lambda={lambda})"),
        &ease,
        t.elapsed().as_secs_f64(),
    );
    if let Some(groups) = &groups {
        let t = Instant::now();
        let fused = Ease::fit_with_side(&split.train, groups, mu, lambda)?;
        measure(
            format!("ease + kg (lambda={lambda}, mu={mu})"),
            &fused,
            t.elapsed().as_secs_f64(),
        );
    }
    if args.dlae {
        let side = groups.as_deref().unwrap_or(&[]);
        let mut best = (f64::MIN, 0.0, 0.0, 0.0);
        let mus: &[f64] = if groups.is_some() {
            &[0.0, 0.5]
        } else {
            &[0.0]
        };
        // Each fit is single-threaded and O(n^3): run the grid on `threads` workers.
        let grid: Vec<(f64, f64, f64)> = [0.25, 0.5, 0.6, 0.7]
            .into_iter()
            .flat_map(|p| {
                [50.0, 100.0, 200.0]
                    .into_iter()
                    .flat_map(move |l| mus.iter().map(move |&m| (p, l, m)))
            })
            .collect();
        let results: Vec<anyhow::Result<(f64, f64, f64, f64)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = grid
                .chunks(grid.len().div_ceil(args.threads.max(1)))
                .map(|chunk| {
                    let validation = &validation;
                    scope.spawn(move || {
                        chunk
                            .iter()
                            .map(|&(p, lambda, m)| {
                                let model = Ease::fit_dlae(&validation.train, side, m, lambda, p)?;
                                let r = validation.evaluate(k, 1, |h| model.scores(h)).0;
                                println!("  validation: dlae p={p} lambda={lambda} mu={m} recall@{k}={r:.4}");
                                Ok((r, p, lambda, m))
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| {
                    h.join()
                        .unwrap_or_else(|_| vec![Err(anyhow::anyhow!("a fit panicked"))])
                })
                .collect()
        });
        for result in results {
            let candidate = result?;
            if candidate.0 > best.0 {
                best = candidate;
            }
        }
        picks.push(("dlae", best.0));
        let (_, p, lambda, m) = best;
        if m > 0.0 {
            // The same model without the graph, to show what the graph adds.
            let t = Instant::now();
            let model = Ease::fit_dlae(&split.train, side, 0.0, lambda, p)?;
            measure(
                format!("dlae (p={p}, lambda={lambda})"),
                &model,
                t.elapsed().as_secs_f64(),
            );
        }
        let mut alpha = 0.0;
        if args.user_weights {
            let mut best_alpha = (f64::MIN, 0.0);
            for a in [0.0, 0.25, 0.5] {
                let model = Ease::fit_dlae_weighted(&validation.train, side, m, lambda, p, a)?;
                let r = validation.evaluate(k, args.threads, |h| model.scores(h)).0;
                println!("  validation: dlae user weights alpha={a} recall@{k}={r:.4}");
                if r > best_alpha.0 {
                    best_alpha = (r, a);
                }
            }
            alpha = best_alpha.1;
        }
        let t = Instant::now();
        let model = Ease::fit_dlae_weighted(&split.train, side, m, lambda, p, alpha)?;
        let name = format!(
            "dlae{} (p={p}, lambda={lambda}, mu={m}{})",
            if m > 0.0 { " + kg" } else { "" },
            if alpha > 0.0 {
                format!(", user weights alpha={alpha}")
            } else {
                String::new()
            }
        );
        measure(name.clone(), &model, t.elapsed().as_secs_f64());
        if args.blend {
            // Blend weights on the validation split only: the DLAE refitted there.
            let on_validation = Ease::fit_dlae(&validation.train, side, m, lambda, p)?;
            let mut best = (f64::MIN, 0.0, 0.0);
            for beta in [0.0, 0.3, 0.5, 0.7] {
                let walk = Rp3Beta::fit(&validation.train, beta);
                for gamma in [0.0, 0.1, 0.2, 0.4, 0.8] {
                    let blend = Blend {
                        a: &on_validation,
                        b: &walk,
                        gamma,
                    };
                    let r = validation.evaluate(k, args.threads, |h| blend.scores(h)).0;
                    println!(
                        "  validation: blend rp3beta beta={beta} gamma={gamma} recall@{k}={r:.4}"
                    );
                    if r > best.0 {
                        best = (r, beta, gamma);
                    }
                }
            }
            let (_, beta, gamma) = best;
            let t = Instant::now();
            let walk = Rp3Beta::fit(&split.train, beta);
            measure(
                format!("rp3beta (beta={beta})"),
                &walk,
                t.elapsed().as_secs_f64(),
            );
            let blend = Blend {
                a: &model,
                b: &walk,
                gamma,
            };
            measure(
                format!("{name} + {gamma} x rp3beta"),
                &blend,
                t.elapsed().as_secs_f64(),
            );
        }
    }
    if args.ials {
        let base = IalsOptions {
            threads: args.threads,
            ..IalsOptions::default()
        };
        let mut best = (f64::MIN, base);
        for reg in [0.01, 0.02, 0.03, 0.05] {
            for unobserved in [0.02, 0.03, 0.05, 0.1] {
                let options = IalsOptions {
                    reg,
                    unobserved,
                    ..base
                };
                let model = Ials::fit(&validation.train, &options)?;
                let r = validation.evaluate(k, args.threads, |h| model.scores(h)).0;
                println!("  validation: ials reg={reg} alpha0={unobserved} recall@{k}={r:.4}");
                if r > best.0 {
                    best = (r, options);
                }
            }
        }
        picks.push(("ials", best.0));
        let options = best.1;
        let t = Instant::now();
        let model = Ials::fit(&split.train, &options)?;
        let fit_s = t.elapsed().as_secs_f64();
        measure(
            format!(
                "ials (dim={}, reg={}, alpha0={}, {} iterations)",
                options.dim, options.reg, options.unobserved, options.iterations
            ),
            &model,
            fit_s,
        );
        // This is also what `soukctl train cf --algorithm ials` serves: `Rank` folds the
        // shopper's 200 most recent items into the same f32 item vectors.
    }
    if let Some((name, recall, ndcg, _)) = rows.last() {
        println!("last model: {name} recall@{k}={recall:.3} ndcg@{k}={ndcg:.3}");
    }
    if picks.len() > 1 {
        let listed: Vec<String> = picks.iter().map(|(f, r)| format!("{f} {r:.4}")).collect();
        if let Some((family, _)) = picks.iter().max_by(|a, b| a.1.total_cmp(&b.1)) {
            println!(
                "validation picks {family} (best recall@{k} on the validation split: {})",
                listed.join(", ")
            );
        }
    }
    Ok(())
}
