"""Conformance checkpoints: tiny LLaVA-OneVision models that keep every geometric and token
setting of the real checkpoints' configs and shrink only widths, depths and the vocabulary's
unused middle, with reference outputs from Hugging Face transformers on inputs of real sizes.

usage: python scripts/golden/make_conformance.py fixtures/conformance --seed 3
Needs: torch, transformers (>= 5), tokenizers, safetensors, pillow, numpy. Versions used are
written into each cases.json ("generator").

Two weight sets, four checkpoint families (the real configs' values and where they come from
are in SOURCES below and in fixtures/conformance/README.md):
  ov-0.5b-hub      llava-hf/llava-onevision-qwen2-0.5b-ov-hf: hub layout, tied embeddings
  ur-0.5b-next     UnifiedReward-0.5b: the same weights in the LLaVA-NeXT layout
                   (LlavaQwenForCausalLM, mm_* keys), as transformers' conversion script maps them
  ur-7b-next       UnifiedReward-7b / -7b-v1.5: LLaVA-NeXT layout, untied head, 7B head ratio
  ov-7b-hub        llava-hf/llava-onevision-qwen2-7b-ov-hf: the same weights in the hub layout
The NeXT-layout twins carry the goldens of their hub twin: transformers runs only the hub
layout, and the conversion between the two is a renaming of keys.

Real geometry kept: 384 px tiles of 14 px patches (27 x 27 = 729 tokens a tile, 6 px dropped
by the stride), the 36 anyres pinpoints 384..2304, anyres_max_9, feature layer = last stored
layer, select strategy full, 2x2 bilinear video pooling (27 -> 14), rope_theta 1e6, the Qwen2
special token ids (151643..151647), GQA ratio 7 (0.5B's 14/2 heads; 7B's 28/4 as 7/1), SigLIP
layer_norm_eps 1e-6 and tanh GELU, Qwen2 rms_norm_eps 1e-6, ChatML.
"""
import argparse, json, math, os, re
import numpy as np
import torch
import transformers
from PIL import Image, ImageDraw
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers, Regex, normalizers
from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                          PreTrainedTokenizerFast, LlavaOnevisionProcessor)
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import LlavaOnevisionImageProcessorPil
from transformers.models.llava_onevision.video_processing_llava_onevision import LlavaOnevisionVideoProcessor
from transformers.image_processing_utils import select_best_resolution

SOURCES = {
    "ov-0.5b-hub": "llava-hf/llava-onevision-qwen2-0.5b-ov-hf config.json / preprocessor_config.json "
                   "(values as transformers' convert_llava_onevision_weights_to_hf.py writes them)",
    "ur-0.5b-next": "CodeGoat24/UnifiedReward-0.5b config.json: LLaVA-NeXT train.py saves its training "
                    "arguments (UnifiedReward-Think/0.cold_start.sh: mm_projector_type mlp2x_gelu, "
                    "mm_vision_select_layer -2, image_aspect_ratio anyres_max_9, image_grid_pinpoints "
                    "(1x1),...,(6x6) saved as pixel pairs, mm_patch_merge_type spatial_unpad)",
    "ur-7b-next": "CodeGoat24/UnifiedReward-7b(-v1.5) config.json, as ur-0.5b-next with Qwen2-7B's text config",
    "ov-7b-hub": "llava-hf/llava-onevision-qwen2-7b-ov-hf config.json",
}

QWEN2_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
# Qwen2's special tokens at their real ids; `<image>` / `<video>` as llava-hf adds them.
SPECIALS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
            "<image>": 151646, "<video>": 151647}
BPE_VOCAB = 600
VOCAB = 151648  # one past the last special id: the rows between the BPE vocabulary and it stay unused
TILE, PATCH = 384, 14
PINPOINTS = [[TILE * i, TILE * j] for i in range(1, 7) for j in range(1, 7)]
CHAT_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
                 "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
                 "{% for c in message['content'] if c['type'] == 'image' %}{{ '<image>\n' }}{% endfor %}"
                 "{% for c in message['content'] if c['type'] == 'video' %}{{ '<video>\n' }}{% endfor %}"
                 "{% for c in message['content'] if c['type'] == 'text' %}{{ c['text'] }}{% endfor %}{% endif %}"
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

# Columns of the logits stored per checked row: the whole BPE vocabulary and the specials.
# Log-probabilities are checked through the stored log-sum-exp over all VOCAB columns.
LOGIT_COLS = 1024


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
    # Special tokens at Qwen2's ids: the added-token table takes an id from the model's
    # vocabulary when the token is there, so they are put there first, past the BPE entries.
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
    """Flat shapes on a two-colour split: compresses well as PNG, still exercises resampling."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 255, 3)))
    d = ImageDraw.Draw(im)
    d.rectangle([0, h // 2, w, h], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    for _ in range(12):
        x0, y0 = int(rng.integers(0, w - 4)), int(rng.integers(0, h - 4))
        x1 = x0 + int(rng.integers(3, max(4, w // 3)))
        y1 = y0 + int(rng.integers(3, max(4, h // 3)))
        fill = tuple(int(v) for v in rng.integers(0, 255, 3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)([x0, y0, x1, y1], fill=fill)
    for k in range(0, w, max(8, w // 40)):  # thin lines: edges for the resampler
        d.line([k, 0, (k * 7) % w, h], fill=tuple(int(v) for v in rng.integers(0, 255, 3)), width=1)
    return im


def hf_config(text_heads, kv_heads, head_dim, tied):
    return LlavaOnevisionConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, image_size=TILE, patch_size=PATCH, vision_use_head=False,
                           layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh", num_channels=3),
        text_config=dict(model_type="qwen2", vocab_size=VOCAB, hidden_size=text_heads * head_dim, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=text_heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                         tie_word_embeddings=tied, bos_token_id=151643, eos_token_id=151645,
                         use_sliding_window=False, hidden_act="silu"),
        image_token_index=SPECIALS["<image>"], video_token_index=SPECIALS["<video>"], image_grid_pinpoints=PINPOINTS,
        vision_feature_select_strategy="full", vision_feature_layer=-1, vision_aspect_ratio="anyres_max_9",
        projector_hidden_act="gelu", multimodal_projector_bias=True, tie_word_embeddings=tied)


# Small embeddings, wide layers: with a tied head a residual stream dominated by the input
# token's embedding predicts that token again (greedy decoding then repeats "\n"). Sharper
# attention (q/k gain 6.4) made the text vary as well, but amplified rounding: transformers'
# own fp32 forward then differed from float64 by 2e-4 on the pair case; at 3.0 by 2.5e-5.
EMBED_STD, LAYER_GAIN, QK_GAIN = 0.3, 1.6, 3.0


def widen(model):
    """Random init is too small: every token would get nearly the same logits, and greedy
    decoding would repeat one token. Wider weights make the text depend on prompt and pixels."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n and n.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif n.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
            elif "language_model" in n and ("q_proj.weight" in n or "k_proj.weight" in n):
                # Sharp attention: each step reads particular earlier tokens, so the text
                # changes with the context instead of settling on one token.
                p.copy_(torch.randn_like(p) * (QK_GAIN / math.sqrt(p.shape[-1])))
            elif "embed_tokens" in n or "lm_head" in n:
                p.copy_(torch.randn_like(p) * EMBED_STD)
            else:
                p.copy_(torch.randn_like(p) * (LAYER_GAIN / math.sqrt(p.shape[-1] if p.dim() > 1 else 1)))
        model.model.image_newline.copy_(torch.randn_like(model.model.image_newline))
        # Ids between the BPE vocabulary and the specials are never tokens: zero rows, as an
        # untrained padded vocabulary has (random ones would win every argmax, 151k against 600).
        dead = slice(BPE_VOCAB, min(SPECIALS.values()))
        model.get_input_embeddings().weight[dead] = 0
        model.get_output_embeddings().weight[dead] = 0
    # Stored in bf16 as the real checkpoints are; references are computed from the rounded
    # weights. Parameters only: `model.to(bf16)` would also round the rotary frequencies
    # (0.001 -> 9.9945e-4), which no loader of the saved checkpoint reproduces.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())


def hub_keys(sd):
    """transformers' module names -> the llava-hf hub files' keys."""
    out = {}
    for k, v in sd.items():
        if k.startswith("model.vision_tower."):
            nk = "vision_tower." + k[len("model.vision_tower."):]
            if not nk.startswith("vision_tower.vision_model."):
                nk = "vision_tower.vision_model." + nk[len("vision_tower."):]
        elif k.startswith("model.multi_modal_projector."):
            nk = k[len("model."):]
        elif k == "model.image_newline":
            nk = "image_newline"
        elif k.startswith("model.language_model."):
            nk = "language_model.model." + k[len("model.language_model."):]
        elif k == "lm_head.weight":
            nk = "language_model.lm_head.weight"
        else:
            raise KeyError(k)
        out[nk] = v
    return out


def next_keys(hub):
    """Hub keys -> the original LLaVA-NeXT keys (the inverse of the renaming in transformers'
    convert_llava_onevision_weights_to_hf.py)."""
    out = {}
    for k, v in hub.items():
        if k.startswith("vision_tower.vision_model."):
            nk = "model.vision_tower.vision_tower.vision_model." + k[len("vision_tower.vision_model."):]
        elif k.startswith("multi_modal_projector.linear_1."):
            nk = "model.mm_projector.0." + k.split(".")[-1]
        elif k.startswith("multi_modal_projector.linear_2."):
            nk = "model.mm_projector.2." + k.split(".")[-1]
        elif k == "image_newline":
            nk = "model.image_newline"
        elif k.startswith("language_model.model."):
            nk = "model." + k[len("language_model.model."):]
        elif k == "language_model.lm_head.weight":
            nk = "lm_head.weight"
        else:
            raise KeyError(k)
        out[nk] = v
    return out


def save_weights(keys, path):
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in keys.items()}, path, metadata={"format": "pt"})


def write_common(mdir, tok):
    tok.save(os.path.join(mdir, "tokenizer.json"))
    json.dump({"model_max_length": 32768, "padding_side": "right", "eos_token": "<|im_end|>",
               "pad_token": "<|endoftext|>", "chat_template": CHAT_TEMPLATE},
              open(os.path.join(mdir, "tokenizer_config.json"), "w"), indent=1)
    open(os.path.join(mdir, "chat_template.jinja"), "w").write(CHAT_TEMPLATE)


def write_hub(mdir, cfg, sd, tok, source):
    os.makedirs(mdir, exist_ok=True)
    c = cfg.to_dict()
    c["architectures"] = ["LlavaOnevisionForConditionalGeneration"]
    c["_source"] = source
    json.dump(c, open(os.path.join(mdir, "config.json"), "w"), indent=1)
    hub = hub_keys(sd)
    save_weights(hub, os.path.join(mdir, "model.safetensors"))
    write_common(mdir, tok)
    # preprocessor_config.json as the hub repositories ship it (LlavaOnevisionImageProcessor).
    json.dump({"image_processor_type": "LlavaOnevisionImageProcessor", "processor_class": "LlavaOnevisionProcessor",
               "do_convert_rgb": True, "do_normalize": True, "do_pad": True, "do_rescale": True, "do_resize": True,
               "image_grid_pinpoints": PINPOINTS, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
               "resample": 3, "rescale_factor": 1 / 255, "size": {"height": TILE, "width": TILE}},
              open(os.path.join(mdir, "preprocessor_config.json"), "w"), indent=1)
    return hub


def write_next(mdir, cfg, hub, tok, source):
    os.makedirs(mdir, exist_ok=True)
    t, v = cfg.text_config, cfg.vision_config
    tower = "siglip-so400m-patch14-384-shrunk"
    c = {
        "_source": source,
        "architectures": ["LlavaQwenForCausalLM"], "model_type": "llava",
        "hidden_size": t.hidden_size, "intermediate_size": t.intermediate_size,
        "num_attention_heads": t.num_attention_heads, "num_key_value_heads": t.num_key_value_heads,
        "num_hidden_layers": t.num_hidden_layers, "vocab_size": t.vocab_size, "hidden_act": "silu",
        "max_position_embeddings": 32768, "max_window_layers": t.num_hidden_layers, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "rope_scaling": None, "sliding_window": 32768, "use_sliding_window": False,
        "tie_word_embeddings": t.tie_word_embeddings, "bos_token_id": 151643, "eos_token_id": 151645,
        "attention_dropout": 0.0, "initializer_range": 0.02, "torch_dtype": "bfloat16", "use_cache": True,
        "image_aspect_ratio": "anyres_max_9", "image_grid_pinpoints": PINPOINTS,
        "image_crop_resolution": None, "image_split_resolution": None,
        "mm_hidden_size": v.hidden_size, "mm_patch_merge_type": "spatial_unpad", "mm_projector_lr": None,
        "mm_projector_type": "mlp2x_gelu", "mm_resampler_type": None, "mm_spatial_pool_mode": "bilinear",
        "mm_spatial_pool_stride": 2, "mm_newline_position": "one_token",
        "mm_tunable_parts": "mm_vision_tower,mm_mlp_adapter,mm_language_model",
        "mm_use_im_patch_token": False, "mm_use_im_start_end": False, "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2, "mm_vision_tower": tower, "mm_vision_tower_lr": 2e-6,
        "tokenizer_model_max_length": 32768, "tokenizer_padding_side": "right", "use_mm_proj": True,
        "vision_tower_pretrained": None,
    }
    json.dump(c, open(os.path.join(mdir, "config.json"), "w"), indent=1)
    # The real config names google/siglip-so400m-patch14-384; the shrunk tower's config sits beside it.
    os.makedirs(os.path.join(mdir, tower), exist_ok=True)
    vd = v.to_dict()
    vd["_source"] = "google/siglip-so400m-patch14-384 vision_config, widths and depth shrunk (the stored " \
                    "layers are the ones LLaVA-NeXT keeps: it deletes the tower's last layer)"
    json.dump(vd, open(os.path.join(mdir, tower, "config.json"), "w"), indent=1)
    save_weights(next_keys(hub), os.path.join(mdir, "model.safetensors"))
    # Qwen2's own tokenizer, as UnifiedReward ships it: no <image> / <video> tokens (LLaVA-NeXT
    # splits the prompt at the marker text and splices the features in between).
    j = json.loads(tok.to_str())
    j["added_tokens"] = [t for t in j["added_tokens"] if t["content"] not in ("<image>", "<video>")]
    for m in ("<image>", "<video>"):
        del j["model"]["vocab"][m]
    write_common(mdir, Tokenizer.from_str(json.dumps(j)))


def sys_user(q, n_img=0, video=False):
    s = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    s += ("<video>\n" if video else "") + "<image>\n" * n_img
    return s + q + "<|im_end|>\n<|im_start|>assistant\n"


def frame_tiles_forward(model, tok, frames, prompt, completion):
    """The UnifiedReward LLaVA video scripts' arithmetic: each frame through SigLIP's image
    processor as one plain 384 tile (the scripts' img.resize((512, 512)) discards its result),
    the [n, 3, 384, 384] tensor encoded as n plain tiles of 729 tokens, one `<image>` marker a
    frame, no anyres, no newline, no pooling."""
    # LLaVA-NeXT's own SigLipImageProcessor (llava/model/multimodal_encoder/siglip_encoder.py):
    # transformers' PIL `resize` of the uint8 frame (bicubic), then rescale and normalize in
    # numpy. (transformers 5's SiglipImageProcessor resizes otherwise: 1 level apart.)
    arrs = []
    for f in frames:
        a = np.asarray(f.resize((TILE, TILE), resample=Image.BICUBIC)).astype(np.float64) * (1 / 255)
        arrs.append(((a - 0.5) / 0.5).astype(np.float32).transpose(2, 0, 1))
    pix = torch.from_numpy(np.stack(arrs))
    vt = model.model.vision_tower(pix.to(REF_DTYPE), output_hidden_states=True)
    feats = model.model.multi_modal_projector(vt.hidden_states[-1])  # [n, 729, D]
    ids = tok.encode(prompt + completion).ids
    n_prompt_raw = len(tok.encode(prompt).ids)
    img = SPECIALS["<image>"]
    assert ids.count(img) == len(frames)
    expanded = []
    for t in ids:
        expanded.extend([img] * feats.shape[1] if t == img else [t])
    ids_t = torch.tensor([expanded])
    emb = model.get_input_embeddings()(ids_t)
    mask = (ids_t == img)[..., None].expand_as(emb)
    emb = emb.masked_scatter(mask, feats.reshape(-1, feats.shape[-1]).to(emb.dtype))
    prompt_len = n_prompt_raw + len(frames) * (feats.shape[1] - 1)
    logits = model(inputs_embeds=emb, logits_to_keep=len(expanded) - prompt_len + 1).logits[0]
    return ids_t[0], logits, prompt_len, pix


REF_DTYPE = torch.float64


def as_ref(enc):
    """The processor's float tensors (pixels) in the reference dtype."""
    return {k: (v.to(REF_DTYPE) if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in enc.items()}


def record(tensors, name, ids, logits, prompt_len):
    """`logits` are the rows prompt_len-1 .. end (the model ran with logits_to_keep): the last
    one predicts nothing and is dropped. Full [seq, vocab] logits would be 4.5 GB a case."""
    n = len(ids) - prompt_len
    rows_logits = logits[-(n + 1):-1].double()
    logp = torch.log_softmax(rows_logits, -1).gather(-1, ids[prompt_len:, None])[:, 0]
    rows = torch.arange(prompt_len - 1, len(ids) - 1)
    tensors[f"{name}.input_ids"] = ids.to(torch.int64).contiguous()
    tensors[f"{name}.rows"] = rows.to(torch.int64).contiguous()
    tensors[f"{name}.logits_cols"] = rows_logits[:, :LOGIT_COLS].float().contiguous()
    tensors[f"{name}.logsumexp"] = torch.logsumexp(rows_logits, -1).float().contiguous()
    # fp32 storage rounds large logits by up to ~2e-6: far below the 1e-4 tolerance.
    return float(logp.sum())


def pixel_summary(pix):
    """Pixels are (u/255 - 0.5)/0.5 of a resized uint8 image: stored back as uint8, every 8th
    row and column of every tile (a full [10, 3, 384, 384] tensor is 17 MB an image)."""
    u = torch.round((pix.float() + 1.0) * 127.5).clamp(0, 255).to(torch.uint8)
    return u[..., ::8, ::8].contiguous()


def build(out, seed, name_hub, name_next, heads, kv, head_dim, tied, tok, media_dir, imgs, frames):
    torch.manual_seed(seed)
    cfg = hf_config(heads, kv, head_dim, tied)
    model = LlavaOnevisionForConditionalGeneration(cfg).eval().float()
    widen(model)
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    # The references in float64 from the bf16-rounded weights: two fp32 implementations of a
    # 7k-token forward differ by ~1e-4 from each other, each by less from the exact result.
    model = model.to(REF_DTYPE)
    if tied:
        sd.pop("lm_head.weight", None)
    hub = write_hub(os.path.join(out, name_hub, "model"), cfg, sd, tok, SOURCES[name_hub])
    write_next(os.path.join(out, name_next, "model"), cfg, hub, tok, SOURCES[name_next])

    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                     extra_special_tokens={"image_token": "<image>", "video_token": "<video>"})
    hf_tok.chat_template = CHAT_TEMPLATE
    ip = LlavaOnevisionImageProcessorPil(size={"height": TILE, "width": TILE}, image_mean=[0.5] * 3,
                                         image_std=[0.5] * 3, image_grid_pinpoints=PINPOINTS, do_pad=True, resample=3)
    vp = LlavaOnevisionVideoProcessor(size={"height": TILE, "width": TILE}, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                                      resample=3)
    proc = LlavaOnevisionProcessor(image_processor=ip, tokenizer=hf_tok, video_processor=vp,
                                   num_image_tokens=(TILE // PATCH) ** 2, vision_feature_select_strategy="full",
                                   chat_template=CHAT_TEMPLATE, vision_aspect_ratio="anyres_max_9")
    specs = [
        ("image_1024x1024", sys_user("Extract key elements from the provided text caption. Final Score:", 1), ["1024x1024"], "Final Score: 4"),
        ("image_1920x1080", sys_user("Text Caption: [a red circle on a blue square]", 1), ["1920x1080"], "Final Score: 3"),
        ("image_512x2048", sys_user("Question: What color is the ball?", 1), ["512x2048"], "The ball is red."),
        ("image_300x200", sys_user("Text Caption: [two green triangles]", 1), ["300x200"], "Final Score: 5"),
        ("pair_640x480_300x200", sys_user("Compare both images. Text Caption: [a yellow star]", 2), ["640x480", "300x200"],
         "Image 2 is better than Image 1."),
    ]
    tensors, cases = {}, []
    with torch.no_grad():
        for name, prompt, keys, completion in specs:
            kw = {"images": [imgs[k] for k in keys]}
            enc = proc(text=[prompt + completion], return_tensors="pt", **kw)
            prompt_len = len(proc(text=[prompt], return_tensors="pt", **kw)["input_ids"][0])
            keep = enc["input_ids"].shape[1] - prompt_len + 1
            logits = model(**as_ref(enc), logits_to_keep=keep).logits[0]
            ids = enc["input_ids"][0]
            comp = record(tensors, name, ids, logits, prompt_len)
            tensors[f"{name}.pixels_u8_stride8"] = pixel_summary(enc["pixel_values"])
            tensors[f"{name}.image_sizes"] = enc["image_sizes"].to(torch.int64).contiguous()
            n_patches = []
            for (hh, ww) in enc["image_sizes"].tolist():
                bh, bw = select_best_resolution((hh, ww), PINPOINTS)
                n_patches.append((bh // TILE) * (bw // TILE) + 1)
            cases.append(dict(name=name, path="anyres", prompt=prompt, completion=completion,
                              images=[f"{k}.png" for k in keys], video_frames=[], prompt_len=prompt_len,
                              seq_len=len(ids), completion_logprob=comp, num_patches_per_image=n_patches,
                              num_image_tokens=int((ids == SPECIALS["<image>"]).sum())))
        # The pooled <video> path (LLaVA-OneVision's own), through transformers' processor.
        name, prompt, completion = "video_pooled_8x640x360", sys_user("The video shows a cat running. Final Score:", video=True), "Final Score: 6"
        vid = [np.stack([np.array(f) for f in frames])]
        enc = proc(text=[prompt + completion], videos=vid, return_tensors="pt")
        prompt_len = len(proc(text=[prompt], videos=vid, return_tensors="pt")["input_ids"][0])
        keep = enc["input_ids"].shape[1] - prompt_len + 1
        logits = model(**as_ref(enc), logits_to_keep=keep).logits[0]
        ids = enc["input_ids"][0]
        comp = record(tensors, name, ids, logits, prompt_len)
        tensors[f"{name}.pixels_u8_stride8"] = pixel_summary(enc["pixel_values_videos"][0])
        cases.append(dict(name=name, path="video_pooled", prompt=prompt, completion=completion, images=[],
                          video_frames=[f"frame{i}.png" for i in range(len(frames))], prompt_len=prompt_len,
                          seq_len=len(ids), completion_logprob=comp, num_video_tokens=int((ids == SPECIALS["<video>"]).sum())))
        # The UnifiedReward scripts' way: frames as plain tiles, one <image> each; a pair judges 16.
        for name, n_vid, completion in [("video_frames_8x640x360", 1, "Final Score: 6"),
                                        ("video_frames_pair_16x640x360", 2, "Video 1 is better than Video 2.")]:
            fr = frames * n_vid
            prompt = sys_user("Text Caption: [a cat running]", len(fr))
            ids, logits, prompt_len, pix = frame_tiles_forward(model, tok, fr, prompt, completion)
            comp = record(tensors, name, ids, logits, prompt_len)
            tensors[f"{name}.pixels_u8_stride8"] = pixel_summary(pix)
            cases.append(dict(name=name, path="video_frames", prompt=prompt, completion=completion, images=[],
                              video_frames=[f"frame{i}.png" for i in range(len(frames))], videos=n_vid,
                              prompt_len=prompt_len, seq_len=len(ids), completion_logprob=comp))
        # Greedy generation from the smallest image prompt: the tokens transformers' generate picks.
        gen_prompt = sys_user("Text Caption: [two green triangles]", 1)
        enc = proc(text=[gen_prompt], images=[imgs["300x200"]], return_tensors="pt")
        out_ids = model.generate(**as_ref(enc), max_new_tokens=24, do_sample=False, eos_token_id=SPECIALS["<|im_end|>"],
                                 pad_token_id=SPECIALS["<|endoftext|>"])[0, enc["input_ids"].shape[1]:].tolist()
        distinct = len(set(out_ids))
        assert distinct >= 6, f"greedy output repeats ({out_ids}): widen the init"
        generation = dict(prompt=gen_prompt, images=["300x200.png"], max_new_tokens=24, tokens=out_ids,
                          text=tok.decode(out_ids, skip_special_tokens=False))
    gdir = os.path.join(out, name_hub)
    save_file(tensors, os.path.join(gdir, "expected.safetensors"))
    json.dump(dict(generator=f"transformers {transformers.__version__}, torch {torch.__version__}, {str(REF_DTYPE).split('.')[-1]}", seed=seed,
                   media="../media", twins=[name_next], cases=cases, generation=generation),
              open(os.path.join(gdir, "cases.json"), "w"), indent=1)
    json.dump(dict(goldens=f"../{name_hub}"), open(os.path.join(out, name_next, "goldens.json"), "w"), indent=1)
    print(name_hub, "cases", len(cases), "generated", out_ids, repr(generation["text"]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=3)
    a = ap.parse_args()
    tok = make_tokenizer(a.seed)
    media = os.path.join(a.out, "media")
    os.makedirs(media, exist_ok=True)
    imgs = {}
    for k, key in enumerate(["1024x1024", "1920x1080", "512x2048", "300x200", "640x480"]):
        w, h = map(int, key.split("x"))
        im = draw_image(w, h, a.seed * 100 + k)
        im.save(os.path.join(media, f"{key}.png"), optimize=True)
        imgs[key] = Image.open(os.path.join(media, f"{key}.png")).convert("RGB")
    frames = []
    for f in range(8):
        im = draw_image(640, 360, a.seed * 100 + 50 + f)
        im.save(os.path.join(media, f"frame{f}.png"), optimize=True)
        frames.append(Image.open(os.path.join(media, f"frame{f}.png")).convert("RGB"))
    # Head counts: 0.5B's 14/2 kept (head_dim 2); 7B's 28/4 shrunk to 7/1, its ratio kept (head_dim 4).
    # The embedding matrix is vocabulary x hidden: hidden 28 keeps each under 9 MB in bf16.
    build(a.out, a.seed, "ov-0.5b-hub", "ur-0.5b-next", 14, 2, 2, True, tok, media, imgs, frames)
    build(a.out, a.seed + 1, "ov-7b-hub", "ur-7b-next", 7, 1, 4, False, tok, media, imgs, frames)


if __name__ == "__main__":
    main()
