"""Goldens for `models/src/diffusion/train_image.rs`: DiffusionDPO train.py's image transform
(`transforms.Resize(res, BILINEAR)`, `CenterCrop(res)`, `ToTensor()`, `Normalize([0.5], [0.5])`
on `Image.open(...).convert("RGB")`) on images of real aspect ratios, one with alpha.

usage: python scripts/golden/make_train_image.py fixtures/diffusion/train_image
"""
import argparse, json, os
from importlib.metadata import version
import numpy as np
import torch
from PIL import Image
from torchvision import transforms
from safetensors.torch import save_file


def picture(w, h, alpha, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)),
                    ((x + y) % 64) * 4], axis=-1).astype(np.int32)
    img = np.clip(img + rng.integers(-20, 21, img.shape), 0, 255).astype(np.uint8)
    if alpha:
        a = (rng.integers(0, 256, (h, w, 1))).astype(np.uint8)
        return Image.fromarray(np.concatenate([img, a], axis=-1), "RGBA")
    return Image.fromarray(img, "RGB")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    cases, tensors = [], {}
    for name, w, h, alpha, res in [("landscape_300x200", 300, 200, False, 64),
                                   ("portrait_rgba_203x333", 203, 333, True, 48),
                                   ("square_96", 96, 96, False, 96)]:
        path = f"{name}.png"
        picture(w, h, alpha, len(cases)).save(os.path.join(args.out, path))
        image = Image.open(os.path.join(args.out, path)).convert("RGB")
        t = transforms.Compose([transforms.Resize(res, interpolation=transforms.InterpolationMode.BILINEAR),
                                transforms.CenterCrop(res), transforms.ToTensor(),
                                transforms.Normalize([0.5], [0.5])])(image)
        tensors[name] = t.contiguous()
        tensors[name + ".flipped"] = transforms.functional.hflip(t).contiguous()
        cases.append({"name": name, "file": path, "resolution": res})
    save_file(tensors, os.path.join(args.out, "expected.safetensors"))
    gen = {"script": "scripts/golden/make_train_image.py",
           "versions": {p: version(p) for p in ["torch", "torchvision", "pillow", "numpy"]}}
    with open(os.path.join(args.out, "cases.json"), "w") as f:
        json.dump({"generator": gen, "cases": cases}, f, indent=2)


if __name__ == "__main__":
    main()
