//! A request's media read as the judge's family reads them: LLaVA-OneVision's loader (anyres
//! tiles, sampled frames) or Qwen-VL's processor (`smart_resize` patches and their grids).
//! These are the readers `engine score` uses, which is what makes the server's answers equal
//! the batch command's.

use std::path::Path;

use unireward_models::preprocess::{MediaLoader, MediaRequest, PreparedMedia, QwenVlProcessor};

use unireward_models::qwen2_5_vl::{QwenMedia, QwenVideos};

/// How the server reads media (on the HTTP side, before the model thread).
pub enum MediaReader {
    Llava(MediaLoader),
    Qwen {
        processor: QwenVlProcessor,
        videos: QwenVideos,
    },
}

/// A request's media, preprocessed for the judge's family.
pub enum RequestMedia {
    Llava(PreparedMedia),
    Qwen(QwenMedia),
}

impl MediaReader {
    /// `request`'s files (absolute paths) read and preprocessed, images resized to `resized`
    /// first where given; the error names the file.
    pub fn read(
        &self,
        request: &MediaRequest,
        resized: Option<(u32, u32)>,
    ) -> Result<RequestMedia, String> {
        let root = Path::new("/");
        match self {
            MediaReader::Llava(loader) => loader
                .load_resized(request, root, resized)
                .map(RequestMedia::Llava)
                .map_err(|e| e.to_string()),
            MediaReader::Qwen { processor, videos } => {
                if let Some((w, h)) = resized {
                    // Only the DPO-data recipe resizes, and it is LLaVA's (refused at start).
                    return Err(format!(
                        "a Qwen-VL judge takes images at their own size, not resized to {w}x{h}"
                    ));
                }
                QwenMedia::read(processor, request, root, *videos)
                    .map(RequestMedia::Qwen)
                    .map_err(|e| e.to_string())
            }
        }
    }
}

impl RequestMedia {
    /// How many images and videos the request has.
    pub fn counts(&self) -> (usize, usize) {
        match self {
            RequestMedia::Llava(m) => (m.images.len(), m.videos.len()),
            RequestMedia::Qwen(m) => (m.images.len(), m.videos.len()),
        }
    }
}
