//! The packed CPU path against candle's graph (what GPUs run) on the real model: the same
//! vectors for sequences of every length class in one mixed batch. The reference test in
//! integration-tests holds both to sentence-transformers; this one catches a divergence between
//! them in CI, where no GPU exercises the graph.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use souk_encoder_candle::CandleBackend;
use souk_encoder_core::{Backend, Batch, ModelFiles, Sequence};

#[test]
fn packed_and_graph_paths_give_the_same_vectors() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../models/all-MiniLM-L6-v2");
    if !dir.is_dir() {
        eprintln!(
            "skipped: {} is absent (scripts/fetch-model.sh fetches it)",
            dir.display()
        );
        return;
    }
    let files = ModelFiles::open(&dir).unwrap();
    let mut packed = CandleBackend::load(&files, "cpu", "f32").unwrap();
    let mut graph = CandleBackend::load_graph(&files, "cpu", "f32").unwrap();
    // [CLS] ... [SEP] with ids spread over the vocabulary; lengths 2 to 256, mixed.
    let sequences: Vec<Sequence> = [2usize, 5, 17, 64, 3, 256, 31, 128]
        .iter()
        .enumerate()
        .map(|(s, &len)| {
            let mut ids = vec![101u32];
            ids.extend(
                (0..len.saturating_sub(2))
                    .map(|i| 1_000 + ((i * 7_919 + s * 104_729) % 28_000) as u32),
            );
            ids.push(102);
            Sequence {
                type_ids: vec![0; ids.len()],
                ids,
            }
        })
        .collect();
    let batch = Batch { sequences };
    let a = packed.embed(&batch).unwrap();
    let b = graph.embed(&batch).unwrap();
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let dot: f32 = x.iter().zip(y).map(|(p, q)| p * q).sum();
        let nx: f32 = x.iter().map(|p| p * p).sum::<f32>().sqrt();
        let ny: f32 = y.iter().map(|q| q * q).sum::<f32>().sqrt();
        let cosine = dot / (nx * ny);
        let max_diff = x
            .iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0f32, f32::max);
        assert!(
            cosine > 0.99999 && max_diff < 1e-3,
            "sequence {i} ({} tokens): cosine {cosine}, max difference {max_diff}",
            batch.sequences[i].ids.len()
        );
    }
}
