"""Motion UNet goldens for `models/src/diffusion/unet_motion`: tiny diffusers `UNetMotionModel`s
(AnimateDiff: SD 1.5's UNet with motion modules) with the real AnimateDiff v1.5 layouts.

Kept from AnimateDiff v1.5 (stable-diffusion-v1-5 + guoyww/animatediff-motion-adapter-v1-5-2, as
`UNetMotionModel.from_unet2d` assembles them): the block types (CrossAttnDownBlockMotion x3,
DownBlockMotion; UpBlockMotion, CrossAttnUpBlockMotion x3) and their order, layers_per_block 2
(so 2 motion modules per down block and 3 per up block), norm_num_groups 32 for the resnets, the
spatial transformers and the motion modules, norm_eps 1e-5, 8 spatial and 8 motion heads (the
head width is the block's channels / 8), one temporal transformer layer per motion module, the
sinusoidal frame positions with motion_max_seq_length 32, the motion mid block (v1-5-2;
`animatediff_v1` has none, as v1-5's adapter). Shrunk: block_out_channels [320, 640, 1280, 1280]
-> [32, 32, 64, 64], cross_attention_dim 768 -> 32.

No weight file is stored: every parameter is `make_unet.weight_values(name, shape)` (splitmix64
of the name's FNV-1a hash plus the index, rounded to f32), and the tests write the checkpoint
from `weights.json`. The `pos_embed.pe` buffers are not parameters: they are set to the
sinusoidal table computed in float64 and rounded to float32 (diffusers builds it in float32;
the two differ by at most one float32 ulp), which is what the Rust model computes, and left out
of `weights.json` (the Rust model computes the table instead of reading it). References are
computed in float64, eager attention; the prompt embeddings are repeated per frame, as diffusers'
AnimateDiff pipeline does before calling the UNet.

Cases: 8 frames of 8x8 latents (two videos, timesteps 999 and 249), 8 frames of 10x12 latents
(sides not divisible by the UNet's factor 8: diffusers upsamples to the skip connection's size),
16 frames of 8x8; gradients of sum(output * proj) for the sample and a few weights (motion
modules included), at timestep 0 where the float32 timestep sinusoids are exact on both sides.

usage: python scripts/golden/make_unet_motion.py fixtures/diffusion/unet_motion
"""
import argparse, json, math, os, sys

import torch
from diffusers import UNetMotionModel
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_unet import versions, weight_values  # noqa: E402

V15_2 = dict(
    in_channels=4, out_channels=4,
    down_block_types=["CrossAttnDownBlockMotion", "CrossAttnDownBlockMotion", "CrossAttnDownBlockMotion",
                      "DownBlockMotion"],
    up_block_types=["UpBlockMotion", "CrossAttnUpBlockMotion", "CrossAttnUpBlockMotion", "CrossAttnUpBlockMotion"],
    block_out_channels=[32, 32, 64, 64], layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=32, num_attention_heads=8,
    use_linear_projection=False, transformer_layers_per_block=1, temporal_transformer_layers_per_block=1,
    motion_max_seq_length=32, motion_num_attention_heads=8, use_motion_mid_block=True,
)
V1 = {**V15_2, "use_motion_mid_block": False}

# Not the last motion module's proj_out.bias: a per-channel constant before conv_norm_out (32
# groups of 32 channels, one channel a group) is normalised away, so its true gradient is 0 and
# both sides return rounding noise.
GRAD_KEYS = [
    "conv_in.weight", "time_embedding.linear_2.weight",
    "down_blocks.0.motion_modules.0.proj_in.weight",
    "down_blocks.0.motion_modules.1.transformer_blocks.0.attn1.to_q.weight",
    "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight",
    "down_blocks.1.downsamplers.0.conv.weight",
    "down_blocks.3.motion_modules.1.transformer_blocks.0.attn2.to_v.weight",
    "mid_block.motion_modules.0.norm.weight",
    "up_blocks.0.upsamplers.0.conv.bias",
    "up_blocks.1.motion_modules.2.transformer_blocks.0.norm2.bias",
    "up_blocks.3.motion_modules.0.transformer_blocks.0.ff.net.0.proj.weight",
    "up_blocks.3.motion_modules.2.proj_out.weight",
    "conv_out.bias",
]
V1_GRAD_KEYS = [k for k in GRAD_KEYS if not k.startswith("mid_block.motion")] + ["mid_block.attentions.0.proj_in.weight"]


def positions(max_len, dim):
    table = torch.zeros(max_len, dim, dtype=torch.float64)
    for pos in range(max_len):
        for i in range(0, dim, 2):
            angle = pos * math.exp(-math.log(10000.0) * i / dim)
            table[pos, i] = float(torch.tensor(math.sin(angle), dtype=torch.float32))
            if i + 1 < dim:
                table[pos, i + 1] = float(torch.tensor(math.cos(angle), dtype=torch.float32))
    return table


def build(cfg):
    unet = UNetMotionModel(**cfg).double().eval()
    with torch.no_grad():
        for name, p in unet.named_parameters():
            p.copy_(weight_values(name, tuple(p.shape)))
        for name, b in unet.named_buffers():
            assert name.endswith("pos_embed.pe"), name
            b.copy_(positions(b.shape[1], b.shape[2]).unsqueeze(0))
    return unet


def save_unet(unet, cfg, out):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump({"_class_name": "UNetMotionModel", "_diffusers_version": version_of("diffusers"), **cfg}, f,
                  indent=2)
    manifest = [{"name": k, "shape": list(v.shape)} for k, v in unet.state_dict().items()
                if not k.endswith("pos_embed.pe")]
    with open(os.path.join(out, "weights.json"), "w") as f:
        json.dump(manifest, f)


def version_of(p):
    return versions()[p]


def forward(unet, sample, t, ctx):
    frames = sample.shape[2]
    return unet(sample, t, encoder_hidden_states=ctx.repeat_interleave(frames, dim=0)).sample


CASES = {
    "v1_5_2": [("frames8_8x8", 2, 8, 8, 8, [999, 249]), ("frames8_10x12", 1, 8, 10, 12, [500]),
               ("frames16_8x8", 1, 16, 8, 8, [700])],
    "animatediff_v1": [("frames8_10x12", 1, 8, 10, 12, [300])],
}


def cases_for(name, unet, cfg, g, grad_keys):
    tensors, cases = {}, []
    for (case, b, frames, h, w, steps) in CASES[name]:
        sample = torch.randn(b, 4, frames, h, w, generator=g, dtype=torch.float64)
        t = torch.tensor(steps, dtype=torch.long)
        ctx = torch.randn(b, 7, cfg["cross_attention_dim"], generator=g, dtype=torch.float64)
        with torch.no_grad():
            out = forward(unet, sample, t, ctx)
        sample.requires_grad_(True)
        out0 = forward(unet, sample, torch.zeros_like(t), ctx)
        proj = torch.randn(out.shape, generator=g, dtype=torch.float64)
        unet.zero_grad()
        (out0 * proj).sum().backward()
        tensors.update({f"{case}.sample": sample.detach(), f"{case}.timesteps": t.double(),
                        f"{case}.context": ctx, f"{case}.output": out.detach(), f"{case}.proj": proj,
                        f"{case}.grad.sample": sample.grad.detach()})
        params = dict(unet.named_parameters())
        for k in grad_keys:
            tensors[f"{case}.grad.{k}"] = params[k].grad.detach().clone()
        cases.append({"name": case, "frames": frames, "latent_hw": [h, w], "grad_keys": grad_keys})
    return tensors, cases


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    gen = {"script": "scripts/golden/make_unet_motion.py", "versions": versions()}
    for i, (name, cfg, keys) in enumerate([("v1_5_2", V15_2, GRAD_KEYS), ("animatediff_v1", V1, V1_GRAD_KEYS)]):
        unet = build(cfg)
        root = os.path.join(args.out, name)
        save_unet(unet, cfg, os.path.join(root, "unet"))
        tensors, cases = cases_for(name, unet, cfg, torch.Generator().manual_seed(300 + i), keys)
        save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(root, "expected.safetensors"))
        with open(os.path.join(root, "cases.json"), "w") as f:
            json.dump({"generator": gen, "cases": cases}, f, indent=2)


if __name__ == "__main__":
    main()
