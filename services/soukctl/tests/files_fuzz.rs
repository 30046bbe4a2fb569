//! The demo's load files, damaged at random (bytes dropped, doubled, replaced, invalid UTF-8,
//! stray quotes, delimiters and line breaks), read by soukctl's parsers: each must read
//! every row or report it as `file:line: reason` with a line the file has, and never panic.
//!
//! `FUZZ_ROUNDS=20000 FUZZ_SEED=7 cargo test --release -p soukctl --test files_fuzz` runs
//! longer with another seed (defaults: 300 damaged copies of each file, seed 1).
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::io::Cursor;
use std::path::{Path, PathBuf};

use souk_ranker_core::rng::XorShift;
use soukctl::files::{self, LineError, TripleFormat};

fn demo(name: &str) -> (PathBuf, Vec<u8>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../kg-data")
        .join(name);
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

fn below(rng: &mut XorShift, n: usize) -> usize {
    ((rng.unit() * n as f64) as usize).min(n.saturating_sub(1))
}

const ODD: &[&[u8]] = &[
    b"\"",
    b",",
    b"\t",
    b"\n",
    b"\r",
    b"\r\n",
    b"\0",
    b"=",
    b";",
    b">",
    b"=>",
    b" > ",
    b"#",
    b"@",
    b"..",
    b"-",
    b"+",
    b"<",
    b"\\",
    b"'",
    b"\xff",
    b"\xc3",
    b"\xe2\x82",
    b"\xef\xbb\xbf",
    "é".as_bytes(),
    "İ".as_bytes(),
    "👩‍👩‍👧".as_bytes(),
    b"NaN",
    b"inf",
    b"-1",
    b"1e400",
    b"99999999999999999999999",
    b"true",
    b"purchase",
    b"rating",
    b"category:",
    b"contains:",
    b"redirect:",
    b"banner:",
    b"*",
    b"brand:",
    b"in-stock",
    b"price<",
    b"2026-13-45",
    b"2026-03-01..",
    b"..2026-03-01",
];

/// `bytes` with 1 to 8 random edits.
fn damage(rng: &mut XorShift, bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for _ in 0..1 + below(rng, 8) {
        let at = below(rng, out.len() + 1);
        match below(rng, 6) {
            0 => {
                let odd = ODD[below(rng, ODD.len())];
                out.splice(at..at, odd.iter().copied());
            }
            1 => {
                let end = (at + below(rng, 40)).min(out.len());
                out.drain(at..end);
            }
            2 => {
                let end = (at + below(rng, 200)).min(out.len());
                let copy = out[at..end].to_vec();
                out.splice(at..at, copy);
            }
            3 if at < out.len() => out[at] = below(rng, 256) as u8,
            4 => out.truncate(at),
            _ => {
                let odd = ODD[below(rng, ODD.len())];
                let n = 1 + below(rng, 2_000);
                let long: Vec<u8> = odd.iter().copied().cycle().take(odd.len() * n).collect();
                out.splice(at..at, long);
            }
        }
    }
    out
}

/// Every row of the file, checking each error names the file and a line it has.
fn check_rows<T>(path: &Path, bytes: &[u8], rows: files::Rows<T>) -> (usize, usize) {
    let lines = bytes.split(|&b| b == b'\n').count() as u64;
    let (mut good, mut bad) = (0, 0);
    for row in rows {
        match row {
            Ok(_) => good += 1,
            Err(error) => {
                check_error(path, lines, &error);
                bad += 1;
            }
        }
    }
    (good, bad)
}

fn check_error(path: &Path, lines: u64, error: &LineError) {
    assert_eq!(error.file, path);
    assert!(
        (1..=lines).contains(&error.line),
        "{error}: line {} of a file of {lines} lines",
        error.line
    );
    assert!(!error.reason.trim().is_empty(), "{error}: no reason");
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn damaged_load_files_are_read_or_refused_by_line() {
    let seed = env_u64("FUZZ_SEED", 1);
    let rounds = env_u64("FUZZ_ROUNDS", 300);
    let mut rng = XorShift::new(seed);
    let mut sources = vec![
        demo("products.csv"),
        demo("events.csv"),
        demo("triples.tsv"),
        demo("pins.txt"),
        demo("synonyms.txt"),
    ];
    // A real Flipkart export, its first 60 rows, when the team's datasets are here.
    let flipkart = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/datasets/catalog/flipkart-1k.csv");
    match std::fs::read(&flipkart) {
        Ok(bytes) => {
            let mut reader = csv::Reader::from_reader(bytes.as_slice());
            let end = reader
                .records()
                .take(60)
                .last()
                .and_then(|r| r.ok())
                .and_then(|r| r.position().map(|p| p.byte() as usize))
                .unwrap_or(bytes.len());
            sources.push((flipkart.clone(), bytes[..end].to_vec()));
        }
        Err(_) => eprintln!(
            "skipped the Flipkart export: {} is absent",
            flipkart.display()
        ),
    }
    let (mut good, mut bad) = (0, 0);
    for (path, bytes) in &sources {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        for round in 0..rounds {
            let damaged = damage(&mut rng, bytes);
            let lines = damaged.split(|&b| b == b'\n').count() as u64;
            let text = String::from_utf8_lossy(&damaged).into_owned();
            let reader = || Cursor::new(damaged.clone());
            let (g, b) = match name.as_str() {
                "products.csv" | "flipkart-1k.csv" => {
                    let (g, b) = check_rows(path, &damaged, files::catalog(path, reader()));
                    let (g2, b2) = check_rows(path, &damaged, files::item_updates(path, reader()));
                    (g + g2, b + b2)
                }
                "events.csv" => check_rows(path, &damaged, files::events(path, reader())),
                "triples.tsv" => {
                    let mut sum = (0, 0);
                    for format in [TripleFormat::Tsv, TripleFormat::Csv, TripleFormat::Nt] {
                        let (g, b) =
                            check_rows(path, &damaged, files::triples(path, reader(), format));
                        sum = (sum.0 + g, sum.1 + b);
                    }
                    sum
                }
                "pins.txt" => match files::pins(path, &text) {
                    Ok(_) => (1, 0),
                    Err(error) => {
                        check_error(path, lines, &error);
                        (0, 1)
                    }
                },
                "synonyms.txt" => match files::synonyms(path, &text) {
                    Ok(_) => (1, 0),
                    Err(error) => {
                        check_error(path, lines, &error);
                        (0, 1)
                    }
                },
                other => panic!("no parser for {other} (round {round})"),
            };
            good += g;
            bad += b;
        }
    }
    eprintln!(
        "{rounds} damaged copies of each file (seed {seed}): {good} rows read, {bad} refused"
    );
    assert!(good > 0 && bad > 0, "damage both spares and breaks rows");
}
