//! Layouts and shapes the adapter tests share.

use unireward_models::checkpoint::KeyLayout;

use crate::checkpoint_keys::{Shapes, TrainParts};

pub fn hf_layout() -> KeyLayout {
    KeyLayout {
        name: "test",
        vision: "vision_tower.".into(),
        projector: [
            "multi_modal_projector.linear_1".into(),
            "multi_modal_projector.linear_2".into(),
        ],
        image_newline: "image_newline".into(),
        decoder: "language_model.model.".into(),
        lm_head: Some("language_model.lm_head".into()),
    }
}

pub fn next_layout() -> KeyLayout {
    KeyLayout {
        name: "test",
        vision: "model.vision_tower.vision_tower.vision_model.".into(),
        projector: ["model.mm_projector.0".into(), "model.mm_projector.2".into()],
        image_newline: "model.image_newline".into(),
        decoder: "model.".into(),
        lm_head: Some("lm_head".into()),
    }
}

pub fn shapes(keys: &[(&str, &[usize])]) -> Shapes {
    keys.iter()
        .map(|(k, d)| (k.to_string(), d.to_vec()))
        .collect()
}

pub fn hf_shapes() -> Shapes {
    shapes(&[
        (
            "vision_tower.encoder.layers.0.self_attn.q_proj.weight",
            &[4, 4],
        ),
        ("vision_tower.encoder.layers.0.self_attn.q_proj.bias", &[4]),
        ("vision_tower.encoder.layers.0.mlp.fc1.weight", &[6, 4]),
        ("vision_tower.embeddings.position_embedding.weight", &[9, 4]),
        ("multi_modal_projector.linear_1.weight", &[8, 4]),
        ("multi_modal_projector.linear_2.weight", &[8, 8]),
        ("language_model.model.embed_tokens.weight", &[32, 8]),
        (
            "language_model.model.layers.0.self_attn.q_proj.weight",
            &[8, 8],
        ),
        (
            "language_model.model.layers.0.self_attn.v_proj.weight",
            &[4, 8],
        ),
        ("language_model.model.layers.0.mlp.up_proj.weight", &[12, 8]),
        ("language_model.model.norm.weight", &[8]),
        ("language_model.lm_head.weight", &[32, 8]),
    ])
}

pub fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

pub const DEFAULT_PARTS: TrainParts = TrainParts {
    vision: false,
    projector: true,
    decoder: true,
};
