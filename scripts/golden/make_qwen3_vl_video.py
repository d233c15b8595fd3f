"""Video goldens for the tiny Qwen3-VL checkpoints of `fixtures/qwen3_vl` (made by make_qwen3_vl.py, whose
weights this script does not change), and qwen_vl_utils' sampling of video *files* for both Qwen-VL families.

1. Video items on Qwen3-VL, as the UnifiedReward qwen3vl scripts' `{"type": "video", "video": ...}` items reach
   transformers 5.24: `qwen_vl_utils.process_vision_info(messages, return_video_kwargs=True,
   return_video_metadata=True, image_patch_size=16)`, then `Qwen3VLProcessor(..., video_metadata=...,
   do_sample_frames=False)`: each `<|video_pad|>` becomes `<t.t seconds><|vision_start|><|video_pad|>*n
   <|vision_end|>` per temporal patch (t: the mean of the patch's two frame times, `frames_indices / fps`),
   positions from `get_rope_index` (the video grid split into t = 1 pieces), logits of the float64 model.
   Clips given as frame lists (qwen_vl_utils' list branch: fps 2, frames_indices 0..n), and one video *file*.
   Written as `video_item_cases.json` / `expected_video_items.safetensors` (not `video_cases.json`, which the
   ONNX Runtime test runs wherever it finds one; Qwen3-VL video items are not on ONNX Runtime yet).
   The same file on the Qwen2.5-VL checkpoints (`fixtures/qwen2_5_vl/*/video_file_cases.json`: grid, timing,
   pixel hash, completion log-prob).
2. A video file: qwen_vl_utils' decord reader run on a stand-in `decord` module (no codec here) whose
   `VideoReader` serves PNG frames at a stated frame rate, so `_read_video_decord`, `smart_nframes`, the
   torch.linspace sampling, `smart_resize` and the resize are qwen_vl_utils' own code. The Rust test feeds the
   same frames through a stand-in `ffmpeg`.
3. `video_sampling.json` (in fixtures/qwen2_5_vl): `smart_nframes`, the sampled indices and `sample_fps` for
   a grid of (total_frames, fps), and the clip sizes `fetch_video` picks for a file's frames (factors 28, 32).

Also writes each model's `video_preprocessor_config.json` as Qwen/Qwen3-VL-*-Instruct ship it
(size {longest_edge 25165824, shortest_edge 4096}, patch 16, temporal 2, merge 2, mean / std 0.5).

usage: python scripts/golden/make_qwen3_vl_video.py fixtures
"""
import argparse, hashlib, json, os, sys, types
import numpy as np
import torch

# qwen_vl_utils picks its reader at import; the stand-in decord must be in place first.
os.environ["FORCE_QWENVL_VIDEO_READER"] = "decord"
FAKE_VIDEOS = {}  # path -> (frames [n, h, w, 3] uint8, fps)


class _Batch:
    def __init__(self, a):
        self.a = a

    def asnumpy(self):
        return self.a


class _VideoReader:
    def __init__(self, path):
        self.frames, self.fps = FAKE_VIDEOS[path]

    def __len__(self):
        return len(self.frames)

    def get_avg_fps(self):
        return self.fps

    def get_batch(self, idx):
        return _Batch(self.frames[list(idx)])


sys.modules["decord"] = types.SimpleNamespace(VideoReader=_VideoReader)

import torchvision  # noqa: E402
import transformers  # noqa: E402
import PIL  # noqa: E402
import qwen_vl_utils  # noqa: E402
from importlib.metadata import version  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import Qwen3VLForConditionalGeneration, Qwen3VLProcessor, PreTrainedTokenizerFast  # noqa: E402
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor  # noqa: E402
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor  # noqa: E402
from qwen_vl_utils import process_vision_info  # noqa: E402
from qwen_vl_utils.vision_process import smart_nframes, smart_resize, fetch_video  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_qwen2_5_vl import CHAT_TEMPLATE, SPECIALS, LOGIT_COLS, draw_image  # noqa: E402
from make_qwen3_vl import MIN_PIXELS, MAX_PIXELS, HALF, REF_DTYPE, as_ref, sha  # noqa: E402

SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO_SIZE = {"longest_edge": 25165824, "shortest_edge": 4096}
FILE_FPS = 10.0


def file_frames(out, n, w, h, seed):
    """The decoded frames of the stand-in video file: a square crossing a still background."""
    base = draw_image(w, h, seed)
    d = os.path.join(out, "qwen2_5_vl", "media", "file_20f_300x200")
    os.makedirs(d, exist_ok=True)
    paths = []
    for k in range(n):
        im = base.copy()
        side = h // 5
        x = (k * (w - side)) // (n - 1)
        ImageDraw.Draw(im).ellipse([x, h // 2, x + side, h // 2 + side], fill=(20, 200, 250))
        p = os.path.join(d, f"frame_{k:02d}.png")
        im.save(p, optimize=True)
        paths.append(p)
    return paths


def sampling(out):
    cases = []
    for total, fps in [(20, 10.0), (8, 2.0), (5, 2.0), (3, 30.0), (1, 30.0), (150, 30.0), (301, 29.97002997002997),
                       (240, 24000 / 1001), (1000, 25.0), (9000, 30.0), (97, 12.5), (61, 60.0), (7, 1.0)]:
        try:
            n = smart_nframes({}, total_frames=total, video_fps=fps)
        except ValueError:
            cases.append(dict(total_frames=total, video_fps=fps, nframes=None))
            continue
        idx = torch.linspace(0, total - 1, n).round().long().tolist()
        cases.append(dict(total_frames=total, video_fps=fps, nframes=n, indices=idx,
                          sample_fps=n / max(total, 1e-6) * fps))
    sizes = []
    for factor in (28, 32):
        for (h, w, n) in [(200, 300, 4), (360, 640, 8), (1080, 1920, 16), (1080, 1920, 768), (30, 40, 4),
                          (720, 1280, 300), (2160, 3840, 2)]:
            min_pixels = 128 * factor * factor
            total_pixels = 128000 * factor * factor * 0.9
            max_pixels = max(min(768 * factor * factor, total_pixels / n * 2), int(min_pixels * 1.05))
            rh, rw = smart_resize(h, w, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
            sizes.append(dict(factor=factor, height=h, width=w, nframes=n, resized=[rh, rw]))
    path = os.path.join(out, "qwen2_5_vl", "video_sampling.json")
    json.dump(dict(generator=f"qwen-vl-utils {version('qwen-vl-utils')}, torch {torch.__version__}",
                   note="smart_nframes({}, total_frames, video_fps) (fps 2, 4..768 frames); indices = "
                        "torch.linspace(0, total - 1, nframes).round(); sample_fps = nframes / total * video_fps; "
                        "resized: fetch_video's smart_resize of a file's frames (128..768 tokens a frame, "
                        "0.9 * 128000 tokens in all)",
                   cases=cases, sizes=sizes), open(path, "w"), indent=1)
    print("sampling", [(c["total_frames"], c["nframes"]) for c in cases])


def build(out, name, clips, file_path, features):
    mdir = os.path.join(out, "qwen3_vl", name, "model")
    json.dump({"size": VIDEO_SIZE, "patch_size": 16, "temporal_patch_size": 2, "merge_size": 2, "image_mean": HALF,
               "image_std": HALF, "processor_class": "Qwen3VLProcessor",
               "video_processor_type": "Qwen3VLVideoProcessor"},
              open(os.path.join(mdir, "video_preprocessor_config.json"), "w"), indent=1)
    model = Qwen3VLForConditionalGeneration.from_pretrained(mdir, dtype=REF_DTYPE, attn_implementation="eager").eval()
    hf_tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(mdir, "tokenizer.json"), eos_token="<|im_end|>",
                                     pad_token="<|endoftext|>")
    hf_tok.chat_template = CHAT_TEMPLATE
    ip = Qwen2VLImageProcessor(size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}, patch_size=16,
                               temporal_patch_size=2, merge_size=2, image_mean=HALF, image_std=HALF, resample=3)
    vp = Qwen3VLVideoProcessor(size=VIDEO_SIZE, patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=HALF,
                               image_std=HALF)
    proc = Qwen3VLProcessor(image_processor=ip, tokenizer=hf_tok, video_processor=vp, chat_template=CHAT_TEMPLATE)
    media = os.path.join(out, "qwen2_5_vl", "media")
    specs = [
        ("video_8x300x200", [], [clips["clip_300x200"]], "Describe the motion.", "Final Score: 4"),
        ("video_5x640x360", [], [clips["clip_640x360"]], "Is the square yellow?", "Answer 1 is better."),
        ("image_and_video", ["300x200.png"], [clips["clip_300x200"]], "Does the video match the image?",
         "Yes, it does."),
        ("file_20f_10fps", [], [file_path], "Rate the video.", "Final Score: 2"),
    ]
    tensors, cases = {}, []
    with torch.no_grad():
        for cname, images, videos, question, completion in specs:
            content = [{"type": "image", "image": os.path.join(media, i)} for i in images]
            content += [{"type": "video", "video": v} for v in videos]
            content += [{"type": "text", "text": question}]
            imgs, pairs, kwargs = process_vision_info([{"role": "user", "content": content}], return_video_kwargs=True,
                                                      return_video_metadata=True, image_patch_size=16)
            vids = [v for v, _ in pairs]
            metadata = [m for _, m in pairs]
            prompt = SYSTEM + IMAGE * len(images) + VIDEO * len(videos) + question + "<|im_end|>\n<|im_start|>assistant\n"
            kw = dict(videos=vids, video_metadata=metadata, return_tensors="pt", **kwargs)
            if images:
                kw["images"] = [Image.open(os.path.join(media, i)).convert("RGB") for i in images]
            enc = proc(text=[prompt + completion], **kw)
            prompt_len = len(proc(text=[prompt], **kw)["input_ids"][0])
            ids = enc["input_ids"][0]
            logits = model(**as_ref(enc)).logits[0]
            rows_logits = logits[prompt_len - 1:-1].double()
            logp = torch.log_softmax(rows_logits, -1).gather(-1, ids[prompt_len:, None])[:, 0]
            grid = enc["video_grid_thw"]
            pos, _ = model.model.get_rope_index(enc["input_ids"], enc["mm_token_type_ids"],
                                                image_grid_thw=enc.get("image_grid_thw"), video_grid_thw=grid)
            pix = enc["pixel_values_videos"]
            assert pix.dtype == torch.float32
            sizes = grid.prod(-1).tolist()
            at, hashes = 0, []
            for i, s in enumerate(sizes):
                part = pix[at:at + s]
                hashes.append(sha(part))
                tensors[f"{cname}.pixel_values_head{i}"] = part[:4].clone().contiguous()
                at += s
            if features and cname == "video_8x300x200":
                vis = model.model.get_video_features(as_ref(enc)["pixel_values_videos"], grid)
                tensors[f"{cname}.video_features0"] = vis.pooler_output[0].float().contiguous()
                for j, level in enumerate(vis.deepstack_features):
                    tensors[f"{cname}.deepstack{j}_features0"] = level[0].float().contiguous()
            tensors[f"{cname}.input_ids"] = ids.to(torch.int64).contiguous()
            tensors[f"{cname}.video_grid_thw"] = grid.to(torch.int64).contiguous()
            tensors[f"{cname}.position_ids"] = pos[:, 0].to(torch.int64).contiguous()
            tensors[f"{cname}.logits_cols"] = rows_logits[:, :LOGIT_COLS].float().contiguous()
            rel = lambda p: os.path.relpath(p, media)  # noqa: E731
            cases.append(dict(name=cname, prompt=prompt, completion=completion, images=images,
                              videos=[[rel(p) for p in v] if isinstance(v, list) else rel(v) for v in videos],
                              frames_indices=[[int(i) for i in m["frames_indices"]] for m in metadata],
                              fps=[float(m["fps"]) for m in metadata], prompt_len=prompt_len, seq_len=len(ids),
                              completion_logprob=float(logp.sum()), pixel_values_sha256=hashes,
                              num_video_tokens=int((ids == SPECIALS["<|video_pad|>"]).sum())))
    gen = (f"transformers {transformers.__version__}, torch {torch.__version__}, torchvision "
           f"{torchvision.__version__}, qwen-vl-utils {version('qwen-vl-utils')}, pillow {PIL.__version__}, numpy "
           f"{np.__version__}, {str(REF_DTYPE).split('.')[-1]} from bf16 weights, eager attention")
    gdir = os.path.join(out, "qwen3_vl", name)
    save_file(tensors, os.path.join(gdir, "expected_video_items.safetensors"))
    json.dump(dict(generator=gen, media="../../qwen2_5_vl/media", file_video=dict(
        frames="file_20f_300x200", fps=FILE_FPS, note="decoded frames of the stand-in video file"), cases=cases),
        open(os.path.join(gdir, "video_item_cases.json"), "w"), indent=1)
    print(name, [(c["name"], c["num_video_tokens"], c["completion_logprob"]) for c in cases])


def build_qwen2_5(out, name, file_path):
    """The video file on a Qwen2.5-VL checkpoint, as the `inference_qwen` scripts would send it
    (`process_vision_info(..., return_video_kwargs=True)`), with the metadata that makes
    transformers 5 time it from `sampled_fps` (2 / sample_fps per temporal patch)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from make_qwen2_5_vl import CLIP_MEAN, CLIP_STD, MIN_PIXELS as MIN25, MAX_PIXELS as MAX25
    from make_qwen2_5_vl import as_ref as as_ref25, REF_DTYPE as REF25
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
    mdir = os.path.join(out, "qwen2_5_vl", name, "model")
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(mdir, dtype=torch.float32,
                                                               attn_implementation="eager").eval().to(REF25)
    hf_tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(mdir, "tokenizer.json"), eos_token="<|im_end|>",
                                     pad_token="<|endoftext|>")
    ip = Qwen2VLImageProcessorPil(min_pixels=MIN25, max_pixels=MAX25, patch_size=14, temporal_patch_size=2,
                                  merge_size=2, image_mean=CLIP_MEAN, image_std=CLIP_STD, resample=3)
    vp = Qwen2VLVideoProcessor(image_mean=CLIP_MEAN, image_std=CLIP_STD)
    proc = Qwen2_5_VLProcessor(image_processor=ip, tokenizer=hf_tok, video_processor=vp, chat_template=CHAT_TEMPLATE)
    question, completion = "Rate the video.", "Final Score: 2"
    content = [{"type": "video", "video": file_path}, {"type": "text", "text": question}]
    _, pairs, _ = process_vision_info([{"role": "user", "content": content}], return_video_kwargs=True,
                                      return_video_metadata=True)
    prompt = SYSTEM + VIDEO + question + "<|im_end|>\n<|im_start|>assistant\n"
    kw = dict(videos=[pairs[0][0]], video_metadata=[pairs[0][1]], do_sample_frames=False, return_tensors="pt",
              cap_pixels_per_frame=True)
    with torch.no_grad():
        enc = proc(text=[prompt + completion], **kw)
        prompt_len = len(proc(text=[prompt], **kw)["input_ids"][0])
        ids = enc["input_ids"][0]
        logits = model(**as_ref25(enc)).logits[0]
        logp = torch.log_softmax(logits[prompt_len - 1:-1].double(), -1).gather(-1, ids[prompt_len:, None])[:, 0]
    case = dict(name="file_20f_10fps", prompt=prompt, completion=completion, video="file_20f_300x200.mp4",
                frames_indices=[int(i) for i in pairs[0][1]["frames_indices"]],
                second_per_grid_ts=[float(x) for x in enc["second_per_grid_ts"]],
                video_grid_thw=enc["video_grid_thw"][0].tolist(), pixel_values_sha256=sha(enc["pixel_values_videos"]),
                prompt_len=prompt_len, seq_len=len(ids), completion_logprob=float(logp.sum()))
    gen = (f"transformers {transformers.__version__}, torch {torch.__version__}, torchvision "
           f"{torchvision.__version__}, qwen-vl-utils {version('qwen-vl-utils')}, float64 from bf16 weights")
    json.dump(dict(generator=gen, file_video=dict(frames="file_20f_300x200", fps=FILE_FPS), cases=[case]),
              open(os.path.join(out, "qwen2_5_vl", name, "video_file_cases.json"), "w"), indent=1)
    print(name, case["video_grid_thw"], case["second_per_grid_ts"], case["completion_logprob"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", help="the fixtures directory")
    ap.add_argument("--seed", type=int, default=9)
    a = ap.parse_args()
    media = os.path.join(a.out, "qwen2_5_vl", "media")
    clips = {k: sorted(os.path.join(media, k, f) for f in os.listdir(os.path.join(media, k)))
             for k in ["clip_300x200", "clip_640x360"]}
    paths = file_frames(a.out, 20, 300, 200, a.seed)
    file_path = os.path.join(media, "file_20f_300x200.mp4")
    FAKE_VIDEOS[file_path] = (np.stack([np.array(Image.open(p).convert("RGB")) for p in paths]), FILE_FPS)
    sampling(a.out)
    build(a.out, "qwen3_vl_4b", clips, file_path, True)
    build(a.out, "qwen3_vl_8b", clips, file_path, False)
    for name in ["qwen2_5_vl_3b", "qwen2_5_vl_7b"]:
        build_qwen2_5(a.out, name, file_path)


if __name__ == "__main__":
    main()
