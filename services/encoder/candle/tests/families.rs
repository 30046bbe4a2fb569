//! The RoBERTa family (here XLM-RoBERTa) against transformers' own implementation: a tiny,
//! randomly initialised model of the exact architecture with a Unigram tokenizer
//! (`tests/data/tiny-xlm-roberta`, written with its reference vectors by
//! `scripts/gen_tiny_xlmr.py`; no RoBERTa-family model can be fetched here). Every engine, on
//! each text alone and on all of them in one padded batch, must give sentence-transformers'
//! vectors. What it holds: positions numbered after the padding id (a padding id in the text
//! included), the 64-token limit read off a 66-row position table, and `<s> ... </s>` from the
//! tokenizer. Read as BERT (positions from 0), the same model's vectors fall to cosine 0.41.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use souk_encoder_candle::{CandleBackend, Engine};
use souk_encoder_core::{Backend, Batch, ModelFiles, Positions, TextTokenizer};

fn fixture() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny-xlm-roberta")
}

fn normalised(v: &[f32]) -> Vec<f64> {
    let norm = v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    v.iter().map(|x| f64::from(*x) / norm).collect()
}

#[test]
fn every_engine_gives_transformers_vectors_for_xlm_roberta() {
    let files = ModelFiles::open(fixture()).unwrap();
    assert_eq!(files.model_type, "xlm-roberta");
    assert_eq!(files.positions, Positions::AfterPadding { pad: 1 });
    assert_eq!(
        files.max_seq_length, 64,
        "66 position rows, the first 2 reserved"
    );
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("reference.json")).unwrap())
            .unwrap();
    let items = reference["items"].as_array().unwrap();
    let tokenizer = TextTokenizer::load(&files).unwrap();
    let sequences: Vec<_> = items
        .iter()
        .map(|item| {
            let text = item["text"].as_str().unwrap();
            let sequence = tokenizer.encode_one(text, true).unwrap();
            assert_eq!(
                sequence.ids.len() as u64,
                item["tokens"].as_u64().unwrap(),
                "token count of {text:?}"
            );
            sequence
        })
        .collect();
    assert!(
        sequences.iter().any(|s| s.ids[1..].contains(&1)),
        "a text holds the padding id, numbered as transformers numbers it"
    );
    let all = Batch {
        sequences: sequences.clone(),
    };
    for engine in [Engine::Packed, Engine::Fused, Engine::Flash, Engine::Graph] {
        let mut backend = CandleBackend::load_engine(&files, "cpu", "f32", engine).unwrap();
        let together = backend.embed(&all).unwrap();
        for (i, item) in items.iter().enumerate() {
            let alone = backend
                .embed(&Batch {
                    sequences: vec![sequences[i].clone()],
                })
                .unwrap();
            let want: Vec<f64> = item["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            for (how, got) in [("alone", &alone[0]), ("in the batch", &together[i])] {
                let cosine: f64 = normalised(got).iter().zip(&want).map(|(a, b)| a * b).sum();
                assert!(
                    cosine >= 0.9999,
                    "{engine:?}, {:?} {how}: cosine {cosine:.6} to transformers' vector",
                    item["text"].as_str().unwrap()
                );
            }
        }
    }
}
