//! `engine pairs` with its judgements together (every comparison and point score of the
//! prompts a pipeline batch holds, shared prompt beginnings run once) against one prompt pass
//! per judgement, one prompt at a time, on the golden checkpoint: the same pairs and scores
//! (within the fast judge's batching tolerance of `judge_consistency.rs`), from fewer decoder
//! calls.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use unireward_engine::backend::{
    Backend, CandleBackend, Decoder, DecoderCache, Decoding, Limits, Recomputing, Rows,
};
use unireward_engine::decoding::{continuations_of_families, PromptFamily};
use unireward_engine::judge::{Judge, JudgeMode, PromptStyle};
use unireward_engine::pairs::job::{Grouping, PairsJob, PairsMedia};
use unireward_engine::pairs::{PairOptions, RankingMode, Recipe};
use unireward_models::config::{LlavaConfig, TextConfig};
use unireward_models::preprocess::MediaLoader;
use unireward_models::tokenize::PromptTokenizer;
use unireward_tests::{golden_cases_dir, golden_model_dir};

/// A backend that counts its decoder calls and the rows they run, padding included.
struct Counting<'a> {
    inner: &'a dyn Backend,
    calls: AtomicUsize,
    rows: AtomicUsize,
}

impl Decoder for Counting<'_> {
    fn name(&self) -> String {
        self.inner.name()
    }

    fn text_config(&self) -> &TextConfig {
        self.inner.text_config()
    }
    fn embed_tokens(&self, ids: &[u32]) -> unireward_engine::Result<Tensor> {
        self.inner.embed_tokens(ids)
    }
    fn limits(&self) -> Limits {
        self.inner.limits()
    }
    fn new_cache(&self) -> unireward_engine::Result<Box<dyn DecoderCache>> {
        self.inner.new_cache()
    }
    fn decode(
        &self,
        seqs: &[Tensor],
        rows: Rows<'_>,
        cache: Option<&mut dyn DecoderCache>,
    ) -> unireward_engine::Result<Vec<Tensor>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let longest = seqs
            .iter()
            .map(|s| s.dim(0).unwrap_or(0))
            .max()
            .unwrap_or(0);
        self.rows.fetch_add(seqs.len() * longest, Ordering::SeqCst);
        self.inner.decode(seqs, rows, cache)
    }
}

impl Backend for Counting<'_> {
    fn config(&self) -> &LlavaConfig {
        self.inner.config()
    }

    fn image_newline(&self) -> &Tensor {
        self.inner.image_newline()
    }

    fn encode_tiles(&self, tiles: &Tensor) -> unireward_engine::Result<Tensor> {
        self.inner.encode_tiles(tiles)
    }
}

fn scratch(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "unireward-pairs-batched-{}-{name}",
        std::process::id()
    ));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn img(name: &str) -> Result<String> {
    Ok(golden_cases_dir()?
        .join(name)
        .to_string_lossy()
        .into_owned())
}

/// What a run's decoder calls cost.
#[derive(Debug, Clone, Copy)]
struct Cost {
    calls: usize,
    rows: usize,
}

/// The answer lines of `lines` and the decoder calls they took.
fn run(
    backend: &CandleBackend,
    dir: &Path,
    lines: &[Value],
    options: PairOptions,
    grouping: Grouping,
) -> Result<(Vec<Value>, Cost)> {
    let model = golden_model_dir()?;
    let counting = Counting {
        inner: backend,
        calls: AtomicUsize::new(0),
        rows: AtomicUsize::new(0),
    };
    let tokenizer = PromptTokenizer::load(&model, backend.config())?;
    let loader = MediaLoader::from_model_dir(&model, backend.config(), 8)?;
    let judge = Judge::new(
        &counting,
        &tokenizer,
        PromptStyle::default(),
        JudgeMode::Fast,
        16,
    )?;
    let job = PairsJob {
        judge: &judge,
        media: PairsMedia::Llava(&loader),
        options,
    };
    let input = dir.join("in.jsonl");
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    std::fs::write(&input, text.join("\n") + "\n")?;
    let out = dir.join(format!("out-{grouping:?}.jsonl"));
    let summary = job.run_grouped(&input, &out, false, grouping)?;
    assert_eq!(summary.failed, 0);
    let answers = std::fs::read_to_string(&out)?
        .lines()
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect::<Result<Vec<Value>>>()?;
    let cost = Cost {
        calls: counting.calls.load(Ordering::SeqCst),
        rows: counting.rows.load(Ordering::SeqCst),
    };
    Ok((answers, cost))
}

/// Same pairs, the same candidates left out or the same reason to drop, and scores within
/// the batching tolerance.
fn same_answers(batched: &[Value], one_by_one: &[Value]) {
    assert_eq!(batched.len(), one_by_one.len());
    for (b, o) in batched.iter().zip(one_by_one) {
        assert!(b.get("error").is_none(), "{b}");
        for key in ["id", "prompt", "chosen", "rejected", "unranked"] {
            assert_eq!(b.get(key), o.get(key), "{key}: {b} vs {o}");
        }
        for key in ["chosen_score", "rejected_score"] {
            match (
                b.get(key).and_then(Value::as_f64),
                o.get(key).and_then(Value::as_f64),
            ) {
                (Some(x), Some(y)) => assert!((x - y).abs() < 1e-4, "{key}: {b} vs {o}"),
                (x, y) => assert_eq!(x, y, "{key}: {b} vs {o}"),
            }
        }
        // A dropped prompt names the same candidates (its scores are compared above when
        // kept, and written into this text when dropped).
        let reason = |v: &Value| {
            v.get("dropped")
                .and_then(Value::as_str)
                .map(|s| s.split(" scored").next().unwrap_or(s).to_string())
        };
        assert_eq!(reason(b), reason(o), "{b} vs {o}");
    }
}

fn compare(name: &str, lines: &[Value], options: PairOptions) -> Result<(Cost, Cost)> {
    let dir = scratch(name)?;
    let backend = CandleBackend::load(&golden_model_dir()?, DType::F32, &Device::Cpu)?;
    let (one_by_one, calls_one) = run(&backend, &dir, lines, options, Grouping::OneByOne)?;
    let batched_grouping = Grouping::Batched {
        token_budget: 100_000,
    };
    let (batched, calls_batched) = run(&backend, &dir, lines, options, batched_grouping)?;
    same_answers(&batched, &one_by_one);
    std::fs::remove_dir_all(&dir)?;
    eprintln!("{name}: batched {calls_batched:?}, one by one {calls_one:?}");
    Ok((calls_batched, calls_one))
}

fn generation_lines() -> Result<Vec<Value>> {
    let four = [
        img("img0.png")?,
        img("img1.png")?,
        img("img2.png")?,
        img("img3.png")?,
    ];
    // Distinct images: two equal candidates score equal, and which of them a ranking lists
    // first may then turn on float rounding.
    let five = [
        img("img3.png")?,
        img("img1.png")?,
        img("frame0.png")?,
        img("img2.png")?,
        img("img0.png")?,
    ];
    Ok(vec![
        json!({"id": "g4", "task": "image_generation", "prompt": "a red ball", "candidates": four}),
        json!({"id": "g5", "task": "image_generation", "prompt": "a blue cube", "candidates": five}),
    ])
}

#[test]
fn disjoint_image_generation_batched_as_one_by_one() -> Result<()> {
    let options = PairOptions::default();
    let (batched, one) = compare("disjoint", &generation_lines()?, options)?;
    assert!(
        batched.calls < one.calls,
        "batched {batched:?}, one by one {one:?}"
    );
    // A pair prompt and the point prompt of its first candidate share that image.
    assert!(
        batched.rows < one.rows,
        "batched {batched:?}, one by one {one:?}"
    );
    Ok(())
}

#[test]
fn round_robin_with_swap_batched_as_one_by_one() -> Result<()> {
    // Four candidates score early with the comparisons; five leave one unranked, known only
    // after ranking.
    let options = PairOptions {
        ranking: RankingMode::RoundRobin,
        swap: true,
        recipe: Recipe::Inference,
        ..PairOptions::default()
    };
    let (batched, one) = compare("round-robin", &generation_lines()?, options)?;
    assert!(
        batched.calls < one.calls,
        "batched {batched:?}, one by one {one:?}"
    );
    Ok(())
}

#[test]
fn image_understanding_batched_as_one_by_one() -> Result<()> {
    // Every judgement of a prompt begins with its question's image: it runs once per prompt.
    let answers = ["Red.", "Blue.", "A ball.", "Green, I think.", "Nothing."];
    let lines = vec![
        json!({"id": "u1", "task": "image_understanding", "prompt": "What color is the ball?",
               "images": [img("img1.png")?], "candidates": answers}),
        json!({"id": "u2", "task": "image_understanding", "prompt": "What is it?",
               "images": [img("img2.png")?], "candidates": &answers[..4]}),
    ];
    let (batched, one) = compare("understanding", &lines, PairOptions::default())?;
    assert!(
        batched.calls < one.calls,
        "batched {batched:?}, one by one {one:?}"
    );
    assert!(
        batched.rows < one.rows,
        "batched {batched:?}, one by one {one:?}"
    );
    Ok(())
}

/// Families of prompts sharing a beginning score their continuations as the whole prompts do,
/// with the decoder's cache and without one (recomputed).
#[test]
fn shared_beginnings_score_as_whole_prompts() -> Result<()> {
    let backend = CandleBackend::load(&golden_model_dir()?, DType::F32, &Device::Cpu)?;
    let ids = |from: u32, n: u32| (from..from + n).collect::<Vec<u32>>();
    let prefix = backend.embed_tokens(&ids(100, 40))?;
    let whole = |tail: &[u32]| -> Result<Tensor> {
        Ok(Tensor::cat(&[&prefix, &backend.embed_tokens(tail)?], 0)?)
    };
    let tails = [ids(300, 7), ids(350, 3), ids(400, 12), ids(450, 1)];
    let conts = |k: u32| vec![vec![10 + k], vec![20 + k, 21], vec![]];
    let families = vec![
        PromptFamily {
            prompt: whole(&tails[0])?,
            continuations: conts(0),
            shared: 40,
            followers: vec![
                (backend.embed_tokens(&tails[1])?, conts(1)),
                (backend.embed_tokens(&tails[2])?, conts(2)),
            ],
        },
        PromptFamily {
            prompt: whole(&tails[3])?,
            continuations: conts(3),
            shared: 41,
            followers: Vec::new(),
        },
    ];
    let prompts = tails.iter().map(|t| whole(t)).collect::<Result<Vec<_>>>()?;
    let expected_conts: Vec<_> = (0..4).map(conts).collect();
    let recomputing = Recomputing(&backend);
    for (name, b) in [
        ("cached", &backend as &dyn Backend),
        ("recomputed", &recomputing),
    ] {
        let want = b.continuations_batch(&prompts, &expected_conts)?;
        // A budget that splits the followers' passes, and one that does not.
        for budget in [10, 4096] {
            let got: Vec<_> = continuations_of_families(b, &families, budget)?
                .into_iter()
                .flatten()
                .collect();
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
                assert_eq!(g.token_logprobs.len(), w.token_logprobs.len());
                for (x, y) in g.token_logprobs.iter().zip(&w.token_logprobs) {
                    assert!((x - y).abs() < 1e-4, "{name}: {x} vs {y}");
                }
                let diff = (&g.next - &w.next)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(diff < 1e-4, "{name}: next rows differ by {diff}");
            }
        }
    }
    // A follower with no rows of its own has no row to continue from.
    let empty = PromptFamily {
        prompt: whole(&tails[0])?,
        continuations: conts(0),
        shared: 40,
        followers: vec![(
            Tensor::zeros(
                (0, backend.config().text.hidden_size),
                DType::F32,
                &Device::Cpu,
            )?,
            conts(1),
        )],
    };
    assert!(continuations_of_families(&backend, &[empty], 4096).is_err());
    Ok(())
}
