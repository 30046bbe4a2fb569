//! `souk-encoder-bench`: measures and checks the encoder's forward pass outside the server.
//!
//! - `shapes`: sequences/s at a fixed batch x sequence length (synthetic token ids), the
//!   figure to compare with PyTorch at the same shapes (`scripts/gpu/torch_bench.py`).
//! - `texts`: texts/s over a file of texts through the dynamic batcher, in requests of `--batch`.
//! - `reference` / `agree`: write f32 CPU vectors for a text file; compare another device or dtype
//!   against them (minimum cosine; exits non-zero under `--min-cosine`).
//! - `gemm`: GFLOPS of the packed engine's matrix multiply at BERT's shapes on one thread,
//!   against this core's FMA ceiling measured in the same run.
//! - `convert`: copy a model directory with its weights cast (f16 halves what a GPU run carries).
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use souk_encoder_candle::{CandleBackend, Engine};
use souk_encoder_core::batcher::{Batcher, BatcherOptions};
use souk_encoder_core::{Backend, Batch, ModelFiles, Sequence, TextTokenizer};

#[derive(Parser)]
#[command(
    name = "souk-encoder-bench",
    about = "Benchmarks and checks for souk's encoder"
)]
struct Cli {
    /// Model directory.
    #[arg(long, global = true, default_value = "models/all-MiniLM-L6-v2")]
    model: PathBuf,
    /// cpu or cuda:N.
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
    /// f32, f16 or bf16.
    #[arg(long, global = true, default_value = "f32")]
    dtype: String,
    /// auto (packed on CPU, fused on GPU), packed, fused, flash or graph (candle's stock ops).
    #[arg(long, global = true, default_value = "auto")]
    engine: String,
    #[command(subcommand)]
    command: Command,
}

struct NoMetrics;

impl souk_encoder_core::batcher::BatchObserver for NoMetrics {}

#[derive(Subcommand)]
enum Command {
    /// Milliseconds per forward pass in each operation of candle's graph (device synchronised
    /// after every op), at batch x seq tokens (synthetic ids).
    Ops {
        #[arg(long, default_value_t = 512)]
        batch: usize,
        #[arg(long, default_value_t = 128)]
        seq: usize,
        #[arg(long, default_value_t = 5)]
        iters: usize,
    },
    /// Sequences per second at batch x seq tokens (synthetic ids).
    Shapes {
        #[arg(long, default_value_t = 128)]
        batch: usize,
        #[arg(long, default_value_t = 32)]
        seq: usize,
        #[arg(long, default_value_t = 30)]
        iters: usize,
        #[arg(long, default_value_t = 5)]
        warmup: usize,
    },
    /// Texts per second over a file (one text per line) through the dynamic batcher.
    Texts {
        file: PathBuf,
        /// Texts per request.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Repeat the whole file this many times and report the median.
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Callers sending requests at once (the file is dealt out between them).
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Inference workers (the service's `--inference-workers`).
        #[arg(long, default_value_t = 1)]
        workers: usize,
    },
    /// Write CPU f32 vectors of a text file as JSON.
    Reference { file: PathBuf, out: PathBuf },
    /// Compare this device/dtype with a reference JSON.
    Agree {
        reference: PathBuf,
        #[arg(long, default_value_t = 0.999)]
        min_cosine: f64,
    },
    /// Copy the model directory with weights cast to --dtype.
    Convert { out: PathBuf },
    /// GFLOPS of the packed engine's matrix multiply on one thread at the model's linear
    /// shapes (`--tokens` rows), against this core's FMA ceiling in the same run.
    Gemm {
        /// Rows (tokens packed in one batch): 32 titles of ~18 word pieces by default.
        #[arg(long, default_value_t = 576)]
        tokens: usize,
        #[arg(long, default_value_t = 15)]
        repeats: usize,
    },
}

fn synthetic(batch: usize, seq: usize) -> Batch {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let sequences = (0..batch)
        .map(|_| {
            let mut ids = Vec::with_capacity(seq);
            ids.push(101);
            for _ in 1..seq.saturating_sub(1) {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                ids.push(1_000 + ((state >> 33) % 28_000) as u32);
            }
            ids.push(102);
            Sequence {
                type_ids: vec![0; ids.len()],
                ids,
            }
        })
        .collect();
    Batch { sequences }
}

fn read_lines(path: &PathBuf) -> anyhow::Result<Vec<String>> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| path.display().to_string())?
        .lines()
        .map(str::to_string)
        .collect())
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-12)
}

/// `gemm`: the kernel alone, one thread, at the four linear shapes of the model's layers.
fn gemm(model: &std::path::Path, tokens: usize, repeats: usize) -> anyhow::Result<()> {
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(model.join("config.json"))
            .with_context(|| format!("{}/config.json", model.display()))?,
    )?;
    let size = |key: &str| {
        config[key]
            .as_u64()
            .map(|v| v as usize)
            .with_context(|| format!("config.json has no {key}"))
    };
    let (hidden, intermediate) = (size("hidden_size")?, size("intermediate_size")?);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let peak = souk_encoder_candle::fma_peak_gflops();
    match peak {
        Some(p) => println!("FMA ceiling (12 chains, no memory): {p:.1} GFLOPS"),
        None => println!("FMA ceiling: no AVX2/FMA on this CPU (portable kernel)"),
    }
    for (name, inputs, outputs) in [
        ("query/key/value", hidden, 3 * hidden),
        ("attention output", hidden, hidden),
        ("feed-forward in", hidden, intermediate),
        ("feed-forward out", intermediate, hidden),
    ] {
        let g = pool.install(|| souk_encoder_candle::gemm_gflops(tokens, inputs, outputs, repeats));
        let share = peak.map_or(String::new(), |p| {
            format!(" = {:.0}% of the ceiling", 100.0 * g / p)
        });
        println!("{name:>17} {tokens}x{inputs} -> {outputs}: {g:.1} GFLOPS{share}");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Gemm { tokens, repeats } = cli.command {
        return gemm(&cli.model, tokens, repeats);
    }
    let files = ModelFiles::open(&cli.model)?;
    let engine = Engine::parse_for(&cli.engine, &cli.device, &files.model_type)?;
    let load = || CandleBackend::load_engine(&files, &cli.device, &cli.dtype, engine);
    match cli.command {
        Command::Gemm { .. } => unreachable!("answered before the model is loaded"),
        Command::Convert { out } => {
            souk_encoder_candle::convert_model(&files, &out, &cli.dtype)?;
            println!("wrote {} ({})", out.display(), cli.dtype);
        }
        Command::Ops { batch, seq, iters } => {
            let ops = souk_encoder_candle::profile_ops(
                &files,
                &cli.device,
                &cli.dtype,
                engine,
                &synthetic(batch, seq),
                iters,
            )?;
            let total: f64 = ops.iter().map(|(_, ms)| ms).sum();
            println!(
                "engine={} device={} dtype={} shape={batch}x{seq}: {total:.2} ms per pass (synchronised after each op)",
                engine.name(),
                cli.device,
                cli.dtype
            );
            for (name, ms) in ops {
                println!(
                    "  {ms:>9.3} ms  {:>5.1}%  {name}",
                    100.0 * ms / total.max(1e-12)
                );
            }
        }
        Command::Shapes {
            batch,
            seq,
            iters,
            warmup,
        } => {
            let mut backend = load()?;
            let input = synthetic(batch, seq);
            for _ in 0..warmup {
                backend.embed(&input)?;
            }
            let mut times = Vec::with_capacity(iters);
            for _ in 0..iters.max(1) {
                let started = Instant::now();
                let out = backend.embed(&input)?;
                times.push(started.elapsed().as_secs_f64());
                anyhow::ensure!(out.len() == batch, "wrong output size");
            }
            times.sort_by(f64::total_cmp);
            let median = times[times.len() / 2];
            println!(
                "engine={} device={} dtype={} shape={batch}x{seq} seqs_per_s={:.1} ms_per_batch={:.3}",
                engine.name(),
                cli.device,
                cli.dtype,
                batch as f64 / median,
                median * 1e3
            );
        }
        Command::Texts {
            file,
            batch,
            repeat,
            concurrency,
            workers,
        } => {
            let texts = read_lines(&file)?;
            let tokenizer = TextTokenizer::load(&files)?;
            let backend = load()?;
            let backends = vec![backend; workers.max(1)];
            let batcher = Batcher::spawn_workers(
                backends,
                tokenizer,
                BatcherOptions::default(),
                std::sync::Arc::new(NoMetrics),
            )?;
            let runtime = tokio::runtime::Runtime::new()?;
            let chunks: Vec<Vec<String>> =
                texts.chunks(batch.max(1)).map(<[String]>::to_vec).collect();
            let mut rates = Vec::new();
            for _ in 0..repeat.max(1) {
                let started = Instant::now();
                runtime.block_on(async {
                    let callers = concurrency.max(1);
                    let mut tasks = Vec::new();
                    for caller in 0..callers {
                        let batcher = batcher.clone();
                        let mine: Vec<Vec<String>> = chunks
                            .iter()
                            .skip(caller)
                            .step_by(callers)
                            .cloned()
                            .collect();
                        tasks.push(tokio::spawn(async move {
                            for chunk in mine {
                                batcher.embed(chunk, true, true).await?;
                            }
                            anyhow::Ok(())
                        }));
                    }
                    for task in tasks {
                        task.await??;
                    }
                    anyhow::Ok(())
                })?;
                rates.push(texts.len() as f64 / started.elapsed().as_secs_f64());
            }
            rates.sort_by(f64::total_cmp);
            println!(
                "engine={} device={} dtype={} texts={} batch={batch} concurrency={concurrency} workers={workers} texts_per_s={:.1} (median of {})",
                engine.name(),
                cli.device,
                cli.dtype,
                texts.len(),
                rates[rates.len() / 2],
                rates.len()
            );
        }
        Command::Reference { file, out } => {
            let texts = read_lines(&file)?;
            let tokenizer = TextTokenizer::load(&files)?;
            let mut backend = CandleBackend::load_engine(&files, "cpu", "f32", Engine::Packed)?;
            let sequences = tokenizer.encode_all(&texts, true)?;
            let mut vectors = Vec::new();
            for chunk in sequences.chunks(32) {
                vectors.extend(backend.embed(&Batch {
                    sequences: chunk.to_vec(),
                })?);
            }
            let json = serde_json::json!({ "texts": texts, "vectors": vectors });
            std::fs::write(&out, serde_json::to_vec(&json)?)?;
            println!("wrote {} vectors to {}", vectors.len(), out.display());
        }
        Command::Agree {
            reference,
            min_cosine,
        } => {
            let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&reference)?)?;
            let texts: Vec<String> = serde_json::from_value(json["texts"].clone())?;
            let want: Vec<Vec<f32>> = serde_json::from_value(json["vectors"].clone())?;
            let tokenizer = TextTokenizer::load(&files)?;
            let mut backend = load()?;
            let sequences = tokenizer.encode_all(&texts, true)?;
            let mut got = Vec::new();
            for chunk in sequences.chunks(32) {
                got.extend(backend.embed(&Batch {
                    sequences: chunk.to_vec(),
                })?);
            }
            let cosines: Vec<f64> = got.iter().zip(&want).map(|(a, b)| cosine(a, b)).collect();
            let min = cosines.iter().copied().fold(f64::INFINITY, f64::min);
            let mean = cosines.iter().sum::<f64>() / cosines.len().max(1) as f64;
            println!(
                "agreement engine={} device={} dtype={} texts={} min_cosine={min:.6} mean_cosine={mean:.6}",
                engine.name(),
                cli.device,
                cli.dtype,
                cosines.len()
            );
            anyhow::ensure!(
                min >= min_cosine,
                "min cosine {min:.6} is under {min_cosine}"
            );
        }
    }
    Ok(())
}
