//! What reading an events CSV costs soukctl, rows and time, three times over (the file
//! cached after the first): `cargo run --release -p soukctl --example parse_cost -- FILE`.
//! BENCHMARKS.md "Session 56" made FILE with 2M rows of `kg-data/events.csv`'s columns.
#![allow(clippy::unwrap_used, clippy::expect_used)]

fn main() {
    let path = std::path::PathBuf::from(std::env::args().nth(1).expect("an events CSV"));
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let file = std::fs::File::open(&path).unwrap();
        let (read, refused) = soukctl::files::events(&path, file).fold((0, 0), |(r, f), row| {
            if row.is_ok() { (r + 1, f) } else { (r, f + 1) }
        });
        println!(
            "{read} rows read, {refused} refused in {:?}",
            started.elapsed()
        );
    }
}
