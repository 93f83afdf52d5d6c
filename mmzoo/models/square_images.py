"""Pad images to a square before the image processor, for checkpoints trained that way.

LibMoE trains every published checkpoint with ``image_aspect_ratio: pad`` (its train.py ``process_image``, LLaVA's
``expand2square``): a non-square image is centred on a square of the processor's mean colour
(``int(mean * 255)`` per channel) before the processor resizes it to its base size (S² upscales inside the model,
never in the processor). transformers' processors resize the image as it is, so for such checkpoints
:func:`with_square_padding` gives the processor that pads first; ``mmzoo generate`` and the training data (pixel
values of preprocessed samples) both use it through :func:`mmzoo.load_processor`.

Only checkpoints that say so in their LibMoE config are padded: LLaVA-repo and hf checkpoints keep transformers'
processing, which the engine's equality with transformers is measured on.
"""
from __future__ import annotations

import copy
from typing import Any


def pads_to_square(spec) -> bool:
    return (spec.extra.get("libmoe") or {}).get("image_aspect_ratio") == "pad"


def expand_to_square(image, background: tuple[int, ...]):
    """LLaVA's / LibMoE's ``expand2square``: ``image`` centred on a square canvas of ``background``."""
    from PIL import Image

    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), background)
    canvas.paste(image, (0, (side - height) // 2) if width > height else ((side - width) // 2, 0))
    return canvas


class SquarePadding:
    """Mixed in before a transformers image processor class: PIL images are padded to squares first."""

    def preprocess(self, images: Any, *args, **kwargs):
        return super().preprocess(self._padded(images), *args, **kwargs)

    def _padded(self, images: Any) -> Any:
        from PIL import Image

        if isinstance(images, (list, tuple)):
            return type(images)(self._padded(image) for image in images)
        if isinstance(images, Image.Image):
            background = tuple(int(x * 255) for x in self.image_mean)
            return expand_to_square(images.convert("RGB"), background)
        return images


def with_square_padding(processor, spec):
    """``processor`` (a LlavaProcessor) whose image processor pads to squares when ``spec`` asks for it."""
    if not pads_to_square(spec):
        return processor
    inner = processor.image_processor
    padded = copy.copy(inner)
    padded.__class__ = type(f"SquarePadding{type(inner).__name__}", (SquarePadding, type(inner)), {})
    processor.image_processor = padded
    return processor
