"""The preprocess step of ``mmzoo demo``: a few generated images and conversations -> shards -> one batch."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _conversations() -> list[dict[str, Any]]:
    def turns(*pairs: str) -> list[dict[str, str]]:
        return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(pairs)]

    return [
        {"id": "demo-0", "image": "img_000.png", "conversations": turns("<image>\nWhat is shown?", "A cat on a red sofa.")},
        {"id": "demo-1", "image": ["img_001.png", "img_002.png"], "conversations": turns(
            "<image>\n<image>\nCompare the pictures.", "The first is brighter.", "Anything else?", "Two dogs play.")},
        {"id": "demo-2", "conversations": turns("hello", "hi there!")},
        {"id": "demo-3", "image": "img_003.png", "conversations": turns("<image>\nDescribe.", "A boat on a calm lake 🙂.")},
        {"id": "demo-bad", "image": "missing.png", "conversations": turns("<image>", "never used")},
    ]


def run_demo_step(workdir: Path, checkpoint: Path, console: Any) -> dict[str, Any]:
    """Preprocess a tiny dataset with the tokenizer (and image-token count) of ``checkpoint`` (an hf
    LLaVA folder), then read one batch back through H5Dataset + Collator."""
    from transformers import AutoImageProcessor

    from ..demo.tiny import make_images
    from . import Collator, H5Dataset, preprocess

    workdir = Path(workdir)
    images = workdir / "images"
    make_images(images, 4)
    data = workdir / "conversations.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _conversations()), encoding="utf-8")
    out = workdir / "preprocessed"
    manifest = preprocess([data], images, checkpoint, out, template="auto", model=checkpoint, max_seq_len=512,
                          overwrite=True, console=console, progress=console is not None)
    processor = AutoImageProcessor.from_pretrained(checkpoint)
    dataset = H5Dataset(out, images, processor)
    batch = Collator(dataset.pad_token_id)([dataset[i] for i in range(min(len(dataset), 4))])
    stats = manifest["statistics"]
    summary = {
        "out": str(out), "samples": stats["samples_written"], "rejected": sum(stats["rejected"].values()),
        "tokens": stats["tokens"], "loss_tokens": stats["loss_tokens"], "images": stats["images"],
        "num_image_tokens": manifest["parameters"]["num_image_tokens"],
        "batch_input_ids": list(batch["input_ids"].shape),
        "batch_pixel_values": list(batch["pixel_values"].shape) if batch["pixel_values"] is not None else None,
        "batch_trained_tokens": int((batch["labels"] != -100).sum()),
    }
    if console is not None:
        console.print(f"preprocess: {summary['samples']} samples, {summary['tokens']} tokens, {summary['images']} images "
                      f"({summary['rejected']} rejected) -> batch input_ids {summary['batch_input_ids']}, "
                      f"pixel_values {summary['batch_pixel_values']}")
    return summary
