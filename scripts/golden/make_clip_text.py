"""Tiny CLIP text encoders and tokenizers in the layout of a diffusers pipeline (`tokenizer/`,
`tokenizer_2/`, `text_encoder/`, `text_encoder_2/`), with reference outputs from Hugging Face
transformers and diffusers.

usage: python scripts/golden/make_clip_text.py fixtures/diffusion/clip_text [--seed 7]
Needs: torch, transformers (>= 5), diffusers, tokenizers, safetensors, numpy. Versions used are
written into cases.json ("generator"). Re-running it reproduces every file byte for byte.

What stands for what (the real files: runwayml/stable-diffusion-v1-5 and
stabilityai/stable-diffusion-xl-base-1.0):
  tokenizer/       SD 1.5's `tokenizer` and SDXL's `tokenizer` (CLIP BPE, pads with <|endoftext|>)
  tokenizer_2/     SDXL's `tokenizer_2` (the same BPE, pads with "!", id 0)
  text_encoder/    CLIP ViT-L/14's text tower (SD 1.5 `text_encoder`, SDXL `text_encoder`):
                   CLIPTextModel, quick_gelu, 768 wide, 12 heads, 12 layers -> 32 wide, 4 heads, 3 layers
  text_encoder_2/  OpenCLIP bigG's text tower (SDXL `text_encoder_2`): CLIPTextModelWithProjection,
                   gelu, 1280 wide, 20 heads, 32 layers, projection 1280 -> 48 wide, 4 heads, 3 layers,
                   projection 48

Kept from the real configs: vocab_size 49408, max_position_embeddings 77, <|startoftext|> 49406,
<|endoftext|> 49407, the legacy eos_token_id 2 of both real configs (pooling at argmax(input_ids)),
layer_norm_eps 1e-5, MLP 4x wide, the pipelines' model_max_length 77.

The vocabulary: CLIP's format (vocab.json + merges.txt, "#version: 0.2" header), the 256
byte-level symbols in CLIP's order (ids 0..255, "!" = 0 as in the real vocabulary), the same with
"</w>" (256..511), then one entry per merge in merge order, then the specials at 49406 / 49407 -
exactly how the real vocabulary is laid out, with N_MERGES merges learnt on a small prompt corpus
instead of 48894. Ids between the last merge and 49406 exist in no vocabulary entry; their
embedding rows are zeros (never looked up).

Storage: the dense checkpoints would be 49408 x width floats each (6-10 MB, almost all zero
rows), so the fixture keeps each encoder's weights in `weights.compact.safetensors` (fp16; every
weight is made fp16-representable first, so fp16 storage is exact): every tensor under its
checkpoint name, except the token embedding, kept as `<name>.rows` (the ids with a row, int64)
and `<name>.values` (those rows). Densifying gives the checkpoint the references were computed
from (`model.safetensors`, float32, hub key names `text_model.*`); cases.json records the SHA-256
of its dense float32 token embedding. The test densifies into its temporary directory.
"""
import argparse, collections, hashlib, json, os, shutil, tempfile

import numpy as np
import torch
import transformers
import diffusers
import tokenizers
import safetensors
from safetensors.torch import save_file, load_file
from tokenizers import Regex, normalizers, pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
BOS_ID, EOS_ID = 49406, 49407
VOCAB_SIZE = 49408
MAX_LEN = 77
N_MERGES = 320
CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

CORPUS = """a photo of an astronaut riding a horse on mars. a painting of a squirrel eating a burger.
a high quality photo of a cat sitting on a wooden table, studio lighting, 4k, highly detailed.
an oil painting of a mountain lake at sunset, trending on artstation. a portrait of a woman
with red hair, digital art, sharp focus. a cute corgi dog wearing sunglasses on the beach.
a watercolor illustration of a small village in the snow. a close up photograph of a red rose
with water drops. cinematic still of a futuristic city at night, neon lights, rain.
the quick brown fox jumps over the lazy dog. a bowl of fruit on a kitchen counter.
an anime drawing of a girl reading a book under a cherry blossom tree. the best photo ever.
""" * 2

# Prompts as the pipelines receive them: punctuation, case, whitespace, contractions, numbers,
# accents (composed and decomposed: NFC), CJK, emoji, typed special tokens, unknown words,
# the empty prompt and one far past 77 tokens.
PROMPTS = [
    "a photo of an astronaut riding a horse on mars",
    "A Painting of a Squirrel EATING a Burger!!!",
    "",
    "  multiple   spaces\tand\ttabs\nand\n\nnewlines  ",
    "it's a dog's life, isn't it? they're here, we've won, I'm sure you'll see, he'd go",
    "1024x768 resolution, 35mm f/1.8 lens, 3.14159 and 2025",
    "caf\u00e9 cr\u00e8me br\u00fbl\u00e9e, na\u00efve fa\u00e7ade vs cafe\u0301 (decomposed)",
    "\u65e5\u672c\u306e\u685c \U0001F338\U0001F431 emoji \u00bfqu\u00e9? \u00c0\u00c9\u00ce \u039f\u0394\u03a5\u03a3\u03a3\u0395\u03a5\u03a3",
    "<|endoftext|> typed specials <|startoftext|> in the text",
    "<|EndOfText|> typed in capitals!",
    "zyxwvut qjxkz unseenwordz xylophonequirk",
    "hyphen-ated, under_score & ampersand... (parens) [brackets] {braces} #hash @at $5 100% ~tilde",
    ", ".join(["a highly detailed photo of a red fox in a snowy forest"] * 8),
    "the best photo ever",
]
# Indices of PROMPTS whose every hidden state is stored (the others: pooled / text_embeds /
# last_hidden_state only, to keep the fixture small).
LONG = next(i for i, p in enumerate(PROMPTS) if len(p) > 300)
FULL = [0, LONG]


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) + \
        list(range(ord("\u00ae"), ord("\u00ff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def clip_words(text):
    """The pipeline's normaliser and pre-tokeniser (transformers' CLIPTokenizer): byte-level words."""
    norm = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                 normalizers.Lowercase()])
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    return [w for w, _ in pre.pre_tokenize_str(norm.normalize_str(text))]


def learn_merges(corpus, n_merges):
    """Plain BPE learning on words ending in </w>: most frequent pair first, ties broken by the
    pair's text (so the result is deterministic)."""
    counts = collections.Counter(clip_words(corpus))
    words = {w: [*w[:-1], w[-1] + "</w>"] for w in counts}
    merges = []
    for _ in range(n_merges):
        pairs = collections.Counter()
        for w, syms in words.items():
            for a, b in zip(syms, syms[1:]):
                pairs[(a, b)] += counts[w]
        if not pairs:
            break
        (a, b), c = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        if c < 2:
            break
        merges.append((a, b))
        for w, syms in words.items():
            out, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and syms[i] == a and syms[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            words[w] = out
    return merges


def write_tokenizer(d, vocab, merges, pad):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(d, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))

    def added(content):
        return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True,
                "rstrip": False, "single_word": False}
    special = {"bos_token": {k: v for k, v in added(BOS).items() if k != "__type"},
               "eos_token": {k: v for k, v in added(EOS).items() if k != "__type"},
               "pad_token": pad,
               "unk_token": {k: v for k, v in added(EOS).items() if k != "__type"}}
    with open(os.path.join(d, "special_tokens_map.json"), "w") as f:
        json.dump(special, f, indent=2)
    # As the hub's SD 1.5 / SDXL tokenizer_config.json (written by transformers 4.2x).
    config = {"add_prefix_space": False, "bos_token": added(BOS), "do_lower_case": True,
              "eos_token": added(EOS), "errors": "replace", "model_max_length": MAX_LEN,
              "name_or_path": "openai/clip-vit-large-patch14", "pad_token": pad,
              "special_tokens_map_file": "./special_tokens_map.json", "tokenizer_class": "CLIPTokenizer",
              "unk_token": added(EOS)}
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)


def hub_config(arch, act, hidden, heads, layers, proj, dtype_name, version):
    """config.json as the hub's SD 1.5 / SDXL text encoders have it, widths shrunk."""
    return {
        "_name_or_path": "openai/clip-vit-large-patch14" if arch == "CLIPTextModel"
        else "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k",
        "architectures": [arch], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
        "eos_token_id": 2, "hidden_act": act, "hidden_size": hidden, "initializer_factor": 1.0,
        "initializer_range": 0.02, "intermediate_size": 4 * hidden, "layer_norm_eps": 1e-05,
        "max_position_embeddings": MAX_LEN, "model_type": "clip_text_model", "num_attention_heads": heads,
        "num_hidden_layers": layers, "pad_token_id": 1, "projection_dim": proj, "torch_dtype": dtype_name,
        "transformers_version": version, "vocab_size": VOCAB_SIZE,
    }


def fp16_exact(t):
    return t.to(torch.float16).to(torch.float32)


def make_weights(cfg, used_ids, with_projection, gen):
    """Hub-named float32 state dict, every value fp16-representable; token rows only for `used_ids`."""
    d, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]

    def randn(*shape, std):
        return torch.randn(*shape, generator=gen) * std
    sd = {}
    tok = torch.zeros(VOCAB_SIZE, d)
    tok[used_ids] = randn(len(used_ids), d, std=0.5)
    sd["text_model.embeddings.token_embedding.weight"] = tok
    sd["text_model.embeddings.position_embedding.weight"] = randn(MAX_LEN, d, std=0.3)
    for i in range(layers):
        p = f"text_model.encoder.layers.{i}."
        for name in ["q_proj", "k_proj", "v_proj", "out_proj"]:
            # Scores of about unit spread: attention far from uniform, while transformers' own
            # fp32 forward stays within 3.1e-6 (relative to 1 + |x|) of its float64 one (with
            # q / k twice as wide it drifted to 8.6e-6, too close to the test's 1e-5).
            std = 1.0 / d ** 0.5
            sd[p + f"self_attn.{name}.weight"] = randn(d, d, std=std)
            sd[p + f"self_attn.{name}.bias"] = randn(d, std=0.1)
        for ln in ["layer_norm1", "layer_norm2"]:
            sd[p + f"{ln}.weight"] = 1.0 + randn(d, std=0.2)
            sd[p + f"{ln}.bias"] = randn(d, std=0.1)
        sd[p + "mlp.fc1.weight"] = randn(inter, d, std=1.5 / d ** 0.5)
        sd[p + "mlp.fc1.bias"] = randn(inter, std=0.3)
        sd[p + "mlp.fc2.weight"] = randn(d, inter, std=1.0 / inter ** 0.5)
        sd[p + "mlp.fc2.bias"] = randn(d, std=0.1)
    sd["text_model.final_layer_norm.weight"] = 1.0 + randn(d, std=0.2)
    sd["text_model.final_layer_norm.bias"] = randn(d, std=0.1)
    if with_projection:
        sd["text_projection.weight"] = randn(cfg["projection_dim"], d, std=1.0 / d ** 0.5)
    return {k: fp16_exact(v).contiguous() for k, v in sd.items()}


def sha256_f32(t):
    return hashlib.sha256(t.to(torch.float32).contiguous().numpy().astype("<f4").tobytes()).hexdigest()


def write_compact(d, cfg, sd, used_ids):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    compact = {}
    for k, v in sd.items():
        if k.endswith("token_embedding.weight"):
            rows = torch.tensor(used_ids, dtype=torch.int64)
            compact[k + ".rows"] = rows
            compact[k + ".values"] = v[rows].to(torch.float16).contiguous()
        else:
            compact[k] = v.to(torch.float16).contiguous()
    save_file(compact, os.path.join(d, "weights.compact.safetensors"))


def densify(compact_path):
    """The inverse of write_compact, as the Rust test does it."""
    c = load_file(compact_path)
    out = {}
    for k, v in c.items():
        if k.endswith(".rows"):
            continue
        if k.endswith(".values"):
            name = k[: -len(".values")]
            dense = torch.zeros(VOCAB_SIZE, v.shape[1], dtype=torch.float32)
            dense[c[name + ".rows"]] = v.to(torch.float32)
            out[name] = dense
        else:
            out[k] = v.to(torch.float32)
    return out


def load_dense(compact_dir, tmp, name, cls):
    """Densifies `compact_dir` into `tmp/name` as model.safetensors and loads it as the pipelines do."""
    d = os.path.join(tmp, name)
    os.makedirs(d, exist_ok=True)
    shutil.copy(os.path.join(compact_dir, "config.json"), d)
    dense = densify(os.path.join(compact_dir, "weights.compact.safetensors"))
    save_file(dense, os.path.join(d, "model.safetensors"))
    model, info = cls.from_pretrained(d, output_loading_info=True, dtype=torch.float32)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    model.eval()
    return model, dense, d


def run(model, ids, dtype=torch.float32):
    m = model.to(dtype)
    with torch.no_grad():
        out = m(torch.tensor(ids, dtype=torch.int64), output_hidden_states=True)
    model.to(torch.float32)
    return out


def max_diff(a, b):
    return float((a.double() - b.double()).abs().max())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(a.seed)
    out = a.out
    os.makedirs(out, exist_ok=True)

    # --- tokenizers ---------------------------------------------------------------------
    b2u = bytes_to_unicode()
    base = list(b2u.values())
    merges = learn_merges(CORPUS, N_MERGES)
    vocab_list = base + [s + "</w>" for s in base] + ["".join(m) for m in merges]
    assert len(set(vocab_list)) == len(vocab_list)
    vocab = {s: i for i, s in enumerate(vocab_list)}
    vocab[BOS], vocab[EOS] = BOS_ID, EOS_ID
    assert vocab["!"] == 0
    write_tokenizer(os.path.join(out, "tokenizer"), vocab, merges, EOS)
    write_tokenizer(os.path.join(out, "tokenizer_2"), vocab, merges, "!")
    tok1 = CLIPTokenizer.from_pretrained(os.path.join(out, "tokenizer"))
    tok2 = CLIPTokenizer.from_pretrained(os.path.join(out, "tokenizer_2"))
    assert tok1.pad_token_id == EOS_ID and tok2.pad_token_id == 0, (tok1.pad_token_id, tok2.pad_token_id)
    assert tok1.bos_token_id == BOS_ID and tok1.eos_token_id == EOS_ID

    def tokenize(tok, prompts):
        # As the pipelines call it (StableDiffusionPipeline / StableDiffusionXLPipeline.encode_prompt).
        return tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                   return_tensors="pt").input_ids.tolist()
    ids1, ids2 = tokenize(tok1, PROMPTS), tokenize(tok2, PROMPTS)
    # transformers >= 5's own save of tokenizer_2: tokenizer.json + tokenizer_config.json only.
    saved = os.path.join(out, "tokenizer_2_saved_by_transformers5")
    shutil.rmtree(saved, ignore_errors=True)
    tok2.save_pretrained(saved)
    cfg_path = os.path.join(saved, "tokenizer_config.json")
    with open(cfg_path) as f:
        saved_cfg = json.load(f)
    for k in ("is_local", "local_files_only", "name_or_path"):  # where it was loaded from
        saved_cfg.pop(k, None)
    with open(cfg_path, "w") as f:
        json.dump(saved_cfg, f, indent=2)
        f.write("\n")
    assert tokenize(CLIPTokenizer.from_pretrained(saved), PROMPTS) == ids2
    untruncated = [len(tok1(p).input_ids) for p in PROMPTS]
    assert max(untruncated) > MAX_LEN and min(untruncated) == 2
    tokens = [tok1.convert_ids_to_tokens(tok1(p).input_ids) for p in PROMPTS]

    # --- encoders ----------------------------------------------------------------------
    used_ids = sorted(set(range(len(vocab_list))) | {BOS_ID, EOS_ID})
    v = "4.22.0.dev0"
    # projection_dim = hidden as in the real configs (768 / 1280; unused by CLIPTextModel).
    cfg1 = hub_config("CLIPTextModel", "quick_gelu", 32, 4, 3, 32, "float32", v)
    cfg2 = hub_config("CLIPTextModelWithProjection", "gelu", 48, 4, 3, 48, "float32", "4.32.0.dev0")
    sd1 = make_weights(cfg1, used_ids, False, gen)
    sd2 = make_weights(cfg2, used_ids, True, gen)
    write_compact(os.path.join(out, "text_encoder"), cfg1, sd1, used_ids)
    write_compact(os.path.join(out, "text_encoder_2"), cfg2, sd2, used_ids)

    tensors = {}
    cases = {}
    tmp = tempfile.mkdtemp(prefix="clip_text_")
    try:
        te1, dense1, dir1 = load_dense(os.path.join(out, "text_encoder"), tmp, "text_encoder", CLIPTextModel)
        te2, dense2, dir2 = load_dense(os.path.join(out, "text_encoder_2"), tmp, "text_encoder_2",
                                       CLIPTextModelWithProjection)
        # transformers >= 5 names a CLIPTextModel's weights without `text_model.` (a model built
        # from its config saves them so; one loaded from the hub's layout keeps that layout).
        fresh = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in cfg1.items() if not k.startswith("_")}))
        fresh.load_state_dict(te1.state_dict())
        resaved = os.path.join(tmp, "resaved")
        fresh.save_pretrained(resaved)
        resaved_keys = sorted(load_file(os.path.join(resaved, "model.safetensors")).keys())
        assert "embeddings.token_embedding.weight" in resaved_keys, resaved_keys[:3]
        assert not any(k.startswith("text_model.") for k in resaved_keys)

        # Raw id rows for the two pooling rules (legacy eos_token_id 2: argmax of the ids; else the
        # first position holding eos_token_id, 0 when none does).
        raw_ids = [
            [BOS_ID, 5, 300, 17, EOS_ID] + [EOS_ID] * (MAX_LEN - 5),   # padded with eos: first eos
            [7, 400, 3, 9] + [0] * (MAX_LEN - 4),                        # no eos: argmax (1) vs 0
            [BOS_ID, EOS_ID, 12, EOS_ID] + [0] * (MAX_LEN - 4),          # eos twice
            [BOS_ID, 44, 45, 46, 47, 48],                                # 6 positions only
        ]
        max_dev = 0.0
        for name, model, ids, proj in [("text_encoder", te1, ids1, False), ("text_encoder_2", te2, ids2, True)]:
            o = run(model, ids)
            o64 = run(model, ids, torch.float64)
            for h, h64 in zip(o.hidden_states, o64.hidden_states):
                max_dev = max(max_dev, max_diff(h, h64))
            max_dev = max(max_dev, max_diff(o.last_hidden_state, o64.last_hidden_state))
            tensors[f"{name}.input_ids"] = torch.tensor(ids, dtype=torch.int64)
            # SD 1.5 conditions on text_encoder's last_hidden_state: every prompt's; SDXL reads no
            # encoder's, so text_encoder_2's only for the FULL prompts.
            last = o.last_hidden_state if not proj else o.last_hidden_state[FULL]
            tensors[f"{name}.last_hidden_state"] = last.contiguous()
            for i, h in enumerate(o.hidden_states):
                tensors[f"{name}.hidden_states.{i}"] = h[FULL].contiguous()
            if proj:
                tensors[f"{name}.pooler_output"] = te2.text_model(torch.tensor(ids)).pooler_output.detach()
                tensors[f"{name}.text_embeds"] = o.text_embeds.contiguous()
            else:
                tensors[f"{name}.pooler_output"] = o.pooler_output.contiguous()
            for rule, eos in [("legacy", 2), ("eos", EOS_ID)]:
                m = model.text_model if proj else model
                saved = m.eos_token_id
                m.eos_token_id = eos
                with torch.no_grad():
                    for r, row in enumerate(raw_ids):
                        oo = model(torch.tensor([row]))
                        tensors[f"{name}.raw{r}.{rule}.pooler_output"] = (
                            m(torch.tensor([row])).pooler_output.contiguous())
                        if proj:
                            tensors[f"{name}.raw{r}.{rule}.text_embeds"] = oo.text_embeds.contiguous()
                m.eos_token_id = saved

        # --- what the pipelines take (diffusers' own encode_prompt on these encoders) -----
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
        sel = [0, 7, LONG]
        prompts = [PROMPTS[i] for i in sel]
        sd15 = StableDiffusionPipeline(vae=None, text_encoder=te1, tokenizer=tok1, unet=None, scheduler=None,
                                       safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
        with torch.no_grad():
            pe, _ = sd15.encode_prompt(prompts, "cpu", 1, False)
        tensors["sd15.prompt_embeds"] = pe.contiguous()
        sdxl = StableDiffusionXLPipeline(vae=None, text_encoder=te1, text_encoder_2=te2, tokenizer=tok1,
                                         tokenizer_2=tok2, unet=None, scheduler=None)
        with torch.no_grad():
            pe, _, pooled, _ = sdxl.encode_prompt(prompts, device="cpu", num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
            pe_skip, _, pooled_skip, _ = sdxl.encode_prompt(prompts, device="cpu", num_images_per_prompt=1,
                                                            do_classifier_free_guidance=False, clip_skip=1)
        tensors["sdxl.prompt_embeds"] = pe.contiguous()
        tensors["sdxl.pooled_prompt_embeds"] = pooled.contiguous()
        tensors["sdxl.clip_skip1.prompt_embeds"] = pe_skip.contiguous()
        tensors["sdxl.clip_skip1.pooled_prompt_embeds"] = pooled_skip.contiguous()
        cases["pipeline_prompts"] = sel

        sha1 = sha256_f32(dense1["text_model.embeddings.token_embedding.weight"])
        sha2 = sha256_f32(dense2["text_model.embeddings.token_embedding.weight"])
    finally:
        shutil.rmtree(tmp)

    save_file(tensors, os.path.join(out, "expected.safetensors"))
    gen_line = (f"transformers {transformers.__version__}, diffusers {diffusers.__version__}, "
                f"torch {torch.__version__}, tokenizers {tokenizers.__version__}, "
                f"safetensors {safetensors.__version__}, numpy {np.__version__}; CPU float32, "
                f"{te1.config._attn_implementation} attention")
    cases.update(dict(
        generator=gen_line, seed=a.seed, prompts=PROMPTS, full_hidden_states=FULL,
        untruncated_lengths=untruncated, tokens=tokens,
        input_ids={"tokenizer": ids1, "tokenizer_2": ids2},
        raw_ids=raw_ids,
        token_embedding_sha256={"text_encoder": sha1, "text_encoder_2": sha2},
        transformers5_saved_keys_sample=resaved_keys[:4],
        fp32_vs_fp64_max_abs=float(f"{max_dev:.3g}"),
    ))
    with open(os.path.join(out, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(cases, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(gen_line)
    print("merges", len(merges), "vocab entries", len(vocab), "fp32 vs fp64", max_dev)
    print("untruncated lengths", untruncated)


if __name__ == "__main__":
    main()
