//! The run's figures as one JSON document and as a plain-text table.

use serde_json::Value;

fn count(v: &Value) -> String {
    v.as_u64().map_or("-".to_string(), |n| n.to_string())
}

fn num(v: &Value, digits: usize) -> String {
    v.as_f64()
        .map_or("-".to_string(), |x| format!("{x:.digits$}"))
}

/// The rows of `demo generator`'s figures.
fn generator_rows(out: &mut String, g: &Value) {
    out.push_str(&format!(
        "image generator (pretrained, then trainer dpo --kind diffusion on {} judge-built pairs); \
         {} samples for fresh captions, same seeds before and after\n",
        count(&g["pairs"]),
        count(&g["before"]["images"])
    ));
    out.push_str(&format!(
        "  {:<34}{:>12}{:>8}{:>14}{:>14}{:>13}\n",
        "", "saturation", "grain", "colour right", "colour shown", "place right"
    ));
    for (label, key) in [
        ("world's best generator (via VAE)", "world_best"),
        ("pretrained", "before"),
        ("  the judge's chosen samples", "chosen"),
        ("  the judge's rejected samples", "rejected"),
        ("after Diffusion-DPO", "after"),
        ("world's worst generator (via VAE)", "world_worst"),
    ] {
        out.push_str(&format!(
            "  {:<34}{:>12}{:>8}{:>14}{:>14}{:>13}\n",
            label,
            num(&g[key]["saturation"], 1),
            num(&g[key]["grain"], 2),
            num(&g[key]["colour_right"], 3),
            num(&g[key]["colour_shown"], 3),
            num(&g[key]["place_right"], 3)
        ));
    }
    out.push_str(&format!(
        "  judge's chosen sample the less grainy: {}; the cleaner (saturation - grain): {}\n",
        num(&g["chosen_less_grainy"], 3),
        num(&g["chosen_cleaner"], 3)
    ));
}

/// The text table printed at the end of a run.
pub fn text(summary: &Value) -> String {
    let mut out = String::new();
    out.push_str("judge on held-out data (engine score --batch, ONNX Runtime)\n");
    out.push_str(&format!(
        "  {:<22}{:>10}{:>8}{:>10}{:>10}{:>8}{:>8}\n",
        "task", "pair acc", "pairs", "p(right)", "point r", "points", "failed"
    ));
    if let Some(tasks) = summary["judge"]["tasks"].as_object() {
        for (task, f) in tasks {
            let failed =
                f["pair_errors"].as_u64().unwrap_or(0) + f["point_errors"].as_u64().unwrap_or(0);
            out.push_str(&format!(
                "  {:<22}{:>10}{:>8}{:>10}{:>10}{:>8}{:>8}\n",
                task,
                num(&f["pair_accuracy"], 3),
                count(&f["pairs"]),
                num(&f["pair_mean_p_correct"], 3),
                num(&f["point_pearson"], 3),
                count(&f["points"]),
                failed
            ));
        }
    }
    if let Some(controls) = summary["judge"]["controls"].as_object() {
        out.push_str("  control pairs (only the attributes tell the better one):\n");
        for (name, c) in controls {
            out.push_str(&format!(
                "    {:<40} accuracy {} ({} pairs)\n",
                name,
                num(&c["accuracy"], 3),
                count(&c["pairs"])
            ));
        }
    }
    out.push_str("engine pairs on fresh prompts (10 candidates each)\n");
    out.push_str(&format!(
        "  {:<22}{:>8}{:>9}{:>16}{:>12}{:>12}\n",
        "task", "pairs", "dropped", "chosen better", "chosen best", "q chosen/rej"
    ));
    if let Some(tasks) = summary["pairs"]["tasks"].as_object() {
        for (task, f) in tasks {
            out.push_str(&format!(
                "  {:<22}{:>8}{:>9}{:>16}{:>12}{:>12}\n",
                task,
                count(&f["pairs"]),
                count(&f["dropped"]),
                num(&f["chosen_truly_better"], 3),
                num(&f["chosen_is_best"], 3),
                format!(
                    "{}/{}",
                    num(&f["mean_chosen_quality"], 1),
                    num(&f["mean_rejected_quality"], 1)
                )
            ));
        }
    }
    out.push_str(&format!(
        "answer model accuracy (held-out questions): {} after fine-tuning -> {} after DPO on {} judge-built pairs\n",
        num(&summary["answers"]["before"]["accuracy"], 3),
        num(&summary["answers"]["after"]["accuracy"], 3),
        count(&summary["answers"]["dpo_pairs"])
    ));
    out.push_str(&format!(
        "  mean attributes right in the chosen answer: {} -> {}\n",
        num(&summary["answers"]["before"]["mean_quality"], 2),
        num(&summary["answers"]["after"]["mean_quality"], 2)
    ));
    let g = &summary["generator"];
    if !g.is_null() {
        generator_rows(&mut out, g);
    }
    if let Some(steps) = summary["seconds"].as_object() {
        let parts: Vec<String> = steps
            .iter()
            .map(|(k, v)| format!("{k} {}s", num(v, 1)))
            .collect();
        out.push_str(&format!("wall time: {}\n", parts.join(", ")));
    }
    out
}
