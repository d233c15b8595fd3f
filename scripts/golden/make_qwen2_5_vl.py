"""Tiny Qwen2.5-VL checkpoints that keep the real configs' geometry (14 px patches, temporal
patch 2, 2x2 merge, 112 px windows with full-attention blocks, 2-D vision rotary, M-RoPE with
the real section proportions, rope_theta 1e6, Qwen2's special token ids), widths, depths and the
vocabulary's unused middle shrunk; reference outputs from Hugging Face transformers on images of
real sizes.

usage: python scripts/golden/make_qwen2_5_vl.py fixtures/qwen2_5_vl --seed 5
Needs: torch, transformers (>= 5), tokenizers, safetensors, pillow, numpy. Versions used are
written into each cases.json ("generator").

Two checkpoints, in the layout the hub's Qwen2.5-VL repositories (and UnifiedReward-qwen-*,
UnifiedReward-2.0-qwen-*) ship: `model.layers.*`, `model.embed_tokens`, `visual.*`, `lm_head`,
and their config.json style (text settings at the top level, `rope_scaling` with
`mrope_section`, `vision_config` with `fullatt_block_indexes`):
  qwen2_5_vl_3b   UnifiedReward-qwen-3b / -2.0-qwen-3b (Qwen2.5-VL-3B): tied head
  qwen2_5_vl_7b   UnifiedReward-qwen-7b / -2.0-qwen-7b (Qwen2.5-VL-7B): untied head

Real geometry kept (Qwen/Qwen2.5-VL-{3B,7B}-Instruct config.json, preprocessor_config.json):
vision patch_size 14, temporal_patch_size 2, spatial_merge_size 2, window_size 112 (4 x 4 merged
tokens a window), full attention in the last block of every group (the real 32 blocks have
[7, 15, 23, 31]: every 8th; depth 4 keeps [1, 3]: every 2nd), tokens_per_second 2, silu SwiGLU,
RMSNorm eps 1e-6, vision rope_theta 10000; text rope_theta 1e6, rms_norm_eps 1e-6, M-RoPE
sections in the real proportion 16:24:24 of head_dim/2 = 64, scaled to head_dim 16 as 2:3:3
(head_dim 128 would make the 151657-row embedding 16x larger); GQA (3B 16/2, 7B 28/4 -> 2/1);
processor min_pixels 3136, max_pixels 12845056, CLIP mean/std, bicubic, factor 28; special ids
<|endoftext|> 151643, <|im_start|> 151644, <|im_end|> 151645, <|vision_start|> 151652,
<|vision_end|> 151653, <|image_pad|> 151655, <|video_pad|> 151656.
"""
import argparse, hashlib, json, math, os
import numpy as np
import torch
import transformers
import PIL
from PIL import Image, ImageDraw
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers, Regex, normalizers
from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, PreTrainedTokenizerFast,
                          Qwen2_5_VLProcessor)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

QWEN2_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
SPECIALS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
            "<|object_ref_start|>": 151646, "<|object_ref_end|>": 151647, "<|box_start|>": 151648,
            "<|box_end|>": 151649, "<|quad_start|>": 151650, "<|quad_end|>": 151651,
            "<|vision_start|>": 151652, "<|vision_end|>": 151653, "<|vision_pad|>": 151654,
            "<|image_pad|>": 151655, "<|video_pad|>": 151656}
BPE_VOCAB = 600
VOCAB = 151657  # one past <|video_pad|>: ids BPE_VOCAB..151642 are zero rows (an unused padded vocabulary)
MIN_PIXELS, MAX_PIXELS = 3136, 12845056
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
LOGIT_COLS = 1024  # stored logits columns: the whole BPE vocabulary (and zero rows after it)

CHAT_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
                 "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
                 "{% for c in message['content'] %}{% if c['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
                 "{% elif c['type'] == 'video' %}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
                 "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
                 "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

CORPUS = """You are given a text caption and two generated images based on that caption. Your task is to evaluate
and compare these images based on two key criteria: Alignment with the Caption and Overall Image Quality.
Image 1 is better than Image 2. Image 2 is better than Image 1. Both images are equally good.
Extract key elements from the provided text caption, evaluate their presence in the generated image
and assign a score from 1 to 5 after 'Final Score:'. Final Score: 4. Final Score: 3.5
You are a helpful assistant. Question: What color is the ball? Answer 1 is better. Answer 2 is better.
A red circle on a blue square. Two green triangles beside a yellow star. The video shows a cat running.
Video 1 is better than Video 2. The first response: [The ball is red.] The second response: [It is blue.]
0 1 2 3 4 5 6 7 8 9 10 100 12.5 the of and to in is it that was for on are with as I his they be at one have
""" * 3

# Wide enough that greedy decoding varies with prompt and pixels, narrow enough that the
# references are well conditioned: with make_conformance.py's gains (1.6, q/k 3.0) this
# deeper stack (4 vision blocks, window reordering, merger, decoder) made transformers' own
# fp32 forward differ from its float64 one by 3.3e-4 on the pair case; at 1.2 / 1.5 by 1.3e-5.
EMBED_STD, LAYER_GAIN, QK_GAIN = 0.3, 1.2, 1.5


def make_tokenizer(seed):
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    rng = np.random.default_rng(seed)
    words = CORPUS.split()
    tok.train_from_iterator([CORPUS] + [" ".join(rng.choice(words, 12)) for _ in range(200)], trainer)
    # Special tokens at Qwen2's ids: put in the model vocabulary first, so the added-token
    # table takes those ids.
    j = json.loads(tok.to_str())
    for s, i in SPECIALS.items():
        j["model"]["vocab"][s] = i
    j["added_tokens"] = [dict(id=i, content=s, single_word=False, lstrip=False, rstrip=False,
                              normalized=False, special=True) for s, i in SPECIALS.items()]
    tok = Tokenizer.from_str(json.dumps(j))
    for s, i in SPECIALS.items():
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    return tok


def draw_image(w, h, seed):
    """Flat shapes on a two-colour split with thin lines: compresses well, exercises resampling."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 255, 3)))
    d = ImageDraw.Draw(im)
    d.rectangle([0, h // 2, w, h], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    for _ in range(12):
        x0, y0 = int(rng.integers(0, max(1, w - 4))), int(rng.integers(0, max(1, h - 4)))
        x1 = x0 + int(rng.integers(3, max(4, w // 3)))
        y1 = y0 + int(rng.integers(3, max(4, h // 3)))
        fill = tuple(int(v) for v in rng.integers(0, 255, 3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)([x0, y0, x1, y1], fill=fill)
    for k in range(0, w, max(8, w // 40)):
        d.line([k, 0, (k * 7) % w, h], fill=tuple(int(v) for v in rng.integers(0, 255, 3)), width=1)
    return im


def hf_config(heads, kv, head_dim, tied):
    hidden = heads * head_dim
    rope = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1000000.0}
    return Qwen2_5_VLConfig(
        vision_config=dict(depth=4, hidden_size=32, hidden_act="silu", intermediate_size=48, num_heads=2, in_channels=3,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2,
                           window_size=112, out_hidden_size=hidden, fullatt_block_indexes=[1, 3]),
        text_config=dict(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=128000,
                         rms_norm_eps=1e-6, tie_word_embeddings=tied, bos_token_id=151643, eos_token_id=151645,
                         use_sliding_window=False, hidden_act="silu", rope_parameters=rope),
        image_token_id=SPECIALS["<|image_pad|>"], video_token_id=SPECIALS["<|video_pad|>"],
        vision_start_token_id=SPECIALS["<|vision_start|>"], vision_end_token_id=SPECIALS["<|vision_end|>"],
        tie_word_embeddings=tied)


def widen(model):
    """Random init is too small: every token would get nearly the same logits. Wider weights make
    the text depend on prompt and pixels (as make_conformance.py does)."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n and n.endswith("weight") or n.endswith("ln_q.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif n.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
            elif "language_model" in n and ("q_proj.weight" in n or "k_proj.weight" in n):
                p.copy_(torch.randn_like(p) * (QK_GAIN / math.sqrt(p.shape[-1])))
            elif "embed_tokens" in n or "lm_head" in n:
                p.copy_(torch.randn_like(p) * EMBED_STD)
            elif p.dim() == 5:  # the Conv3d patch embedding: fan-in 3 * 2 * 14 * 14
                p.copy_(torch.randn_like(p) * (LAYER_GAIN / math.sqrt(p[0].numel())))
            else:
                p.copy_(torch.randn_like(p) * (LAYER_GAIN / math.sqrt(p.shape[-1] if p.dim() > 1 else 1)))
        dead = slice(BPE_VOCAB, min(SPECIALS.values()))
        model.get_input_embeddings().weight[dead] = 0
        model.get_output_embeddings().weight[dead] = 0
    # bf16 storage as the real checkpoints; references from the rounded weights.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())


def hub_keys(sd):
    """transformers 5 module names -> the keys of the hub's Qwen2.5-VL files (transformers 4.49
    layout, what the UnifiedReward-qwen checkpoints use)."""
    out = {}
    for k, v in sd.items():
        if k.startswith("model.visual."):
            nk = "visual." + k[len("model.visual."):]
        elif k.startswith("model.language_model."):
            nk = "model." + k[len("model.language_model."):]
        elif k == "lm_head.weight":
            nk = k
        else:
            raise KeyError(k)
        out[nk] = v
    return out


def hub_config(cfg, tied, source):
    """config.json as the hub repositories write it (transformers 4.49): text settings at the top."""
    t, v = cfg.text_config, cfg.vision_config
    return {
        "_source": source,
        "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
        "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645, "hidden_act": "silu",
        "hidden_size": t.hidden_size, "initializer_range": 0.02, "intermediate_size": t.intermediate_size,
        "max_position_embeddings": 128000, "max_window_layers": t.num_hidden_layers,
        "num_attention_heads": t.num_attention_heads, "num_hidden_layers": t.num_hidden_layers,
        "num_key_value_heads": t.num_key_value_heads, "rms_norm_eps": 1e-6,
        "rope_scaling": {"mrope_section": [2, 3, 3], "rope_type": "default", "type": "default"},
        "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": tied, "torch_dtype": "bfloat16",
        "use_cache": True, "use_sliding_window": False, "vocab_size": VOCAB,
        "vision_start_token_id": 151652, "vision_end_token_id": 151653, "vision_token_id": 151654,
        "image_token_id": 151655, "video_token_id": 151656,
        "vision_config": {"depth": v.depth, "hidden_act": "silu", "hidden_size": v.hidden_size,
                          "intermediate_size": v.intermediate_size, "num_heads": v.num_heads, "in_chans": 3,
                          "out_hidden_size": v.out_hidden_size, "patch_size": 14, "spatial_merge_size": 2,
                          "spatial_patch_size": 14, "window_size": 112, "fullatt_block_indexes": [1, 3],
                          "tokens_per_second": 2, "temporal_patch_size": 2},
    }


def write_model(mdir, cfg, sd, tok, tied, source):
    os.makedirs(mdir, exist_ok=True)
    json.dump(hub_config(cfg, tied, source), open(os.path.join(mdir, "config.json"), "w"), indent=1)
    keys = hub_keys(sd)
    if tied:
        keys.pop("lm_head.weight", None)
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in keys.items()}, os.path.join(mdir, "model.safetensors"),
              metadata={"format": "pt"})
    tok.save(os.path.join(mdir, "tokenizer.json"))
    json.dump({"model_max_length": 131072, "padding_side": "right", "eos_token": "<|im_end|>",
               "pad_token": "<|endoftext|>", "chat_template": CHAT_TEMPLATE},
              open(os.path.join(mdir, "tokenizer_config.json"), "w"), indent=1)
    # preprocessor_config.json as Qwen/Qwen2.5-VL-7B-Instruct ships it.
    json.dump({"min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS, "patch_size": 14, "temporal_patch_size": 2,
               "merge_size": 2, "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
               "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor"},
              open(os.path.join(mdir, "preprocessor_config.json"), "w"), indent=1)


def sys_user(q, n_img=0):
    s = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    s += "<|vision_start|><|image_pad|><|vision_end|>" * n_img
    return s + q + "<|im_end|>\n<|im_start|>assistant\n"


REF_DTYPE = torch.float64


def as_ref(enc):
    return {k: (v.to(REF_DTYPE) if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in enc.items()}


def build(out, seed, name, heads, kv, head_dim, tied, tok, imgs, source):
    torch.manual_seed(seed)
    cfg = hf_config(heads, kv, head_dim, tied)
    cfg._attn_implementation = "eager"
    cfg.vision_config._attn_implementation = "eager"
    cfg.text_config._attn_implementation = "eager"
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval().float()
    widen(model)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model = model.to(REF_DTYPE)
    mdir = os.path.join(out, name, "model")
    write_model(mdir, cfg, sd, tok, tied, source)

    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    hf_tok.chat_template = CHAT_TEMPLATE
    ip = Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, patch_size=14, temporal_patch_size=2,
                                  merge_size=2, image_mean=CLIP_MEAN, image_std=CLIP_STD, resample=3)
    vp = Qwen2VLVideoProcessor(image_mean=CLIP_MEAN, image_std=CLIP_STD)
    proc = Qwen2_5_VLProcessor(image_processor=ip, tokenizer=hf_tok, video_processor=vp, chat_template=CHAT_TEMPLATE)
    specs = [
        ("text_only", sys_user("Question: What color is the ball?"), [], "Answer 1 is better."),
        ("image_1920x1080", sys_user("Text Caption: [a red circle on a blue square]", 1), ["1920x1080"], "Final Score: 3"),
        ("image_300x200", sys_user("Text Caption: [two green triangles]", 1), ["300x200"], "Final Score: 5"),
        ("pair_300x200_40x30", sys_user("Compare both images. Text Caption: [a yellow star]", 2), ["300x200", "40x30"],
         "Image 2 is better than Image 1."),
    ]
    tensors, cases = {}, []
    with torch.no_grad():
        for cname, prompt, keys, completion in specs:
            kw = {"images": [imgs[k] for k in keys]} if keys else {}
            enc = proc(text=[prompt + completion], return_tensors="pt", **kw)
            prompt_len = len(proc(text=[prompt], return_tensors="pt", **kw)["input_ids"][0])
            ids = enc["input_ids"][0]
            n = len(ids) - prompt_len
            logits = model(**as_ref(enc)).logits[0]
            rows_logits = logits[prompt_len - 1:-1].double()
            logp = torch.log_softmax(rows_logits, -1).gather(-1, ids[prompt_len:, None])[:, 0]
            tensors[f"{cname}.input_ids"] = ids.to(torch.int64).contiguous()
            tensors[f"{cname}.rows"] = torch.arange(prompt_len - 1, len(ids) - 1).to(torch.int64)
            tensors[f"{cname}.logits_cols"] = rows_logits[:, :LOGIT_COLS].float().contiguous()
            tensors[f"{cname}.logits_specials"] = rows_logits[:, min(SPECIALS.values()):].float().contiguous()
            tensors[f"{cname}.logsumexp"] = torch.logsumexp(rows_logits, -1).float().contiguous()
            # The last position's logits (predicting past the completion) too.
            tensors[f"{cname}.last_logits_cols"] = logits[-1, :LOGIT_COLS].float().contiguous()
            case = dict(name=cname, prompt=prompt, completion=completion, images=[f"{k}.png" for k in keys],
                        prompt_len=prompt_len, seq_len=len(ids), completion_logprob=float(logp.sum()),
                        num_image_tokens=int((ids == SPECIALS["<|image_pad|>"]).sum()))
            if keys:
                pix = enc["pixel_values"]
                assert pix.dtype == torch.float32
                grid = enc["image_grid_thw"]
                tensors[f"{cname}.image_grid_thw"] = grid.to(torch.int64).contiguous()
                # Pixel values are checked bit for bit through their SHA-256 (a 1920x1080 image
                # is 10764 x 1176 floats, 50 MB); per image, with its first rows kept.
                sizes = (grid.prod(-1)).tolist()
                at, hashes = 0, []
                for i, s in enumerate(sizes):
                    part = pix[at:at + s].contiguous()
                    hashes.append(hashlib.sha256(part.numpy().astype("<f4").tobytes()).hexdigest())
                    tensors[f"{cname}.pixel_values_head{i}"] = part[:4].clone()
                    at += s
                case["pixel_values_sha256"] = hashes
                pos, _ = model.model.get_rope_index(enc["input_ids"], enc["mm_token_type_ids"], image_grid_thw=grid)
                tensors[f"{cname}.position_ids"] = pos[:, 0].to(torch.int64).contiguous()
                if sum(sizes) < 2000:  # the 1920x1080 image's features would be 340 KB
                    feats = model.model.get_image_features(as_ref(enc)["pixel_values"], grid).pooler_output
                    for i, f in enumerate(feats):
                        tensors[f"{cname}.image_features{i}"] = f.float().contiguous()
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
    gen = (f"transformers {transformers.__version__}, torch {torch.__version__}, pillow {PIL.__version__}, "
           f"numpy {np.__version__}, {str(REF_DTYPE).split('.')[-1]} from bf16 weights, eager attention")
    json.dump(dict(generator=gen, seed=seed, media="../media", cases=cases, generation=generation),
              open(os.path.join(gdir, "cases.json"), "w"), indent=1)
    print(name, "cases", len(cases), "generated", out_ids, repr(generation["text"]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=5)
    a = ap.parse_args()
    tok = make_tokenizer(a.seed)
    media = os.path.join(a.out, "media")
    os.makedirs(media, exist_ok=True)
    imgs = {}
    for k, key in enumerate(["1920x1080", "300x200", "40x30"]):
        w, h = map(int, key.split("x"))
        im = draw_image(w, h, a.seed * 100 + k)
        im.save(os.path.join(media, f"{key}.png"), optimize=True)
        imgs[key] = Image.open(os.path.join(media, f"{key}.png")).convert("RGB")
    build(a.out, a.seed, "qwen2_5_vl_3b", 2, 1, 16, True, tok, imgs,
          "Qwen/Qwen2.5-VL-3B-Instruct config.json (UnifiedReward-qwen-3b, -2.0-qwen-3b): tied head; widths shrunk")
    build(a.out, a.seed + 1, "qwen2_5_vl_7b", 2, 1, 16, False, tok, imgs,
          "Qwen/Qwen2.5-VL-7B-Instruct config.json (UnifiedReward-qwen-7b, -2.0-qwen-7b): untied head; widths shrunk")


if __name__ == "__main__":
    main()
