//! README's first command, as a user runs it: the `souk demo` binary on a fresh data
//! directory starts the three services, loads `kg-data/`, and prints rankings whose every
//! result gives its reasons, from every signal; run again on the same directory it loads
//! nothing and prints the same rankings (the stores hold everything the first run built).
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::path::Path;
use std::process::Command;

use souk_testkit::{model_dir, repo_root};

/// One `souk demo` run on `data_dir`: (stdout, stderr).
fn demo(data_dir: &Path) -> (String, String) {
    let (root, model) = (repo_root(), model_dir());
    let out = Command::new(env!("CARGO_BIN_EXE_souk"))
        .arg("demo")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--model-dir")
        .arg(&model)
        .arg("--demo-data")
        .arg(root.join("kg-data"))
        // Any free ports: a test must not need 50051-50053.
        .args(["--encoder-listen", "127.0.0.1:0"])
        .args(["--kg-listen", "127.0.0.1:0"])
        .args(["--ranker-listen", "127.0.0.1:0"])
        .env_remove("SOUK_DATA_DIR")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "souk demo failed: {stderr}\n{stdout}");
    (stdout, stderr)
}

/// The rankings without their timings (`  (6 ms)` ends each heading).
fn rankings(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .map(|line| match line.strip_prefix("== ") {
            Some(heading) => heading
                .rsplit_once("  (")
                .map_or(heading, |(heading, _)| heading)
                .to_string(),
            None => line.to_string(),
        })
        .collect()
}

#[test]
fn the_demo_ranks_with_reasons_and_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (first, loading) = demo(dir.path());
    for loaded in [
        "graph: 1619 triples",
        "catalog: 312 items embedded",
        "events: 3242 interactions",
        "graph embeddings: RotatE",
        "collaborative filter: ease-",
    ] {
        assert!(loading.contains(loaded), "{loaded:?} not in {loading}");
    }

    // Every section ranks something, and every result says why.
    let sections: Vec<&str> = first.split("\n== ").skip(1).collect();
    assert!(sections.len() >= 12, "{first}");
    let shown = first.lines().filter(|line| is_result(line)).count();
    assert!(shown >= 5 * sections.len(), "{shown} results in\n{first}");
    for section in &sections {
        let lines: Vec<&str> = section.lines().collect();
        let results: Vec<usize> = (0..lines.len()).filter(|&i| is_result(lines[i])).collect();
        assert!(!results.is_empty(), "no results in {section}");
        for &i in &results {
            assert!(
                lines
                    .get(i + 1)
                    .is_some_and(|next| next.trim_start().starts_with("- ")),
                "a result without a reason: {:?} in {section}",
                lines[i]
            );
        }
    }
    // Each signal explains some result: words, meaning, shoppers, the graph, popularity and
    // the shop's own rules.
    for reason in [
        "- matches your search",
        "- close in meaning to your search",
        "- shoppers who liked",
        "- close in the product graph to",
        "- goes with",
        "- popular with shoppers",
        "- featured by the shop",
    ] {
        assert!(first.contains(reason), "no {reason:?} in\n{first}");
    }
    assert!(
        first.contains("showing results for \"coffee grinder\""),
        "{first}"
    );

    let (again, reloading) = demo(dir.path());
    assert!(
        !reloading.contains("loading the demo shop"),
        "the second run loaded again: {reloading}"
    );
    assert_eq!(
        rankings(&again),
        rankings(&first),
        "the rankings changed across a restart"
    );
}

/// `  N. Title  [id]  ...`: a numbered result line.
fn is_result(line: &str) -> bool {
    let trimmed = line.trim_start();
    let digits = trimmed.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && trimmed[digits..].starts_with(". ") && line.contains("  [")
}
