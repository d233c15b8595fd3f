//! A request's preprocessed media encoded by a backend and packed into token features (the
//! loading and packing themselves are `unireward_models`'s: `preprocess::MediaLoader`,
//! `pack::encode_request_with`).

use unireward_models::pack::{encode_request_with, EncodedMedia};
use unireward_models::preprocess::PreparedMedia;
use unireward_models::MediaFeatures;

use crate::backend::Backend;
use crate::error::Result;

/// Encodes a request's tiles in one backend call and packs them per image / video.
pub fn encode_media(backend: &dyn Backend, media: &PreparedMedia) -> Result<MediaFeatures> {
    Ok(encode_request(backend, media)?.into_features())
}

/// [`encode_media`], kept per image and per video.
pub fn encode_request(backend: &dyn Backend, media: &PreparedMedia) -> Result<EncodedMedia> {
    encode_request_with(
        |tiles| backend.encode_tiles(tiles),
        backend.image_newline(),
        &backend.config().anyres,
        media,
    )
}
