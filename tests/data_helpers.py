"""A real preprocessed folder for the tests that read one: `mmzoo preprocess` on a tiny tokenizer and tiny images."""
from __future__ import annotations

import json
from pathlib import Path


def make_preprocessed(root: Path, tokenizer: Path, *, samples: int = 4, samples_per_shard: int = 10000) -> Path:
    """``root/data`` (``samples`` captions over 2 images in ``root/images``, `--template plain`); returns ``root``."""
    from mmzoo.demo.tiny import make_images
    from mmzoo.preprocess import preprocess

    make_images(root / "images", 2)
    rows = [{"id": f"s{i}", "image": f"img_{i % 2:03d}.png", "conversations": [
        {"from": "human", "value": "<image>\nDescribe the picture."}, {"from": "gpt", "value": f"Picture {i}."}]}
        for i in range(samples)]
    (root / "data.json").write_text(json.dumps(rows))
    preprocess(root / "data.json", root / "images", tokenizer, root / "data", template="plain",
               samples_per_shard=samples_per_shard)
    return root
