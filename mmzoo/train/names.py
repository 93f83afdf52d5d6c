"""Canonical (``image_model.*``, ``projector.*``, ``text_model.*``) <-> in-memory parameter names.

The forward mapping (canonical -> the names a transformers / mmzoo-MoE model holds in memory) is the
one the loaders use (``mmzoo.converters.hf`` for dense models, ``mmzoo.models.moe`` for MoE ones).
Running it on *marker* tensors (one ``Source`` per canonical tensor, nothing loaded) records, for every
in-memory tensor, which canonical tensors' rows it holds and where. That record — the ``Layout`` —
answers both questions training has: which canonical names a parameter carries (freeze rules), and
how a trained in-memory state dict splits back into canonical tensors (export).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import MmzooError
from ..io.tensors import Planned, Source
from ..checkpoint.spec import Checkpoint


@dataclass(frozen=True)
class Part:
    """Rows ``[start, stop)`` of canonical tensor ``name`` sit at rows ``[at, at + stop - start)`` of the
    in-memory tensor (inside expert slot ``expert`` of a stacked ``[E, ...]`` tensor when not None)."""

    name: str
    start: int
    stop: int
    at: int
    expert: int | None = None


Layout = dict[str, list[Part]]

_FUSED_EXPERT = re.compile(r"(model\.language_model\.layers\.\d+\.mlp\.experts\.)(gate_up_proj|down_proj)\Z")


def _markers(ckpt: Checkpoint) -> Checkpoint:
    tensors = {name: Planned.of(Source(name, p.dtype, tuple(p.shape))) for name, p in ckpt.tensors.items()}
    return Checkpoint(ckpt.spec, tensors, ckpt.path, ckpt.format, ckpt.tokenizer_files, ckpt.image_processor, ckpt.extra_files)


def _parts(planned: Planned) -> list[Part]:
    out, cursor = [], 0
    for piece in planned.pieces:
        if piece.ops:
            raise MmzooError(f"internal error: the in-memory mapping of {piece.source.name!r} is not a pure row mapping")
        out.append(Part(piece.source.name, piece.row_start, piece.row_stop, cursor))
        cursor += piece.rows
    return out


def is_builtin_moe(spec) -> bool:
    moe = spec.moe or {}
    return bool(moe) and spec.text_type in ("mixtral", "qwen2_moe") and not moe.get("vision_layers") \
        and "projector" not in (moe.get("targets") or [])


def memory_layout(ckpt: Checkpoint) -> Layout:
    """For every in-memory tensor name of the model ``mmzoo.load_model`` builds from ``ckpt``: its parts."""
    marked = _markers(ckpt)
    spec = ckpt.spec
    if not spec.moe:
        from ..converters.common import native_components
        from ..converters.hf import MEMORY_PREFIXES, rename

        plan = rename(native_components(marked), MEMORY_PREFIXES)
        return {name: _parts(p) for name, p in plan.items()}
    from ..archs import text_table
    from ..archs.moe import base_text_config
    from ..models import moe as moe_modeling

    if is_builtin_moe(spec):
        layout: Layout = {}
        text = marked.component("text_model.")
        for name, planned in text.items():
            match = moe_modeling.EXPERT_NAME.match(name)
            if match:
                layer, expert, proj = int(match.group(1)), int(match.group(2)), match.group(3)
                rows = planned.shape[0]
                prefix = f"model.language_model.layers.{layer}.mlp.experts."
                full = "text_model." + name
                if proj == "down_proj":
                    layout.setdefault(prefix + "down_proj", []).append(Part(full, 0, rows, 0, expert))
                else:  # gate rows first, then up rows (torch.cat([gate, up]) per expert)
                    at = 0 if proj == "gate_proj" else rows
                    layout.setdefault(prefix + "gate_up_proj", []).append(Part(full, 0, rows, at, expert))
            else:
                memory = "model.language_model." + name[len("model."):] if name.startswith("model.") else name
                layout[memory] = _parts(Planned.of(Source("text_model." + name, planned.dtype, planned.shape)))
        for name, planned in moe_modeling.vision_and_projector_memory_names(marked).items():
            layout[name] = _parts(planned)
        return layout
    dense_text = base_text_config(spec.text_config) if spec.text_type == "mmzoo_moe" else spec.text_config
    native = moe_modeling.native_memory_names(marked.component("text_model."), text_table(dense_text.get("model_type", "llama")))
    layout = {}
    for name, planned in native.items():
        memory = "model.language_model." + name[len("model."):] if name.startswith("model.") else name
        layout[memory] = _parts(planned)
    for name, planned in moe_modeling.vision_and_projector_memory_names(marked).items():
        layout[name] = _parts(planned)
    return layout


def canonical_names(layout: Layout, memory_name: str) -> list[str]:
    parts = layout.get(memory_name)
    return sorted({p.name for p in parts}) if parts else [memory_name]


def to_canonical(state: dict[str, Any], layout: Layout, expected: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """Split a trained in-memory state dict into canonical tensors (every one of ``expected``)."""
    out: dict[str, Any] = {}
    pieces: dict[str, list[tuple[int, Any]]] = {}
    for memory, parts in layout.items():
        tensor = state.get(memory)
        if tensor is None:
            raise MmzooError(f"the trained state has no tensor {memory!r}")
        for part in parts:
            source = tensor if part.expert is None else tensor[part.expert]
            rows = source[part.at: part.at + part.stop - part.start] if source.dim() else source
            pieces.setdefault(part.name, []).append((part.start, rows))
    import torch

    for name, chunks in pieces.items():
        chunks.sort(key=lambda c: c[0])
        out[name] = chunks[0][1] if len(chunks) == 1 else torch.cat([c[1] for c in chunks], 0)
    missing = sorted(set(expected) - set(out))
    if missing:
        raise MmzooError(f"the trained state does not cover canonical tensors {missing[:3]}")
    for name, shape in expected.items():
        if tuple(out[name].shape) != tuple(shape):
            raise MmzooError(f"trained tensor {name!r} has shape {list(out[name].shape)}, expected {list(shape)}")
    return {name: out[name] for name in expected}
