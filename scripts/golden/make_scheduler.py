"""Goldens for diffusers' noise schedules and samplers (`models/src/diffusion/scheduler.rs`).

usage: python scripts/golden/make_scheduler.py fixtures/diffusion/scheduler
Needs: torch, diffusers, numpy, safetensors. Versions used are written into `cases.json`
("generator"). CPU only, no downloads: the configs are the `scheduler/scheduler_config.json`
files the hub's pipelines ship, written out here (`configs/*.json`). Re-running it reproduces
these files byte for byte (with the same versions; torch's vectorised kernels are chosen by
the CPU, which `cases.json` records as `cpu_capability`).

What is stored (`expected.safetensors`, names listed in `cases.json`):
  schedule.<key>.betas / .alphas_cumprod  DDPMScheduler.from_config(cfg): the training side
                                          (configs with equal betas share a key: `schedules`)
  sampler_ac.<case>                       the sampler's alphas_cumprod where it differs
                                          (Euler's zero-SNR 2**-24)
  spacing.<family>.<spacing>              timesteps for n = 1..50, 100, 333, 999 concatenated
  <case>.n<n>.timesteps / .sigmas         after set_timesteps(n); init_noise_sigma in cases.json
  <case>.n<n>.traj                        n <= 4: [n_steps, *LATENT], every prev_sample of a run
  <case>.n<n>.final                       n > 4: the last prev_sample
  noise.*                                 add_noise / get_velocity inputs and outputs
  prng.*                                  the documented Gaussian source (below), ported here
  model_c                                 the synthetic model's constant tensor

The synthetic model: eps(x_in, t) = 0.1 * x_in + model_c * (t / 1000 + 0.5), with x_in =
scheduler.scale_model_input(x, t); x_T = prng(LATENT, seed 7) * init_noise_sigma; the noise of
step k (EulerAncestral, DDPM) is prng(LATENT, seed 1000 + k). So the trajectories use only
stored or documented inputs, and the Rust test regenerates the noise with its own `gaussian`.

PRNG (must match `gaussian` in scheduler.rs bit for bit): SplitMix64 from state = seed; each
pair of outputs (a, b): u1 = ((a >> 11) + 1) * 2**-53 in (0, 1], u2 = (b >> 11) * 2**-53 in
[0, 1); r = sqrt(-2 ln u1); z0 = r cos(2 pi u2), z1 = r sin(2 pi u2) in float64, stored in
row-major order as float32 (the last z1 dropped for an odd count).
"""
import argparse, json, math, os, platform, sys
import numpy as np
import torch
import diffusers
import safetensors
from safetensors.torch import save_file
from diffusers import (DDPMScheduler, DDIMScheduler, EulerDiscreteScheduler,
                       EulerAncestralDiscreteScheduler, PNDMScheduler)

CLASSES = {c.__name__: c for c in [DDPMScheduler, DDIMScheduler, EulerDiscreteScheduler,
                                   EulerAncestralDiscreteScheduler, PNDMScheduler]}
LATENT = (2, 4, 4, 4)
INIT_SEED = 7
NOISE_SEED = 1000
STEPS = [1, 4, 25, 50]
SPACING_NS = list(range(1, 51)) + [100, 333, 999]

SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)

# As the hub ships them (keys, order and all), plus variants with no hub file of their own.
CONFIGS = {
    # runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json
    "sd15": {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
             "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
             "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
             "trained_betas": None, "clip_sample": False},
    # stabilityai/stable-diffusion-xl-base-1.0
    "sdxl": {"_class_name": "EulerDiscreteScheduler", "_diffusers_version": "0.19.0.dev0",
             "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
             "clip_sample": False, "interpolation_type": "linear", "num_train_timesteps": 1000,
             "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": False,
             "skip_prk_steps": True, "steps_offset": 1, "timestep_spacing": "leading",
             "trained_betas": None, "use_karras_sigmas": False},
    # stabilityai/sdxl-turbo
    "sdxl_turbo": {"_class_name": "EulerAncestralDiscreteScheduler", "_diffusers_version": "0.24.0.dev0",
                   "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                   "clip_sample": False, "interpolation_type": "linear", "num_train_timesteps": 1000,
                   "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": False,
                   "skip_prk_steps": True, "steps_offset": 1, "timestep_spacing": "trailing",
                   "trained_betas": None, "use_karras_sigmas": False},
    # stabilityai/stable-diffusion-2-1 (768 px, v-prediction)
    "sd21_v": {"_class_name": "DDIMScheduler", "_diffusers_version": "0.8.0", "beta_end": 0.012,
               "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
               "num_train_timesteps": 1000, "prediction_type": "v_prediction", "set_alpha_to_one": False,
               "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None},
    # "Common Diffusion Noise Schedules and Sample Steps are Flawed": zero terminal SNR, trailing
    "zero_snr_v": {"_class_name": "DDIMScheduler", **SD_BETAS, "clip_sample": False,
                   "prediction_type": "v_prediction", "rescale_betas_zero_snr": True,
                   "set_alpha_to_one": False, "steps_offset": 1, "timestep_spacing": "trailing"},
    # google/ddpm-cifar10-32 style: linear betas, clipping, fixed_small
    "ddpm_linear": {"_class_name": "DDPMScheduler", "beta_end": 0.02, "beta_schedule": "linear",
                    "beta_start": 0.0001, "clip_sample": True, "num_train_timesteps": 1000,
                    "trained_betas": None, "variance_type": "fixed_small"},
    # cosine (squaredcos_cap_v2), linspace spacing
    "cosine": {"_class_name": "DDPMScheduler", "beta_schedule": "squaredcos_cap_v2", "clip_sample": False,
               "num_train_timesteps": 1000, "prediction_type": "epsilon", "timestep_spacing": "linspace",
               "variance_type": "fixed_small"},
    # PNDM with its Runge-Kutta warm-up (PNDMScheduler's defaults)
    "pndm_prk": {"_class_name": "PNDMScheduler", **SD_BETAS, "skip_prk_steps": False,
                 "set_alpha_to_one": False, "steps_offset": 1},
    # Euler's other sigma options
    "euler_loglinear": {"_class_name": "EulerDiscreteScheduler", **SD_BETAS,
                        "interpolation_type": "log_linear", "final_sigmas_type": "sigma_min",
                        "timestep_spacing": "linspace", "steps_offset": 0},
}

# (case, config, class used: None = the config's own), the n's run
CASES = [
    ("sd15_pndm", "sd15", None, STEPS),
    ("sd15_ddim", "sd15", "DDIMScheduler", STEPS),
    ("sd15_euler", "sd15", "EulerDiscreteScheduler", STEPS),
    ("sdxl_euler", "sdxl", None, STEPS),
    ("sdxl_euler_a", "sdxl", "EulerAncestralDiscreteScheduler", STEPS),
    ("sdxl_turbo", "sdxl_turbo", None, [1, 2, 3, 4, 25, 50]),
    ("sd21_v_ddim", "sd21_v", None, STEPS),
    ("sd21_v_euler", "sd21_v", "EulerDiscreteScheduler", STEPS),
    ("sd21_v_euler_a", "sd21_v", "EulerAncestralDiscreteScheduler", STEPS),
    ("zero_snr_v_ddim", "zero_snr_v", None, STEPS),
    ("zero_snr_v_euler", "zero_snr_v", "EulerDiscreteScheduler", STEPS),
    ("ddpm_linear", "ddpm_linear", None, STEPS),
    ("ddpm_linear_ddim", "ddpm_linear", "DDIMScheduler", STEPS),
    ("cosine_ddpm", "cosine", None, STEPS),
    ("cosine_ddim", "cosine", "DDIMScheduler", STEPS),
    ("pndm_prk", "pndm_prk", None, [4, 25]),
    ("euler_loglinear", "euler_loglinear", None, STEPS),
]

MASK64 = (1 << 64) - 1


def gaussian(shape, seed):
    """The documented source (see the module docstring), in plain Python."""
    count = int(np.prod(shape))
    state = seed & MASK64

    def nxt():
        nonlocal state
        state = (state + 0x9E3779B97F4A7C15) & MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    out = []
    while len(out) < count:
        u1 = ((nxt() >> 11) + 1) * 2.0 ** -53
        u2 = (nxt() >> 11) * 2.0 ** -53
        r = math.sqrt(-2.0 * math.log(u1))
        out.append(r * math.cos(2.0 * math.pi * u2))
        out.append(r * math.sin(2.0 * math.pi * u2))
    return torch.tensor(np.array(out[:count], dtype=np.float32).reshape(shape))


def make(config, cls_name=None):
    cls = CLASSES[cls_name or config["_class_name"]]
    return cls.from_config(config)


def model(x_in, t, c):
    return 0.1 * x_in + c * (float(t) / 1000.0 + 0.5)


def run(sched, n, c):
    sched.set_timesteps(n)
    x = gaussian(LATENT, INIT_SEED) * sched.init_noise_sigma
    traj = []
    for k, t in enumerate(sched.timesteps):
        x_in = sched.scale_model_input(x, t)
        out = model(x_in, t, c)
        # diffusers draws step noise with randn_tensor: it gets this tensor instead.
        NEXT_NOISE[:] = [gaussian(LATENT, NOISE_SEED + k)]
        x = sched.step(out, t, x).prev_sample
        traj.append(x.clone())
    return torch.stack(traj) if traj else torch.zeros((0, *LATENT))


NEXT_NOISE = []


def patch_randn():
    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        fixed = NEXT_NOISE.pop()
        assert tuple(shape) == tuple(fixed.shape), (shape, fixed.shape)
        return fixed.to(dtype=dtype)

    import diffusers.schedulers.scheduling_euler_ancestral_discrete as ea
    import diffusers.schedulers.scheduling_ddpm as dd
    ea.randn_tensor = randn_tensor
    dd.randn_tensor = randn_tensor


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    args = ap.parse_args()
    torch.set_num_threads(1)
    patch_randn()
    os.makedirs(os.path.join(args.out, "configs"), exist_ok=True)
    for name, cfg in CONFIGS.items():
        with open(os.path.join(args.out, "configs", f"{name}.json"), "w") as f:
            json.dump(cfg, f, indent=2)
            f.write("\n")

    tensors = {}
    g = torch.Generator().manual_seed(1234)
    c = torch.randn(LATENT, generator=g)
    tensors["model_c"] = c

    # Training side: DDPMScheduler.from_config, as Diffusion-DPO's train script loads it.
    # Configs with the same betas share one stored copy (`schedules` maps config -> key).
    schedules = {}
    for name, cfg in CONFIGS.items():
        s = DDPMScheduler.from_config(cfg)
        key = next((k for k in schedules.values()
                    if torch.equal(tensors[f"schedule.{k}.betas"], s.betas)), name)
        schedules[name] = key
        if key == name:
            tensors[f"schedule.{name}.betas"] = s.betas.clone()
            tensors[f"schedule.{name}.alphas_cumprod"] = s.alphas_cumprod.clone()

    # Timestep spacing tables.
    spacing = {}
    # (Euler's leading and trailing timesteps are DDIM's as floats; only linspace differs.)
    for family, cls, sp in [("ddim", DDIMScheduler, "leading"), ("ddim", DDIMScheduler, "trailing"),
                            ("ddim", DDIMScheduler, "linspace"), ("euler", EulerDiscreteScheduler, "linspace")]:
        if True:
            kw = dict(SD_BETAS, timestep_spacing=sp, steps_offset=1 if sp == "leading" else 0)
            s = cls(**kw)
            parts = []
            for n in SPACING_NS:
                s.set_timesteps(n)
                parts.append(s.timesteps.to(torch.float32))
            tensors[f"spacing.{family}.{sp}"] = torch.cat(parts)
            spacing[f"{family}.{sp}"] = dict(steps_offset=kw["steps_offset"])

    # Samplers.
    cases = []
    for case, cfg_name, cls_name, ns in CASES:
        cfg = CONFIGS[cfg_name]
        s = make(cfg, cls_name)
        entry = dict(name=case, config=cfg_name, class_name=type(s).__name__, runs=[])
        if isinstance(s, (EulerDiscreteScheduler, EulerAncestralDiscreteScheduler)):
            if not torch.equal(s.alphas_cumprod, tensors[f"schedule.{schedules[cfg_name]}.alphas_cumprod"]):
                tensors[f"sampler_ac.{case}"] = s.alphas_cumprod.clone()
        for n in ns:
            s = make(cfg, cls_name)
            s.set_timesteps(n)
            run_entry = dict(n=n, steps=len(s.timesteps), init_noise_sigma=float(s.init_noise_sigma))
            tensors[f"{case}.n{n}.timesteps"] = s.timesteps.to(torch.float32).clone()
            if hasattr(s, "sigmas"):
                tensors[f"{case}.n{n}.sigmas"] = s.sigmas.to(torch.float32).clone()
            s = make(cfg, cls_name)
            traj = run(s, n, c)
            if n <= 4:
                tensors[f"{case}.n{n}.traj"] = traj
            else:
                tensors[f"{case}.n{n}.final"] = traj[-1]
            entry["runs"].append(run_entry)
        cases.append(entry)

    # add_noise / get_velocity, 4-D and 5-D, float32 and bfloat16.
    noise_cases = []
    for name, cfg_name, shape, ts, dtype in [
        ("sd15_4d", "sd15", (3, 4, 5, 6), [0, 499, 999], torch.float32),
        ("sd15_5d", "sd15", (2, 4, 3, 4, 4), [249, 999], torch.float32),
        ("sd15_bf16", "sd15", (3, 4, 5, 6), [1, 500, 998], torch.bfloat16),
        ("zero_snr_4d", "zero_snr_v", (2, 4, 3, 3), [999, 0], torch.float32),
        ("linear_4d", "ddpm_linear", (4, 3, 2, 2), [0, 10, 100, 999], torch.float32),
        ("cosine_2d", "cosine", (3, 7), [5, 500, 995], torch.float32),
    ]:
        s = DDPMScheduler.from_config(CONFIGS[cfg_name])
        x0 = torch.randn(shape, generator=g).to(dtype)
        eps = torch.randn(shape, generator=g).to(dtype)
        t = torch.tensor(ts, dtype=torch.int64)
        tensors[f"noise.{name}.x0"] = x0
        tensors[f"noise.{name}.noise"] = eps
        tensors[f"noise.{name}.timesteps"] = t
        tensors[f"noise.{name}.x_t"] = s.add_noise(x0, eps, t)
        tensors[f"noise.{name}.velocity"] = s.get_velocity(x0, eps, t)
        noise_cases.append(dict(name=name, config=cfg_name, dtype=str(dtype).split(".")[-1]))

    # The Gaussian source.
    prng = []
    for shape, seed in [((64,), 0), ((7,), 1), ((2, 3, 5), 42), ((1,), 2**64 - 1), (LATENT, INIT_SEED)]:
        key = f"prng.seed{seed}"
        tensors[key] = gaussian(shape, seed)
        prng.append(dict(name=key, seed=seed, shape=list(shape)))

    gen = (f"diffusers {diffusers.__version__}, torch {torch.__version__}, numpy {np.__version__}, "
           f"safetensors {safetensors.__version__}, python {platform.python_version()}, CPU")
    meta = dict(generator=gen, cpu_capability=torch.backends.cpu.get_cpu_capability(),
                latent=list(LATENT), schedules=schedules, init_seed=INIT_SEED, noise_seed=NOISE_SEED,
                spacing_ns=SPACING_NS, spacing=spacing, cases=cases, noise_cases=noise_cases, prng=prng)
    with open(os.path.join(args.out, "cases.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")
    tensors = {k: v.contiguous() for k, v in sorted(tensors.items())}
    save_file(tensors, os.path.join(args.out, "expected.safetensors"))


if __name__ == "__main__":
    main()
