//! How often the spelling check rewrites real queries in a shop that lacks what they ask for,
//! with and without the model's words as the lexicon (`Bm25::set_lexicon`, what `Rank` reads
//! from `Encoder.Words`). Every record of the catalog file is one document; every distinct
//! value of the queries file's `query` column is read with `Bm25::correct` twice. Crowdflower's
//! queries against Flipkart's catalog: nearly every rewrite without a lexicon turns a word
//! the shop lacks into one it has ("kitchen rugs" -> "kitchen mugs"), which no shopper meant.
//!
//! `cargo run --release -p souk-ranker-core --example spell_rewrites -- \
//!   ../shared/datasets/catalog/flipkart-1k.csv ../shared/datasets/search/crowdflower-dev.csv \
//!   models/all-MiniLM-L6-v2`
use std::collections::BTreeSet;
use std::error::Error;
use std::time::Instant;

use souk_ranker_core::bm25::{Bm25, lexicon};

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [catalog, queries, model] = args.as_slice() else {
        return Err("usage: spell_rewrites CATALOG.csv QUERIES.csv MODEL_DIR".into());
    };
    let mut index = Bm25::default();
    let mut reader = csv::Reader::from_path(catalog)?;
    for (doc, record) in reader.records().enumerate() {
        index.insert(doc as u32, &record?.iter().collect::<Vec<_>>().join(" "));
    }
    let mut reader = csv::Reader::from_path(queries)?;
    let column = reader
        .headers()?
        .iter()
        .position(|h| h == "query")
        .ok_or("the queries file has no `query` column")?;
    let mut distinct = BTreeSet::new();
    for record in reader.records() {
        distinct.insert(record?.get(column).unwrap_or_default().to_string());
    }
    // The vocabulary's whole words, as `TextTokenizer::words` lists them for a WordPiece model.
    let tokenizer: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{model}/tokenizer.json"))?)?;
    let prefix = tokenizer["model"]["continuing_subword_prefix"]
        .as_str()
        .ok_or("not a WordPiece tokenizer")?;
    let words = lexicon(
        tokenizer["model"]["vocab"]
            .as_object()
            .ok_or("tokenizer.json has no vocabulary")?
            .keys()
            .filter(|t| !t.starts_with(prefix))
            .filter(|t| t.chars().count() >= 2 && t.chars().all(char::is_alphabetic)),
    );
    // Each reading timed over 20 rounds of every query: the mean per query.
    let read = |index: &Bm25| {
        let started = Instant::now();
        let mut read = Vec::new();
        for _ in 0..20 {
            read = distinct.iter().map(|q| index.correct(q)).collect();
        }
        let us = started.elapsed().as_secs_f64() * 1e6 / (20 * distinct.len()) as f64;
        (read, us)
    };
    let (without, us_without) = read(&index);
    index.set_lexicon(Some(words));
    let (with, us_with) = read(&index);
    println!(
        "{} terms indexed, {} words in the lexicon; {} distinct queries: {} rewritten without \
         the lexicon, {} with it ({us_without:.1} / {us_with:.1} us per query)",
        index.terms_len(),
        index.lexicon_len(),
        distinct.len(),
        without.iter().flatten().count(),
        with.iter().flatten().count()
    );
    for ((query, without), with) in distinct.iter().zip(&without).zip(&with) {
        if without.is_some() || with.is_some() {
            let show = |r: &Option<String>| r.as_deref().unwrap_or("(as typed)").to_string();
            println!("  {query:?}: {:?} / {:?}", show(without), show(with));
        }
    }
    Ok(())
}
