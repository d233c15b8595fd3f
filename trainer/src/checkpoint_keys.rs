//! What training knows of a checkpoint's keys: the part of the model each belongs to (and
//! which parts are trained), and their shapes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use unireward_models::checkpoint::KeyLayout;
use unireward_models::qwen2_5_vl::Qwen25VlLayout;

/// A checkpoint key's shape, by key.
pub type Shapes = BTreeMap<String, Vec<usize>>;

/// Which parts of the model are trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainParts {
    pub vision: bool,
    pub projector: bool,
    pub decoder: bool,
}

impl TrainParts {
    pub fn all() -> Self {
        Self {
            vision: true,
            projector: true,
            decoder: true,
        }
    }

    pub fn trains(&self, part: Part) -> bool {
        match part {
            Part::Vision => self.vision,
            Part::Projector => self.projector,
            Part::Decoder => self.decoder,
        }
    }
}

/// The part of the model a checkpoint key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Vision,
    Projector,
    Decoder,
}

/// As the LLaVA-NeXT training code splits its tunable parts (`mm_vision_tower`,
/// `mm_mlp_adapter`, `mm_language_model`): the tower and the projector by name, everything
/// else (the decoder, its head, and `image_newline`) with the language model. Vision and
/// projector are tested first because the LLaVA-NeXT decoder prefix `model.` also starts
/// their keys, and the projector before the vision tower because Qwen2.5-VL's merger layers
/// (its projector, Qwen's `tune_mm_mlp`) lie under the tower's prefix.
pub fn part_of(layout: &KeyLayout, key: &str) -> Part {
    let in_projector = layout.projector.iter().any(|p| {
        !p.is_empty()
            && key
                .strip_prefix(p.as_str())
                .is_some_and(|r| r.starts_with('.'))
    });
    if in_projector {
        Part::Projector
    } else if !layout.vision.is_empty() && key.starts_with(&layout.vision) {
        Part::Vision
    } else {
        Part::Decoder
    }
}

/// Qwen2.5-VL's key layout as training reads a checkpoint's keys: the vision transformer, its
/// merger's two linear layers as the projector (the merger's `ln_q` norm stays with the
/// tower), the Qwen2 body and the head.
pub fn qwen_vl_keys(layout: &Qwen25VlLayout) -> KeyLayout {
    let merger = |i: usize| format!("{}.merger.mlp.{i}", layout.vision);
    KeyLayout {
        name: layout.name,
        vision: format!("{}.", layout.vision),
        projector: [merger(0), merger(2)],
        image_newline: String::new(),
        decoder: format!("{}.", layout.decoder),
        lm_head: layout.lm_head.map(String::from),
    }
}

/// Qwen3-VL's key layout as training reads it (transformers 5's names, which the hub's files
/// share): the vision transformer, its main merger's two linear layers as the projector (as
/// Qwen2.5-VL's; the merger's norm and the deep-stack mergers, which feed the decoder's first
/// layers rather than its input, stay with the tower), the Qwen3 body and the head (`tied`:
/// none stored apart from the embeddings).
pub fn qwen3_vl_keys(tied: bool) -> KeyLayout {
    KeyLayout {
        name: "Qwen3-VL (model.visual., model.language_model., lm_head)",
        vision: "model.visual.".into(),
        projector: [
            "model.visual.merger.linear_fc1".into(),
            "model.visual.merger.linear_fc2".into(),
        ],
        image_newline: String::new(),
        decoder: "model.language_model.".into(),
        lm_head: (!tied).then(|| "lm_head".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(vision: &str, projector: [&str; 2], newline: &str, decoder: &str) -> KeyLayout {
        KeyLayout {
            name: "test",
            vision: vision.into(),
            projector: projector.map(String::from),
            image_newline: newline.into(),
            decoder: decoder.into(),
            lm_head: Some("lm_head".into()),
        }
    }

    #[test]
    fn keys_split_into_parts_in_both_layouts() {
        let hf = layout(
            "vision_tower.",
            [
                "multi_modal_projector.linear_1",
                "multi_modal_projector.linear_2",
            ],
            "image_newline",
            "language_model.model.",
        );
        assert_eq!(
            part_of(&hf, "vision_tower.post_layernorm.weight"),
            Part::Vision
        );
        assert_eq!(
            part_of(&hf, "multi_modal_projector.linear_2.bias"),
            Part::Projector
        );
        assert_eq!(part_of(&hf, "image_newline"), Part::Decoder);
        assert_eq!(part_of(&hf, "language_model.lm_head.weight"), Part::Decoder);
        // LLaVA-NeXT: the decoder prefix `model.` starts every key.
        let next = layout(
            "model.vision_tower.vision_tower.vision_model.",
            ["model.mm_projector.0", "model.mm_projector.2"],
            "model.image_newline",
            "model.",
        );
        let key = "model.vision_tower.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight";
        assert_eq!(part_of(&next, key), Part::Vision);
        assert_eq!(
            part_of(&next, "model.mm_projector.2.weight"),
            Part::Projector
        );
        assert_eq!(
            part_of(&next, "model.mm_projector.20.weight"),
            Part::Decoder
        );
        assert_eq!(
            part_of(&next, "model.layers.3.mlp.up_proj.weight"),
            Part::Decoder
        );
    }
}
