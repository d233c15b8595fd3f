#!/usr/bin/env python3
"""Drive `engine serve` with the official `openai` client, as Flow-GRPO's UnifiedReward reward
function does: an AsyncOpenAI client on the server's /v1, one chat-completion request per image
(PNG as `data:image;base64,`, the `<image>` marker in the text, temperature 0), all in flight
at once, the score read from the reply with a regex.

    python scripts/serve-openai-client.py --base-url http://127.0.0.1:8000/v1 img1.png img2.png

Prints one JSON line per image: the reply text, the parsed score (or null), and the latency.
"""
import argparse
import asyncio
import base64
import json
import re
import time
from pathlib import Path

from openai import AsyncOpenAI

# The LLaVA image-generation point prompt (UnifiedReward's inference script), from the
# repository's prompt file, after its image marker, as Flow-GRPO writes it.
PROMPT_FILE = (
    Path(__file__).resolve().parent.parent
    / "models/src/judge/prompts/llava/image_generation_point_score.txt"
)
PROMPT = "<image>\n" + PROMPT_FILE.read_text()
SCORE = re.compile(r"Final Score:\s*([\d.]+)")


async def judge(client, model, path, caption):
    with open(path, "rb") as f:
        encoded = base64.b64encode(f.read()).decode()
    started = time.perf_counter()
    reply = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": f"data:image;base64,{encoded}"}},
            {"type": "text", "text": PROMPT.replace("{caption}", caption)},
        ]}],
        temperature=0,
    )
    text = reply.choices[0].message.content
    found = SCORE.search(text)
    return {
        "image": path,
        "text": text,
        "score": float(found.group(1)) if found else None,
        "finish_reason": reply.choices[0].finish_reason,
        "usage": reply.usage.model_dump() if reply.usage else None,
        "seconds": round(time.perf_counter() - started, 3),
    }


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("images", nargs="+")
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key", default="EMPTY")
    parser.add_argument("--model", default="UnifiedReward-7b-v1.5")
    parser.add_argument("--caption", default="a photo of a cat")
    args = parser.parse_args()
    client = AsyncOpenAI(base_url=args.base_url, api_key=args.api_key)
    results = await asyncio.gather(
        *(judge(client, args.model, p, args.caption) for p in args.images)
    )
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    asyncio.run(main())
