"""Video goldens for the tiny Qwen2.5-VL checkpoints of `fixtures/qwen2_5_vl` (made by
make_qwen2_5_vl.py, which this script does not change): videos given as lists of frame files, the
way UnifiedReward's `inference_qwen` scripts pass them through `qwen_vl_utils.process_vision_info`
(`{"type": "video", "video": [frames]}`), then `Qwen2_5_VLProcessor` and the model.

What the reference does to such a video (qwen_vl_utils 0.0.14 `fetch_video`, list branch):
each frame through `fetch_image`, which the list branch calls with the 28 px factor where
fetch_image takes the patch size, so frames are sized to multiples of 56 px within 4..16384 of
those (12544..51380224 pixels) with Pillow bicubic, the frame count padded to even with the last frame, then the whole clip through
`smart_resize` within 128..768 tokens a frame (and the total-pixel share) and torchvision's
antialiased bicubic resize of the uint8 frames; fps 2 (`sample_fps`), so `second_per_grid_ts` is
2 / 2 = 1 s and the M-RoPE time step 1 * tokens_per_second = 2. The video processor then
normalises (its own resize is a no-op on frames already sized so) and patchifies.

usage: python scripts/golden/make_qwen2_5_vl_video.py fixtures/qwen2_5_vl
Needs what make_qwen2_5_vl.py needs, and torchvision and qwen-vl-utils.
"""
import argparse, hashlib, json, os, sys
import numpy as np
import torch
import torchvision
import transformers
import PIL
import qwen_vl_utils
from importlib.metadata import version
from PIL import Image, ImageDraw
from safetensors.torch import save_file
from transformers import Qwen2_5_VLForConditionalGeneration, PreTrainedTokenizerFast, Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
from qwen_vl_utils import process_vision_info

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_qwen2_5_vl import (CHAT_TEMPLATE, CLIP_MEAN, CLIP_STD, LOGIT_COLS, MAX_PIXELS, MIN_PIXELS, REF_DTYPE,
                             SPECIALS, as_ref, draw_image)

SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"


def frames(out, name, n, w, h, seed):
    """A clip of n frames: a still background with a square moving across it."""
    base = draw_image(w, h, seed)
    d = os.path.join(out, "media", name)
    os.makedirs(d, exist_ok=True)
    paths = []
    for k in range(n):
        im = base.copy()
        side = max(6, h // 4)
        x = (k * (w - side)) // max(1, n - 1)
        ImageDraw.Draw(im).rectangle([x, h // 3, x + side, h // 3 + side], fill=(250, 240, 20))
        p = os.path.join(d, f"frame_{k:02d}.png")
        im.save(p, optimize=True)
        paths.append(p)
    return paths


def build(out, name, clips):
    mdir = os.path.join(out, name, "model")
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(mdir, dtype=torch.float32,
                                                               attn_implementation="eager").eval().to(REF_DTYPE)
    hf_tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(mdir, "tokenizer.json"), eos_token="<|im_end|>",
                                     pad_token="<|endoftext|>")
    hf_tok.chat_template = CHAT_TEMPLATE
    ip = Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, patch_size=14, temporal_patch_size=2,
                                  merge_size=2, image_mean=CLIP_MEAN, image_std=CLIP_STD, resample=3)
    vp = Qwen2VLVideoProcessor(image_mean=CLIP_MEAN, image_std=CLIP_STD)
    proc = Qwen2_5_VLProcessor(image_processor=ip, tokenizer=hf_tok, video_processor=vp, chat_template=CHAT_TEMPLATE)
    specs = [
        ("video_8x300x200", ["clip_300x200"], "Describe the motion.", "Final Score: 4"),
        ("video_5x640x360", ["clip_640x360"], "Is the square yellow?", "Answer 1 is better."),
        ("pair_videos", ["clip_300x200", "clip_640x360"], "Which video is smoother?", "Video 2 is better."),
    ]
    tensors, cases = {}, []
    with torch.no_grad():
        for cname, keys, question, completion in specs:
            content = [{"type": "video", "video": clips[k]} for k in keys] + [{"type": "text", "text": question}]
            messages = [{"role": "user", "content": content}]
            # The metadata (fps 2, every frame kept) makes transformers 5 time the grid as the
            # scripts' transformers (4.49-4.51) did from `fps`: second_per_grid_ts = 2 / 2 = 1 s.
            # Without it 5.24 assumes 24 fps and every temporal position rounds to 0.
            _, pairs, _ = process_vision_info(messages, return_video_kwargs=True, return_video_metadata=True)
            videos = [v for v, _ in pairs]
            metadata = [m for _, m in pairs]
            prompt = SYSTEM + VIDEO * len(keys) + question + "<|im_end|>\n<|im_start|>assistant\n"
            kw = dict(videos=videos, video_metadata=metadata, do_sample_frames=False, return_tensors="pt",
                      cap_pixels_per_frame=True)
            enc = proc(text=[prompt + completion], **kw)
            prompt_len = len(proc(text=[prompt], **kw)["input_ids"][0])
            ids = enc["input_ids"][0]
            logits = model(**as_ref(enc)).logits[0]
            rows_logits = logits[prompt_len - 1:-1].double()
            logp = torch.log_softmax(rows_logits, -1).gather(-1, ids[prompt_len:, None])[:, 0]
            grid = enc["video_grid_thw"]
            sec = torch.tensor(enc["second_per_grid_ts"], dtype=torch.float64)
            pos, _ = model.model.get_rope_index(enc["input_ids"], enc["mm_token_type_ids"], video_grid_thw=grid,
                                                second_per_grid_ts=sec)
            pix = enc["pixel_values_videos"]
            assert pix.dtype == torch.float32
            sizes = grid.prod(-1).tolist()
            at, hashes = 0, []
            for i, s in enumerate(sizes):
                part = pix[at:at + s].contiguous()
                hashes.append(hashlib.sha256(part.numpy().astype("<f4").tobytes()).hexdigest())
                tensors[f"{cname}.pixel_values_head{i}"] = part[:4].clone()
                at += s
            tensors[f"{cname}.input_ids"] = ids.to(torch.int64).contiguous()
            tensors[f"{cname}.video_grid_thw"] = grid.to(torch.int64).contiguous()
            tensors[f"{cname}.position_ids"] = pos[:, 0].to(torch.int64).contiguous()
            tensors[f"{cname}.logits_cols"] = rows_logits[:, :LOGIT_COLS].float().contiguous()
            cases.append(dict(name=cname, prompt=prompt, completion=completion,
                              videos=[[os.path.relpath(p, os.path.join(out, "media")) for p in clips[k]] for k in keys],
                              second_per_grid_ts=[float(x) for x in sec], prompt_len=prompt_len, seq_len=len(ids),
                              completion_logprob=float(logp.sum()), pixel_values_sha256=hashes,
                              num_video_tokens=int((ids == SPECIALS["<|video_pad|>"]).sum())))
    gen = (f"transformers {transformers.__version__}, torch {torch.__version__}, torchvision "
           f"{torchvision.__version__}, qwen-vl-utils {version('qwen-vl-utils')}, pillow {PIL.__version__}, numpy "
           f"{np.__version__}, {str(REF_DTYPE).split('.')[-1]} from bf16 weights, eager attention")
    gdir = os.path.join(out, name)
    save_file(tensors, os.path.join(gdir, "expected_video.safetensors"))
    json.dump(dict(generator=gen, media="../media", cases=cases), open(os.path.join(gdir, "video_cases.json"), "w"),
              indent=1)
    print(name, [(c["name"], c["num_video_tokens"], c["completion_logprob"]) for c in cases])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=5)
    a = ap.parse_args()
    clips = {"clip_300x200": frames(a.out, "clip_300x200", 8, 300, 200, a.seed * 100 + 7),
             "clip_640x360": frames(a.out, "clip_640x360", 5, 640, 360, a.seed * 100 + 8)}
    for name in ["qwen2_5_vl_3b", "qwen2_5_vl_7b"]:
        build(a.out, name, clips)


if __name__ == "__main__":
    main()
