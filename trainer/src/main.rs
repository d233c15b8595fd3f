//! `trainer reward` (supervised fine-tuning on judge data) and `trainer dpo --kind vlm`
//! (DPO on preference pairs) for the reward model (LLaVA-OneVision or Qwen2.5-VL), training
//! the weights or LoRA adapters; `trainer dpo --kind diffusion` (Diffusion-DPO of a diffusers pipeline's
//! UNet on image pairs); `trainer denoise` (the plain denoising loss on captioned images, e.g. to
//! pretrain a generator); `trainer merge-lora` merges an adapter into its base model.

// Tensors of a few MB are allocated and freed per op; glibc's malloc returns them to the
// system each time, and faulting the pages back in cost a fifth of a CPU forward.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod sample_cmd;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::DType;
use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use unireward_models::device::parse_device;
use unireward_models::diffusion::vae::AutoencoderKL;
use unireward_trainer::checkpoint_keys::TrainParts;
use unireward_trainer::data::captioned_images::CaptionedImages;
use unireward_trainer::data::diffusion_pairs::DiffusionPairs;
use unireward_trainer::data::dpo::DpoData;
use unireward_trainer::data::reward::RewardData;
use unireward_trainer::data::Preparer;
use unireward_trainer::lora::{merge, LoraConfig, UNET_DEFAULT_TARGETS};
use unireward_trainer::loss::diffusion_dpo;
use unireward_trainer::loss::dpo::{DpoLossKind, DpoParams};
use unireward_trainer::objectives::denoise::DenoiseObjective;
use unireward_trainer::objectives::diffusion::{
    load_frozen_unet, noise_schedule, Conditioner, DiffusionSetup, LatentEncoder, TimestepDraw,
};
use unireward_trainer::objectives::diffusion_dpo::DiffusionDpoObjective;
use unireward_trainer::objectives::dpo::{
    load_or_compute_reference, reference_fingerprint, warn_identical_pairs,
};
use unireward_trainer::objectives::{DpoObjective, Reference, RewardObjective};
use unireward_trainer::optim::AdamWParams;
use unireward_trainer::schedule::ScheduleKind;
use unireward_trainer::train_loop::{
    check_fresh_out, check_resume_data, train, LoopConfig, TrainSummary,
};
use unireward_trainer::unet_trainee::{TrainedPart, UNetTrainee};
use unireward_trainer::varmap_model::{Architecture, VarMapModel};

#[derive(Parser)]
#[command(
    name = "trainer",
    version,
    about = "Train the UnifiedReward judge in candle"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Supervised fine-tuning on LLaVA-format judge data (loss on answer tokens only).
    Reward(RewardArgs),
    /// DPO on preference pairs (`engine pairs` output / UnifiedReward DPO format).
    Dpo(DpoArgs),
    /// Merge a LoRA adapter (PEFT layout) into its base model: a full checkpoint.
    MergeLora(MergeArgs),
    /// Fine-tune a diffusers pipeline's UNet with the plain denoising loss on captioned images
    /// (train_text_to_image.py's objective), e.g. to pretrain a generator before DPO.
    Denoise(DenoiseArgs),
    /// Draw candidate images per prompt with a diffusers text-to-image pipeline, written as
    /// `engine pairs` input (resumable).
    Sample(sample_cmd::SampleArgs),
}

#[derive(Args)]
struct MergeArgs {
    /// The base model directory the adapter was trained on.
    #[arg(long)]
    model: PathBuf,
    /// Directory with adapter_config.json and adapter_model.safetensors.
    #[arg(long)]
    adapter: PathBuf,
    /// Output directory: the merged weights (the base's key names, dtype and sharding) with
    /// the base's config and tokenizer files.
    #[arg(long)]
    out: PathBuf,
}

/// LoRA: with --lora-rank, every weight is frozen and adapters on the targeted linear
/// layers are trained; the output directory then holds the adapter in PEFT's layout.
#[derive(Args)]
struct LoraArgs {
    /// Train LoRA adapters of this rank instead of the weights: every weight stays frozen
    /// and the output holds the adapter in PEFT's layout (LoRA usually wants a larger --lr
    /// than full training, e.g. 1e-4).
    #[arg(long)]
    lora_rank: Option<usize>,
    /// LoRA alpha: the update is (alpha/rank)·B·A [default: the rank].
    #[arg(long, requires = "lora_rank")]
    lora_alpha: Option<f64>,
    /// Dropout on the adapters' input; only 0 is supported (adapters act through merged
    /// weights).
    #[arg(long, requires = "lora_rank")]
    lora_dropout: Option<f64>,
    /// Comma-separated module names to adapt (q_proj k_proj v_proj o_proj gate_proj up_proj
    /// down_proj, vision out_proj fc1 fc2, projector linear_1 linear_2, lm_head), within the
    /// parts --train-vision/--train-projector/--train-decoder enable
    /// [default: q_proj,k_proj,v_proj,o_proj]. For a UNet (--kind diffusion): its linear
    /// layers by PEFT's suffix rule (to_q to_k to_v to_out.0 ff.net.0.proj ff.net.2
    /// proj_in proj_out time_emb_proj) [default: to_k,to_q,to_v,to_out.0, as diffusers'
    /// LoRA training scripts adapt it]; the output then holds the adapter as diffusers saves
    /// it (pytorch_lora_weights.safetensors).
    #[arg(long, requires = "lora_rank", value_delimiter = ',')]
    lora_targets: Option<Vec<String>>,
}

impl LoraArgs {
    fn config(&self) -> Option<LoraConfig> {
        let rank = self.lora_rank?;
        Some(LoraConfig::new(
            rank,
            self.lora_alpha,
            self.lora_dropout.unwrap_or(0.0),
            self.lora_targets.clone().unwrap_or_default(),
        ))
    }
}

#[derive(Args)]
struct Common {
    /// Checkpoint directory to start from (config.json, weights, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// Training data (JSON array or JSONL).
    #[arg(long)]
    data: PathBuf,
    /// Output directory: metrics.jsonl, checkpoint-STEP/, and the final weights.
    #[arg(long)]
    out: PathBuf,
    /// Optimizer steps to run (overrides --epochs).
    #[arg(long)]
    max_steps: Option<usize>,
    #[arg(long, default_value_t = 1.0)]
    epochs: f64,
    /// Peak learning rate (reward: 1e-5, dpo: 5e-7).
    #[arg(long)]
    lr: Option<f64>,
    /// Examples per micro-batch.
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Share of the steps spent warming up (reward: 0.03, dpo: 0.3).
    #[arg(long)]
    warmup_ratio: Option<f64>,
    /// cosine, linear or constant (after the warmup).
    #[arg(long, default_value = "cosine")]
    schedule: ScheduleKind,
    /// Write a checkpoint every N steps.
    #[arg(long)]
    save_every: Option<usize>,
    /// Newest checkpoints kept (0: all).
    #[arg(long, default_value_t = 2)]
    keep_checkpoints: usize,
    /// Continue from the newest checkpoint in --out.
    #[arg(long)]
    resume: bool,
    /// With --resume: go on although the data file is not the one the checkpoint was
    /// written with (otherwise refused).
    #[arg(long, requires = "resume")]
    allow_data_change: bool,
    /// Stop after this step (writing a checkpoint); --resume continues the same run.
    #[arg(long)]
    stop_after: Option<usize>,
    /// Train the SigLIP tower.
    #[arg(long, num_args = 0..=1, default_value_t = false, default_missing_value = "true", action = ArgAction::Set)]
    train_vision: bool,
    /// Train the projector.
    #[arg(long, num_args = 0..=1, default_value_t = true, default_missing_value = "true", action = ArgAction::Set)]
    train_projector: bool,
    /// Train the decoder (with its head and image_newline).
    #[arg(long, num_args = 0..=1, default_value_t = true, default_missing_value = "true", action = ArgAction::Set)]
    train_decoder: bool,
    /// Clip the gradients' global norm to this (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Compute dtype of the model: f32, f64 or bf16. With bf16 the trained weights keep
    /// f32 master copies and AdamW's moments are f32 (mixed precision, as on a GPU).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Recompute each decoder layer in backward instead of keeping its intermediates: one
    /// hidden state per layer and token is kept, for about one more forward of compute.
    /// The gradients are the same.
    #[arg(long)]
    grad_checkpointing: bool,
    /// Device to train on: cpu, cuda or cuda:N (CUDA needs a `--features cuda` build).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Frames sampled per video.
    #[arg(long, default_value_t = 8)]
    frames: usize,
    /// Longest sequence accepted, in tokens (default: the model's context).
    #[arg(long)]
    max_length: Option<usize>,
    /// Where relative media paths start (default: the data file's directory).
    #[arg(long)]
    media_root: Option<PathBuf>,
    /// Visit the examples in file order instead of a seeded shuffle per epoch.
    #[arg(long)]
    no_shuffle: bool,
    /// No progress bar even on a terminal.
    #[arg(long)]
    no_progress: bool,
    #[command(flatten)]
    lora: LoraArgs,
}

#[derive(Args)]
struct RewardArgs {
    #[command(flatten)]
    common: Common,
    /// Held-out judge data: its mean answer-token loss is logged as eval_loss.
    #[arg(long)]
    eval_data: Option<PathBuf>,
    /// Evaluate every N steps (and at the last); default: only at the last.
    #[arg(long)]
    eval_every: Option<usize>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    /// The reward model itself (LLaVA-OneVision or Qwen2.5-VL), on text answers.
    Vlm,
    /// A diffusers text-to-image pipeline's UNet (SD 1.5, SDXL, SDXL-Turbo), on image pairs
    /// (Diffusion-DPO, as DiffusionDPO's train.py).
    Diffusion,
}

#[derive(Clone, Copy, ValueEnum)]
enum TrainArg {
    /// Every UNet weight (DiffusionDPO's train.py).
    All,
    /// Only the UNet's linear layers (weights and biases), as VideoDPO trains; convolutions
    /// and norms stay frozen.
    Linear,
}

#[derive(Clone, Copy, ValueEnum)]
enum TimestepArg {
    /// Uniform over the schedule's training steps.
    Uniform,
    /// SDXL-Turbo's grid 250k + 249.
    Turbo,
}

#[derive(Clone, Copy, ValueEnum)]
enum RefKind {
    /// Reference log-probs computed once before training, cached in OUT/ref_logps.jsonl.
    Precompute,
    /// A frozen copy of the starting model, run on every batch.
    Frozen,
}

#[derive(Args)]
struct DpoArgs {
    #[arg(long, value_enum)]
    kind: Kind,
    #[command(flatten)]
    common: Common,
    /// DPO's beta [default: 0.1 for vlm; 5000 for diffusion, train.py's --beta_dpo].
    #[arg(long)]
    beta: Option<f64>,
    /// sigmoid, ipo or hinge.
    #[arg(long, default_value = "sigmoid")]
    loss: DpoLossKind,
    /// Label smoothing of the sigmoid loss.
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f64,
    /// Weight of an SFT term on the chosen: vlm, the answers' mean NLL per token; diffusion,
    /// the chosen image's denoising loss (train.py: 0).
    #[arg(long, default_value_t = 0.0)]
    sft_weight: f64,
    /// vlm: the reference's log-probs precomputed (default) or a frozen copy run per batch.
    /// Diffusion always runs a frozen copy of the starting UNet.
    #[arg(long = "ref", value_enum)]
    reference: Option<RefKind>,
    #[command(flatten)]
    diffusion: DiffusionArgs,
}

/// What both diffusion commands (`dpo --kind diffusion`, `denoise`) take.
#[derive(Args)]
struct DiffusionArgs {
    /// diffusion: the training images' side, in pixels [default: 512; 1024 for SDXL].
    #[arg(long)]
    resolution: Option<u32>,
    /// diffusion: no random horizontal flip of the training images (train.py's --no_hflip).
    #[arg(long)]
    no_hflip: bool,
    /// diffusion: encode each image with the VAE once and keep its latent distribution in
    /// OUT/latent_cache/ (the sample is still drawn per visit).
    #[arg(long)]
    cache_latents: bool,
    /// diffusion: how timesteps are drawn [default: turbo when the model path names
    /// "turbo", as train.py decides, else uniform].
    #[arg(long, value_enum)]
    timesteps: Option<TimestepArg>,
    /// diffusion: held-out data in the training data's format (pairs for dpo, captioned
    /// images for denoise), judged at fixed draws: eval_loss (and for dpo eval_implicit_acc).
    #[arg(long)]
    eval_data: Option<PathBuf>,
    /// diffusion: evaluate every N steps (and at the last); default: only at the last.
    #[arg(long, requires = "eval_data")]
    eval_every: Option<usize>,
    /// diffusion: which UNet weights train [default: all].
    #[arg(long, value_enum)]
    train: Option<TrainArg>,
}

/// `trainer denoise`: the plain denoising loss (train_text_to_image.py's).
#[derive(Args)]
struct DenoiseArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    diffusion: DiffusionArgs,
}

fn parse_dtype(s: &str) -> Result<DType> {
    match s {
        "f32" => Ok(DType::F32),
        "f64" => Ok(DType::F64),
        "bf16" => Ok(DType::BF16),
        other => anyhow::bail!("unknown --dtype {other:?}: expected f32, f64 or bf16"),
    }
}

impl Common {
    fn parts(&self) -> TrainParts {
        TrainParts {
            vision: self.train_vision,
            projector: self.train_projector,
            decoder: self.train_decoder,
        }
    }

    fn loop_config(&self, default_lr: f64, default_warmup: f64) -> LoopConfig {
        LoopConfig {
            out: self.out.clone(),
            source_dir: self.model.clone(),
            max_steps: self.max_steps,
            epochs: self.epochs,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            seed: self.seed,
            shuffle: !self.no_shuffle,
            lr: self.lr.unwrap_or(default_lr),
            warmup_ratio: self.warmup_ratio.unwrap_or(default_warmup),
            schedule: self.schedule,
            save_every: self.save_every,
            keep_checkpoints: self.keep_checkpoints,
            resume: self.resume,
            allow_data_change: self.allow_data_change,
            stop_after: self.stop_after,
            // Only 0 turns clipping off; anything else (NaN and negatives included) is
            // checked by `LoopConfig::validate`.
            max_grad_norm: (self.max_grad_norm != 0.0).then_some(self.max_grad_norm),
            adamw: AdamWParams {
                weight_decay: self.weight_decay,
                ..AdamWParams::default()
            },
            eval_every: None,
            progress: !self.no_progress,
        }
    }

    /// Every flag checked before anything is loaded or computed; each error names its flag.
    fn validate(&self, cfg: &LoopConfig) -> Result<()> {
        cfg.validate()?;
        parse_dtype(&self.dtype)?;
        parse_device(&self.device)?;
        if self.frames == 0 {
            anyhow::bail!("--frames must be at least 1, got 0");
        }
        if self.max_length == Some(0) {
            anyhow::bail!("--max-length must be at least 1, got 0");
        }
        if let Some(lora) = self.lora.config() {
            lora.validate_for_training()?;
        }
        Ok(())
    }

    /// Refuses an output directory that is the model directory (the run's outputs would
    /// replace the weights it starts from), a fresh run into an earlier run's directory,
    /// and a resumed run whose data file changed (unless --allow-data-change).
    fn check_out(&self) -> Result<()> {
        let same = match (self.out.canonicalize(), self.model.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if same {
            anyhow::bail!(
                "--out {} is the model directory; write the run elsewhere",
                self.out.display()
            );
        }
        check_fresh_out(&self.out, self.resume)?;
        if self.resume && !self.allow_data_change {
            check_resume_data(&self.out, &self.data, false)?;
        }
        Ok(())
    }

    fn load_model(&self) -> Result<VarMapModel> {
        let dtype = parse_dtype(&self.dtype)?;
        let device = parse_device(&self.device)?;
        let mut model = VarMapModel::load(&self.model, dtype, &device, self.parts())
            .with_context(|| format!("loading {}", self.model.display()))?;
        if let Some(lora) = self.lora.config() {
            model.add_lora(&lora, self.seed)?;
        }
        model.set_grad_checkpointing(self.grad_checkpointing)?;
        Ok(model)
    }

    /// Where `data`'s relative media paths start: --media-root, else the file's directory.
    fn media_root(&self, data: &Path) -> PathBuf {
        match &self.media_root {
            Some(r) => r.clone(),
            None => data.parent().unwrap_or(Path::new(".")).to_path_buf(),
        }
    }

    fn preparer(&self, model: &VarMapModel, data: &Path) -> Result<Preparer> {
        Ok(match model.architecture() {
            Architecture::Llava(cfg) => Preparer::new(
                &self.model,
                cfg,
                self.media_root(data),
                self.frames,
                self.max_length,
            )?,
            // A video is one item of all its frames, as `inference_qwen` sends it.
            Architecture::QwenVl(cfg, _) => {
                Preparer::qwen_vl(&self.model, cfg, self.media_root(data), self.max_length)?
            }
            Architecture::Qwen3Vl(cfg, _) => {
                Preparer::qwen_vl(&self.model, cfg, self.media_root(data), self.max_length)?
            }
        })
    }
}

fn report(summary: &TrainSummary, out: &Path) {
    let state = if summary.finished {
        format!("finished; weights (or adapter) in {}", out.display())
    } else {
        "stopped; continue with --resume".to_string()
    };
    eprintln!(
        "trainer: step {}/{} {state}",
        summary.step, summary.total_steps
    );
}

/// Held-out evaluation every `every` steps and at the last (only at the last by default),
/// when there is held-out data.
fn set_eval(cfg: &mut LoopConfig, has_data: bool, every: Option<usize>) -> Result<()> {
    if every == Some(0) {
        anyhow::bail!("--eval-every must be at least 1, got 0");
    }
    if has_data {
        cfg.eval_every = Some(every.unwrap_or(usize::MAX));
    }
    Ok(())
}

fn run_reward(args: RewardArgs) -> Result<()> {
    let c = &args.common;
    let mut cfg = c.loop_config(1e-5, 0.03);
    set_eval(&mut cfg, args.eval_data.is_some(), args.eval_every)?;
    c.validate(&cfg)?;
    c.check_out()?;
    let mut model = c.load_model()?;
    let data = RewardData::read(&c.data, c.preparer(&model, &c.data)?)?;
    let eval = match &args.eval_data {
        Some(path) => Some(RewardData::read(path, c.preparer(&model, path)?)?),
        None => None,
    };
    let objective = RewardObjective {
        data,
        eval,
        eval_batch_size: c.batch_size,
    };
    let summary = train(&mut model, &objective, &cfg)?;
    report(&summary, &c.out);
    Ok(())
}

fn run_dpo(args: DpoArgs) -> Result<()> {
    if !(args.sft_weight >= 0.0 && args.sft_weight.is_finite()) {
        anyhow::bail!(
            "--sft-weight must be a finite number of at least 0, got {}",
            args.sft_weight
        );
    }
    if let Kind::Diffusion = args.kind {
        return run_diffusion_dpo(args);
    }
    let c = &args.common;
    let d = &args.diffusion;
    let diffusion_only = [
        ("--resolution", d.resolution.is_some()),
        ("--no-hflip", d.no_hflip),
        ("--cache-latents", d.cache_latents),
        ("--timesteps", d.timesteps.is_some()),
        ("--eval-data", d.eval_data.is_some()),
        ("--train", d.train.is_some()),
    ];
    if let Some((flag, _)) = diffusion_only.iter().find(|(_, set)| *set) {
        anyhow::bail!("{flag} applies to --kind diffusion only");
    }
    let params = DpoParams {
        beta: args.beta.unwrap_or(0.1),
        loss: args.loss,
        label_smoothing: args.label_smoothing,
    };
    params
        .validate()
        .context("invalid --beta, --loss or --label-smoothing")?;
    let cfg = c.loop_config(5e-7, 0.3);
    c.validate(&cfg)?;
    c.check_out()?;
    let mut model = c.load_model()?;
    let data = DpoData::read(&c.data, c.preparer(&model, &c.data)?)?;
    warn_identical_pairs(&data);
    let reference = match args.reference.unwrap_or(RefKind::Precompute) {
        RefKind::Frozen => Reference::Frozen(model.frozen_copy()?),
        RefKind::Precompute => {
            // The reference is the starting model: a resumed run reads the cache (or
            // recomputes it from --model, which is still the start).
            let settings = format!(
                "{} frames={} max_length={:?} media_root={:?}",
                c.dtype, c.frames, c.max_length, c.media_root
            );
            let fingerprint = reference_fingerprint(&c.data, &c.model, &settings)?;
            Reference::Precomputed(load_or_compute_reference(
                &c.out,
                &fingerprint,
                model.model(),
                &data,
                c.batch_size,
                !c.no_progress,
            )?)
        }
    };
    let objective = DpoObjective {
        data,
        params,
        sft_weight: args.sft_weight,
        reference,
    };
    let summary = train(&mut model, &objective, &cfg)?;
    report(&summary, &c.out);
    Ok(())
}

/// Refuses the judge-only flags a diffusion command was given.
fn refuse_flags(refused: &[(&str, bool)], command: &str) -> Result<()> {
    if let Some((flag, _)) = refused.iter().find(|(_, set)| *set) {
        anyhow::bail!("{flag} is not supported with {command}");
    }
    Ok(())
}

/// What the two diffusion commands load alike: the trained UNet, the frozen VAE and text
/// encoders, the noise schedule and the draws.
struct DiffusionRun {
    cfg: LoopConfig,
    device: candle_core::Device,
    unet: UNetTrainee,
    setup: DiffusionSetup,
}

fn load_diffusion(
    c: &Common,
    d: &DiffusionArgs,
    default_lr: f64,
    objective: &str,
) -> Result<DiffusionRun> {
    refuse_flags(
        &[
            ("--grad-checkpointing", c.grad_checkpointing),
            ("--max-length", c.max_length.is_some()),
        ],
        objective,
    )?;
    if d.resolution == Some(0) {
        anyhow::bail!("--resolution must be at least 1, got 0");
    }
    let mut cfg = c.loop_config(default_lr, 0.0);
    set_eval(&mut cfg, d.eval_data.is_some(), d.eval_every)?;
    c.validate(&cfg)?;
    c.check_out()?;
    let dtype = parse_dtype(&c.dtype)?;
    let device = parse_device(&c.device)?;
    let model_dir = &c.model;
    let part = match d.train {
        Some(TrainArg::Linear) => TrainedPart::Linear,
        Some(TrainArg::All) | None => TrainedPart::All,
    };
    let unet = match c.lora.config() {
        None => UNetTrainee::load_part(model_dir, dtype, &device, part),
        Some(_) if d.train.is_some() => {
            anyhow::bail!(
                "--train and --lora-rank exclude each other: with LoRA only the adapters train"
            )
        }
        Some(mut lora) => {
            if c.lora.lora_targets.is_none() {
                lora.targets = UNET_DEFAULT_TARGETS.iter().map(|t| t.to_string()).collect();
            }
            lora.validate_for_training()?;
            UNetTrainee::load_with_lora(model_dir, dtype, &device, &lora, c.seed)
        }
    }
    .with_context(|| format!("loading the UNet of {}", model_dir.display()))?;
    let sdxl = unet.spec().text_time.is_some();
    let resolution = d.resolution.unwrap_or(if sdxl { 1024 } else { 512 });
    let timesteps = match d.timesteps {
        Some(TimestepArg::Turbo) => TimestepDraw::Turbo,
        Some(TimestepArg::Uniform) => TimestepDraw::Uniform,
        None if model_dir.to_string_lossy().to_lowercase().contains("turbo") => {
            tracing::info!("trainer: the model path names turbo: timesteps on the Turbo grid");
            TimestepDraw::Turbo
        }
        None => TimestepDraw::Uniform,
    };
    let (schedule, prediction) = noise_schedule(model_dir, objective)?;
    // The frozen parts in f32: SDXL's VAE overflows in half precision (diffusers upcasts it).
    let vae = AutoencoderKL::load(&model_dir.join("vae"), DType::F32, &device)?;
    let conditioner = Conditioner::load(model_dir, sdxl, resolution, DType::F32, &device)?;
    let setup = DiffusionSetup {
        latents: LatentEncoder {
            vae,
            resolution,
            cache: d.cache_latents.then(|| c.out.join("latent_cache")),
        },
        conditioner,
        schedule,
        prediction,
        timesteps,
        hflip: !d.no_hflip,
        seed: c.seed,
        dtype,
    };
    Ok(DiffusionRun {
        cfg,
        device,
        unet,
        setup,
    })
}

/// Refuses data whose candidates are videos for an image UNet, or images for a motion UNet.
/// The training data and the held-out data (`--eval-data`) of a diffusion run, each read by
/// `read`; refused, naming the file and the record, where `mismatch` finds a record of the
/// other media kind than the UNet's (images for a motion UNet, videos for an image one).
fn read_diffusion_data<T>(
    c: &Common,
    d: &DiffusionArgs,
    video: bool,
    read: impl Fn(&Path, &Path) -> unireward_trainer::Result<T>,
    mismatch: impl Fn(&T, bool) -> Option<String>,
) -> Result<(T, Option<T>)> {
    let data = read(&c.data, &c.media_root(&c.data))?;
    let eval = match &d.eval_data {
        Some(path) => Some(read(path, &c.media_root(path))?),
        None => None,
    };
    let eval_path = d.eval_data.as_deref().unwrap_or(&c.data);
    let found = [
        (c.data.as_path(), mismatch(&data, video)),
        (eval_path, eval.as_ref().and_then(|e| mismatch(e, video))),
    ];
    for (path, first_mismatch) in found {
        let Some(id) = first_mismatch else {
            continue;
        };
        anyhow::bail!(
            "{}: record {id} holds {} but the UNet of {} is {}",
            path.display(),
            if video { "images" } else { "videos" },
            c.model.display(),
            if video {
                "a motion UNet (videos)"
            } else {
                "an image UNet"
            }
        );
    }
    Ok((data, eval))
}

fn run_diffusion_dpo(args: DpoArgs) -> Result<()> {
    let c = &args.common;
    let d = &args.diffusion;
    refuse_flags(
        &[
            (
                "--loss other than sigmoid",
                args.loss != DpoLossKind::Sigmoid,
            ),
            ("--label-smoothing", args.label_smoothing != 0.0),
            (
                "--ref precompute",
                matches!(args.reference, Some(RefKind::Precompute)),
            ),
        ],
        "--kind diffusion",
    )?;
    // train.py's --learning_rate 1e-8 with --scale_lr (both launchers): times the pairs of
    // an optimizer step.
    let default_lr = 1e-8 * (c.batch_size * c.grad_accum) as f64;
    let DiffusionRun {
        cfg,
        device,
        mut unet,
        setup,
    } = load_diffusion(c, d, default_lr, "--kind diffusion")?;
    let beta = args.beta.unwrap_or(diffusion_dpo::DEFAULT_BETA);
    if !(beta > 0.0 && beta.is_finite()) {
        anyhow::bail!("--beta must be a positive number, got {beta}");
    }
    let reference = load_frozen_unet(&c.model, setup.dtype, &device)?;
    let (data, eval) = read_diffusion_data(
        c,
        d,
        unet.is_video(),
        DiffusionPairs::read,
        |pairs: &DiffusionPairs, video| {
            pairs
                .pairs
                .iter()
                .find(|p| p.chosen.is_video() != video)
                .map(|p| p.id.clone())
        },
    )?;
    let objective = DiffusionDpoObjective {
        data,
        eval,
        data_file: c.data.clone(),
        setup,
        reference,
        beta,
        sft_weight: args.sft_weight,
    };
    let summary = train(&mut unet, &objective, &cfg)?;
    report(&summary, &c.out);
    Ok(())
}

fn run_denoise(args: DenoiseArgs) -> Result<()> {
    let c = &args.common;
    let d = &args.diffusion;
    // train_text_to_image.py's --learning_rate default, 1e-4.
    let DiffusionRun {
        cfg,
        mut unet,
        setup,
        ..
    } = load_diffusion(c, d, 1e-4, "denoise")?;
    let (data, eval) = read_diffusion_data(
        c,
        d,
        unet.is_video(),
        CaptionedImages::read,
        |set: &CaptionedImages, video| {
            set.examples
                .iter()
                .find(|e| e.image.is_video() != video)
                .map(|e| e.id.clone())
        },
    )?;
    let objective = DenoiseObjective {
        data,
        eval,
        data_file: c.data.clone(),
        setup,
    };
    let summary = train(&mut unet, &objective, &cfg)?;
    report(&summary, &c.out);
    Ok(())
}

fn run_merge(args: MergeArgs) -> Result<()> {
    let summary = merge(&args.model, &args.adapter, &args.out)?;
    eprintln!(
        "trainer: merged {} adapted weight(s) into {}",
        summary.modules,
        args.out.display()
    );
    Ok(())
}

fn main() {
    unireward_models::allocator::retain_freed_memory();
    unireward_models::logging::init_logging();
    let result = match Cli::parse().command {
        Command::Reward(args) => run_reward(args),
        Command::Dpo(args) => run_dpo(args),
        Command::MergeLora(args) => run_merge(args),
        Command::Denoise(args) => run_denoise(args),
        Command::Sample(args) => sample_cmd::run_sample(args),
    };
    if let Err(e) = result {
        eprintln!("trainer: error: {e:#}");
        std::process::exit(1);
    }
}
