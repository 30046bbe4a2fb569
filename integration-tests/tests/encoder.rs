//! The encoder through its RPC: agreement with sentence-transformers and bad input.
use souk_proto::encoder::v1 as enc;
use souk_proto::encoder::v1::encoder_client::EncoderClient;

use crate::common::*;

fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * y).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x.powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// A reference file: texts with the vectors and token counts sentence-transformers gave.
struct Reference {
    items: Vec<serde_json::Value>,
}

impl Reference {
    fn read(path: &std::path::Path) -> Self {
        let file: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        Self {
            items: file["items"].as_array().unwrap().clone(),
        }
    }

    fn texts(&self) -> Vec<String> {
        self.items
            .iter()
            .map(|i| i["text"].as_str().unwrap().to_string())
            .collect()
    }

    /// Embeds the reference's texts through `client` as `kind` (or the prompt named), and
    /// checks the answers with [`Reference::assert_answered`]; returns them.
    async fn assert_served(
        &self,
        client: &mut EncoderClient<tonic::transport::Channel>,
        kind: enc::TextKind,
        prompt_name: &str,
        view: Option<&str>,
        what: &str,
    ) -> Vec<enc::Embedding> {
        let answer = client
            .embed(enc::EmbedRequest {
                texts: self.texts(),
                kind: kind.into(),
                prompt_name: prompt_name.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        self.assert_answered(&answer.embeddings, view, what);
        answer.embeddings
    }

    /// One answer per text, each within cosine 0.9999 of its reference vector (of the
    /// prompted view `item[view]` when given) and of its token count.
    fn assert_answered(&self, answers: &[enc::Embedding], view: Option<&str>, what: &str) {
        assert_eq!(answers.len(), self.items.len(), "{what}");
        for (item, got) in self.items.iter().zip(answers) {
            let text: String = item["text"].as_str().unwrap().chars().take(60).collect();
            let want = view.map_or(item, |v| &item[v]);
            let vector: Vec<f64> = want["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let c = cosine(&got.values, &vector);
            assert!(c >= 0.9999, "{what}: cosine {c:.6} for {text:?}");
            assert_eq!(
                u64::from(got.tokens),
                want["tokens"].as_u64().unwrap(),
                "{what}: token count for {text:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn embeddings_match_sentence_transformers() {
    let reference = Reference::read(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/minilm-reference.json"),
    );
    let mut client = EncoderClient::new(channel(&shared_encoder().await).await);
    reference
        .assert_served(&mut client, enc::TextKind::Unspecified, "", None, "MiniLM")
        .await;
    let info = client.info(enc::InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (
            info.dimension,
            info.max_tokens,
            info.pooling.as_str(),
            info.engine.as_str()
        ),
        (384, 256, "mean", "packed")
    );
}

/// `dimensions` cuts each vector to its first values and normalises them after the cut, as
/// sentence-transformers' `truncate_dim` does: the reference vectors' prefixes, renormalised.
/// Each length answers with its own fingerprint, the whole length with the model's; a length
/// the model lacks is refused.
#[tokio::test(flavor = "multi_thread")]
async fn vectors_cut_to_fewer_dimensions_are_the_normalised_prefixes() {
    let reference = Reference::read(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/minilm-reference.json"),
    );
    let mut client = EncoderClient::new(channel(&shared_encoder().await).await);
    let model = client
        .info(enc::InfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .model_fingerprint;
    let embed = |dimensions: Option<u32>, normalize: Option<bool>| enc::EmbedRequest {
        texts: reference.texts(),
        normalize,
        dimensions,
        ..Default::default()
    };
    let whole = client
        .embed(embed(None, Some(false)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(whole.model_fingerprint, model);
    let mut prints = vec![model];
    for cut in [64u32, 128, 256] {
        let answer = client
            .embed(embed(Some(cut), None))
            .await
            .unwrap()
            .into_inner();
        assert!(
            !prints.contains(&answer.model_fingerprint),
            "{cut}: a print of its own"
        );
        prints.push(answer.model_fingerprint);
        for (item, got) in reference.items.iter().zip(&answer.embeddings) {
            let text = item["text"].as_str().unwrap();
            let prefix: Vec<f64> = item["embedding"].as_array().unwrap()[..cut as usize]
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(got.values.len(), cut as usize);
            let norm: f32 = got.values.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!(
                (norm - 1.0).abs() < 1e-4,
                "{cut}: {text:?} normalised after the cut"
            );
            let c = cosine(&got.values, &prefix);
            assert!(c >= 0.9999, "{cut}: cosine {c:.6} for {text:?}");
        }
        // The same length again: the same space.
        let again = client
            .embed(embed(Some(cut), None))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again.model_fingerprint, answer.model_fingerprint);
    }
    // Not normalised: the whole vector's first values as they are.
    let raw = client
        .embed(embed(Some(128), Some(false)))
        .await
        .unwrap()
        .into_inner();
    // (Within rounding: other tests' texts may share a forward pass with either request.)
    for (cut, full) in raw.embeddings.iter().zip(&whole.embeddings) {
        assert_eq!(cut.values.len(), 128);
        let off = cut
            .values
            .iter()
            .zip(&full.values)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(off < 1e-4, "raw prefix off by {off}");
    }
    let all = client
        .embed(embed(Some(384), None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        all.model_fingerprint, model,
        "the whole length is the model's space"
    );
    for bad in [0, 385] {
        let status = client.embed(embed(Some(bad), None)).await.unwrap_err();
        assert_invalid(
            &status,
            &format!("dimensions {bad}: this model's vectors have 1 to 384"),
        );
    }
}

/// `Words` lists the whole words of the model's vocabulary, recounted here from
/// `tokenizer.json` itself: the ranker's spelling lexicon.
#[tokio::test(flavor = "multi_thread")]
async fn words_are_the_vocabulary_s_whole_words() {
    let tokenizer: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model_dir().join("tokenizer.json")).unwrap())
            .unwrap();
    let model = &tokenizer["model"];
    assert_eq!(model["type"], "WordPiece");
    let prefix = model["continuing_subword_prefix"].as_str().unwrap();
    let mut want: Vec<String> = model["vocab"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|t| !t.starts_with(prefix))
        .filter(|t| t.chars().count() >= 2 && t.chars().all(char::is_alphabetic))
        .map(|t| t.to_lowercase())
        .collect();
    want.sort();
    want.dedup();
    let mut client = EncoderClient::new(channel(&shared_encoder().await).await);
    let got = client
        .words(enc::WordsRequest {})
        .await
        .unwrap()
        .into_inner()
        .words;
    assert_eq!(got.len(), want.len());
    assert!(got == want, "the words differ from tokenizer.json's");
    for word in ["lover", "coffee", "lightweight"] {
        assert!(got.binary_search(&word.to_string()).is_ok(), "{word}");
    }
    for not in ["headfones", "##ing", "a", "[cls]", "2020"] {
        assert!(got.binary_search(&not.to_string()).is_err(), "{not}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_without_hurting_other_callers() {
    let url = shared_encoder().await;
    let mut client = EncoderClient::new(channel(&url).await);
    let too_many = enc::EmbedRequest {
        texts: vec!["x".into(); 513],
        truncate: None,
        normalize: None,
        ..Default::default()
    };
    let status = client.embed(too_many).await.unwrap_err();
    assert_invalid(&status, "513 texts");

    let long = "word ".repeat(400);
    let strict = enc::EmbedRequest {
        texts: vec!["short".into(), long.clone()],
        truncate: Some(false),
        normalize: None,
        ..Default::default()
    };
    let status = client.embed(strict).await.unwrap_err();
    assert_invalid(&status, "texts[1]");

    // Empty, NUL and control characters are valid text; concurrent good and bad requests each
    // get their own answer.
    let odd = enc::EmbedRequest {
        texts: vec![String::new(), "a\0b\u{7}c".into(), "\t\n".into()],
        truncate: None,
        normalize: None,
        ..Default::default()
    };
    let mut good_client = EncoderClient::new(channel(&url).await);
    let mut bad_client = EncoderClient::new(channel(&url).await);
    let bad = enc::EmbedRequest {
        texts: vec![long],
        truncate: Some(false),
        normalize: None,
        ..Default::default()
    };
    let (good, bad) = tokio::join!(good_client.embed(odd), bad_client.embed(bad));
    let good = good.unwrap().into_inner();
    assert_eq!(good.embeddings.len(), 3);
    for e in &good.embeddings {
        let norm: f32 = e.values.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "normalised by default");
    }
    assert_invalid(&bad.unwrap_err(), "texts[0]");
    // 10 MB in one text: embedded (its first 256 word pieces, like sentence-transformers) while
    // another caller's request goes through; with truncate false, a clear refusal.
    let huge = "lorem ipsum dolor sit amet ".repeat(10 * 1024 * 1024 / 27);
    let started = std::time::Instant::now();
    let (big, small) = tokio::join!(
        good_client.embed(enc::EmbedRequest {
            texts: vec![huge.clone(), "tent".into()],
            truncate: None,
            normalize: None,
            ..Default::default()
        }),
        bad_client.embed(enc::EmbedRequest {
            texts: vec!["camping stove".into()],
            truncate: None,
            normalize: None,
            ..Default::default()
        })
    );
    let big = big.unwrap().into_inner();
    assert_eq!(big.embeddings[0].tokens, 256);
    assert_eq!(big.embeddings[1].tokens, 3);
    assert_eq!(small.unwrap().into_inner().embeddings.len(), 1);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "a 10 MB text must not stall the batcher: {:?}",
        started.elapsed()
    );
    let status = client
        .embed(enc::EmbedRequest {
            texts: vec!["ok".into(), huge],
            truncate: Some(false),
            normalize: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_invalid(&status, "texts[1]");

    assert!(
        client
            .embed(enc::EmbedRequest::default())
            .await
            .unwrap()
            .into_inner()
            .embeddings
            .is_empty()
    );
}

/// The batcher's metrics reach `/metrics`: batch sizes, tokens, padding, tokenization and
/// inference time, and the queue depth read at scrape time.
#[tokio::test(flavor = "multi_thread")]
async fn batch_metrics_are_exported() {
    let (server, port) = start_encoder_metrics().await;
    let mut client = EncoderClient::new(channel(&server.url()).await);
    client
        .embed(enc::EmbedRequest {
            texts: vec![
                "a red tent".into(),
                "a very long sleeping bag for cold nights".into(),
            ],
            truncate: None,
            normalize: None,
            ..Default::default()
        })
        .await
        .unwrap();
    let scrape = scrape_metrics(port).await;
    let value = |name: &str| metric_value(&scrape, name);
    assert_eq!(
        value("souk_encoder_batch_texts_sum"),
        2.0,
        "one pass with both texts"
    );
    assert!(value("souk_encoder_batch_tokens_sum") >= 12.0);
    assert!(
        value("souk_encoder_batch_padding_ratio_sum") > 1.0,
        "the short text was padded"
    );
    assert_eq!(value("souk_encoder_tokenize_seconds_count"), 1.0);
    assert!(value("souk_encoder_inference_seconds_sum") > 0.0);
    assert_eq!(value("souk_encoder_queue_depth"), 0.0);
    server.stop().await.unwrap();
}

/// Two inference workers taking batches from one queue: concurrent callers each get the
/// vectors of their own texts (the same as one worker gives), none is lost or swapped.
#[tokio::test(flavor = "multi_thread")]
async fn two_inference_workers_answer_every_caller_with_its_own_vectors() {
    let mut args = encoder_args(model_dir());
    args.inference_workers = 2;
    let server = start_encoder(args).await;
    wait_serving(&server.url()).await;
    let single = shared_encoder().await;
    let texts: Vec<String> = (0..16)
        .map(|i| format!("product number {i} with {} extra words", "many ".repeat(i)))
        .collect();
    let mut calls = Vec::new();
    for chunk in texts.chunks(2) {
        let mut client = EncoderClient::new(channel(&server.url()).await);
        let request = enc::EmbedRequest {
            texts: chunk.to_vec(),
            truncate: None,
            normalize: None,
            ..Default::default()
        };
        calls.push(tokio::spawn(async move { client.embed(request).await }));
    }
    let mut got = Vec::new();
    for call in calls {
        got.extend(call.await.unwrap().unwrap().into_inner().embeddings);
    }
    let mut reference = EncoderClient::new(channel(&single).await);
    let want = reference
        .embed(enc::EmbedRequest {
            texts: texts.clone(),
            truncate: None,
            normalize: None,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .embeddings;
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let cosine: f32 = g.values.iter().zip(&w.values).map(|(a, b)| a * b).sum();
        assert!(cosine > 0.99999, "text {i}: cosine {cosine}");
        assert_eq!(g.tokens, w.tokens, "text {i}");
    }
    server.stop().await.unwrap();
}

/// Callers that give up (a deadline, a cancelled call) while their requests wait are not
/// computed for: the next caller waits for the pass under way, not for every abandoned one.
#[tokio::test(flavor = "multi_thread")]
async fn abandoned_requests_are_not_computed() {
    let (server, port) = start_encoder_metrics().await;
    const CALLERS: usize = 24;
    const TEXTS: usize = 128;
    let mut calls = Vec::new();
    for c in 0..CALLERS {
        let mut client = EncoderClient::new(channel(&server.url()).await);
        let texts = (0..TEXTS)
            .map(|i| {
                format!(
                    "caller {c} product {i} {}",
                    "with a fairly long description ".repeat(8)
                )
            })
            .collect();
        let request = enc::EmbedRequest {
            texts,
            truncate: None,
            normalize: None,
            ..Default::default()
        };
        calls.push(tokio::spawn(async move { client.embed(request).await }));
    }
    // Every request tokenized, so queued; then every caller gives up.
    let queued = soon(async || {
        metric_value(
            &scrape_metrics(port).await,
            "souk_encoder_tokenize_seconds_count",
        ) >= CALLERS as f64
    })
    .await;
    assert!(queued, "the requests were not all tokenized");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    for call in &calls {
        call.abort();
    }
    let started = std::time::Instant::now();
    let mut client = EncoderClient::new(channel(&server.url()).await);
    let answer = client
        .embed(enc::EmbedRequest {
            texts: vec!["tent".into()],
            truncate: None,
            normalize: None,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.embeddings.len(), 1);
    let waited = started.elapsed();
    let scrape = scrape_metrics(port).await;
    let computed = metric_value(&scrape, "souk_encoder_batch_texts_sum");
    let abandoned = metric_value(&scrape, "souk_encoder_abandoned_texts_total");
    eprintln!(
        "waited {waited:?}, computed {computed} texts of {}",
        CALLERS * TEXTS
    );
    // The passes under way when the callers gave up may finish; every other abandoned text is
    // dropped (and counted), and the new caller's text is computed.
    assert!(
        computed < (CALLERS * TEXTS / 4) as f64,
        "{computed} texts computed for {} abandoned ones",
        CALLERS * TEXTS
    );
    assert!(
        abandoned >= (CALLERS * TEXTS / 2) as f64
            && computed + abandoned <= (CALLERS * TEXTS + 1) as f64,
        "{abandoned} texts counted as abandoned, {computed} computed"
    );
    server.stop().await.unwrap();
}

/// A RoBERTa-family model served through the real RPC: the tiny XLM-RoBERTa of
/// `services/encoder/candle/tests/data` (random weights, exact architecture; no such model can
/// be fetched here) gives sentence-transformers' vectors, reports the 64 tokens its 66-row
/// position table leaves, refuses a text over them with truncate=false, and puts e5's prompts
/// before queries and documents as sentence-transformers does. A family souk's
/// layers do not implement stops the encoder at start, naming what it read.
#[tokio::test(flavor = "multi_thread")]
async fn a_roberta_family_model_and_its_prompts_are_served_and_other_families_refused() {
    let tiny = repo_root().join("services/encoder/candle/tests/data/tiny-xlm-roberta");
    let reference = Reference::read(&tiny.join("reference.json"));
    let texts = reference.texts();
    let encoder = start_encoder(encoder_args(tiny.clone())).await;
    wait_serving(&encoder.url()).await;
    let mut client = EncoderClient::new(channel(&encoder.url()).await);
    let info = client.info(enc::InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (
            info.model_id.as_str(),
            info.dimension,
            info.max_tokens,
            info.pooling.as_str()
        ),
        ("tiny-xlm-roberta", 32, 64, "mean")
    );
    reference
        .assert_served(
            &mut client,
            enc::TextKind::Unspecified,
            "",
            None,
            "no prompt",
        )
        .await;
    let longest = reference
        .items
        .iter()
        .position(|i| i["tokens"] == 64)
        .expect("a reference text is cut at 64 tokens");
    let status = client
        .embed(enc::EmbedRequest {
            texts: vec!["boots".into(), texts[longest].clone()],
            truncate: Some(false),
            normalize: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_invalid(&status, "texts[1]");

    // e5's prompts: a query and a product are embedded with their own prefixes, as
    // sentence-transformers' `encode(prompt_name=...)` does.
    assert_eq!(
        info.prompts.get("query").map(String::as_str),
        Some("query: ")
    );
    assert_eq!(info.default_prompt_name, "");
    for (kind, prompt_name, key) in [
        (enc::TextKind::Query, "", "query"),
        (enc::TextKind::Document, "", "document"),
        (enc::TextKind::Unspecified, "passage", "document"),
        (enc::TextKind::Document, "query", "query"),
    ] {
        // The prompt's pieces count toward the tokens.
        reference
            .assert_served(
                &mut client,
                kind,
                prompt_name,
                Some(key),
                &format!("{kind:?} {prompt_name:?}"),
            )
            .await;
    }
    let status = client
        .embed(enc::EmbedRequest {
            texts: vec!["boots".into()],
            prompt_name: "search".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_invalid(&status, "prompt_name \"search\"");
    let status = client
        .embed(enc::EmbedRequest {
            texts: vec!["boots".into()],
            kind: 7,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_invalid(&status, "kind 7");
    encoder.stop().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tiny.join("config.json")).unwrap()).unwrap();
    for (key, value, said) in [
        (
            "model_type",
            "deberta-v2",
            r#"model_type "deberta-v2" is not supported"#,
        ),
        (
            "hidden_act",
            "relu",
            r#"hidden_act "relu" is not supported"#,
        ),
    ] {
        let other = dir.path().join(value);
        std::fs::create_dir_all(other.join("1_Pooling")).unwrap();
        for file in [
            "model.safetensors",
            "tokenizer.json",
            "1_Pooling/config.json",
        ] {
            std::fs::copy(tiny.join(file), other.join(file)).unwrap();
        }
        let mut changed = config.clone();
        changed[key] = value.into();
        std::fs::write(other.join("config.json"), changed.to_string()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let outcome = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            souk_encoder::serve(listener, encoder_args(other), std::future::pending()),
        )
        .await
        .expect("a refused model stops the encoder instead of serving");
        let error = format!("{:#}", outcome.unwrap_err());
        assert!(
            error.contains("config.json") && error.contains(said),
            "{value}: {error}"
        );
    }
}

/// Directories saved by sentence-transformers 6 through the real RPC: the tiny models of
/// `services/encoder/candle/tests/data`, LaBSE's layout (CLS pooling, a dense layer with tanh
/// making 16 values, Normalize), a DistilBERT, an MPNet, a ModernBERT and a BERT pooled by max,
/// answer with sentence-transformers' vectors and say what they are in `Info`.
#[tokio::test(flavor = "multi_thread")]
async fn sentence_transformers_6_directories_are_served_as_it_runs_them() {
    for (name, dimension, max_tokens, pooling) in [
        ("tiny-bert-dense", 16, 48, "cls"),
        ("tiny-distilbert", 32, 64, "mean"),
        ("tiny-mpnet", 32, 64, "mean"),
        ("tiny-modernbert", 32, 64, "mean"),
        ("tiny-bert-pooling", 32, 64, "max"),
    ] {
        let tiny = repo_root()
            .join("services/encoder/candle/tests/data")
            .join(name);
        let reference = Reference::read(&tiny.join("reference.json"));
        let encoder = start_encoder(encoder_args(tiny)).await;
        wait_serving(&encoder.url()).await;
        let mut client = EncoderClient::new(channel(&encoder.url()).await);
        let info = client.info(enc::InfoRequest {}).await.unwrap().into_inner();
        assert_eq!(
            (info.dimension, info.max_tokens, info.pooling.as_str()),
            (dimension, max_tokens, pooling),
            "{name}"
        );
        let answers = reference
            .assert_served(&mut client, enc::TextKind::Unspecified, "", None, name)
            .await;
        for got in &answers {
            assert_eq!(got.values.len(), dimension as usize, "{name}");
            let norm: f32 = got.values.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "{name}: norm {norm}");
        }
        encoder.stop().await.unwrap();
    }
}
