//! Helpers shared by the export crate's tests.

use std::collections::HashMap;

use candle_core::Tensor;
use unireward_engine::backend::Backend;
use unireward_models::pack::{pack_image, pack_video, MediaFeatures};
use unireward_tests::Case;

/// The media of `case` encoded by `backend` and packed, as `run_case` does with the model.
pub fn case_media(
    backend: &dyn Backend,
    case: &Case,
    expected: &HashMap<String, Tensor>,
) -> MediaFeatures {
    let cfg = backend.config();
    let mut media = MediaFeatures::default();
    if let Some(pix) = expected.get(&format!("{}.pixel_values", case.name)) {
        let sizes = expected[&format!("{}.image_sizes", case.name)]
            .to_vec2::<i64>()
            .unwrap();
        for (i, n) in case.num_patches_per_image.iter().enumerate() {
            let tiles = pix.get(i).unwrap().narrow(0, 0, *n).unwrap();
            let feats = backend.encode_tiles(&tiles).unwrap();
            let size = (sizes[i][0] as u32, sizes[i][1] as u32);
            let packed = pack_image(&feats, size, backend.image_newline(), &cfg.anyres).unwrap();
            media.images.push(packed);
        }
    }
    if let Some(frames) = expected.get(&format!("{}.pixel_values_videos", case.name)) {
        let feats = backend.encode_tiles(frames).unwrap();
        media
            .videos
            .push(pack_video(&feats, backend.image_newline()).unwrap());
    }
    media
}
