//! The report page: the figures, the training curves, and prompts with the candidates the
//! judge chose and rejected (thumbnails by relative path, so the run directory can move).

use serde_json::Value;

use crate::steps::pairs::JudgedPair;
use crate::world::store::preview_path;

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A run-relative media path as seen from `report/`: a PNG as is, a video's frame
/// directory as its animated GIF.
fn thumb(media: &str) -> String {
    let shown = if media.ends_with(".png") {
        media.to_string()
    } else {
        preview_path(media)
    };
    format!("../{shown}")
}

fn img(media: &str, title: &str) -> String {
    format!(
        "<img class=\"thumb\" src=\"{}\" title=\"{}\" alt=\"{}\">",
        escape(&thumb(media)),
        escape(title),
        escape(title)
    )
}

fn pair_row(p: &JudgedPair) -> String {
    let verdict = if p.chosen_quality > p.rejected_quality {
        "<span class=\"good\">chosen is better</span>"
    } else if p.chosen_quality == p.rejected_quality {
        "<span class=\"tie\">equally good</span>"
    } else {
        "<span class=\"bad\">rejected is better</span>"
    };
    let (chosen, rejected) = if p.task.is_generation() {
        (
            img(
                &p.chosen,
                &format!("{}/5 attributes right", p.chosen_quality),
            ),
            img(
                &p.rejected,
                &format!("{}/5 attributes right", p.rejected_quality),
            ),
        )
    } else {
        (escape(&p.chosen), escape(&p.rejected))
    };
    let prompt = match &p.question_media {
        Some(m) => format!("{}<br>{}", img(m, "question's image"), escape(&p.prompt)),
        None => escape(&p.prompt),
    };
    format!(
        "<tr><td>{prompt}</td><td>{chosen}<div class=\"q\">{}/5 right</div></td>\
         <td>{rejected}<div class=\"q\">{}/5 right</div></td><td>{verdict}</td></tr>\n",
        p.chosen_quality, p.rejected_quality
    )
}

/// A caption's samples before and after Diffusion-DPO (run-relative PNGs, same seeds).
pub struct SampleRow {
    pub caption: String,
    pub before: Vec<String>,
    pub after: Vec<String>,
}

pub struct Page<'a> {
    pub samples: &'a [SampleRow],
    pub table: &'a str,
    pub charts: &'a [(&'a str, &'a str)],
    pub pairs: &'a [JudgedPair],
    pub per_task: usize,
    pub summary: &'a Value,
}

pub fn render(page: &Page) -> String {
    let mut out = String::from(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>unireward demo report</title>\n\
         <style>body{font-family:sans-serif;margin:2em;max-width:1100px}\
         pre{background:#f6f6f6;padding:1em;overflow-x:auto}\
         table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:6px;vertical-align:top}\
         .thumb{width:96px;height:96px;image-rendering:pixelated}.q{color:#555;font-size:90%}\
         .good{color:#1a7f37}.bad{color:#cf222e}.tie{color:#9a6700}\
         .charts img{max-width:100%;border:1px solid #ddd;margin:4px}</style></head><body>\n\
         <h1>unireward demo: the pipeline on a synthetic world</h1>\n",
    );
    out.push_str(&format!(
        "<p>Seed {}, preset {}. A reward model (LLaVA-OneVision) trained from random weights \
         with <code>trainer reward</code>, exported with <code>unireward-export onnx</code>, judging held-out \
         data with <code>engine score --batch</code> on ONNX Runtime and building pairs with \
         <code>engine pairs</code> (candle); an answer \
         model aligned with <code>trainer dpo --kind vlm</code> on the pairs it built.</p>\n",
        page.summary["seed"], escape(page.summary["preset"].as_str().unwrap_or(""))
    ));
    out.push_str("<h2>Figures</h2>\n<pre>");
    out.push_str(&escape(page.table));
    out.push_str("</pre>\n<h2>Training curves</h2>\n<div class=\"charts\">\n");
    for (file, caption) in page.charts {
        out.push_str(&format!(
            "<figure><img src=\"{}\" alt=\"{}\"><figcaption>{}</figcaption></figure>\n",
            escape(file),
            escape(caption),
            escape(caption)
        ));
    }
    out.push_str("</div>\n<h2>Preference pairs built by <code>engine pairs</code></h2>\n");
    out.push_str(
        "<p>Fresh prompts, ten candidates each; the judge's chosen and rejected candidate, with \
         the number of the five attributes (count, size, colour, shape, place or motion) each \
         gets right.</p>\n",
    );
    let mut tasks: Vec<&str> = page.pairs.iter().map(|p| p.task.as_str()).collect();
    tasks.dedup();
    tasks.sort();
    tasks.dedup();
    for task in tasks {
        out.push_str(&format!(
            "<h3>{task}</h3>\n<table><tr><th>prompt</th><th>chosen</th><th>rejected</th><th>truth</th></tr>\n"
        ));
        for p in page
            .pairs
            .iter()
            .filter(|p| p.task.as_str() == task)
            .take(page.per_task)
        {
            out.push_str(&pair_row(p));
        }
        out.push_str("</table>\n");
    }
    out.push_str("<h2>Image generator: samples before and after Diffusion-DPO</h2>\n");
    out.push_str(
        "<p>The pretrained generator's samples for fresh captions, and the aligned one's from \
         the same seeds (same column, same starting noise). The judge's pairs were built from \
         the first set. Figures under the world's ground truth are in the table above.</p>\n\
         <table><tr><th>caption</th><th>pretrained</th><th>after Diffusion-DPO</th></tr>\n",
    );
    for row in page.samples {
        let strip = |paths: &[String]| -> String {
            paths
                .iter()
                .map(|p| img(p, &row.caption))
                .collect::<Vec<_>>()
                .join("")
        };
        out.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            escape(&row.caption),
            strip(&row.before),
            strip(&row.after)
        ));
    }
    out.push_str("</table>\n</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use unireward_models::judge::Task;

    #[test]
    fn thumbnails_are_relative_and_text_is_escaped() {
        let pair = JudgedPair {
            id: "x".into(),
            task: Task::VideoGeneration,
            prompt: "a <b> & c".into(),
            chosen: "world/fresh/media/gen-vid-00000-01".into(),
            rejected: "world/fresh/media/gen-vid-00000-02".into(),
            question_media: None,
            chosen_quality: 5,
            rejected_quality: 2,
            best_quality: 5,
        };
        let row = pair_row(&pair);
        assert!(
            row.contains("src=\"../world/fresh/media/gen-vid-00000-01.gif\""),
            "{row}"
        );
        assert!(row.contains("a &lt;b&gt; &amp; c"));
        assert!(row.contains("chosen is better"));
    }
}
