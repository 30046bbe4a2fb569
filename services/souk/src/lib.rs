//! The all-in-one `souk` binary: the encoder, knowledge-graph and ranker servers in one
//! process on three loopback ports, still talking gRPC to each other, with embedded sled
//! storage under one data directory. `souk demo` starts them, loads `kg-data/` when the stores
//! are empty, prints rankings with reasons, and stops.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use souk_encoder::EncoderArgs;
use souk_kg::KgArgs;
use souk_proto::kg::v1 as kg;
use souk_proto::ranker::v1 as rk;
use souk_ranker::RankerArgs;
use souk_shared::config::ServerArgs;
use tokio::net::TcpListener;

/// souk on one machine.
#[derive(Debug, Parser)]
#[command(name = "souk", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the three services until Ctrl-C or SIGTERM.
    Up(UpArgs),
    /// Start the services, load the demo shop if the stores are empty, print rankings, stop.
    Demo {
        #[command(flatten)]
        up: UpArgs,
        /// Directory with products.csv, triples.tsv and events.csv.
        #[arg(long, default_value = "kg-data")]
        demo_data: PathBuf,
    },
}

#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Where the stores live (`kg/` and `ranker/` inside).
    #[arg(long, env = "SOUK_DATA_DIR", default_value = "souk-data")]
    pub data_dir: PathBuf,
    /// Model directory for the encoder.
    #[arg(
        long,
        env = "SOUK_MODEL_DIR",
        default_value = "models/all-MiniLM-L6-v2"
    )]
    pub model_dir: PathBuf,
    #[arg(long, env = "SOUK_ENCODER_LISTEN", default_value = "127.0.0.1:50051")]
    pub encoder_listen: SocketAddr,
    #[arg(long, env = "SOUK_KG_LISTEN", default_value = "127.0.0.1:50052")]
    pub kg_listen: SocketAddr,
    #[arg(long, env = "SOUK_RANKER_LISTEN", default_value = "127.0.0.1:50053")]
    pub ranker_listen: SocketAddr,
    /// First of three ports for Prometheus `/metrics` (encoder, graph, ranker); unset: off.
    #[arg(long, env = "SOUK_METRICS_BASE_PORT")]
    pub metrics_base_port: Option<u16>,
    /// Encoder device: cpu or cuda:N.
    #[arg(long, env = "SOUK_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Catalog size from which the ranker takes dense candidates from an HNSW graph instead
    /// of scanning every item vector.
    #[arg(long, env = "SOUK_ANN_MIN_ITEMS", default_value_t = souk_ranker::DEFAULT_ANN_MIN_ITEMS)]
    pub ann_min_items: usize,
    /// Days after which an event counts half as much in an item's popularity (0: never).
    #[arg(long, env = "SOUK_POPULARITY_HALF_LIFE_DAYS", default_value_t = souk_ranker::POPULARITY_HALF_LIFE_DAYS)]
    pub popularity_half_life_days: f64,
    /// Keep only the first this many values of every item and query vector (Matryoshka
    /// truncation, for models trained for it; unset: whole vectors). Changing it later
    /// re-embeds the catalog as for a new model (`soukctl reembed`).
    #[arg(long, env = "SOUK_EMBEDDING_DIMENSIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub embedding_dimensions: Option<u32>,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// The three servers, bound and running.
pub struct Suite {
    pub encoder: SocketAddr,
    pub kg: SocketAddr,
    pub ranker: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<(&'static str, tokio::task::JoinHandle<anyhow::Result<()>>)>,
}

/// One server's flags: the shared ones, its own metrics port, and `--http-listen` for the
/// ranker alone (the service shops call; one address cannot serve three servers).
fn server_args(base: &ServerArgs, metrics_port: Option<u16>, ranker: bool) -> ServerArgs {
    ServerArgs {
        metrics_listen: metrics_port.map(|p| SocketAddr::from(([127, 0, 0, 1], p))),
        http_listen: base.http_listen.filter(|_| ranker),
        ..base.clone()
    }
}

/// Longest wait, once the servers are up, for the ranker to read the encoder's words (the
/// ranker asks every 100 ms at first; the encoder answers once its model is loaded, which
/// SERVING already says).
const LEXICON_WAIT: Duration = Duration::from_secs(10);

impl Suite {
    /// Binds the three ports and starts the servers (they turn SERVING as they get ready).
    ///
    /// # Errors
    /// When a port cannot be bound.
    pub async fn start(args: &UpArgs) -> anyhow::Result<Self> {
        let bind = |addr: SocketAddr, what: &'static str| async move {
            TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen on {addr} for the {what} (is another souk running?)")
            })
        };
        let (el, kl, rl) = (
            bind(args.encoder_listen, "encoder").await?,
            bind(args.kg_listen, "knowledge graph").await?,
            bind(args.ranker_listen, "ranker").await?,
        );
        let (encoder, kg, ranker) = (el.local_addr()?, kl.local_addr()?, rl.local_addr()?);
        let metrics = |i: u16| args.metrics_base_port.map(|p| p + i);
        let encoder_args = EncoderArgs {
            listen: encoder,
            model_dir: args.model_dir.clone(),
            device: args.device.clone(),
            dtype: "f32".into(),
            engine: "auto".into(),
            max_batch_tokens: 16_384,
            max_batch_texts: 512,
            queue_capacity: 256,
            inference_workers: 1,
            server: server_args(&args.server, metrics(0), false),
        };
        let kg_args = KgArgs {
            listen: kg,
            data_dir: args.data_dir.join("kg"),
            server: server_args(&args.server, metrics(1), false),
            compact_after: souk_kg::store::COMPACT_AFTER,
            compact_into: None,
        };
        let ranker_args = RankerArgs {
            listen: ranker,
            data_dir: args.data_dir.join("ranker"),
            encoder_url: format!("http://{encoder}"),
            kg_url: format!("http://{kg}"),
            dependency_timeout_ms: 300,
            load_timeout_ms: 120_000,
            query_cache_ttl_s: 300,
            embedding_dimensions: args.embedding_dimensions,
            ann_min_items: args.ann_min_items,
            popularity_half_life_days: args.popularity_half_life_days,
            user_id_key: None,
            encoder_check_ms: 30_000,
            reembed_on_model_change: false,
            primary: None,
            accept_new_primary_store: false,
            restore_from: None,
            prepare_downgrade: false,
            server: server_args(&args.server, metrics(2), true),
        };
        let (stop, watch) = tokio::sync::watch::channel(false);
        let signal = move || {
            let mut watch = watch.clone();
            async move {
                let _ = watch.wait_for(|stop| *stop).await;
            }
        };
        let tasks = vec![
            (
                "encoder",
                tokio::spawn(souk_encoder::serve(el, encoder_args, signal())),
            ),
            (
                "knowledge-graph",
                tokio::spawn(souk_kg::serve(kl, kg_args, signal())),
            ),
            (
                "ranker",
                tokio::spawn(souk_ranker::serve(rl, ranker_args, signal())),
            ),
        ];
        Ok(Self {
            encoder,
            kg,
            ranker,
            stop,
            tasks,
        })
    }

    /// Waits until all three report SERVING and the ranker has read the encoder's words (its
    /// spelling lexicon, asked for in the background: a query before it may have a real word
    /// read as a misspelling), or one of them stops with an error.
    ///
    /// # Errors
    /// When a server fails to start (missing model, locked store) or `timeout` passes.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut serving = None;
        loop {
            if let Some(i) = self.tasks.iter().position(|(_, task)| task.is_finished()) {
                let (name, task) = self.tasks.swap_remove(i);
                let why = match task.await {
                    Ok(Ok(())) => anyhow::anyhow!("it returned before it was ready"),
                    Ok(Err(e)) => e,
                    Err(e) => anyhow::anyhow!("it panicked: {e}"),
                };
                return Err(why.context(format!("the {name} stopped during startup")));
            }
            let mut ready = true;
            for addr in [self.encoder, self.kg, self.ranker] {
                ready &= matches!(
                    soukctl::health(&format!("http://{addr}")).await.as_deref(),
                    Ok("SERVING")
                );
            }
            if ready {
                let since = *serving.get_or_insert_with(Instant::now);
                if self.lexicon_words().await > 0 {
                    return Ok(());
                }
                if since.elapsed() > LEXICON_WAIT {
                    eprintln!(
                        "the ranker has no spelling lexicon from the encoder after {LEXICON_WAIT:?}; \
                         going on without it (real words the catalog lacks may be read as misspellings)"
                    );
                    return Ok(());
                }
            }
            if started.elapsed() > timeout {
                anyhow::bail!("services not ready after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Words in the ranker's spelling lexicon (`Stats.lexicon_words`); 0 when it cannot say.
    async fn lexicon_words(&self) -> u32 {
        let Ok(channel) = soukctl::connect(&format!("http://{}", self.ranker), "ranker").await
        else {
            return 0;
        };
        rk::ranker_client::RankerClient::new(channel)
            .stats(rk::StatsRequest {})
            .await
            .map_or(0, |s| s.into_inner().lexicon_words)
    }

    /// Stops the servers and waits for them.
    ///
    /// # Errors
    /// The first error a server ended with.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        let mut first = None;
        for (name, task) in self.tasks {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first.get_or_insert(e.context(format!("{name} failed")));
                }
                Err(e) => {
                    first.get_or_insert(anyhow::anyhow!("{name} panicked: {e}"));
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Resolves when any server stops on its own (an error).
    async fn any_stopped(&mut self) -> String {
        loop {
            for (name, task) in &self.tasks {
                if task.is_finished() {
                    return (*name).to_string();
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Runs a `souk` command.
///
/// # Errors
/// Startup failures, load failures, or a server failing while running.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up(args) => {
            let mut suite = Suite::start(&args).await?;
            suite.wait_ready(Duration::from_secs(300)).await?;
            eprintln!(
                "souk is up: encoder {}, knowledge graph {}, ranker {} (data in {}). Ctrl-C stops it.",
                suite.encoder,
                suite.kg,
                suite.ranker,
                args.data_dir.display()
            );
            if let Some(http) = args.server.http_listen {
                eprintln!(
                    "JSON over HTTP: curl -H 'content-type: application/json' -d '{{\"query\": \"coffee\", \"k\": 3}}' http://{http}/souk.ranker.v1.Ranker/Rank"
                );
            }
            tokio::select! {
                () = souk_shared::shutdown::signal() => {}
                name = suite.any_stopped() => eprintln!("the {name} stopped; shutting down"),
            }
            suite.stop().await
        }
        Command::Demo { up, demo_data } => {
            let mut suite = Suite::start(&up).await?;
            let result = async {
                suite.wait_ready(Duration::from_secs(300)).await?;
                demo(&suite, &up, &demo_data).await
            }
            .await;
            let stopped = suite.stop().await;
            result.and(stopped)
        }
    }
}

/// The user in `events.csv` with the most purchases: a returning shopper worth showing.
fn returning_user(events: &Path) -> anyhow::Result<String> {
    let mut reader =
        csv::Reader::from_path(events).with_context(|| format!("{}", events.display()))?;
    let mut purchases: std::collections::BTreeMap<String, u32> = Default::default();
    for record in reader.records() {
        let record = record?;
        if record.get(2) == Some("purchase") {
            *purchases
                .entry(record.get(0).unwrap_or_default().to_string())
                .or_default() += 1;
        }
    }
    purchases
        .into_iter()
        .max_by_key(|(user, n)| (*n, std::cmp::Reverse(user.clone())))
        .map(|(u, _)| u)
        .context("events.csv has no purchases")
}

/// The demo's item page: a product of `kg-data/products.csv` that the graph pairs with others.
const PAGE_ITEM: &str = "p00141";
const PAGE_TITLE: &str = "Trailhound Peak Hiking Boots 700";

async fn demo(suite: &Suite, up: &UpArgs, data: &Path) -> anyhow::Result<()> {
    let ranker_channel = soukctl::connect(&format!("http://{}", suite.ranker), "ranker").await?;
    let mut ranker = rk::ranker_client::RankerClient::new(ranker_channel.clone());
    let stats = ranker.stats(rk::StatsRequest {}).await?.into_inner();
    let token = up.server.admin_token.clone();
    if stats.items == 0 {
        eprintln!("loading the demo shop from {} ...", data.display());
        let options = soukctl::LoadOptions {
            batch_size: None,
            dry_run: false,
            max_errors: 0,
            quiet: false,
        };
        let kg_channel =
            soukctl::connect(&format!("http://{}", suite.kg), "knowledge graph").await?;
        let (r, _) = soukctl::load_triples(
            kg_channel,
            &data.join("triples.tsv"),
            None,
            &options,
            &token,
        )
        .await?;
        eprintln!(
            "  graph: {} triples in {:.1}s",
            r.rows,
            r.elapsed.as_secs_f64()
        );
        let (r, _) = soukctl::load_catalog(
            ranker_channel.clone(),
            &data.join("products.csv"),
            &options,
            &token,
        )
        .await?;
        eprintln!(
            "  catalog: {} items embedded and indexed in {:.1}s",
            r.rows,
            r.elapsed.as_secs_f64()
        );
        let (r, _) = soukctl::load_events(
            ranker_channel.clone(),
            &data.join("events.csv"),
            &options,
            &token,
        )
        .await?;
        eprintln!(
            "  events: {} interactions in {:.1}s",
            r.rows,
            r.elapsed.as_secs_f64()
        );
        let synonyms_file = data.join("synonyms.txt");
        if synonyms_file.is_file() {
            let synonyms = soukctl::files::read_synonyms(&synonyms_file)?.messages();
            let set = ranker
                .set_synonyms(soukctl::with_token(
                    rk::SetSynonymsRequest { synonyms },
                    &token,
                )?)
                .await?
                .into_inner();
            eprintln!("  synonyms: {}", set.synonyms);
        }
        let pins_file = data.join("pins.txt");
        if pins_file.is_file() {
            let rules = soukctl::files::read_pins(&pins_file)?.messages();
            let set = ranker
                .set_pins(soukctl::with_token(rk::SetPinsRequest { rules }, &token)?)
                .await?
                .into_inner();
            eprintln!(
                "  pin rules (searches, category pages, every ranking): {}",
                set.rules
            );
        }
        // Entity embeddings of the whole graph (items, brands, categories, attributes): the
        // ranker's "close in the product graph" signal. Small settings: ~2 s on 2 cores.
        let started = std::time::Instant::now();
        let request = soukctl::with_token(
            kg::TrainEmbeddingsRequest {
                model: kg::EmbeddingModel::Rotate as i32,
                dim: 32,
                epochs: 60,
                batch_size: 256,
                negatives: 64,
                learning_rate: 0.01,
                seed: 7,
                ..Default::default()
            },
            &token,
        )?;
        let mut graph = kg::knowledge_graph_client::KnowledgeGraphClient::new(
            soukctl::connect(&format!("http://{}", suite.kg), "knowledge graph").await?,
        );
        let mut progress = graph.train_embeddings(request).await?.into_inner();
        let mut last = None;
        while let Some(p) = progress.message().await? {
            last = Some(p);
        }
        eprintln!(
            "  graph embeddings: RotatE, {} epochs, final loss {:.3}, in {:.1}s",
            last.as_ref().map_or(0, |p| p.epoch),
            last.as_ref().map_or(0.0, |p| p.loss),
            started.elapsed().as_secs_f64()
        );
        // The trained collaborative filter (EASE) on the events just loaded, as
        // `soukctl train cf` would fit it; the online co-occurrence keeps moving with clicks.
        let cf = ranker
            .train_cf(soukctl::with_token(
                rk::TrainCfRequest {
                    lambda: 50.0,
                    ..Default::default()
                },
                &token,
            )?)
            .await?
            .into_inner();
        eprintln!(
            "  collaborative filter: {} on {} items / {} users in {:.1}s",
            cf.version, cf.items, cf.users, cf.seconds
        );
    } else {
        eprintln!(
            "stores already hold {} items and {} events; skipping the load",
            stats.items, stats.interactions
        );
    }
    let user = returning_user(&data.join("events.csv"))?;
    let profile = ranker
        .user_profile(rk::UserProfileRequest {
            user_id: user.clone(),
            limit: 3,
        })
        .await?
        .into_inner();
    let names = |list: &[rk::Affinity]| {
        list.iter()
            .map(|a| a.name.clone())
            .collect::<Vec<_>>()
            .join(", ")
    };
    // Each case: a title and the request; every request asks for 5 results with reasons.
    let search = |query: &str| rk::RankRequest {
        query: query.to_string(),
        ..Default::default()
    };
    let cases = [
        (
            "Search \"waterproof hiking boots\" (anonymous shopper)".to_string(),
            search("waterproof hiking boots"),
        ),
        (
            "Search \"lightweight\" in Tents under 300 (anonymous shopper, filtered)".to_string(),
            rk::RankRequest {
                filters: Some(rk::Filters {
                    category: "Tents".into(),
                    max_price: Some(300.0),
                    ..Default::default()
                }),
                ..search("lightweight")
            },
        ),
        (
            "Search \"wireless headphones\" in black or navy, in stock (attribute filter)"
                .to_string(),
            rk::RankRequest {
                filters: Some(rk::Filters {
                    in_stock_only: true,
                    attributes: vec![rk::AttributeFilter {
                        name: "color".into(),
                        values: vec!["black".into(), "navy".into()],
                    }],
                    ..Default::default()
                }),
                // What a search page shows beside the filters: every colour stays counted,
                // the price slider's range and items per price bucket.
                facets: vec![
                    "brand".to_string(),
                    "attribute:color".to_string(),
                    "price".to_string(),
                    "price:50,100,200".to_string(),
                ],
                ..search("wireless headphones")
            },
        ),
        (
            "Search \"headphones\", one per brand (collapsed: each brand's best)"
                .to_string(),
            rk::RankRequest {
                collapse: "brand".into(),
                ..search("headphones")
            },
        ),
        (
            "Search \"cofee grindr\" (misspelt: ranked as meant, and said so)".to_string(),
            search("cofee grindr"),
        ),
        (
            "Search \"rucksack\" (a word no title holds, widened by the shop's synonyms)"
                .to_string(),
            search("rucksack"),
        ),
        (
            "Search \"keurig\" (a brand the shop lacks, read as \"coffee maker\" by its synonyms)"
                .to_string(),
            search("keurig"),
        ),
        (
            "Search \"sleeping bags\" (the shop pins its promoted bags first: kg-data/pins.txt)"
                .to_string(),
            search("sleeping bags"),
        ),
        (
            "The Coffee page (a category without a search: the shop's banner, its picks first, then burr grinders lifted; kg-data/pins.txt)"
                .to_string(),
            rk::RankRequest {
                filters: Some(rk::Filters {
                    category: "Coffee".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
        (
            "Best sellers in Coffee (sorted by popularity: shoppers' events, weighed by kind)"
                .to_string(),
            rk::RankRequest {
                filters: Some(rk::Filters {
                    category: "Coffee".into(),
                    ..Default::default()
                }),
                sort: rk::Sort::Popularity as i32,
                ..Default::default()
            },
        ),
        (
            "Search \"family tent under 150\" (a budget in the words: a price filter on the rest)"
                .to_string(),
            search("family tent under 150"),
        ),
        (
            "Search as you type \"desk la\" (the last word completed among terms found with \"desk\")"
                .to_string(),
            rk::RankRequest {
                prefix: true,
                ..search("desk la")
            },
        ),
        (
            format!(
                "Recommendations for returning shopper {user} (likes {}; brands {})",
                names(&profile.categories),
                names(&profile.brands)
            ),
            rk::RankRequest {
                user_id: user.clone(),
                ..Default::default()
            },
        ),
        (
            format!("Search \"gift for a coffee lover\" for {user}"),
            rk::RankRequest {
                user_id: user.clone(),
                ..search("gift for a coffee lover")
            },
        ),
        (
            format!("The page of the {PAGE_TITLE} [{PAGE_ITEM}]: items like it, bought with it or paired with it"),
            rk::RankRequest {
                item_id: PAGE_ITEM.to_string(),
                ..Default::default()
            },
        ),
        (
            "Recommendations for a brand-new shopper (no history, no query)".to_string(),
            rk::RankRequest {
                user_id: "someone-new".to_string(),
                ..Default::default()
            },
        ),
    ];
    let mut out = std::io::stdout();
    for (title, request) in cases {
        // Variety helps a recommendation shelf; a search, or an item's page, should stay on
        // what was asked.
        let shelf = request.query.is_empty()
            && request.item_id.is_empty()
            && request.sort == rk::Sort::Relevance as i32;
        let diversity = if shelf { 0.2 } else { 0.0 };
        let started = Instant::now();
        let ranking = ranker
            .rank(rk::RankRequest {
                k: 5,
                explain: true,
                diversity,
                ..request
            })
            .await?
            .into_inner();
        println!(
            "\n== {title}  ({:.0} ms)",
            started.elapsed().as_secs_f64() * 1e3
        );
        if shelf {
            // MMR reorders the shelf, so a score may follow a lower one: say why.
            println!(
                "  varied (diversity {diversity}): an item of a category already shown steps back"
            );
        }
        soukctl::print_ranking(&mut out, &ranking, 0)?;
    }
    println!();
    Ok(())
}

#[cfg(test)]
mod tests {
    /// `souk up` and `souk demo` read every flag they define (a field whose type does not match
    /// its parser would panic at start, which no build or `--help` shows).
    #[test]
    fn every_command_and_flag_parses_without_panicking() {
        souk_testkit::every_flag_reads::<super::Cli>("souk", &[]);
    }
}
