"""DPO goldens for training Qwen2.5-VL (`trainer dpo --kind vlm` on a Qwen2.5-VL checkpoint),
from Hugging Face transformers and peft, in float64 from the fixture's bf16 weights.

usage: python scripts/golden/make_qwen2_5_vl_dpo.py fixtures/qwen2_5_vl
Needs: torch, transformers (>= 5), peft, safetensors, pillow, numpy; versions are written into
dpo/cases.json ("generator").

Reads qwen2_5_vl_7b/model (hub layout, untied head), media/300x200.png and dpo/adapter: a LoRA
adapter written by our trainer, loaded here with `PeftModel.from_pretrained` onto
`Qwen2_5_VLForConditionalGeneration`. It was made, from the repository root, by
  trainer dpo --kind vlm --model fixtures/qwen2_5_vl/qwen2_5_vl_7b/model \
    --data fixtures/qwen2_5_vl/dpo/adapter_pairs.jsonl --out OUT --lora-rank 4 --lora-alpha 8 \
    --lora-targets q_proj,k_proj,v_proj,o_proj,qkv,mlp.0 --train-vision --max-steps 4 \
    --batch-size 2 --lr 2e-2 --warmup-ratio 0
(adapter_pairs.jsonl's image paths relative to it; OUT/adapter_* copied to dpo/adapter).

One preference pair on the 300x200 image, tokenized as the trainer does: the ChatML prompt
(default system turn) with the image item `<|vision_start|><|image_pad|><|vision_end|>` before
the question, expanded by the processor, then each answer `{answer}<|im_end|>` tokenized apart.
Writes (dpo/expected.safetensors, dpo/cases.json):
  chosen.input_ids, rejected.input_ids, prompt_len, image_grid_thw
  base log-probs of both answers (the reference), LoRA log-probs (the adapter through PeftModel)
  full fine-tuning: policy = reference = base, sigmoid DPO loss (beta 0.1; ln 2 there) and its
    gradient w.r.t. a few weights (grad.<key>, named by checkpoint key)
  LoRA: policy = base + adapter, reference = base: the DPO loss and its gradient w.r.t. a few
    adapter factors (lora_grad.<PEFT key>)
"""
import argparse, json, os, sys

import numpy as np
import peft
import PIL
import torch
import torch.nn.functional as F
import transformers
from PIL import Image
from peft import PeftModel
from safetensors.torch import save_file
from transformers import PreTrainedTokenizerFast, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_qwen2_5_vl import CHAT_TEMPLATE, CLIP_MEAN, CLIP_STD, MAX_PIXELS, MIN_PIXELS  # noqa: E402

BETA = 0.1
QUESTION = "Which caption fits the image better?"
CHOSEN = "Caption A: two green triangles."
REJECTED = "Caption B: a red circle"
# Weights whose full-fine-tuning gradient is stored, by checkpoint key (hub layout): attention
# and MLP of both decoder layers, the merger (the projector) and a vision block.
GRAD_KEYS = ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight",
             "model.layers.1.self_attn.k_proj.bias", "model.norm.weight",
             "visual.merger.mlp.0.weight", "visual.merger.mlp.2.bias",
             "visual.blocks.3.mlp.up_proj.weight", "visual.blocks.0.attn.qkv.weight"]
# The same modules under transformers 5's module paths.
MODULE_PREFIX = [("visual.", "model.visual."), ("model.", "model.language_model.")]


def module_key(key):
    for old, new in MODULE_PREFIX:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def prompt_text():
    # ChatTemplate::ChatMl with its default system turn; the `<image>\n` marker line rewritten
    # as the processor's image item (MediaMarkers::QwenVl).
    return ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            "<|vision_start|><|image_pad|><|vision_end|>" + QUESTION + "<|im_end|>\n<|im_start|>assistant\n")


def seq_logprob(model, ids, prompt_len, pix, grid, types):
    # mm_token_type_ids (1 on image pads) is what lets transformers 5 compute the M-RoPE
    # positions of the image; without it the sequence would be placed as text.
    out = model(input_ids=ids[None], pixel_values=pix, image_grid_thw=grid,
                attention_mask=torch.ones_like(ids)[None], mm_token_type_ids=types[None])
    logits = out.logits[0, prompt_len - 1:-1]
    return torch.log_softmax(logits, -1).gather(-1, ids[prompt_len:, None])[:, 0].sum()


def dpo(pc, pr, rc, rr):
    return -F.logsigmoid(BETA * ((pc - rc) - (pr - rr)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("fixtures")
    a = ap.parse_args()
    torch.manual_seed(0)
    mdir = os.path.join(a.fixtures, "qwen2_5_vl_7b", "model")
    ddir = os.path.join(a.fixtures, "dpo")
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(mdir, "tokenizer.json"), eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>")
    tok.chat_template = CHAT_TEMPLATE
    ip = Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, patch_size=14, temporal_patch_size=2,
                                  merge_size=2, image_mean=CLIP_MEAN, image_std=CLIP_STD, resample=3)
    proc = Qwen2_5_VLProcessor(image_processor=ip, tokenizer=tok,
                               video_processor=Qwen2VLVideoProcessor(image_mean=CLIP_MEAN, image_std=CLIP_STD),
                               chat_template=CHAT_TEMPLATE)
    image = Image.open(os.path.join(a.fixtures, "media", "300x200.png")).convert("RGB")
    enc = proc(text=[prompt_text()], images=[image], return_tensors="pt")
    prompt_ids = enc["input_ids"][0]
    pix = enc["pixel_values"].to(torch.float64)
    grid = enc["image_grid_thw"]
    answer = lambda s: torch.tensor(tok(s + "<|im_end|>", add_special_tokens=False)["input_ids"])
    chosen = torch.cat([prompt_ids, answer(CHOSEN)])
    rejected = torch.cat([prompt_ids, answer(REJECTED)])
    plen = len(prompt_ids)
    prompt_types = enc["mm_token_type_ids"][0]
    assert int(prompt_types.sum()) == int(grid.prod() // 4), "one type id per image token"
    types = {len(chosen): torch.cat([prompt_types, torch.zeros(len(chosen) - plen, dtype=prompt_types.dtype)]),
             len(rejected): torch.cat([prompt_types, torch.zeros(len(rejected) - plen, dtype=prompt_types.dtype)])}

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(mdir, dtype=torch.float64,
                                                               attn_implementation="eager").eval()
    params = dict(model.named_parameters())
    tensors = {"chosen.input_ids": chosen.to(torch.int64), "rejected.input_ids": rejected.to(torch.int64),
               "image_grid_thw": grid.to(torch.int64)}

    # Full fine-tuning at the start: policy = reference = base.
    model.zero_grad()
    pc = seq_logprob(model, chosen, plen, pix, grid, types[len(chosen)])
    pr = seq_logprob(model, rejected, plen, pix, grid, types[len(rejected)])
    rc, rr = pc.detach(), pr.detach()
    loss_full = dpo(pc, pr, rc, rr)
    loss_full.backward()
    for key in GRAD_KEYS:
        g = params[module_key(key)].grad
        assert g is not None and g.abs().max() > 0, f"no gradient for {key}"
        tensors[f"grad.{key}"] = g.detach().clone().contiguous()

    # LoRA: the adapter our trainer wrote, through PeftModel; the reference is the base.
    model.zero_grad()
    lora = PeftModel.from_pretrained(model, os.path.join(ddir, "adapter"), is_trainable=True).eval()
    lora = lora.to(torch.float64)
    lora_params = dict(lora.named_parameters())
    lc = seq_logprob(lora, chosen, plen, pix, grid, types[len(chosen)])
    lr = seq_logprob(lora, rejected, plen, pix, grid, types[len(rejected)])
    loss_lora = dpo(lc, lr, rc, rr)
    loss_lora.backward()
    lora_keys = sorted(k for k in lora_params if "lora_" in k)
    assert lora_keys, "the adapter attached no LoRA layer"
    picked = [k for k in lora_keys if any(m in k for m in ("layers.0.self_attn.q_proj", "layers.1.self_attn.v_proj",
                                                         "blocks.0.attn.qkv", "merger.mlp.0"))]
    for k in picked:
        # The name as adapter_model.safetensors stores it (no adapter name).
        saved = k.replace(".default", "")
        tensors[f"lora_grad.{saved}"] = lora_params[k].grad.detach().clone().contiguous()

    save_file(tensors, os.path.join(ddir, "expected.safetensors"))
    gen = (f"transformers {transformers.__version__}, peft {peft.__version__}, torch {torch.__version__}, "
           f"pillow {PIL.__version__}, numpy {np.__version__}, float64 from bf16 weights, eager attention")
    cases = dict(generator=gen, model="../qwen2_5_vl_7b/model", image="../media/300x200.png",
                 question=QUESTION, chosen=CHOSEN, rejected=REJECTED, beta=BETA, prompt_len=plen,
                 base_logps=[rc.item(), rr.item()], lora_logps=[lc.item(), lr.item()],
                 full_loss=loss_full.item(), lora_loss=loss_lora.item(),
                 lora_modules=sorted({k.split(".lora_")[0] for k in lora_keys}))
    json.dump(cases, open(os.path.join(ddir, "cases.json"), "w"), indent=1)
    print(json.dumps({k: v for k, v in cases.items() if k != "lora_modules"}, indent=1))
    print("lora modules", len(cases["lora_modules"]), cases["lora_modules"][:3])


if __name__ == "__main__":
    main()
