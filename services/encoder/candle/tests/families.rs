//! Model families and sentence-transformers modules against transformers' and
//! sentence-transformers' own implementations, on tiny, randomly initialised models of the
//! exact architectures (`tests/data`, written with their reference vectors by
//! `scripts/gen_tiny_encoders.py`; no such real model can be fetched here). Every engine, on
//! each text alone and on all of them in one padded batch, must give the reference vectors.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use souk_encoder_candle::{CandleBackend, Engine};
use souk_encoder_core::{
    Activation, Backend, Batch, HeadModule, ModelFiles, Pooling, Positions, TextTokenizer,
};

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn normalised(v: &[f32]) -> Vec<f64> {
    let norm = v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    v.iter().map(|x| f64::from(*x) / norm).collect()
}

/// Every engine's vectors of the fixture's reference texts (tokenized by `tokenizer.json` as
/// the service does) against its reference, alone and in one batch.
fn every_engine_gives_the_reference(files: &ModelFiles, dimension: usize) -> Vec<Vec<u32>> {
    engines_give_the_reference(
        files,
        dimension,
        &[Engine::Packed, Engine::Fused, Engine::Flash, Engine::Graph],
    )
}

fn engines_give_the_reference(
    files: &ModelFiles,
    dimension: usize,
    engines: &[Engine],
) -> Vec<Vec<u32>> {
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(files.dir.join("reference.json")).unwrap())
            .unwrap();
    let items = reference["items"].as_array().unwrap();
    let tokenizer = TextTokenizer::load(files).unwrap();
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
    let all = Batch {
        sequences: sequences.clone(),
    };
    for engine in engines {
        let mut backend = CandleBackend::load_engine(files, "cpu", "f32", *engine).unwrap();
        assert_eq!(backend.dimension(), dimension);
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
                assert_eq!(got.len(), dimension);
                let cosine: f64 = normalised(got).iter().zip(&want).map(|(a, b)| a * b).sum();
                assert!(
                    cosine >= 0.9999,
                    "{}, {engine:?}, {:?} {how}: cosine {cosine:.6} to the reference",
                    files.model_id(),
                    item["text"].as_str().unwrap()
                );
            }
        }
    }
    sequences.into_iter().map(|s| s.ids).collect()
}

/// XLM-RoBERTa: positions numbered after the padding id (a padding id in the text included),
/// the 64-token limit read off a 66-row position table, and `<s> ... </s>` from the tokenizer.
/// Read as BERT (positions from 0), the same model's vectors fall to cosine 0.41.
#[test]
fn every_engine_gives_transformers_vectors_for_xlm_roberta() {
    let files = ModelFiles::open(fixture("tiny-xlm-roberta")).unwrap();
    assert_eq!(files.model_type, "xlm-roberta");
    assert_eq!(files.positions, Positions::AfterPadding { pad: 1 });
    assert_eq!(
        files.max_seq_length, 64,
        "66 position rows, the first 2 reserved"
    );
    let ids = every_engine_gives_the_reference(&files, 32);
    assert!(
        ids.iter().any(|s| s[1..].contains(&1)),
        "a text holds the padding id, numbered as transformers numbers it"
    );
}

/// LaBSE's layout, saved by sentence-transformers 6: CLS pooling (its `"pooling_mode": "cls"`),
/// a dense layer with tanh that makes 16 of 32 values, and the limit of 48 tokens from
/// `tokenizer_config.json` (the table has 64).
#[test]
fn every_engine_gives_sentence_transformers_vectors_through_a_dense_layer() {
    let files = ModelFiles::open(fixture("tiny-bert-dense")).unwrap();
    assert_eq!(files.pooling, Pooling::Cls);
    assert_eq!(files.max_seq_length, 48);
    assert!(
        matches!(files.head.as_slice(), [HeadModule::Dense(d)]
            if d.activation == Activation::Tanh && d.out_features == 16),
        "{:?}",
        files.head
    );
    let ids = every_engine_gives_the_reference(&files, 16);
    assert!(ids.iter().any(|s| s.len() == 48), "a text is cut at 48");
}

/// DistilBERT: BERT's layers under other names and no token-type table, saved by
/// sentence-transformers 6 (mean pooling, Normalize).
#[test]
fn every_engine_gives_sentence_transformers_vectors_for_distilbert() {
    let files = ModelFiles::open(fixture("tiny-distilbert")).unwrap();
    assert_eq!(
        (files.model_type.as_str(), files.positions, files.pooling),
        ("distilbert", Positions::FromZero, Pooling::Mean)
    );
    assert!(
        files.head.is_empty(),
        "the final Normalize is the request's"
    );
    every_engine_gives_the_reference(&files, 32);
}

/// MPNet (all-mpnet-base-v2's family): RoBERTa's position numbering, BERT's layers under other
/// names, and a relative position bias in every layer's attention, on the packed and graph
/// engines; the fused and flash kernels do not add the bias, so they refuse the model by name.
#[test]
fn the_packed_and_graph_engines_give_sentence_transformers_vectors_for_mpnet() {
    let files = ModelFiles::open(fixture("tiny-mpnet")).unwrap();
    assert_eq!(
        (
            files.model_type.as_str(),
            files.positions,
            files.max_seq_length
        ),
        ("mpnet", Positions::AfterPadding { pad: 1 }, 64)
    );
    let ids = engines_give_the_reference(&files, 32, &[Engine::Packed, Engine::Graph]);
    assert!(ids.iter().any(|s| s.len() == 64), "distances up to 63");
    // `auto` on a GPU picks graph for MPNet; asked for by name, fused and flash refuse it.
    assert_eq!(
        Engine::parse_for("auto", "cuda:0", &files.model_type).unwrap(),
        Engine::Graph
    );
    assert_eq!(
        Engine::parse_for("auto", "cuda:0", "bert").unwrap(),
        Engine::Fused
    );
    assert_eq!(
        Engine::parse_for("auto", "cpu", &files.model_type).unwrap(),
        Engine::Packed
    );
    for engine in [Engine::Fused, Engine::Flash] {
        let refused = CandleBackend::load_engine(&files, "cpu", "f32", engine)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            refused.contains("does not run MPNet's relative attention bias"),
            "{engine:?}: {refused}"
        );
    }
}

/// ModernBERT (gte-modernbert's, modernbert-embed's family): rotary positions with a base per
/// layer kind, local layers that see 4 tokens each side (texts up to 64 pieces cross it),
/// pre-norm layers with a gated GELU and no biases, on the packed engine; the other engines
/// are BERT's layers and refuse it by name.
#[test]
fn the_packed_engine_gives_sentence_transformers_vectors_for_modernbert() {
    let files = ModelFiles::open(fixture("tiny-modernbert")).unwrap();
    assert_eq!(
        (files.model_type.as_str(), files.max_seq_length),
        ("modernbert", 64)
    );
    let ids = engines_give_the_reference(&files, 32, &[Engine::Packed]);
    assert!(
        ids.iter().any(|s| s.len() > 9),
        "a text wider than the local window"
    );
    for engine in [Engine::Graph, Engine::Fused, Engine::Flash] {
        let error = CandleBackend::load_engine(&files, "cpu", "f32", engine)
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("ModernBERT runs on the packed engine on cpu only"),
            "{error}"
        );
    }
}

/// Every pooling mode sentence-transformers has, on every engine: max (on the host for the
/// GPU engines), mean over the square root of the length, position-weighted mean, last token,
/// and the two every real model here uses. The fixture is saved with max pooling; each mode
/// is its pooling config rewritten, against sentence-transformers' vectors for that mode.
#[test]
fn every_engine_pools_each_mode_as_sentence_transformers_does() {
    let source = fixture("tiny-bert-pooling");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(source.join("reference.json")).unwrap())
            .unwrap();
    let saved = ModelFiles::open(&source).unwrap();
    assert_eq!(
        saved.pooling,
        Pooling::Max,
        "as sentence-transformers saved it"
    );
    let mut seen = Vec::new();
    for mode in reference["items"][0]["modes"].as_object().unwrap().keys() {
        // Named by the mode: a failure names the directory.
        let dir = tempfile::Builder::new().prefix(mode).tempdir().unwrap();
        for entry in walk(&source) {
            let to = dir.path().join(entry.strip_prefix(&source).unwrap());
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(&entry, to).unwrap();
        }
        std::fs::write(
            dir.path().join("1_Pooling/config.json"),
            format!(
                r#"{{"embedding_dimension": 32, "pooling_mode": "{mode}", "include_prompt": true}}"#
            ),
        )
        .unwrap();
        // The reference's vectors for this mode where the checker reads them.
        let mut moded = reference.clone();
        for item in moded["items"].as_array_mut().unwrap() {
            item["embedding"] = item["modes"][mode].clone();
        }
        std::fs::write(dir.path().join("reference.json"), moded.to_string()).unwrap();
        let files = ModelFiles::open(dir.path()).unwrap();
        assert_eq!(files.pooling.as_str(), mode);
        every_engine_gives_the_reference(&files, 32);
        seen.push(files.pooling);
    }
    assert_eq!(seen.len(), 6, "every mode: {seen:?}");
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
