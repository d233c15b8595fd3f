//! Which linear layers an adapter adapts: the modules `--lora-targets` names (PEFT's suffix
//! rule, and the projector's transformers names in any layout) among the trained parts, and
//! `target_modules` as PEFT must read it to adapt exactly those.

use std::collections::BTreeSet;

use serde_json::{json, Value};
use unireward_models::checkpoint::KeyLayout;

use super::module_names::module_name;
use crate::checkpoint_keys::{part_of, Shapes, TrainParts};
use crate::{Error, Result};

/// 2-D weights that are lookup tables, not linear layers (PEFT adapts those differently).
const EMBEDDINGS: [&str; 2] = ["embed_tokens", "position_embedding"];
/// The names of the projector's layers in the transformers layout, which also name them in
/// layouts that number them (`mm_projector.0`, `mm_projector.2`).
const PROJECTOR_NAMES: [&str; 2] = ["linear_1", "linear_2"];

/// The linear layers of a checkpoint: (module path, [out, in]).
pub(super) fn linear_modules(shapes: &Shapes) -> impl Iterator<Item = (&str, [usize; 2])> {
    shapes.iter().filter_map(|(key, dims)| {
        let path = key.strip_suffix(".weight")?;
        let last = path.rsplit('.').next().unwrap_or(path);
        match dims.as_slice() {
            &[out, inp] if !EMBEDDINGS.contains(&last) => Some((path, [out, inp])),
            _ => None,
        }
    })
}

/// PEFT's rule for a list of target names.
fn peft_matches(target: &str, path: &str) -> bool {
    path == target
        || path
            .strip_suffix(target)
            .is_some_and(|head| head.ends_with('.'))
}

fn matches(target: &str, path: &str, layout: &KeyLayout) -> bool {
    peft_matches(target, path)
        || layout
            .projector
            .iter()
            .zip(PROJECTOR_NAMES)
            .any(|(p, name)| p == path && name == target)
}

/// The module paths (sorted) that `targets` name among the linear layers of the trained
/// `parts`; a target that names none is an error.
pub fn select_modules(
    targets: &[String],
    layout: &KeyLayout,
    parts: TrainParts,
    shapes: &Shapes,
) -> Result<Vec<String>> {
    let mut selected = BTreeSet::new();
    let mut unmatched = Vec::new();
    for target in targets {
        let target = target.trim();
        let mut found = false;
        for (path, _) in linear_modules(shapes) {
            let key = format!("{path}.weight");
            if matches(target, path, layout) && parts.trains(part_of(layout, &key)) {
                selected.insert(path.to_string());
                found = true;
            }
        }
        if !found {
            unmatched.push(target.to_string());
        }
    }
    if !unmatched.is_empty() {
        return Err(Error::Config(format!(
            "--lora-targets: {} name(s) no linear layer of the trained parts (vision {}, \
             projector {}, decoder {}; --train-vision, --train-projector and --train-decoder \
             choose where adapters go)",
            unmatched.join(", "),
            on_off(parts.vision),
            on_off(parts.projector),
            on_off(parts.decoder)
        )));
    }
    Ok(selected.into_iter().collect())
}

/// The linear layers (sorted paths) that `targets` name by PEFT's suffix rule alone, for
/// models whose checkpoint keys are their module paths and which are adapted everywhere
/// (a diffusers UNet); a target that names none is an error.
pub fn select_by_suffix(targets: &[String], shapes: &Shapes) -> Result<Vec<String>> {
    let mut selected = BTreeSet::new();
    let mut unmatched = Vec::new();
    for target in targets {
        let target = target.trim();
        let hits: Vec<&str> = linear_modules(shapes)
            .map(|(path, _)| path)
            .filter(|path| peft_matches(target, path))
            .collect();
        if hits.is_empty() {
            unmatched.push(target.to_string());
        }
        selected.extend(hits.into_iter().map(String::from));
    }
    if !unmatched.is_empty() {
        return Err(Error::Config(format!(
            "--lora-targets: {} name(s) no linear layer of the model",
            unmatched.join(", ")
        )));
    }
    Ok(selected.into_iter().collect())
}

fn on_off(b: bool) -> &'static str {
    if b {
        "trained"
    } else {
        "frozen"
    }
}

/// `target_modules` as PEFT must read it to adapt exactly `selected` in transformers' model:
/// the target names when PEFT's suffix rule picks exactly those modules among the model's
/// (named as transformers names them), otherwise (a part left out, a projector named by
/// alias) the full module names, each of which only matches itself.
pub(super) fn target_modules_value(
    targets: &[String],
    selected: &[String],
    shapes: &Shapes,
    layout: &KeyLayout,
) -> Value {
    let by_suffix: BTreeSet<String> = linear_modules(shapes)
        .map(|(path, _)| module_name(layout, path))
        .filter(|module| targets.iter().any(|t| peft_matches(t.trim(), module)))
        .collect();
    let wanted: BTreeSet<String> = selected.iter().map(|p| module_name(layout, p)).collect();
    if by_suffix == wanted {
        let mut names: Vec<&str> = targets.iter().map(|t| t.trim()).collect();
        names.sort();
        names.dedup();
        json!(names)
    } else {
        json!(wanted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lora::test_support::*;

    #[test]
    fn targets_select_linear_layers_of_trained_parts() -> Result<()> {
        let s = hf_shapes();
        let l = hf_layout();
        let got = select_modules(&names(&["q_proj", "v_proj"]), &l, DEFAULT_PARTS, &s)?;
        assert_eq!(
            got,
            names(&[
                "language_model.model.layers.0.self_attn.q_proj",
                "language_model.model.layers.0.self_attn.v_proj"
            ])
        );
        // The vision tower's q_proj is a match too, so the config lists full paths, as
        // transformers names the modules.
        assert_eq!(
            target_modules_value(&names(&["q_proj", "v_proj"]), &got, &s, &l),
            json!([
                "model.language_model.layers.0.self_attn.q_proj",
                "model.language_model.layers.0.self_attn.v_proj"
            ])
        );
        // With the tower trained, PEFT's suffix rule picks exactly what we adapt.
        let got = select_modules(&names(&["q_proj", "v_proj"]), &l, TrainParts::all(), &s)?;
        assert_eq!(got.len(), 3);
        assert_eq!(
            target_modules_value(&names(&["v_proj", "q_proj"]), &got, &s, &l),
            json!(["q_proj", "v_proj"])
        );
        let got = select_modules(
            &names(&["linear_1", "fc1", "lm_head"]),
            &l,
            TrainParts::all(),
            &s,
        )?;
        assert_eq!(
            got,
            names(&[
                "language_model.lm_head",
                "multi_modal_projector.linear_1",
                "vision_tower.encoder.layers.0.mlp.fc1"
            ])
        );
        Ok(())
    }

    #[test]
    fn unmatched_targets_and_embeddings_are_refused() {
        let s = hf_shapes();
        let l = hf_layout();
        let err = select_modules(&names(&["fc1", "q_proj"]), &l, DEFAULT_PARTS, &s)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("fc1") && err.contains("vision frozen"),
            "{err}"
        );
        for t in ["embed_tokens", "position_embedding", "norm", "proj"] {
            assert!(
                select_modules(&names(&[t]), &l, TrainParts::all(), &s).is_err(),
                "{t}"
            );
        }
    }

    #[test]
    fn projector_names_reach_numbered_projectors() -> Result<()> {
        let s = shapes(&[
            ("model.mm_projector.0.weight", &[8, 4]),
            ("model.mm_projector.2.weight", &[8, 8]),
            ("model.layers.0.self_attn.o_proj.weight", &[8, 8]),
            (
                "model.vision_tower.vision_tower.vision_model.encoder.layers.0.self_attn.out_proj.weight",
                &[4, 4],
            ),
        ]);
        let got = select_modules(
            &names(&["linear_2", "o_proj"]),
            &next_layout(),
            DEFAULT_PARTS,
            &s,
        )?;
        assert_eq!(
            got,
            names(&["model.layers.0.self_attn.o_proj", "model.mm_projector.2"])
        );
        // In transformers' model the projector's layer is `linear_2` whatever the checkpoint
        // calls it, so PEFT's suffix rule picks exactly these.
        let l = next_layout();
        assert_eq!(
            target_modules_value(&names(&["linear_2", "o_proj"]), &got, &s, &l),
            json!(["linear_2", "o_proj"])
        );
        // `out_proj` also names the frozen tower's layer, which is not adapted: full names.
        assert_eq!(
            target_modules_value(&names(&["o_proj", "out_proj"]), &got[..1], &s, &l),
            json!(["model.language_model.layers.0.self_attn.o_proj"])
        );
        Ok(())
    }
}
