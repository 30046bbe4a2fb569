//! What replaying the event log costs (every start of a ranker, and every copy a replica
//! takes): `Catalog::replay` of the stored events, in order, into a catalog of ITEMS items.
//! USERS shoppers each touch EVENTS / USERS distinct items (the shape of MovieLens or of a
//! shop's click log: about a hundred items a shopper), half of them twice (a view, then a
//! click), popular items more often.
//!
//! GUEST percent of the events come from one shared id (a guest id every anonymous visitor
//! is sent under, or a bot).
//!
//! ROW is the online co-occurrence's items kept per item (`Catalog::set_cooccurrence_row`;
//! 0 keeps every pair, as before session 22): the pairs held and the process's peak RSS
//! are printed with the time.
//!
//! `cargo run --release -p souk-ranker-core --example replay_cost -- 100000 1000000 10000 0 256`
//! (items, events, users, guest share in percent, row).
use std::time::Instant;

use souk_ranker_core::UserHasher;
use souk_ranker_core::catalog::Catalog;
use souk_ranker_core::item::{Interaction, InteractionKind, Item};
use souk_ranker_core::rng::XorShift;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let items = args.next().transpose()?.unwrap_or(100_000);
    let events = args.next().transpose()?.unwrap_or(1_000_000);
    let users = args.next().transpose()?.unwrap_or(10_000);
    let guest = args.next().transpose()?.unwrap_or(0);
    let row = args
        .next()
        .transpose()?
        .unwrap_or(souk_ranker_core::catalog::COOCCURRENCE_ROW);
    let mut rng = XorShift::new(42);
    let mut next = move |n: usize| ((rng.unit() * n as f64) as usize).min(n - 1);
    let mut catalog = Catalog::default();
    catalog.set_ann_min_items(usize::MAX);
    catalog.set_cooccurrence_row(if row == 0 { usize::MAX } else { row });
    for i in 0..items {
        let item = Item {
            id: format!("p{i:06}"),
            title: format!("thing {i}"),
            description: String::new(),
            category: vec![format!("c{}", i % 50)],
            brand: String::new(),
            price: 1.0,
            attributes: Default::default(),
            in_stock: true,
        };
        catalog.upsert(item, vec![1.0, 0.0, 0.0, 0.0])?;
    }
    let hasher = UserHasher::new(b"replay");
    let keys: Vec<_> = (0..users).map(|u| hasher.key(&format!("u{u}"))).collect();
    let guest_key = hasher.key("guest");
    let mut log = Vec::with_capacity(events);
    let mut t = 1_700_000_000_000i64;
    while log.len() < events {
        let user = next(users);
        let key = if next(100) < guest {
            &guest_key
        } else {
            &keys[user]
        };
        let item = next(items).min(next(items));
        for kind in [InteractionKind::View, InteractionKind::Click] {
            t += 1000;
            log.push(Interaction {
                user: key.clone(),
                item_id: format!("p{item:06}"),
                kind,
                value: 1.0,
                timestamp_ms: t,
            });
            if next(2) == 0 {
                break;
            }
        }
    }
    log.truncate(events);
    let started = Instant::now();
    catalog.replay(&log);
    let took = started.elapsed().as_secs_f64();
    let peak = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or("?".to_string(), |kb| format!("{:.0} MB", kb / 1024.0));
    println!(
        "replayed {events} events ({users} shoppers, {guest}% under one guest id, {items} items, row {row}) in {took:.2} s: {:.2} us per event; {} co-occurrence pairs; peak RSS {peak}",
        took * 1e6 / events as f64,
        catalog.cooccurrence_pairs()
    );
    Ok(())
}
