//! What forgetting shoppers costs (`ForgetUsers`), against what a start costs on the same
//! store (the other way to drop them from memory: a restart replaying the log without them).
//!
//! ```text
//! cargo run --release -p souk-ranker --example forget_cost -- DIR ITEMS EVENTS [USERS]
//! ```
//! A store in DIR is filled first when DIR does not exist yet (the shop of `replica_cost`:
//! 10,000 shoppers with ~EVENTS/10,000 clicks each). Then the catalog is rebuilt from it
//! once (`load`, timed), and USERS shoppers (default 10) are forgotten one call at a time,
//! different ones on every run of the example: the read of the log before a cut (events
//! are written meanwhile), the rest of it and the removal (`RecordInteractions` waits), and
//! memory (`Catalog::forget`, under the catalog's write lock: `Rank` waits) timed apart.
//! Last, 20 batches of 1,000 events of 1,000 shoppers are checked against the forgotten
//! ones (`unforgotten`, what `RecordInteractions` adds once someone was forgotten) and
//! stored, each timed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::Instant;

use souk_ranker::store::RankerStore;
use souk_ranker_core::UserHasher;

mod common;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(args.get(1).expect("DIR ITEMS EVENTS [USERS]"));
    let arg =
        |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (items, events, users) = (arg(2, 100_000), arg(3, 1_000_000), arg(4, 10));
    if !dir.exists() {
        let started = Instant::now();
        common::fill(&dir, items, events);
        println!(
            "store: {items} items, {events} events, written in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    let store = RankerStore::open(&dir).unwrap();
    let started = Instant::now();
    let (mut catalog, _) = store.load(usize::MAX).unwrap();
    let load = started.elapsed().as_secs_f64();
    println!(
        "start (catalog rebuilt, no graph): {} items, {} events, {} shoppers: {load:.2} s",
        catalog.len(),
        catalog.interactions(),
        catalog.users()
    );
    let hasher = UserHasher::new(common::KEY.as_bytes());
    let (mut unlocked, mut locked, mut memory, mut gone) = (0.0, 0.0, 0.0, 0);
    let mut forgotten = 0;
    for user in 0..10_000 {
        if forgotten == users {
            break;
        }
        let key = hasher.key(&format!("u{user}"));
        if catalog.history(&key).is_empty() {
            continue;
        }
        let users = HashSet::from([key]);
        // As `ForgetUsers` does: the log before a cut read while events are written, the
        // rest and the removal while they wait.
        let started = Instant::now();
        let cut = store.event_cut().unwrap();
        let mut found = store.events_of(&users, &cut, true).unwrap();
        unlocked += started.elapsed().as_secs_f64();
        let started = Instant::now();
        found.extend(store.events_of(&users, &cut, false).unwrap());
        let (keys, events): (Vec<Vec<u8>>, Vec<_>) = found.into_iter().unzip();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        store.forget(&users, now_ms, keys).unwrap();
        locked += started.elapsed().as_secs_f64();
        let started = Instant::now();
        gone += catalog.forget(&events);
        memory += started.elapsed().as_secs_f64();
        forgotten += 1;
    }
    let n = forgotten.max(1) as f64;
    println!(
        "forgot {forgotten} shoppers ({gone} events), each: log read {:.3} s ({:.3}x a start) \
         while events are written, then {:.2} ms with them waiting (the rest read, the \
         removal written) and {:.2} ms in memory (`Rank` waiting)",
        unlocked / n,
        unlocked / n / load,
        locked / n * 1e3,
        memory / n * 1e3
    );
    // What remembering them costs `RecordInteractions`: each batch's shoppers looked up
    // among the forgotten ones (`unforgotten`), against storing the batch, same batches.
    let later = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + 1000;
    let (mut checked, mut stored) = (0.0, 0.0);
    const ROUNDS: usize = 20;
    for round in 0..ROUNDS {
        let mut batch: Vec<_> = (0..1000)
            .map(|u| souk_ranker_core::item::Interaction {
                user: hasher.key(&format!("u{u}")),
                item_id: format!("p{:06}", (round * 1000 + u) % items.max(1)),
                kind: souk_ranker_core::item::InteractionKind::Click,
                value: 1.0,
                timestamp_ms: later,
            })
            .collect();
        let started = Instant::now();
        let turned_away = store.unforgotten(&mut batch).unwrap();
        checked += started.elapsed().as_secs_f64();
        assert_eq!(turned_away, 0, "stamped after the forget: kept");
        let started = Instant::now();
        store.append_events(&batch).unwrap();
        stored += started.elapsed().as_secs_f64();
    }
    println!(
        "a batch of 1,000 events of 1,000 shoppers: checked against the forgotten in {:.3} ms, \
         stored in {:.3} ms ({:.3}x)",
        checked / ROUNDS as f64 * 1e3,
        stored / ROUNDS as f64 * 1e3,
        checked / stored
    );
    store.close().unwrap();
}
