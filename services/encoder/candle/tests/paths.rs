//! The three engines on the real model: the fused engine (what GPUs run, here through its
//! kernels' CPU reference) and candle's graph must give the packed CPU engine's vectors, for
//! sequences of every length class in one mixed (padded) batch and for a lone sequence. The
//! reference test in integration-tests holds the served engine to sentence-transformers; this
//! one catches a divergence between engines in CI, where no GPU runs.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use souk_encoder_candle::{CandleBackend, Engine};
use souk_encoder_core::{Backend, Batch, ModelFiles, Sequence};

#[test]
fn every_engine_gives_the_packed_engines_vectors() {
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
    let mut packed = CandleBackend::load_engine(&files, "cpu", "f32", Engine::Packed).unwrap();
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
    let lone = Batch {
        sequences: vec![sequences[2].clone()],
    };
    let mixed = Batch { sequences };
    for engine in [Engine::Fused, Engine::Flash, Engine::Graph] {
        let mut other = CandleBackend::load_engine(&files, "cpu", "f32", engine).unwrap();
        assert_eq!(other.engine(), engine);
        for batch in [&mixed, &lone] {
            let a = packed.embed(batch).unwrap();
            let b = other.embed(batch).unwrap();
            assert_eq!(a.len(), b.len(), "{engine:?}");
            assert_close(&a, &b, batch, engine);
        }
    }
}

fn assert_close(a: &[Vec<f32>], b: &[Vec<f32>], batch: &Batch, engine: Engine) {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
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
            "{engine:?}, sequence {i} ({} tokens): cosine {cosine}, max difference {max_diff}",
            batch.sequences[i].ids.len()
        );
    }
}
