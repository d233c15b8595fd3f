"""LoRA goldens for a diffusers UNet (`trainer/src/lora/diffusers_file.rs`, the LoRA path of
`trainer/src/unet_trainee.rs`): PEFT adapters on the tiny SD 1.5 UNet of make_unet.py, saved as
diffusers saves a UNet's LoRA, and the adapted UNet's epsilon prediction.

The UNet is make_unet.py's SD 1.5 one (its weights are functions of their names, so the Rust
test writes them itself). PEFT's LoraConfig(r=4, lora_alpha=8, target_modules=["to_k",
"to_q", "to_v", "to_out.0", "ff.net.2"]) is added with `unet.add_adapter`, as diffusers' LoRA
training scripts do; its factors (A and B, both non-zero, so that the adapter changes the
output) get make_unet.py's counter values of their PEFT names times 0.5. The file
`pytorch_lora_weights.safetensors` is written by `StableDiffusionPipeline.save_lora_weights(...,
unet_lora_layers=get_peft_model_state_dict(unet), unet_lora_adapter_metadata=config.to_dict())`,
and `no_metadata/` holds the same factors saved without metadata (diffusers then reads
alpha = r). Every output is checked here against a fresh UNet that loaded the saved file as
`pipe.load_lora_weights(dir)` loads it (`lora_state_dict` with its metadata, then
`load_lora_into_unet`), so the file is what diffusers reads.

usage: python scripts/golden/make_unet_lora.py fixtures/diffusion/unet_lora
"""
import argparse, json, os, sys
from importlib.metadata import version

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_unet import SD15, build, weight_values  # noqa: E402

TARGETS = ["to_k", "to_q", "to_v", "to_out.0", "ff.net.2"]


def versions():
    return {p: version(p) for p in ["torch", "diffusers", "peft", "safetensors"]}


def adapted(unet):
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=True, target_modules=TARGETS)
    unet.add_adapter(config)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if ".lora_" in name:
                peft_name = name.replace(".default", "")
                p.copy_(0.5 * weight_values(peft_name, tuple(p.shape)))
    return unet, config


def forward(unet, sample, t, ctx):
    with torch.no_grad():
        return unet(sample, t, encoder_hidden_states=ctx).sample


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    out = ap.parse_args().out
    os.makedirs(os.path.join(out, "no_metadata"), exist_ok=True)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(17)

    unet, config = adapted(build(SD15))
    state = get_peft_model_state_dict(unet)
    # Saved in float32, what a user's adapter holds; the values are f32-exact already.
    state32 = {k: v.float() for k, v in state.items()}
    StableDiffusionPipeline.save_lora_weights(
        out, unet_lora_layers=state32, unet_lora_adapter_metadata=config.to_dict())
    StableDiffusionPipeline.save_lora_weights(
        os.path.join(out, "no_metadata"), unet_lora_layers=state32)

    tensors, cases = {}, []
    for (h, w) in [(8, 8), (12, 10)]:
        name = f"latents_{h}x{w}"
        sample = torch.randn(2, 4, h, w, generator=g, dtype=torch.float64)
        t = torch.tensor([999, 249], dtype=torch.long)
        ctx = torch.randn(2, 7, SD15["cross_attention_dim"], generator=g, dtype=torch.float64)
        want = forward(unet, sample, t, ctx)
        # The same UNet loaded from the saved file, as a user's pipeline loads it.
        for sub, scale in [("", 2.0), ("no_metadata", 1.0)]:
            fresh = build(SD15)
            # What `pipe.load_lora_weights(dir)` does for the UNet.
            sd, alphas, meta = StableDiffusionPipeline.lora_state_dict(
                os.path.join(out, sub), return_lora_metadata=True)
            StableDiffusionPipeline.load_lora_into_unet(
                sd, network_alphas=alphas, unet=fresh, adapter_name="default", metadata=meta)
            assert fresh.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.scaling["default"] == scale
            got = forward(fresh, sample, t, ctx)
            if sub == "":
                assert torch.allclose(got, want, atol=1e-12, rtol=0), (got - want).abs().max()
            else:
                tensors[f"{name}.output_no_metadata"] = got
        base = forward(build(SD15), sample, t, ctx)
        assert (base - want).abs().max() > 1e-3, "the adapter must change the output"
        tensors.update({f"{name}.sample": sample, f"{name}.timesteps": t.double(),
                        f"{name}.context": ctx, f"{name}.output": want, f"{name}.base": base})
        cases.append({"name": name, "latent_hw": [h, w]})
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out, "expected.safetensors"))
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump({"versions": versions(), "targets": TARGETS, "r": 4, "lora_alpha": 8,
                   "unet": "fixtures/diffusion/unet/sd15", "cases": cases}, f, indent=2)


if __name__ == "__main__":
    main()
