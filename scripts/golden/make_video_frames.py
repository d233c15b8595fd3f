"""Golden pixel values for video frames as the UnifiedReward LLaVA scripts feed them.

The reference (github.com/CodeGoat24/UnifiedReward, commit 5c3c8a2a97dd33ab0fd3fa05df1ee3a38f25905a,
`inference/video_generation/pair_rank_video_generation.py` and its siblings) loads a video with
`llava.mm_utils.opencv_extract_frames` (frame indices `np.linspace(0, n - 1, 8, dtype=int)`),
calls `img.resize((512, 512))` on each frame (a no-op: Pillow returns a new image and the script
drops it), and runs the vision tower's `SigLipImageProcessor` on the frames as plain images.

This script makes a deterministic 12-frame 640x360 video, writes its frames as PNG files (the
Rust test reads them as a frame directory), samples them as `get_frame_from_vcap` does and runs
the reference's `SigLipImageProcessor` (copied verbatim below) at the golden checkpoint's 32 px
tile size, with the checkpoint's mean/std/resample (the same as the class's defaults).

    /work/torchenv/bin/python scripts/golden/make_video_frames.py fixtures/video_reference

Outputs: frames/frame_XX.png, pixel_values.safetensors (`pixel_values` [8, 3, 32, 32] f32, before
the scripts' cast to bfloat16), meta.json (indices, sizes, library versions).
"""

import json
import sys
from functools import partial, reduce
from pathlib import Path
from typing import Dict

import numpy as np
import PIL
import safetensors
import transformers
from PIL import Image
from safetensors.numpy import save_file
from transformers.image_processing_utils import BatchFeature, get_size_dict
from transformers.image_transforms import (
    convert_to_rgb,
    normalize,
    rescale,
    resize,
    to_channel_dimension_format,
)
from transformers.image_utils import ChannelDimension, PILImageResampling, to_numpy_array

NUM_VIDEO_FRAMES = 8  # the scripts' num_video_frames
FRAME_COUNT = 12
WIDTH, HEIGHT = 640, 360
TILE = 32  # fixtures/golden/llava_ov_tiny/model/processor_config.json: size 32


# Verbatim from llava/model/multimodal_encoder/siglip_encoder.py of the reference.
class SigLipImageProcessor:
    def __init__(self, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5), size=(384, 384), crop_size: Dict[str, int] = None, resample=PILImageResampling.BICUBIC, rescale_factor=1 / 255, data_format=ChannelDimension.FIRST):
        crop_size = crop_size if crop_size is not None else {"height": 384, "width": 384}
        crop_size = get_size_dict(crop_size, default_to_square=True, param_name="crop_size")

        self.image_mean = image_mean
        self.image_std = image_std
        self.size = size
        self.resample = resample
        self.rescale_factor = rescale_factor
        self.data_format = data_format
        self.crop_size = crop_size

    def preprocess(self, images, return_tensors):
        if isinstance(images, Image.Image):
            images = [images]
        else:
            # to adapt video data
            images = [to_numpy_array(image) for image in images]
            assert isinstance(images, list)

        transforms = [
            convert_to_rgb,
            to_numpy_array,
            partial(resize, size=self.size, resample=self.resample, data_format=self.data_format),
            partial(rescale, scale=self.rescale_factor, data_format=self.data_format),
            partial(normalize, mean=self.image_mean, std=self.image_std, data_format=self.data_format),
            partial(to_channel_dimension_format, channel_dim=self.data_format, input_channel_dim=self.data_format),
        ]

        images = reduce(lambda x, f: [*map(f, x)], transforms, images)
        data = {"pixel_values": images}

        return BatchFeature(data=data, tensor_type=return_tensors)


def make_frame(t: int) -> np.ndarray:
    """Gradients, fine stripes (to exercise the filter's support) and a moving disc."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    r = (x * 255 // (WIDTH - 1)).astype(np.uint8)
    g = (y * 255 // (HEIGHT - 1)).astype(np.uint8)
    b = np.where(((x + y + 5 * t) // 6) % 2 == 0, 40, 220).astype(np.uint8)
    cx, cy = 80 + 40 * t, 180 + int(60 * np.sin(t))
    disc = (x - cx) ** 2 + (y - cy) ** 2 < 50**2
    r[disc], g[disc], b[disc] = 250, 30 + 15 * t, 10
    return np.stack([r, g, b], axis=-1)


def main(out: Path) -> None:
    frames_dir = out / "frames"
    frames_dir.mkdir(parents=True, exist_ok=True)
    video = [make_frame(t) for t in range(FRAME_COUNT)]
    for t, f in enumerate(video):
        Image.fromarray(f).save(frames_dir / f"frame_{t:02d}.png", optimize=True)

    # get_frame_from_vcap with frame_count >= num_frames.
    frame_indices = np.linspace(0, FRAME_COUNT - 1, NUM_VIDEO_FRAMES, dtype=int)
    images = [Image.fromarray(video[i]) for i in frame_indices]
    for img in images:
        img.resize((512, 512))  # as the scripts write it: the result is dropped
    assert all(img.size == (WIDTH, HEIGHT) for img in images)

    processor = SigLipImageProcessor(size=(TILE, TILE), crop_size={"height": TILE, "width": TILE})
    pixel_values = processor.preprocess(images, return_tensors="np")["pixel_values"]
    assert pixel_values.shape == (NUM_VIDEO_FRAMES, 3, TILE, TILE), pixel_values.shape
    assert pixel_values.dtype == np.float32, pixel_values.dtype
    save_file({"pixel_values": np.ascontiguousarray(pixel_values)}, str(out / "pixel_values.safetensors"))

    meta = {
        "reference": "github.com/CodeGoat24/UnifiedReward@5c3c8a2a97dd33ab0fd3fa05df1ee3a38f25905a",
        "num_video_frames": FRAME_COUNT,
        "frame_size": [HEIGHT, WIDTH],
        "frame_indices": frame_indices.tolist(),
        "tile_size": TILE,
        "versions": {
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "pillow": PIL.__version__,
            "transformers": transformers.__version__,
            "safetensors": safetensors.__version__,
        },
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "fixtures/video_reference"))
