//! The exported decoder's KV cache on the golden checkpoint.
//!
//! The graph fed a sequence in two parts (the first part's `present.*` as the second's
//! `past_key_values.*`) gives the log-probs of one whole pass, padded batch included; and
//! `OrtBackend`'s cached `continuations` and `generate` give what the `Backend` trait's
//! recomputing defaults and the candle backend give.
//!
//! Needs the ONNX Runtime library (ORT_DYLIB_PATH, an onnxruntime Python package, or `.ort/`
//! from scripts/fetch-onnxruntime.sh).

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use unireward_engine::backend::{
    Backend, CandleBackend, Continuation, Decoder, Decoding, InputTensor, OrtBackend, OrtSession,
    Recomputing, SessionConfig,
};
use unireward_export::model::graphs::{self, KvKind};
use unireward_export::{export_onnx, ExportOptions, Precision};
use unireward_models::config::LlavaConfig;
use unireward_models::pack::merge_media;
use unireward_models::tokenize::PromptTokenizer;
use unireward_models::LlavaOnevision;
use unireward_tests::{golden_cases, golden_model_dir, golden_tensors, Case};

const TOL: f32 = 1e-4;

fn export(precision: Precision) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let opts = ExportOptions {
        precision,
        ..Default::default()
    };
    export_onnx(&golden_model_dir().unwrap(), dir.path(), &opts)
        .unwrap_or_else(|e| panic!("export failed: {e}"));
    dir
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

// ---------------------------------------------------------------------------------------------
// The graph itself: a sequence split into past and new parts.

/// One decoder run's feeds, owned.
struct Feeds {
    batch: usize,
    len: usize,
    hidden: usize,
    embeds: Vec<f32>,
    mask: Vec<i64>,
    position_ids: Vec<i64>,
    rows: Vec<i64>,
    /// Key, value per layer, each [batch, kv_heads, past, head_dim].
    past: Vec<Vec<f32>>,
    past_len: usize,
}

struct Run {
    log_probs: Vec<f32>,
    presents: Vec<Vec<f32>>,
    present_len: usize,
}

fn run(session: &mut OrtSession, cfg: &LlavaConfig, f: &Feeds) -> Run {
    let t = &cfg.text;
    let (kvh, hd, layers) = (t.num_key_value_heads, t.head_dim(), t.num_hidden_layers);
    let names: Vec<String> = (0..layers)
        .flat_map(|i| [KvKind::Key, KvKind::Value].map(|k| graphs::past_name(i, k)))
        .collect();
    let embeds_shape = [f.batch, f.len, f.hidden];
    let mask_shape = [f.batch, f.past_len + f.len];
    let ids_shape = [f.batch, f.len];
    let rows_shape = [f.batch, f.rows.len() / f.batch];
    let past_shape = [f.batch, kvh, f.past_len, hd];
    let mut inputs = vec![
        (
            graphs::INPUTS_EMBEDS,
            InputTensor::F32 {
                shape: &embeds_shape,
                data: &f.embeds,
            },
        ),
        (
            graphs::ATTENTION_MASK,
            InputTensor::I64 {
                shape: &mask_shape,
                data: &f.mask,
            },
        ),
        (
            graphs::POSITION_IDS,
            InputTensor::I64 {
                shape: &ids_shape,
                data: &f.position_ids,
            },
        ),
        (
            graphs::POSITIONS,
            InputTensor::I64 {
                shape: &rows_shape,
                data: &f.rows,
            },
        ),
    ];
    for (name, data) in names.iter().zip(&f.past) {
        inputs.push((
            name.as_str(),
            InputTensor::F32 {
                shape: &past_shape,
                data,
            },
        ));
    }
    let out = session.run(&inputs).unwrap();
    let log_probs = out
        .get(graphs::LOG_PROBS)
        .unwrap()
        .as_f32()
        .unwrap()
        .to_vec();
    let mut presents = Vec::new();
    let mut present_len = 0;
    for i in 0..layers {
        for k in [KvKind::Key, KvKind::Value] {
            let p = out.get(&graphs::present_name(i, k)).unwrap();
            assert_eq!(p.shape[..2], [f.batch, kvh]);
            assert_eq!(p.shape[3], hd);
            present_len = p.shape[2];
            presents.push(p.as_f32().unwrap().to_vec());
        }
    }
    assert_eq!(present_len, f.past_len + f.len);
    Run {
        log_probs,
        presents,
        present_len,
    }
}

/// Positions `from..to` of each sequence of a right-padded batch [B, T, hidden] (embeds) with
/// valid lengths `lens`, after a cache of `from` positions; every row of the part is read.
fn part(
    embeds: &[Vec<f32>],
    lens: &[usize],
    hidden: usize,
    from: usize,
    to: usize,
    past: (Vec<Vec<f32>>, usize),
) -> Feeds {
    let b = embeds.len();
    let n = to - from;
    let mut f = Feeds {
        batch: b,
        len: n,
        hidden,
        embeds: Vec::new(),
        mask: Vec::new(),
        position_ids: Vec::new(),
        rows: Vec::new(),
        past: past.0,
        past_len: past.1,
    };
    for (e, &len) in embeds.iter().zip(lens) {
        f.embeds.extend_from_slice(&e[from * hidden..to * hidden]);
        // The mask spans the cached positions and these.
        f.mask.extend((0..to).map(|j| i64::from(j < len)));
        f.position_ids.extend((from..to).map(|p| p as i64));
        f.rows.extend(0..n as i64);
    }
    f
}

#[test]
fn decoder_split_at_a_cache_equals_one_pass() {
    let dir = export(Precision::F32);
    let cfg = LlavaConfig::from_file(&dir.path().join("config.json")).unwrap();
    let ort = OrtBackend::open(dir.path(), &SessionConfig::default()).unwrap();
    let mut session =
        OrtSession::open(&dir.path().join("decoder.onnx"), &SessionConfig::default()).unwrap();
    let (hidden, vocab) = (cfg.text.hidden_size, cfg.text.vocab_size);
    let layers = cfg.text.num_hidden_layers;

    // Two golden prompts' token ids, the shorter right-padded to the longer.
    let tok = PromptTokenizer::load(dir.path(), ort.config()).unwrap();
    let texts = ["Describe the weather in one word.", "Why?"];
    let ids: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| tok.encode(t, &[], &[]).unwrap().ids)
        .collect();
    let lens: Vec<usize> = ids.iter().map(Vec::len).collect();
    let t = lens[0].max(lens[1]);
    assert!(lens[0] != lens[1] && t >= 6, "lengths {lens:?}");
    let embeds: Vec<Vec<f32>> = ids
        .iter()
        .map(|i| {
            let mut e = flat(&ort.embed_tokens(i).unwrap());
            e.resize(t * hidden, 0.0);
            e
        })
        .collect();

    let empty = || (vec![Vec::new(); 2 * layers], 0);
    let whole = run(
        &mut session,
        &cfg,
        &part(&embeds, &lens, hidden, 0, t, empty()),
    );
    // Valid rows only: a padding row's log-probs mean nothing.
    let lens_ref = &lens;
    let valid = |lp: &[f32], rows: usize, from: usize| -> Vec<f32> {
        (0..2)
            .flat_map(|b| {
                (from..from + rows)
                    .filter(move |&r| r < lens_ref[b])
                    .flat_map(move |r| {
                        let at = (b * rows + r - from) * vocab;
                        lp[at..at + vocab].to_vec()
                    })
            })
            .collect()
    };
    let mut worst = 0f32;
    for k in [1, 3, t - 1] {
        let first = run(
            &mut session,
            &cfg,
            &part(&embeds, &lens, hidden, 0, k, empty()),
        );
        let rest = run(
            &mut session,
            &cfg,
            &part(
                &embeds,
                &lens,
                hidden,
                k,
                t,
                (first.presents.clone(), first.present_len),
            ),
        );
        // Rows 0..k from the first part, k..t from the second, against the whole pass.
        let whole_first: Vec<f32> = (0..2)
            .flat_map(|b| whole.log_probs[b * t * vocab..][..k * vocab].to_vec())
            .collect();
        let whole_rest: Vec<f32> = (0..2)
            .flat_map(|b| whole.log_probs[(b * t + k) * vocab..][..(t - k) * vocab].to_vec())
            .collect();
        let d1 = max_abs_diff(&valid(&first.log_probs, k, 0), &valid(&whole_first, k, 0));
        let d2 = max_abs_diff(
            &valid(&rest.log_probs, t - k, k),
            &valid(&whole_rest, t - k, k),
        );
        // The second part's presents are the whole pass's, cache included.
        let d3 = rest
            .presents
            .iter()
            .zip(&whole.presents)
            .map(|(a, b)| max_abs_diff(a, b))
            .fold(0.0, f32::max);
        println!(
            "split {k} + {}: log-probs max |diff| {d1:.3e} / {d2:.3e}, presents {d3:.3e}",
            t - k
        );
        worst = worst.max(d1).max(d2).max(d3);
    }
    println!(
        "batch of {lens:?} tokens, split at 1, 3, {}: max |diff| {worst:.3e}",
        t - 1
    );
    assert!(worst <= TOL, "a split decoder run differs by {worst}");
}

// ---------------------------------------------------------------------------------------------
// OrtBackend's cached scoring and generation.

/// A golden case's prompt (its media encoded and packed by `backend`) as embeddings, and its
/// completion's token ids.
fn golden_prompt(backend: &dyn Backend, tok: &PromptTokenizer, case: &Case) -> (Tensor, Vec<u32>) {
    let expected: HashMap<String, Tensor> = golden_tensors().unwrap();
    let media = common::case_media(backend, case, &expected);
    let lens = |ts: &[Tensor]| ts.iter().map(|t| t.dim(0).unwrap()).collect::<Vec<_>>();
    let tokens = tok
        .encode(&case.text, &lens(&media.images), &lens(&media.videos))
        .unwrap();
    let embeds = merge_media(&backend.embed_tokens(&tokens.ids).unwrap(), &tokens, &media).unwrap();
    let prompt = embeds.narrow(0, 0, case.prompt_len).unwrap();
    (prompt, tokens.ids[case.prompt_len..].to_vec())
}

fn candle_backend() -> CandleBackend {
    let model =
        LlavaOnevision::load(&golden_model_dir().unwrap(), DType::F32, &Device::Cpu).unwrap();
    CandleBackend::new(model).unwrap()
}

fn continuation_diff(a: &[Continuation], b: &[Continuation]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            assert_eq!(x.token_logprobs.len(), y.token_logprobs.len());
            max_abs_diff(&x.token_logprobs, &y.token_logprobs)
                .max(max_abs_diff(&flat(&x.next), &flat(&y.next)))
        })
        .fold(0.0, f32::max)
}

/// Continuations of several lengths, an empty one among them.
fn continuation_set(completion: &[u32]) -> Vec<Vec<u32>> {
    assert!(completion.len() >= 4, "completion of {completion:?}");
    vec![
        completion.to_vec(),
        completion[..1].to_vec(),
        Vec::new(),
        completion[..3].to_vec(),
        vec![17, 300, 4, 5, 575, 9, 11],
    ]
}

#[test]
fn cached_continuations_equal_the_recomputing_default_and_candle() {
    let dir = export(Precision::F32);
    let ort = OrtBackend::open(dir.path(), &SessionConfig::default()).unwrap();
    assert!(ort.has_kv_cache());
    let candle = candle_backend();
    let tok = PromptTokenizer::load(dir.path(), ort.config()).unwrap();
    let cases = golden_cases().unwrap();
    let mut prompts = Vec::new();
    let mut sets = Vec::new();
    for case in cases.iter().take(3) {
        let (prompt, completion) = golden_prompt(&candle, &tok, case);
        prompts.push(prompt);
        sets.push(continuation_set(&completion));
    }

    let (mut worst_default, mut worst_candle) = (0f32, 0f32);
    for (p, set) in prompts.iter().zip(&sets) {
        let cached = ort.continuations(p, set).unwrap();
        let default = Recomputing(&ort).continuations(p, set).unwrap();
        let reference = candle.continuations(p, set).unwrap();
        assert!(cached[2].token_logprobs.is_empty());
        worst_default = worst_default.max(continuation_diff(&cached, &default));
        worst_candle = worst_candle.max(continuation_diff(&cached, &reference));
    }
    // Continuations split over several decoder calls (as a TensorRT batch limit or the
    // cache-copy budget splits them) score as in one.
    let capped = OrtBackend::open(dir.path(), &SessionConfig::default())
        .unwrap()
        .with_max_batch(2);
    let mut worst_split = 0f32;
    for (p, set) in prompts.iter().zip(&sets) {
        assert!(set.len() > 2, "{} continuations", set.len());
        let split = capped.continuations(p, set).unwrap();
        let whole = ort.continuations(p, set).unwrap();
        assert_eq!(split.len(), whole.len());
        worst_split = worst_split.max(continuation_diff(&split, &whole));
    }
    assert!(worst_split <= TOL, "split continuations: {worst_split}");
    let split_batch = capped.continuations_batch(&prompts, &sets).unwrap();
    let whole_batch = ort.continuations_batch(&prompts, &sets).unwrap();
    assert_eq!(split_batch.len(), prompts.len());
    for (s, w) in split_batch.iter().zip(&whole_batch) {
        let d = continuation_diff(s, w);
        assert!(d <= TOL, "prompts split over calls: {d}");
    }
    let rows: Vec<Vec<usize>> = prompts
        .iter()
        .map(|p| {
            let n = p.dim(0).unwrap();
            vec![0, n / 2, n - 1]
        })
        .collect();
    let split_rows = capped.log_probs_at(&prompts, &rows).unwrap();
    let whole_rows = ort.log_probs_at(&prompts, &rows).unwrap();
    assert_eq!(split_rows.len(), prompts.len());
    for (s, w) in split_rows.iter().zip(&whole_rows) {
        let d = max_abs_diff(&flat(s), &flat(w));
        assert!(d <= TOL, "sequences split over calls: {d}");
    }
    // Prompts of different lengths in one right-padded pass.
    let batched = ort.continuations_batch(&prompts, &sets).unwrap();
    let reference = candle.continuations_batch(&prompts, &sets).unwrap();
    let default = Recomputing(&ort)
        .continuations_batch(&prompts, &sets)
        .unwrap();
    let lens: Vec<usize> = prompts.iter().map(|p| p.dim(0).unwrap()).collect();
    assert!(
        lens.iter().any(|&n| n != lens[0]),
        "prompt lengths {lens:?}"
    );
    let mut worst_batch = 0f32;
    for b in 0..prompts.len() {
        worst_batch = worst_batch
            .max(continuation_diff(&batched[b], &default[b]))
            .max(continuation_diff(&batched[b], &reference[b]));
    }
    println!(
        "cached continuations (prompts of {lens:?} tokens): max |diff| vs the default \
         {worst_default:.3e}, vs candle {worst_candle:.3e}, batched prompts {worst_batch:.3e}"
    );
    assert!(
        worst_default <= TOL,
        "cached vs recomputed: {worst_default}"
    );
    assert!(worst_candle <= TOL, "ORT vs candle: {worst_candle}");
    assert!(worst_batch <= TOL, "batched prompts: {worst_batch}");
}

#[test]
fn cached_generation_equals_candle_greedy_tokens() {
    let dir = export(Precision::F32);
    let ort = OrtBackend::open(dir.path(), &SessionConfig::default()).unwrap();
    let candle = candle_backend();
    let tok = PromptTokenizer::load(dir.path(), ort.config()).unwrap();
    let case = &golden_cases().unwrap()[0];
    let (prompt, _) = golden_prompt(&candle, &tok, case);
    let cached = ort.generate(&prompt, 16, &[]).unwrap();
    let default = Recomputing(&ort).generate(&prompt, 16, &[]).unwrap();
    let reference = candle.generate(&prompt, 16, &[]).unwrap();
    println!("greedy tokens: ORT cached {cached:?}, candle {reference:?}");
    assert_eq!(cached.len(), 16);
    assert_eq!(cached, reference);
    assert_eq!(cached, default);
    // A stop token ends it where it first comes, as the default does.
    let stop = [cached[5]];
    let first = cached.iter().position(|t| *t == cached[5]).unwrap();
    assert_eq!(ort.generate(&prompt, 16, &stop).unwrap(), cached[..first]);
    assert!(ort.generate(&prompt, 0, &[]).unwrap().is_empty());
}

#[test]
fn fp16_cache_agrees_with_fp16_recomputation() {
    let dir = export(Precision::F16);
    let ort = OrtBackend::open(dir.path(), &SessionConfig::default()).unwrap();
    assert_eq!(ort.dtype(), "fp16");
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(dir.path()).join("manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["kv_cache"]["dtype"], "float16");
    let candle = candle_backend();
    let tok = PromptTokenizer::load(dir.path(), ort.config()).unwrap();
    let case = &golden_cases().unwrap()[0];
    let (prompt, completion) = golden_prompt(&candle, &tok, case);
    let set = continuation_set(&completion);
    let cached = ort.continuations(&prompt, &set).unwrap();
    let default = Recomputing(&ort).continuations(&prompt, &set).unwrap();
    let d = continuation_diff(&cached, &default);
    println!("fp16: cached vs recomputed continuations max |diff| {d:.3e}");
    assert!(d <= 1e-2, "fp16 cached vs recomputed: {d}");
    let steps = ort.generate(&prompt, 8, &[]).unwrap();
    assert_eq!(steps, Recomputing(&ort).generate(&prompt, 8, &[]).unwrap());
}
