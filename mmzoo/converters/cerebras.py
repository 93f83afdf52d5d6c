"""``cerebras``: the folder Cerebras modelzoo's LLaVA checkpoint converter reads and writes
(``tools/checkpoint_converters/llava.py``, Release 2.10).

``OUT/image_model/``: a CLIPVisionModel folder (config, preprocessor_config, weights);
``OUT/text_model/``: the LLM with the projector as ``model.mm_projector.{0,2}`` and LLaVA's ``mm_*`` config
fields (``mm_vision_tower`` points at image_model/), plus the tokenizer files. This is the ``llava`` layout
with the three differences the converter insists on:

- the text folder is ``text_model/`` (``text_model_llava`` appears only as a manual rename in its README);
- it finds weights as a ``*.index.json`` or a ``pytorch_model.bin`` only (a lone ``model.safetensors`` is not
  found), so every folder gets a ``model.safetensors.index.json``, also for a single shard — its
  ``StreamingShardedHFReader`` then reads the safetensors shards as they are, bit-exact;
- its config converter asserts ``mm_projector_type`` matches ``mlp(\\d+)x_gelu``: a ``linear`` projector is refused.

Its README also lists ``tokenizer.model``, ``special_tokens_map.json`` and ``tokenizer_config.json`` in the text
folder: they are copied when the source has them, and ``target_notes`` names the ones it lacks.
Reading: the same folder, whether mmzoo or the converter (HF side of a CS -> HF conversion) wrote it.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..errors import UnknownArchitecture
from ..io.checkpoint import SAFE_INDEX
from ..io.safetensors_file import read_header
from ..checkpoint.spec import Checkpoint
from . import llava

NAME = "cerebras"
DESCRIPTION = "Cerebras modelzoo LLaVA converter layout: image_model/ (CLIP) + text_model/ (Llama/Mistral + mm_projector), indexed weights"
TEXT_DIR = "text_model"
VISION_DIR = "image_model"
# Cerebras' ConfigConverter_LLaMaProjector_HF_CS22.convert_mm_projector_type: re.match("mlp(\d+)x_gelu", ...)
PROJECTOR = re.compile(r"mlp(\d+)x_gelu")
TOKENIZER_FILES = ("tokenizer.model", "special_tokens_map.json", "tokenizer_config.json")


def detect(path: Path) -> bool:
    """image_model/ + text_model/ whose weights the converter finds; a lone model.safetensors stays ``llava``
    (the llava reader reads either, so the name only says which tool the folder is ready for)."""
    text = path / TEXT_DIR
    if not ((path / VISION_DIR / "config.json").is_file() and (text / "config.json").is_file()):
        return False
    return (text / "pytorch_model.bin").is_file() or any(text.glob("*.index.json"))


def read(path: Path, *, drop_unmatched: bool = False) -> Checkpoint:
    ckpt = llava.read(path, drop_unmatched=drop_unmatched)  # llava's reader knows text_model/ too
    ckpt.format = NAME
    return ckpt


def check_supported(ckpt: Checkpoint) -> None:
    llava.check_supported(ckpt.spec, "cerebras")
    if not PROJECTOR.match(ckpt.spec.projector_type):
        raise UnknownArchitecture(
            f"Cerebras' LLaVA converter accepts only mlp<N>x_gelu projectors; this checkpoint's is {ckpt.spec.projector_type!r} "
            "(use --tgt-fmt llava, hf or internal)"
        )


def write(ckpt: Checkpoint, out: Path, *, final_path: Path, shard_bytes: int, progress=None, vision_tower: str | None = None, **_: Any) -> None:
    check_supported(ckpt)
    llava.write(ckpt, out, final_path=final_path, shard_bytes=shard_bytes, progress=progress,
                vision_tower=vision_tower or str(final_path.resolve() / VISION_DIR))
    (out / "text_model_llava").rename(out / TEXT_DIR)
    for folder in (out / VISION_DIR, out / TEXT_DIR):
        _index_single_shard(folder)


def _index_single_shard(folder: Path) -> None:
    """An index for a lone model.safetensors: the converter looks for *.index.json or pytorch_model.bin only."""
    if (folder / SAFE_INDEX).exists():
        return
    shard = folder / "model.safetensors"
    stored, _ = read_header(shard)
    index = {"metadata": {"total_size": sum(t.nbytes for t in stored.values())}, "weight_map": {k: shard.name for k in sorted(stored)}}
    (folder / SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n")


def target_notes(ckpt: Checkpoint) -> list[str]:
    """What the user should know about this folder as Cerebras' input (ConversionResult.notes)."""
    missing = [n for n in TOKENIZER_FILES if n not in ckpt.tokenizer_files]
    if not missing:
        return []
    return [f"Cerebras' LLaVA README expects {', '.join(TOKENIZER_FILES)} in text_model/; the source has no {', '.join(missing)}"]
