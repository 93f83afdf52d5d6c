"""``internal``: mmzoo's training format.

``mmzoo.yaml`` describes the model (``ModelSpec``: vision/text configs, projector, MoE layout) and
where it came from; weights are safetensors shards with canonical names (``image_model.*``,
``projector.*``, ``text_model.*``); ``tokenizer/`` and ``image_processor/`` hold the rest. See
docs/formats.md.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import naming
from ..io.checkpoint import read_weights, write_weights
from ..io.tensors import Planned
from ..checkpoint.locate import read_json, read_manifest
from ..checkpoint.spec import Checkpoint, ModelSpec, find_tokenizer_files
from .common import copy_files, validate, write_json

NAME = "internal"
MULTISCALE = True  # mmzoo.yaml keeps vision_scales (S² multi-scale image features)
DESCRIPTION = "mmzoo training format: mmzoo.yaml + canonical safetensors shards + tokenizer/ + image_processor/"
MANIFEST = "mmzoo.yaml"
FORMAT_VERSION = 1


def detect(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def read(path: Path, *, drop_unmatched: bool = False) -> Checkpoint:
    data = read_manifest(path)
    with naming(path / MANIFEST):
        spec = ModelSpec.model_validate({**data["model"], "provenance": data.get("provenance", {})})
    tensors = {name: Planned.of(src) for name, src in read_weights(path).items()}
    known = ("image_model.", "projector.", "text_model.")
    unknown = [n for n in tensors if not n.startswith(known)]
    if unknown and not drop_unmatched:
        from ..errors import UnexpectedTensor

        raise UnexpectedTensor(f"tensor {unknown[0]!r} is not under image_model./projector./text_model.", path=path)
    tensors = {n: t for n, t in tensors.items() if n.startswith(known)}
    processor_file = path / "image_processor" / "preprocessor_config.json"
    processor = read_json(processor_file) if processor_file.is_file() else None
    extra = {n: path / n for n in ("generation_config.json",) if (path / n).is_file()}
    return Checkpoint(spec, tensors, path, NAME, find_tokenizer_files(path / "tokenizer"), processor, extra)


def manifest(ckpt: Checkpoint) -> dict[str, Any]:
    from .. import __version__

    model = ckpt.spec.model_dump(exclude={"provenance"} | (set() if ckpt.spec.multiscale else {"vision_scales"}))
    provenance = dict(ckpt.spec.provenance)
    provenance.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    provenance.setdefault("source", str(ckpt.path))
    provenance.setdefault("source_format", ckpt.format)
    provenance.setdefault("mmzoo_version", __version__)
    return {"format": "mmzoo-internal", "format_version": FORMAT_VERSION, "model": model, "provenance": provenance}


def write(ckpt: Checkpoint, out: Path, *, final_path: Path, shard_bytes: int, progress=None, **_: Any) -> None:
    import yaml

    validate(ckpt)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).write_text(yaml.safe_dump(manifest(ckpt), sort_keys=False, allow_unicode=True), encoding="utf-8")
    write_weights(out, dict(sorted(ckpt.tensors.items())), max_shard_bytes=shard_bytes, progress=progress)
    copy_files(ckpt.tokenizer_files, out / "tokenizer")
    if ckpt.image_processor is not None:
        write_json(out / "image_processor" / "preprocessor_config.json", ckpt.image_processor)
    copy_files(ckpt.extra_files, out)
