//! A request's images read and preprocessed for a Qwen2.5-VL checkpoint (`smart_resize`,
//! 14 px patches, temporal pairs), as `engine score` and `engine logprob` read them. Videos
//! are refused: Qwen-VL's frame sampling (`qwen_vl_utils.fetch_video`) is not built yet.

use std::path::Path;

use unireward_models::preprocess::{load_image, MediaRequest, QwenVlPixels, QwenVlProcessor};

/// The images of `media`, relative paths under `base`; the error names the file.
pub fn qwen_images(
    processor: &QwenVlProcessor,
    media: &MediaRequest,
    base: &Path,
) -> Result<Vec<QwenVlPixels>, String> {
    if !media.videos.is_empty() {
        return Err("videos are not supported for Qwen2.5-VL checkpoints yet (images only)".into());
    }
    media
        .images
        .iter()
        .map(|p| {
            let path = if p.is_absolute() {
                p.clone()
            } else {
                base.join(p)
            };
            let image = load_image(&path).map_err(|e| e.to_string())?;
            processor
                .preprocess(&image)
                .map_err(|e| format!("{}: {e}", path.display()))
        })
        .collect()
}
