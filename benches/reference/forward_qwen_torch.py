"""PyTorch eager reference for `bench-forward-qwen`: the same bench-small-sized Qwen2.5-VL
checkpoint and inputs (written by the bench to DIR/model and DIR/inputs.safetensors), run by
Hugging Face transformers' Qwen2_5_VLForConditionalGeneration in f32 on the CPU with eager
attention, log-probs of the last 10 positions. Prints one line in the bench's format, with the
same checksum.

    python benches/reference/forward_qwen_torch.py --dir DIR [--iters 10] [--warmup 2]

Needs torch and transformers (not part of the project's build or tests).
"""

import argparse
import statistics
import time

import torch
from safetensors.torch import load_file
from transformers import Qwen2_5_VLForConditionalGeneration


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True, help="bench-forward-qwen's --keep directory")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        f"{args.dir}/model", dtype=torch.float32, attn_implementation="eager"
    ).eval()
    inputs = load_file(f"{args.dir}/inputs.safetensors")
    ids = inputs["input_ids"].to(torch.long)[None]
    mm = (ids == model.config.image_token_id).to(torch.int32)
    kwargs = dict(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        pixel_values=inputs["pixel_values"],
        image_grid_thw=inputs["image_grid_thw"].to(torch.long)[None],
        mm_token_type_ids=mm,
        logits_to_keep=10,
    )

    def forward() -> float:
        with torch.no_grad():
            model.model.rope_deltas = None
            logits = model(**kwargs).logits[0]
            return float(torch.log_softmax(logits, -1).sum())

    for _ in range(args.warmup):
        forward()
    times, checksum = [], 0.0
    for _ in range(args.iters):
        t0 = time.perf_counter()
        checksum = forward()
        times.append(time.perf_counter() - t0)
    times.sort()
    print(
        f"torch eager    median {statistics.median(times):.3f} s  min {times[0]:.3f} s  "
        f"max {times[-1]:.3f} s  ({len(times)} runs; checksum {checksum:.3f}; torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads)"
    )


if __name__ == "__main__":
    main()
