"""DPO goldens for training Qwen3-VL (`trainer dpo --kind vlm` on a Qwen3-VL checkpoint), from
Hugging Face transformers, in float64 from the fixture's bf16 weights: make_qwen2_5_vl_dpo.py's
full-fine-tuning half for the other Qwen-VL family.

usage: python scripts/golden/make_qwen3_vl_dpo.py fixtures/qwen3_vl
Needs: torch, torchvision, transformers (>= 5, with models.qwen3_vl), safetensors, pillow,
numpy; versions are written into dpo/cases.json ("generator").

Reads qwen3_vl_4b/model (tied head, sharded, three deep-stack levels),
../qwen2_5_vl/media/300x200.png, through the torchvision image processor the fixture's
preprocessor_config.json names (`Qwen2VLImageProcessorFast`: what `AutoProcessor` loads), and
dpo/adapter: a LoRA adapter written by our trainer, loaded here with `PeftModel.from_pretrained`
onto `Qwen3VLForConditionalGeneration`. It was made, from the repository root, by
  trainer dpo --kind vlm --model fixtures/qwen3_vl/qwen3_vl_4b/model \
    --data fixtures/qwen3_vl/dpo/adapter_pairs.jsonl --out OUT --lora-rank 4 --lora-alpha 8 \
    --lora-targets q_proj,k_proj,v_proj,o_proj,qkv,linear_fc1 --train-vision --max-steps 4 \
    --batch-size 2 --lr 2e-2 --warmup-ratio 0
(OUT/adapter_* copied to dpo/adapter).

One preference pair on the image, tokenized as the trainer does: the ChatML prompt (default
system turn) with the image item `<|vision_start|><|image_pad|><|vision_end|>` before the
question, expanded by the processor, then each answer `{answer}<|im_end|>` tokenized apart.
Writes (dpo/expected.safetensors, dpo/cases.json):
  chosen.input_ids, rejected.input_ids, prompt_len, image_grid_thw
  base log-probs of both answers (policy = reference = base)
  the sigmoid DPO loss (beta 0.1; ln 2 there) and its gradient w.r.t. a few weights (grad.<key>,
    named by checkpoint key, here also transformers 5's parameter name): decoder attention with
    its q/k norms, the main merger, a deep-stack merger and a vision block
  LoRA: policy = base + adapter, reference = base: log-probs, the DPO loss and its gradient
    w.r.t. a few adapter factors (lora_grad.<PEFT key>), and the modules PEFT attached
"""
import argparse, json, os

import numpy as np
import peft
import PIL
import torch
import torch.nn.functional as F
import torchvision
import transformers
from PIL import Image
from peft import PeftModel
from safetensors.torch import save_file
from transformers import PreTrainedTokenizerFast, Qwen3VLForConditionalGeneration, Qwen3VLProcessor
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

BETA = 0.1
QUESTION = "Which caption fits the image better?"
CHOSEN = "Caption A: two green triangles."
REJECTED = "Caption B: a red circle"
MIN_PIXELS, MAX_PIXELS = 65536, 16777216
HALF = [0.5, 0.5, 0.5]
GRAD_KEYS = ["model.language_model.layers.0.self_attn.q_proj.weight",
             "model.language_model.layers.0.self_attn.q_norm.weight",
             "model.language_model.layers.2.self_attn.k_norm.weight",
             "model.language_model.layers.1.mlp.down_proj.weight",
             "model.language_model.norm.weight",
             "model.visual.merger.linear_fc1.weight",
             "model.visual.deepstack_merger_list.1.linear_fc2.weight",
             "model.visual.deepstack_merger_list.0.norm.weight",
             "model.visual.blocks.0.attn.qkv.weight"]


def prompt_text():
    return ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            "<|vision_start|><|image_pad|><|vision_end|>" + QUESTION + "<|im_end|>\n<|im_start|>assistant\n")


def seq_logprob(model, ids, prompt_len, pix, grid, types):
    # mm_token_type_ids (1 on image pads) is what lets transformers 5 compute the M-RoPE
    # positions of the image.
    out = model(input_ids=ids[None], pixel_values=pix, image_grid_thw=grid,
                attention_mask=torch.ones_like(ids)[None], mm_token_type_ids=types[None])
    logits = out.logits[0, prompt_len - 1:-1]
    return torch.log_softmax(logits, -1).gather(-1, ids[prompt_len:, None])[:, 0].sum()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("fixtures")
    a = ap.parse_args()
    torch.manual_seed(0)
    mdir = os.path.join(a.fixtures, "qwen3_vl_4b", "model")
    ddir = os.path.join(a.fixtures, "dpo")
    os.makedirs(ddir, exist_ok=True)
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(mdir, "tokenizer.json"), eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>")
    ip = Qwen2VLImageProcessor(size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}, patch_size=16,
                               temporal_patch_size=2, merge_size=2, image_mean=HALF, image_std=HALF, resample=3)
    proc = Qwen3VLProcessor(image_processor=ip, tokenizer=tok, video_processor=Qwen3VLVideoProcessor())
    image = Image.open(os.path.join(a.fixtures, "..", "qwen2_5_vl", "media", "300x200.png")).convert("RGB")
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
    types = lambda seq: torch.cat([prompt_types, torch.zeros(len(seq) - plen, dtype=prompt_types.dtype)])

    model = Qwen3VLForConditionalGeneration.from_pretrained(mdir, dtype=torch.float64,
                                                            attn_implementation="eager").eval()
    params = dict(model.named_parameters())
    tensors = {"chosen.input_ids": chosen.to(torch.int64), "rejected.input_ids": rejected.to(torch.int64),
               "image_grid_thw": grid.to(torch.int64)}

    model.zero_grad()
    pc = seq_logprob(model, chosen, plen, pix, grid, types(chosen))
    pr = seq_logprob(model, rejected, plen, pix, grid, types(rejected))
    rc, rr = pc.detach(), pr.detach()
    loss = -F.logsigmoid(BETA * ((pc - rc) - (pr - rr)))
    loss.backward()
    for key in GRAD_KEYS:
        g = params[key].grad
        assert g is not None and g.abs().max() > 0, f"no gradient for {key}"
        tensors[f"grad.{key}"] = g.detach().clone().contiguous()

    model.zero_grad()
    lora = PeftModel.from_pretrained(model, os.path.join(ddir, "adapter"), is_trainable=True).eval()
    lora = lora.to(torch.float64)
    lora_params = dict(lora.named_parameters())
    lc = seq_logprob(lora, chosen, plen, pix, grid, types(chosen))
    lr = seq_logprob(lora, rejected, plen, pix, grid, types(rejected))
    loss_lora = -F.logsigmoid(BETA * ((lc - rc) - (lr - rr)))
    loss_lora.backward()
    lora_keys = sorted(k for k in lora_params if "lora_" in k)
    assert lora_keys, "the adapter attached no LoRA layer"
    picked = [k for k in lora_keys if any(m in k for m in ("layers.0.self_attn.q_proj", "blocks.0.attn.qkv",
                                                         "merger.linear_fc1", "deepstack_merger_list.1.linear_fc1"))]
    for k in picked:
        tensors[f"lora_grad.{k.replace('.default', '')}"] = lora_params[k].grad.detach().clone().contiguous()

    save_file(tensors, os.path.join(ddir, "expected.safetensors"))
    gen = (f"transformers {transformers.__version__}, peft {peft.__version__}, torch {torch.__version__}, torchvision "
           f"{torchvision.__version__}, pillow {PIL.__version__}, numpy {np.__version__}, float64 from bf16 "
           f"weights, eager attention, Qwen2VLImageProcessor (torchvision backend)")
    cases = dict(generator=gen, model="../qwen3_vl_4b/model", image="../../qwen2_5_vl/media/300x200.png",
                 question=QUESTION, chosen=CHOSEN, rejected=REJECTED, beta=BETA, prompt_len=plen,
                 image_grid_thw=grid[0].tolist(), base_logps=[rc.item(), rr.item()], full_loss=loss.item(),
                 lora_logps=[lc.item(), lr.item()], lora_loss=loss_lora.item(),
                 lora_modules=sorted({k.split(".lora_")[0] for k in lora_keys}))
    json.dump(cases, open(os.path.join(ddir, "cases.json"), "w"), indent=1)
    print(json.dumps({k: v for k, v in cases.items() if k != "lora_modules"}, indent=1))
    print("lora modules", len(cases["lora_modules"]), cases["lora_modules"][:3])


if __name__ == "__main__":
    main()
