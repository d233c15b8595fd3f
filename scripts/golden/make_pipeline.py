"""Text-to-image goldens for `models/src/diffusion/pipeline.rs`: diffusers' StableDiffusionPipeline
and StableDiffusionXLPipeline run on the tiny SD 1.5 and SDXL pipelines that
`tests/src/diffusion_pipeline.rs` (`tiny_sd15_pipeline_with`, `tiny_sdxl_pipeline_with`) assembles
from the repository's diffusion fixtures, with our seeded noise handed to diffusers.

usage: python scripts/golden/make_pipeline.py fixtures/diffusion/pipeline

The pipeline directory is built here exactly as the Rust assembler builds it (and loaded back with
`StableDiffusionPipeline.from_pretrained`, which also checks the layout diffusers expects):
  unet/          fixtures/diffusion/unet/sd15/unet config.json; weights from weights.json, every value
                 a function of its name and index (make_unet.py's weight_values, no salt), float32
  vae/           fixtures/diffusion/vae/sdxl_tiny/model, the fp16 weights as float32, scaling_factor
                 set to SD 1.5's 0.18215
  text_encoder/  fixtures/diffusion/clip_text/text_encoder densified (make_clip_text.py's densify)
  tokenizer/     fixtures/diffusion/clip_text/tokenizer
  scheduler/     fixtures/diffusion/scheduler/configs: sd15.json (PNDM), the same as DDIMScheduler
                 (clip_sample and set_alpha_to_one false), sdxl.json (Euler), sdxl_turbo.json
                 (Euler ancestral, trailing)
The SDXL pipeline: unet/ from `<out>/sdxl_unet` (written here: make_unet.py's SDXL UNet with
cross_attention_dim 80 = 32 + 48 and projection_class_embeddings_input_dim 48 + 6 * 256, to fit
the two CLIP fixtures; config.json + weights.json, the weights synthetic as above), the VAE with
its own scaling_factor 0.13025, text_encoder/ + tokenizer/ and text_encoder_2/ + tokenizer_2/
from fixtures/diffusion/clip_text, force_zeros_for_empty_prompt true.

Randomness: candidate j of a case with seed s starts from gaussian([1, 4, h, w], s + j) (the
documented SplitMix64 + Box-Muller source, make_scheduler.py's port), passed as `latents=`;
diffusers multiplies by init_noise_sigma. The noise Euler ancestral draws at step k is, for
candidate j, gaussian([1, 4, h, w], step_noise_seed(s + j, k)) (pipeline.rs's `step_noise_seed`,
ported below), handed to the scheduler in place of `randn_tensor`.

Stored per case (`<case>.` prefix in expected.safetensors): `latents` (the denoised latents the
decoder takes, captured by callback_on_step_end after the last step, float32), `images_float`
(`output_type="np"`: after denormalize, before quantisation, [B, H, W, 3] float32) and `images`
(`output_type="pil"` as arrays, uint8 [B, H, W, 3]). Everything float32 on the CPU, one thread.
"""
import argparse, json, os, platform, shutil, sys, tempfile, types
from importlib.metadata import version

import numpy as np
import torch
from safetensors.torch import save_file, load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_unet import SDXL as SDXL_UNET_BASE, save_unet, weight_values  # noqa: E402
from make_clip_text import densify  # noqa: E402
from make_scheduler import gaussian  # noqa: E402

from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
FIX = os.path.join(REPO, "fixtures", "diffusion")
SD15_SCALING_FACTOR = 0.18215
# The SDXL UNet fixture (unet/sdxl) is 48 wide in cross-attention and pools 32 values; the CLIP
# fixtures give 32 + 48 = 80 and a 48-wide projection: the same UNet with those two widths.
SDXL_UNET = dict(SDXL_UNET_BASE, cross_attention_dim=32 + 48, projection_class_embeddings_input_dim=48 + 6 * 256)
MASK = (1 << 64) - 1

SCHEDULERS = {
    "pndm": ("sd15.json", None),
    "ddim": ("sd15.json", "DDIMScheduler"),
    "euler": ("sdxl.json", None),
    "euler_a_trailing": ("sdxl_turbo.json", None),
}

PROMPTS = ["a photo of a cat sitting on a wooden table", "an oil painting of a mountain lake at sunset"]

# name, pipeline, scheduler, prompts, negative prompts, guidance, steps, height, width, seed, clip_skip
CASES = [
    ("pndm_cfg", "sd15", "pndm", PROMPTS, None, 7.5, 5, 64, 64, 42, None),
    ("pndm_cfg_negative_clip_skip", "sd15", "pndm", PROMPTS, ["blurry, low quality", ""], 6.0, 4, 64, 64, 7, 1),
    ("ddim_cfg_48x80", "sd15", "ddim", PROMPTS, None, 7.5, 6, 48, 80, 1234, None),
    ("euler_no_cfg", "sd15", "euler", PROMPTS[:1], None, 1.0, 4, 64, 64, 3, None),
    ("euler_a_trailing_2steps", "sd15", "euler_a_trailing", PROMPTS, None, 0.0, 2, 64, 64, 2024, None),
    ("euler_a_trailing_cfg", "sd15", "euler_a_trailing", PROMPTS[1:], None, 3.0, 4, 64, 64, 11, None),
    ("sdxl_euler_cfg", "sdxl", "euler", PROMPTS, None, 5.0, 4, 64, 64, 21, None),
    ("sdxl_euler_cfg_negative_48x80", "sdxl", "euler", PROMPTS, ["blurry", ""], 5.0, 3, 48, 80, 22, None),
    ("sdxl_euler_clip_skip_no_cfg", "sdxl", "euler", PROMPTS[:1], None, 1.0, 3, 64, 64, 23, 1),
    ("sdxl_turbo_1step", "sdxl", "euler_a_trailing", PROMPTS, None, 0.0, 1, 64, 64, 24, None),
    ("sdxl_turbo_4steps", "sdxl", "euler_a_trailing", PROMPTS[1:], None, 0.0, 4, 64, 64, 25, None),
]


def step_noise_seed(candidate_seed, step):
    """pipeline.rs's step_noise_seed: SplitMix64's (step + 1)-th output from candidate_seed ^ 'step'."""
    z = ((candidate_seed ^ 0x73746570) + (step + 1) * 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f, indent=2)
        f.write("\n")


def read_json(path):
    with open(path) as f:
        return json.load(f)


def build_pipeline_dir(d, family, scheduler):
    """The directory tiny_sd15_pipeline_with(d, scheduler) (family "sd15") or
    tiny_sdxl_pipeline_with(d, scheduler) ("sdxl") writes."""
    sdxl = family == "sdxl"
    os.makedirs(d, exist_ok=True)
    src = SDXL_UNET_DIR[0] if sdxl else os.path.join(FIX, "unet", "sd15", "unet")
    os.makedirs(os.path.join(d, "unet"))
    shutil.copy(os.path.join(src, "config.json"), os.path.join(d, "unet", "config.json"))
    specs = read_json(os.path.join(src, "weights.json"))
    unet = {s["name"]: weight_values(s["name"], tuple(s["shape"])).to(torch.float32).contiguous() for s in specs}
    save_file(unet, os.path.join(d, "unet", "diffusion_pytorch_model.safetensors"))

    src = os.path.join(FIX, "vae", "sdxl_tiny", "model")
    os.makedirs(os.path.join(d, "vae"))
    cfg = read_json(os.path.join(src, "config.json"))
    if not sdxl:
        cfg["scaling_factor"] = SD15_SCALING_FACTOR
    write_json(os.path.join(d, "vae", "config.json"), cfg)
    vae = {k: v.to(torch.float32) for k, v in load_file(os.path.join(src, "diffusion_pytorch_model.fp16.safetensors")).items()}
    save_file(vae, os.path.join(d, "vae", "diffusion_pytorch_model.safetensors"))

    for suffix in ["", "_2"] if sdxl else [""]:
        name = "text_encoder" + suffix
        src = os.path.join(FIX, "clip_text", name)
        os.makedirs(os.path.join(d, name))
        shutil.copy(os.path.join(src, "config.json"), os.path.join(d, name, "config.json"))
        save_file(densify(os.path.join(src, "weights.compact.safetensors")), os.path.join(d, name, "model.safetensors"))
        shutil.copytree(os.path.join(FIX, "clip_text", "tokenizer" + suffix), os.path.join(d, "tokenizer" + suffix))

    file, cls = SCHEDULERS[scheduler]
    sched = read_json(os.path.join(FIX, "scheduler", "configs", file))
    if cls is not None:
        sched.update({"_class_name": cls, "clip_sample": False, "set_alpha_to_one": False})
    os.makedirs(os.path.join(d, "scheduler"))
    write_json(os.path.join(d, "scheduler", "scheduler_config.json"), sched)

    if sdxl:
        write_json(os.path.join(d, "model_index.json"), {
            "_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.42.1",
            "feature_extractor": [None, None], "force_zeros_for_empty_prompt": True, "image_encoder": [None, None],
            "scheduler": ["diffusers", sched["_class_name"]],
            "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        })
        return
    write_json(os.path.join(d, "model_index.json"), {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
        "feature_extractor": [None, None], "image_encoder": [None, None], "requires_safety_checker": False,
        "safety_checker": [None, None], "scheduler": ["diffusers", sched["_class_name"]],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
    })


STEP_NOISE = []
SDXL_UNET_DIR = [None]


def patch_randn():
    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        fixed = STEP_NOISE.pop(0)
        assert tuple(shape) == tuple(fixed.shape), (shape, fixed.shape)
        return fixed.to(dtype=dtype)

    import diffusers.schedulers.scheduling_euler_ancestral_discrete as ea
    import diffusers.schedulers.scheduling_ddpm as dd
    ea.randn_tensor = randn_tensor
    dd.randn_tensor = randn_tensor


def run_case(pipe, case, output_type, dtype=torch.float32):
    name, _, _, prompts, negative, guidance, steps, h, w, seed, clip_skip = case
    chw = (4, h // 8, w // 8)
    seeds = [seed + j for j in range(len(prompts))]
    latents = torch.cat([gaussian((1, *chw), s) for s in seeds]).to(dtype)
    STEP_NOISE[:] = [torch.cat([gaussian((1, *chw), step_noise_seed(s, k)) for s in seeds]) for k in range(steps)]
    captured = {}

    def grab(p, i, t, kw):
        captured["latents"] = kw["latents"].clone()
        return kw

    out = pipe(prompt=prompts, negative_prompt=negative, height=h, width=w, num_inference_steps=steps,
               guidance_scale=guidance, latents=latents, clip_skip=clip_skip, output_type=output_type,
               callback_on_step_end=grab, callback_on_step_end_tensor_inputs=["latents"])
    return captured["latents"], out.images


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    args = ap.parse_args()
    torch.set_num_threads(1)
    patch_randn()
    os.makedirs(args.out, exist_ok=True)
    tensors, meta = {}, []
    # The SDXL UNet's config and weight manifest (diffusers' names and shapes, state_dict order).
    SDXL_UNET_DIR[0] = os.path.join(args.out, "sdxl_unet")
    save_unet(UNet2DConditionModel(**SDXL_UNET), SDXL_UNET, SDXL_UNET_DIR[0])
    with tempfile.TemporaryDirectory() as tmp:
        pipes, pipes64 = {}, {}
        for family, sched in sorted({(c[1], c[2]) for c in CASES}):
            d = os.path.join(tmp, family + "_" + sched)
            build_pipeline_dir(d, family, sched)
            load = lambda dtype: (StableDiffusionXLPipeline.from_pretrained(d, torch_dtype=dtype, add_watermarker=False)
                                  if family == "sdxl" else StableDiffusionPipeline.from_pretrained(d, torch_dtype=dtype))
            pipe = load(torch.float32)
            pipe.set_progress_bar_config(disable=True)
            if not hasattr(pipe.text_encoder, "text_model"):
                # transformers 5's CLIPTextModel has no `text_model` level; StableDiffusionPipeline's
                # clip_skip path still reaches for `text_encoder.text_model.final_layer_norm`.
                pipe.text_encoder.text_model = types.SimpleNamespace(final_layer_norm=pipe.text_encoder.final_layer_norm)
            assert type(pipe.scheduler).__name__ == read_json(os.path.join(d, "model_index.json"))["scheduler"][1]
            pipes[family, sched] = pipe
            pipe64 = load(torch.float64)
            pipe64.set_progress_bar_config(disable=True)
            if not hasattr(pipe64.text_encoder, "text_model"):
                pipe64.text_encoder.text_model = types.SimpleNamespace(final_layer_norm=pipe64.text_encoder.final_layer_norm)
            pipes64[family, sched] = pipe64
        for case in CASES:
            name, family, sched, prompts, negative, guidance, steps, h, w, seed, clip_skip = case
            pipe = pipes[family, sched]
            with torch.no_grad():
                lat, floats = run_case(pipe, case, "np")
                lat2, pils = run_case(pipe, case, "pil")
            assert torch.equal(lat, lat2), name
            # the same run in float64: how far float32 itself is from the exact result
            pipe64 = pipes64[family, sched]
            with torch.no_grad():
                lat64, floats64 = run_case(pipe64, case, "np", torch.float64)
            fp32_vs_fp64 = float((lat.double() - lat64).abs().max())
            fp32_vs_fp64_images = float(np.abs(floats.astype(np.float64) - floats64).max())
            u8 = np.stack([np.asarray(p) for p in pils])
            assert u8.dtype == np.uint8 and u8.shape == (len(prompts), h, w, 3), u8.shape
            tensors[f"{name}.latents"] = lat.contiguous()
            tensors[f"{name}.images_float"] = torch.from_numpy(np.ascontiguousarray(floats))
            tensors[f"{name}.images"] = torch.from_numpy(u8)
            # how close the float images come to a rounding boundary (x·255 within 1e-3 of k + 0.5)
            frac = (floats * np.float32(255)) % 1
            near_half = int((np.abs(frac - 0.5) < 1e-3).sum())
            meta.append(dict(
                name=name, pipeline=family, pipeline_class=type(pipe).__name__, scheduler=sched, scheduler_class=type(pipe.scheduler).__name__,
                prompts=prompts, negative_prompts=negative, guidance_scale=guidance,
                num_inference_steps=steps, height=h, width=w, seed=seed, clip_skip=clip_skip,
                timesteps=[float(t) for t in pipe.scheduler.timesteps],
                init_noise_sigma=float(pipe.scheduler.init_noise_sigma),
                latents_abs_max=float(lat.abs().max()),
                fp32_vs_fp64_latents_max_abs=fp32_vs_fp64,
                fp32_vs_fp64_images_max_abs=fp32_vs_fp64_images,
                saturated_fraction=float(((floats == 0) | (floats == 1)).mean()),
                subpixels_near_half=near_half,
            ))
    save_file(tensors, os.path.join(args.out, "expected.safetensors"))
    generator = {p: version(p) for p in ["torch", "diffusers", "transformers", "safetensors", "numpy"]}
    generator["python"] = platform.python_version()
    generator["script"] = "scripts/golden/make_pipeline.py"
    write_json(os.path.join(args.out, "cases.json"), {
        "generator": generator,
        "sd15_scaling_factor": SD15_SCALING_FACTOR,
        "cases": meta,
    })


if __name__ == "__main__":
    main()
