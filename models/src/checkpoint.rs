//! Checkpoint loading: memory-mapped safetensors (one file or an index of shards), the key
//! layout detected from the names, the configuration's sizes checked against the stored
//! shapes before any tensor is made, and a refusal that names every missing key.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use crate::config::{ConfigFlavour, LlavaConfig};
use crate::{Error, Result};

/// Where each part of the model lives in a checkpoint's key space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLayout {
    pub name: &'static str,
    /// Prefix of the SigLIP tower (`embeddings.`, `encoder.layers.N.` follow).
    pub vision: String,
    /// The projector's two linear layers.
    pub projector: [String; 2],
    pub image_newline: String,
    /// Prefix of the Qwen2 body (`embed_tokens`, `layers.N`, `norm` follow).
    pub decoder: String,
    /// The output head; `None` when the embeddings are tied and no head is stored.
    pub lm_head: Option<String>,
}

struct Candidates {
    name: &'static str,
    vision: &'static [&'static str],
    projector: &'static [[&'static str; 2]],
    newline: &'static [&'static str],
    decoder: &'static [&'static str],
    head: &'static [&'static str],
}

/// The layouts of DESIGN.md, each with the spellings seen in the wild, most common first.
const LAYOUTS: [Candidates; 3] = [
    Candidates {
        name: "transformers (hub or newer saves)",
        vision: &[
            "vision_tower.vision_model.",
            "vision_tower.",
            "model.vision_tower.vision_model.",
            "model.vision_tower.",
        ],
        projector: &[
            [
                "multi_modal_projector.linear_1",
                "multi_modal_projector.linear_2",
            ],
            [
                "model.multi_modal_projector.linear_1",
                "model.multi_modal_projector.linear_2",
            ],
        ],
        newline: &["image_newline", "model.image_newline"],
        decoder: &["language_model.model.", "model.language_model."],
        head: &["language_model.lm_head", "lm_head"],
    },
    Candidates {
        name: "LLaVA-NeXT original",
        vision: &["model.vision_tower.vision_tower.vision_model."],
        projector: &[["model.mm_projector.0", "model.mm_projector.2"]],
        newline: &["model.image_newline"],
        decoder: &["model."],
        head: &["lm_head"],
    },
    // Kept last: its decoder prefix `model.` is a prefix of other layouts' keys too.
    Candidates {
        name: "text-only Qwen2",
        vision: &[],
        projector: &[],
        newline: &[],
        decoder: &["model."],
        head: &["lm_head"],
    },
];

/// Every spelling the layouts of DESIGN.md give each part, most common first. A key written
/// in any layout starts with one of them, and so does a transformers module path, which the
/// layouts' keys are derived from: what reading names written for another layout needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spellings {
    /// Prefixes of the SigLIP tower.
    pub vision: Vec<&'static str>,
    /// The projector's two linear layers.
    pub projector: Vec<[&'static str; 2]>,
    /// Prefixes of the Qwen2 body.
    pub decoder: Vec<&'static str>,
    pub head: Vec<&'static str>,
}

pub fn spellings() -> Spellings {
    fn all<T: Copy + PartialEq>(pick: impl Fn(&Candidates) -> &[T]) -> Vec<T> {
        let mut out: Vec<T> = Vec::new();
        for t in LAYOUTS.iter().flat_map(|c| pick(c).iter()) {
            if !out.contains(t) {
                out.push(*t);
            }
        }
        out
    }
    Spellings {
        vision: all(|c| c.vision),
        projector: all(|c| c.projector),
        decoder: all(|c| c.decoder),
        head: all(|c| c.head),
    }
}

/// Memory-mapped weights of a checkpoint directory.
pub struct Checkpoint {
    pub dir: PathBuf,
    tensors: Arc<MmapedSafetensors>,
    keys: BTreeSet<String>,
    /// Size of the weight files together.
    bytes: u64,
}

/// The configuration of `dir`, its checkpoint and key layout, with the configuration fixed
/// up as every loader needs it (a LLaVA-NeXT config counts a vision layer that the checkpoint
/// does not store) and checked against the stored shapes ([`Checkpoint::check_config`]).
pub fn open_model_dir(dir: &Path) -> Result<(LlavaConfig, Checkpoint, KeyLayout)> {
    let mut cfg = LlavaConfig::from_file(&dir.join("config.json"))?;
    let ckpt = Checkpoint::open(dir)?;
    let layout = ckpt.detect_layout(cfg.text.tie_word_embeddings);
    if cfg.flavour == ConfigFlavour::LlavaNext {
        // The named tower counts a layer that the original code dropped before saving.
        let stored = ckpt.count_layers(&layout.vision);
        if stored > 0 {
            cfg.vision.num_hidden_layers = stored;
        }
    }
    ckpt.check_config(&cfg, &layout)?;
    Ok((cfg, ckpt, layout))
}

impl Checkpoint {
    /// Opens `model.safetensors`, or every shard named by `model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_stem(dir, &["model"])
    }

    /// Opens the first of `stems` stored in `dir` as `STEM.safetensors` or as the shards of
    /// `STEM.safetensors.index.json` (diffusers names its components' weights
    /// `diffusion_pytorch_model`, and `diffusion_pytorch_model.fp16` for the half variant).
    pub fn open_stem(dir: &Path, stems: &[&str]) -> Result<Self> {
        let files = weight_files(dir, stems)?;
        // SAFETY: the files are mapped read-only; like every safetensors user we rely on
        // nobody truncating a checkpoint while it is being read.
        let tensors =
            unsafe { MmapedSafetensors::multi(&files) }.map_err(|e| Error::Checkpoint {
                path: dir.to_path_buf(),
                msg: format!("cannot read safetensors: {e}"),
            })?;
        let keys = tensors.tensors().into_iter().map(|(k, _)| k).collect();
        let bytes = files
            .iter()
            .map(|f| {
                std::fs::metadata(f)
                    .map(|m| m.len())
                    .map_err(|e| Error::io(f, e))
            })
            .sum::<Result<u64>>()?;
        Ok(Self {
            dir: dir.to_path_buf(),
            tensors: Arc::new(tensors),
            keys,
            bytes,
        })
    }

    /// The stored shape of `key`, read from the header (no tensor is made).
    pub fn shape(&self, key: &str) -> Option<Vec<usize>> {
        self.tensors.get(key).ok().map(|view| view.shape().to_vec())
    }

    /// Compares every size of `cfg` with the shape of a tensor that has it, from the headers
    /// alone, before a model asks for tensors of those sizes: a config whose `hidden_size`
    /// says 1e9 must be refused by name, not make the builder allocate zeros for what does
    /// not fit. Tensors that are absent are left to the key audit.
    pub fn check_config(&self, cfg: &LlavaConfig, layout: &KeyLayout) -> Result<()> {
        let (v, t) = (&cfg.vision, &cfg.text);
        let d = &layout.decoder;
        let vp = &layout.vision;
        let head_dim = t.head_dim();
        let mut expected: Vec<(String, Vec<usize>, &str)> = vec![
            (
                format!("{d}embed_tokens.weight"),
                vec![t.vocab_size, t.hidden_size],
                "text vocab_size, hidden_size",
            ),
            (
                format!("{d}layers.0.self_attn.q_proj.weight"),
                vec![t.num_attention_heads * head_dim, t.hidden_size],
                "text hidden_size",
            ),
            (
                format!("{d}layers.0.self_attn.k_proj.weight"),
                vec![t.num_key_value_heads * head_dim, t.hidden_size],
                "text num_key_value_heads × head size (hidden_size / num_attention_heads)",
            ),
            (
                format!("{d}layers.0.mlp.gate_proj.weight"),
                vec![t.intermediate_size, t.hidden_size],
                "text intermediate_size, hidden_size",
            ),
            (
                format!("{vp}embeddings.patch_embedding.weight"),
                vec![v.hidden_size, v.num_channels, v.patch_size, v.patch_size],
                "vision hidden_size, num_channels, patch_size",
            ),
            (
                format!("{vp}embeddings.position_embedding.weight"),
                vec![v.tokens_per_tile(), v.hidden_size],
                "vision (image_size / patch_size)², hidden_size",
            ),
            (
                format!("{vp}encoder.layers.0.mlp.fc1.weight"),
                vec![v.intermediate_size, v.hidden_size],
                "vision intermediate_size, hidden_size",
            ),
            (
                format!("{}.weight", layout.projector[0]),
                vec![t.hidden_size, v.hidden_size],
                "text hidden_size, vision hidden_size",
            ),
            (
                layout.image_newline.clone(),
                vec![t.hidden_size],
                "text hidden_size",
            ),
        ];
        if let Some(head) = &layout.lm_head {
            expected.push((
                format!("{head}.weight"),
                vec![t.vocab_size, t.hidden_size],
                "text vocab_size, hidden_size",
            ));
        }
        let mut problems: Vec<String> = expected
            .into_iter()
            .filter_map(|(key, want, fields)| {
                let got = self.shape(&key)?;
                (got != want).then(|| {
                    format!("{key} is stored as {got:?}; the config ({fields}) asks for {want:?}")
                })
            })
            .collect();
        // Layers the config counts beyond those stored would each be built from missing keys.
        let text_layers = self.count_blocks(&format!("{d}layers."));
        if t.num_hidden_layers > text_layers {
            problems.push(format!(
                "text num_hidden_layers is {} but {text_layers} decoder layer(s) are stored",
                t.num_hidden_layers
            ));
        }
        let used = cfg.vision_layers_used()?;
        let vision_layers = self.count_layers(vp);
        if used > vision_layers {
            problems.push(format!(
                "the vision feature layer needs {used} layer(s) (vision num_hidden_layers {}) \
                 but {vision_layers} are stored",
                v.num_hidden_layers
            ));
        }
        if problems.is_empty() {
            return Ok(());
        }
        Err(Error::Checkpoint {
            path: self.dir.clone(),
            msg: format!(
                "config.json does not match the stored weights ({} layout): {}",
                layout.name,
                problems.join("; ")
            ),
        })
    }

    pub fn keys(&self) -> &BTreeSet<String> {
        &self.keys
    }

    pub fn contains(&self, key: &str) -> bool {
        self.keys.contains(key)
    }

    /// Picks, part by part, the spelling whose marker key is present. A part found in no
    /// spelling keeps the layout's first one, so that loading then names its missing keys.
    pub fn detect_layout(&self, tied_embeddings: bool) -> KeyLayout {
        let has = |k: String| self.keys.contains(&k);
        let score = |c: &Candidates| {
            let v = c
                .vision
                .iter()
                .any(|p| has(format!("{p}embeddings.patch_embedding.weight")));
            let d = c
                .decoder
                .iter()
                .any(|p| has(format!("{p}embed_tokens.weight")));
            let m = c.projector.iter().any(|[a, _]| has(format!("{a}.weight")));
            usize::from(v) + usize::from(d) + usize::from(m)
        };
        let best = LAYOUTS
            .iter()
            .max_by_key(|c| score(c))
            .unwrap_or(&LAYOUTS[0]);
        let pick = |opts: &[&str], probe: &str| -> String {
            opts.iter()
                .find(|p| has(format!("{p}{probe}")))
                .or(opts.first())
                .map(|s| s.to_string())
                .unwrap_or_default()
        };
        let projector = best
            .projector
            .iter()
            .find(|[a, _]| has(format!("{a}.weight")))
            .or(best.projector.first())
            .map(|[a, b]| [a.to_string(), b.to_string()])
            .unwrap_or_default();
        let head = best.head.iter().find(|p| has(format!("{p}.weight")));
        let lm_head = match head {
            Some(h) => Some(h.to_string()),
            None if tied_embeddings => None,
            None => best.head.first().map(|s| s.to_string()),
        };
        KeyLayout {
            name: best.name,
            vision: pick(best.vision, "embeddings.patch_embedding.weight"),
            projector,
            image_newline: pick(best.newline, ""),
            decoder: pick(best.decoder, "embed_tokens.weight"),
            lm_head,
        }
    }

    /// Number of `{prefix}encoder.layers.N.` blocks stored.
    pub fn count_layers(&self, prefix: &str) -> usize {
        self.count_blocks(&format!("{prefix}encoder.layers."))
    }

    /// One more than the highest `N` of the keys `{head}N.…`.
    fn count_blocks(&self, head: &str) -> usize {
        self.keys
            .iter()
            .filter_map(|k| k.strip_prefix(head))
            .filter_map(|rest| rest.split('.').next()?.parse::<usize>().ok())
            .map(|i| i + 1)
            .max()
            .unwrap_or(0)
    }

    /// A builder that serves this checkpoint's weights in `dtype` and records, instead of
    /// failing on the first, every key that is missing or misshapen.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> (VarBuilder<'static>, KeyAudit) {
        let audit = KeyAudit::default();
        let backend = AuditingBackend {
            tensors: self.tensors.clone(),
            audit: audit.clone(),
            stand_in_budget: self.bytes,
        };
        (
            VarBuilder::from_backend(Box::new(backend), dtype, device.clone()),
            audit,
        )
    }
}

fn weight_files(dir: &Path, stems: &[&str]) -> Result<Vec<PathBuf>> {
    let mut index = None;
    for stem in stems {
        let single = dir.join(format!("{stem}.safetensors"));
        if single.is_file() {
            return Ok(vec![single]);
        }
        let sharded = dir.join(format!("{stem}.safetensors.index.json"));
        if sharded.is_file() {
            index = Some(sharded);
            break;
        }
    }
    let Some(index) = index else {
        let names: Vec<String> = stems
            .iter()
            .map(|s| format!("{s}.safetensors (or its .index.json)"))
            .collect();
        return Err(Error::Checkpoint {
            path: dir.to_path_buf(),
            msg: format!("none of {} is there", names.join(", ")),
        });
    };
    let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: index.clone(),
        source,
    })?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::Checkpoint {
            path: index.clone(),
            msg: "no weight_map object".into(),
        })?;
    let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
    let files: Vec<PathBuf> = shards.into_iter().map(|s| dir.join(s)).collect();
    if let Some(missing) = files.iter().find(|f| !f.is_file()) {
        return Err(Error::Checkpoint {
            path: index,
            msg: format!("shard {} is missing", missing.display()),
        });
    }
    Ok(files)
}

/// Keys a model asked for that the checkpoint could not give.
#[derive(Clone, Default)]
pub struct KeyAudit {
    problems: Arc<Mutex<Vec<String>>>,
}

impl KeyAudit {
    fn push(&self, msg: String) {
        if let Ok(mut p) = self.problems.lock() {
            p.push(msg);
        }
    }

    /// Fails with every recorded problem when there was any.
    pub fn finish(&self, dir: &Path, layout: &KeyLayout) -> Result<()> {
        self.finish_named(dir, layout.name)
    }

    /// [`Self::finish`] for a layout known by its name only (another family's).
    pub fn finish_named(&self, dir: &Path, layout: &str) -> Result<()> {
        let problems = self.problems.lock().map(|p| p.clone()).unwrap_or_default();
        if problems.is_empty() {
            return Ok(());
        }
        const SHOWN: usize = 20;
        let mut msg = format!(
            "does not fit the {} layout: {} key(s) missing or misshapen: {}",
            layout,
            problems.len(),
            problems[..problems.len().min(SHOWN)].join(", ")
        );
        if problems.len() > SHOWN {
            msg.push_str(&format!(", … and {} more", problems.len() - SHOWN));
        }
        Err(Error::Checkpoint {
            path: dir.to_path_buf(),
            msg,
        })
    }
}

struct AuditingBackend {
    tensors: Arc<MmapedSafetensors>,
    audit: KeyAudit,
    /// The largest zero tensor made to stand in for a missing or misshapen key, in bytes:
    /// the checkpoint's own size. A larger request can only come from a config whose sizes
    /// are wrong, and is refused rather than allocated.
    stand_in_budget: u64,
}

impl AuditingBackend {
    /// Records `problem` and returns zeros of `shape` standing in for the key, so that the
    /// builder goes on and every problem gets recorded; an error instead when the zeros
    /// would outgrow the checkpoint.
    fn stand_in(
        &self,
        problem: String,
        shape: Shape,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let bytes = shape
            .dims()
            .iter()
            .try_fold(dtype.size_in_bytes() as u64, |acc, &d| {
                acc.checked_mul(d as u64)
            });
        if bytes.is_none_or(|b| b > self.stand_in_budget) {
            let msg = format!(
                "{problem}: the config asks for {:?}, larger than the whole checkpoint",
                shape.dims()
            );
            self.audit.push(msg.clone());
            return Err(candle_core::Error::Msg(msg));
        }
        self.audit.push(problem);
        Tensor::zeros(shape, dtype, dev)
    }
}

impl SimpleBackend for AuditingBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        match self.tensors.load(name, dev) {
            Ok(t) if t.shape() == &s => t.to_dtype(dtype),
            Ok(t) => {
                let problem = format!("{name} (shape {:?}, expected {:?})", t.dims(), s.dims());
                self.stand_in(problem, s, dtype, dev)
            }
            Err(_) => self.stand_in(name.to_string(), s, dtype, dev),
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.tensors.load(name, dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.get(name).is_ok()
    }
}

/// Tensors by name, as a map; used to rewrite checkpoints (tests, export).
pub fn load_all(ckpt: &Checkpoint, device: &Device) -> Result<HashMap<String, Tensor>> {
    ckpt.keys
        .iter()
        .map(|k| Ok((k.clone(), ckpt.tensors.load(k, device)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_list_every_layouts_parts_once() {
        let s = spellings();
        for c in &LAYOUTS {
            assert!(c.vision.iter().all(|p| s.vision.contains(p)), "{}", c.name);
            assert!(
                c.projector.iter().all(|p| s.projector.contains(p)),
                "{}",
                c.name
            );
            assert!(
                c.decoder.iter().all(|p| s.decoder.contains(p)),
                "{}",
                c.name
            );
            assert!(c.head.iter().all(|p| s.head.contains(p)), "{}", c.name);
        }
        // `model.` is both the LLaVA-NeXT and the text-only decoder prefix: listed once.
        assert_eq!(s.decoder.iter().filter(|p| **p == "model.").count(), 1);
        assert_eq!(s.vision.first(), Some(&"vision_tower.vision_model."));
        assert_eq!(s.head, vec!["language_model.lm_head", "lm_head"]);
    }
}
