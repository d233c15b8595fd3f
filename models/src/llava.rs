//! LLaVA-OneVision: SigLIP tower → projector → packing → Qwen2, loaded from any of the
//! checkpoint layouts.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

use crate::checkpoint::{open_model_dir, KeyLayout};
use crate::config::{LlavaConfig, TextConfig};
use crate::decode::checkpointing::Checkpointing;
use crate::decode::{KvCache, Qwen2};
use crate::encode::{Projector, SiglipVision};
use crate::family::judge_model::{JudgeMedia, JudgeModel};
use crate::family::kind::ModelFamily;
use crate::pack::{encode_media_with, merge_media, pack_image, pack_video, MediaFeatures};
use crate::tokenize::Tokenized;
use crate::{Error, Result};

pub struct LlavaOnevision {
    cfg: LlavaConfig,
    layout: KeyLayout,
    vision: SiglipVision,
    projector: Projector,
    image_newline: Tensor,
    decoder: Qwen2,
}

impl LlavaOnevision {
    /// Reads `config.json` and the weights of `dir`, converting them to `dtype`. The
    /// config's sizes are checked against the stored shapes before any tensor is made.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let (cfg, ckpt, layout) = open_model_dir(dir)?;
        let (vb, audit) = ckpt.var_builder(dtype, device);
        let built = Self::new(cfg, layout.clone(), vb);
        // The audit's list of every missing or misshapen key says more than the error that
        // stopped the builder (which is one of them).
        audit.finish(dir, &layout)?;
        built
    }

    /// Builds the model from any weight source whose names follow `layout`
    /// (a checkpoint, or a `VarMap` for training).
    pub fn new(cfg: LlavaConfig, layout: KeyLayout, vb: VarBuilder) -> Result<Self> {
        let vision = SiglipVision::new(
            &cfg.vision,
            cfg.vision_layers_used()?,
            vb.pp(layout.vision.trim_end_matches('.')),
        )?;
        let projector = Projector::new(&cfg, &vb, &layout.projector)?;
        let image_newline = vb.get(cfg.text.hidden_size, &layout.image_newline)?;
        let body = vb.pp(layout.decoder.trim_end_matches('.'));
        let head = layout.lm_head.as_ref().map(|h| vb.pp(h));
        let decoder = Qwen2::new(&cfg.text, body, head)?;
        Ok(Self {
            cfg,
            layout,
            vision,
            projector,
            image_newline,
            decoder,
        })
    }

    pub fn config(&self) -> &LlavaConfig {
        &self.cfg
    }

    pub fn layout(&self) -> &KeyLayout {
        &self.layout
    }

    pub fn decoder(&self) -> &Qwen2 {
        &self.decoder
    }

    pub fn image_newline(&self) -> &Tensor {
        &self.image_newline
    }

    /// Positions past.. for every row of `embeds` [B, T, D] (right padding): LLaVA's decoder
    /// takes plain 1-D positions.
    fn positions(&self, embeds: &Tensor, cache: Option<&KvCache>) -> Result<Tensor> {
        let (b, t, _) = embeds.dims3()?;
        let past = cache.map(|c| c.len()).unwrap_or(0) as u32;
        Ok(
            Tensor::arange(past, past + t as u32, self.image_newline.device())?
                .unsqueeze(0)?
                .broadcast_as((b, t))?
                .contiguous()?,
        )
    }
}

impl JudgeModel for LlavaOnevision {
    fn family(&self) -> ModelFamily {
        ModelFamily::LlavaOnevision
    }

    fn text_config(&self) -> &TextConfig {
        &self.cfg.text
    }

    fn llava_config(&self) -> Option<&LlavaConfig> {
        Some(&self.cfg)
    }

    fn device(&self) -> &Device {
        self.image_newline.device()
    }

    fn dtype(&self) -> DType {
        self.decoder.dtype()
    }

    fn encode_tiles(&self, pixels: &Tensor) -> Result<Tensor> {
        let mut feats = self.vision.forward(pixels)?;
        if self.cfg.drop_first_feature {
            let n = feats.dim(1)?;
            feats = feats.narrow(1, 1, n - 1)?;
        }
        Ok(self.projector.forward(&feats)?)
    }

    fn pack_image(&self, feats: &Tensor, original: (u32, u32)) -> Result<Tensor> {
        pack_image(feats, original, &self.image_newline, &self.cfg.anyres)
    }

    fn pack_video(&self, feats: &Tensor) -> Result<Tensor> {
        pack_video(feats, &self.image_newline)
    }

    fn media_features(&self, media: &JudgeMedia) -> Result<MediaFeatures> {
        let JudgeMedia::Llava(media) = media else {
            return Err(Error::Media(
                "media prepared by another family's processor reached LLaVA-OneVision".into(),
            ));
        };
        encode_media_with(
            |pixels| self.encode_tiles(&pixels.to_device(self.device())?),
            &self.image_newline,
            &self.cfg.anyres,
            media,
        )
    }

    fn embed_ids(&self, ids: &Tensor) -> Result<Tensor> {
        self.decoder.embed(ids)
    }

    fn embed(&self, tokens: &Tokenized, media: &MediaFeatures) -> Result<Tensor> {
        let ids = Tensor::new(tokens.ids.as_slice(), self.device())?;
        merge_media(&self.decoder.embed(&ids)?, tokens, media)
    }

    fn hidden_states(&self, embeds: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let positions = self.positions(embeds, cache.as_deref())?;
        self.decoder.forward(embeds, &positions, None, cache)
    }

    fn hidden_states_at(
        &self,
        embeds: &Tensor,
        cache: Option<&mut KvCache>,
        rows: &Tensor,
    ) -> Result<Tensor> {
        let positions = self.positions(embeds, cache.as_deref())?;
        self.decoder
            .forward_at(embeds, &positions, None, cache, rows)
    }

    fn hidden_states_masked(
        &self,
        embeds: &Tensor,
        positions: &Tensor,
        mask: &Tensor,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        self.decoder.forward(embeds, positions, Some(mask), cache)
    }

    fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.decoder.logits(hidden)
    }

    fn new_cache(&self) -> KvCache {
        KvCache::new(self.decoder.num_layers())
    }

    fn set_checkpointing(&mut self, grads: Option<Arc<Checkpointing>>) -> Result<()> {
        self.decoder.set_checkpointing(grads);
        Ok(())
    }
}
