"""PyTorch eager reference for `bench-gpu`: the same ov-0.5b-shaped checkpoint and the same
inputs (written by `bench-gpu` to DIR/inputs.safetensors), run by Hugging Face transformers'
LlavaOnevisionForConditionalGeneration in bf16 on the GPU:

- forward: the judged prompt (one 384x384 image as 2 tiles + 1,000 text tokens), log-probs of
  the last 10 positions;
- DPO step: the pair as the trainer prepares it (token ids, scored positions, pixel values),
  policy log-probs of chosen and rejected (summed over the scored tokens), sigmoid DPO loss
  (beta 0.1) against reference log-probs computed once beforehand, backward, gradient
  clipping at 1.0 and AdamW on the decoder and projector (the vision tower frozen), as
  `trainer dpo` does by default.

Prints `torch forward ... median S s` and `torch dpo step ... median S s` lines.

    python benches/reference/gpu_torch.py --dir DIR [--iters 10] [--warmup 2] [--steps 4]

Needs torch with CUDA and transformers (not part of the project's build or tests).
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file
from transformers import LlavaOnevisionForConditionalGeneration


def timed(fn, warmup: int, iters: int) -> list:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True, help="bench-gpu's --keep directory")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    dev = torch.device("cuda")
    bf16 = torch.bfloat16

    model = LlavaOnevisionForConditionalGeneration.from_pretrained(
        f"{args.dir}/model", torch_dtype=bf16
    ).to(dev)
    model.eval()  # no dropout in these configs either way; gradients still flow
    inputs = load_file(f"{args.dir}/inputs.safetensors")
    versions = (
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{torch.cuda.get_device_name(0)}"
    )

    ids = inputs["input_ids"].to(dev, torch.long)[None]
    h, w = (int(v) for v in inputs["image_size"])
    fwd_kwargs = dict(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        pixel_values=inputs["pixel_values"].to(dev, bf16)[None],
        image_sizes=torch.tensor([[h, w]], device=dev),
        logits_to_keep=10,
    )
    checksum = [0.0]

    def forward() -> None:
        with torch.inference_mode():
            logits = model(**fwd_kwargs).logits[0]
            checksum[0] = torch.log_softmax(logits.float(), dim=-1).sum().item()

    times = timed(forward, args.warmup, args.iters)
    print(
        f"torch forward bf16 eager: median {statistics.median_low(times):.4f} s  "
        f"min {times[0]:.4f} s  max {times[-1]:.4f} s  ({len(times)} runs; "
        f"checksum {checksum[0]:.3f}; {versions})"
    )

    dh, dw = (int(v) for v in inputs["dpo.image_size"])
    pixel_values = inputs["dpo.pixel_values"].to(dev, bf16)[None]
    image_sizes = torch.tensor([[dh, dw]], device=dev)
    seqs = {
        side: (
            inputs[f"dpo.{side}_ids"].to(dev, torch.long),
            inputs[f"dpo.{side}_targets"].to(dev, torch.bool),
        )
        for side in ("chosen", "rejected")
    }

    def logp(side: str) -> torch.Tensor:
        seq, targets = seqs[side]
        logits = model(
            input_ids=seq[None],
            attention_mask=torch.ones_like(seq)[None],
            pixel_values=pixel_values,
            image_sizes=image_sizes,
        ).logits[0]
        # Token t is predicted at position t - 1; token 0 is never scored.
        lp = torch.log_softmax(logits[:-1].float(), dim=-1).gather(-1, seq[1:, None])[:, 0]
        return (lp * targets[1:]).sum()

    with torch.no_grad():
        ref = {side: logp(side).detach() for side in seqs}
    for name, p in model.named_parameters():
        p.requires_grad_("vision_tower" not in name)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=5e-7)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        pc, pr = logp("chosen"), logp("rejected")
        margin = (pc - ref["chosen"]) - (pr - ref["rejected"])
        loss = -F.logsigmoid(0.1 * margin)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()

    times = timed(step, args.warmup, args.steps)
    n_params = sum(p.numel() for p in trainable)
    print(
        f"torch dpo step bf16 eager: median {statistics.median_low(times):.4f} s  "
        f"min {times[0]:.4f} s  max {times[-1]:.4f} s  ({len(times)} steps; {n_params} trained "
        f"params; chosen {len(seqs['chosen'][0])} / rejected {len(seqs['rejected'][0])} tokens)"
    )


if __name__ == "__main__":
    main()
