//! soukctl's command line as users type it. Clap's derive checks a field's type against its
//! parser only when the field is read, so a mismatch (an `Option<f64>` field whose parser
//! returns `Option<f64>`) passes the build and `Command::debug_assert` and panics on every
//! call of its command: `train fusion` did so for five days. Each test here reads every field
//! of the commands it parses.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use clap::{CommandFactory, Parser};
use soukctl::Cli;

/// Parses `argv` (after the program name) the way `main` does.
fn parse(argv: &[String]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("soukctl".to_string()).chain(argv.iter().cloned()))
}

/// Every command parses with only what it requires (so every default goes through its
/// field's parser, as a user's shortest call does), and with each of its flags set.
#[test]
fn every_command_and_flag_parses_without_panicking() {
    assert!(
        Cli::command().get_subcommands().count() >= 10,
        "the commands are found"
    );
    souk_testkit::every_flag_reads::<Cli>(
        "soukctl",
        &[
            (&["train", "fusion"], &["--labels", "x.csv"]),
            (&["kg", "delete"], &["x.tsv"]),
        ],
    );
}

/// Splits a documented command line as a shell would (quotes, no expansions), up to a
/// `#` comment.
fn words(line: &str) -> Vec<String> {
    let (mut out, mut word, mut quote, mut any) = (Vec::new(), String::new(), None, false);
    for c in line.chars() {
        match (quote, c) {
            (None, '#') if word.is_empty() => break,
            (None, '"' | '\'') => (quote, any) = (Some(c), true),
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if any {
                    out.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            (_, c) => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(word);
    }
    out
}

/// The soukctl command lines the docs show in their code blocks: `soukctl ...` or
/// `cargo run --release -p soukctl -- ...`, each with the file and line it is on.
fn documented(file: &str) -> Vec<(String, Vec<String>)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut in_block = false;
    let mut out = Vec::new();
    // A command continued on the next line with `\`: its text so far and first line.
    let mut continued: Option<(String, usize)> = None;
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continued = None;
            continue;
        }
        if !in_block {
            continue;
        }
        let (line, at) = match continued.take() {
            Some((before, at)) => (format!("{before} {}", line.trim()), at),
            None => (line.trim().to_string(), i + 1),
        };
        if let Some(head) = line.strip_suffix('\\') {
            continued = Some((head.trim_end().to_string(), at));
            continue;
        }
        let rest = line
            .strip_prefix("cargo run --release -p soukctl -- ")
            .or_else(|| line.strip_prefix("soukctl "));
        // One that elides its arguments with `...` is not a command to type.
        let Some(rest) = rest.filter(|r| !r.contains("...")) else {
            continue;
        };
        out.push((format!("{file}:{at}"), words(rest)));
    }
    out
}

/// What README.md and kg-data/README.md tell users to type, and the commands BENCHMARKS.md
/// gives to reproduce its figures, parse (flags renamed or removed since would fail here, and
/// so would a command that panics on reading its fields).
#[test]
fn the_documented_commands_parse() {
    let mut seen = 0;
    let mut failed = Vec::new();
    for file in ["README.md", "kg-data/README.md", "BENCHMARKS.md"] {
        for (at, argv) in documented(file) {
            seen += 1;
            if let Err(e) = parse(&argv) {
                failed.push(format!("{at}: soukctl {}: {e}", argv.join(" ")));
            }
        }
    }
    assert!(seen >= 40, "only {seen} documented commands found");
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn words_split_as_a_shell_does() {
    assert_eq!(
        words(r#"rank --query "coffee grinder" -k 5   # a comment"#),
        ["rank", "--query", "coffee grinder", "-k", "5"]
    );
    assert_eq!(words("suggest ''"), ["suggest", ""]);
}

/// `eval rec` with no test user (an empty or header-only test file) says so instead of
/// printing a table of zeros that reads as every model failing.
#[tokio::test]
async fn eval_rec_without_a_test_user_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (train, test) = (dir.path().join("train.tsv"), dir.path().join("test.tsv"));
    std::fs::write(&train, "u1\ti1\nu1\ti2\n").unwrap();
    std::fs::write(&test, "user\titem\n").unwrap();
    let argv = [
        "eval",
        "rec",
        "--train",
        train.to_str().unwrap(),
        "--test",
        test.to_str().unwrap(),
    ];
    let cli = parse(&argv.map(String::from)).unwrap();
    let error = soukctl::run(cli).await.unwrap_err();
    assert!(
        format!("{error:#}").contains("test.tsv: no test user (1 users in"),
        "{error:#}"
    );
}
