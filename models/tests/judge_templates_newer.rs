//! The ACS, 2.0 and Think prompts against the UnifiedReward reference scripts, text for text.
//! Each expected string is the script's prompt expression as Python evaluates it (UnifiedReward
//! commit ff6f520) for the inputs below; where a script passes its media as chat content items
//! (the Qwen and vLLM scripts) they are one marker line each before the text, which the model
//! family expands to its own placeholders (`<|vision_start|><|image_pad|><|vision_end|>` for
//! Qwen-VL). Video frames as the scripts sample them: 8 per video for a pair, 16 for the 2.0
//! point (APS) script, 8 for the understanding scripts.

use unireward_models::judge::{user_turn, Family, Media, Mode, PromptTemplate, Task};
use unireward_models::Error;

const CAPTION: &str = "A red fox jumps over a wooden fence at dusk.";
const QUESTION: &str = "What is the animal doing?";
const A1: &str = "It is jumping over a fence.";
const A2: &str = "It is sleeping under a tree.";
const NO_ANSWERS: &[&str] = &[];

#[allow(clippy::too_many_arguments)]
fn check(
    family: Family,
    task: Task,
    mode: Mode,
    prompt: &str,
    answers: &[&str],
    media: Media,
    expected: &str,
    script: &str,
) {
    let got = user_turn(family, task, mode, prompt, answers, media).unwrap();
    if got != expected {
        let at = got
            .chars()
            .zip(expected.chars())
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(expected.len()));
        panic!(
            "{family} {task} {mode} differs at char {at}:\n got: {:?}\nwant: {:?}",
            got.chars()
                .skip(at.saturating_sub(20))
                .take(80)
                .collect::<String>(),
            expected
                .chars()
                .skip(at.saturating_sub(20))
                .take(80)
                .collect::<String>()
        );
    }
    let template = PromptTemplate::builtin(family, task, mode).unwrap();
    assert_eq!(template.source(), script);
}

/// `inference_llava/image_generation/point_score_ACS_image_generation.py` (UnifiedReward ff6f520): the prompt as Python evaluates it, the script's own markers.
#[test]
fn llava_acs_image_generation_point() {
    let expected = concat!(
        "<image>\n",
        "You are presented with a generated image and its associated text caption. Your task is to analyze the image across multiple dimensions in relation to the caption. Specifically:\n",
        "\n",
        "1. Evaluate each word in the caption based on how well it is visually represented in the image. Assign a numerical score to each word using the format:\n",
        "   Word-wise Scores: [[\"word1\", score1], [\"word2\", score2], ..., [\"wordN\", scoreN], [\"[No_mistakes]\", scoreM]]\n",
        "   - A higher score indicates that the word is less well represented in the image.\n",
        "   - The special token [No_mistakes] represents whether all elements in the caption were correctly depicted. A high score suggests no mistakes; a low score suggests missing or incorrect elements.\n",
        "\n",
        "2. Provide overall assessments for the image along the following axes (each rated from 1 to 5):\n",
        "- Alignment Score: How well the image matches the caption in terms of content.\n",
        "- Coherence Score: How logically consistent the image is (absence of visual glitches, object distortions, etc.).\n",
        "- Style Score: How aesthetically appealing the image looks, regardless of caption accuracy.\n",
        "\n",
        "Output your evaluation using the format below:\n",
        "\n",
        "---\n",
        "\n",
        "Word-wise Scores: [[\"word1\", score1], ..., [\"[No_mistakes]\", scoreM]]\n",
        "\n",
        "Alignment Score (1-5): X\n",
        "Coherence Score (1-5): Y\n",
        "Style Score (1-5): Z\n",
        "\n",
        "Your task is provided as follows:\n",
        "Text Caption: [A red fox jumps over a wooden fence at dusk.]",
    );
    check(
        Family::LlavaAcs,
        Task::ImageGeneration,
        Mode::Point,
        CAPTION,
        NO_ANSWERS,
        Media::Images(1),
        expected,
        "inference_llava/image_generation/point_score_ACS_image_generation.py",
    );
}

/// `inference_qwen/image_generation/qwen_point_score_ACS_image_generation.py` (UnifiedReward ff6f520): the prompt as Python evaluates it, its media as content items before the text, one marker line each.
#[test]
fn qwen_acs_image_generation_point() {
    let expected = concat!(
        "<image>\n",
        "You are presented with a generated image and its associated text caption. Your task is to analyze the image across multiple dimensions in relation to the caption. Specifically:\n",
        "\n",
        "1. Evaluate each word in the caption based on how well it is visually represented in the image. Assign a numerical score to each word using the format:\n",
        "   Word-wise Scores: [[\"word1\", score1], [\"word2\", score2], ..., [\"wordN\", scoreN], [\"[No_mistakes]\", scoreM]]\n",
        "   - A higher score indicates that the word is less well represented in the image.\n",
        "   - The special token [No_mistakes] represents whether all elements in the caption were correctly depicted. A high score suggests no mistakes; a low score suggests missing or incorrect elements.\n",
        "\n",
        "2. Provide overall assessments for the image along the following axes (each rated from 1 to 5):\n",
        "- Alignment Score: How well the image matches the caption in terms of content.\n",
        "- Coherence Score: How logically consistent the image is (absence of visual glitches, object distortions, etc.).\n",
        "- Style Score: How aesthetically appealing the image looks, regardless of caption accuracy.\n",
        "\n",
        "Output your evaluation using the format below:\n",
        "\n",
        "---\n",
        "\n",
        "Word-wise Scores: [[\"word1\", score1], ..., [\"[No_mistakes]\", scoreM]]\n",
        "\n",
        "Alignment Score (1-5): X\n",
        "Coherence Score (1-5): Y\n",
        "Style Score (1-5): Z\n",
        "\n",
        "Your task is provided as follows:\n",
        "Text Caption: [A red fox jumps over a wooden fence at dusk.]",
    );
    check(
        Family::QwenAcs,
        Task::ImageGeneration,
        Mode::Point,
        CAPTION,
        NO_ANSWERS,
        Media::Images(1),
        expected,
        "inference_qwen/image_generation/qwen_point_score_ACS_image_generation.py",
    );
}

/// `inference_qwen/UnifiedReward-2.0-inference/pair_score_image_generation.py` (UnifiedReward ff6f520): the prompt as Python evaluates it, its media as content items before the text, one marker line each.
#[test]
fn v2_image_generation_pair() {
    let expected = concat!(
        "<image>\n",
        "<image>\n",
        "You are presented with two generated images (Image 1 and Image 2) along with a shared text caption. Your task is to comparatively evaluate the two images across three specific dimensions:\n",
        "\n",
        "- Alignment Score: How well each image matches the caption in terms of content.\n",
        "- Coherence Score: How logically consistent and visually coherent each image is (absence of visual glitches, distorted objects, etc.).\n",
        "- Style Score: How aesthetically appealing each image is, regardless of caption accuracy.\n",
        "\n",
        "For each dimension, you must assign a relative score to Image 1 and Image 2, such that:\n",
        "- Each score is a float between 0 and 1 (inclusive).\n",
        "- The scores for Image 1 and Image 2 must sum to exactly 1.0 for each dimension.\n",
        "- The higher the score, the better that image is in the corresponding dimension *relative to the other*.\n",
        "\n",
        "This format emphasizes comparative quality rather than absolute evaluation.\n",
        "\n",
        "Please provide your evaluation in the format below:\n",
        "\n",
        "Alignment Score:\n",
        " Image 1: X\n",
        " Image 2: Y\n",
        "\n",
        "Coherence Score:\n",
        " Image 1: X\n",
        " Image 2: Y\n",
        "\n",
        "Style Score:\n",
        " Image 1: X\n",
        " Image 2: Y\n",
        "\n",
        "Your task is provided as follows:\n",
        "Text Caption: [A red fox jumps over a wooden fence at dusk.]",
    );
    check(
        Family::V2,
        Task::ImageGeneration,
        Mode::Pair,
        CAPTION,
        NO_ANSWERS,
        Media::Images(2),
        expected,
        "inference_qwen/UnifiedReward-2.0-inference/pair_score_image_generation.py",
    );
}

/// `inference_qwen/UnifiedReward-2.0-inference/pair_score_video_generation.py` (UnifiedReward ff6f520): the prompt as Python evaluates it, its media as content items before the text, one marker line each.
#[test]
fn v2_video_generation_pair() {
    let expected = concat!(
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "You are presented with two generated videos (Video 1 and Video 2) along with a shared text caption. Your task is to comparatively evaluate the two videos across three specific dimensions:\n",
        "\n",
        "- Alignment Score: How well each video matches the caption in terms of content.\n",
        "- Coherence Score: How logically consistent and visually coherent each video is (absence of visual glitches, distorted objects, etc.).\n",
        "- Style Score: How aesthetically appealing each video is, regardless of caption accuracy.\n",
        "\n",
        "For each dimension, you must assign a relative score to Video 1 and Video 2, such that:\n",
        "- Each score is a float between 0 and 1 (inclusive).\n",
        "- The scores for Video 1 and Video 2 must sum to exactly 1.0 for each dimension.\n",
        "- The higher the score, the better that video is in the corresponding dimension *relative to the other*.\n",
        "\n",
        "This format emphasizes comparative quality rather than absolute evaluation.\n",
        "\n",
        "Please provide your evaluation in the format below:\n",
        "\n",
        "Alignment Score:\n",
        " Video 1: X\n",
        " Video 2: Y\n",
        "\n",
        "Coherence Score:\n",
        " Video 1: X\n",
        " Video 2: Y\n",
        "\n",
        "Style Score:\n",
        " Video 1: X\n",
        " Video 2: Y\n",
        "\n",
        "Your task is provided as follows:\n",
        "Text Caption: [A red fox jumps over a wooden fence at dusk.]",
    );
    check(
        Family::V2,
        Task::VideoGeneration,
        Mode::Pair,
        CAPTION,
        NO_ANSWERS,
        Media::Images(16),
        expected,
        "inference_qwen/UnifiedReward-2.0-inference/pair_score_video_generation.py",
    );
}

/// `inference_qwen/UnifiedReward-2.0-inference/point_score_ACS_image_generation.py` (UnifiedReward ff6f520): the prompt as Python evaluates it, its media as content items before the text, one marker line each.
#[test]
fn v2_image_generation_point() {
    let expected = concat!(
        "<image>\n",
        "You are presented with a generated image and its associated text caption. Your task is to analyze the image across multiple dimensions in relation to the caption. Specifically:\n",
        "Provide overall assessments for the image along the following axes (each rated from 1 to 5):\n",
        "- Alignment Score: How well the image matches the caption in terms of content.\n",
        "- Coherence Score: How logically consistent the image is (absence of visual glitches, object distortions, etc.).\n",
        "- Style Score: How aesthetically appealing the image looks, regardless of caption accuracy.\n",
        "\n",
        "Output your evaluation using the format below:\n",
        "\n",
        "Alignment Score (1-5): X\n",
        "Coherence Score (1-5): Y\n",
        "Style Score (1-5): Z\n",
        "\n",
        "Your task is provided as follows:\n",
        "Text Caption: [A red fox jumps over a wooden fence at dusk.]",
    );
    check(
        Family::V2,
        Task::ImageGeneration,
        Mode::Point,
        CAPTION,
        NO_ANSWERS,
        Media::Images(1),
        expected,
        "inference_qwen/UnifiedReward-2.0-inference/point_score_ACS_image_generation.py",
    );
}

/// `inference_qwen/UnifiedReward-2.0-inference/point_score_APS_video_generation.py` (UnifiedReward ff6f520): the prompt as Python evaluates it, its media as content items before the text, one marker line each.
#[test]
fn v2_video_generation_point() {
    let expected = concat!(
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "You are presented with a generated video and its associated text caption. Your task is to analyze the video across multiple dimensions in relation to the caption. Specifically:\n",
        "Provide overall assessments for the video along the following axes (each rated from 1 to 5):\n",
        "- Alignment Score: How well the video matches the caption in terms of content.\n",
        "- Physics Score: How well the gravity, movements, collisions, and interactions make physical sense.\n",
        "- Style Score: How visually appealing the video looks, regardless of caption accuracy.\n",
        "\n",
        "Output your evaluation using the format below:\n",
        "\n",
        "Alignment Score (1-5): X\n",
        "Physics Score (1-5): Y\n",
        "Style Score (1-5): Z\n",
        "\n",
        "Your task is provided as follows:\n",
        "Text Caption: [A red fox jumps over a wooden fence at dusk.]",
    );
    check(
        Family::V2,
        Task::VideoGeneration,
        Mode::Point,
        CAPTION,
        NO_ANSWERS,
        Media::Images(16),
        expected,
        "inference_qwen/UnifiedReward-2.0-inference/point_score_APS_video_generation.py",
    );
}

/// `UnifiedReward-Think/inference_llava/image_generation/infer_cot_image_generation.py` (UnifiedReward ff6f520): the prompt as Python evaluates it, the script's own markers.
#[test]
fn think_image_generation_pair() {
    let expected = concat!(
        "<image>\n",
        " <image>\n",
        "Given a caption and two images generated based on this caption, please analyze in detail the two provided images. Evaluate them on various dimensions such as semantic consistency (how closely the image content aligns with the caption), aesthetics (composition, color usage, artistic expression), authenticity (realism and attention to detail), and any other factors you deem relevant. For each evaluation dimension, provide a score between 1-10 for both images (e.g., Image 1: 8/10, Image 2: 6/10) and provide a concise rationale for the score. Calculate the total score for each image by summing all dimension scores. Use a chain-of-thought process to detail your reasoning steps, and enclose all your detailed reasoning within <think> and </think> tags. Then, in the <answer> tag, output exactly one of the following strings: 'Image 1 is better' or 'Image 2 is better' based on the total scores. No additional text is allowed in the <answer> section.\n",
        "\n",
        "Example output format:\n",
        "<think>\n",
        "1. Semantic consistency: Image 1 (9/10) - ...; Image 2 (7/10) - ...\n",
        "2. Aesthetics: Image 2 (8/10) - ...; Image 1 (8/10) - ...\n",
        "3. Authenticity: Image 1 (8/10) - ...; Image 2 (5/10) - ...\n",
        "[Additional dimensions if any]: Image 2 (8/10) - ...; Image 1 (6/10) - ...\n",
        "Total score:\n",
        "Image 1: 9+8+8+6=31\n",
        "Image 2: 7+8+5+8=28\n",
        "</think>\n",
        "<answer>Image 1 is better</answer>\n",
        "**Note: In the example above, scores and the final answer are placeholders meant only to demonstrate the format. Your actual evaluation should be based on the quality of two given images.**\n",
        "\n",
        "Your task is provided as follows:\n",
        "Text Caption: [A red fox jumps over a wooden fence at dusk.]",
    );
    check(
        Family::Think,
        Task::ImageGeneration,
        Mode::Pair,
        CAPTION,
        NO_ANSWERS,
        Media::Images(2),
        expected,
        "UnifiedReward-Think/inference_llava/image_generation/infer_cot_image_generation.py",
    );
}

/// `UnifiedReward-Think/inference_llava/video_generation/infer_cot_video_generation.py` (UnifiedReward ff6f520): the prompt as Python evaluates it, the script's own markers.
#[test]
fn think_video_generation_pair() {
    let expected = concat!(
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "Given a caption and two videos generated based on this caption, please analyze in detail the two provided videos. Evaluate them on various dimensions such as semantic consistency (how closely the video content aligns with the caption), temporal coherence (smoothness and logical flow of motion across frames), authenticity (realism and attention to detail), and any other factors you deem relevant. For each evaluation dimension, provide a score between 1-10 for both videos (e.g., Video 1: 8/10, Video 2: 6/10) and provide a concise rationale for the score. Calculate the total score for each video by summing all dimension scores. Use a chain-of-thought process to detail your reasoning steps, and enclose all your detailed reasoning within <think> and </think> tags. Then, in the <answer> tag, output exactly one of the following strings: 'Video 1 is better' or 'Video 2 is better' based on the total scores. No additional text is allowed in the <answer> section.\n",
        "\n",
        "Example output format:\n",
        "<think>\n",
        "1. Semantic consistency: Video 1 (9/10) - ...; Video 2 (7/10) - ...\n",
        "2. Temporal coherence: Video 1 (8/10) - ...; Video 2 (6/10) - ...\n",
        "3. Authenticity: Video 1 (7/10) - ...; Video 2 (5/10) - ...\n",
        "[Additional dimensions if any]: Video 2 (8/10) - ...; Video 1 (6/10) - ...\n",
        "Total score:\n",
        "Video 1: 9+8+7+6=30\n",
        "Video 2: 7+6+5+8=26\n",
        "</think>\n",
        "<answer>Video 1 is better</answer>\n",
        "**Note: In the example above, scores and the final answer are placeholders meant only to demonstrate the format. Your actual evaluation should be based on the quality of two given videos.**\n",
        "\n",
        "Your task is provided as follows:\n",
        "Text Caption: [A red fox jumps over a wooden fence at dusk.]",
    );
    check(
        Family::Think,
        Task::VideoGeneration,
        Mode::Pair,
        CAPTION,
        NO_ANSWERS,
        Media::Images(16),
        expected,
        "UnifiedReward-Think/inference_llava/video_generation/infer_cot_video_generation.py",
    );
}

/// `UnifiedReward-Think/inference_llava/image_understanding/infer_cot_image_understanding.py` (UnifiedReward ff6f520): the prompt as Python evaluates it, the script's own markers.
#[test]
fn think_image_understanding_pair() {
    let expected = concat!(
        "<image>\n",
        "Given a question and a reference image, please analyze in detail the two provided answers (Answer 1 and Answer 2). Evaluate them based on the following three core dimensions:\n",
        "1. Semantic accuracy: How well the answer reflects the visual content of the image\n",
        "2. Correctness: Whether the answer is logically and factually correct\n",
        "3. Clarity: Whether the answer is clearly and fluently expressed\n",
        "You may also consider additional dimensions if you find them relevant (e.g., reasoning ability, attention to detail, multimodal grounding, etc.). For each dimension, provide a score from 1 to 10 for both answers, and briefly explain your reasoning. Then, compute the total score for each answer by explicitly adding the scores for all dimensions and showing the full calculation. Enclose your full reasoning within <think> and </think> tags. Then, in the <answer> tag, output exactly one of the following: 'Answer 1 is better' or 'Answer 2 is better'. No other text is allowed in the <answer> section.\n",
        "\n",
        "Example format:\n",
        "<think>\n",
        "1. Semantic accuracy: Answer 1 (9/10) - ...; Answer 2 (7/10) - ...\n",
        "2. Correctness: Answer 1 (8/10) - ...; Answer 2 (7/10) - ...\n",
        "3. Clarity: Answer 1 (9/10) - ...; Answer 2 (8/10) - ...\n",
        "[Additional dimensions if any]: Answer 1 (6/10) - ...; Answer 2 (7/10) - ...\n",
        "Total score:\n",
        "Answer 1: 9+8+9+6=32\n",
        "Answer 2: 7+7+8+7=29\n",
        "</think>\n",
        "<answer>Answer 1 is better</answer>\n",
        "\n",
        "**Note: In the example above, scores and the final answer are placeholders meant only to demonstrate the format. Your actual evaluation should be based on the quality of two given answers.**\n",
        "\n",
        "Your task is provided as follows:\n",
        "Question: [What is the animal doing?]\n",
        "Answer 1: [It is jumping over a fence.]\n",
        "Answer 2: [It is sleeping under a tree.]",
    );
    check(
        Family::Think,
        Task::ImageUnderstanding,
        Mode::Pair,
        QUESTION,
        &[A1, A2],
        Media::Images(1),
        expected,
        "UnifiedReward-Think/inference_llava/image_understanding/infer_cot_image_understanding.py",
    );
}

/// `UnifiedReward-Think/inference_llava/video_understanding/infer_cot_video_understanding.py` (UnifiedReward ff6f520): the prompt as Python evaluates it, the script's own markers.
#[test]
fn think_video_understanding_pair() {
    let expected = concat!(
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "Given a question and a reference video, please evaluate the two provided answers (Answer 1 and Answer 2). Judge them based on the following key dimensions:\n",
        "1. Semantic accuracy: Does the answer align with the visual and temporal content in the video?\n",
        "2. Correctness: Is the answer factually and logically correct?\n",
        "3. Clarity: Is the answer expressed fluently, clearly, and coherently?\n",
        "You are encouraged to consider any additional dimensions if relevant (e.g., temporal reasoning, causal understanding, visual detail, emotional perception, etc.). For each dimension, assign a score from 1 to 10 for both answers and explain briefly. Then, compute and explicitly show the total score as an addition of all dimension scores. Wrap your full reasoning in <think> tags. In the <answer> tag, output exactly one of the following: 'Answer 1 is better' or 'Answer 2 is better'. No additional commentary is allowed in the <answer> section.\n",
        "\n",
        "Example format:\n",
        "<think>\n",
        "1. Semantic accuracy: Answer 1 (8/10) - ...; Answer 2 (9/10) - ...\n",
        "2. Correctness: Answer 1 (7/10) - ...; Answer 2 (6/10) - ...\n",
        "3. Clarity: Answer 1 (9/10) - ...; Answer 2 (8/10) - ...\n",
        "[Additional dimensions if any]: Answer 1 (7/10) - ...; Answer 2 (6/10) - ...\n",
        "Total score:\n",
        "Answer 1: 8+7+9+7=31\n",
        "Answer 2: 9+6+8+6=29\n",
        "</think>\n",
        "<answer>Answer 1 is better</answer>\n",
        "\n",
        "**Note: In the example above, scores and the final answer are placeholders meant only to demonstrate the format. Your actual evaluation should be based on the quality of two given answers.**\n",
        "\n",
        "Your task is provided as follows:\n",
        "Question: What is the animal doing?\n",
        "Answer 1: It is jumping over a fence.\n",
        "Answer 2: It is sleeping under a tree.\n",
    );
    check(
        Family::Think,
        Task::VideoUnderstanding,
        Mode::Pair,
        QUESTION,
        &[A1, A2],
        Media::Images(8),
        expected,
        "UnifiedReward-Think/inference_llava/video_understanding/infer_cot_video_understanding.py",
    );
}

/// `UnifiedReward-Think/inference_qwen/image_generation/qwen_infer_cot_image_generation.py` (UnifiedReward ff6f520): the prompt as Python evaluates it, its media as content items before the text, one marker line each.
#[test]
fn think_qwen_image_generation_pair() {
    let expected = concat!(
        "<image>\n",
        "<image>\n",
        "Given a caption and two images generated based on this caption, please analyze in detail the two provided images. Evaluate them on various dimensions such as semantic consistency (how closely the image content aligns with the caption), aesthetics (composition, color usage, artistic expression), authenticity (realism and attention to detail), and any other factors you deem relevant. For each evaluation dimension, provide a score between 1-10 for both images (e.g., Image 1: 8/10, Image 2: 6/10) and provide a concise rationale for the score. Calculate the total score for each image by summing all dimension scores. Use a chain-of-thought process to detail your reasoning steps, and enclose all your detailed reasoning within <think> and </think> tags. Then, in the <answer> tag, output exactly one of the following strings: 'Image 1 is better' or 'Image 2 is better' based on the total scores. No additional text is allowed in the <answer> section.\n",
        "\n",
        "Example output format:\n",
        "<think>\n",
        "1. Semantic consistency: Image 1 (9/10) - ...; Image 2 (7/10) - ...\n",
        "2. Aesthetics: Image 2 (8/10) - ...; Image 1 (8/10) - ...\n",
        "3. Authenticity: Image 1 (8/10) - ...; Image 2 (5/10) - ...\n",
        "[Additional dimensions if any]: Image 2 (8/10) - ...; Image 1 (6/10) - ...\n",
        "Total score:\n",
        "Image 1: 9+8+8+6=31\n",
        "Image 2: 7+8+5+8=28\n",
        "</think>\n",
        "<answer>Image 1 is better</answer>\n",
        "**Note: In the example above, scores and the final answer are placeholders meant only to demonstrate the format. Your actual evaluation should be based on the quality of two given images.**\n",
        "\n",
        "Your task is provided as follows:\n",
        "Text Caption: [A red fox jumps over a wooden fence at dusk.]",
    );
    check(
        Family::ThinkQwen,
        Task::ImageGeneration,
        Mode::Pair,
        CAPTION,
        NO_ANSWERS,
        Media::Images(2),
        expected,
        "UnifiedReward-Think/inference_qwen/image_generation/qwen_infer_cot_image_generation.py",
    );
}

/// `UnifiedReward-Think/inference_qwen/video_generation/qwen_infer_cot_video_generation.py` (UnifiedReward ff6f520): the prompt as Python evaluates it, its media as content items before the text, one marker line each.
#[test]
fn think_qwen_video_generation_pair() {
    let expected = concat!(
        "<video>\n",
        "<video>\n",
        "Given a caption and two videos generated based on this caption, please analyze in detail the two provided videos. Evaluate them on various dimensions such as semantic consistency (how closely the video content aligns with the caption), temporal coherence (smoothness and logical flow of motion across frames), authenticity (realism and attention to detail), and any other factors you deem relevant. For each evaluation dimension, provide a score between 1-10 for both videos (e.g., Video 1: 8/10, Video 2: 6/10) and provide a concise rationale for the score. Calculate the total score for each video by summing all dimension scores. Use a chain-of-thought process to detail your reasoning steps, and enclose all your detailed reasoning within <think> and </think> tags. Then, in the <answer> tag, output exactly one of the following strings: 'Video 1 is better' or 'Video 2 is better' based on the total scores. No additional text is allowed in the <answer> section.\n",
        "\n",
        "Example output format:\n",
        "<think>\n",
        "1. Semantic consistency: Video 1 (9/10) - ...; Video 2 (7/10) - ...\n",
        "2. Temporal coherence: Video 1 (8/10) - ...; Video 2 (6/10) - ...\n",
        "3. Authenticity: Video 1 (7/10) - ...; Video 2 (5/10) - ...\n",
        "[Additional dimensions if any]: Video 2 (8/10) - ...; Video 1 (6/10) - ...\n",
        "Total score:\n",
        "Video 1: 9+8+7+6=30\n",
        "Video 2: 7+6+5+8=26\n",
        "</think>\n",
        "<answer>Video 1 is better</answer>\n",
        "**Note: In the example above, scores and the final answer are placeholders meant only to demonstrate the format. Your actual evaluation should be based on the quality of two given videos.**\n",
        "\n",
        "Your task is provided as follows:\n",
        "Text Caption: [A red fox jumps over a wooden fence at dusk.]",
    );
    check(
        Family::ThinkQwen,
        Task::VideoGeneration,
        Mode::Pair,
        CAPTION,
        NO_ANSWERS,
        Media::Videos(2),
        expected,
        "UnifiedReward-Think/inference_qwen/video_generation/qwen_infer_cot_video_generation.py",
    );
}

/// `UnifiedReward-Think/inference_qwen/image_understanding/qwen_infer_cot_image_understanding.py` (UnifiedReward ff6f520): the prompt as Python evaluates it, its media as content items before the text, one marker line each.
#[test]
fn think_qwen_image_understanding_pair() {
    let expected = concat!(
        "<image>\n",
        "Given a question and a reference image, please analyze in detail the two provided answers (Answer 1 and Answer 2). Evaluate them based on the following three core dimensions:\n",
        "1. Semantic accuracy: How well the answer reflects the visual content of the image\n",
        "2. Correctness: Whether the answer is logically and factually correct\n",
        "3. Clarity: Whether the answer is clearly and fluently expressed\n",
        "You may also consider additional dimensions if you find them relevant (e.g., reasoning ability, attention to detail, multimodal grounding, etc.). For each dimension, provide a score from 1 to 10 for both answers, and briefly explain your reasoning. Then, compute the total score for each answer by explicitly adding the scores for all dimensions and showing the full calculation. Enclose your full reasoning within <think> and </think> tags. Then, in the <answer> tag, output exactly one of the following: 'Answer 1 is better' or 'Answer 2 is better'. No other text is allowed in the <answer> section.\n",
        "\n",
        "Example format:\n",
        "<think>\n",
        "1. Semantic accuracy: Answer 1 (9/10) - ...; Answer 2 (7/10) - ...\n",
        "2. Correctness: Answer 1 (8/10) - ...; Answer 2 (7/10) - ...\n",
        "3. Clarity: Answer 1 (9/10) - ...; Answer 2 (8/10) - ...\n",
        "[Additional dimensions if any]: Answer 1 (6/10) - ...; Answer 2 (7/10) - ...\n",
        "Total score:\n",
        "Answer 1: 9+8+9+6=32\n",
        "Answer 2: 7+7+8+7=29\n",
        "</think>\n",
        "<answer>Answer 1 is better</answer>\n",
        "\n",
        "**Note: In the example above, scores and the final answer are placeholders meant only to demonstrate the format. Your actual evaluation should be based on the quality of two given answers.**\n",
        "\n",
        "Your task is provided as follows:\n",
        "Question: [What is the animal doing?]\n",
        "Answer 1: [It is jumping over a fence.]\n",
        "Answer 2: [It is sleeping under a tree.]",
    );
    check(
        Family::ThinkQwen,
        Task::ImageUnderstanding,
        Mode::Pair,
        QUESTION,
        &[A1, A2],
        Media::Images(1),
        expected,
        "UnifiedReward-Think/inference_qwen/image_understanding/qwen_infer_cot_image_understanding.py",
    );
}

/// `UnifiedReward-Think/inference_qwen/video_understanding/qwen_infer_cot_video_understanding.py` (UnifiedReward ff6f520): the prompt as Python evaluates it, its media as content items before the text, one marker line each.
#[test]
fn think_qwen_video_understanding_pair() {
    let expected = concat!(
        "<video>\n",
        "Given a question and a reference video, please evaluate the two provided answers (Answer 1 and Answer 2). Judge them based on the following key dimensions:\n",
        "1. Semantic accuracy: Does the answer align with the visual and temporal content in the video?\n",
        "2. Correctness: Is the answer factually and logically correct?\n",
        "3. Clarity: Is the answer expressed fluently, clearly, and coherently?\n",
        "You are encouraged to consider any additional dimensions if relevant (e.g., temporal reasoning, causal understanding, visual detail, emotional perception, etc.). For each dimension, assign a score from 1 to 10 for both answers and explain briefly. Then, compute and explicitly show the total score as an addition of all dimension scores. Wrap your full reasoning in <think> tags. In the <answer> tag, output exactly one of the following: 'Answer 1 is better' or 'Answer 2 is better'. No additional commentary is allowed in the <answer> section.\n",
        "\n",
        "Example format:\n",
        "<think>\n",
        "1. Semantic accuracy: Answer 1 (8/10) - ...; Answer 2 (9/10) - ...\n",
        "2. Correctness: Answer 1 (7/10) - ...; Answer 2 (6/10) - ...\n",
        "3. Clarity: Answer 1 (9/10) - ...; Answer 2 (8/10) - ...\n",
        "[Additional dimensions if any]: Answer 1 (7/10) - ...; Answer 2 (6/10) - ...\n",
        "Total score:\n",
        "Answer 1: 8+7+9+7=31\n",
        "Answer 2: 9+6+8+6=29\n",
        "</think>\n",
        "<answer>Answer 1 is better</answer>\n",
        "\n",
        "**Note: In the example above, scores and the final answer are placeholders meant only to demonstrate the format. Your actual evaluation should be based on the quality of two given answers.**\n",
        "\n",
        "Your task is provided as follows:\n",
        "Question: What is the animal doing?\n",
        "Answer 1: It is jumping over a fence.\n",
        "Answer 2: It is sleeping under a tree.\n",
    );
    check(
        Family::ThinkQwen,
        Task::VideoUnderstanding,
        Mode::Pair,
        QUESTION,
        &[A1, A2],
        Media::Videos(1),
        expected,
        "UnifiedReward-Think/inference_qwen/video_understanding/qwen_infer_cot_video_understanding.py",
    );
}

/// `UnifiedReward-Think/inference_qwen/UnifiedReward-Think-qwen3-inference/qwen3_infer_cot_image_generation.py` (UnifiedReward ff6f520): the prompt as Python evaluates it, its media as content items before the text, one marker line each.
#[test]
fn think_qwen3vl_image_generation_pair() {
    let expected = concat!(
        "<image>\n",
        "<image>\n",
        "You are an objective and precise evaluator for image quality comparison. I will provide you with a text caption and two images generated based on this caption. You must analyze the two images carefully and determine which image is better.\n",
        "\n",
        "        Evaluation procedure:\n",
        "\n",
        "        1. The caption for the generated images is: 「A red fox jumps over a wooden fence at dusk.」. You must evaluate the two images across these core dimensions:\n",
        "        - Semantic consistency (how closely the image content aligns with the caption)\n",
        "        - Aesthetics (composition, color usage, artistic expression)\n",
        "        - Authenticity (realism and attention to detail)\n",
        "\n",
        "        2. You are also encouraged to add up to two additional evaluation dimensions if they are relevant to the specific caption or images (e.g., creativity, spatial layout, fine-grained detail). If no extra dimensions are relevant, just keep the three core dimensions.\n",
        "\n",
        "        3. For each evaluation dimension:\n",
        "        - Provide a score between 1–10 for both Image 1 and Image 2\n",
        "        - Provide a short rationale for each score (2–5 short sentences)\n",
        "        - The evaluation must follow exactly this format with line breaks and indentation:\n",
        "            Dimension name: \n",
        "                Image 1 (x/10) - rationale; \n",
        "                Image 2 (y/10) - rationale\n",
        "\n",
        "        4. After evaluating all dimensions, calculate the total score for each image and show the calculation explicitly, following this exact format:\n",
        "            Total score:\n",
        "            Image 1: x+x+x=total\n",
        "            Image 2: y+y+y=total\n",
        "\n",
        "        5. Wrap all reasoning and scoring strictly within <think> and </think> tags.\n",
        "\n",
        "        6. After </think>, output the final judgment strictly inside <answer> and </answer> tags, containing only one of:\n",
        "        - Image 1 is better\n",
        "        - Image 2 is better\n",
        "\n",
        "        Constraints:\n",
        "        - You must strictly follow the line breaks, indentation, and formatting shown in the example below.\n",
        "        - Do not merge multiple dimensions into one line. Each dimension must follow the 3-line block format shown below.\n",
        "        - Do not use Markdown formatting, bullet points, bold text, or headings.\n",
        "        - Do not output explanations outside <think> and <answer>.\n",
        "        - The <answer> tag must contain only the final string with no extra words.\n",
        "\n",
        "        Required output format:\n",
        "\n",
        "        <think>\n",
        "        1. Semantic consistency: \n",
        "            Image 1 (9/10) - ...; \n",
        "            Image 2 (7/10) - ...\n",
        "        2. Aesthetics: \n",
        "            Image 1 (8/10) - ...; \n",
        "            Image 2 (8/10) - ...\n",
        "        3. Authenticity: \n",
        "            Image 1 (8/10) - ...; \n",
        "            Image 2 (5/10) - ...\n",
        "        [Additional dimension if any]: \n",
        "            Image 1 (7/10) - ...; \n",
        "            Image 2 (8/10) - ...\n",
        "        [Additional dimension if any]: \n",
        "            Image 1 (6/10) - ...; \n",
        "            Image 2 (7/10) - ...\n",
        "        Total score:\n",
        "        Image 1: 9+8+8+7+6=38\n",
        "        Image 2: 7+8+5+8+7=35\n",
        "        </think>\n",
        "        <answer>Image 1 is better</answer>\n",
        "\n",
        "        Note: The example above is only to illustrate the exact format (line breaks, indentation, symbols, and style). Your actual evaluation must follow this format exactly, but be based on the given caption and images.\n",
        "        ",
    );
    check(
        Family::ThinkQwen3vl,
        Task::ImageGeneration,
        Mode::Pair,
        CAPTION,
        NO_ANSWERS,
        Media::Images(2),
        expected,
        "UnifiedReward-Think/inference_qwen/UnifiedReward-Think-qwen3-inference/qwen3_infer_cot_image_generation.py",
    );
}

/// `UnifiedReward-Think/inference_qwen/UnifiedReward-Think-qwen3-inference/qwen3_infer_cot_video_generation.py` (UnifiedReward ff6f520): the prompt as Python evaluates it, its media as content items before the text, one marker line each.
#[test]
fn think_qwen3vl_video_generation_pair() {
    let expected = concat!(
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "You are an objective and precise evaluator for video quality comparison. I will provide you with a text caption and a sequence of consecutive frames extracted from two generated videos based on this caption. The first half of the frames belong to Video 1, and the second half of the frames belong to Video 2. You must analyze these two videos carefully and determine which video is better.\n",
        "\n",
        "        Instructions (MUST follow strictly):\n",
        "        1. All reasoning, analysis, explanations, and scores MUST be written strictly inside <think> and </think> tags.\n",
        "        2. The <think> block must start immediately with the first evaluation dimension. Do NOT include any introduction, notes, or explanations before the first numbered dimension.\n",
        "        3. After </think>, output the final judgment strictly inside <answer> and </answer> tags, containing only one of:\n",
        "        - Video 1 is better\n",
        "        - Video 2 is better\n",
        "        4. Do NOT output anything outside <think> and <answer>. No extra explanations, notes, or prefaces.\n",
        "\n",
        "        Evaluation procedure:\n",
        "\n",
        "        1. The caption for the generated videos is: 「A red fox jumps over a wooden fence at dusk.」. The provided frames represent two candidate videos:\n",
        "        - First half: Video 1\n",
        "        - Second half: Video 2\n",
        "\n",
        "        2. You must evaluate the two videos across these core dimensions:\n",
        "        - Semantic consistency (how closely the video content aligns with the caption)\n",
        "        - Temporal coherence (smoothness and logical flow of motion across frames)\n",
        "        - Authenticity (realism and attention to detail)\n",
        "\n",
        "        3. You may also add up to two additional evaluation dimensions if they are clearly relevant (e.g., camera stability, lighting consistency, creativity). If no extra dimensions are relevant, keep only the three core dimensions.\n",
        "\n",
        "        4. For each evaluation dimension:\n",
        "        - Provide a score between 1–10 for both Video 1 and Video 2.\n",
        "        - Provide a short rationale for each score (2–5 short sentences).\n",
        "        - Each dimension must follow exactly this 3-line block format with numbering, line breaks, and indentation:\n",
        "            N. Dimension name: \n",
        "                Video 1 (x/10) - rationale; \n",
        "                Video 2 (y/10) - rationale\n",
        "\n",
        "        5. After evaluating all dimensions, calculate the total score for each video and show the calculation explicitly, following this exact format:\n",
        "            Total score:\n",
        "            Video 1: x+x+x(+...)=total\n",
        "            Video 2: y+y+y(+...)=total\n",
        "\n",
        "        6. All reasoning, analysis, scoring, and totals must be written strictly inside <think> and </think> tags. Nothing related to reasoning or scores may appear outside <think>.\n",
        "\n",
        "        Required output format (follow this exactly, including line breaks and indentation):\n",
        "\n",
        "        <think>\n",
        "        1. Semantic consistency: \n",
        "            Video 1 (9/10) - ...; \n",
        "            Video 2 (7/10) - ...\n",
        "        2. Temporal coherence: \n",
        "            Video 1 (8/10) - ...; \n",
        "            Video 2 (6/10) - ...\n",
        "        3. Authenticity: \n",
        "            Video 1 (7/10) - ...; \n",
        "            Video 2 (5/10) - ...\n",
        "        [Additional dimension if any]: \n",
        "            Video 1 (8/10) - ...; \n",
        "            Video 2 (6/10) - ...\n",
        "        [Additional dimension if any]: \n",
        "            Video 1 (7/10) - ...; \n",
        "            Video 2 (7/10) - ...\n",
        "        Total score:\n",
        "        Video 1: 9+8+7+8+7=39\n",
        "        Video 2: 7+6+5+6+7=31\n",
        "        </think>\n",
        "        <answer>Video 1 is better</answer>\n",
        "\n",
        "        Note: The example above is only to illustrate the exact format (numbering, line breaks, indentation, and style). Your actual evaluation must follow this format exactly, but be based on the given caption and the two provided videos (frames divided into two halves).\n",
        "        ",
    );
    check(
        Family::ThinkQwen3vl,
        Task::VideoGeneration,
        Mode::Pair,
        CAPTION,
        NO_ANSWERS,
        Media::Images(16),
        expected,
        "UnifiedReward-Think/inference_qwen/UnifiedReward-Think-qwen3-inference/qwen3_infer_cot_video_generation.py",
    );
}

/// `UnifiedReward-Think/inference_qwen/UnifiedReward-Think-qwen3-inference/qwen3_infer_cot_image_understanding.py` (UnifiedReward ff6f520): the prompt as Python evaluates it, its media as content items before the text, one marker line each.
#[test]
fn think_qwen3vl_image_understanding_pair() {
    let expected = concat!(
        "<image>\n",
        "You are an objective and precise evaluator for image-based question answering. I will provide you with a question, a reference image, and two candidate answers. You must analyze the two answers carefully and determine which one is better.\n",
        "\n",
        "        Instructions (MUST follow strictly):\n",
        "        1. All reasoning, analysis, explanations, and scores MUST be written strictly inside <think> and </think> tags. \n",
        "        2. The <think> block must start immediately with the first evaluation dimension. Do NOT include any introduction, notes, or explanations before the first numbered dimension.\n",
        "        3. After </think>, output the final judgment strictly inside <answer> and </answer> tags, containing only one of:\n",
        "        - Answer 1 is better\n",
        "        - Answer 2 is better\n",
        "        4. Do NOT output anything outside <think> and <answer>. No extra explanations, notes, or prefaces.\n",
        "\n",
        "        Evaluation procedure:\n",
        "        1. The question is: 「What is the animal doing?」. The reference image is provided. The two candidate answers are:\n",
        "        Answer 1: 「It is jumping over a fence.」\n",
        "Answer 2: 「It is sleeping under a tree.」\n",
        "\n",
        "2. You must evaluate the two answers across these core dimensions:\n",
        "        - Semantic accuracy (how well the answer reflects the visual content of the image)\n",
        "        - Correctness (whether the answer is logically and factually correct)\n",
        "        - Clarity (whether the answer is clearly and fluently expressed)\n",
        "\n",
        "        3. You are also encouraged to add up to two additional evaluation dimensions if they are relevant (e.g., reasoning ability, attention to detail, multimodal grounding). If no extra dimensions are relevant, just keep the three core dimensions.\n",
        "\n",
        "        4. For each evaluation dimension:\n",
        "        - Provide a score between 1–10 for both Answer 1 and Answer 2\n",
        "        - Provide a short rationale for each score (2–5 short sentences)\n",
        "        - Each dimension must follow exactly this 3-line block format with numbering, line breaks, and indentation:\n",
        "            N. Dimension name: \n",
        "                Answer 1 (x/10) - rationale; \n",
        "                Answer 2 (y/10) - rationale\n",
        "\n",
        "        5. After evaluating all dimensions, calculate the total score for each answer and show the calculation explicitly, following this exact format:\n",
        "            Total score:\n",
        "            Answer 1: x+x+x=total\n",
        "            Answer 2: y+y+y=total\n",
        "\n",
        "        Required output format:\n",
        "\n",
        "        <think>\n",
        "        1. Semantic accuracy: \n",
        "            Answer 1 (9/10) - ...; \n",
        "            Answer 2 (7/10) - ...\n",
        "        2. Correctness: \n",
        "            Answer 1 (8/10) - ...; \n",
        "            Answer 2 (7/10) - ...\n",
        "        3. Clarity: \n",
        "            Answer 1 (9/10) - ...; \n",
        "            Answer 2 (8/10) - ...\n",
        "        [Additional dimension if any]: \n",
        "            Answer 1 (6/10) - ...; \n",
        "            Answer 2 (7/10) - ...\n",
        "        [Additional dimension if any]: \n",
        "            Answer 1 (9/10) - ...; \n",
        "            Answer 2 (7/10) - ...\n",
        "        Total score:\n",
        "        Answer 1: 9+8+9+6+9=41\n",
        "        Answer 2: 7+7+8+7+7=36\n",
        "        </think>\n",
        "        <answer>Answer 1 is better</answer>\n",
        "\n",
        "        Note: The example above is only to illustrate the exact format (numbering, line breaks, indentation, and style). Your actual evaluation must follow this format exactly, but be based on the given question, reference image, and candidate answers.\n",
        "        ",
    );
    check(
        Family::ThinkQwen3vl,
        Task::ImageUnderstanding,
        Mode::Pair,
        QUESTION,
        &[A1, A2],
        Media::Images(1),
        expected,
        "UnifiedReward-Think/inference_qwen/UnifiedReward-Think-qwen3-inference/qwen3_infer_cot_image_understanding.py",
    );
}

/// `UnifiedReward-Think/inference_qwen/UnifiedReward-Think-qwen3-inference/qwen3_infer_cot_video_understanding.py` (UnifiedReward ff6f520): the prompt as Python evaluates it, its media as content items before the text, one marker line each.
#[test]
fn think_qwen3vl_video_understanding_pair() {
    let expected = concat!(
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "You are an objective and precise evaluator for video understanding. I will provide you with a question, a reference video, and two candidate answers. You must analyze carefully and determine which answer is better.\n",
        "\n",
        "        Instructions (MUST follow strictly):\n",
        "        1. All reasoning, analysis, explanations, and scores MUST be written strictly inside <think> and </think> tags.\n",
        "        2. The <think> block must start immediately with the first evaluation dimension. Do NOT include any introduction, notes, or explanations before the first numbered dimension.\n",
        "        3. After </think>, output the final judgment strictly inside <answer> and </answer> tags, containing only one of:\n",
        "        - Answer 1 is better\n",
        "        - Answer 2 is better\n",
        "        4. Do NOT output anything outside <think> and <answer>. No extra explanations, notes, or prefaces.\n",
        "\n",
        "        Evaluation procedure:\n",
        "\n",
        "        1. The task is to evaluate two answers given a reference video and the following question: 「What is the animal doing?」. The provided answers are:\n",
        "        - Answer 1: It is jumping over a fence.\n",
        "        - Answer 2: It is sleeping under a tree.\n",
        "\n",
        "        2. You must evaluate the two answers across these core dimensions:\n",
        "        - Semantic accuracy (does the answer align with the visual and temporal content in the video?)\n",
        "        - Correctness (is the answer factually and logically correct?)\n",
        "        - Clarity (is the answer expressed fluently, clearly, and coherently?)\n",
        "\n",
        "        3. You may also add up to two additional evaluation dimensions if they are clearly relevant (e.g., temporal reasoning, causal understanding, visual detail, emotional perception). If no extra dimensions are relevant, keep only the three core dimensions.\n",
        "\n",
        "        4. For each evaluation dimension:\n",
        "        - Provide a score between 1–10 for both Answer 1 and Answer 2.\n",
        "        - Provide a short rationale for each score (2–5 short sentences).\n",
        "        - Each dimension must follow exactly this 3-line block format with numbering, line breaks, and indentation:\n",
        "            N. Dimension name: \n",
        "                Answer 1 (x/10) - rationale; \n",
        "                Answer 2 (y/10) - rationale\n",
        "\n",
        "        5. After evaluating all dimensions, calculate the total score for each answer and show the calculation explicitly, following this exact format:\n",
        "            Total score:\n",
        "            Answer 1: x+x+x(+...)=total\n",
        "            Answer 2: y+y+y(+...)=total\n",
        "\n",
        "        6. All reasoning, analysis, scoring, and totals must be written strictly inside <think> and </think> tags. Nothing related to reasoning or scores may appear outside <think>.\n",
        "\n",
        "        Required output format (follow this exactly, including line breaks and indentation):\n",
        "\n",
        "        <think>\n",
        "        1. Semantic accuracy: \n",
        "            Answer 1 (9/10) - ...; \n",
        "            Answer 2 (7/10) - ...\n",
        "        2. Correctness: \n",
        "            Answer 1 (8/10) - ...; \n",
        "            Answer 2 (6/10) - ...\n",
        "        3. Clarity: \n",
        "            Answer 1 (9/10) - ...; \n",
        "            Answer 2 (8/10) - ...\n",
        "        [Additional dimension if any]: \n",
        "            Answer 1 (7/10) - ...; \n",
        "            Answer 2 (6/10) - ...\n",
        "        [Additional dimension if any]: \n",
        "            Answer 1 (8/10) - ...; \n",
        "            Answer 2 (7/10) - ...\n",
        "        Total score:\n",
        "        Answer 1: 9+8+9+7+8=41\n",
        "        Answer 2: 7+6+8+6+7=34\n",
        "        </think>\n",
        "        <answer>Answer 1 is better</answer>\n",
        "\n",
        "        Note: The example above is only to illustrate the exact format (numbering, line breaks, indentation, and style). Your actual evaluation must follow this format exactly, but be based on the given question, reference video, and candidate answers.\n",
        "        ",
    );
    check(
        Family::ThinkQwen3vl,
        Task::VideoUnderstanding,
        Mode::Pair,
        QUESTION,
        &[A1, A2],
        Media::Images(8),
        expected,
        "UnifiedReward-Think/inference_qwen/UnifiedReward-Think-qwen3-inference/qwen3_infer_cot_video_understanding.py",
    );
}

#[test]
fn families_without_a_prompt_refuse_by_name() {
    let err = user_turn(
        Family::ThinkQwen,
        Task::ImageGeneration,
        Mode::Point,
        CAPTION,
        NO_ANSWERS,
        Media::Images(1),
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::Input(ref m) if m.contains("think-qwen") && m.contains("pairs only")),
        "{err}"
    );
    let err = user_turn(
        Family::V2,
        Task::VideoUnderstanding,
        Mode::Pair,
        QUESTION,
        &[A1, A2],
        Media::Images(8),
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::Input(ref m) if m.contains("2.0") && m.contains("--template-family qwen")),
        "{err}"
    );
}

#[test]
fn acs_families_keep_their_base_prompts_elsewhere() {
    for (acs, base) in [
        (Family::LlavaAcs, Family::Llava),
        (Family::QwenAcs, Family::Qwen),
    ] {
        for task in Task::ALL {
            for mode in [Mode::Pair, Mode::Point] {
                if (task, mode) == (Task::ImageGeneration, Mode::Point) {
                    continue;
                }
                let a = PromptTemplate::builtin(acs, task, mode).unwrap();
                let b = PromptTemplate::builtin(base, task, mode).unwrap();
                let answers: &[&str] = match (task.is_generation(), mode) {
                    (true, _) => &[],
                    (false, Mode::Pair) => &[A1, A2],
                    (false, Mode::Point) => &[A1],
                };
                assert_eq!(
                    a.render(QUESTION, answers, Media::Images(2)).unwrap(),
                    b.render(QUESTION, answers, Media::Images(2)).unwrap()
                );
                assert_eq!(a.source(), b.source());
            }
        }
    }
}

#[test]
fn family_names_parse_and_print() {
    for family in Family::ALL {
        assert_eq!(family.as_str().parse::<Family>().unwrap(), family);
        assert_eq!(
            serde_json::to_string(&family).unwrap(),
            format!("\"{}\"", family.as_str())
        );
    }
    assert_eq!("v2".parse::<Family>().unwrap(), Family::V2);
    let err = "edit".parse::<Family>().unwrap_err().to_string();
    assert!(err.contains("think-qwen3vl"), "{err}");
}
