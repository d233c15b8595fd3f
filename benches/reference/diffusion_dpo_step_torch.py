"""The step of bench-diffusion-dpo-step in PyTorch eager: diffusers' UNet2DConditionModel from
DIR/unet, a frozen deep copy as the reference, the inputs of DIR/inputs.safetensors, the loss as
SalesforceAIResearch/DiffusionDPO train.py computes it, backward, torch.optim.AdamW.
Prints one line in the bench's format."""
import argparse, copy, statistics, time
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel, DDPMScheduler
from safetensors.torch import load_file

ap = argparse.ArgumentParser()
ap.add_argument("--dir", required=True)
ap.add_argument("--iters", type=int, default=3)
ap.add_argument("--warmup", type=int, default=1)
args = ap.parse_args()

unet = UNet2DConditionModel.from_pretrained(f"{args.dir}/unet", torch_dtype=torch.float32)
unet.set_attn_processor(__import__("diffusers.models.attention_processor", fromlist=["AttnProcessor"]).AttnProcessor())
unet.train()
ref = copy.deepcopy(unet).eval().requires_grad_(False)
opt = torch.optim.AdamW(unet.parameters(), lr=1e-5, weight_decay=0.0)
x = load_file(f"{args.dir}/inputs.safetensors")
sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
t = x["timesteps"].long()
noisy = sched.add_noise(x["latents"], x["noise"], t)
beta = 5000.0


def step():
    opt.zero_grad()
    pred = unet(noisy, t, encoder_hidden_states=x["context"]).sample
    model_losses = (pred - x["noise"]).pow(2).mean(dim=[1, 2, 3])
    mw, ml = model_losses.chunk(2)
    with torch.no_grad():
        rp = ref(noisy, t, encoder_hidden_states=x["context"]).sample
        rl = (rp - x["noise"]).pow(2).mean(dim=[1, 2, 3])
        rw, rl_ = rl.chunk(2)
    inside = -0.5 * beta * ((mw - ml) - (rw - rl_))
    loss = -F.logsigmoid(inside).mean()
    loss.backward()
    opt.step()
    return loss.item()


for _ in range(args.warmup):
    step()
times = []
for _ in range(max(args.iters, 1)):
    t0 = time.perf_counter()
    c = step()
    times.append(time.perf_counter() - t0)
times.sort()
print(f"{'torch eager':<14} median {times[len(times) // 2]:.3f} s  min {times[0]:.3f} s  max {times[-1]:.3f} s  "
      f"({len(times)} runs; checksum {c:.3f}; torch {torch.__version__}, {torch.get_num_threads()} threads)")
