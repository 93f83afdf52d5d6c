"""Dense -> MoE upcycling while converting (``mmzoo convert --moe-experts N``).

``upcycle(ckpt, **options)`` turns a dense canonical ``Checkpoint`` into an MoE one, lazily: every
expert is a copy of the dense MLP (byte ranges of the source file), routers are seeded computed
tensors, and the layout is recorded in ``spec.moe`` (and, for the text model, in ``text_config``:
a Mixtral or Qwen2-MoE config when one expresses the layout exactly, else ``model_type: mmzoo_moe``).
Styles: ``mixtral`` (softmax top-k over copies), ``shared`` (shared expert + routed experts, scaled so
the output equals the dense MLP), ``modality`` (MoIIE: image-only, text-only and shared experts,
routing masked by token modality). Canonical tensor names: see ``mmzoo.archs.moe``; user guide:
docs/upcycle.md.
"""
from __future__ import annotations

from typing import Any

from ..spec import Checkpoint
from .options import STYLES, TARGETS, UpcycleOptions, parse_layers, parse_options

__all__ = ["upcycle", "UpcycleOptions", "parse_layers", "STYLES", "TARGETS", "conversion_notes"]


def upcycle(ckpt: Checkpoint, **options: Any) -> Checkpoint:
    """A new lazy ``Checkpoint`` whose selected MLPs are MoE blocks equivalent to the dense ones at init."""
    from .styles import upcycle_checkpoint

    return upcycle_checkpoint(ckpt, parse_options(**options))


def conversion_notes(ckpt: Checkpoint, tgt_fmt: str) -> list[str]:
    """Behavioural caveats of writing this (MoE) checkpoint as ``tgt_fmt`` (for ConversionResult.notes)."""
    from ..formats.moe_llava import conversion_notes as moe_llava_notes

    return moe_llava_notes(ckpt, tgt_fmt)
