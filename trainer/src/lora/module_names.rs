//! The module paths an adapter names, and the checkpoint keys they adapt.
//!
//! PEFT names a module by its path in the transformers model, which is not the checkpoint's
//! key: transformers 5 builds `LlavaOnevisionForConditionalGeneration` as
//! `model.vision_tower.encoder.…`, `model.multi_modal_projector.linear_{1,2}`,
//! `model.language_model.layers.N.…` and `lm_head` (4.52 to 4.57 had the same but for the
//! tower, `model.vision_tower.vision_model.…`), and loads every layout of DESIGN.md into
//! them. So we write modules under those names (PEFT attaches them to the current class), and
//! read a module written for any layout — by PEFT on any transformers version, or by older
//! unireward, which used checkpoint keys — through the layouts' spellings
//! ([`unireward_models::checkpoint::spellings`]) onto the keys of the model at hand.

use std::collections::BTreeSet;

use unireward_models::checkpoint::{spellings, KeyLayout};

use crate::checkpoint_keys::Shapes;

/// How transformers 5 names the modules of `LlavaOnevisionForConditionalGeneration`: one of
/// the layouts' spellings for each part.
fn transformers_modules() -> KeyLayout {
    KeyLayout {
        name: "transformers modules",
        vision: "model.vision_tower.".into(),
        projector: [
            "model.multi_modal_projector.linear_1".into(),
            "model.multi_modal_projector.linear_2".into(),
        ],
        image_newline: "model.image_newline".into(),
        decoder: "model.language_model.".into(),
        lm_head: Some("lm_head".into()),
    }
}

/// Prefixes of Qwen2.5-VL's vision transformer: transformers 5's module path first, then the
/// hub checkpoints' key.
const QWEN_VL_VISION: [&str; 2] = ["model.visual.", "visual."];

/// How transformers 5 names the modules of `Qwen2_5_VLForConditionalGeneration`
/// (`model.visual.{blocks.N,merger}.…`, `model.language_model.layers.N.…`, `lm_head`).
fn qwen_vl_modules() -> KeyLayout {
    KeyLayout {
        name: "transformers modules (Qwen2.5-VL)",
        vision: QWEN_VL_VISION[0].into(),
        projector: [
            "model.visual.merger.mlp.0".into(),
            "model.visual.merger.mlp.2".into(),
        ],
        image_newline: String::new(),
        decoder: "model.language_model.".into(),
        lm_head: Some("lm_head".into()),
    }
}

/// The module names of the family whose checkpoint keys follow `layout`. Transformers 5's
/// Qwen-VL keys (both families: Qwen3-VL's `merger.linear_fc{1,2}` and
/// `deepstack_merger_list.N`, `model.language_model.layers.N.self_attn.{q,k}_norm`) are its
/// module paths; the hub's Qwen2.5-VL keys are renamed to them.
fn modules_of(layout: &KeyLayout) -> KeyLayout {
    if layout.vision == QWEN_VL_VISION[0] {
        KeyLayout {
            lm_head: Some("lm_head".into()),
            ..layout.clone()
        }
    } else if layout.vision == QWEN_VL_VISION[1] {
        qwen_vl_modules()
    } else {
        transformers_modules()
    }
}

/// Where a module lies in a layout: a part, and the path within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place<'a> {
    Vision(&'a str),
    Projector(usize, &'a str),
    Decoder(&'a str),
    Head(&'a str),
}

/// `path` cut into its part of `layout` and the rest (`""` for a projector layer or the head
/// itself). The tower and the projector are tried first: the LLaVA-NeXT decoder prefix
/// `model.` also starts their keys.
fn place<'a>(layout: &KeyLayout, path: &'a str) -> Option<Place<'a>> {
    let under = |prefix: &str| -> Option<&'a str> {
        if prefix.is_empty() {
            return None;
        }
        let rest = path.strip_prefix(prefix)?;
        // A module prefix ends in a dot; a whole module path is followed by one or nothing.
        if prefix.ends_with('.') || rest.is_empty() || rest.starts_with('.') {
            Some(rest)
        } else {
            None
        }
    };
    if let Some(rest) = under(&layout.vision) {
        return Some(Place::Vision(rest));
    }
    for (i, p) in layout.projector.iter().enumerate() {
        if let Some(rest) = under(p) {
            return Some(Place::Projector(i, rest));
        }
    }
    if let Some(rest) = layout.lm_head.as_deref().and_then(under) {
        return Some(Place::Head(rest));
    }
    under(&layout.decoder).map(Place::Decoder)
}

/// The path of `place` in `layout`; `None` when the layout lacks that part.
fn path_in(layout: &KeyLayout, place: Place) -> Option<String> {
    let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Some(match place {
        Place::Vision(rest) => nonempty(&layout.vision)? + rest,
        Place::Projector(i, rest) => nonempty(&layout.projector[i])? + rest,
        Place::Decoder(rest) => nonempty(&layout.decoder)? + rest,
        Place::Head(rest) => layout.lm_head.clone()? + rest,
    })
}

/// The name PEFT gives the module whose weight is `{path}.weight` in a checkpoint of
/// `layout`. A text-only model's keys are already its modules' paths (`Qwen2ForCausalLM`).
pub fn module_name(layout: &KeyLayout, path: &str) -> String {
    if layout.vision.is_empty() {
        return path.to_string();
    }
    place(layout, path)
        .and_then(|p| path_in(&modules_of(layout), p))
        .unwrap_or_else(|| path.to_string())
}

/// The module paths (checkpoint keys without `.weight`) of `shapes` that `module`, a path
/// written for any layout, may name: the path itself when the model has it, else its reading
/// through every spelling of its part.
pub fn checkpoint_paths(module: &str, shapes: &Shapes) -> Vec<String> {
    let has = |path: &str| shapes.contains_key(&format!("{path}.weight"));
    if has(module) {
        return vec![module.to_string()];
    }
    let s = spellings();
    let mut found = BTreeSet::new();
    let mut try_under = |from: &str, to: &[&str], whole: bool| {
        let Some(rest) = module.strip_prefix(from) else {
            return;
        };
        if whole && !(rest.is_empty() || rest.starts_with('.')) {
            return;
        }
        for t in to {
            let path = format!("{t}{rest}");
            if has(&path) {
                found.insert(path);
            }
        }
    };
    for from in &s.vision {
        try_under(from, &s.vision, false);
    }
    for from in QWEN_VL_VISION {
        try_under(from, &QWEN_VL_VISION, false);
    }
    for from in &s.decoder {
        try_under(from, &s.decoder, false);
    }
    for from in &s.head {
        try_under(from, &s.head, true);
    }
    for i in 0..2 {
        let layers: Vec<&str> = s.projector.iter().map(|pair| pair[i]).collect();
        for from in &layers {
            try_under(from, &layers, true);
        }
    }
    found.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(vision: &str, projector: [&str; 2], decoder: &str, head: &str) -> KeyLayout {
        KeyLayout {
            name: "test",
            vision: vision.into(),
            projector: projector.map(String::from),
            image_newline: String::new(),
            decoder: decoder.into(),
            lm_head: Some(head.into()),
        }
    }

    /// The layouts of DESIGN.md, with the same linear layers in each.
    fn layouts() -> Vec<KeyLayout> {
        let hf = [
            "multi_modal_projector.linear_1",
            "multi_modal_projector.linear_2",
        ];
        let model_hf = [
            "model.multi_modal_projector.linear_1",
            "model.multi_modal_projector.linear_2",
        ];
        vec![
            layout(
                "vision_tower.vision_model.",
                hf,
                "language_model.model.",
                "language_model.lm_head",
            ),
            layout(
                "vision_tower.",
                hf,
                "language_model.model.",
                "language_model.lm_head",
            ),
            layout(
                "model.vision_tower.",
                model_hf,
                "model.language_model.",
                "lm_head",
            ),
            layout(
                "model.vision_tower.vision_model.",
                model_hf,
                "model.language_model.",
                "lm_head",
            ),
            layout(
                "model.vision_tower.vision_tower.vision_model.",
                ["model.mm_projector.0", "model.mm_projector.2"],
                "model.",
                "lm_head",
            ),
        ]
    }

    const RESTS: [&str; 3] = [
        "layers.0.self_attn.q_proj",
        "layers.1.mlp.gate_proj",
        "layers.0.mlp.down_proj",
    ];
    const VISION_RESTS: [&str; 2] = [
        "encoder.layers.0.self_attn.q_proj",
        "encoder.layers.1.mlp.fc1",
    ];

    fn shapes_of(l: &KeyLayout) -> Shapes {
        let mut s = Shapes::new();
        for r in RESTS {
            s.insert(format!("{}{r}.weight", l.decoder), vec![4, 4]);
        }
        for r in VISION_RESTS {
            s.insert(format!("{}{r}.weight", l.vision), vec![4, 4]);
        }
        for p in &l.projector {
            s.insert(format!("{p}.weight"), vec![4, 4]);
        }
        if let Some(h) = &l.lm_head {
            s.insert(format!("{h}.weight"), vec![9, 4]);
        }
        s
    }

    fn linear_paths(l: &KeyLayout) -> Vec<String> {
        shapes_of(l)
            .keys()
            .filter_map(|k| k.strip_suffix(".weight").map(String::from))
            .collect()
    }

    #[test]
    fn our_modules_carry_transformers_names_in_every_layout() {
        for l in layouts() {
            let names: BTreeSet<String> = linear_paths(&l)
                .iter()
                .map(|p| module_name(&l, p))
                .collect();
            let want: BTreeSet<String> = [
                "model.language_model.layers.0.self_attn.q_proj",
                "model.language_model.layers.1.mlp.gate_proj",
                "model.language_model.layers.0.mlp.down_proj",
                "model.vision_tower.encoder.layers.0.self_attn.q_proj",
                "model.vision_tower.encoder.layers.1.mlp.fc1",
                "model.multi_modal_projector.linear_1",
                "model.multi_modal_projector.linear_2",
                "lm_head",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            assert_eq!(names, want, "{}", l.vision);
        }
        // A text-only Qwen2's keys are its module paths.
        let text = layout("", ["", ""], "model.", "lm_head");
        assert_eq!(
            module_name(&text, "model.layers.0.self_attn.q_proj"),
            "model.layers.0.self_attn.q_proj"
        );
    }

    #[test]
    fn modules_named_for_any_layout_reach_the_keys_of_every_layout() {
        let all = layouts();
        for from in &all {
            for to in &all {
                let shapes = shapes_of(to);
                for src in linear_paths(from) {
                    let want = place(from, &src)
                        .and_then(|p| path_in(to, p))
                        .unwrap_or_default();
                    assert_eq!(
                        checkpoint_paths(&src, &shapes),
                        vec![want],
                        "{src} onto the layout of {}",
                        to.vision
                    );
                }
                // Transformers' module names too.
                for src in linear_paths(from) {
                    let module = module_name(from, &src);
                    let want = place(from, &src)
                        .and_then(|p| path_in(to, p))
                        .unwrap_or_default();
                    assert_eq!(checkpoint_paths(&module, &shapes), vec![want]);
                }
            }
        }
        // A module of no layout's parts, or absent from the model, names nothing.
        let shapes = shapes_of(&all[0]);
        assert!(checkpoint_paths("model.language_model.layers.7.mlp.up_proj", &shapes).is_empty());
        assert!(checkpoint_paths("encoder.layers.0.mlp.fc1", &shapes).is_empty());
        // `lm_head` must not be read as a prefix of another module.
        assert!(checkpoint_paths("lm_head_extra", &shapes).is_empty());
    }
}
