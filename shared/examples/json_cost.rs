//! What writing a gRPC reply as JSON costs the HTTP gateway: the direct wire-to-JSON writer
//! (`gateway::json::JsonPlan`, compiled once as the gateway does) against prost-reflect's `DynamicMessage::decode` + serde, on
//! explained rankings of 10 and 100 items (the shape `Rank` answers), same bytes, same run;
//! and the entity tag a GET answer carries (`gateway::entity_tag`, BLAKE3 of the JSON).
//!
//! ```text
//! cargo run --release -p souk-shared --example json_cost -- [RUNS]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};
use souk_proto::ranker::v1 as rk;

fn ranking(k: usize) -> rk::RankResponse {
    let contribution = |signal: &str, value: f32, contribution: f32| rk::Contribution {
        signal: signal.into(),
        value,
        contribution,
    };
    rk::RankResponse {
        items: (0..k)
            .map(|i| rk::RankedItem {
                id: format!("p{i:05}"),
                score: 0.458_119_93 - i as f32 * 0.001,
                title: "Santoro Classic Drip Coffee Maker 700".into(),
                brand: "Santoro".into(),
                category: vec!["Kitchen".into(), "Coffee".into(), "Coffee Makers".into()],
                price: 816.67,
                contributions: vec![
                    contribution("dense", 0.427_193_67, 0.234_956_52),
                    contribution("bm25", 1.0, 0.2),
                    contribution("popularity", 0.463_267_98, 0.023_163_4),
                ],
                reasons: vec![
                    "matches your search \"coffee\"".into(),
                    "popular with shoppers".into(),
                ],
                ..Default::default()
            })
            .collect(),
        candidates: 312,
        model_version: "default-v1".into(),
        words_matched: Some(true),
        ..Default::default()
    }
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000);
    let pool = DescriptorPool::decode(souk_proto::FILE_DESCRIPTOR_SET).unwrap();
    let desc = pool
        .get_message_by_name("souk.ranker.v1.RankResponse")
        .unwrap();
    println!("{runs} runs each, mean us per reply");
    println!(
        "| reply | wire bytes | JSON bytes | DynamicMessage + serde | direct | ratio | entity tag |"
    );
    println!("|---|---|---|---|---|---|---|");
    for k in [10, 100] {
        let bytes = ranking(k).encode_to_vec();
        let plan = souk_shared::gateway::json::JsonPlan::new(&desc).unwrap();
        let mut direct = String::new();
        plan.write(&bytes, &mut direct).unwrap();
        let dynamic =
            serde_json::to_string(&DynamicMessage::decode(desc.clone(), bytes.as_slice()).unwrap())
                .unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&direct).unwrap(),
            serde_json::from_str::<serde_json::Value>(&dynamic).unwrap()
        );
        let mut times = [0.0f64; 3];
        // Alternate the two in rounds of 100 so that noise falls on both.
        for _ in 0..runs / 100 {
            let started = Instant::now();
            for _ in 0..100 {
                let message = DynamicMessage::decode(desc.clone(), bytes.as_slice()).unwrap();
                std::hint::black_box(serde_json::to_string(&message).unwrap());
            }
            times[0] += started.elapsed().as_secs_f64();
            let started = Instant::now();
            for _ in 0..100 {
                let mut out = String::with_capacity(bytes.len() * 2);
                plan.write(&bytes, &mut out).unwrap();
                std::hint::black_box(out);
            }
            times[1] += started.elapsed().as_secs_f64();
            let started = Instant::now();
            for _ in 0..100 {
                std::hint::black_box(souk_shared::gateway::entity_tag(direct.as_bytes()));
            }
            times[2] += started.elapsed().as_secs_f64();
        }
        let per = |t: f64| t / (runs / 100 * 100) as f64 * 1e6;
        println!(
            "| ranking, k={k}, explained | {} | {} | {:.1} | {:.1} | {:.1}x | {:.2} |",
            bytes.len(),
            direct.len(),
            per(times[0]),
            per(times[1]),
            times[0] / times[1],
            per(times[2])
        );
    }
}
