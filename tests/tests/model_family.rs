//! A checkpoint's family is read from its config before anything else: a Qwen2.5-VL judge is
//! detected as such and refused by name where the seams are still LLaVA-shaped (the engine's
//! backends; not by some LLaVA field it lacks), and both the golden LLaVA checkpoint and a
//! Qwen2.5-VL one load through the family seam.

use candle_core::{DType, Device};
use unireward_engine::backend::CandleBackend;
use unireward_models::family::{load_judge, ModelFamily};
use unireward_tests::golden_model_dir;

fn dir_with_config(config: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "unireward-family-{}-{}",
        std::process::id(),
        config.len()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("config.json"), config).expect("config");
    dir
}

#[test]
fn qwen_vl_checkpoints_are_refused_by_family_before_their_weights() {
    // The fields a real UnifiedReward-qwen-7b config opens with; no weights at all.
    let dir = dir_with_config(
        r#"{"architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
            "vision_config": {"depth": 32, "hidden_size": 1280, "window_size": 112},
            "hidden_size": 3584, "vocab_size": 152064}"#,
    );
    assert_eq!(
        ModelFamily::of_dir(&dir).expect("detected"),
        ModelFamily::Qwen25Vl
    );
    let err = CandleBackend::load(&dir, DType::F32, &Device::Cpu)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("config.json") && err.contains("Qwen2.5-VL checkpoints"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_qwen_vl_checkpoint_loads_through_the_seam() -> anyhow::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/qwen2_5_vl/qwen2_5_vl_3b/model");
    let model = load_judge(&dir, DType::F32, &Device::Cpu)?;
    assert_eq!(model.family(), ModelFamily::Qwen25Vl);
    assert!(model.llava_config().is_none());
    assert_eq!(model.text_config().vocab_size, 151657);
    Ok(())
}

#[test]
fn the_golden_checkpoint_is_llava_onevision_and_loads_through_the_seam() -> anyhow::Result<()> {
    let dir = golden_model_dir()?;
    assert_eq!(ModelFamily::of_dir(&dir)?, ModelFamily::LlavaOnevision);
    let model = load_judge(&dir, DType::F32, &Device::Cpu)?;
    assert_eq!(model.family(), ModelFamily::LlavaOnevision);
    assert!(model.llava_config().is_some());
    Ok(())
}
