//! The built-in prompts against the UnifiedReward reference scripts, text for text, and the
//! chat wrapping. The expected strings are what the scripts' Python expressions evaluate to for
//! the inputs below (video frames as images for the LLaVA scripts: 16 for a pair, 8 for a
//! point, as they sample).

use std::path::PathBuf;

use unireward_models::judge::{
    user_turn, ChatTemplate, Family, Media, Mode, PromptTemplate, Task, SYSTEM_PROMPT,
};
use unireward_models::Error;

const CAPTION: &str = "A red fox jumps over a wooden fence at dusk.";
const QUESTION: &str = "What is the animal doing?";
const A1: &str = "It is jumping over a fence.";
const A2: &str = "It is sleeping under a tree.";
const NO_ANSWERS: &[&str] = &[];

fn check(
    family: Family,
    task: Task,
    mode: Mode,
    prompt: &str,
    answers: &[&str],
    media: Media,
    expected: &str,
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
    let source = PromptTemplate::builtin(family, task, mode)
        .unwrap()
        .source()
        .to_string();
    assert!(
        source.ends_with(".py") || source.ends_with("@ed52f98c"),
        "{source}"
    );
}

fn golden_dir() -> PathBuf {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/golden"));
    assert!(dir.is_dir(), "golden data not found at {}", dir.display());
    dir
}

#[test]
fn llava_image_generation_pair() {
    let expected = concat!(
        "<image>\n",
        " <image>\n",
        "You are given a text caption and two generated images based on that caption. Your task is to evaluate and compare these images based on two key criteria:\n",
        "1. Alignment with the Caption: Assess how well each image aligns with the provided caption. Consider the accuracy of depicted objects, their relationships, and attributes as described in the caption.\n",
        "2. Overall Image Quality: Examine the visual quality of each image, including clarity, detail preservation, color accuracy, and overall aesthetic appeal.\n",
        "Compare both images using the above criteria and select the one that better aligns with the caption while exhibiting superior visual quality.\n",
        "Provide a clear conclusion such as \"Image 1 is better than Image 2.\", \"Image 2 is better than Image 1.\" and \"Both images are equally good.\"\n",
        "Your task is provided as follows:\n",
        "Text Caption: [A red fox jumps over a wooden fence at dusk.]",
    );
    check(
        Family::Llava,
        Task::ImageGeneration,
        Mode::Pair,
        CAPTION,
        NO_ANSWERS,
        Media::Images(2),
        expected,
    );
}

#[test]
fn llava_image_generation_point() {
    let expected = concat!(
        "<image>\n",
        "You are given a text caption and a generated image based on that caption. Your task is to evaluate this image based on two key criteria:\n",
        "1. Alignment with the Caption: Assess how well this image aligns with the provided caption. Consider the accuracy of depicted objects, their relationships, and attributes as described in the caption.\n",
        "2. Overall Image Quality: Examine the visual quality of this image, including clarity, detail preservation, color accuracy, and overall aesthetic appeal.\n",
        "Extract key elements from the provided text caption, evaluate their presence in the generated image using the format: 'element (type): value' (where value=0 means not generated, and value=1 means generated), and assign a score from 1 to 5 after 'Final Score:'.\n",
        "Your task is provided as follows:\n",
        "Text Caption: [A red fox jumps over a wooden fence at dusk.]",
    );
    check(
        Family::Llava,
        Task::ImageGeneration,
        Mode::Point,
        CAPTION,
        NO_ANSWERS,
        Media::Images(1),
        expected,
    );
}

#[test]
fn llava_video_generation_pair() {
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
        "Suppose you are an expert in judging and evaluating the quality of AI-generated videos. You are given a text caption and the frames of two generated videos based on that caption. Your task is to evaluate and compare two videos based on two key criteria:\n",
        "1. Alignment with the Caption: Assess how well each video aligns with the provided caption. Consider the accuracy of depicted objects, their relationships, and attributes as described in the caption.\n",
        "2. Overall Video Quality: Examine the visual quality of each video, including clarity, detail preservation, color accuracy, and overall aesthetic appeal.\n",
        "Compare both videos using the above criteria and select the one that better aligns with the caption while exhibiting superior visual quality.\n",
        "Provide a clear conclusion such as \"Video 1 is better than Video 2.\", \"Video 2 is better than Video 1.\" and \"Both videos are equally good.\"\n",
        "Your task is provided as follows:\n",
        "Text Caption: [A red fox jumps over a wooden fence at dusk.]",
    );
    check(
        Family::Llava,
        Task::VideoGeneration,
        Mode::Pair,
        CAPTION,
        NO_ANSWERS,
        Media::Images(16),
        expected,
    );
}

#[test]
fn llava_video_generation_point() {
    let expected = concat!(
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "Suppose you are an expert in judging and evaluating the quality of AI-generated videos, please watch the frames of a given video and see the text prompt for generating the video.\n",
        "Then give scores from 5 different dimensions:\n",
        "(1) visual quality: the quality of the video in terms of clearness, resolution, brightness, and color\n",
        "(2) temporal consistency, the consistency of objects or humans in video\n",
        "(3) dynamic degree, the degree of dynamic changes\n",
        "(4) text-to-video alignment, the alignment between the text prompt and the video content\n",
        "(5) factual consistency, the consistency of the video content with the common-sense and factual knowledge\n",
        "\n",
        "For each dimension, output a number from [1,2,3,4], \n",
        "in which '1' means 'Bad', '2' means 'Average', '3' means 'Good', \n",
        "'4' means 'Real' or 'Perfect' (the video is like a real video)\n",
        "Finally, based on above 5 dimensions, assign a score from 1 to 10 after 'Final Score:'\n",
        "Here is an output example:\n",
        "visual quality: 4\n",
        "temporal consistency: 4\n",
        "dynamic degree: 3\n",
        "text-to-video alignment: 1\n",
        "factual consistency: 2\n",
        "Final Score: 6\n",
        "\n",
        "**Note: In the example above, scores are placeholders meant only to demonstrate the format. Your actual evaluation should be based on the quality of the given video.**\n",
        "Your task is provided as follows: Text Prompt: [A red fox jumps over a wooden fence at dusk.]",
    );
    check(
        Family::Llava,
        Task::VideoGeneration,
        Mode::Point,
        CAPTION,
        NO_ANSWERS,
        Media::Images(8),
        expected,
    );
}

#[test]
fn llava_image_understanding_pair() {
    let expected = concat!(
        "<image>\n",
        "You are given an image and a question related to it. Your job is to evaluate the two responses based on these five factors:\n",
        "\n",
        "1. Accuracy of Object Descriptions: Review how accurately the objects are described in the responses, ensuring they match those in the ground truth. Be mindful of irrelevant or incorrect objects being mentioned.\n",
        "\n",
        "2. Relationship Between Objects: Check if the response properly describes how the objects relate to each other, reflecting their actual positions or interactions, as seen in the image.\n",
        "\n",
        "3. Description of Attributes: Assess how well the response captures the attributes (e.g., size, color, shape) of the objects in the image, in line with the ground truth.\n",
        "\n",
        "4. Helpfulness: Consider whether the response offers useful information that enhances the understanding of the image. Does it add context or provide extra insights? Also, evaluate whether it follows the instructions given in the prompt.\n",
        "\n",
        "5. Ethical Concerns: Review the response to ensure it avoids sensitive, harmful, or inappropriate content. The response should be fair, respect privacy, and be free of bias or offensive material.\n",
        "\n",
        "After evaluating both answers, determine which one is better based on these factors and clearly state your decision, such as 'Answer 1 is better' or 'Answer 2 is better.'\n",
        "\n",
        "Question: What is the animal doing?\n",
        "Answer 1: It is jumping over a fence.\n",
        "Answer 2: It is sleeping under a tree.\n",
    );
    check(
        Family::Llava,
        Task::ImageUnderstanding,
        Mode::Pair,
        QUESTION,
        &[A1, A2],
        Media::Images(1),
        expected,
    );
}

#[test]
fn llava_image_understanding_point() {
    let expected = concat!(
        "<image>\n",
        "You are provided with an image and a question for this image. Please review the corresponding response based on the following 5 factors: 1. Accuracy in Object Description: Evaluate the accuracy of the descriptions concerning the objects mentioned in the ground truth answer. Responses should minimize the mention of objects not present in the ground truth answer, and inaccuracies in the description of existing objects. 2. Accuracy in Depicting Relationships: Consider how accurately the relationships between objects are described compared to the ground truth answer. Rank higher the responses that least misrepresent these relationships. 3. Accuracy in Describing Attributes: Assess the accuracy in the depiction of objects' attributes compared to the ground truth answer. Responses should avoid inaccuracies in describing the characteristics of the objects present. 4. Helpfulness: Consider whether the generated text provides valuable insights, additional context, or relevant information that contributes positively to the user's comprehension of the image. Assess whether the language model accurately follows any specific instructions or guidelines provided in the prompt. Evaluate the overall contribution of the response to the user experience. 5. Ethical Considerations: - Identify if the model gives appropriate warnings or avoids providing advice on sensitive topics, such as medical images. Ensure the model refrains from stating identification information in the image that could compromise personal privacy. Evaluate the language model's responses for fairness in treating individuals and communities, avoiding biases. Assess for harmfulness, ensuring the avoidance of content that may potentially incite violence, be classified as NSFW (Not Safe For Work), or involve other unmentioned ethical considerations. Consider any content that could be deemed offensive, inappropriate, or ethically problematic beyond the explicitly listed criteria. From 0 to 100, how much do you rate for this response in terms of the correct and comprehensive description of the image?\n",
        "Do not dominant the rating by a single attribute such as recognition correctness, but a overall rating on the above 5 factors.\n",
        "Provide a few lines for explanation and the rate number at last after \"Final Score:\".\n",
        "Your task is provided as follows:\n",
        "Question: [What is the animal doing?]\n",
        "Response: [It is jumping over a fence.]\n",
    );
    check(
        Family::Llava,
        Task::ImageUnderstanding,
        Mode::Point,
        QUESTION,
        &[A1],
        Media::Images(1),
        expected,
    );
}

#[test]
fn llava_video_understanding_pair() {
    let expected = concat!(
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "Please analyze the following video and question, then determine which of the two provided answers is better\n",
        "Question: What is the animal doing?\n",
        "Answer 1: It is jumping over a fence.\n",
        "Answer 2: It is sleeping under a tree.\n",
        "Please evaluate both answers based on the following criteria:\n",
        "1. Accuracy: How well does the answer align with the visual information in the video?\n",
        "2. Completeness: Does the answer fully address all aspects of the question?\n",
        "3. Clarity: Is the answer easy to understand and well-articulated?\n",
        "4. Relevance: Does the answer directly relate to the question and the video?\n",
        "After your evaluation, please:\n",
        "1. Explain your reasoning for each criterion.\n",
        "2. Provide an overall judgment on which answer is better (Answer 1 or Answer 2). For example: \"Overall Judgment: Answer 1 is better than Answer 2.\"\n",
        "Your response should be structured and detailed, demonstrating your understanding of both the visual and textual elements of the task. You have to choose the better of the two answers and can't say that both answers are equally good.",
    );
    check(
        Family::Llava,
        Task::VideoUnderstanding,
        Mode::Pair,
        QUESTION,
        &[A1, A2],
        Media::Images(8),
        expected,
    );
}

#[test]
fn llava_video_understanding_point() {
    let expected = concat!(
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "<image>\n",
        "You are provided with a video and a question for this video. Please review the corresponding response based on the following 5 factors: 1. Accuracy in Object Description: Evaluate the accuracy of the descriptions concerning the objects mentioned in the ground truth answer. Responses should minimize the mention of objects not present in the ground truth answer, and inaccuracies in the description of existing objects. 2. Accuracy in Depicting Relationships: Consider how accurately the relationships between objects are described compared to the ground truth answer. Rank higher the responses that least misrepresent these relationships. 3. Accuracy in Describing Attributes: Assess the accuracy in the depiction of objects' attributes compared to the ground truth answer. Responses should avoid inaccuracies in describing the characteristics of the objects present. 4. Helpfulness: Consider whether the generated text provides valuable insights, additional context, or relevant information that contributes positively to the user's comprehension of the video. Assess whether the language model accurately follows any specific instructions or guidelines provided in the prompt. Evaluate the overall contribution of the response to the user experience. 5. Ethical Considerations: - Identify if the model gives appropriate warnings or avoids providing advice on sensitive topics, such as medical videos. Ensure the model refrains from stating identification information in the video that could compromise personal privacy. Evaluate the language model's responses for fairness in treating individuals and communities, avoiding biases. Assess for harmfulness, ensuring the avoidance of content that may potentially incite violence, be classified as NSFW (Not Safe For Work), or involve other unmentioned ethical considerations. Consider any content that could be deemed offensive, inappropriate, or ethically problematic beyond the explicitly listed criteria.\n",
        "You need to assign a score from 1 to 5 based on the above 5 factors for the response after 'Final Score:'.\n",
        "Your task is provided as follows:\n",
        "Question: [What is the animal doing?]\n",
        "Response: [It is jumping over a fence.]",
    );
    check(
        Family::Llava,
        Task::VideoUnderstanding,
        Mode::Point,
        QUESTION,
        &[A1],
        Media::Images(8),
        expected,
    );
}

#[test]
fn qwen_image_generation_pair() {
    let expected = concat!(
        "<image>\n",
        "<image>\n",
        "You are given a text caption and two generated images based on that caption. Your task is to evaluate and compare these images based on two key criteria:\n",
        "1. Alignment with the Caption: Assess how well each image aligns with the provided caption. Consider the accuracy of depicted objects, their relationships, and attributes as described in the caption.\n",
        "2. Overall Image Quality: Examine the visual quality of each image, including clarity, detail preservation, color accuracy, and overall aesthetic appeal.\n",
        "Compare both images using the above criteria and select the one that better aligns with the caption while exhibiting superior visual quality.\n",
        "Provide a clear conclusion such as \"Image 1 is better.\", \"Image 2 is better.\" and \"Both images are equally good.\"\n",
        "Your task is provided as follows:\n",
        "Text Caption: [A red fox jumps over a wooden fence at dusk.]",
    );
    check(
        Family::Qwen,
        Task::ImageGeneration,
        Mode::Pair,
        CAPTION,
        NO_ANSWERS,
        Media::Images(2),
        expected,
    );
}

#[test]
fn qwen_image_generation_point() {
    let expected = concat!(
        "<image>\n",
        "You are given a text caption and a generated image based on that caption. Your task is to evaluate this image based on two key criteria:\n",
        "1. Alignment with the Caption: Assess how well this image aligns with the provided caption. Consider the accuracy of depicted objects, their relationships, and attributes as described in the caption.\n",
        "2. Overall Image Quality: Examine the visual quality of this image, including clarity, detail preservation, color accuracy, and overall aesthetic appeal.\n",
        "Extract key elements from the provided text caption, evaluate their presence in the generated image using the format: 'element (type): value' (where value=0 means not generated, and value=1 means generated), and assign a score from 1 to 5 after 'Final Score:'.\n",
        "Your task is provided as follows:\n",
        "Text Caption: [A red fox jumps over a wooden fence at dusk.]",
    );
    check(
        Family::Qwen,
        Task::ImageGeneration,
        Mode::Point,
        CAPTION,
        NO_ANSWERS,
        Media::Images(1),
        expected,
    );
}

#[test]
fn qwen_video_generation_pair() {
    let expected = concat!(
        "<video>\n",
        "<video>\n",
        "Imagine you are an expert tasked with evaluating AI-generated videos. You are provided with a text caption and two videos generated based on that caption. Your job is to assess and compare these videos based on the following two main factors:\n",
        "\n",
        "1. Caption Alignment: Evaluate how closely each video matches the description provided in the caption. Pay attention to the accuracy of objects depicted, their relationships, and any attributes described in the caption.\n",
        "\n",
        "2. Overall Video Quality: Look at the overall visual appeal of each video, considering clarity, the level of detail, color accuracy, and how aesthetically pleasing the video is.\n",
        "\n",
        "Using these factors, compare the two videos and determine which one better reflects the caption and exhibits better visual quality.\n",
        "\n",
        "Give your final judgment, such as 'Video 1 is better,' 'Video 2 is better,' or 'Both videos are equally good.'\n",
        "\n",
        "Your task is as follows:\n",
        "Text Caption: [A red fox jumps over a wooden fence at dusk.]\n",
    );
    check(
        Family::Qwen,
        Task::VideoGeneration,
        Mode::Pair,
        CAPTION,
        NO_ANSWERS,
        Media::Videos(2),
        expected,
    );
}

#[test]
fn qwen_video_generation_point() {
    let expected = concat!(
        "<video>\n",
        "Suppose you are an expert in judging and evaluating the quality of AI-generated videos, please watch the frames of a given video and see the text prompt for generating the video.\n",
        "Then give scores from 5 different dimensions:\n",
        "(1) visual quality: the quality of the video in terms of clearness, resolution, brightness, and color\n",
        "(2) temporal consistency, the consistency of objects or humans in video\n",
        "(3) dynamic degree, the degree of dynamic changes\n",
        "(4) text-to-video alignment, the alignment between the text prompt and the video content\n",
        "(5) factual consistency, the consistency of the video content with the common-sense and factual knowledge\n",
        "\n",
        "For each dimension, output a number from [1,2,3,4], \n",
        "in which '1' means 'Bad', '2' means 'Average', '3' means 'Good', \n",
        "'4' means 'Real' or 'Perfect' (the video is like a real video)\n",
        "Finally, based on above 5 dimensions, assign a score from 1 to 10 after 'Final Score:'\n",
        "Here is an output example:\n",
        "visual quality: 4\n",
        "temporal consistency: 4\n",
        "dynamic degree: 3\n",
        "text-to-video alignment: 1\n",
        "factual consistency: 2\n",
        "Final Score: 6\n",
        "\n",
        "**Note: In the example above, scores are placeholders meant only to demonstrate the format. Your actual evaluation should be based on the quality of the given video.**\n",
        "Your task is provided as follows: Text Prompt: [A red fox jumps over a wooden fence at dusk.]",
    );
    check(
        Family::Qwen,
        Task::VideoGeneration,
        Mode::Point,
        CAPTION,
        NO_ANSWERS,
        Media::Videos(1),
        expected,
    );
}

#[test]
fn qwen_image_understanding_pair() {
    let expected = concat!(
        "<image>\n",
        "You are given an image and a question related to it. Your job is to evaluate the two responses based on these five factors:\n",
        "\n",
        "1. Accuracy of Object Descriptions: Review how accurately the objects are described in the responses, ensuring they match those in the ground truth. Be mindful of irrelevant or incorrect objects being mentioned.\n",
        "\n",
        "2. Relationship Between Objects: Check if the response properly describes how the objects relate to each other, reflecting their actual positions or interactions, as seen in the image.\n",
        "\n",
        "3. Description of Attributes: Assess how well the response captures the attributes (e.g., size, color, shape) of the objects in the image, in line with the ground truth.\n",
        "\n",
        "4. Helpfulness: Consider whether the response offers useful information that enhances the understanding of the image. Does it add context or provide extra insights? Also, evaluate whether it follows the instructions given in the prompt.\n",
        "\n",
        "5. Ethical Concerns: Review the response to ensure it avoids sensitive, harmful, or inappropriate content. The response should be fair, respect privacy, and be free of bias or offensive material.\n",
        "\n",
        "After evaluating both answers, determine which one is better based on these factors and clearly state your decision, such as 'Answer 1 is better' or 'Answer 2 is better.'\n",
        "\n",
        "Question: What is the animal doing?\n",
        "Answer 1: It is jumping over a fence.\n",
        "Answer 2: It is sleeping under a tree.\n",
    );
    check(
        Family::Qwen,
        Task::ImageUnderstanding,
        Mode::Pair,
        QUESTION,
        &[A1, A2],
        Media::Images(1),
        expected,
    );
}

#[test]
fn qwen_image_understanding_point() {
    let expected = concat!(
        "<image>\n",
        "\n",
        "            You are provided with an image and a question for this image. Please review the corresponding response based on the following 5 factors:\n",
        "\n",
        "            1. Accuracy in Object Description:  \n",
        "            Evaluate the accuracy of the descriptions concerning the objects mentioned in the ground truth answer.  \n",
        "            Responses should minimize the mention of objects not present in the ground truth answer, and inaccuracies in the description of existing objects.\n",
        "\n",
        "            2. Accuracy in Depicting Relationships:  \n",
        "            Consider how accurately the relationships between objects are described compared to the ground truth answer.  \n",
        "            Rank higher the responses that least misrepresent these relationships.\n",
        "\n",
        "            3. Accuracy in Describing Attributes:  \n",
        "            Assess the accuracy in the depiction of objects' attributes compared to the ground truth answer.  \n",
        "            Responses should avoid inaccuracies in describing the characteristics of the objects present.\n",
        "\n",
        "            4. Helpfulness:  \n",
        "            Consider whether the generated text provides valuable insights, additional context, or relevant information that contributes positively to the user's comprehension of the image.  \n",
        "            Assess whether the language model accurately follows any specific instructions or guidelines provided in the prompt.  \n",
        "            Evaluate the overall contribution of the response to the user experience.\n",
        "\n",
        "            5. Ethical Considerations:  \n",
        "            - Identify if the model gives appropriate warnings or avoids providing advice on sensitive topics, such as medical images.  \n",
        "            - Ensure the model refrains from stating identification information in the image that could compromise personal privacy.  \n",
        "            - Evaluate the language model's responses for fairness in treating individuals and communities, avoiding biases.  \n",
        "            - Assess for harmfulness, ensuring the avoidance of content that may potentially incite violence, be classified as NSFW (Not Safe For Work), or involve other unmentioned ethical considerations.  \n",
        "            - Consider any content that could be deemed offensive, inappropriate, or ethically problematic beyond the explicitly listed criteria.\n",
        "\n",
        "            From 0 to 100, how much do you rate for this response in terms of the correct and comprehensive description of the image?  \n",
        "            Do not dominate the rating by a single attribute such as recognition correctness, but provide an overall rating based on the above 5 factors.  \n",
        "            Provide a few lines for explanation and the rate number at last after \"Final Score:\".\n",
        "\n",
        "            Your task is provided as follows:\n",
        "\n",
        "            Question: [What is the animal doing?]  \n",
        "            Response: [It is jumping over a fence.]\n",
        "            ",
    );
    check(
        Family::Qwen,
        Task::ImageUnderstanding,
        Mode::Point,
        QUESTION,
        &[A1],
        Media::Images(1),
        expected,
    );
}

#[test]
fn qwen_video_understanding_pair() {
    let expected = concat!(
        "<video>\n",
        "Please analyze the following video and question, then determine which of the two provided answers is better\n",
        "Question: What is the animal doing?\n",
        "Answer 1: It is jumping over a fence.\n",
        "Answer 2: It is sleeping under a tree.\n",
        "Please evaluate both answers based on the following criteria:\n",
        "1. Accuracy: How well does the answer align with the visual information in the video?\n",
        "2. Completeness: Does the answer fully address all aspects of the question?\n",
        "3. Clarity: Is the answer easy to understand and well-articulated?\n",
        "4. Relevance: Does the answer directly relate to the question and the video?\n",
        "After your evaluation, please:\n",
        "1. Explain your reasoning for each criterion.\n",
        "2. Provide an overall judgment on which answer is better (Answer 1 or Answer 2). For example: \"Overall Judgment: Answer 1 is better than Answer 2.\"\n",
        "Your response should be structured and detailed, demonstrating your understanding of both the visual and textual elements of the task. You have to choose the better of the two answers and can't say that both answers are equally good.",
    );
    check(
        Family::Qwen,
        Task::VideoUnderstanding,
        Mode::Pair,
        QUESTION,
        &[A1, A2],
        Media::Videos(1),
        expected,
    );
}

#[test]
fn qwen_video_understanding_point() {
    let expected = concat!(
        "<video>\n",
        "You are provided with a video and a question for this video. Please review the corresponding response based on the following 5 factors: 1. Accuracy in Object Description: Evaluate the accuracy of the descriptions concerning the objects mentioned in the ground truth answer. Responses should minimize the mention of objects not present in the ground truth answer, and inaccuracies in the description of existing objects. 2. Accuracy in Depicting Relationships: Consider how accurately the relationships between objects are described compared to the ground truth answer. Rank higher the responses that least misrepresent these relationships. 3. Accuracy in Describing Attributes: Assess the accuracy in the depiction of objects' attributes compared to the ground truth answer. Responses should avoid inaccuracies in describing the characteristics of the objects present. 4. Helpfulness: Consider whether the generated text provides valuable insights, additional context, or relevant information that contributes positively to the user's comprehension of the video. Assess whether the language model accurately follows any specific instructions or guidelines provided in the prompt. Evaluate the overall contribution of the response to the user experience. 5. Ethical Considerations: - Identify if the model gives appropriate warnings or avoids providing advice on sensitive topics, such as medical videos. Ensure the model refrains from stating identification information in the video that could compromise personal privacy. Evaluate the language model's responses for fairness in treating individuals and communities, avoiding biases. Assess for harmfulness, ensuring the avoidance of content that may potentially incite violence, be classified as NSFW (Not Safe For Work), or involve other unmentioned ethical considerations. Consider any content that could be deemed offensive, inappropriate, or ethically problematic beyond the explicitly listed criteria.\n",
        "You need to assign a score from 1 to 5 based on the above 5 factors for the response after 'Final Score:'.\n",
        "Your task is provided as follows:\n",
        "Question: [What is the animal doing?]\n",
        "Response: [It is jumping over a fence.]",
    );
    check(
        Family::Qwen,
        Task::VideoUnderstanding,
        Mode::Point,
        QUESTION,
        &[A1],
        Media::Videos(1),
        expected,
    );
}

#[test]
fn chatml_wraps_the_user_turn_like_the_qwen_1_5_conversation() {
    let prompt = ChatTemplate::ChatMl.render("<image>\nHello").unwrap();
    assert_eq!(
        prompt,
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\nHello<|im_end|>\n<|im_start|>assistant\n"
    );
    assert!(prompt.contains(SYSTEM_PROMPT));
}

#[test]
fn golden_jinja_chat_template_renders_the_same_chatml() {
    let path = golden_dir().join("llava_ov_tiny/model/chat_template.jinja");
    let jinja = ChatTemplate::from_file(&path).unwrap();
    let user = user_turn(
        Family::Llava,
        Task::ImageGeneration,
        Mode::Pair,
        CAPTION,
        NO_ANSWERS,
        Media::Images(2),
    )
    .unwrap();
    assert_eq!(
        jinja.render(&user).unwrap(),
        ChatTemplate::ChatMl.render(&user).unwrap()
    );
    assert_eq!(
        jinja.render("hi").unwrap(),
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn checkpoint_dir_chat_template_is_found_and_chatml_is_the_fallback() {
    let found =
        ChatTemplate::from_checkpoint_dir(golden_dir().join("llava_ov_tiny/model")).unwrap();
    assert!(matches!(found, ChatTemplate::Jinja(_)));
    let empty = std::env::temp_dir().join(format!("unireward-judge-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let fallback = ChatTemplate::from_checkpoint_dir(&empty).unwrap();
    assert!(matches!(fallback, ChatTemplate::ChatMl));
    std::fs::remove_dir_all(&empty).unwrap();
}

#[test]
fn jinja_template_with_trim_blocks_and_raise_exception() {
    let template = "{% for m in messages %}\n[{{ m.role }}] {{ m.content }}\n{% endfor %}\n{% if not add_generation_prompt %}{{ raise_exception('needs a generation prompt') }}{% endif %}";
    let chat = ChatTemplate::jinja("inline", template).unwrap();
    assert_eq!(
        chat.render("x").unwrap(),
        "[system] You are a helpful assistant.\n[user] x\n"
    );
    let failing = ChatTemplate::jinja("inline", "{{ raise_exception('no') }}").unwrap();
    let err = failing.render("x").unwrap_err();
    assert!(
        matches!(err, Error::Config(ref m) if m.contains("no")),
        "{err}"
    );
}

#[test]
fn jinja_syntax_error_is_a_config_error() {
    let err = ChatTemplate::jinja("broken.jinja", "{% for m in messages %}").unwrap_err();
    assert!(
        matches!(err, Error::Config(ref m) if m.contains("broken.jinja")),
        "{err}"
    );
}

#[test]
fn user_template_fills_placeholders_and_places_media() {
    let t = PromptTemplate::parse(
        "mine.txt",
        "Q={question} C={caption} P={prompt} 1={answer1} 2={answer2} a={answer} {{literal}}",
    )
    .unwrap();
    let got = t
        .render("the {prompt}", &["x", "y"], Media::Images(2))
        .unwrap();
    // Values are inserted as given, never scanned for placeholders.
    assert_eq!(
        got,
        "<image>\n<image>\nQ=the {prompt} C=the {prompt} P=the {prompt} 1=x 2=y a=x {literal}"
    );
    let placed = PromptTemplate::parse("mine.txt", "Look: {media}then {caption}").unwrap();
    assert_eq!(
        placed.render::<&str>("cat", &[], Media::Videos(1)).unwrap(),
        "Look: <video>\nthen cat"
    );
    assert_eq!(placed.source(), "mine.txt");
}

#[test]
fn user_template_file_is_read() {
    let path = std::env::temp_dir().join(format!("unireward-judge-tpl-{}.txt", std::process::id()));
    std::fs::write(&path, "Rate [{caption}]").unwrap();
    let t = PromptTemplate::from_file(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        t.render::<&str>("a cat", &[], Media::Images(1)).unwrap(),
        "<image>\nRate [a cat]"
    );
    let missing = PromptTemplate::from_file(path.with_extension("absent")).unwrap_err();
    assert!(matches!(missing, Error::Io { .. }), "{missing}");
}

#[test]
fn bad_user_templates_are_refused() {
    for (text, needle) in [
        ("Caption: {captoin}", "unknown placeholder {captoin}"),
        ("open { brace", "unclosed"),
        ("close } brace", "unmatched"),
    ] {
        let err = PromptTemplate::parse("bad.txt", text).unwrap_err();
        assert!(
            matches!(err, Error::Config(ref m) if m.contains(needle) && m.contains("bad.txt")),
            "{text}: {err}"
        );
    }
}

#[test]
fn wrong_answer_counts_are_input_errors() {
    let err = user_turn(
        Family::Llava,
        Task::ImageUnderstanding,
        Mode::Pair,
        QUESTION,
        &[A1],
        Media::Images(1),
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::Input(ref m) if m.contains("2 answer")),
        "{err}"
    );
    let err = user_turn(
        Family::Llava,
        Task::ImageGeneration,
        Mode::Point,
        CAPTION,
        &[A1],
        Media::Images(1),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Input(_)), "{err}");
    let needs_two = PromptTemplate::parse("t", "{answer2}").unwrap();
    let err = needs_two
        .render("q", &["only"], Media::Images(0))
        .unwrap_err();
    assert!(
        matches!(err, Error::Input(ref m) if m.contains("answer 2")),
        "{err}"
    );
}

#[test]
fn task_and_mode_names_and_score_ranges() {
    for task in Task::ALL {
        assert_eq!(task.as_str().parse::<Task>().unwrap(), task);
        let json = serde_json::to_string(&task).unwrap();
        assert_eq!(json, format!("\"{}\"", task.as_str()));
    }
    assert_eq!(serde_json::to_string(&Mode::Pair).unwrap(), "\"pair\"");
    assert_eq!(
        serde_json::from_str::<Mode>("\"point\"").unwrap(),
        Mode::Point
    );
    assert!("image".parse::<Task>().is_err());
    assert!("pairs".parse::<Mode>().is_err());
    let ranges: Vec<(u32, u32)> = Task::ALL
        .iter()
        .map(|t| (t.score_range().min, t.score_range().max))
        .collect();
    assert_eq!(ranges, vec![(1, 5), (1, 10), (0, 100), (1, 5)]);
    assert_eq!(Task::VideoGeneration.score_range().values().count(), 10);
    assert!(Task::ImageGeneration.score_range().contains(3.5));
    assert!(!Task::ImageGeneration.score_range().contains(6.0));
}
