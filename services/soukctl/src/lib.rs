//! `soukctl`: the admin and client CLI of souk. Loads graphs, catalogs and events (streamed in
//! batches, with a progress bar, every bad line reported as `file:line: reason`), ranks, and
//! inspects the services. The load functions are a library too: `souk demo` uses them.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let ranker = soukctl::connect("http://127.0.0.1:50053", "ranker").await?;
//! let mut client = souk_proto::ranker::v1::ranker_client::RankerClient::new(ranker);
//! let request = souk_proto::ranker::v1::RankRequest { query: "tent".into(), k: 5, explain: true, ..Default::default() };
//! let ranking = client.rank(request).await?.into_inner();
//! soukctl::print_ranking(&mut std::io::stdout(), &ranking, 0)?;
//! # Ok(()) }
//! ```
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use souk_proto::encoder::v1 as enc;
use souk_proto::kg::v1 as kg;
use souk_proto::ranker::v1 as rk;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

/// std's `println!`, except that a closed stdout (`soukctl rank ... | head -3`) ends the
/// process quietly instead of panicking with a backtrace. Defined before the modules, so
/// that every `println!` of the crate is this one.
macro_rules! println {
    () => {
        $crate::print_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::print_line(format_args!($($arg)*))
    };
}

/// Writes one line to stdout (see the crate's `println!`); a reader that went away ends the
/// process with success, as `head` expects of the command before it.
pub fn print_line(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(error) = writeln!(out, "{line}") {
        exit_on_closed_pipe(&error);
        eprintln!("error: cannot write to stdout: {error}");
    }
}

/// Ends the process with success when `error` is a closed pipe (the reader of the output
/// stopped reading).
pub fn exit_on_closed_pipe(error: &std::io::Error) {
    if error.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
}

pub mod bench;
pub mod eval;
pub mod eval_page;
pub mod feedback;
pub mod files;
pub mod kgembed;
pub mod stats;
pub mod train;

use files::{LineError, TripleFormat};

/// souk's admin and client CLI.
#[derive(Debug, Parser)]
#[command(name = "soukctl", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub endpoints: Endpoints,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the services are.
#[derive(Debug, Clone, Args)]
pub struct Endpoints {
    /// The ranker service.
    #[arg(
        id = "ranker_url",
        long = "ranker-url",
        global = true,
        env = "SOUK_RANKER_URL",
        default_value = "http://127.0.0.1:50053"
    )]
    pub ranker: String,
    /// The knowledge-graph service.
    #[arg(
        id = "kg_url",
        long = "kg-url",
        global = true,
        env = "SOUK_KG_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    pub kg: String,
    /// The encoder service.
    #[arg(
        id = "encoder_url",
        long = "encoder-url",
        global = true,
        env = "SOUK_ENCODER_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub encoder: String,
    /// Admin token sent as `authorization: Bearer <token>` with loads.
    #[arg(long, global = true, env = "SOUK_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Seconds `health`, `stats` and the read commands (rank, suggest, profile, embed, kg
    /// neighbors/paths/similar/predict) wait for a service before giving up on it; sent with
    /// the request as its deadline. Writes, training and re-embedding wait as long as the work
    /// takes.
    #[arg(
        long = "timeout",
        global = true,
        env = "SOUK_TIMEOUT_S",
        default_value_t = DEFAULT_TIMEOUT_S,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub timeout_s: u64,
}

impl Endpoints {
    /// How long a read waits for one service (`--timeout`).
    pub fn answer_timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_s)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The knowledge graph: load triples, inspect.
    #[command(subcommand)]
    Kg(KgCommand),
    /// The catalog: load and delete items.
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// Interaction events.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Rank products for a user and/or a query, with reasons.
    Rank(RankArgs),
    /// What the ranker knows about a user's taste.
    Profile {
        user: String,
        #[arg(long, default_value_t = 10)]
        limit: u32,
    },
    /// Search-as-you-type suggestions for the text in a search box ("desk la").
    Suggest {
        query: String,
        #[arg(short, long, default_value_t = 5)]
        k: u32,
    },
    /// Embed texts with the encoder (prints dimension, tokens and the first values, and each
    /// later text's cosine with the first).
    Embed {
        texts: Vec<String>,
        /// Embed the texts as searches (`query`) or as what is searched (`document`): with
        /// the model's prompt for that kind, if it has one (e5's "query: " / "passage: ").
        #[arg(long, value_enum, default_value_t = EmbedKind::Text)]
        kind: EmbedKind,
        /// One of the model's prompts by name instead (`soukctl stats` lists them).
        #[arg(long, default_value = "")]
        prompt: String,
        /// Keep only each vector's first this many values, normalised after the cut
        /// (Matryoshka truncation); unset: whole vectors.
        #[arg(long)]
        dimensions: Option<u32>,
    },
    /// What each service holds: the catalog and the log, the graph, the encoder's model. A
    /// service that cannot be read gets a line saying why; the others are still printed.
    Stats,
    /// Embed every catalog item again with the encoder's current model (after the model
    /// changed: `stats` says the encoder "differs") and rank with the new vectors.
    Reembed,
    /// The shop's synonyms: what shoppers type that its texts say otherwise.
    #[command(subcommand)]
    Synonyms(SynonymsCommand),
    /// The shop's pinned results: items shown first for a search.
    #[command(subcommand)]
    Pins(PinsCommand),
    /// Health of the three services (grpc.health.v1).
    Health,
    /// Standard metrics on real datasets, with the ranker's scoring code.
    #[command(subcommand)]
    Eval(eval::EvalCommand),
    /// Load generators against running services.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Fit the ranker's models (collaborative filter, fusion weights); the ranker stores them
    /// with a version and ranks with them from the next request.
    #[command(subcommand)]
    Train(train::TrainCommand),
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Open-loop `Rank` load at a fixed rate; prints p50/p90/p99 from scheduled send time.
    Rank(bench::RankBenchArgs),
    /// Sequential single short queries through `Embed`; prints p50/p90/p99.
    Embed(bench::EmbedBenchArgs),
}

#[derive(Debug, Subcommand)]
pub enum KgCommand {
    /// Load triples from TSV, CSV or N-Triples files.
    Load {
        files: Vec<PathBuf>,
        #[command(flatten)]
        options: LoadOptions,
        /// Format; by default from the extension (.tsv/.txt, .csv, .nt).
        #[arg(long, value_enum)]
        format: Option<TripleFormat>,
    },
    /// Remove the triples listed in TSV, CSV or N-Triples files (an entity left without
    /// triples is out of every answer; a triple naming it brings it back). Each batch is
    /// removed atomically.
    Delete {
        files: Vec<PathBuf>,
        /// Also remove every edge of this entity, either direction (repeat the flag); all
        /// named entities are cleared in one atomic batch, before the files.
        #[arg(long = "entity")]
        entities: Vec<String>,
        #[command(flatten)]
        options: LoadOptions,
        /// Format; by default from the extension (.tsv/.txt, .csv, .nt).
        #[arg(long, value_enum)]
        format: Option<TripleFormat>,
    },
    /// Edges around an entity.
    Neighbors {
        entity: String,
        #[arg(long, default_value = "")]
        relation: String,
        /// in, out or both.
        #[arg(long, default_value = "both")]
        direction: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Shortest relation paths from entities to a target.
    Paths {
        #[arg(long = "from", required = true)]
        from: Vec<String>,
        #[arg(long = "to", required = true)]
        to: Vec<String>,
        #[arg(long, default_value_t = 3)]
        max_hops: u32,
        #[arg(long, default_value_t = 3)]
        limit: u32,
    },
    /// Train entity/relation embeddings on the service's graph (progress is streamed).
    Train(kgembed::EmbedArgs),
    /// Link-prediction benchmark on a dataset directory (train/valid/test.txt), run locally:
    /// train on train, select on valid, filtered MRR and Hits@1/3/10 on test.
    Eval(kgembed::KgEvalArgs),
    /// Entities closest to one in embedding space.
    Similar {
        entity: String,
        #[arg(long, default_value_t = 10)]
        limit: u32,
        /// Only entities whose id starts with this.
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Most plausible missing tails of (head, relation) or heads of (relation, tail).
    Predict {
        #[arg(long, default_value = "")]
        head: String,
        #[arg(long)]
        relation: String,
        #[arg(long, default_value = "")]
        tail: String,
        #[arg(long, default_value_t = 10)]
        limit: u32,
        /// Leave out links already in the graph.
        #[arg(long)]
        new_only: bool,
        /// Also rank entities never seen at that end of the relation (by default a `brand`
        /// link's candidates are the graph's brands).
        #[arg(long)]
        any_entity: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Load items from a catalog CSV (see kg-data/README.md).
    Load {
        file: PathBuf,
        #[command(flatten)]
        options: LoadOptions,
        /// The file is the whole catalog (a full feed): once it is loaded without a bad
        /// line, delete the items it does not list. Refused when that would delete more
        /// than a fifth of the catalog (a cut-off file?) unless --allow-large-delete.
        #[arg(long)]
        delete_missing: bool,
        /// With --delete-missing, delete however many the file leaves out.
        #[arg(long, requires = "delete_missing")]
        allow_large_delete: bool,
    },
    /// Change the price, stock or attributes of stored items from a CSV of `id` and any of
    /// `price`, `in_stock`, `attributes` (an empty cell leaves the field; `color=red;
    /// size=` sets color and removes size): a price and stock feed, stored without the
    /// encoder. Ids not in the catalog are reported, not stored.
    Update {
        file: PathBuf,
        #[command(flatten)]
        options: LoadOptions,
    },
    /// Delete items by id.
    Delete { ids: Vec<String> },
    /// Make the knowledge graph state of every item the brand, category and attributes the
    /// catalog holds: its other values of these are removed, missing ones added (a graph
    /// restored from an older backup, facts left by an earlier version). Other edges stay.
    SyncGraph {
        /// Count what differs, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SynonymsCommand {
    /// Replace the shop's synonyms with a file's (an empty file clears them): one a line,
    /// `sofa, couch, settee` (equivalent phrases: each finds the items saying any) or
    /// `blendtec, blend tec => blender` (the phrases are read as the replacement); `#`
    /// begins a comment. See `kg-data/synonyms.txt`.
    Load {
        file: PathBuf,
        /// Check the file and report its first bad line without sending anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// The synonyms in use, in the file's format.
    List,
}

#[derive(Debug, Subcommand)]
pub enum PinsCommand {
    /// Replace the shop's pinned results with a file's (an empty file clears them): one
    /// rule a line, `tent => p007, p012, -p300` (for the search "tent", those items first,
    /// in that order, when they pass the shopper's filters, and p300 never), or
    /// `category:Tents => p007` for the Tents page (a rank with that category and no
    /// query); a condition with a signed amount boosts the items that pass it
    /// (`brand:Acme +0.2`, `color=green -0.1`); `* => -p300, in-stock +0.05` hides and
    /// boosts in every ranking, `contains:tent => brand:Acme +0.1` in every search holding
    /// "tent"; `tent @2026-03-01..2026-04-01 => p9` holds for that time
    /// (UTC) only; `returns => redirect:/help/returns` sends a search to another page;
    /// `banner: TEXT` as a line's last entry is shown above its results; `#` begins a
    /// comment. See
    /// `kg-data/README.md` and `kg-data/pins.txt`.
    Load {
        file: PathBuf,
        /// Check the file and report its first bad line without sending anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// The pin rules in use, in the file's format, each noted with the rankings it applied
    /// to (`# applied to 1,204 rankings`) and a scheduled rule with its standing by this
    /// machine's clock (`in force now`, `ended` or `starts later`).
    List,
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Load interactions from an events CSV (see kg-data/README.md).
    Load {
        file: PathBuf,
        #[command(flatten)]
        options: LoadOptions,
    },
    /// Forget shoppers (a request to be erased): every stored event of each user id goes,
    /// with their history and what their events added to popularity and co-occurrence.
    /// A trained CF model keeps what it learnt from them until `train cf` runs again.
    /// Their events stamped up to now that arrive later (a replica's outbox, this log
    /// loaded again) are not recorded; later ones are.
    Forget {
        /// User ids as the events named them (up to 1,000 per call).
        #[arg(required = true)]
        users: Vec<String>,
    },
}

/// How a file is loaded.
#[derive(Debug, Clone, Args)]
pub struct LoadOptions {
    /// Rows per batch; each batch is stored atomically.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Check the file and report bad lines without loading anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Bad lines to skip (each is reported) before stopping; 0 stops at the first.
    #[arg(long, default_value_t = 0)]
    pub max_errors: usize,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// One `--attr NAME=VALUE[,VALUE...]` of `soukctl rank`.
#[derive(Debug, Clone, PartialEq)]
pub struct AttributeArg {
    pub name: String,
    pub values: Vec<String>,
}

fn parse_attribute_filter(arg: &str) -> Result<AttributeArg, String> {
    let (name, values) = arg
        .split_once('=')
        .ok_or_else(|| format!("{arg:?} is not NAME=VALUE[,VALUE...]"))?;
    let values: Vec<String> = values
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(String::from)
        .collect();
    if name.trim().is_empty() || values.is_empty() {
        return Err(format!("{arg:?} needs a name and at least one value"));
    }
    Ok(AttributeArg {
        name: name.trim().to_string(),
        values,
    })
}

/// `soukctl embed --kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EmbedKind {
    /// Neither: the model's default prompt, if it names one.
    Text,
    /// Searches: the model's query prompt.
    Query,
    /// Products, passages: the model's document prompt.
    Document,
}

/// `soukctl rank --sort`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SortArg {
    Relevance,
    PriceAsc,
    PriceDesc,
    /// Most popular first (best sellers).
    Popular,
}

#[derive(Debug, Clone, Args)]
pub struct RankArgs {
    /// The shopper; omit for an anonymous request.
    #[arg(long, default_value = "")]
    pub user: String,
    /// Search query; omit for recommendations.
    #[arg(long, short, default_value = "")]
    pub query: String,
    /// An item's page: rank items like this one and items bought with it or related to it
    /// in the graph (it is not returned itself).
    #[arg(long, default_value = "")]
    pub item: String,
    /// This request's fusion weights (dense,bm25,cf,kg,popularity) instead of the model's:
    /// `--item p00141 --weights 1,0,0,0,0` is the page's "similar items" shelf.
    #[arg(long, value_name = "D,B,C,K,P", value_parser = crate::eval_page::parse_weights)]
    pub weights: Option<[f32; 5]>,
    /// Order: relevance, or the matched items by price (`price-asc`, `price-desc`) or by
    /// popularity (`popular`).
    #[arg(long, value_enum, default_value_t = SortArg::Relevance)]
    pub sort: SortArg,
    #[arg(short, long, default_value_t = 10)]
    pub k: u32,
    /// Skip this many results (a later page: `--offset 10 -k 10` is the second page of 10).
    #[arg(long, default_value_t = 0)]
    pub offset: u32,
    /// Rank the query as typed, without spelling correction.
    #[arg(long)]
    pub verbatim: bool,
    /// Search as you type: the query's last word may be half typed, and is completed
    /// (`--query "coffee ma"` ranks "coffee maker").
    #[arg(long)]
    pub prefix: bool,
    #[arg(long, default_value = "")]
    pub category: String,
    #[arg(long = "brand")]
    pub brands: Vec<String>,
    #[arg(long)]
    pub min_price: Option<f64>,
    #[arg(long)]
    pub max_price: Option<f64>,
    #[arg(long)]
    pub in_stock: bool,
    /// Only items with one of these values of an attribute, e.g. `--attr color=black,navy`;
    /// repeat for more attributes (each must match).
    #[arg(long = "attr", value_name = "NAME=VALUE[,VALUE...]", value_parser = parse_attribute_filter)]
    pub attributes: Vec<AttributeArg>,
    #[arg(long)]
    pub exclude: Vec<String>,
    /// 0..1: trade score for category variety.
    #[arg(long, default_value_t = 0.0)]
    pub diversity: f32,
    /// Print the raw response as JSON-like debug output instead of the table.
    #[arg(long)]
    pub raw: bool,
    /// Every signal's value in the contributions (what a feedback log for `train fusion
    /// --feedback` records), zero-weighted ones too.
    #[arg(long)]
    pub all_signals: bool,
    /// Counts per value beside the results: `brand`, `category`, `attribute:NAME`, `price`
    /// (its range) or `price:25,50,100` (items per price bucket) (repeat for more), over the
    /// items the query matches (its words, and its nearest items by vector) that pass the other
    /// filters.
    #[arg(long = "facet", value_name = "FIELD")]
    pub facets: Vec<String>,
    /// Rank as the shop's rules stand at this time instead of now (a UTC day `2026-11-27`,
    /// minute `2026-11-27T09:30` or ms since 1970): a preview of a scheduled rule.
    #[arg(long, value_name = "TIME", value_parser = files::parse_time)]
    pub rules_at: Option<i64>,
    /// One result per value of `brand` or `attribute:NAME` (a style code: its colours shown
    /// once), the best of each.
    #[arg(long, value_name = "FIELD")]
    pub collapse: Option<String>,
}

/// The channel a load sends on: `connect`ed, except for a dry run, which sends nothing and
/// gets a lazy channel that never opens.
async fn load_channel(options: &LoadOptions, url: &str, what: &str) -> anyhow::Result<Channel> {
    if options.dry_run {
        Ok(Endpoint::from_static("http://0.0.0.0:1").connect_lazy())
    } else {
        connect(url, what).await
    }
}

/// Connects to a service, failing fast with a message that says what to check.
///
/// # Errors
/// When the URL is malformed or nothing answers within 5 s.
pub async fn connect(url: &str, what: &str) -> anyhow::Result<Channel> {
    let full = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    Endpoint::from_shared(full.clone())
        .with_context(|| format!("{what} URL {full:?} is not valid"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("cannot reach the {what} at {full} (is `souk up` running?)"))
}

/// `message` with `authorization: Bearer <token>` when a token is set (admin RPCs).
///
/// # Errors
/// When the token is not a valid header value.
pub fn with_token<T>(message: T, token: &Option<String>) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token.as_deref().filter(|t| !t.is_empty()) {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}")
                .parse()
                .context("admin token is not a valid header value")?,
        );
    }
    Ok(request)
}

/// What a load did.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Good rows read (sent or not).
    pub rows: u64,
    /// Batches handed to the service.
    pub batches: u64,
    /// Rows in those batches: what the service has; the rest of `rows` were read after the
    /// last full batch of a load that stopped, and were never sent.
    pub sent: u64,
    pub errors: Vec<LineError>,
    pub elapsed: Duration,
    /// Set when bad lines exceeded `--max-errors` and the load stopped.
    pub stopped: bool,
}

impl LoadReport {
    fn print_errors(&self) {
        for e in self.errors.iter().take(20) {
            eprintln!("{e}");
        }
        if self.errors.len() > 20 {
            eprintln!("... and {} more bad lines", self.errors.len() - 20);
        }
    }
}

fn progress(size: u64, quiet: bool, label: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(size);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {bytes}/{total_bytes} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar
}

/// What a load needs to know about one file format and one RPC.
struct Load<T, Req> {
    /// Progress-bar label and the noun in messages ("triples", "items", "events").
    what: &'static str,
    /// What a batch the service took did ("loaded", "removed", "applied"), for the message of a
    /// load that stopped.
    done: &'static str,
    /// Rows per batch when `--batch-size` is not given.
    default_batch: usize,
    /// Parses the opened file into rows.
    rows: Box<dyn FnOnce(files::Counting<files::Opened>) -> files::Rows<T>>,
    /// Wraps one batch of rows into the streamed request message.
    wrap: fn(Vec<T>) -> Req,
}

/// Reads `path` on a blocking thread and hands batches to `send` as one client stream (with the
/// admin token attached). Bad lines are collected; past `max_errors` the reader stops, the
/// batches already sent stay loaded, and the load fails saying so.
async fn load_file<T, Req, Resp, F, Fut>(
    path: &Path,
    options: &LoadOptions,
    token: &Option<String>,
    load: Load<T, Req>,
    send: F,
) -> anyhow::Result<(LoadReport, Option<Resp>)>
where
    T: Send + 'static,
    Req: Send + 'static,
    F: FnOnce(tonic::Request<ReceiverStream<Req>>) -> Fut,
    Fut: std::future::Future<Output = Result<Resp, tonic::Status>>,
{
    let (reader, size) = files::open(path)?;
    let counter = reader.read.clone();
    let rows = (load.rows)(reader);
    let bar = progress(size, options.quiet, load.what);
    let default_batch = load.default_batch;
    let wrap = load.wrap;
    let started = Instant::now();
    let batch_size = options.batch_size.unwrap_or(default_batch).max(1);
    let (tx, rx) = tokio::sync::mpsc::channel::<Req>(4);
    let max_errors = options.max_errors;
    let dry_run = options.dry_run;
    let reader_bar = bar.clone();
    let reader = tokio::task::spawn_blocking(move || {
        let mut report = LoadReport::default();
        let mut batch = Vec::with_capacity(batch_size);
        let tick = |report: &LoadReport| {
            reader_bar.set_position(counter.load(Ordering::Relaxed));
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            reader_bar.set_message(format!(
                "{} rows, {:.0} rows/s",
                report.rows,
                report.rows as f64 / secs
            ));
        };
        for row in rows {
            match row {
                Ok(item) => {
                    report.rows += 1;
                    if !dry_run {
                        batch.push(item);
                        if batch.len() == batch_size {
                            if tx.blocking_send(wrap(std::mem::take(&mut batch))).is_err() {
                                break; // the RPC ended (refused); its error explains why
                            }
                            report.batches += 1;
                            report.sent += batch_size as u64;
                            tick(&report);
                        }
                    }
                }
                Err(e) => {
                    report.errors.push(e);
                    if report.errors.len() > max_errors {
                        report.stopped = true;
                        return report;
                    }
                }
            }
        }
        let last = batch.len() as u64;
        if !batch.is_empty() && !dry_run && tx.blocking_send(wrap(batch)).is_ok() {
            report.batches += 1;
            report.sent += last;
        }
        tick(&report);
        report
    });
    let response = if dry_run {
        None
    } else {
        Some(send(with_token(ReceiverStream::new(rx), token)?).await)
    };
    let mut report = reader.await.context("file reader failed")?;
    report.elapsed = started.elapsed();
    bar.finish_and_clear();
    report.print_errors();
    let response = response.transpose().map_err(|status| {
        anyhow::anyhow!(
            "the service refused the load: {:?}: {}\n(the batches it took before stay stored; \
             loading the file again once that is mended stores the rest, and nothing twice)",
            status.code(),
            status.message()
        )
    })?;
    if report.stopped {
        return Err(stopped_error(&report, path, load.what, load.done, dry_run));
    }
    Ok((report, response))
}

/// The error of a load that met more bad lines than `--max-errors`: the batches sent before
/// the stop stay with the service (each was stored whole), and the good rows read after the
/// last of them were not sent.
fn stopped_error(
    report: &LoadReport,
    path: &Path,
    what: &str,
    done: &str,
    dry_run: bool,
) -> anyhow::Error {
    let head = format!(
        "{}: stopped after {} bad line(s) (--max-errors {})",
        path.display(),
        report.errors.len(),
        report.errors.len().saturating_sub(1),
    );
    let unsent = report.rows.saturating_sub(report.sent);
    if dry_run {
        anyhow::anyhow!("{head}; a dry run: nothing was sent")
    } else if report.batches == 0 {
        match unsent {
            0 => anyhow::anyhow!("{head}; nothing was sent"),
            n => anyhow::anyhow!(
                "{head}; nothing was sent: the {n} good {what} read before it were held back"
            ),
        }
    } else {
        let sent = format!(
            "{head}; {} {what} in {} batch(es) were sent before it and stay {done}",
            report.sent, report.batches
        );
        match unsent {
            0 => anyhow::anyhow!("{sent}"),
            n => anyhow::anyhow!("{sent}; the {n} read after them were not sent"),
        }
    }
}

/// Loads a triple file into the knowledge graph.
///
/// # Errors
/// When the file cannot be read, has more bad lines than allowed, or the service refuses.
pub async fn load_triples(
    channel: Channel,
    path: &Path,
    format: Option<TripleFormat>,
    options: &LoadOptions,
    token: &Option<String>,
) -> anyhow::Result<(LoadReport, Option<kg::LoadTriplesResponse>)> {
    let wrap = |triples: Vec<souk_kg_core::Triple>| kg::LoadTriplesRequest {
        triples: triples.into_iter().map(triple_pb).collect(),
        ..Default::default()
    };
    send_triples(channel, path, format, options, token, wrap, "loaded").await
}

/// Removes the triples a file lists from the knowledge graph (the file in any format
/// [`load_triples`] reads); triples the graph does not hold are counted in `not_found`.
///
/// # Errors
/// As [`load_triples`].
pub async fn delete_triples(
    channel: Channel,
    path: &Path,
    format: Option<TripleFormat>,
    options: &LoadOptions,
    token: &Option<String>,
) -> anyhow::Result<(LoadReport, Option<kg::LoadTriplesResponse>)> {
    let wrap = |triples: Vec<souk_kg_core::Triple>| kg::LoadTriplesRequest {
        remove: triples.into_iter().map(triple_pb).collect(),
        ..Default::default()
    };
    send_triples(channel, path, format, options, token, wrap, "removed").await
}

fn triple_pb(t: souk_kg_core::Triple) -> kg::Triple {
    kg::Triple {
        head: t.head,
        relation: t.relation,
        tail: t.tail,
    }
}

/// Checks entity names given on the command line.
///
/// # Errors
/// Naming the first that is not a valid entity id.
pub fn check_entities(entities: &[String]) -> anyhow::Result<()> {
    for entity in entities {
        souk_kg_core::validate_field("entity", entity)
            .map_err(|e| anyhow::anyhow!("--entity {entity:?}: {e}"))?;
    }
    Ok(())
}

/// Removes every edge of `entities` from the knowledge graph in one atomic batch.
///
/// # Errors
/// When a name is not a valid entity id, or the service is unreachable or refuses.
pub async fn clear_entities(
    channel: Channel,
    entities: Vec<String>,
    token: &Option<String>,
) -> anyhow::Result<kg::LoadTriplesResponse> {
    check_entities(&entities)?;
    let mut client = kg::knowledge_graph_client::KnowledgeGraphClient::new(channel);
    let batch = kg::LoadTriplesRequest {
        remove_entities: entities,
        ..Default::default()
    };
    let request = with_token(futures::stream::iter(vec![batch]), token)?;
    let response = client.load_triples(request).await.map_err(|status| {
        anyhow::anyhow!(
            "the service refused the removal: {:?}: {}",
            status.code(),
            status.message()
        )
    })?;
    Ok(response.into_inner())
}

/// Streams a triple file's batches, each wrapped by `wrap`, as one `LoadTriples` call.
async fn send_triples(
    channel: Channel,
    path: &Path,
    format: Option<TripleFormat>,
    options: &LoadOptions,
    token: &Option<String>,
    wrap: fn(Vec<souk_kg_core::Triple>) -> kg::LoadTriplesRequest,
    done: &'static str,
) -> anyhow::Result<(LoadReport, Option<kg::LoadTriplesResponse>)> {
    let format = format
        .or_else(|| TripleFormat::from_path(path))
        .with_context(|| {
            format!(
                "{}: cannot tell the format from the extension; pass --format",
                path.display()
            )
        })?;
    let mut client = kg::knowledge_graph_client::KnowledgeGraphClient::new(channel)
        .max_decoding_message_size(64 << 20);
    let file = path.to_path_buf();
    let load = Load {
        what: "triples",
        done,
        default_batch: 10_000,
        rows: Box::new(move |reader| files::triples(&file, reader, format)),
        wrap,
    };
    load_file(path, options, token, load, |request| async move {
        client.load_triples(request).await.map(|r| r.into_inner())
    })
    .await
}

/// Loads a catalog CSV into the ranker.
///
/// # Errors
/// As [`load_triples`].
pub async fn load_catalog(
    channel: Channel,
    path: &Path,
    options: &LoadOptions,
    token: &Option<String>,
) -> anyhow::Result<(LoadReport, Option<rk::UpsertItemsResponse>)> {
    let mut client = rk::ranker_client::RankerClient::new(channel);
    let file = path.to_path_buf();
    let load = Load {
        what: "items",
        done: "stored",
        default_batch: 64,
        rows: Box::new(move |reader| files::catalog(&file, reader)),
        wrap: |items| rk::UpsertItemsRequest { items },
    };
    load_file(path, options, token, load, |request| async move {
        client.upsert_items(request).await.map(|r| r.into_inner())
    })
    .await
}

/// What `soukctl catalog sync-graph` prints of the ranker's answer.
pub fn sync_graph_report(r: &rk::SyncGraphResponse, dry_run: bool) -> String {
    use files::thousands;
    let plural = |n: u64, one: &str, many: &str| {
        format!("{} {}", thousands(n), if n == 1 { one } else { many })
    };
    let mut report = format!(
        "checked {}: {} from what the catalog holds",
        plural(r.items, "item", "items"),
        match r.differing {
            0 => "the graph states none differently".to_string(),
            n => format!(
                "the graph states {} differently",
                plural(n, "item", "items")
            ),
        }
    );
    if r.differing > 0 {
        let (stale, missing) = (
            plural(r.stale_facts, "stale fact", "stale facts"),
            plural(r.missing_facts, "missing fact", "missing facts"),
        );
        report += &if dry_run {
            format!(" ({stale}, {missing}; nothing changed: --dry-run)")
        } else {
            format!(" ({stale} removed, {missing} added)")
        };
        let more = r.differing.saturating_sub(r.differing_ids.len() as u64);
        report += &format!("\n  {}", r.differing_ids.join(", "));
        if more > 0 {
            report += &format!(" and {} more", thousands(more));
        }
    }
    if r.queued_batches > 0 {
        report += &format!(
            "\n{} of these changes wait for the graph (it stopped answering): sent when it answers",
            plural(r.queued_batches, "batch", "batches")
        );
    }
    if r.partly_read > 0 {
        report += &format!(
            "\n{} over 1,000 edges of one relation, checked on the first 1,000",
            plural(r.partly_read, "item has", "items have")
        );
    }
    report
}

/// Share of the catalog `--delete-missing` deletes without `--allow-large-delete`.
pub const MAX_DELETE_SHARE: f64 = 0.2;

/// After a full feed from `path` was loaded: deletes the catalog's items the file does not
/// list (`soukctl catalog load --delete-missing`), past [`MAX_DELETE_SHARE`] of the catalog
/// only when `allow_large` is set. Returns (items deleted, items the catalog held).
///
/// # Errors
/// When the file cannot be read again or has a bad line (nothing is deleted then), when the
/// share is too large, or when the ranker refuses.
pub async fn delete_missing(
    channel: Channel,
    path: &Path,
    token: &Option<String>,
    allow_large: bool,
) -> anyhow::Result<(u64, u64)> {
    let file = path.to_path_buf();
    let listed: std::collections::HashSet<String> = tokio::task::spawn_blocking(move || {
        let reader = std::fs::File::open(&file)
            .with_context(|| format!("cannot open {}", file.display()))?;
        files::catalog(&file, reader)
            .map(|row| row.map(|item| item.id).map_err(|e| anyhow::anyhow!("{e}")))
            .collect::<anyhow::Result<std::collections::HashSet<String>>>()
    })
    .await??;
    let mut client = rk::ranker_client::RankerClient::new(channel);
    let (mut held, mut missing, mut after) = (0u64, Vec::new(), String::new());
    loop {
        let page = client
            .list_item_ids(rk::ListItemIdsRequest {
                after: after.clone(),
                limit: 10_000,
            })
            .await?
            .into_inner();
        held += page.ids.len() as u64;
        if let Some(last) = page.ids.last() {
            after = last.clone();
        }
        missing.extend(page.ids.into_iter().filter(|id| !listed.contains(id)));
        if !page.more {
            break;
        }
    }
    if !allow_large && missing.len() as f64 > MAX_DELETE_SHARE * held as f64 {
        anyhow::bail!(
            "{}: the file leaves out {} of the catalog's {held} items, more than {:.0}%: nothing \
             deleted (a cut-off file?); --allow-large-delete deletes them",
            path.display(),
            missing.len(),
            MAX_DELETE_SHARE * 100.0
        );
    }
    let mut deleted = 0;
    for ids in missing.chunks(1000) {
        deleted += client
            .delete_items(with_token(
                rk::DeleteItemsRequest { ids: ids.to_vec() },
                token,
            )?)
            .await?
            .into_inner()
            .deleted;
    }
    Ok((deleted, held))
}

/// Sends a CSV of item updates (price, stock, attributes by id) to the ranker's
/// `UpdateItems`.
///
/// # Errors
/// As [`load_triples`].
pub async fn update_catalog(
    channel: Channel,
    path: &Path,
    options: &LoadOptions,
    token: &Option<String>,
) -> anyhow::Result<(LoadReport, Option<rk::UpdateItemsResponse>)> {
    let mut client = rk::ranker_client::RankerClient::new(channel);
    let file = path.to_path_buf();
    let load = Load {
        what: "updates",
        done: "applied",
        default_batch: 512,
        rows: Box::new(move |reader| files::item_updates(&file, reader)),
        wrap: |updates| rk::UpdateItemsRequest { updates },
    };
    load_file(path, options, token, load, |request| async move {
        client.update_items(request).await.map(|r| r.into_inner())
    })
    .await
}

/// Loads an events CSV into the ranker.
///
/// # Errors
/// As [`load_triples`].
pub async fn load_events(
    channel: Channel,
    path: &Path,
    options: &LoadOptions,
    token: &Option<String>,
) -> anyhow::Result<(LoadReport, Option<rk::RecordInteractionsResponse>)> {
    let mut client = rk::ranker_client::RankerClient::new(channel);
    let file = path.to_path_buf();
    let load = Load {
        what: "events",
        done: "recorded",
        default_batch: 2_000,
        rows: Box::new(move |reader| files::events(&file, reader)),
        wrap: |interactions| rk::RecordInteractionsRequest { interactions },
    };
    load_file(path, options, token, load, |request| async move {
        client
            .record_interactions(request)
            .await
            .map(|r| r.into_inner())
    })
    .await
}

/// Prints a ranking as a numbered list with reasons, numbered from `offset + 1` (the request's
/// offset: a later page).
///
/// # Errors
/// When writing fails.
pub fn print_ranking(
    out: &mut impl Write,
    ranking: &rk::RankResponse,
    offset: u32,
) -> std::io::Result<()> {
    if let Some(price) = &ranking.price_from_query {
        let bound = match (price.min_price, price.max_price) {
            (Some(lo), Some(hi)) => format!("{lo:.2} to {hi:.2}"),
            (None, Some(hi)) => format!("up to {hi:.2}"),
            (Some(lo), None) => format!("from {lo:.2}"),
            (None, None) => "any".to_string(),
        };
        writeln!(
            out,
            "  price from your search \"{}\": {bound}",
            price.phrase
        )?;
    }
    for banner in &ranking.banners {
        writeln!(out, "  [shop banner] {banner}")?;
    }
    if !ranking.redirect.is_empty() {
        writeln!(
            out,
            "  the shop sends this search to {} (results below for a caller that stays)",
            ranking.redirect
        )?;
    }
    if ranking.words_matched == Some(false) {
        writeln!(
            out,
            "  no item holds these words: nearest by meaning and the other signals"
        )?;
    }
    if !ranking.corrected_query.is_empty() {
        writeln!(out, "  showing results for \"{}\"", ranking.corrected_query)?;
    }
    if !ranking.widened_to.is_empty() {
        writeln!(out, "  also matching: {}", ranking.widened_to.join(", "))?;
    }
    if !ranking.missing_signals.is_empty() {
        writeln!(
            out,
            "  (degraded: no {} signal for this request)",
            ranking.missing_signals.join(", ")
        )?;
    }
    if ranking.items.is_empty() {
        writeln!(out, "  no results")?;
    }
    for (i, item) in ranking.items.iter().enumerate() {
        writeln!(
            out,
            "{:>3}. {}  [{}]  {}  {:.2}  score {:.3}{}{}",
            i + offset as usize + 1,
            item.title,
            item.id,
            item.category.last().map(String::as_str).unwrap_or("-"),
            item.price,
            item.score,
            if item.pinned { "  (pinned)" } else { "" },
            // A collapsed ranking's item stands for its group.
            match item.group_size {
                0 | 1 => String::new(),
                n => format!("  (+{} more alike)", n - 1),
            }
        )?;
        for reason in &item.reasons {
            writeln!(out, "       - {reason}")?;
        }
    }
    for facet in &ranking.facets {
        let mut shown: Vec<String> = facet
            .values
            .iter()
            .map(|v| format!("{} ({})", v.value, v.count))
            .collect();
        if facet.other_values > 0 {
            shown.push(format!("and {} more", facet.other_values));
        }
        if let (Some(low), Some(high)) = (facet.min_price, facet.max_price) {
            shown.push(format!("{low:.2} to {high:.2}"));
        }
        let shown = if shown.is_empty() {
            "none".to_string()
        } else {
            shown.join(", ")
        };
        writeln!(out, "  {}: {shown}", facet.name)?;
    }
    Ok(())
}

fn direction(text: &str) -> anyhow::Result<kg::Direction> {
    match text {
        "in" => Ok(kg::Direction::In),
        "out" => Ok(kg::Direction::Out),
        "both" => Ok(kg::Direction::Both),
        other => anyhow::bail!("--direction {other:?}: expected in, out or both"),
    }
}

/// Says so when some stored items' facts did not reach the knowledge graph: the catalog
/// has them, the graph does not (and may still hold their old values) until they are sent
/// again.
fn warn_unsynced(file: &Path, stored: u64, synced: u64) {
    if synced < stored {
        eprintln!(
            "warning: {}: the facts of {} of the {stored} items stored did not reach the \
             knowledge graph: unreachable (the ranker keeps them and sends them, in order, \
             when it answers: metric souk_graph_outbox_batches) or refused (see the ranker's \
             log)",
            file.display(),
            stored - synced
        );
    }
}

/// What `kg load` and `kg delete` do with a file's triples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TripleEdit {
    Load,
    Delete,
}

/// `kg load` / `kg delete`: each file as one stream of batches, reported when it ends.
async fn triple_files(
    files: Vec<PathBuf>,
    options: &LoadOptions,
    format: Option<TripleFormat>,
    ep: &Endpoints,
    edit: TripleEdit,
) -> anyhow::Result<()> {
    let channel = load_channel(options, &ep.kg, "knowledge graph").await?;
    for path in files {
        let ch = channel.clone();
        let (report, response) = match edit {
            TripleEdit::Load => load_triples(ch, &path, format, options, &ep.token).await?,
            TripleEdit::Delete => delete_triples(ch, &path, format, options, &ep.token).await?,
        };
        let extra = response
            .map(|r| match edit {
                TripleEdit::Load => format!(", {} new triples", r.inserted),
                TripleEdit::Delete => {
                    format!(", {} removed, {} not in the graph", r.removed, r.not_found)
                }
            })
            .unwrap_or_else(|| " (dry run)".into());
        report_load(&path.display().to_string(), &report, extra);
    }
    Ok(())
}

fn report_load(what: &str, report: &LoadReport, extra: String) {
    let secs = report.elapsed.as_secs_f64().max(1e-6);
    eprintln!(
        "{what}: {} rows in {} batches, {:.2}s ({:.0} rows/s){}{}",
        report.rows,
        report.batches,
        secs,
        report.rows as f64 / secs,
        if report.errors.is_empty() {
            String::new()
        } else {
            format!(", {} bad lines skipped", report.errors.len())
        },
        extra
    );
}

/// Runs one CLI command.
///
/// # Errors
/// Whatever the command hit: unreachable services, bad files, refused requests.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let ep = cli.endpoints;
    match cli.command {
        Command::Eval(command) => eval::run(command, &ep.encoder).await?,
        Command::Train(command) => train::run(command, &ep).await?,
        Command::Bench(BenchCommand::Rank(args)) => {
            bench::rank(args, &ep.ranker).await?;
        }
        Command::Bench(BenchCommand::Embed(args)) => {
            bench::embed(args, &ep.encoder).await?;
        }
        Command::Kg(KgCommand::Eval(args)) => {
            tokio::task::spawn_blocking(move || kgembed::eval(&args)).await??;
        }
        Command::Kg(KgCommand::Train(args)) => {
            let mut client = kg::knowledge_graph_client::KnowledgeGraphClient::new(
                connect(&ep.kg, "knowledge graph").await?,
            );
            let mut stream = client
                .train_embeddings(with_token(args.request(), &ep.token)?)
                .await?
                .into_inner();
            while let Some(progress) = stream.message().await? {
                if progress.done {
                    println!("embeddings stored and serving");
                } else {
                    println!(
                        "epoch {:>4}/{} loss {:.4} {:>8.0} triples/s",
                        progress.epoch, progress.epochs, progress.loss, progress.triples_per_second
                    );
                }
            }
        }
        Command::Kg(KgCommand::Similar {
            entity,
            limit,
            prefix,
        }) => {
            let mut client = kg::knowledge_graph_client::KnowledgeGraphClient::new(
                connect(&ep.kg, "knowledge graph").await?,
            );
            let request = kg::SimilarEntitiesRequest {
                entity,
                limit,
                prefix,
            };
            let r = ask(ep.answer_timeout(), "knowledge graph", request, |r| {
                client.similar_entities(r)
            })
            .await?;
            for e in &r.entities {
                println!("{:.4}  {}", e.score, e.entity);
            }
        }
        Command::Kg(KgCommand::Predict {
            head,
            relation,
            tail,
            limit,
            new_only,
            any_entity,
        }) => {
            let mut client = kg::knowledge_graph_client::KnowledgeGraphClient::new(
                connect(&ep.kg, "knowledge graph").await?,
            );
            let request = kg::PredictLinksRequest {
                head,
                relation,
                tail,
                limit,
                filter_known: new_only,
                any_entity,
            };
            let r = ask(ep.answer_timeout(), "knowledge graph", request, |r| {
                client.predict_links(r)
            })
            .await?;
            for e in &r.entities {
                println!("{:.4}  {}", e.score, e.entity);
            }
        }
        Command::Kg(KgCommand::Load {
            files,
            options,
            format,
        }) => {
            if files.is_empty() {
                anyhow::bail!("name at least one file of triples");
            }
            triple_files(files, &options, format, &ep, TripleEdit::Load).await?
        }
        Command::Kg(KgCommand::Delete {
            files,
            entities,
            options,
            format,
        }) => {
            if files.is_empty() && entities.is_empty() {
                anyhow::bail!("name at least one file of triples or an --entity to delete");
            }
            if !entities.is_empty() {
                let named = entities.len();
                if options.dry_run {
                    check_entities(&entities)?;
                    println!("{named} entities (dry run)");
                } else {
                    let channel = connect(&ep.kg, "knowledge graph").await?;
                    let r = clear_entities(channel, entities, &ep.token).await?;
                    println!(
                        "{named} entities: {} edges removed, {} entities not in the graph",
                        r.removed, r.not_found
                    );
                }
            }
            triple_files(files, &options, format, &ep, TripleEdit::Delete).await?
        }
        Command::Kg(KgCommand::Neighbors {
            entity,
            relation,
            direction: d,
            limit,
        }) => {
            let mut client = kg::knowledge_graph_client::KnowledgeGraphClient::new(
                connect(&ep.kg, "knowledge graph").await?,
            );
            let request = kg::NeighborsRequest {
                entity: entity.clone(),
                relation,
                direction: direction(&d)? as i32,
                limit,
            };
            let r = ask(ep.answer_timeout(), "knowledge graph", request, |r| {
                client.neighbors(r)
            })
            .await?;
            for n in &r.neighbors {
                let arrow = if n.direction == kg::Direction::In as i32 {
                    "<-"
                } else {
                    "->"
                };
                println!("{entity} {arrow}{}{arrow} {}", n.relation, n.entity);
            }
            println!("({} of {} edges)", r.neighbors.len(), r.total);
        }
        Command::Kg(KgCommand::Paths {
            from,
            to,
            max_hops,
            limit,
        }) => {
            let mut client = kg::knowledge_graph_client::KnowledgeGraphClient::new(
                connect(&ep.kg, "knowledge graph").await?,
            );
            let request = kg::PathsRequest {
                sources: from,
                targets: to,
                max_hops,
                limit,
                relations: vec![],
            };
            let r = ask(ep.answer_timeout(), "knowledge graph", request, |r| {
                client.paths(r)
            })
            .await?;
            for p in &r.paths {
                let mut line = p.source.clone();
                for s in &p.steps {
                    if s.direction == kg::Direction::In as i32 {
                        line.push_str(&format!(" <-{}- {}", s.relation, s.entity));
                    } else {
                        line.push_str(&format!(" -{}-> {}", s.relation, s.entity));
                    }
                }
                println!("{line}");
            }
            for entity in &r.unknown {
                println!("{entity}: not in the graph");
            }
            if r.paths.is_empty() {
                println!("no path within {max_hops} hops");
            }
            if r.truncated {
                println!("(search truncated at a hub or its node budget)");
            }
        }
        Command::Catalog(CatalogCommand::Load {
            file,
            options,
            delete_missing: delete,
            allow_large_delete,
        }) => {
            let channel = load_channel(&options, &ep.ranker, "ranker").await?;
            let (report, response) = load_catalog(channel, &file, &options, &ep.token).await?;
            if let Some(r) = &response {
                warn_unsynced(&file, r.upserted, r.graph_synced);
            }
            let extra = response
                .map(|r| {
                    format!(
                        ", {} items stored ({} with their text unchanged, not embedded again), {} synced to the graph ({} old facts removed)",
                        r.upserted, r.kept_vectors, r.graph_synced, r.graph_facts_removed
                    )
                })
                .unwrap_or_else(|| " (dry run)".into());
            report_load(&file.display().to_string(), &report, extra);
            if delete && !options.dry_run {
                if !report.errors.is_empty() {
                    anyhow::bail!(
                        "{}: {} bad line(s) were skipped, so the file may not list every item: \
                         nothing deleted (--delete-missing)",
                        file.display(),
                        report.errors.len()
                    );
                }
                let (deleted, held) = delete_missing(
                    connect(&ep.ranker, "ranker").await?,
                    &file,
                    &ep.token,
                    allow_large_delete,
                )
                .await?;
                println!(
                    "{}: {deleted} of the catalog's {held} items were not in the file: deleted",
                    file.display()
                );
            }
        }
        Command::Catalog(CatalogCommand::Update { file, options }) => {
            let channel = load_channel(&options, &ep.ranker, "ranker").await?;
            let (report, response) = update_catalog(channel, &file, &options, &ep.token).await?;
            if let Some(r) = &response {
                warn_unsynced(&file, r.updated, r.graph_synced);
            }
            let extra = response
                .map(|r| {
                    let mut extra = format!(
                        ", {} items updated, {} synced to the graph ({} old facts removed)",
                        r.updated, r.graph_synced, r.graph_facts_removed
                    );
                    if r.unknown > 0 {
                        extra.push_str(&format!(
                            ", {} not in the catalog (not stored): {}{}",
                            r.unknown,
                            r.unknown_ids.join(", "),
                            if r.unknown > r.unknown_ids.len() as u64 {
                                ", ..."
                            } else {
                                ""
                            }
                        ));
                    }
                    extra
                })
                .unwrap_or_else(|| " (dry run)".into());
            report_load(&file.display().to_string(), &report, extra);
        }
        Command::Catalog(CatalogCommand::Delete { ids }) => {
            let mut client =
                rk::ranker_client::RankerClient::new(connect(&ep.ranker, "ranker").await?);
            let r = client
                .delete_items(with_token(rk::DeleteItemsRequest { ids }, &ep.token)?)
                .await?
                .into_inner();
            println!("deleted {}, not found {}", r.deleted, r.not_found);
        }
        Command::Catalog(CatalogCommand::SyncGraph { dry_run }) => {
            let mut client =
                rk::ranker_client::RankerClient::new(connect(&ep.ranker, "ranker").await?);
            let r = client
                .sync_graph(with_token(rk::SyncGraphRequest { dry_run }, &ep.token)?)
                .await?
                .into_inner();
            println!("{}", sync_graph_report(&r, dry_run));
        }
        Command::Events(EventsCommand::Forget { users }) => {
            let mut client =
                rk::ranker_client::RankerClient::new(connect(&ep.ranker, "ranker").await?);
            let request = rk::ForgetUsersRequest { user_ids: users };
            let r = client
                .forget_users(with_token(request, &ep.token)?)
                .await?
                .into_inner();
            println!(
                "forgot {} users with events, {} events removed",
                r.users, r.events
            );
        }
        Command::Events(EventsCommand::Load { file, options }) => {
            let channel = load_channel(&options, &ep.ranker, "ranker").await?;
            let (report, response) = load_events(channel, &file, &options, &ep.token).await?;
            let extra = response
                .map(|r| {
                    let mut extra = format!(
                        ", {} recorded ({} for items not in the catalog)",
                        r.recorded, r.unknown_items
                    );
                    if r.queued > 0 {
                        extra += &format!(
                            ", {} queued on the replica for its unreachable primary",
                            r.queued
                        );
                    }
                    if r.duplicates > 0 {
                        extra += &format!(
                            ", {} already stored (identical events are stored once)",
                            r.duplicates
                        );
                    }
                    if r.forgotten > 0 {
                        extra += &format!(
                            ", {} not recorded: of shoppers forgotten after them",
                            r.forgotten
                        );
                    }
                    extra
                })
                .unwrap_or_else(|| " (dry run)".into());
            report_load(&file.display().to_string(), &report, extra);
        }
        Command::Rank(args) => {
            let mut client =
                rk::ranker_client::RankerClient::new(connect(&ep.ranker, "ranker").await?);
            let request = rk::RankRequest {
                user_id: args.user,
                query: args.query,
                item_id: args.item,
                sort: match args.sort {
                    SortArg::Relevance => rk::Sort::Relevance,
                    SortArg::PriceAsc => rk::Sort::PriceAscending,
                    SortArg::PriceDesc => rk::Sort::PriceDescending,
                    SortArg::Popular => rk::Sort::Popularity,
                } as i32,
                weights: args
                    .weights
                    .map(|[dense, bm25, cf, kg, popularity]| rk::FusionWeights {
                        dense,
                        bm25,
                        cf,
                        kg,
                        popularity,
                    }),
                k: args.k,
                filters: Some(rk::Filters {
                    category: args.category,
                    brands: args.brands,
                    min_price: args.min_price,
                    max_price: args.max_price,
                    in_stock_only: args.in_stock,
                    attributes: args
                        .attributes
                        .into_iter()
                        .map(|a| rk::AttributeFilter {
                            name: a.name,
                            values: a.values,
                        })
                        .collect(),
                }),
                exclude: args.exclude,
                candidate_ids: vec![],
                explain: true,
                diversity: args.diversity,
                include_purchased: false,
                all_signals: args.all_signals,
                offset: args.offset,
                verbatim: args.verbatim,
                prefix: args.prefix,
                facets: args.facets,
                rules_at_ms: args.rules_at,
                collapse: args.collapse.unwrap_or_default(),
            };
            let started = Instant::now();
            let ranking = ask(ep.answer_timeout(), "ranker", request, |r| client.rank(r)).await?;
            if args.raw {
                println!("{ranking:#?}");
            } else {
                print_ranking(&mut std::io::stdout(), &ranking, args.offset)?;
                eprintln!(
                    "({} candidates, model {}, {:.1} ms)",
                    ranking.candidates,
                    ranking.model_version,
                    started.elapsed().as_secs_f64() * 1e3
                );
            }
        }
        Command::Suggest { query, k } => {
            let mut client =
                rk::ranker_client::RankerClient::new(connect(&ep.ranker, "ranker").await?);
            let request = rk::SuggestRequest { query, k };
            let response = ask(ep.answer_timeout(), "ranker", request, |r| {
                client.suggest(r)
            })
            .await?;
            for s in &response.suggestions {
                println!("{}  ({} items)", s.query, s.items);
            }
        }
        Command::Profile { user, limit } => {
            let mut client =
                rk::ranker_client::RankerClient::new(connect(&ep.ranker, "ranker").await?);
            let request = rk::UserProfileRequest {
                user_id: user,
                limit,
            };
            let p = ask(ep.answer_timeout(), "ranker", request, |r| {
                client.user_profile(r)
            })
            .await?;
            println!("items interacted with: {}", p.interactions);
            for (label, list) in [
                ("categories", &p.categories),
                ("brands", &p.brands),
                ("attributes", &p.attributes),
            ] {
                let shown: Vec<String> = list
                    .iter()
                    .map(|a| format!("{} ({:.0})", a.name, a.weight))
                    .collect();
                println!("{label}: {}", shown.join(", "));
            }
            println!("recent: {}", p.recent_items.join(", "));
            if !p.missing_signals.is_empty() {
                println!(
                    "(from the catalog: the knowledge graph did not answer; missing {})",
                    p.missing_signals.join(", ")
                );
            }
        }
        Command::Embed {
            texts,
            kind,
            prompt,
            dimensions,
        } => {
            let mut client =
                enc::encoder_client::EncoderClient::new(connect(&ep.encoder, "encoder").await?);
            let request = enc::EmbedRequest {
                texts: texts.clone(),
                truncate: None,
                normalize: None,
                kind: match kind {
                    EmbedKind::Text => enc::TextKind::Unspecified,
                    EmbedKind::Query => enc::TextKind::Query,
                    EmbedKind::Document => enc::TextKind::Document,
                }
                .into(),
                prompt_name: prompt.clone(),
                dimensions,
            };
            let r = ask(ep.answer_timeout(), "encoder", request, |r| client.embed(r)).await?;
            let first = r.embeddings.first().map(|e| e.values.as_slice());
            for (i, (text, e)) in texts.iter().zip(&r.embeddings).enumerate() {
                let head: Vec<String> =
                    e.values.iter().take(4).map(|v| format!("{v:.4}")).collect();
                // Vectors are normalised: the dot product is the cosine.
                let similarity = match first {
                    Some(first) if i > 0 => format!(
                        ", cosine with the first {:.4}",
                        first.iter().zip(&e.values).map(|(a, b)| a * b).sum::<f32>()
                    ),
                    _ => String::new(),
                };
                println!(
                    "{text:?}: {} dims, {} tokens, [{} ...]{similarity}",
                    e.values.len(),
                    e.tokens,
                    head.join(", ")
                );
            }
        }
        Command::Stats => stats::print(&ep).await?,
        Command::Synonyms(SynonymsCommand::Load { file, dry_run }) => {
            let read = files::read_synonyms(&file)?;
            if dry_run {
                println!(
                    "{}: {} synonyms (dry run)",
                    file.display(),
                    read.checked.rules().len()
                );
                return Ok(());
            }
            let mut ranker =
                rk::ranker_client::RankerClient::new(connect(&ep.ranker, "ranker").await?);
            let request = rk::SetSynonymsRequest {
                synonyms: read.messages(),
            };
            let r = ranker
                .set_synonyms(with_token(request, &ep.token)?)
                .await?
                .into_inner();
            for i in r.finding_nothing {
                let line = read.lines.get(i as usize).copied().unwrap_or(0);
                eprintln!(
                    "{}:{line}: finds nothing: no item's words hold any of its phrases (or its replacement)",
                    file.display()
                );
            }
            println!("{}: {} synonyms in use", file.display(), r.synonyms);
        }
        Command::Synonyms(SynonymsCommand::List) => {
            let mut ranker =
                rk::ranker_client::RankerClient::new(connect(&ep.ranker, "ranker").await?);
            let r = ranker
                .get_synonyms(rk::GetSynonymsRequest {})
                .await?
                .into_inner();
            for synonym in r.synonyms {
                let phrases = synonym.phrases.join(", ");
                match synonym.replacement {
                    Some(to) => println!("{phrases} => {to}"),
                    None => println!("{phrases}"),
                }
            }
        }
        Command::Pins(PinsCommand::Load { file, dry_run }) => {
            let read = files::read_pins(&file)?;
            if dry_run {
                println!(
                    "{}: {} pin rules (dry run)",
                    file.display(),
                    read.checked.rules().len()
                );
                return Ok(());
            }
            let mut ranker =
                rk::ranker_client::RankerClient::new(connect(&ep.ranker, "ranker").await?);
            let request = rk::SetPinsRequest {
                rules: read.messages(),
            };
            let r = ranker
                .set_pins(with_token(request, &ep.token)?)
                .await?
                .into_inner();
            for id in r.missing_items {
                eprintln!(
                    "{}: {id:?} is not in the catalog (its rules show the other items until it is)",
                    file.display()
                );
            }
            println!("{}: {} pin rules in use", file.display(), r.rules);
        }
        Command::Pins(PinsCommand::List) => {
            let mut ranker =
                rk::ranker_client::RankerClient::new(connect(&ep.ranker, "ranker").await?);
            let r = ranker.get_pins(rk::GetPinsRequest {}).await?.into_inner();
            // How often each rule applied, and a scheduled rule's standing by this
            // machine's clock, as a comment the file format skips.
            let now_ms = souk_ranker_core::item::now_ms();
            for (i, rule) in r.rules.iter().enumerate() {
                match files::pin_note(rule, now_ms, r.applied.get(i).copied()) {
                    note if note.is_empty() => println!("{}", files::pin_line(rule)),
                    note => println!("{}  # {note}", files::pin_line(rule)),
                }
            }
        }
        Command::Reembed => {
            let mut ranker =
                rk::ranker_client::RankerClient::new(connect(&ep.ranker, "ranker").await?);
            let r = ranker
                .reembed(with_token(rk::ReembedRequest {}, &ep.token)?)
                .await?
                .into_inner();
            println!(
                "re-embedded {} items ({}-d vectors) in {:.1} s",
                r.items, r.dimension, r.seconds
            );
        }
        Command::Health => {
            let (text, all_serving) = health_report(&ep).await;
            print!("{text}");
            if !all_serving {
                anyhow::bail!("not every service is serving");
            }
        }
    }
    Ok(())
}

/// Default of `--timeout`: how long `health`, `stats` and the read commands (`rank`,
/// `suggest`, `profile`, `embed`, `kg neighbors|paths|similar|predict`) wait for a service, its
/// connection included: a service that takes the connection and never answers (stopped,
/// wedged, another program on its port) must not hold the command, nor the other services'
/// lines, during an incident. Loads, deletes, training and re-embedding wait as long as the
/// work takes: giving up on a write would not undo it.
pub const DEFAULT_TIMEOUT_S: u64 = 10;

/// `call`'s result, or an error saying it did not answer within `limit`.
async fn answered<T>(
    limit: Duration,
    call: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(limit, call)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {} s", limit.as_secs()))?
}

/// A read command's one call to a service: `call` gets `message` as a request carrying the
/// deadline (`grpc-timeout`, so the service drops the work too), and the answer must come within
/// `limit`. Past it, or when the service reports its own deadline expired, the error names the
/// service and the wait instead of tonic's "Timeout expired".
///
/// # Errors
/// The service's status, or the deadline.
pub async fn ask<M, R, Fut>(
    limit: Duration,
    what: &str,
    message: M,
    call: impl FnOnce(tonic::Request<M>) -> Fut,
) -> anyhow::Result<R>
where
    Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
{
    let late = || anyhow::anyhow!("the {what} did not answer within {} s", limit.as_secs());
    let mut request = tonic::Request::new(message);
    request.set_timeout(limit);
    match tokio::time::timeout(limit, call(request)).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status))
            if status.code() == tonic::Code::Cancelled && status.message() == "Timeout expired" =>
        {
            Err(late())
        }
        Ok(Err(status)) => Err(status.into()),
        Err(_) => Err(late()),
    }
}

/// `soukctl health`: one line per service, "NAME URL STATE", asked at once; a service that
/// cannot be reached, or does not answer in time, is UNREACHABLE with the reason. Also returns
/// whether all three are SERVING.
pub async fn health_report(ep: &Endpoints) -> (String, bool) {
    let (encoder, kg, ranker) = tokio::join!(
        answered(ep.answer_timeout(), health(&ep.encoder)),
        answered(ep.answer_timeout(), health(&ep.kg)),
        answered(ep.answer_timeout(), health(&ep.ranker)),
    );
    let mut text = String::new();
    let mut all_serving = true;
    for (name, url, state) in [
        ("encoder", &ep.encoder, encoder),
        ("knowledge-graph", &ep.kg, kg),
        ("ranker", &ep.ranker, ranker),
    ] {
        let state = state.unwrap_or_else(|e| format!("UNREACHABLE ({e:#})"));
        all_serving &= state == "SERVING";
        text.push_str(&format!("{name:<16} {url:<28} {state}\n"));
    }
    (text, all_serving)
}

/// The grpc.health.v1 status of a server ("SERVING", "NOT_SERVING", ...).
///
/// # Errors
/// When the server cannot be reached.
pub async fn health(url: &str) -> anyhow::Result<String> {
    let channel = connect(url, "service").await?;
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let r = client
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner();
    Ok(
        match tonic_health::pb::health_check_response::ServingStatus::try_from(r.status) {
            Ok(s) => s.as_str_name().to_string(),
            Err(_) => format!("UNKNOWN({})", r.status),
        },
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn a_sync_graph_report_says_what_differed_and_what_was_done() {
        let answer = rk::SyncGraphResponse {
            items: 12_000,
            differing: 102,
            differing_ids: (0..100).map(|i| format!("p{i}")).collect(),
            stale_facts: 1,
            missing_facts: 2_400,
            ..Default::default()
        };
        let report = sync_graph_report(&answer, false);
        assert!(report.starts_with(
            "checked 12,000 items: the graph states 102 items differently from what the catalog \
             holds (1 stale fact removed, 2,400 missing facts added)\n  p0, p1, "
        ));
        assert!(report.ends_with("p99 and 2 more"), "{report}");
        assert!(sync_graph_report(&answer, true).contains("nothing changed: --dry-run"));
        let waiting = rk::SyncGraphResponse {
            queued_batches: 2,
            ..answer.clone()
        };
        assert!(sync_graph_report(&waiting, false).ends_with(
            "\n2 batches of these changes wait for the graph (it stopped answering): \
             sent when it answers"
        ));
        let clean = rk::SyncGraphResponse {
            items: 1,
            partly_read: 1,
            ..Default::default()
        };
        assert_eq!(
            sync_graph_report(&clean, false),
            "checked 1 item: the graph states none differently from what the catalog holds\n\
             1 item has over 1,000 edges of one relation, checked on the first 1,000"
        );
    }

    /// `--attr` takes NAME=VALUE[,VALUE...], repeated; a malformed one is a usage error.
    #[test]
    fn rank_reads_attribute_filters() {
        let cli = Cli::try_parse_from([
            "soukctl",
            "rank",
            "-q",
            "headphones",
            "--attr",
            "color=black, navy",
            "--attr",
            "connectivity=bluetooth",
        ])
        .unwrap();
        let Command::Rank(args) = cli.command else {
            panic!("not a rank command: {cli:?}");
        };
        let attr = |name: &str, values: &[&str]| AttributeArg {
            name: name.into(),
            values: values.iter().map(|v| (*v).to_string()).collect(),
        };
        assert_eq!(
            args.attributes,
            [
                attr("color", &["black", "navy"]),
                attr("connectivity", &["bluetooth"])
            ]
        );
        for bad in ["color", "=black", "color=", "color=,"] {
            let err = Cli::try_parse_from(["soukctl", "rank", "--attr", bad]).unwrap_err();
            assert!(err.to_string().contains("--attr"), "{bad}: {err}");
        }
    }
}
