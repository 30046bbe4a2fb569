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
//! Last, what `RecordInteractions`'s checks cost (shoppers forgotten, events stored
//! already: `RankerStore::record`): 20 batches of 1,000 events of 1,000 shoppers recorded,
//! 20 others stored without the checks (`append_events`), then the first 20 sent again.
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
        store.forget(&users, now_ms, keys, &events).unwrap();
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
    // What `RecordInteractions` checks before it stores a batch (forgotten shoppers, events
    // stored already: `RankerStore::record`), against storing it alone (`append_events`),
    // on fresh batches; then the same batch sent again (all of it stored already: no write).
    let later = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + 1000;
    let batch = |round: usize| -> Vec<_> {
        (0..1000)
            .map(|u| souk_ranker_core::item::Interaction {
                user: hasher.key(&format!("u{u}")),
                item_id: format!("p{:06}", (round * 1000 + u) % items.max(1)),
                kind: souk_ranker_core::item::InteractionKind::Click,
                value: 1.0,
                timestamp_ms: later,
            })
            .collect()
    };
    let (mut recorded, mut appended, mut again) = (0.0, 0.0, 0.0);
    const ROUNDS: usize = 20;
    for round in 0..ROUNDS {
        let (first, other, repeated) = (batch(2 * round), batch(2 * round + 1), batch(2 * round));
        let started = Instant::now();
        let first = store.record(first).unwrap();
        recorded += started.elapsed().as_secs_f64();
        assert_eq!(
            first.events.len(),
            1000,
            "stamped after the forget, all new"
        );
        let started = Instant::now();
        store.append_events(&other).unwrap();
        appended += started.elapsed().as_secs_f64();
        let started = Instant::now();
        let repeated = store.record(repeated).unwrap();
        again += started.elapsed().as_secs_f64();
        assert_eq!(repeated.duplicates, 1000);
    }
    let ms = |seconds: f64| seconds / ROUNDS as f64 * 1e3;
    println!(
        "a batch of 1,000 events of 1,000 shoppers: checked and stored {:.3} ms, stored alone \
         {:.3} ms ({:.3}x); sent again (all stored already, nothing written) {:.3} ms",
        ms(recorded),
        ms(appended),
        recorded / appended,
        ms(again)
    );
    store.close().unwrap();
}
