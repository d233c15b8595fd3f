"""Tiny diffusers AutoencoderKL checkpoints (the Stable Diffusion / SDXL VAE) with seeded random
weights, and reference outputs from diffusers in float32 for images of real aspect ratios and
a short video encoded frame by frame as AnimateDiff / VideoDPO do it.

usage: python scripts/golden/make_vae.py fixtures/diffusion/vae --seed 7
Needs: torch, diffusers, safetensors, numpy. The versions used are written into each cases.json
("generator"). Deterministic: one CPU thread, seeded generators; re-running it reproduces the
files byte for byte with the same versions.

Two checkpoints (each `<name>/model/` is a diffusers component directory: config.json as
`save_config` writes it, the weights as `save_pretrained` names them):

  sdxl_tiny          the real SD / SDXL geometry: 4 DownEncoderBlock2D / UpDecoderBlock2D (8x
                     downsampling), layers_per_block 2 (3 resnets a decoder block), 4 latent
                     channels, norm_num_groups 32, GroupNorm eps 1e-6, the mid block's
                     single-head attention, quant_conv / post_quant_conv, scaling_factor 0.13025
                     (SDXL's; SD1.5 has 0.18215), sample_size 1024, force_upcast. Only the widths
                     are shrunk, to 32 channels a block: at 32 (one channel a group) the weights
                     are 515k parameters; a 64-channel mid block alone would add 250k. Stored as
                     the fp16 variant only (diffusion_pytorch_model.fp16.safetensors, 1 MB; the
                     float32 file would be 2 MB): the weights are rounded to float16 before the
                     references are computed in float32 from them, so loading the variant in
                     float32 must reproduce the references to float32 rounding.
  legacy_attention   what the first checkpoint cannot check: GroupNorm groups of several
                     channels (8 and 12 channels in 4 groups: 2 and 3 a group), the legacy
                     attention key names of older diffusers checkpoints (`query`, `key`, `value`,
                     `proj_attn`, which diffusers renames on load), use_quant_conv and
                     use_post_quant_conv false with a shift_factor (SD3 / Flux style), 2 blocks,
                     layers_per_block 1. float32 weights (diffusion_pytorch_model.safetensors).

Weights: conv and linear weights N(0, 1/fan_in), biases N(0, 0.05^2), GroupNorm weights
1 + N(0, 0.1^2) and biases N(0, 0.05^2), attention query / key N(0, 2/C) so that the scores
have a spread of about 2 (diffusers' default init gives nearly uniform attention). The
references are also computed in float64 and the float32 ones must agree with them to 1e-5 of
their magnitude (recorded per case as fp64_max_rel_diff), so a 1e-4 tolerance in the test
checks the layers, not float32 noise.
"""
import argparse, json, os
import numpy as np
import torch
import diffusers
import safetensors
from diffusers import AutoencoderKL
from safetensors.torch import save_file, load_file

SDXL_TINY = dict(
    in_channels=3, out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[32, 32, 32, 32], layers_per_block=2, act_fn="silu", latent_channels=4,
    norm_num_groups=32, sample_size=1024, scaling_factor=0.13025, shift_factor=None,
    force_upcast=True, use_quant_conv=True, use_post_quant_conv=True, mid_block_add_attention=True)
LEGACY = dict(
    in_channels=3, out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
    block_out_channels=[8, 12], layers_per_block=1, act_fn="silu", latent_channels=4,
    norm_num_groups=4, sample_size=64, scaling_factor=1.5305, shift_factor=0.0609,
    force_upcast=False, use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=True)
LEGACY_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
REL_TOL_FP64 = 1e-5


def init_weights(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            def randn(std):
                return torch.randn(p.shape, generator=g, dtype=torch.float64).float() * std
            is_norm = "norm" in name.split(".")[-2]
            if name.endswith("bias"):
                p.copy_(randn(0.05))
            elif is_norm:
                p.copy_(1.0 + randn(0.1))
            elif name.endswith(("to_q.weight", "to_k.weight")):
                p.copy_(randn((2.0 / p.shape[1]) ** 0.5))
            else:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(randn(fan_in ** -0.5))


def image_input(b, h, w, seed):
    """Images in [-1, 1]: smooth colour gradients, a few discs and pixel noise, float16-exact."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    out = np.zeros((b, 3, h, w))
    for i in range(b):
        for c in range(3):
            a, bb, ph = rng.normal(size=3)
            img = 0.6 * np.sin(2.5 * a * xx + 2.0 * bb * yy + ph)
            for _ in range(3):
                cx, cy, r = rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0.1, 0.4)
                img += np.where((xx - cx) ** 2 + (yy - cy) ** 2 < r * r, rng.uniform(-0.8, 0.8), 0.0)
            img += 0.15 * rng.standard_normal((h, w))
            out[i, c] = np.clip(img, -1, 1)
    return torch.from_numpy(out.astype(np.float16).astype(np.float32))


def noise_like(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float32).half().float()


def encode_images(vae, x):
    post = vae.encode(x).latent_dist
    return post.mean, post.logvar


def frames_to_images(v):
    """[B, C, F, H, W] -> [B*F, C, H, W], as AnimateDiff's prepare / decode_latents do."""
    b, c, f, h, w = v.shape
    return v.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)


def images_to_frames(x, b, f):
    return x.reshape((b, f) + x.shape[1:]).permute(0, 2, 1, 3, 4)


def run_case(vae, x, noise, video):
    """mean, logvar, sample (mean + exp(logvar / 2) * noise), decode(sample)."""
    if video:
        b, _, f = x.shape[:3]
        mean, logvar = encode_images(vae, frames_to_images(x))
        mean, logvar = images_to_frames(mean, b, f), images_to_frames(logvar, b, f)
    else:
        mean, logvar = encode_images(vae, x)
    sample = mean + torch.exp(0.5 * logvar) * noise
    if video:
        # AnimateDiffPipeline.decode_latents, after its 1 / scaling_factor.
        decoded = images_to_frames(vae.decode(frames_to_images(sample)).sample, x.shape[0], x.shape[2])
    else:
        decoded = vae.decode(sample).sample
    return dict(mean=mean, logvar=logvar, sample=sample, decoded=decoded)


def latents_of(cfg, sample):
    shift = cfg["shift_factor"] or 0.0
    return (sample - shift) * cfg["scaling_factor"]


def build(out, name, cfg, seed, cases, variant, legacy):
    torch.manual_seed(seed)
    vae = AutoencoderKL(**cfg).eval()
    init_weights(vae, seed)
    if variant == "fp16":
        with torch.no_grad():
            for p in vae.parameters():
                p.copy_(p.half().float())
    mdir = os.path.join(out, name, "model")
    os.makedirs(mdir, exist_ok=True)
    vae.save_config(mdir)
    state = {k: v.detach().contiguous() for k, v in vae.state_dict().items()}
    if legacy:
        renamed = {}
        for k, v in state.items():
            for new, old in LEGACY_NAMES.items():
                if ".attentions." in k and f".{new}." in k:
                    k = k.replace(f".{new}.", f".{old}.")
            renamed[k] = v
        state = renamed
        assert any(".query." in k for k in state) and not any(".to_q." in k for k in state)
    if variant == "fp16":
        fname = "diffusion_pytorch_model.fp16.safetensors"
        state = {k: v.half() for k, v in state.items()}
    else:
        fname = "diffusion_pytorch_model.safetensors"
    save_file(state, os.path.join(mdir, fname), metadata={"format": "pt"})

    # What a user of diffusers gets from these files: the references come from that model.
    loaded = AutoencoderKL.from_pretrained(mdir, variant=variant, torch_dtype=torch.float32).eval()
    for (k, a), (k2, b) in zip(sorted(vae.state_dict().items()), sorted(loaded.state_dict().items())):
        assert k == k2 and torch.equal(a, b), f"{name}: {k} differs after from_pretrained"
    vae = loaded
    vae64 = AutoencoderKL.from_pretrained(mdir, variant=variant, torch_dtype=torch.float32).double().eval()

    tensors, meta = {}, []
    for k, (case, shape, video) in enumerate(cases):
        x = image_input(shape[0] * (shape[2] if video else 1), shape[-2], shape[-1], seed * 100 + k)
        if video:
            b, c, f, h, w = shape
            x = x.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4).contiguous()
        sf = 2 ** (len(cfg["block_out_channels"]) - 1)
        lat_shape = (shape[0], cfg["latent_channels"]) + tuple(shape[2:-2]) + (shape[-2] // sf, shape[-1] // sf)
        noise = noise_like(lat_shape, seed * 100 + 50 + k)
        with torch.no_grad():
            got = run_case(vae, x, noise, video)
            ref = run_case(vae64, x.double(), noise.double(), video)
        rel = 0.0
        for key in got:
            scale = ref[key].abs().max().item()
            rel = max(rel, (got[key].double() - ref[key]).abs().max().item() / scale)
        assert rel < REL_TOL_FP64, f"{name} {case}: float32 is {rel:.2e} off float64"
        tensors[f"{case}.input"] = x.half()  # float16-exact by construction
        tensors[f"{case}.noise"] = noise.half()
        for key, t in got.items():
            tensors[f"{case}.{key}"] = t.float().contiguous()
        tensors[f"{case}.latents"] = latents_of(cfg, got["sample"]).float().contiguous()
        stats = {key: [round(t.min().item(), 4), round(t.max().item(), 4), round(t.std().item(), 4)]
                 for key, t in got.items()}
        meta.append(dict(name=case, shape=list(shape), video=video, fp64_max_rel_diff=float(f"{rel:.3e}"),
                         min_max_std=stats))
        print(name, case, "fp32 vs fp64", f"{rel:.2e}", stats)
    gdir = os.path.join(out, name)
    save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, os.path.join(gdir, "expected.safetensors"))
    gen = (f"diffusers {diffusers.__version__}, torch {torch.__version__}, safetensors {safetensors.__version__}, "
           f"numpy {np.__version__}; float32 on CPU, one thread")
    with open(os.path.join(gdir, "cases.json"), "w") as fh:
        json.dump(dict(generator=gen, seed=seed, weights=fname, legacy_attention_names=legacy,
                       cases=meta), fh, indent=1)
        fh.write("\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    # (case, shape, video): images [B, 3, H, W], videos [B, 3, F, H, W]; H, W multiples of 8
    # (SD's requirement), not powers of two, portrait and landscape.
    build(a.out, "sdxl_tiny", SDXL_TINY, a.seed,
          [("image_64x96", (1, 3, 64, 96), False),
           ("image_72x40", (1, 3, 72, 40), False),
           ("video_3x48x40", (1, 3, 3, 48, 40), True)],
          variant="fp16", legacy=False)
    build(a.out, "legacy_attention", LEGACY, a.seed + 1,
          [("image_24x40", (1, 3, 24, 40), False)],
          variant=None, legacy=True)


if __name__ == "__main__":
    main()
