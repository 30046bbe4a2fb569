//! What the spelling check (`Bm25::correct`) costs per query word against a real vocabulary:
//! every line of the given files indexed as one document, then 300 of its own words (6-12
//! letters) looked up as typed (known: one hash lookup), with two letters swapped (found one
//! edit away), with two swaps (two edits: the one-edit search finds nothing, then the scan of
//! the vocabulary), and random letter strings (nothing near: both searches in full), each
//! timed over five rounds; then `Bm25::complete` on "<word> <first 2 or 3 letters of the
//! next word>" (search as you type).
//!
//! `cargo run --release -p souk-ranker-core --example spell_cost -- \
//!   ../shared/datasets/search/crowdflower-dev.csv ../shared/datasets/catalog/flipkart-1k.csv`
use std::time::Instant;

use souk_ranker_core::bm25::Bm25;
use souk_ranker_core::rng::XorShift;

fn main() -> std::io::Result<()> {
    let mut index = Bm25::default();
    let mut words: Vec<String> = Vec::new();
    let mut doc = 0u32;
    for path in std::env::args().skip(1) {
        let text = std::fs::read_to_string(&path)?;
        for line in text.lines() {
            index.insert(doc, line);
            doc += 1;
            if doc.is_multiple_of(7)
                && let Some(word) = line
                    .split(|c: char| !c.is_ascii_alphabetic())
                    .find(|w| (6..=12).contains(&w.len()))
                && !words.iter().any(|w| w.eq_ignore_ascii_case(word))
            {
                words.push(word.to_ascii_lowercase());
            }
        }
    }
    words.truncate(300);
    println!(
        "{doc} documents, {} terms; {} words",
        index.terms_len(),
        words.len()
    );
    let swap = |w: &str, at: &[usize]| {
        let mut b = w.as_bytes().to_vec();
        for &i in at {
            b.swap(i, i + 1);
        }
        String::from_utf8_lossy(&b).into_owned()
    };
    let mut rng = XorShift::new(7);
    let random: Vec<String> = (0..words.len())
        .map(|_| {
            let n = 8 + (rng.unit() * 3.0) as usize;
            (0..n)
                .map(|_| (b'a' + (rng.unit() * 26.0).min(25.0) as u8) as char)
                .collect()
        })
        .collect();
    let cases: [(&str, Vec<String>); 4] = [
        ("known", words.clone()),
        (
            "one edit (a swap)",
            words.iter().map(|w| swap(w, &[1])).collect(),
        ),
        (
            "two edits (two swaps)",
            words.iter().map(|w| swap(w, &[1, 4])).collect(),
        ),
        ("random letters", random),
    ];
    // Five rounds of `read` over `inputs`: the mean time per input and how many it changed.
    let time = |name: &str, inputs: &[String], read: &dyn Fn(&str) -> Option<String>| {
        let mut changed = 0;
        let start = Instant::now();
        for _ in 0..5 {
            changed = inputs.iter().filter(|w| read(w).is_some()).count();
        }
        let us = start.elapsed().as_secs_f64() * 1e6 / (5 * inputs.len()) as f64;
        println!(
            "{name:<24} {us:>8.1} us each, {changed} of {} changed",
            inputs.len()
        );
    };
    // Search as you type: the next word's first 2 or 3 letters typed after one of the words
    // (`Bm25::complete`: the terms they begin, weighed by the documents shared with it).
    for letters in [2, 3] {
        let typed: Vec<String> = words
            .iter()
            .zip(words.iter().skip(1))
            .map(|(before, next)| format!("{before} {}", &next[..letters]))
            .collect();
        let name = format!("half typed ({letters} letters)");
        time(&name, &typed, &|q| index.complete(q));
    }
    for (name, typed) in &cases {
        time(name, typed, &|w| index.correct(w));
    }
    Ok(())
}
