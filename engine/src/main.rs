//! `engine`: judge requests with the reward model.

// Tensors of a few MB are allocated and freed per op; glibc's malloc returns them to the
// system each time, and faulting the pages back in cost a fifth of a CPU forward.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use candle_core::DType;
use clap::{Parser, Subcommand, ValueEnum};
use unireward_engine::backend::{
    Backend, CandleBackend, EngineLimits, ExecutionProvider, OrtBackend, OrtQwenVlBackend,
    QwenBackend, QwenVlBackend, SessionConfig,
};
use unireward_engine::judge::{Judge, JudgeMode, PromptStyle};
use unireward_engine::logprob::LogprobJob;
use unireward_engine::pairs::job::{Grouping, PairsJob, PairsMedia};
use unireward_engine::pairs::{PairFormat, PairOptions, RankingMode, Recipe};
use unireward_engine::pipeline::{RunOptions, RunSummary, DEFAULT_DECODE_BUDGET_BYTES};
use unireward_engine::qwen_logprob::QwenLogprobJob;
use unireward_engine::qwen_score::QwenScoreJob;
use unireward_engine::records::{check_output_path, OutputMode, DEFAULT_MAX_LINE_BYTES};
use unireward_engine::score::ScoreJob;
use unireward_engine::serve::media::MediaReader;
use unireward_engine::serve::media_inbox::MediaPolicy;
use unireward_engine::serve::{serve, ServeModel, ServeOptions};
use unireward_models::device::parse_device;
use unireward_models::family::ModelFamily;
use unireward_models::formats::export_manifest;
use unireward_models::judge::checkpoint_family::refuse_unsupported_checkpoint;
use unireward_models::judge::sift_templates::sift_resize;
use unireward_models::judge::{
    checkpoint_family, ChatTemplate, Family, MediaMarkers, PromptTemplate,
};
use unireward_models::preprocess::{MediaLoader, QwenVlProcessor, VideoMode};
use unireward_models::qwen2_5_vl::QwenVideos;
use unireward_models::tokenize::PromptTokenizer;

#[derive(Parser)]
#[command(
    name = "engine",
    version,
    about = "High-throughput scoring with the UnifiedReward judge"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendKind {
    /// ort for a directory `unireward-export onnx` wrote (it has manifest.json), else candle.
    Auto,
    Candle,
    Ort,
}

#[derive(Clone, Copy, ValueEnum)]
enum Precision {
    F32,
    Bf16,
}

#[derive(clap::Args)]
struct ModelArgs {
    /// Checkpoint directory (config.json, safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendKind,
    /// ONNX Runtime execution provider: cpu, cuda or tensorrt (fp16). A provider that fails
    /// to register is an error, never a silent CPU fallback.
    #[arg(long, default_value = "cpu")]
    ep: ExecutionProvider,
    /// ONNX Runtime threads per operator (default: one per physical core).
    #[arg(long)]
    threads: Option<usize>,
    /// TensorRT engine cache directory (building a 7B engine takes minutes).
    #[arg(long)]
    trt_cache: Option<PathBuf>,
    /// TensorRT optimisation profile: most sequences per decoder call.
    #[arg(long, default_value_t = 8)]
    trt_max_batch: i64,
    /// TensorRT optimisation profile: most tokens per sequence.
    #[arg(long, default_value_t = 4096)]
    trt_max_length: i64,
    /// TensorRT optimisation profile: most tiles per vision call.
    #[arg(long, default_value_t = 64)]
    trt_max_tiles: i64,
    /// Compute precision of the candle backend.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Precision,
    /// Device of the candle backend: cpu, cuda or cuda:N (CUDA needs a `--features cuda`
    /// build). The ONNX backend's device is --ep.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Frames sampled per video.
    #[arg(long, default_value_t = 8)]
    frames: usize,
    /// Padded tokens per batched decoder pass (logprob; score's fast prompt passes; the
    /// server's batches across requests).
    #[arg(long, alias = "max-batch-tokens", default_value_t = 4096)]
    token_budget: usize,
}

#[derive(clap::Args, Clone)]
struct JudgeArgs {
    /// fast: verdict probabilities from one pass; generate: greedy rationale, parsed verdict.
    #[arg(long = "judge", value_enum, default_value = "fast")]
    judge: JudgeMode,
    /// Which reference scripts' prompts and answer format to use: llava, llava-acs, qwen,
    /// qwen-acs, 2.0, think, think-qwen, think-qwen3vl (README "Template families").
    /// Default: detected from the checkpoint's directory name and config.json.
    #[arg(long)]
    template_family: Option<Family>,
    /// Judge a Think family in fast mode: the verdict is scored after an empty reasoning,
    /// which is not how those checkpoints answer. Without it fast mode refuses them.
    #[arg(long)]
    allow_fast_think: bool,
    /// A user-turn template file with {prompt}/{caption}/{question}, {answer1}, {answer2},
    /// {answer}, {media} placeholders, used for every request instead of the built-in ones.
    #[arg(long)]
    template: Option<PathBuf>,
    /// A Jinja chat template; default: the checkpoint's own, else ChatML.
    #[arg(long)]
    chat_template: Option<PathBuf>,
    /// Token limit of generate mode.
    #[arg(long, default_value_t = 512)]
    max_new_tokens: usize,
    /// How a video reaches the model: `frames` (each sampled frame one plain tile with its
    /// own `<image>` marker, as the UnifiedReward LLaVA scripts run their checkpoints; on a
    /// Qwen-VL checkpoint each sampled frame an image item, as the 2.0 scripts send them) or
    /// `pooled` (LLaVA-OneVision's pooled `<video>` path; on a Qwen-VL checkpoint one video
    /// item of all its frames, or of a video file's frames sampled at 2 fps). Default: frames
    /// for the llava, 2.0 and think families, pooled for qwen.
    #[arg(long)]
    video_mode: Option<VideoMode>,
}

impl JudgeArgs {
    /// The template family: the one given, else the checkpoint's. Edit and Flex checkpoints
    /// are refused either way.
    fn family(&self, model: &Path) -> Result<Family> {
        refuse_unsupported_checkpoint(model)?;
        match self.template_family {
            Some(f) => Ok(f),
            None => Ok(checkpoint_family(model)?),
        }
    }

    fn video_mode(&self, family: Family) -> VideoMode {
        match self.video_mode {
            Some(mode) => mode,
            None if family.video_as_frames() => VideoMode::Frames,
            None => VideoMode::Pooled,
        }
    }

    /// Fast mode of a Think family is refused before anything is loaded.
    fn check_mode(&self, family: Family) -> Result<()> {
        if self.judge == JudgeMode::Fast && family.thinks() && !self.allow_fast_think {
            bail!(
                "template family {family} judges in generate mode: its verdict follows its \
                 reasoning; use --judge generate, or --allow-fast-think to score the verdict \
                 after an empty reasoning"
            );
        }
        Ok(())
    }
}

#[derive(clap::Args)]
struct RunArgs {
    /// Skip ids already in --out and append the rest.
    #[arg(long)]
    resume: bool,
    /// Resume, and answer again the ids whose record in --out is an error (those records
    /// are dropped from --out first).
    #[arg(long)]
    retry_failed: bool,
    /// Longest input line read; a longer one is an error record.
    #[arg(long, default_value_t = DEFAULT_MAX_LINE_BYTES)]
    max_line_bytes: usize,
    /// Most MiB of decoded images held by the preprocessing workers at once.
    #[arg(long, default_value_t = DEFAULT_DECODE_BUDGET_BYTES >> 20)]
    decode_budget_mb: u64,
}

impl RunArgs {
    fn options(&self) -> RunOptions {
        RunOptions {
            output: OutputMode {
                resume: self.resume || self.retry_failed,
                retry_failed: self.retry_failed,
            },
            max_line_bytes: self.max_line_bytes,
            decode_budget_bytes: self.decode_budget_mb.saturating_mul(1 << 20),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Log-probability of each completion given its prompt and media.
    Logprob {
        #[command(flatten)]
        model: ModelArgs,
        /// JSONL of {"id", "prompt", "completion", "images": [...], "video": ...}.
        #[arg(long)]
        input: PathBuf,
        /// JSONL of {"id", "logprob", "prompt_tokens", "completion_tokens"}.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Judge score requests (pair or point, four tasks).
    Score {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        judge: JudgeArgs,
        /// JSONL of {"id", "task", "mode", "prompt", "images", "videos", "answers"}.
        #[arg(long)]
        batch: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Build DPO preference pairs from each prompt's candidates.
    Pairs {
        /// JSONL of {"id", "task", "prompt", "candidates", "images" / "videos"}.
        input: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        judge: JudgeArgs,
        #[arg(long)]
        out: PathBuf,
        /// disjoint: pairs (0,1), (2,3), … as the reference; round-robin: every pair with a
        /// Bradley-Terry fit.
        #[arg(long, default_value = "disjoint")]
        ranking: RankingMode,
        /// Judge each pair in both orders and average (position bias).
        #[arg(long)]
        swap: bool,
        /// sift: prompts, resizing and score ranges of the reference's DPO-data scripts;
        /// inference: those of the inference scripts (as `engine score`).
        #[arg(long, default_value = "sift")]
        recipe: Recipe,
        /// Understanding tasks' lines: llava (prompt, chosen, rejected as strings) or trl
        /// (TRL's conversational vision preference layout).
        #[arg(long, default_value = "llava")]
        format: PairFormat,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Serve the judge over HTTP: OpenAI chat completions (as Flow-GRPO, Pref-GRPO and
    /// MixGRPO call a vLLM server), /v1/score, /v1/rank, /health, /v1/models, /metrics.
    Serve {
        #[command(flatten)]
        model: ModelArgs,
        /// --judge: /v1/score's default (a request may say ?judge=fast|generate);
        /// --max-new-tokens caps every generated answer.
        #[command(flatten)]
        judge: JudgeArgs,
        #[command(flatten)]
        serve: ServeArgs,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0: any free port (the address is printed on stdout).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Requests must send `Authorization: Bearer KEY` (also read from UNIREWARD_API_KEY).
    #[arg(long)]
    api_key: Option<String>,
    /// The model name the server answers as (default: the model directory's name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Most requests accepted and not yet answered; more are answered 429 with Retry-After.
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
    /// Largest request body, in MiB (413 above it).
    #[arg(long, default_value_t = 64)]
    max_body_mb: usize,
    /// Most images and videos (a video's frames counted as images) in one request.
    #[arg(long, default_value_t = 64)]
    max_media_per_request: usize,
    /// Most pixels of one image (its header is read before anything is decoded).
    #[arg(long, default_value_t = 40_000_000)]
    max_image_pixels: u64,
    /// A folder whose files requests may name by path; without it only data: URIs are read.
    #[arg(long)]
    allowed_media_dir: Option<PathBuf>,
    /// MiB of vision features kept for media sent again (0: off).
    #[arg(long, default_value_t = 512)]
    feature_cache_mb: usize,
    /// /v1/rank judges each pair in both orders and averages (position bias).
    #[arg(long)]
    rank_swap: bool,
    /// /v1/rank's prompts: sift (the DPO-data scripts', as `engine pairs`) or inference.
    /// Default: sift for the llava template families, inference for the others (the DPO-data
    /// scripts have LLaVA's prompts only).
    #[arg(long)]
    rank_recipe: Option<Recipe>,
}

fn main() -> ExitCode {
    unireward_models::allocator::retain_freed_memory();
    unireward_models::logging::init_logging();
    match run() {
        Ok(summary) if summary.failed == 0 => ExitCode::SUCCESS,
        Ok(summary) => {
            eprintln!(
                "{} record(s) failed; see their \"error\" fields",
                summary.failed
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// A Qwen-VL checkpoint (Qwen2.5-VL, Qwen3-VL) or its ONNX export, its tokenizer and its image
/// processor.
struct LoadedQwen {
    backend: Box<dyn QwenBackend>,
    tokenizer: PromptTokenizer,
    processor: QwenVlProcessor,
}

fn load_qwen(args: &ModelArgs) -> Result<LoadedQwen> {
    let backend: Box<dyn QwenBackend> = match backend_kind(args)? {
        BackendKind::Ort => Box::new(
            OrtQwenVlBackend::open(&args.model, &session_config(args))
                .with_context(|| format!("opening the export in {}", args.model.display()))?,
        ),
        BackendKind::Candle | BackendKind::Auto => {
            let dtype = match args.dtype {
                Precision::F32 => DType::F32,
                Precision::Bf16 => DType::BF16,
            };
            Box::new(
                QwenVlBackend::load(&args.model, dtype, &parse_device(&args.device)?)
                    .with_context(|| format!("loading {}", args.model.display()))?,
            )
        }
    };
    let (image_pad, video_pad) = backend.media_token_ids();
    let tokenizer = PromptTokenizer::load_qwen_vl(&args.model, image_pad, video_pad)?;
    let processor = QwenVlProcessor::from_model_dir(&args.model)?;
    Ok(LoadedQwen {
        backend,
        tokenizer,
        processor,
    })
}

/// `engine logprob` on a Qwen-VL checkpoint.
fn qwen_logprob(args: &ModelArgs, input: &Path, out: &Path, run: &RunArgs) -> Result<RunSummary> {
    let q = load_qwen(args)?;
    let job = QwenLogprobJob {
        backend: q.backend.as_ref(),
        tokenizer: &q.tokenizer,
        processor: &q.processor,
    };
    Ok(job.run(input, out, &run.options())?)
}

/// A judge of a Qwen-VL checkpoint: the family's templates with Qwen-VL's media markers.
fn qwen_judge<'a>(
    q: &'a LoadedQwen,
    judge: &JudgeArgs,
    family: Family,
    model: &ModelArgs,
) -> Result<Judge<'a>> {
    let style = PromptStyle {
        markers: MediaMarkers::QwenVl,
        ..prompt_style(judge, family, model)?
    };
    Ok(Judge::with_decoder(
        q.backend.as_ref(),
        &q.tokenizer,
        style,
        judge.judge,
        judge.max_new_tokens,
    )?)
}

/// How a Qwen-VL judge's videos reach it: its template family's way, or `--video-mode`.
fn qwen_videos(judge: &JudgeArgs, family: Family, model: &ModelArgs) -> QwenVideos {
    match judge.video_mode(family) {
        VideoMode::Frames => QwenVideos::Frames(model.frames),
        VideoMode::Pooled => QwenVideos::Items,
    }
}

/// `engine score` on a Qwen-VL checkpoint.
fn qwen_score(
    model: &ModelArgs,
    judge: &JudgeArgs,
    family: Family,
    batch: &Path,
    out: &Path,
    run: &RunArgs,
) -> Result<RunSummary> {
    let q = load_qwen(model)?;
    let j = qwen_judge(&q, judge, family, model)?;
    let job = QwenScoreJob {
        judge: &j,
        backend: q.backend.as_ref(),
        processor: &q.processor,
        token_budget: model.token_budget,
        videos: qwen_videos(judge, family, model),
    };
    Ok(job.run(batch, out, &run.options())?)
}

/// `engine pairs` on a Qwen-VL checkpoint.
fn qwen_pairs(
    model: &ModelArgs,
    judge: &JudgeArgs,
    family: Family,
    options: PairOptions,
    input: &Path,
    out: &Path,
    run: &RunArgs,
) -> Result<RunSummary> {
    let q = load_qwen(model)?;
    let j = qwen_judge(&q, judge, family, model)?;
    let job = PairsJob {
        judge: &j,
        media: PairsMedia::Qwen {
            backend: q.backend.as_ref(),
            processor: &q.processor,
            videos: qwen_videos(judge, family, model),
        },
        options,
    };
    let opts = run.options();
    opts.install();
    Ok(job.run_grouped(input, out, opts.output.resume, Grouping::OneByOne)?)
}

struct Loaded {
    backend: Box<dyn Backend>,
    tokenizer: PromptTokenizer,
    media: MediaLoader,
}

/// Which backend runs `args.model`: an export directory (a manifest) is ONNX Runtime's, a
/// checkpoint candle's, unless `--backend` says; the other backend's flags are refused.
fn backend_kind(args: &ModelArgs) -> Result<BackendKind> {
    let kind = match args.backend {
        BackendKind::Auto if args.model.join(export_manifest::FILE_NAME).is_file() => {
            BackendKind::Ort
        }
        BackendKind::Auto => BackendKind::Candle,
        k => k,
    };
    if kind == BackendKind::Candle && args.ep != ExecutionProvider::Cpu {
        bail!(
            "--ep {} needs an ONNX export (`unireward-export onnx`); {} is run by the candle \
             backend, whose device is --device (cpu, cuda or cuda:N)",
            args.ep.name(),
            args.model.display()
        );
    }
    if kind == BackendKind::Ort && !parse_device(&args.device)?.is_cpu() {
        bail!(
            "--device {} is the candle backend's; {} is an ONNX export, run on --ep (cpu, cuda, \
             tensorrt)",
            args.device,
            args.model.display()
        );
    }
    Ok(kind)
}

/// ONNX Runtime's session settings from the flags.
fn session_config(args: &ModelArgs) -> SessionConfig {
    let mut provider = args.ep.clone();
    if let ExecutionProvider::TensorRt(opts) = &mut provider {
        opts.fp16 = true;
        opts.engine_cache_dir = args.trt_cache.clone();
    }
    SessionConfig {
        provider,
        intra_threads: args.threads,
    }
}

fn load(args: &ModelArgs, video_mode: VideoMode) -> Result<Loaded> {
    let dtype = match args.dtype {
        Precision::F32 => DType::F32,
        Precision::Bf16 => DType::BF16,
    };
    let backend: Box<dyn Backend> = match backend_kind(args)? {
        BackendKind::Ort => {
            let limits = EngineLimits {
                max_batch: args.trt_max_batch,
                max_length: args.trt_max_length,
                max_tiles: args.trt_max_tiles,
            };
            Box::new(
                OrtBackend::open_with_limits(&args.model, &session_config(args), &limits)
                    .with_context(|| format!("opening the export in {}", args.model.display()))?,
            )
        }
        BackendKind::Candle | BackendKind::Auto => Box::new(
            CandleBackend::load(&args.model, dtype, &parse_device(&args.device)?)
                .with_context(|| format!("loading {}", args.model.display()))?,
        ),
    };
    let config = backend.config().clone();
    let tokenizer = PromptTokenizer::load(&args.model, &config)?;
    let media =
        MediaLoader::from_model_dir(&args.model, &config, args.frames)?.with_video_mode(video_mode);
    Ok(Loaded {
        backend,
        tokenizer,
        media,
    })
}

fn make_judge<'a>(
    l: &'a Loaded,
    args: &JudgeArgs,
    family: Family,
    model: &ModelArgs,
) -> Result<Judge<'a>> {
    Ok(Judge::new(
        l.backend.as_ref(),
        &l.tokenizer,
        prompt_style(args, family, model)?,
        args.judge,
        args.max_new_tokens,
    )?)
}

/// The prompts' wording and wrapping: the family's templates (or `--template`), the
/// checkpoint's chat template (or `--chat-template`).
fn prompt_style(args: &JudgeArgs, family: Family, model: &ModelArgs) -> Result<PromptStyle> {
    let chat = match &args.chat_template {
        Some(path) => ChatTemplate::from_file(path)?,
        None => ChatTemplate::from_checkpoint_dir(&model.model)?,
    };
    let user_template = args
        .template
        .as_ref()
        .map(PromptTemplate::from_file)
        .transpose()?;
    Ok(PromptStyle {
        family,
        chat,
        user_template,
        allow_fast_think: args.allow_fast_think,
        markers: MediaMarkers::Llava,
    })
}

/// Refuses an `--out` that would overwrite an input of the run or the checkpoint, before
/// anything is opened for writing.
fn check_out(out: &Path, inputs: &[Option<&PathBuf>], model: &ModelArgs) -> Result<()> {
    let inputs: Vec<&Path> = inputs.iter().flatten().map(|p| p.as_path()).collect();
    Ok(check_output_path(out, &inputs, Some(&model.model))?)
}

fn run() -> Result<RunSummary> {
    match Cli::parse().command {
        Command::Logprob {
            model,
            input,
            out,
            run,
        } => {
            check_out(&out, &[Some(&input)], &model)?;
            if ModelFamily::of_dir(&model.model)?.is_qwen_vl() {
                return qwen_logprob(&model, &input, &out, &run);
            }
            // Each record's markers choose its video mode; the loader's is not used.
            let l = load(&model, VideoMode::Pooled)?;
            let job = LogprobJob {
                backend: l.backend.as_ref(),
                tokenizer: &l.tokenizer,
                media: &l.media,
                token_budget: model.token_budget,
            };
            Ok(job.run(&input, &out, &run.options())?)
        }
        Command::Score {
            model,
            judge,
            batch,
            out,
            run,
        } => {
            let templates = [judge.template.as_ref(), judge.chat_template.as_ref()];
            check_out(&out, &[Some(&batch), templates[0], templates[1]], &model)?;
            let family = judge.family(&model.model)?;
            judge.check_mode(family)?;
            if ModelFamily::of_dir(&model.model)?.is_qwen_vl() {
                return qwen_score(&model, &judge, family, &batch, &out, &run);
            }
            let l = load(&model, judge.video_mode(family))?;
            let j = make_judge(&l, &judge, family, &model)?;
            let job = ScoreJob {
                judge: &j,
                media: &l.media,
                token_budget: model.token_budget,
            };
            Ok(job.run(&batch, &out, &run.options())?)
        }
        Command::Pairs {
            input,
            model,
            judge,
            out,
            ranking,
            swap,
            recipe,
            format,
            run,
        } => {
            let templates = [judge.template.as_ref(), judge.chat_template.as_ref()];
            check_out(&out, &[Some(&input), templates[0], templates[1]], &model)?;
            let family = judge.family(&model.model)?;
            judge.check_mode(family)?;
            let options = PairOptions {
                ranking,
                swap,
                recipe,
                format,
            };
            if ModelFamily::of_dir(&model.model)?.is_qwen_vl() {
                return qwen_pairs(&model, &judge, family, options, &input, &out, &run);
            }
            let l = load(&model, judge.video_mode(family))?;
            let j = make_judge(&l, &judge, family, &model)?;
            let job = PairsJob {
                judge: &j,
                media: PairsMedia::Llava(&l.media),
                options,
            };
            // `PairsJob::run` takes only `resume`; the pipeline reads the rest from here.
            let opts = run.options();
            opts.install();
            let grouping = Grouping::Batched {
                token_budget: model.token_budget,
            };
            Ok(job.run_grouped(&input, &out, opts.output.resume, grouping)?)
        }
        Command::Serve {
            model,
            judge,
            serve,
        } => {
            run_server(&model, &judge, &serve)?;
            Ok(RunSummary::default())
        }
    }
}

fn run_server(model: &ModelArgs, judge: &JudgeArgs, args: &ServeArgs) -> Result<()> {
    let family = judge.family(&model.model)?;
    let llava_prompts = matches!(family, Family::Llava | Family::LlavaAcs);
    let rank_recipe = match args.rank_recipe {
        Some(Recipe::Sift) if !llava_prompts => bail!(
            "--rank-recipe sift judges with the LLaVA family's prompts; with template family \
             {family} use --rank-recipe inference"
        ),
        Some(recipe) => recipe,
        None if llava_prompts => Recipe::Sift,
        None => Recipe::Inference,
    };
    // The server's fast judge refuses a Think family's requests one by one (a request may
    // ask for ?judge=generate); only a fast default is refused here.
    judge.check_mode(family)?;
    let options = serve_options(model, judge, args, rank_recipe)?;
    let fast_args = JudgeArgs {
        judge: JudgeMode::Fast,
        ..judge.clone()
    };
    let generate_args = JudgeArgs {
        judge: JudgeMode::Generate,
        ..judge.clone()
    };
    // /v1/rank judges every pair, as `--ranking round-robin`.
    let rank_options = PairOptions {
        ranking: RankingMode::RoundRobin,
        swap: args.rank_swap,
        recipe: rank_recipe,
        format: PairFormat::default(),
    };
    let feature_cache_bytes = args.feature_cache_mb.saturating_mul(1 << 20);
    if ModelFamily::of_dir(&model.model)?.is_qwen_vl() {
        let q = load_qwen(model)?;
        // One fast judge for /v1/score and /v1/rank: building one scans the whole vocabulary.
        let fast = qwen_judge(&q, &fast_args, family, model)?;
        let videos = qwen_videos(judge, family, model);
        let serve_model = ServeModel {
            fast: &fast,
            generate: qwen_judge(&q, &generate_args, family, model)?,
            rank: PairsJob {
                judge: &fast,
                media: PairsMedia::Qwen {
                    backend: q.backend.as_ref(),
                    processor: &q.processor,
                    videos,
                },
                options: rank_options,
            },
            token_budget: model.token_budget,
            feature_cache_bytes,
            qwen: Some(q.backend.as_ref()),
        };
        let reader = MediaReader::Qwen {
            processor: q.processor.clone(),
            videos,
        };
        return listen(&serve_model, reader, options);
    }
    let l = load(model, judge.video_mode(family))?;
    let fast = make_judge(&l, &fast_args, family, model)?;
    let serve_model = ServeModel {
        fast: &fast,
        generate: make_judge(&l, &generate_args, family, model)?,
        rank: PairsJob {
            judge: &fast,
            media: PairsMedia::Llava(&l.media),
            options: rank_options,
        },
        token_budget: model.token_budget,
        feature_cache_bytes,
        qwen: None,
    };
    let loader = MediaLoader::from_model_dir(&model.model, l.backend.config(), model.frames)?
        .with_video_mode(judge.video_mode(family));
    listen(&serve_model, MediaReader::Llava(loader), options)
}

/// How the server listens and what it accepts, from the command line.
fn serve_options(
    model: &ModelArgs,
    judge: &JudgeArgs,
    args: &ServeArgs,
    rank_recipe: Recipe,
) -> Result<ServeOptions> {
    let allowed_dir = args
        .allowed_media_dir
        .as_ref()
        .map(|d| {
            d.canonicalize()
                .with_context(|| format!("--allowed-media-dir {}", d.display()))
        })
        .transpose()?;
    let served_model_name = args.served_model_name.clone().unwrap_or_else(|| {
        model
            .model
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "unireward".into())
    });
    Ok(ServeOptions {
        host: args.host.clone(),
        port: args.port,
        // From the environment too, so that the key need not show in `ps`.
        api_key: args.api_key.clone().or_else(|| {
            std::env::var("UNIREWARD_API_KEY")
                .ok()
                .filter(|k| !k.is_empty())
        }),
        served_model_name,
        max_queue: args.max_queue.max(1),
        max_body_bytes: args.max_body_mb.saturating_mul(1 << 20),
        policy: MediaPolicy {
            allowed_dir,
            max_media: args.max_media_per_request,
            max_pixels: args.max_image_pixels,
        },
        default_judge: judge.judge,
        rank_resize: match rank_recipe {
            Recipe::Sift => sift_resize,
            Recipe::Inference => |_| None,
        },
    })
}

fn listen(model: &ServeModel, reader: MediaReader, options: ServeOptions) -> Result<()> {
    serve(model, reader, options, |address| {
        // Scripts (and the tests) read the address from this line.
        println!("listening on http://{address}");
        let _ = std::io::Write::flush(&mut std::io::stdout());
    })?;
    Ok(())
}
