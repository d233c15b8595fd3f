//! `demo generator`: aligning an image generator with the judge (Diffusion-DPO).
//!
//! 1. A tiny SD-1.5-style pipeline (`generator::pipeline`) pretrained with the plain denoising
//!    loss (`trainer denoise`) on the judge-training split's generated images, each captioned
//!    with what it shows: renderings of every skill, clean and faded or grainy alike, as a
//!    web-scraped data set mixes good pictures and bad. The pretraining takes longer than the
//!    demo's budget, so by default its UNet is the shipped one (`generator::pretrained`);
//!    `--pretrain` runs it here.
//! 2. `trainer sample` draws candidates for the fresh split's captions, each caption from its
//!    own seeds as the reference's data generation draws them (drawn from seeds 0..9 for every
//!    caption, the judge's pairs were one seed against another); `engine pairs` (the trained
//!    judge, image generation) builds a chosen/rejected pair from each caption's.
//! 3. `trainer dpo --kind diffusion` trains the pretrained UNet on those pairs with train.py's
//!    loss (`--sft-weight` adds the chosen images' denoising loss; the preset's is 0).
//! 4. `trainer sample` draws again, same captions, same seeds, with the aligned UNet.
//!
//! Both sample sets are measured under the world's ground truth (`generator::truth`), beside
//! the world's own renderings of the same captions by its best and worst generators, as the
//! VAE keeps them (the most a 16x16 latent can hold).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use image::RgbImage;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use unireward_models::formats::pair_record::{PairsAnswer, PairsRecord};
use unireward_models::formats::record::Record;

use crate::error::{Error, Result};
use crate::generator::pipeline::{write_pipeline, GeneratorShape};
use crate::generator::pretrained;
use crate::generator::truth::{as_the_vae_sees, measure, summarise, Measured, Summary};
use crate::jsonl::{self, write_json};
use crate::run_dir::RunDir;
use crate::settings::{Settings, TrainSettings};
use crate::steps::answer_model::trainer_args;
use crate::tools::{arg, run as run_tool, Tool};
use crate::world::attributes::{Attributes, Medium};
use crate::world::caption::caption;
use crate::world::store::{load, Split, World};
use crate::world::GenerationPrompt;

/// What sizes the generator step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratorSettings {
    pub shape: GeneratorShape,
    /// Pretraining images (the first of the judge-training split's candidates).
    pub pretrain_images: usize,
    pub pretrain: TrainSettings,
    /// Fresh captions sampled for, and candidates per caption.
    pub prompts: usize,
    pub candidates: usize,
    /// DDIM steps per sample.
    pub sample_steps: usize,
    pub dpo: TrainSettings,
    /// Diffusion-DPO's beta.
    pub beta: f64,
    /// `trainer dpo --sft-weight`: the chosen images' denoising loss added to each pair's.
    #[serde(default)]
    pub sft_weight: f64,
}

/// A split's still-image captions that are not control prompts: what the generator draws.
fn image_prompts(world: &World) -> impl Iterator<Item = &GenerationPrompt> {
    world
        .generation
        .iter()
        .filter(|p| p.medium == Medium::Image && !p.control)
}

fn gen_dir(dir: &RunDir) -> PathBuf {
    dir.root.join("generator")
}

fn remove(path: &Path) -> Result<()> {
    if path.is_dir() {
        std::fs::remove_dir_all(path).map_err(|e| Error::io(path, e))?;
    } else if path.exists() {
        std::fs::remove_file(path).map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| Error::io(from, e))? {
        let entry = entry.map_err(|e| Error::io(from, e))?;
        let path = entry.path();
        let dest = to.join(entry.file_name());
        if path.is_dir() {
            copy_dir(&path, &dest)?;
        } else {
            std::fs::copy(&path, &dest).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

/// A pipeline directory: `base`'s components with the UNet a trainer run wrote.
fn assemble(base: &Path, trained: &Path, out: &Path) -> Result<()> {
    remove(out)?;
    copy_dir(base, out)?;
    remove(&out.join("unet"))?;
    copy_dir(&trained.join("unet"), &out.join("unet"))
}

fn words() -> BTreeSet<String> {
    Attributes::all(Medium::Image)
        .iter()
        .flat_map(|a| {
            caption(a)
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn read_png(path: &Path) -> Result<RgbImage> {
    Ok(image::open(path)
        .map_err(|e| Error::Image {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?
        .to_rgb8())
}

/// 1 / the deviation of the pixels (in [-1, 1]) the VAE's latents hold: SD's way of choosing
/// `scaling_factor`, so that the UNet sees latents of unit deviation.
fn scaling_factor(images: &[PathBuf]) -> Result<f64> {
    let (mut sum, mut sq, mut n) = (0.0f64, 0.0f64, 0.0f64);
    for path in images.iter().take(200) {
        let img = as_the_vae_sees(&read_png(path)?);
        for p in img.pixels() {
            for c in p.0 {
                let v = f64::from(c) / 127.5 - 1.0;
                sum += v;
                sq += v * v;
                n += 1.0;
            }
        }
    }
    let var = sq / n.max(1.0) - (sum / n.max(1.0)).powi(2);
    // A NaN variance (no pixels) is refused too.
    if var.is_nan() || var <= 0.0 {
        return Err(Error::Invalid(
            "the pretraining images are all one colour".into(),
        ));
    }
    Ok(1.0 / var.sqrt())
}

fn run_trainer(dir: &RunDir, args: &[String], log: &str) -> Result<f64> {
    let done = run_tool(Tool::Trainer, args, &dir.root.join("logs").join(log), &[])?;
    Ok(done.elapsed.as_secs_f64())
}

/// `trainer sample` of `pipeline` for the prompts into `out`.
fn sample(
    dir: &RunDir,
    pipeline: &Path,
    prompts: &Path,
    out: &Path,
    g: &GeneratorSettings,
    log: &str,
) -> Result<f64> {
    remove(out)?;
    let args: Vec<String> = vec![
        "sample".into(),
        "--model".into(),
        arg(pipeline),
        "--prompts".into(),
        arg(prompts),
        "--out".into(),
        arg(out),
        "--n".into(),
        g.candidates.to_string(),
        "--steps".into(),
        g.sample_steps.to_string(),
        // Pretraining never drops the caption, so there is no unconditional prediction to
        // guide against.
        "--guidance".into(),
        "1".into(),
        "--seed".into(),
        "0".into(),
        "--height".into(),
        "32".into(),
        "--width".into(),
        "32".into(),
    ];
    run_trainer(dir, &args, log)
}

/// Every sampled image of a `trainer sample` directory with its caption's attributes.
fn measure_samples(
    out: &Path,
    targets: &[(String, Attributes)],
) -> Result<Vec<(String, String, Measured)>> {
    let mut all = Vec::new();
    for (id, a) in targets {
        for j in 0.. {
            let rel = format!("images/{id}_{j}.png");
            let path = out.join(&rel);
            if !path.is_file() {
                break;
            }
            all.push((id.clone(), rel, measure(&read_png(&path)?, a)));
        }
    }
    Ok(all)
}

/// `pretrain`: pretrain the UNet from random weights (`settings.generator.pretrain`, how the
/// shipped one was made) instead of starting from the shipped one (`generator::pretrained`).
pub fn run(dir: &RunDir, settings: &Settings, pretrain: bool) -> Result<()> {
    let g = &settings.generator;
    let root = gen_dir(dir);
    std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
    let models = dir.root.join("models");
    let init = models.join("generator-init");
    let sft = models.join("generator-sft");
    let sft_run = root.join("runs/denoise");
    remove(&init)?;
    remove(&sft)?;
    remove(&sft_run)?;

    // 1. The pretrained generator.
    let pretrain_s = if !pretrain {
        let shipped = pretrained::provenance()?;
        write_pipeline(&init, &g.shape, &words(), shipped.scaling_factor)?;
        copy_dir(&init, &sft)?;
        remove(&sft.join("unet"))?;
        pretrained::install(&sft, &g.shape)?;
        0.0
    } else {
        // The pretraining data: generated images captioned with what they show.
        let train = load(&dir.root, Split::JudgeTrain)?;
        let mut lines = Vec::new();
        let mut images = Vec::new();
        for p in image_prompts(&train) {
            for c in &p.candidates {
                if lines.len() < g.pretrain_images {
                    let path = dir.root.join(&c.media);
                    lines.push(json!({"caption": caption(&c.shows), "image": arg(&path)}));
                    images.push(path);
                }
            }
        }
        let train_file = root.join("pretrain.jsonl");
        jsonl::write(&train_file, &lines)?;
        write_pipeline(&init, &g.shape, &words(), scaling_factor(&images)?)?;
        let mut args = trainer_args(
            &["denoise"],
            &init,
            &train_file,
            &sft_run,
            &g.pretrain,
            settings.world.seed,
        );
        // A flip would move "on the left" to the right.
        args.extend(["--resolution", "32", "--no-hflip", "--cache-latents"].map(String::from));
        let seconds = run_trainer(dir, &args, "trainer-generator-denoise.log")?;
        assemble(&init, &sft_run, &sft)?;
        seconds
    };

    // 2. Candidates for fresh captions, judged into pairs.
    let fresh = load(&dir.root, Split::Fresh)?;
    let targets: Vec<(String, Attributes)> = image_prompts(&fresh)
        .take(g.prompts)
        .map(|p| (p.id.clone(), p.target))
        .collect();
    let prompts = root.join("prompts.jsonl");
    let prompt_lines: Vec<Value> = targets
        .iter()
        .map(|(id, a)| json!({"id": id, "prompt": caption(a)}))
        .collect();
    jsonl::write(&prompts, &prompt_lines)?;
    let before = root.join("samples-before");
    let sample_before_s = sample(
        dir,
        &sft,
        &prompts,
        &before,
        g,
        "trainer-generator-sample-before.log",
    )?;

    let pairs = root.join("pairs.jsonl");
    remove(&pairs)?;
    let pairs_args: Vec<String> = vec![
        "pairs".into(),
        arg(&before.join("candidates.jsonl")),
        "--model".into(),
        arg(&dir.judge()),
        "--backend".into(),
        "candle".into(),
        "--recipe".into(),
        "inference".into(),
        "--out".into(),
        arg(&pairs),
    ];
    let judged = run_tool(
        Tool::Engine,
        &pairs_args,
        &dir.root.join("logs/engine-generator-pairs.log"),
        &[1],
    )?;
    let records: Vec<PairsRecord> = jsonl::read(&pairs)?;
    let built = records
        .iter()
        .filter(|r| {
            matches!(
                r,
                Record::Answer {
                    answer: PairsAnswer::Pair(_),
                    ..
                }
            )
        })
        .count();
    if built == 0 {
        return Err(Error::Invalid(format!(
            "the judge built no pair from {}'s samples",
            before.display()
        )));
    }

    // 3. Diffusion-DPO on the judge's pairs.
    let dpo_run = root.join("runs/dpo");
    remove(&dpo_run)?;
    let mut args = trainer_args(
        &["dpo", "--kind", "diffusion"],
        &sft,
        &pairs,
        &dpo_run,
        &g.dpo,
        settings.world.seed,
    );
    args.extend(
        [
            "--resolution",
            "32",
            "--no-hflip",
            "--cache-latents",
            "--beta",
        ]
        .map(String::from),
    );
    args.push(g.beta.to_string());
    args.extend(["--sft-weight".to_string(), g.sft_weight.to_string()]);
    // The pairs name the candidates as `trainer sample` wrote them, relative to its directory.
    args.extend(["--media-root".to_string(), arg(&before)]);
    let dpo_s = run_trainer(dir, &args, "trainer-generator-dpo.log")?;
    let aligned = models.join("generator-dpo");
    assemble(&init, &dpo_run, &aligned)?;

    // 4. The same captions and seeds with the aligned UNet.
    let after = root.join("samples-after");
    let sample_after_s = sample(
        dir,
        &aligned,
        &prompts,
        &after,
        g,
        "trainer-generator-sample-after.log",
    )?;

    let measured_before = measure_samples(&before, &targets)?;
    let measured_after = measure_samples(&after, &targets)?;
    let only = |m: &[(String, String, Measured)]| m.iter().map(|x| x.2).collect::<Vec<_>>();
    let (sb, sa) = (
        summarise(&only(&measured_before)),
        summarise(&only(&measured_after)),
    );

    // The judge's pairs under the same truth: is the chosen sample cleaner?
    let by_path: std::collections::HashMap<String, Measured> = measured_before
        .iter()
        .map(|(_, rel, m)| (rel.clone(), *m))
        .collect();
    let (mut cleaner, mut less_grainy, mut n_pairs) = (0usize, 0usize, 0usize);
    let (mut chosen, mut rejected) = (Vec::new(), Vec::new());
    for r in &records {
        if let Record::Answer {
            answer: PairsAnswer::Pair(p),
            ..
        } = r
        {
            let (c, j) = (
                by_path.get(&p.chosen.text()),
                by_path.get(&p.rejected.text()),
            );
            if let (Some(c), Some(j)) = (c, j) {
                n_pairs += 1;
                chosen.push(*c);
                rejected.push(*j);
                if c.saturation - c.grain > j.saturation - j.grain {
                    cleaner += 1;
                }
                if c.grain < j.grain {
                    less_grainy += 1;
                }
            }
        }
    }

    // The world's own renderings of these captions, best and worst skill, as the VAE keeps them.
    let mut best = Vec::new();
    let mut worst = Vec::new();
    for p in image_prompts(&fresh).take(g.prompts) {
        for c in &p.candidates {
            let m = measure(
                &as_the_vae_sees(&read_png(&dir.root.join(&c.media))?),
                &p.target,
            );
            match c.quality {
                5 => best.push(m),
                1 => worst.push(m),
                _ => {}
            }
        }
    }
    let figures = GeneratorFigures {
        before: sb,
        after: sa,
        world_best: summarise(&best),
        world_worst: summarise(&worst),
        pairs: n_pairs,
        chosen_cleaner: (n_pairs > 0).then(|| cleaner as f64 / n_pairs as f64),
        chosen_less_grainy: (n_pairs > 0).then(|| less_grainy as f64 / n_pairs as f64),
        chosen: summarise(&chosen),
        rejected: summarise(&rejected),
        seconds: json!({
            "pretrain": pretrain_s,
            "sample_before": sample_before_s,
            "pairs": judged.elapsed.as_secs_f64(),
            "dpo": dpo_s,
            "sample_after": sample_after_s,
        }),
    };
    tracing::info!(
        "demo generator: saturation {:.1} -> {:.1}, grain {:.2} -> {:.2}, colour right {:.3} -> {:.3}, colour shown {:.3} -> {:.3} ({} images each)",
        sb.saturation, sa.saturation, sb.grain, sa.grain, sb.colour_right, sa.colour_right,
        sb.colour_shown, sa.colour_shown, sb.images
    );
    write_json(&dir.step_metrics("generator"), &figures)
}

/// `metrics/generator.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratorFigures {
    /// Samples of the pretrained generator.
    pub before: Summary,
    /// Samples of the aligned one: same captions, same seeds.
    pub after: Summary,
    pub world_best: Summary,
    pub world_worst: Summary,
    pub pairs: usize,
    /// Share of the judge's pairs whose chosen sample has the larger saturation − grain.
    pub chosen_cleaner: Option<f64>,
    /// Share of the judge's pairs whose chosen sample has the smaller grain.
    #[serde(default)]
    pub chosen_less_grainy: Option<f64>,
    /// The judge's chosen and rejected samples under the same measures (what DPO is shown).
    #[serde(default)]
    pub chosen: Summary,
    #[serde(default)]
    pub rejected: Summary,
    pub seconds: Value,
}
