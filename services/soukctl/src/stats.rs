//! `soukctl stats`: what each service holds, read from every one that answers.
//!
//! During an incident the services an operator can still reach are the ones worth reading, so
//! a service that cannot be read gets one line saying so (and why) and the others are printed
//! all the same; the command fails at the end, naming what it could not read.

use souk_proto::encoder::v1 as enc;
use souk_proto::kg::v1 as kg;
use souk_proto::ranker::v1 as rk;
use std::fmt::Write as _;

use crate::{Endpoints, answered, connect};

/// The stats of every service, as `soukctl stats` prints them.
#[derive(Debug, Default)]
pub struct Report {
    /// One section per service, ranker, knowledge graph and encoder in that order; a service
    /// that could not be read has a line saying so instead.
    pub text: String,
    /// The services that could not be read ("ranker", "knowledge graph", "encoder").
    pub unread: Vec<&'static str>,
}

/// Reads the three services at once and prints their stats.
///
/// # Errors
/// When a service could not be read (its section says why; the others are printed).
pub async fn print(ep: &Endpoints) -> anyhow::Result<()> {
    let report = report(ep).await;
    print!("{}", report.text);
    if !report.unread.is_empty() {
        anyhow::bail!("could not read the {}", report.unread.join(", "));
    }
    Ok(())
}

/// Reads the three services at once, waiting for each at most `--timeout`.
pub async fn report(ep: &Endpoints) -> Report {
    let (r, g, e) = tokio::join!(
        answered(ep.answer_timeout(), ranker(&ep.ranker)),
        answered(ep.answer_timeout(), graph(&ep.kg)),
        answered(ep.answer_timeout(), encoder(&ep.encoder)),
    );
    let mut report = Report::default();
    for (name, url, section) in [
        ("ranker", &ep.ranker, r),
        ("knowledge graph", &ep.kg, g),
        ("encoder", &ep.encoder, e),
    ] {
        match section {
            Ok(text) => report.text.push_str(&text),
            Err(e) => {
                report.unread.push(name);
                report
                    .text
                    .push_str(&format!("{name}: NOT READ from {url}: {e:#}\n"));
            }
        }
    }
    report
}

/// The catalog, the log, replication, the encoder's model as the ranker sees it, the search
/// lists and the shop's rules.
async fn ranker(url: &str) -> anyhow::Result<String> {
    let mut ranker = rk::ranker_client::RankerClient::new(connect(url, "ranker").await?);
    let r = ranker.stats(rk::StatsRequest {}).await?.into_inner();
    let mut out = String::new();
    writeln!(
        out,
        "catalog: {} items ({}-d vectors), {} users, {} events, fusion {}, cf {}",
        r.items,
        r.dimension,
        r.users,
        r.interactions,
        r.model_version,
        if r.cf_version.is_empty() {
            "online co-occurrence only"
        } else {
            r.cf_version.as_str()
        }
    )?;
    if !r.history.is_empty() {
        writeln!(
            out,
            "store: history {}, holds its writes up to number {}",
            r.history, r.history_write
        )?;
    }
    if !r.follows.is_empty() {
        writeln!(
            out,
            "replica of {}: {}",
            r.follows,
            if r.in_sync {
                "in sync (takes its writes as they are stored)"
            } else if !r.replica_refused.is_empty() {
                "NOT in sync (refuses the primary's store; serves its last copy)"
            } else {
                "NOT in sync (connecting or copying; serves its last copy)"
            }
        )?;
        if !r.replica_refused.is_empty() {
            writeln!(out, "refused: {}", r.replica_refused)?;
        }
        writeln!(
            out,
            "caught up since start: {} by copying the whole store, {} from the last write held",
            r.replica_copies, r.replica_resumes
        )?;
        if r.outbox > 0 {
            writeln!(
                out,
                "outbox: {} events taken while the primary was unreachable, not yet passed on",
                r.outbox
            )?;
        }
    }
    if r.graph_outbox > 0 {
        writeln!(
            out,
            "graph outbox: {} batches of item facts wait for the knowledge graph (unreachable); sent in order when it answers",
            r.graph_outbox
        )?;
    }
    writeln!(
        out,
        "encoder model: {}",
        match r.encoder.as_str() {
            "matches" => "the one the catalog's vectors come from",
            "differs" => {
                "OTHER than the one the catalog's vectors come from: queries are not embedded; run `soukctl reembed`"
            }
            _ => "not checked yet (the encoder has not answered, or the catalog is empty)",
        }
    )?;
    let mut listed = |what: &str, queries: Vec<String>| -> std::fmt::Result {
        if !queries.is_empty() {
            writeln!(out, "{what}, since start: {}", queries.join(", "))?;
            if !r.follows.is_empty() {
                writeln!(
                    out,
                    "  (this replica's own; its primary lists the whole shop's)"
                )?;
            }
        }
        Ok(())
    };
    listed(
        "searches no item's words match",
        r.unmatched_queries
            .iter()
            .map(|q| format!("{:?} ({})", q.query, searches(q.count, q.over_by)))
            .collect(),
    )?;
    listed(
        "searches the spelling check read otherwise (a wrong reading is fixed with a synonym: `soukctl synonyms load`)",
        r.corrected_queries
            .iter()
            .map(|q| {
                format!(
                    "{:?} as {:?} ({})",
                    q.query,
                    q.read_as,
                    searches(q.count, q.over_by)
                )
            })
            .collect(),
    )?;
    if r.synonyms > 0 {
        writeln!(out, "synonyms: {} (`soukctl synonyms list`)", r.synonyms)?;
    }
    if r.pin_rules > 0 {
        writeln!(
            out,
            "pin rules (searches, category pages, every ranking): {} (`soukctl pins list`)",
            r.pin_rules
        )?;
    }
    writeln!(
        out,
        "spelling: {}",
        if r.lexicon_words == 0 {
            "no lexicon yet (the encoder has not answered Words)".to_string()
        } else {
            format!("{} lexicon words from the encoder", r.lexicon_words)
        }
    )?;
    Ok(out)
}

/// The graph's sizes, on disk too, and a compaction that failed.
async fn graph(url: &str) -> anyhow::Result<String> {
    let mut graph = kg::knowledge_graph_client::KnowledgeGraphClient::new(
        connect(url, "knowledge graph").await?,
    );
    let g = graph.stats(kg::StatsRequest {}).await?.into_inner();
    let mut out = String::new();
    // A count's remark, " (before N after)", shown only when there is something to
    // count.
    let remark = |before: &str, n: u64, after: &str| {
        if n > 0 {
            format!(" ({before}{n} {after})")
        } else {
            String::new()
        }
    };
    let isolated = remark(
        "and ",
        g.entities_without_triples,
        "named earlier whose triples were all removed",
    );
    let removed = remark(
        "",
        g.removed_triples_in_store,
        "removed triples still in its log until the next compaction",
    );
    writeln!(
        out,
        "graph: {} entities{isolated}, {} relations, {} triples, {} bytes on disk{removed}",
        g.entities, g.relations, g.triples, g.store_bytes
    )?;
    if g.compaction_failed_at > 0 {
        writeln!(
            out,
            "graph: its last compaction failed {} ago (the store in use is unchanged; \
             the reason is in the service's log)",
            seconds_ago(g.compaction_failed_at)
        )?;
    }
    Ok(out)
}

/// The model the encoder serves and how it runs it.
async fn encoder(url: &str) -> anyhow::Result<String> {
    let mut encoder = enc::encoder_client::EncoderClient::new(connect(url, "encoder").await?);
    let i = encoder.info(enc::InfoRequest {}).await?.into_inner();
    let mut out = String::new();
    writeln!(
        out,
        "encoder: {} ({}-d vectors, {} pooling, texts cut at {} tokens), fingerprint {:016x}",
        i.model_id, i.dimension, i.pooling, i.max_tokens, i.model_fingerprint
    )?;
    writeln!(
        out,
        "encoder: runs the {} engine on {} in {}, batches of up to {} texts a request and {} tokens a pass",
        i.engine, i.device, i.dtype, i.max_batch_texts, i.max_batch_tokens
    )?;
    if !i.prompts.is_empty() {
        // Sorted: the answer's map has no order.
        let mut prompts: Vec<String> = i
            .prompts
            .iter()
            .map(|(name, text)| format!("{name} {text:?}"))
            .collect();
        prompts.sort();
        let default = if i.default_prompt_name.is_empty() {
            String::new()
        } else {
            format!(" (by default: {})", i.default_prompt_name)
        };
        writeln!(out, "encoder: prompts {}{default}", prompts.join(", "))?;
    }
    Ok(out)
}

/// A listed query's searches: "12", or "9-12" when the ranker's bounded count may overstate
/// them by 3 (`QueryCount.over_by`).
fn searches(count: u64, over_by: u64) -> String {
    if over_by == 0 {
        count.to_string()
    } else {
        format!("{}-{count}", count.saturating_sub(over_by))
    }
}

/// How long ago the Unix time `at` (seconds) was, as "N s", "N min" or "N h".
fn seconds_ago(at: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match now.saturating_sub(at) {
        s if s < 120 => format!("{s} s"),
        s if s < 7_200 => format!("{} min", s / 60),
        s => format!("{} h", s / 3_600),
    }
}
