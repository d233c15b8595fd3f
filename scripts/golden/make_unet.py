"""UNet goldens for `models/src/diffusion/unet`: tiny diffusers `UNet2DConditionModel`s with the
real SD 1.5 and SDXL block layouts, and one Diffusion-DPO step on them.

Kept from the real configs (stable-diffusion-v1-5 / stable-diffusion-xl-base-1.0 unet/config.json):
block types and their order, layers_per_block 2, norm_num_groups 32, norm_eps 1e-5,
flip_sin_to_cos, freq_shift 0, downsample_padding 1, SD 1.5's `attention_head_dim` 8 (which
diffusers reads as 8 heads), SDXL's linear projections, `addition_embed_type` text_time with
`addition_time_embed_dim` 256 and six time ids, SDXL's transformer depth growing with the level.
Shrunk: block_out_channels (SD 1.5 [320, 640, 1280, 1280] -> [32, 32, 64, 64]; SDXL
[320, 640, 1280] -> [32, 32, 64]), SDXL heads [5, 10, 20] -> [2, 2, 4] and depth [1, 2, 10] ->
[1, 1, 2], cross_attention_dim 768 -> 32 and 2048 -> 48, the pooled width 1280 -> 32.
No weight file is stored: every weight is a function of its name and index (splitmix64 of the
name's FNV-1a hash plus the index, see `counter_uniform`), rounded to f32, so the tests write
the checkpoint themselves from `weights.json` (diffusers' own names and shapes, in its
state_dict order) and load it through the loader users run; a fixture of megabytes of random
numbers would say nothing more. References are computed in float64 from those f32 values, eager
attention.

Cases: latents whose sides divide by the UNet's total factor and ones that do not (diffusers then
upsamples to the skip connection's size), per-sample timesteps, SDXL's added conditioning;
gradients of a fixed projection of the output for a few weights and the input; and one
Diffusion-DPO step as SalesforceAIResearch/DiffusionDPO train.py computes it (chosen and
rejected share noise and timestep, DDPMScheduler.add_noise on SD 1.5's betas, per-sample MSE,
loss = -logsigmoid(-0.5 beta ((m_w - m_l) - (r_w - r_l))) averaged, beta 5000), with the
reference UNet a perturbed copy of the trained one.

usage: python scripts/golden/make_unet.py fixtures/diffusion/unet
"""
import argparse, json, math, os
from importlib.metadata import version
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel, DDPMScheduler
from safetensors.torch import save_file


def versions():
    return {p: version(p) for p in ["torch", "diffusers", "safetensors"]}


SD15 = dict(
    sample_size=8, in_channels=4, out_channels=4, center_input_sample=False,
    flip_sin_to_cos=True, freq_shift=0,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    block_out_channels=[32, 32, 64, 64], layers_per_block=2, downsample_padding=1,
    mid_block_scale_factor=1, act_fn="silu", norm_num_groups=32, norm_eps=1e-5,
    cross_attention_dim=32, attention_head_dim=8,
)

SDXL = dict(
    sample_size=8, in_channels=4, out_channels=4, center_input_sample=False,
    flip_sin_to_cos=True, freq_shift=0,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    block_out_channels=[32, 32, 64], layers_per_block=2, downsample_padding=1,
    mid_block_scale_factor=1, act_fn="silu", norm_num_groups=32, norm_eps=1e-5,
    cross_attention_dim=48, attention_head_dim=[2, 2, 4], transformer_layers_per_block=[1, 1, 2],
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=32 + 6 * 256, upcast_attention=False,
)

GRAD_KEYS = {
    "sd15": ["conv_in.weight", "time_embedding.linear_1.weight",
             "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight",
             "down_blocks.1.downsamplers.0.conv.weight",
             "mid_block.resnets.0.norm1.weight", "mid_block.attentions.0.proj_in.weight",
             "up_blocks.0.upsamplers.0.conv.bias",
             "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.0.proj.weight",
             "up_blocks.3.resnets.0.conv_shortcut.weight", "conv_norm_out.bias", "conv_out.bias"],
    "sdxl": ["conv_in.weight", "add_embedding.linear_1.bias",
             "down_blocks.2.attentions.0.transformer_blocks.1.attn1.to_q.weight",
             "down_blocks.1.attentions.0.proj_in.weight",
             "mid_block.attentions.0.transformer_blocks.0.norm2.weight",
             "up_blocks.0.upsamplers.0.conv.bias", "up_blocks.1.attentions.2.proj_out.weight",
             "conv_out.weight"],
}


MASK = (1 << 64) - 1


def fnv1a(text):
    h = 0xcbf29ce484222325
    for b in text.encode():
        h = ((h ^ b) * 0x100000001b3) & MASK
    return h


def counter_uniform(name, n):
    """u_i in [-1, 1): splitmix64's output for the state fnv1a(name) + (i + 1) * golden gamma."""
    with np.errstate(over="ignore"):
        i = np.arange(1, n + 1, dtype=np.uint64)
        z = np.uint64(fnv1a(name)) + i * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53 * 2.0 - 1.0


def weight_values(name, shape, salt=""):
    """The value of every weight (see the module doc): norm gains 1 + 0.2u, biases 0.1u, other
    weights u·sqrt(3 / fan_in) (unit variance through each layer); the salted copy (the
    reference UNet of the DPO step) is the weight plus 0.02u of its own scale."""
    n = int(np.prod(shape))
    u = counter_uniform(name, n)
    fan_in = n // shape[0] if len(shape) > 1 else 1
    if len(shape) == 1 and "norm" in name and name.endswith(".weight"):
        v, scale = 1.0 + 0.2 * u, 0.2
    elif len(shape) == 1:
        v, scale = 0.1 * u, 0.1
    else:
        scale = math.sqrt(3.0 / fan_in)
        v = u * scale
    if salt:
        v = v + 0.02 * scale * counter_uniform(salt + name, n)
    return torch.from_numpy(v.astype(np.float32).astype(np.float64)).reshape(shape)


def build(cfg, salt=""):
    unet = UNet2DConditionModel(**cfg).double().eval()
    with torch.no_grad():
        for name, p in unet.named_parameters():
            p.copy_(weight_values(name, tuple(p.shape), salt))
    return unet


def save_unet(unet, cfg, out):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump({"_class_name": "UNet2DConditionModel", "_diffusers_version": version("diffusers"), **cfg},
                  f, indent=2)
    manifest = [{"name": k, "shape": list(v.shape)} for k, v in unet.state_dict().items()]
    with open(os.path.join(out, "weights.json"), "w") as f:
        json.dump(manifest, f)


def forward(unet, sample, t, ctx, added):
    return unet(sample, t, encoder_hidden_states=ctx, added_cond_kwargs=added).sample


def cases_for(name, unet, cfg, g):
    tensors, cases = {}, []
    sizes = [(8, 8), (12, 10)] if name == "sd15" else [(8, 12), (10, 6)]
    for (h, w) in sizes:
        case = f"latents_{h}x{w}"
        b = 2
        sample = torch.randn(b, 4, h, w, generator=g, dtype=torch.float64)
        t = torch.tensor([999, 249], dtype=torch.long)
        ctx = torch.randn(b, 7, cfg["cross_attention_dim"], generator=g, dtype=torch.float64)
        added = None
        if name == "sdxl":
            text_embeds = torch.randn(b, 32, generator=g, dtype=torch.float64)
            time_ids = torch.tensor([[h * 8, w * 8, 0, 0, h * 8, w * 8], [1024, 768, 16, 8, 512, 512]],
                                    dtype=torch.float64)
            added = {"text_embeds": text_embeds, "time_ids": time_ids}
            tensors[f"{case}.text_embeds"] = text_embeds
            tensors[f"{case}.time_ids"] = time_ids
        with torch.no_grad():
            out = forward(unet, sample, t, ctx, added)
        # Gradients at timestep 0 and zero time ids: diffusers embeds both in float32, where
        # torch's sin/cos and Rust's differ in the last bit; at 0 they are exact, so the
        # float64 gradients can be compared to 1e-9 instead of to that floor.
        t0 = torch.zeros_like(t)
        added0 = None if added is None else {**added, "time_ids": torch.zeros_like(added["time_ids"])}
        sample.requires_grad_(True)
        out0 = forward(unet, sample, t0, ctx, added0)
        proj = torch.randn(out.shape, generator=g, dtype=torch.float64)
        unet.zero_grad()
        (out0 * proj).sum().backward()
        tensors.update({f"{case}.sample": sample.detach(), f"{case}.timesteps": t.double(),
                        f"{case}.context": ctx, f"{case}.output": out.detach(), f"{case}.proj": proj,
                        f"{case}.grad.sample": sample.grad.detach()})
        params = dict(unet.named_parameters())
        for k in GRAD_KEYS[name]:
            tensors[f"{case}.grad.{k}"] = params[k].grad.detach().clone()
        cases.append({"name": case, "latent_hw": [h, w], "grad_keys": GRAD_KEYS[name]})
    return tensors, cases


def dpo_step(unet, ref, g):
    """One Diffusion-DPO micro-batch as train.py computes it (SD 1.5, epsilon prediction)."""
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                          beta_schedule="scaled_linear")
    pairs = 2
    latents_w = torch.randn(pairs, 4, 12, 10, generator=g, dtype=torch.float64)
    latents_l = torch.randn(pairs, 4, 12, 10, generator=g, dtype=torch.float64)
    latents = torch.cat([latents_w, latents_l])
    noise = torch.randn(pairs, 4, 12, 10, generator=g, dtype=torch.float64).repeat(2, 1, 1, 1)
    timesteps = torch.tensor([640, 37], dtype=torch.long).repeat(2)
    noisy = sched.add_noise(latents, noise, timesteps)
    ctx = torch.randn(pairs, 7, 32, generator=g, dtype=torch.float64).repeat(2, 1, 1)
    beta = 5000.0
    target = noise
    unet.zero_grad()
    model_pred = forward(unet, noisy, timesteps, ctx, None)
    model_losses = (model_pred - target).pow(2).mean(dim=[1, 2, 3])
    model_losses_w, model_losses_l = model_losses.chunk(2)
    raw_model_loss = 0.5 * (model_losses_w.mean() + model_losses_l.mean())
    model_diff = model_losses_w - model_losses_l
    with torch.no_grad():
        ref_pred = forward(ref, noisy, timesteps, ctx, None)
        ref_losses = (ref_pred - target).pow(2).mean(dim=[1, 2, 3])
        ref_losses_w, ref_losses_l = ref_losses.chunk(2)
        ref_diff = ref_losses_w - ref_losses_l
        raw_ref_loss = ref_losses.mean()
    scale_term = -0.5 * beta
    inside_term = scale_term * (model_diff - ref_diff)
    implicit_acc = (inside_term > 0).sum().double() / inside_term.size(0)
    loss = -1 * F.logsigmoid(inside_term).mean()
    loss.backward()
    tensors = {"latents": latents, "noise": noise, "timesteps": timesteps.double(), "noisy_latents": noisy,
               "context": ctx, "model_pred": model_pred.detach(), "ref_pred": ref_pred,
               "model_losses": model_losses.detach(), "ref_losses": ref_losses,
               "loss": loss.detach().reshape(1), "implicit_acc": implicit_acc.reshape(1),
               "raw_model_loss": raw_model_loss.detach().reshape(1), "raw_ref_loss": raw_ref_loss.reshape(1),
               "alphas_cumprod": sched.alphas_cumprod.double()}
    params = dict(unet.named_parameters())
    for k in GRAD_KEYS["sd15"]:
        tensors[f"grad.{k}"] = params[k].grad.detach().clone()
    return tensors, {"beta": beta, "pairs": pairs, "grad_keys": GRAD_KEYS["sd15"],
                     "reference_salt": "ref:", "scheduler": "DDPMScheduler scaled_linear 0.00085..0.012, 1000 steps"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    gen = {"script": "scripts/golden/make_unet.py", "versions": versions()}
    for i, (name, cfg) in enumerate([("sd15", SD15), ("sdxl", SDXL)]):
        unet = build(cfg)
        root = os.path.join(args.out, name)
        save_unet(unet, cfg, os.path.join(root, "unet"))
        g = torch.Generator().manual_seed(100 + i)
        tensors, cases = cases_for(name, unet, cfg, g)
        save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(root, "expected.safetensors"))
        with open(os.path.join(root, "cases.json"), "w") as f:
            json.dump({"generator": gen, "cases": cases}, f, indent=2)
        if name == "sd15":
            ref = build(cfg, salt="ref:")
            tensors, meta = dpo_step(unet, ref, torch.Generator().manual_seed(7))
            save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(root, "dpo_step.safetensors"))
            with open(os.path.join(root, "dpo_step.json"), "w") as f:
                json.dump({"generator": gen, **meta}, f, indent=2)


if __name__ == "__main__":
    main()
