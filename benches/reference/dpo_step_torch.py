"""PyTorch eager reference for `bench-dpo-step`: the same DPO step on the same bench-small
checkpoint and the same pairs (written by `bench-dpo-step --torch` to DIR/torch_pairs.safetensors),
run by Hugging Face transformers' LlavaOnevisionForConditionalGeneration in f32 on the CPU, as
TRL's DPOTrainer would with precomputed reference log-probs: one pair per step, chosen and
rejected right-padded into one forward, logits only from the first scored position
(`logits_to_keep`), the sigmoid loss with beta 0.1, clipping at 1.0 and AdamW (lr 5e-7).
The vision tower is frozen, the projector and the decoder (with its head) trained, as the
bench's default row; `--lora-rank R` trains PEFT LoRA adapters (alpha = 2R, on the bench's
default targets) instead.

    python benches/reference/dpo_step_torch.py --dir DIR [--steps 5] [--warmup 1] [--lora-rank R]

Prints one line in bench-dpo-step's format. Needs torch and transformers (and peft for
--lora-rank); not part of the project's build or tests.
"""

import argparse
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import LlavaOnevisionForConditionalGeneration


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--lora-rank", type=int, default=0)
    ap.add_argument("--grad-checkpointing", action="store_true")
    args = ap.parse_args()

    model = LlavaOnevisionForConditionalGeneration.from_pretrained(
        f"{args.dir}/model", torch_dtype=torch.float32
    )
    model.eval()  # no dropout in these configs; eval keeps it so either way
    t = load_file(f"{args.dir}/torch_pairs.safetensors")
    n = int(t["pairs"].item())
    pairs = []
    for i in range(n):
        ids = [t[f"{i}.chosen_ids"].long(), t[f"{i}.rejected_ids"].long()]
        targets = [t[f"{i}.chosen_targets"].bool(), t[f"{i}.rejected_targets"].bool()]
        longest = max(len(x) for x in ids)
        input_ids = torch.zeros(2, longest, dtype=torch.long)
        mask = torch.zeros(2, longest, dtype=torch.long)
        scored = torch.zeros(2, longest, dtype=torch.bool)
        for r in range(2):
            input_ids[r, : len(ids[r])] = ids[r]
            mask[r, : len(ids[r])] = 1
            scored[r, : len(ids[r])] = targets[r]
        first = int(scored.any(0).nonzero()[0])
        h, w = (int(v) for v in t[f"{i}.image_size"])
        tiles = t[f"{i}.pixel_values"]
        pairs.append(
            dict(
                input_ids=input_ids,
                attention_mask=mask,
                pixel_values=torch.stack([tiles, tiles]),
                image_sizes=torch.tensor([[h, w], [h, w]]),
                labels=input_ids[:, first:],
                scored=scored[:, first:],
                keep=longest - first + 1,
            )
        )

    def logps(p):
        out = model(
            input_ids=p["input_ids"],
            attention_mask=p["attention_mask"],
            pixel_values=p["pixel_values"],
            image_sizes=p["image_sizes"],
            logits_to_keep=p["keep"],
        )
        logits = out.logits[:, :-1].float()  # position p predicts token p + 1
        lp = torch.log_softmax(logits, -1).gather(-1, p["labels"][..., None])[..., 0]
        return (lp * p["scored"]).sum(-1)

    with torch.no_grad():
        reference = [logps(p) for p in pairs]

    if args.lora_rank:
        from peft import LoraConfig, get_peft_model

        targets = ["q_proj", "k_proj", "v_proj", "o_proj"]  # the trainer's default targets
        cfg = LoraConfig(
            r=args.lora_rank,
            lora_alpha=2 * args.lora_rank,
            lora_dropout=0.0,
            target_modules=rf".*language_model.*\.({'|'.join(targets)})",
        )
        model = get_peft_model(model, cfg)
    else:
        for name, p in model.named_parameters():
            p.requires_grad_("vision_tower" not in name)
    if args.grad_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-7, weight_decay=0.0)
    times = []
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        i = step % n
        lp = logps(pairs[i])
        ref = reference[i]
        margin = 0.1 * ((lp[0] - ref[0]) - (lp[1] - ref[1]))
        loss = -F.logsigmoid(margin)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    trained = sum(p.numel() for p in params)
    mean = sum(times) / len(times)
    label = f"torch lora r{args.lora_rank}" if args.lora_rank else "torch dec+proj"
    if args.grad_checkpointing:
        label += " ckpt"
    print(
        f"{label:<26} {1:>5} {trained:>12} {'':>8} {mean:>9.3f} {min(times):>9.3f} "
        f"{max(times):>9.3f}  (torch {torch.__version__}, {torch.get_num_threads()} threads)"
    )


if __name__ == "__main__":
    main()
