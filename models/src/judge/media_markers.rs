//! How a model family marks where media go in a rendered prompt. The templates write LLaVA's
//! marker lines (`<image>\n`, `<video>\n`); a Qwen-VL checkpoint's processor instead expands
//! each image or video content item of a chat message to
//! `<|vision_start|><|image_pad|><|vision_end|>` (no newline: Qwen2.5-VL's chat template
//! writes the text item right after it), so the markers are rewritten for those families.

use crate::tokenize::{
    IMAGE_MARKER, QWEN_IMAGE_PAD, QWEN_VIDEO_PAD, USER_TEXT_END, USER_TEXT_START, VIDEO_MARKER,
};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MediaMarkers {
    /// `<image>` / `<video>` as written (LLaVA-OneVision).
    #[default]
    Llava,
    /// `<|vision_start|><|image_pad|><|vision_end|>` / `...<|video_pad|>...` (Qwen2.5-VL,
    /// Qwen3-VL).
    QwenVl,
}

impl MediaMarkers {
    /// `prompt` with the template's markers written as this family writes them. Text a user
    /// wrote (quoted: [`crate::tokenize::quote_user_text`]) is left alone, so a marker typed in
    /// a request stays text.
    pub fn apply(self, prompt: &str) -> String {
        if self == MediaMarkers::Llava {
            return prompt.to_string();
        }
        let mut out = String::with_capacity(prompt.len() + 64);
        let mut rest = prompt;
        while !rest.is_empty() {
            if rest.starts_with(USER_TEXT_START) {
                let end = rest
                    .find(USER_TEXT_END)
                    .map_or(rest.len(), |e| e + USER_TEXT_END.len_utf8());
                out.push_str(&rest[..end]);
                rest = &rest[end..];
                continue;
            }
            let placeholder = if rest.starts_with(IMAGE_MARKER) {
                Some((IMAGE_MARKER, QWEN_IMAGE_PAD))
            } else if rest.starts_with(VIDEO_MARKER) {
                Some((VIDEO_MARKER, QWEN_VIDEO_PAD))
            } else {
                None
            };
            match placeholder {
                Some((marker, pad)) => {
                    out.push_str("<|vision_start|>");
                    out.push_str(pad);
                    out.push_str("<|vision_end|>");
                    rest = &rest[marker.len()..];
                    // The marker's own line break belongs to LLaVA's layout.
                    rest = rest.strip_prefix('\n').unwrap_or(rest);
                }
                None => {
                    let c = rest.chars().next().unwrap_or_default();
                    out.push(c);
                    rest = &rest[c.len_utf8()..];
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenize::quote_user_text;

    #[test]
    fn qwen_vl_writes_vision_placeholders_outside_user_text() {
        let prompt = format!(
            "<|im_start|>user\n<image>\n<image>\n{}<|im_end|>\n",
            quote_user_text("a caption with <image>\n typed in it")
        );
        let out = MediaMarkers::QwenVl.apply(&prompt);
        assert_eq!(
            out,
            format!(
                "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>\
                 <|vision_start|><|image_pad|><|vision_end|>{}<|im_end|>\n",
                quote_user_text("a caption with <image>\n typed in it")
            )
        );
        let video = MediaMarkers::QwenVl.apply("<video>\nText");
        assert_eq!(video, "<|vision_start|><|video_pad|><|vision_end|>Text");
        assert_eq!(MediaMarkers::Llava.apply(&prompt), prompt);
    }
}
