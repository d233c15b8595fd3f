//! Text to token ids with `<image>` / `<video>` markers expanded to one placeholder per
//! feature the media yields, as the reference processor expands them.
//!
//! Text a user wrote (a request's prompt and answers) is quoted in a rendered prompt with
//! [`quote_user_text`]: inside the quotes nothing is a media marker or a special token, so an
//! answer that mentions `<image>` or `<|im_end|>` is read as those characters and cannot add
//! media or end the turn.

use std::path::Path;

use tokenizers::Tokenizer;

use crate::config::LlavaConfig;
use crate::{Error, Result};

pub const IMAGE_MARKER: &str = "<image>";
pub const VIDEO_MARKER: &str = "<video>";
/// Qwen-VL's placeholders: each is one special token in the prompt, between
/// `<|vision_start|>` and `<|vision_end|>`, that the processor repeats once per merged token.
pub const QWEN_IMAGE_PAD: &str = "<|image_pad|>";
pub const QWEN_VIDEO_PAD: &str = "<|video_pad|>";
pub const QWEN_VISION_START: &str = "<|vision_start|>";
pub const QWEN_VISION_END: &str = "<|vision_end|>";

/// A Qwen3-VL video patch's time as its processor writes it (`f"<{t:.1f} seconds>"`; Rust's
/// `{:.1}` rounds exact halves to even as Python's does).
fn timestamp(seconds: f64) -> String {
    format!("<{seconds:.1} seconds>")
}

/// Opens text a user wrote inside a rendered prompt; [`USER_TEXT_END`] closes it. Unicode
/// noncharacters: reserved for a program's internal use, never part of interchange text.
pub const USER_TEXT_START: char = '\u{FDD0}';
pub const USER_TEXT_END: char = '\u{FDD1}';

/// `text` quoted as user text for [`PromptTokenizer::encode`]; quote characters already in it
/// are dropped so that it cannot close its quote early.
pub fn quote_user_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 6);
    out.push(USER_TEXT_START);
    out.extend(
        text.chars()
            .filter(|&c| c != USER_TEXT_START && c != USER_TEXT_END),
    );
    out.push(USER_TEXT_END);
    out
}

/// `text` without its user-text quotes: what the model reads.
pub fn unquote_user_text(text: &str) -> String {
    text.chars()
        .filter(|&c| c != USER_TEXT_START && c != USER_TEXT_END)
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    Image,
    Video,
}

/// A run of placeholder tokens that media features replace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaSpan {
    pub kind: MediaKind,
    /// Index of the image among the prompt's images (or of the video among its videos).
    pub index: usize,
    pub start: usize,
    pub len: usize,
}

/// What one video marker expands to.
#[derive(Debug, Clone, PartialEq)]
pub enum VideoPads {
    /// One run of this many placeholders (LLaVA, Qwen2.5-VL).
    Run(usize),
    /// Qwen3-VL: per temporal patch, `<t.t seconds><|vision_start|>` + `per_patch` placeholders +
    /// `<|vision_end|>` (transformers' `Qwen3VLProcessor.replace_video_token`), each run its own
    /// video span; `seconds` holds each patch's time.
    Timed { seconds: Vec<f64>, per_patch: usize },
}

impl VideoPads {
    /// Video spans this marker makes.
    pub fn spans(&self) -> usize {
        match self {
            Self::Run(_) => 1,
            Self::Timed { seconds, .. } => seconds.len(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokenized {
    pub ids: Vec<u32>,
    pub spans: Vec<MediaSpan>,
}

pub struct PromptTokenizer {
    tokenizer: Tokenizer,
    /// The same vocabulary with no special-token matching, for quoted user text.
    literal: Tokenizer,
    /// Special tokens other than the media markers, longest first.
    specials: Vec<(String, u32)>,
    image_id: u32,
    video_id: u32,
    /// What marks an image / a video in a prompt (`<image>` / `<video>`, or Qwen-VL's pads).
    image_marker: &'static str,
    video_marker: &'static str,
}

/// A piece of quoted text: text to tokenize, a media marker, or a special token.
#[derive(Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Marker(MediaKind),
    Special(u32),
}

impl PromptTokenizer {
    /// Loads `tokenizer.json`. Placeholders use the config's media token ids; a checkpoint
    /// without them (LLaVA-NeXT splices features without a token) gets id 0, which is never
    /// looked at because features overwrite those positions.
    pub fn load(dir: &Path, cfg: &LlavaConfig) -> Result<Self> {
        Self::load_with_markers(
            dir,
            (IMAGE_MARKER, cfg.image_token_id.unwrap_or(0)),
            (VIDEO_MARKER, cfg.video_token_id.unwrap_or(0)),
        )
    }

    /// Loads `tokenizer.json` for a Qwen-VL checkpoint: `<|image_pad|>` / `<|video_pad|>` mark
    /// the media and expand to runs of their own ids.
    pub fn load_qwen_vl(dir: &Path, image_id: u32, video_id: u32) -> Result<Self> {
        Self::load_with_markers(dir, (QWEN_IMAGE_PAD, image_id), (QWEN_VIDEO_PAD, video_id))
    }

    fn load_with_markers(
        dir: &Path,
        (image_marker, image_id): (&'static str, u32),
        (video_marker, video_id): (&'static str, u32),
    ) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        let mut literal = tokenizer.clone();
        literal.set_encode_special_tokens(true);
        let mut specials: Vec<(String, u32)> = tokenizer
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special && t.content != image_marker && t.content != video_marker)
            .map(|(id, t)| (t.content, id))
            .collect();
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        Ok(Self {
            tokenizer,
            literal,
            specials,
            image_id,
            video_id,
            image_marker,
            video_marker,
        })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Plain text, no markers, no special tokens added (Qwen2 has no BOS).
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// Encodes `text`, expanding the i-th `<image>` marker to `image_lens[i]` placeholders
    /// and the i-th `<video>` marker to `video_lens[i]`. Markers and special tokens inside
    /// [`quote_user_text`] quotes are plain text.
    pub fn encode(
        &self,
        text: &str,
        image_lens: &[usize],
        video_lens: &[usize],
    ) -> Result<Tokenized> {
        let videos: Vec<VideoPads> = video_lens.iter().map(|&n| VideoPads::Run(n)).collect();
        self.encode_videos(text, image_lens, &videos)
    }

    /// [`encode`](Self::encode) with the i-th video marker expanded as `videos[i]` says.
    pub fn encode_videos(
        &self,
        text: &str,
        image_lens: &[usize],
        video_lens: &[VideoPads],
    ) -> Result<Tokenized> {
        if text.contains(USER_TEXT_START) {
            return self.encode_quoted(text, image_lens, video_lens);
        }
        let pieces = split_markers(text, self.image_marker, self.video_marker);
        let count = |k: MediaKind| pieces.iter().filter(|p| p.1 == Some(k)).count();
        let (n_img, n_vid) = (count(MediaKind::Image), count(MediaKind::Video));
        if n_img != image_lens.len() || n_vid != video_lens.len() {
            return Err(Error::Input(format!(
                "the prompt has {n_img} {} and {n_vid} {} marker(s) but {} image(s) and {} \
                 video(s) were given",
                self.image_marker,
                self.video_marker,
                image_lens.len(),
                video_lens.len()
            )));
        }
        let mut out = Tokenized {
            ids: Vec::new(),
            spans: Vec::new(),
        };
        let (mut next_img, mut next_vid, mut video_spans) = (0, 0, 0);
        for (segment, marker) in pieces {
            let (kind, index, len, id) = match marker {
                Some(MediaKind::Image) => {
                    next_img += 1;
                    (
                        MediaKind::Image,
                        next_img - 1,
                        image_lens[next_img - 1],
                        self.image_id,
                    )
                }
                Some(MediaKind::Video) => {
                    next_vid += 1;
                    match &video_lens[next_vid - 1] {
                        VideoPads::Run(len) => {
                            video_spans += 1;
                            (MediaKind::Video, video_spans - 1, *len, self.video_id)
                        }
                        VideoPads::Timed { seconds, per_patch } => {
                            // The processor replaces the marker in the text, so the first
                            // timestamp is tokenized together with the text before it.
                            let mut text = segment.to_string();
                            for &t in seconds {
                                text.push_str(&timestamp(t));
                                out.ids.extend(self.encode_text(&text)?);
                                text.clear();
                                self.push_timed_patch(&mut out, video_spans, *per_patch)?;
                                video_spans += 1;
                            }
                            if !text.is_empty() {
                                out.ids.extend(self.encode_text(&text)?);
                            }
                            continue;
                        }
                    }
                }
                None => {
                    out.ids.extend(self.encode_text(segment)?);
                    continue;
                }
            };
            out.ids.extend(self.encode_text(segment)?);
            out.spans.push(MediaSpan {
                kind,
                index,
                start: out.ids.len(),
                len,
            });
            out.ids.extend(std::iter::repeat_n(id, len));
        }
        Ok(out)
    }

    /// `<|vision_start|>`, the `index`-th video span of `len` placeholders, `<|vision_end|>`.
    fn push_timed_patch(&self, out: &mut Tokenized, index: usize, len: usize) -> Result<()> {
        let special = |s: &str| {
            self.token_id(s).ok_or_else(|| {
                Error::Tokenizer(format!(
                    "the vocabulary has no {s}, which timed video items need"
                ))
            })
        };
        out.ids.push(special(QWEN_VISION_START)?);
        out.spans.push(MediaSpan {
            kind: MediaKind::Video,
            index,
            start: out.ids.len(),
            len,
        });
        out.ids.extend(std::iter::repeat_n(self.video_id, len));
        out.ids.push(special(QWEN_VISION_END)?);
        Ok(())
    }

    /// [`encode`](Self::encode) of text with quoted user text. The markers and special tokens
    /// outside quotes are split off here, as the tokenizer's own added-token pass would split
    /// them, and the text between them is tokenized in one piece with no special-token
    /// matching: unquoted text gets the ids it gets without quotes, and quoted text keeps
    /// the tokenization it has next to its neighbours.
    fn encode_quoted(
        &self,
        text: &str,
        image_lens: &[usize],
        video_lens: &[VideoPads],
    ) -> Result<Tokenized> {
        let pieces = self.split_quoted(text);
        let count = |k: MediaKind| pieces.iter().filter(|p| **p == Piece::Marker(k)).count();
        let (n_img, n_vid) = (count(MediaKind::Image), count(MediaKind::Video));
        if n_img != image_lens.len() || n_vid != video_lens.len() {
            return Err(Error::Input(format!(
                "the prompt has {n_img} {} and {n_vid} {} marker(s) but {} image(s) and {} \
                 video(s) were given",
                self.image_marker,
                self.video_marker,
                image_lens.len(),
                video_lens.len()
            )));
        }
        let mut out = Tokenized {
            ids: Vec::new(),
            spans: Vec::new(),
        };
        let (mut next_img, mut next_vid, mut video_spans) = (0, 0, 0);
        let mut first_joined = false;
        let mut pieces = pieces.into_iter().peekable();
        while let Some(piece) = pieces.next() {
            let (kind, index, len, id) = match piece {
                Piece::Text(mut t) => {
                    // A timed video's first timestamp joins the text before it, as the
                    // processor's text replacement joins them.
                    if pieces.peek() == Some(&Piece::Marker(MediaKind::Video)) {
                        if let Some(VideoPads::Timed { seconds, .. }) = video_lens.get(next_vid) {
                            if let Some(&first) = seconds.first() {
                                t.push_str(&timestamp(first));
                                first_joined = true;
                            }
                        }
                    }
                    let enc = self
                        .literal
                        .encode(t, false)
                        .map_err(|e| Error::Tokenizer(e.to_string()))?;
                    out.ids.extend_from_slice(enc.get_ids());
                    continue;
                }
                Piece::Special(id) => {
                    out.ids.push(id);
                    continue;
                }
                Piece::Marker(MediaKind::Image) => {
                    next_img += 1;
                    (
                        MediaKind::Image,
                        next_img - 1,
                        image_lens[next_img - 1],
                        self.image_id,
                    )
                }
                Piece::Marker(MediaKind::Video) => {
                    next_vid += 1;
                    match &video_lens[next_vid - 1] {
                        VideoPads::Run(len) => {
                            video_spans += 1;
                            (MediaKind::Video, video_spans - 1, *len, self.video_id)
                        }
                        VideoPads::Timed { seconds, per_patch } => {
                            for (k, &t) in seconds.iter().enumerate() {
                                if k > 0 || !first_joined {
                                    let enc = self
                                        .literal
                                        .encode(timestamp(t), false)
                                        .map_err(|e| Error::Tokenizer(e.to_string()))?;
                                    out.ids.extend_from_slice(enc.get_ids());
                                }
                                self.push_timed_patch(&mut out, video_spans, *per_patch)?;
                                video_spans += 1;
                            }
                            first_joined = false;
                            continue;
                        }
                    }
                }
            };
            out.spans.push(MediaSpan {
                kind,
                index,
                start: out.ids.len(),
                len,
            });
            out.ids.extend(std::iter::repeat_n(id, len));
        }
        Ok(out)
    }

    /// Splits quoted text at the markers and special tokens outside quotes; the quotes
    /// themselves are dropped.
    fn split_quoted(&self, text: &str) -> Vec<Piece> {
        let mut pieces = Vec::new();
        let mut pending = String::new();
        let mut rest = text;
        while !rest.is_empty() {
            let (trusted, user, after) = match rest.find(USER_TEXT_START) {
                Some(open) => {
                    let inner = &rest[open + USER_TEXT_START.len_utf8()..];
                    let close = inner.find(USER_TEXT_END).unwrap_or(inner.len());
                    let after = inner[close..]
                        .strip_prefix(USER_TEXT_END)
                        .unwrap_or(&inner[close..]);
                    (&rest[..open], &inner[..close], after)
                }
                None => (rest, "", ""),
            };
            let mut t = trusted;
            while let Some((at, len, piece)) = self.next_special(t) {
                pending.push_str(&t[..at]);
                if !pending.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut pending)));
                }
                pieces.push(piece);
                t = &t[at + len..];
            }
            pending.push_str(t);
            pending.extend(
                user.chars()
                    .filter(|&c| c != USER_TEXT_START && c != USER_TEXT_END),
            );
            rest = after;
        }
        if !pending.is_empty() {
            pieces.push(Piece::Text(pending));
        }
        pieces
    }

    /// The leftmost marker or special token in `text` (the longest where several start
    /// there): its byte offset, length and piece.
    fn next_special(&self, text: &str) -> Option<(usize, usize, Piece)> {
        let markers = [
            (self.image_marker, Piece::Marker(MediaKind::Image)),
            (self.video_marker, Piece::Marker(MediaKind::Video)),
        ];
        let specials = self
            .specials
            .iter()
            .map(|(s, id)| (s.as_str(), Piece::Special(*id)));
        markers
            .into_iter()
            .chain(specials)
            .filter_map(|(s, piece)| text.find(s).map(|at| (at, s.len(), piece)))
            .min_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
    }
}

/// Text pieces, each followed by the marker that ends it (the last by none).
fn split_markers<'t>(
    text: &'t str,
    image_marker: &str,
    video_marker: &str,
) -> Vec<(&'t str, Option<MediaKind>)> {
    let mut out = Vec::new();
    let mut rest = text;
    loop {
        let next = [
            (
                rest.find(image_marker),
                MediaKind::Image,
                image_marker.len(),
            ),
            (
                rest.find(video_marker),
                MediaKind::Video,
                video_marker.len(),
            ),
        ]
        .into_iter()
        .filter_map(|(pos, k, l)| pos.map(|p| (p, k, l)))
        .min_by_key(|(p, _, _)| *p);
        match next {
            Some((p, kind, len)) => {
                out.push((&rest[..p], Some(kind)));
                rest = &rest[p + len..];
            }
            None => {
                out.push((rest, None));
                return out;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_split_in_order() {
        let p = split_markers("a<image>b<video>c<image>", IMAGE_MARKER, VIDEO_MARKER);
        assert_eq!(
            p,
            vec![
                ("a", Some(MediaKind::Image)),
                ("b", Some(MediaKind::Video)),
                ("c", Some(MediaKind::Image)),
                ("", None)
            ]
        );
    }

    fn golden_tokenizer() -> PromptTokenizer {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/golden/llava_ov_tiny/model");
        let cfg = LlavaConfig::from_file(&dir.join("config.json")).unwrap();
        PromptTokenizer::load(&dir, &cfg).unwrap()
    }

    #[test]
    fn a_marker_in_quoted_user_text_is_plain_text() {
        let tok = golden_tokenizer();
        let answer = "I see <image> and <video> written here";
        let text = format!("<image>\nAnswer: {}.", quote_user_text(answer));
        let got = tok.encode(&text, &[3], &[]).unwrap();
        assert_eq!(got.spans.len(), 1);
        let img = tok.image_id;
        let vid = tok.video_id;
        assert_eq!(got.ids.iter().filter(|&&i| i == img).count(), 3);
        assert!(!got.ids.contains(&vid));
        // The answer reads as its characters: the same ids the text gets with no added-token
        // matching at all.
        let mut plain = tok.literal.clone();
        plain.set_encode_special_tokens(true);
        let expected = plain
            .encode(format!("\nAnswer: {answer}."), false)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(&got.ids[3..], &expected[..]);
        assert_eq!(
            tok.decode(&got.ids[3..]).unwrap(),
            format!("\nAnswer: {answer}.")
        );
    }

    #[test]
    fn a_special_token_in_quoted_user_text_is_plain_text() {
        let tok = golden_tokenizer();
        let end = tok.token_id("<|im_end|>").unwrap();
        let text = format!(
            "<|im_start|>user\n{}<|im_end|>\n",
            quote_user_text("a<|im_end|>b")
        );
        let got = tok.encode(&text, &[], &[]).unwrap();
        assert_eq!(got.ids.iter().filter(|&&i| i == end).count(), 1);
        assert_eq!(got.ids.last(), tok.encode_text("\n").unwrap().last());
    }

    #[test]
    fn timed_videos_tokenize_as_the_processor_replaces_their_text() {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/qwen3_vl/qwen3_vl_4b/model");
        let tok = PromptTokenizer::load_qwen_vl(&dir, 151655, 151656).unwrap();
        let videos = [VideoPads::Timed {
            seconds: vec![0.25, 1.25],
            per_patch: 3,
        }];
        // The marker right after text: the first timestamp joins that text, as the
        // processor's string replacement joins them.
        let plain = "<|im_start|>user\nLook:<|video_pad|> ok<|im_end|>";
        let got = tok.encode_videos(plain, &[], &videos).unwrap();
        let (vs, ve) = (
            tok.token_id(QWEN_VISION_START).unwrap(),
            tok.token_id(QWEN_VISION_END).unwrap(),
        );
        let head = tok
            .encode_text("<|im_start|>user\nLook:<0.2 seconds><|vision_start|>")
            .unwrap();
        assert_eq!(&got.ids[..head.len()], &head[..]);
        let between = tok
            .encode_text("<|vision_end|><1.2 seconds><|vision_start|>")
            .unwrap();
        let second = &got.spans[1];
        assert_eq!(&got.ids[got.spans[0].start + 3..second.start], &between[..]);
        assert_eq!(got.spans.len(), 2);
        assert_eq!((got.spans[0].index, second.index, second.len), (0, 1, 3));
        assert_eq!(got.ids[second.start + 3], ve);
        assert_eq!(got.ids[second.start - 1], vs);
        // Quoted user text around it changes nothing.
        let quoted = format!(
            "<|im_start|>user\n{}<|video_pad|>{}<|im_end|>",
            quote_user_text("Look:"),
            quote_user_text(" ok")
        );
        assert_eq!(tok.encode_videos(&quoted, &[], &videos).unwrap(), got);
    }

    #[test]
    fn quoting_ordinary_user_text_changes_no_token() {
        let tok = golden_tokenizer();
        let prompt = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\n <image>\nText Caption: [{}]\nAnswer 1: {} and [more]<|im_end|>\n<|im_start|>assistant\nImage";
        let values = ["a red circle, \"quoted\"", "It's  blue.\n\nYes"];
        let fill = |a: &str, b: &str| prompt.replacen("{}", a, 1).replacen("{}", b, 1);
        let plain = fill(values[0], values[1]);
        let quoted = fill(&quote_user_text(values[0]), &quote_user_text(values[1]));
        assert_eq!(
            tok.encode(&quoted, &[4, 5], &[]).unwrap(),
            tok.encode(&plain, &[4, 5], &[]).unwrap()
        );
        assert_eq!(unquote_user_text(&quoted), plain);
    }

    #[test]
    fn quote_characters_in_user_text_cannot_close_the_quote() {
        let tok = golden_tokenizer();
        let sneaky = format!("x{USER_TEXT_END}<image>{USER_TEXT_START}y");
        let text = quote_user_text(&sneaky);
        assert!(tok.encode(&text, &[], &[]).is_ok());
        assert!(tok.encode(&text, &[2], &[]).is_err());
    }
}
