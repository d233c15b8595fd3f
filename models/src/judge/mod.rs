//! The judge's model-independent parts: tasks, prompt templates and chat wrapping, verdict
//! strings, answer parsing and the fast-mode arithmetic.

pub mod answer_format;
pub mod checkpoint_family;
pub mod media_markers;
pub mod sift_templates;
pub mod task;
pub mod templates;
pub mod verdict;

pub use answer_format::{AnswerFormat, Dimension};
pub use checkpoint_family::checkpoint_family;
pub use media_markers::MediaMarkers;
pub use task::{Medium, Mode, ScoreRange, Task};
pub use templates::{
    user_turn, ChatMessage, ChatTemplate, Family, JinjaChat, Media, PromptTemplate, SYSTEM_PROMPT,
};
pub use verdict::{
    answer_prefix, pair_probs, pair_verdicts, parse_pair, parse_score, point_score, verdict_lead,
    PairProbs, ParseError, PointScore, Verdict, VerdictText, SCORE_MARKER,
};
