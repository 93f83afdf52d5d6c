"""Runs in LibMoE's side environment (transformers 4.43): LibMoE's own image path for training data — the tower's
``SiglipImageProcessor.from_pretrained(name)`` (as its SiglipVisionTower loads it) and its train.py
``LazySupervisedDataset.process_image`` with ``image_aspect_ratio`` as its scripts set it — on image files.

Usage: run_libmoe_images.py LIBMOE_SRC TOWER_NAME ASPECT_RATIO OUT.pt IMAGE...
OUT.pt gets the pixel values, one [3, H, W] tensor per image, stacked.
"""
from __future__ import annotations

import sys
from types import SimpleNamespace

import torch


def main(src: str, tower: str, aspect_ratio: str, out_path: str, *images: str) -> None:
    sys.path.insert(0, src)
    from PIL import Image
    from transformers import SiglipImageProcessor

    from moe_model.train.train import LazySupervisedDataset

    processor = SiglipImageProcessor.from_pretrained(tower)
    dataset = SimpleNamespace(data_args=SimpleNamespace(image_aspect_ratio=aspect_ratio))  # all process_image reads
    pixels = [LazySupervisedDataset.process_image(dataset, Image.open(path).convert("RGB"), processor, image_file=path) for path in images]
    torch.save(torch.stack(pixels), out_path)


if __name__ == "__main__":
    main(*sys.argv[1:])
