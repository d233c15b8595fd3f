"""Tiny Qwen3-VL (dense) checkpoints that keep the real 2B/4B/8B configs' geometry, written by
transformers' `save_pretrained`, and reference outputs from Hugging Face transformers on images of
real sizes.

usage: python scripts/golden/make_qwen3_vl.py fixtures/qwen3_vl --seed 7
Needs: torch, torchvision, transformers (>= 5, with models.qwen3_vl), tokenizers, safetensors,
pillow, numpy. Versions used are written into each cases.json ("generator").

The tokenizer, the chat template, the test images (fixtures/qwen2_5_vl/media) and the weight
widening are make_qwen2_5_vl.py's: Qwen3-VL's tokenizer has Qwen2.5's special ids for every
marker used here.

Two checkpoints, as transformers 5 saves them (the hub's Qwen3-VL repositories, saved by
transformers 4.57, already use this key layout: `model.visual.*`, `model.language_model.*`,
`lm_head`):
  qwen3_vl_4b   Qwen3-VL-2B/4B-Instruct: tied head, vision deep-stack at 3 of 4 blocks (real:
                [5, 11, 17] of 24), bf16, sharded in three files (model.safetensors.index.json)
  qwen3_vl_8b   Qwen3-VL-8B-Instruct: untied head, deep-stack [1, 2, 3] of 5 blocks (real:
                [8, 16, 24] of 27), a 16-wide decoder, one bf16 file

Real geometry kept (Qwen/Qwen3-VL-{2B,4B,8B}-Instruct config.json, preprocessor_config.json):
vision patch_size 16, temporal_patch_size 2, spatial_merge_size 2, 2304 learned position
embeddings (a 48 x 48 grid, bilinearly interpolated to each image's grid with aligned corners),
2-D axial rotary (theta 10000), LayerNorm blocks with a gelu_pytorch_tanh MLP, three deep-stack
mergers (post-shuffle LayerNorm); decoder: q/k RMSNorm per head, no attention biases, head_dim
larger than hidden / heads (as 4B: 2560 / 32 heads, head_dim 128), rope_theta 5e6, interleaved
M-RoPE with mrope_section in the real 24:20:20 proportion (of head_dim / 2 = 64), here 6:5:5 of
head_dim / 2 = 16; GQA; processor size {shortest_edge 65536, longest_edge 16777216}, mean / std
0.5, bicubic, factor 32; special ids as Qwen2.5's (<|image_pad|> 151655 ...).
"""
import argparse, hashlib, json, os, sys
import numpy as np
import torch
import torchvision
import transformers
import PIL
from PIL import Image
from safetensors.torch import save_file
from transformers import (Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor,
                          PreTrainedTokenizerFast)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_qwen2_5_vl import (make_tokenizer, widen, sys_user, CHAT_TEMPLATE, SPECIALS, VOCAB,  # noqa: E402
                             LOGIT_COLS)

MIN_PIXELS, MAX_PIXELS = 65536, 16777216
HALF = [0.5, 0.5, 0.5]
REF_DTYPE = torch.float64
# Qwen3 normalises each head's queries and keys, so make_qwen2_5_vl.py's q/k projection gain no
# longer sets the attention's sharpness; the q/k norm weights do. At 1.0 the 4B-like model's
# greedy output is one token repeated; at 2.0 it varies with prompt and pixels.
QK_NORM_GAIN = 2.0
MEDIA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../fixtures/qwen2_5_vl/media")


def hf_config(hidden, heads, kv, head_dim, depth, deepstack, tied):
    rope = {"rope_type": "default", "mrope_section": [6, 5, 5], "mrope_interleaved": True, "rope_theta": 5000000.0}
    return Qwen3VLConfig(
        vision_config=dict(depth=depth, hidden_size=32, hidden_act="gelu_pytorch_tanh", intermediate_size=64,
                           num_heads=2, in_channels=3, patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                           out_hidden_size=hidden, num_position_embeddings=2304, deepstack_visual_indexes=deepstack),
        text_config=dict(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim,
                         max_position_embeddings=262144, rms_norm_eps=1e-6, hidden_act="silu", attention_bias=False,
                         bos_token_id=151643, eos_token_id=151645, rope_parameters=rope, tie_word_embeddings=tied),
        image_token_id=SPECIALS["<|image_pad|>"], video_token_id=SPECIALS["<|video_pad|>"],
        vision_start_token_id=SPECIALS["<|vision_start|>"], vision_end_token_id=SPECIALS["<|vision_end|>"],
        tie_word_embeddings=tied)


def write_model(mdir, model, tok, shard):
    os.makedirs(mdir, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(mdir, max_shard_size=shard)
    tok.save(os.path.join(mdir, "tokenizer.json"))
    json.dump({"model_max_length": 262144, "padding_side": "right", "eos_token": "<|im_end|>",
               "pad_token": "<|endoftext|>", "chat_template": CHAT_TEMPLATE},
              open(os.path.join(mdir, "tokenizer_config.json"), "w"), indent=1)
    # preprocessor_config.json as Qwen/Qwen3-VL-*-Instruct ship it.
    json.dump({"size": {"longest_edge": MAX_PIXELS, "shortest_edge": MIN_PIXELS}, "patch_size": 16,
               "temporal_patch_size": 2, "merge_size": 2, "image_mean": HALF, "image_std": HALF,
               "processor_class": "Qwen3VLProcessor", "image_processor_type": "Qwen2VLImageProcessorFast"},
              open(os.path.join(mdir, "preprocessor_config.json"), "w"), indent=1)


def as_ref(enc):
    return {k: (v.to(REF_DTYPE) if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in enc.items()}


def sha(t):
    return hashlib.sha256(t.contiguous().numpy().astype("<f4").tobytes()).hexdigest()


def build(out, seed, name, dims, tok, imgs, source, shard):
    torch.manual_seed(seed)
    cfg = hf_config(**dims)
    for c in (cfg, cfg.vision_config, cfg.text_config):
        c._attn_implementation = "eager"
    model = Qwen3VLForConditionalGeneration(cfg).eval().float()
    widen(model)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("q_norm.weight") or n.endswith("k_norm.weight"):
                p.copy_((p * QK_NORM_GAIN).to(torch.bfloat16).float())
    mdir = os.path.join(out, name, "model")
    write_model(mdir, model, tok, shard)
    # The references come from what transformers loads back: casting the built model to bf16
    # and up again would also round its rotary inv_freq buffers, which loading recomputes.
    model, model32 = (Qwen3VLForConditionalGeneration.from_pretrained(mdir, dtype=dt, attn_implementation="eager")
                      .eval() for dt in (REF_DTYPE, torch.float32))

    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    hf_tok.chat_template = CHAT_TEMPLATE
    kw = dict(size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}, patch_size=16, temporal_patch_size=2,
              merge_size=2, image_mean=HALF, image_std=HALF, resample=3)
    ip = Qwen2VLImageProcessorPil(**kw)
    ip_tv = Qwen2VLImageProcessor(**kw)
    # The torchvision backend is what `AutoProcessor` loads for these configs
    # (`image_processor_type: Qwen2VLImageProcessorFast`, as the hub's Qwen3-VL files say), so the
    # references are computed from its pixels; the Pillow backend's are hashed beside them.
    proc = Qwen3VLProcessor(image_processor=ip_tv, tokenizer=hf_tok, video_processor=Qwen3VLVideoProcessor(),
                            chat_template=CHAT_TEMPLATE)
    specs = [
        ("text_only", sys_user("Question: What color is the ball?"), [], "Answer 1 is better."),
        ("image_1920x1080", sys_user("Text Caption: [a red circle on a blue square]", 1), ["1920x1080"], "Final Score: 3"),
        ("image_300x200", sys_user("Text Caption: [two green triangles]", 1), ["300x200"], "Final Score: 5"),
        ("pair_300x200_40x30", sys_user("Compare both images. Text Caption: [a yellow star]", 2), ["300x200", "40x30"],
         "Image 2 is better than Image 1."),
    ]
    tensors, cases, fp32_gap = {}, [], 0.0
    with torch.no_grad():
        for cname, prompt, keys, completion in specs:
            kw = {"images": [imgs[k] for k in keys]} if keys else {}
            enc = proc(text=[prompt + completion], return_tensors="pt", **kw)
            prompt_len = len(proc(text=[prompt], return_tensors="pt", **kw)["input_ids"][0])
            ids = enc["input_ids"][0]
            logits = model(**as_ref(enc)).logits[0]
            # How far transformers' own fp32 forward is from the float64 reference: the
            # tolerance of the candle comparison must sit above this.
            fp32_gap = max(fp32_gap, float((model32(**enc).logits[0].double() - logits).abs().max()))
            rows_logits = logits[prompt_len - 1:-1].double()
            logp = torch.log_softmax(rows_logits, -1).gather(-1, ids[prompt_len:, None])[:, 0]
            tensors[f"{cname}.input_ids"] = ids.to(torch.int64).contiguous()
            tensors[f"{cname}.logits_cols"] = rows_logits[:, :LOGIT_COLS].float().contiguous()
            tensors[f"{cname}.logits_specials"] = rows_logits[:, min(SPECIALS.values()):].float().contiguous()
            tensors[f"{cname}.logsumexp"] = torch.logsumexp(rows_logits, -1).float().contiguous()
            tensors[f"{cname}.last_logits_cols"] = logits[-1, :LOGIT_COLS].float().contiguous()
            case = dict(name=cname, prompt=prompt, completion=completion, images=[f"{k}.png" for k in keys],
                        prompt_len=prompt_len, seq_len=len(ids), completion_logprob=float(logp.sum()),
                        num_image_tokens=int((ids == SPECIALS["<|image_pad|>"]).sum()))
            if keys:
                pix = enc["pixel_values"]
                assert pix.dtype == torch.float32
                grid = enc["image_grid_thw"]
                tensors[f"{cname}.image_grid_thw"] = grid.to(torch.int64).contiguous()
                sizes = grid.prod(-1).tolist()
                at, hashes, tv_hashes = 0, [], []
                for i, s in enumerate(sizes):
                    part = pix[at:at + s]
                    tv_hashes.append(sha(part))
                    tensors[f"{cname}.pixel_values_head{i}"] = part[:4].clone().contiguous()
                    pil = ip(images=[imgs[keys[i]]], return_tensors="pt")["pixel_values"]
                    hashes.append(sha(pil))
                    at += s
                # The Pillow backend resizes with Pillow's kernel, the torchvision one (what the
                # references above were computed from) with torch's u8 kernel: both hashed.
                case["pixel_values_sha256"] = hashes
                case["pixel_values_sha256_torchvision"] = tv_hashes
                pos, _ = model.model.get_rope_index(enc["input_ids"], enc["mm_token_type_ids"], image_grid_thw=grid)
                tensors[f"{cname}.position_ids"] = pos[:, 0].to(torch.int64).contiguous()
                if sum(sizes) < 2000:
                    vis = model.model.get_image_features(as_ref(enc)["pixel_values"], grid)
                    for i, f in enumerate(vis.pooler_output):
                        tensors[f"{cname}.image_features{i}"] = f.float().contiguous()
                    for j, level in enumerate(vis.deepstack_features):
                        for i, f in enumerate(level):
                            tensors[f"{cname}.deepstack{j}_features{i}"] = f.float().contiguous()
            cases.append(case)
        gen_prompt = sys_user("Text Caption: [two green triangles]", 1)
        enc = proc(text=[gen_prompt], images=[imgs["300x200"]], return_tensors="pt")
        model.model.rope_deltas = None
        out_ids = model.generate(**as_ref(enc), max_new_tokens=24, do_sample=False, eos_token_id=SPECIALS["<|im_end|>"],
                                 pad_token_id=SPECIALS["<|endoftext|>"])[0, enc["input_ids"].shape[1]:].tolist()
        assert len(set(out_ids)) >= 6, f"greedy output repeats ({out_ids}): widen the init"
        generation = dict(prompt=gen_prompt, images=["300x200.png"], max_new_tokens=24, tokens=out_ids,
                          text=tok.decode(out_ids, skip_special_tokens=False))
    gdir = os.path.join(out, name)
    save_file(tensors, os.path.join(gdir, "expected.safetensors"))
    gen = (f"transformers {transformers.__version__}, torch {torch.__version__}, torchvision "
           f"{torchvision.__version__}, pillow {PIL.__version__}, numpy {np.__version__}, "
           f"{str(REF_DTYPE).split('.')[-1]} from bf16 weights, eager attention")
    json.dump(dict(generator=gen, seed=seed, source=source, media="../../qwen2_5_vl/media",
                   fp32_vs_float64_max_logit_gap=fp32_gap, cases=cases, generation=generation),
              open(os.path.join(gdir, "cases.json"), "w"), indent=1)
    print(name, "fp32 gap", fp32_gap, "generated", out_ids, repr(generation["text"]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    tok = make_tokenizer(5)  # make_qwen2_5_vl.py's seed: the same tokenizer.json
    imgs = {k: Image.open(os.path.join(MEDIA, f"{k}.png")).convert("RGB") for k in ["1920x1080", "300x200", "40x30"]}
    build(a.out, a.seed, "qwen3_vl_4b",
          dict(hidden=32, heads=2, kv=1, head_dim=32, depth=4, deepstack=[0, 1, 2], tied=True), tok, imgs,
          "Qwen/Qwen3-VL-4B-Instruct (and -2B) config.json: tied head; widths and depths shrunk", "4MB")
    build(a.out, a.seed + 1, "qwen3_vl_8b",
          dict(hidden=16, heads=2, kv=1, head_dim=32, depth=5, deepstack=[1, 2, 3], tied=False), tok, imgs,
          "Qwen/Qwen3-VL-8B-Instruct config.json: untied head; widths and depths shrunk", "50MB")


if __name__ == "__main__":
    main()
