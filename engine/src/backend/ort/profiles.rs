//! TensorRT optimisation profiles: the shapes a TensorRT engine is built for, one profile per
//! graph, from the limits the engine is started with.

use unireward_models::formats::export_manifest::{
    ATTENTION_MASK, INPUTS_EMBEDS, POSITIONS, POSITION_IDS,
};

use super::kv::KvLayout;
use super::providers::{ProfileDim, ShapeLimits, ShapeProfile};
use crate::error::Result;

/// The shapes a TensorRT engine is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineLimits {
    /// Sequences per decoder call.
    pub max_batch: i64,
    /// Tokens per sequence.
    pub max_length: i64,
    /// Tiles per vision call (a 6x6 anyres image is 37).
    pub max_tiles: i64,
}

impl Default for EngineLimits {
    fn default() -> Self {
        Self {
            max_batch: 8,
            max_length: 4096,
            max_tiles: 64,
        }
    }
}

/// The vision graph's profile: [tiles, 3, S, S], tuned for two tiles (one 1x1 anyres image).
pub fn vision_profile(input: &str, tile: i64, limits: &EngineLimits) -> Result<ShapeProfile> {
    use ProfileDim::{Batch, Fixed};
    let shape = ShapeLimits {
        opt_batch: 2.min(limits.max_tiles),
        max_batch: limits.max_tiles,
        opt_length: 1,
        max_length: 1,
    };
    Ok(ShapeProfile::from_limits(
        &[(input, &[Batch, Fixed(3), Fixed(tile), Fixed(tile)])],
        &shape,
    )?)
}

/// The decoder graph's profile: embeddings [B, T, hidden], position ids [B, T], rows read
/// [B, P ≤ T], and with a cache the mask [B, past + T] and pasts [B, kv_heads, past, head_dim]
/// with past from 0; tuned for one sequence of half the length limit.
pub fn decoder_profile(
    hidden: i64,
    kv: Option<&KvLayout>,
    limits: &EngineLimits,
) -> Result<ShapeProfile> {
    use ProfileDim::{Batch, Fixed, Length, Past};
    let shape = ShapeLimits {
        opt_batch: 1,
        max_batch: limits.max_batch,
        opt_length: (limits.max_length / 2).max(1),
        max_length: limits.max_length,
    };
    let embeds = [Batch, Length, Fixed(hidden)];
    let rows = [Batch, Length];
    let mut inputs: Vec<(&str, &[ProfileDim])> = vec![
        (INPUTS_EMBEDS, &embeds),
        (ATTENTION_MASK, &rows),
        (POSITION_IDS, &rows),
        (POSITIONS, &rows),
    ];
    let past_dims;
    let past_names;
    if let Some(kv) = kv {
        past_dims = [
            Batch,
            Fixed(kv.kv_heads as i64),
            Past,
            Fixed(kv.head_dim as i64),
        ];
        past_names = kv.past_names();
        inputs.extend(past_names.iter().map(|n| (n.as_str(), &past_dims[..])));
    }
    Ok(ShapeProfile::from_limits(&inputs, &shape)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensorrt_profiles_cover_the_limits() {
        let limits = EngineLimits {
            max_batch: 4,
            max_length: 2048,
            max_tiles: 37,
        };
        let d = decoder_profile(896, None, &limits).unwrap();
        let embeds = &d.inputs[0];
        assert_eq!(embeds.name, INPUTS_EMBEDS);
        assert_eq!(embeds.min, vec![1, 1, 896]);
        assert_eq!(embeds.opt, vec![1, 1024, 896]);
        assert_eq!(embeds.max, vec![4, 2048, 896]);
        assert_eq!(d.inputs[3].max, vec![4, 2048]);
        let v = vision_profile("pixel_values", 384, &limits).unwrap();
        assert_eq!(v.inputs[0].min, vec![1, 3, 384, 384]);
        assert_eq!(v.inputs[0].opt, vec![2, 3, 384, 384]);
        assert_eq!(v.inputs[0].max, vec![37, 3, 384, 384]);
        let bad = EngineLimits {
            max_batch: 0,
            ..limits
        };
        assert!(decoder_profile(896, None, &bad).is_err());
    }

    #[test]
    fn a_cached_decoders_profile_covers_its_pasts_from_zero() {
        let layout = KvLayout {
            num_layers: 2,
            kv_heads: 2,
            head_dim: 8,
            half: true,
        };
        let limits = EngineLimits {
            max_batch: 4,
            max_length: 2048,
            max_tiles: 37,
        };
        let p = decoder_profile(896, Some(&layout), &limits).unwrap();
        assert_eq!(p.inputs.len(), 4 + 4);
        let past = &p.inputs[4];
        assert_eq!(past.name, "past_key_values.0.key");
        assert_eq!(past.min, vec![1, 2, 0, 8]);
        assert_eq!(past.opt, vec![1, 2, 1024, 8]);
        assert_eq!(past.max, vec![4, 2, 2048, 8]);
    }
}
