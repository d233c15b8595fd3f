"""PEFT fixtures for unireward's LoRA interop tests, made by the real libraries.

usage:
  python make_peft_fixtures.py make [--out fixtures/peft]
      Builds a LoRA adapter with peft on the golden checkpoint loaded as
      LlavaOnevisionForConditionalGeneration (targets q_proj, v_proj, gate_proj: the vision
      tower's q_proj / v_proj match too), with seeded non-zero lora_B, and saves it under
      OUT/llava_ov_tiny_lora. Records in OUT/expected.json the completion log-probs of the
      golden cases through the PEFT model and through its merge_and_unload() copy, and in
      OUT/transformers_linear_modules.txt the names transformers gives the model's Linear
      modules (what an adapter must name for PeftModel to attach it).
  python make_peft_fixtures.py check --adapter DIR [--merged DIR]
      Loads an adapter written by unireward with PeftModel.from_pretrained onto the golden
      model and prints the golden cases' completion log-probs; with --merged (the adapter
      merged by `trainer merge-lora`), also the merged checkpoint's, and fails when they differ
      by 1e-3 or more, or when PEFT left a factor of the adapter unused.

Needs: torch, transformers, peft, safetensors. Run from anywhere; paths default to this
repository's fixtures. fp32 on the CPU, deterministic.
"""
import argparse
import json
import math
import os

import torch
from safetensors.torch import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
GOLDEN = os.path.join(ROOT, "fixtures", "golden", "llava_ov_tiny")
MODEL = os.path.join(GOLDEN, "model")
TARGETS = ["q_proj", "v_proj", "gate_proj"]
RANK, ALPHA = 4, 8


def load_base():
    from transformers import LlavaOnevisionForConditionalGeneration

    return LlavaOnevisionForConditionalGeneration.from_pretrained(MODEL, dtype=torch.float32).eval()


def golden_inputs():
    """Each golden case's model inputs, as the processor made them for the golden outputs."""
    cases = json.load(open(os.path.join(GOLDEN, "cases", "cases.json")))["cases"]
    t = load_file(os.path.join(GOLDEN, "cases", "expected.safetensors"))
    out = []
    for c in cases:
        n = c["name"]
        ids = t[f"{n}.input_ids"][None]
        kw = dict(input_ids=ids, attention_mask=torch.ones_like(ids))
        if f"{n}.pixel_values" in t:
            kw["pixel_values"] = t[f"{n}.pixel_values"]
            kw["image_sizes"] = t[f"{n}.image_sizes"]
        if f"{n}.pixel_values_videos" in t:
            kw["pixel_values_videos"] = t[f"{n}.pixel_values_videos"][None]
        out.append((c, kw))
    return out


def completion_logprobs(model):
    """Per case: the sum over completion positions of log p(token | what precedes it), in
    float64 from the fp32 logits, as the golden cases define it."""
    res = {}
    with torch.no_grad():
        for c, kw in golden_inputs():
            logits = model(**kw).logits[0].float()
            ids = kw["input_ids"][0]
            lp = torch.log_softmax(logits[:-1].double(), -1).gather(-1, ids[1:, None])[:, 0]
            res[c["name"]] = float(lp[c["prompt_len"] - 1:].sum())
    return res


def versions():
    import peft
    import safetensors
    import transformers

    return {"peft": peft.__version__, "transformers": transformers.__version__,
            "torch": torch.__version__, "safetensors": safetensors.__version__}


def make(out):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = load_base()
    golden = {c["name"]: c["completion_logprob"] for c, _ in golden_inputs()}
    for name, lp in completion_logprobs(base).items():
        assert abs(lp - golden[name]) < 1e-4, f"the base model does not reproduce the golden {name}"
    linear = sorted(n for n, m in base.named_modules() if isinstance(m, torch.nn.Linear))
    cfg = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS, bias="none")
    model = get_peft_model(base, cfg).eval()
    with torch.no_grad():  # B is zero at init: give it values so that the adapter matters
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(0.2 * torch.randn_like(p))
    adapter_dir = os.path.join(out, "llava_ov_tiny_lora")
    model.save_pretrained(adapter_dir)
    os.chmod(os.path.join(adapter_dir, "adapter_model.safetensors"), 0o644)
    cfg_path = os.path.join(adapter_dir, "adapter_config.json")
    saved_cfg = json.load(open(cfg_path))
    # The golden model's absolute path would make the fixture depend on who made it.
    saved_cfg["base_model_name_or_path"] = "fixtures/golden/llava_ov_tiny/model"
    # PEFT keeps the targets as a set: sorted, the file is the same from run to run.
    saved_cfg["target_modules"] = sorted(saved_cfg["target_modules"])
    json.dump(saved_cfg, open(cfg_path, "w"), indent=2, sort_keys=True)
    # README.md that save_pretrained writes is a model-card template: not needed.
    card = os.path.join(adapter_dir, "README.md")
    if os.path.exists(card):
        os.remove(card)
    with_adapter = completion_logprobs(model)
    merged = completion_logprobs(model.merge_and_unload().eval())
    keys = sorted(load_file(os.path.join(adapter_dir, "adapter_model.safetensors")))
    expected = {
        "generator": versions(),
        "adapter": "llava_ov_tiny_lora",
        "r": RANK, "lora_alpha": ALPHA, "target_modules": TARGETS,
        "adapted_modules": len(keys) // 2,
        "completion_logprob": with_adapter,
        "merged_completion_logprob": merged,
        "base_completion_logprob": golden,
    }
    json.dump(expected, open(os.path.join(out, "expected.json"), "w"), indent=1, sort_keys=True)
    with open(os.path.join(out, "transformers_linear_modules.txt"), "w") as f:
        f.write("".join(n + "\n" for n in linear))
    for name in with_adapter:
        print(f"{name}: base {golden[name]:.6f}, peft {with_adapter[name]:.6f}, merged {merged[name]:.6f}")
    print("wrote", adapter_dir, "with", len(keys), "tensors;", versions())


def check(adapter, merged_dir):
    from peft import PeftModel
    from transformers import LlavaOnevisionForConditionalGeneration

    base = load_base()
    model = PeftModel.from_pretrained(base, adapter).eval()
    keys = load_file(os.path.join(adapter, "adapter_model.safetensors"))
    attached = {n for n, _ in model.named_parameters() if ".lora_A." in n or ".lora_B." in n}
    print(f"adapter: {len(keys)} tensors; PEFT attached {len(attached)} factors")
    if len(attached) != len(keys):
        raise SystemExit("PEFT attached another number of factors than the adapter holds")
    # Every factor was loaded: none still holds PEFT's initial zero lora_B.
    zero_b = [n for n, p in model.named_parameters() if ".lora_B." in n and not p.detach().abs().sum() > 0]
    if zero_b:
        raise SystemExit(f"lora_B left at its initial zeros (not loaded): {zero_b[:3]}")
    got = completion_logprobs(model)
    worst = 0.0
    other = None
    if merged_dir:
        other = completion_logprobs(
            LlavaOnevisionForConditionalGeneration.from_pretrained(merged_dir, dtype=torch.float32).eval())
    for name, lp in got.items():
        line = f"{name}: PeftModel {lp:.6f}"
        if other is not None:
            d = abs(lp - other[name])
            worst = max(worst, d)
            line += f", unireward-merged checkpoint {other[name]:.6f} (diff {d:.2e})"
        print(line)
    print("versions:", versions())
    if other is not None and not worst < 1e-3:
        raise SystemExit(f"PeftModel and the merged checkpoint differ by {worst}")
    assert all(math.isfinite(v) for v in got.values())


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--out", default=os.path.join(ROOT, "fixtures", "peft"))
    c = sub.add_parser("check")
    c.add_argument("--adapter", required=True)
    c.add_argument("--merged")
    a = ap.parse_args()
    if a.cmd == "make":
        os.makedirs(a.out, exist_ok=True)
        make(a.out)
    else:
        check(a.adapter, a.merged)


if __name__ == "__main__":
    main()
