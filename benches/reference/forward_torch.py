"""PyTorch eager reference for `bench-forward`: the same bench-small checkpoint and the same
inputs (written by `bench-forward` to DIR/inputs.safetensors), run by Hugging Face
transformers' LlavaOnevisionForConditionalGeneration in f32 on the CPU, log-probs of the last
10 positions. Prints one line in bench-forward's format, with the same checksum.

    python benches/reference/forward_torch.py --dir DIR [--iters 7] [--warmup 2]

Needs torch and transformers (not part of the project's build or tests).
"""

import argparse
import statistics
import time

import torch
from safetensors.torch import load_file
from transformers import LlavaOnevisionForConditionalGeneration


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True, help="bench-forward's --keep directory")
    ap.add_argument("--iters", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()

    model = LlavaOnevisionForConditionalGeneration.from_pretrained(
        f"{args.dir}/model", torch_dtype=torch.float32
    ).eval()
    inputs = load_file(f"{args.dir}/inputs.safetensors")
    tiles = inputs["pixel_values"]  # [tiles, 3, S, S]
    ids = inputs["input_ids"].to(torch.long)[None]  # [1, T]
    h, w = (int(v) for v in inputs["image_size"])
    kwargs = dict(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        pixel_values=tiles[None],
        image_sizes=torch.tensor([[h, w]]),
        logits_to_keep=10,
    )

    def forward() -> float:
        with torch.inference_mode():
            logits = model(**kwargs).logits[0]
            return torch.log_softmax(logits.float(), dim=-1).sum().item()

    for _ in range(args.warmup):
        forward()
    times, value = [], 0.0
    for _ in range(args.iters):
        t0 = time.perf_counter()
        value = forward()
        times.append(time.perf_counter() - t0)
    times.sort()
    print(
        f"{'torch f32 eager':<14} median {statistics.median_low(times):.3f} s  "
        f"min {times[0]:.3f} s  max {times[-1]:.3f} s  ({len(times)} runs; "
        f"checksum {value:.3f}; torch {torch.__version__}, {torch.get_num_threads()} threads)"
    )


if __name__ == "__main__":
    main()
