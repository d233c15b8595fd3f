//! `trainer sample` on the tiny SD 1.5 pipeline: the files it writes, determinism for a seed,
//! resuming after a kill, bad prompt lines, and `candidates.jsonl` read back as `engine pairs`
//! input through its typed record.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result};
use unireward_models::formats::pairs_request::PairsRequestRecord;
use unireward_models::judge::Task;
use unireward_tests::diffusion_pipeline::tiny_sd15_pipeline;

/// `trainer sample --n 3 --steps 2 --seed 5` with `extra` (which may name --steps / --seed).
fn sample(model: &Path, prompts: &Path, out: &Path, extra: &[&str]) -> Result<Output> {
    let given = |flag: &str| extra.contains(&flag);
    let mut args: Vec<String> = vec![
        "sample".into(),
        "--model".into(),
        model.display().to_string(),
        "--prompts".into(),
        prompts.display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "--n".into(),
        "3".into(),
    ];
    for (flag, default) in [("--steps", "2"), ("--seed", "5")] {
        if !given(flag) {
            args.extend([flag.to_string(), default.to_string()]);
        }
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    Ok(Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(&args)
        .output()?)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The base seed the log gives for prompt `id` ("(id 3): 3 images (seeds 812..)").
fn base_seed(log: &str, id: &str) -> Result<u64> {
    let marker = format!("(id {id}): ");
    let line = log
        .lines()
        .find(|l| l.contains(&marker))
        .with_context(|| format!("no log line for id {id}: {log}"))?;
    let from = line
        .split("(seeds ")
        .nth(1)
        .and_then(|rest| rest.split("..").next())
        .with_context(|| format!("no seeds in {line}"))?;
    Ok(from.parse()?)
}

fn records(out: &Path) -> Result<Vec<PairsRequestRecord>> {
    let text = std::fs::read_to_string(out.join("candidates.jsonl"))?;
    text.lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not a pairs request: {l}")))
        .collect()
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(path: &Path) -> Result<(u32, u32)> {
    let bytes = std::fs::read(path)?;
    anyhow::ensure!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is no PNG",
        path.display()
    );
    let be = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    Ok((be(16), be(20)))
}

struct Setup {
    _tmp: tempfile::TempDir,
    model: PathBuf,
    prompts: PathBuf,
    root: PathBuf,
}

fn setup() -> Result<Setup> {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().to_path_buf();
    let model = root.join("pipeline");
    tiny_sd15_pipeline(&model)?;
    let prompts = root.join("prompts.jsonl");
    std::fs::write(
        &prompts,
        concat!(
            "{\"id\": \"cat\", \"prompt\": \"a photo of a cat\"}\n",
            "{\"prompt\": \"a dog on the beach\"}\n",
            "{\"id\": \"broken\", \"prompt\": \n",
            "{\"id\": \"number\", \"prompt\": 5}\n",
            "\n",
            "{\"id\": 17, \"prompt\": \"a lake at sunset\"}\n",
            "{\"id\": \"cat\", \"prompt\": \"another cat\"}\n",
        ),
    )?;
    Ok(Setup {
        _tmp: tmp,
        model,
        prompts,
        root,
    })
}

#[test]
fn sample_writes_engine_pairs_input_and_names_bad_lines() -> Result<()> {
    let s = setup()?;
    let out = s.root.join("run");
    let o = sample(&s.model, &s.prompts, &out, &[])?;
    let err = stderr(&o);
    // Three bad lines: the run goes on, then fails saying how many.
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("3 prompt line(s) failed"), "{err}");
    let recs = records(&out)?;
    let ids: Vec<String> = recs.iter().map(|r| r.id.to_string()).collect();
    assert_eq!(ids, ["\"cat\"", "2", "17"]);
    for r in &recs {
        assert_eq!(r.task, Task::ImageGeneration);
        assert_eq!(r.candidates.len(), 3);
        for c in &r.candidates {
            // relative to the candidates file's directory, as engine pairs reads them
            assert!(c.starts_with("images/"), "{c}");
            assert_eq!(png_size(&out.join(c))?, (64, 64));
        }
    }
    assert_eq!(recs[0].prompt, "a photo of a cat");
    assert_eq!(
        recs[2].candidates,
        ["images/17_0.png", "images/17_1.png", "images/17_2.png"]
    );
    let errors = std::fs::read_to_string(out.join("errors.jsonl"))?;
    let errors: Vec<serde_json::Value> = errors
        .lines()
        .map(serde_json::from_str)
        .collect::<std::result::Result<_, _>>()?;
    assert_eq!(errors.len(), 3, "{errors:?}");
    let text = |i: usize| errors[i]["error"].as_str().unwrap_or_default().to_string();
    assert!(
        text(0).contains("prompts.jsonl line 3: not a prompt record"),
        "{}",
        text(0)
    );
    assert_eq!(errors[1]["id"], "number");
    assert!(
        text(1).contains("line 4: \"prompt\" must be a string"),
        "{}",
        text(1)
    );
    assert!(
        text(2).contains("line 7: id \"cat\" is already used by line 1"),
        "{}",
        text(2)
    );
    assert!(!out.join("images/broken_0.png").exists());
    Ok(())
}

#[test]
fn a_seed_gives_the_same_images_and_a_second_run_resumes() -> Result<()> {
    let s = setup()?;
    let prompts = s.root.join("prompts.txt");
    std::fs::write(&prompts, "a red fox\n\na blue bird\na green frog\n")?;
    let a = s.root.join("a");
    let o = sample(&s.model, &prompts, &a, &[])?;
    assert!(o.status.success(), "{}", stderr(&o));
    let recs = records(&a)?;
    let ids: Vec<String> = recs.iter().map(|r| r.id.to_string()).collect();
    assert_eq!(ids, ["1", "3", "4"]);

    // The same settings elsewhere: the same bytes. Candidates of one prompt differ.
    let b = s.root.join("b");
    let o = sample(&s.model, &prompts, &b, &["--batch", "2"])?;
    assert!(o.status.success(), "{}", stderr(&o));
    for r in &recs {
        for c in &r.candidates {
            assert_eq!(std::fs::read(a.join(c))?, std::fs::read(b.join(c))?, "{c}");
        }
    }
    let bytes = |dir: &Path, c: &str| std::fs::read(dir.join(c));
    assert_ne!(bytes(&a, "images/1_0.png")?, bytes(&a, "images/1_1.png")?);

    // Each prompt its own base seed b (the log says which), its candidate j from b + j: the
    // shared seeds b, b + 1, ... draw the same images.
    let bases: Vec<u64> = ["1", "3", "4"]
        .iter()
        .map(|id| base_seed(&stderr(&o), id))
        .collect::<Result<_>>()?;
    assert!(bases.iter().all(|&b| b <= 1_000_000), "{bases:?}");
    assert!(
        bases[0] != bases[1] && bases[1] != bases[2] && bases[0] != bases[2],
        "{bases:?}"
    );
    let c = s.root.join("c");
    let shared_seed = (bases[0] + 1).to_string();
    let sample_shared = || {
        let seeds = ["--seeds", "shared", "--seed", shared_seed.as_str()];
        sample(&s.model, &prompts, &c, &seeds)
    };
    let o = sample_shared()?;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(bytes(&c, "images/1_0.png")?, bytes(&a, "images/1_1.png")?);
    assert_ne!(bytes(&c, "images/1_2.png")?, bytes(&a, "images/1_2.png")?);
    // Shared: every prompt's candidate j from --seed + j.
    assert_eq!(base_seed(&stderr(&o), "4")?, bases[0] + 1);

    // A second run over a finished directory redoes nothing.
    let before = std::fs::read_to_string(a.join("candidates.jsonl"))?;
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified());
    let stamp = mtime(&a.join("images/3_1.png"))?;
    let o = sample(&s.model, &prompts, &a, &[])?;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("0 prompts sampled, 3 already done"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read_to_string(a.join("candidates.jsonl"))?, before);
    assert_eq!(mtime(&a.join("images/3_1.png"))?, stamp);

    // A killed run: the last line cut short, and an image of a finished prompt gone.
    let lines: Vec<&str> = before.lines().collect();
    let cut = format!("{}\n{}\n{}", lines[0], lines[1], &lines[2][..20]);
    std::fs::write(a.join("candidates.jsonl"), cut)?;
    std::fs::remove_file(a.join("images/1_2.png"))?;
    let o = sample(&s.model, &prompts, &a, &[])?;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("dropping a last line cut short"),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("2 prompts sampled, 1 already done"),
        "{}",
        stderr(&o)
    );
    // Every line once, the same images as before.
    assert_eq!(std::fs::read_to_string(a.join("candidates.jsonl"))?, before);
    assert_eq!(bytes(&a, "images/1_2.png")?, bytes(&b, "images/1_2.png")?);
    assert_eq!(bytes(&a, "images/4_0.png")?, bytes(&b, "images/4_0.png")?);
    let partials = std::fs::read_dir(a.join("images"))?
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().contains("partial"))
        })
        .count();
    assert_eq!(partials, 0);

    // A prompt file whose line now says something else under a finished id is refused there.
    let changed = s.root.join("changed.txt");
    std::fs::write(&changed, "a red fox\n\na blue whale\na green frog\n")?;
    let o = sample(&s.model, &changed, &a, &[])?;
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("line 3: ")
            && stderr(&o).contains("with another prompt (\"a blue bird\")"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read_to_string(a.join("candidates.jsonl"))?, before);

    // Other settings over the same directory are refused.
    let o = sample(&s.model, &prompts, &a, &["--steps", "3"])?;
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("was sampled with other settings"),
        "{}",
        stderr(&o)
    );

    // A directory drawn before --seeds existed was drawn with shared seeds: it resumes with
    // them and refuses per-prompt ones.
    let settings_path = c.join("sample_settings.json");
    let mut old: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&settings_path)?)?;
    assert_eq!(old["seeds"], "shared");
    old.as_object_mut().context("settings")?.remove("seeds");
    std::fs::write(&settings_path, serde_json::to_string(&old)?)?;
    let o = sample_shared()?;
    assert!(
        o.status.success() && stderr(&o).contains("0 prompts sampled, 3 already done"),
        "{}",
        stderr(&o)
    );
    let o = sample(&s.model, &prompts, &c, &["--seed", &shared_seed])?;
    assert!(
        !o.status.success() && stderr(&o).contains("was sampled with other settings"),
        "{}",
        stderr(&o)
    );
    Ok(())
}

#[test]
fn sample_draws_from_an_sdxl_turbo_like_pipeline() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let model = tmp.path().join("sdxl");
    unireward_tests::diffusion_pipeline::tiny_sdxl_pipeline_with(
        &model,
        unireward_tests::diffusion_pipeline::TinyScheduler::EulerAncestralTrailing,
    )?;
    let prompts = tmp.path().join("prompts.txt");
    std::fs::write(&prompts, "a castle on a hill\n")?;
    let out = tmp.path().join("run");
    let o = sample(
        &model,
        &prompts,
        &out,
        &[
            "--steps",
            "1",
            "--guidance",
            "0",
            "--height",
            "48",
            "--width",
            "80",
        ],
    )?;
    assert!(o.status.success(), "{}", stderr(&o));
    let recs = records(&out)?;
    assert_eq!(recs.len(), 1);
    assert_eq!(png_size(&out.join(&recs[0].candidates[2]))?, (80, 48));
    let settings: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("sample_settings.json"))?)?;
    assert_eq!(settings["scheduler"], "EulerAncestralDiscreteScheduler");
    assert_eq!(settings["guidance"], 0.0);
    Ok(())
}
