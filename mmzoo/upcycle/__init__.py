"""Dense -> MoE upcycling while converting (``mmzoo convert --moe-experts N``).

``upcycle(ckpt, **options)`` turns a dense canonical ``Checkpoint`` into an MoE one, lazily: every
expert is a copy of the dense MLP (byte ranges of the source file), routers are seeded computed
tensors, and the layout is recorded in ``spec.moe`` (and, for the text model, in ``text_config``:
a Mixtral or Qwen2-MoE config when one expresses the layout exactly, else ``model_type: mmzoo_moe``,
which ``hf`` folders hold with mmzoo's own modeling code as transformers remote code, ``remote/``).
Styles: ``mixtral`` (softmax top-k over copies), ``shared`` (shared expert + routed experts, scaled so
the output equals the dense MLP), ``modality`` (MoIIE: image-only, text-only and shared experts,
routing masked by token modality). Canonical tensor names: see ``mmzoo.archs.moe``; user guide:
docs/upcycle.md.
"""
from __future__ import annotations

from typing import Any

from ..checkpoint.spec import Checkpoint
from .options import STYLES, TARGETS, UpcycleOptions, parse_layers, parse_options

__all__ = ["upcycle", "UpcycleOptions", "parse_layers", "STYLES", "TARGETS", "conversion_notes"]


def upcycle(ckpt: Checkpoint, **options: Any) -> Checkpoint:
    """A new lazy ``Checkpoint`` whose selected MLPs are MoE blocks equivalent to the dense ones at init."""
    from .styles import upcycle_checkpoint

    return upcycle_checkpoint(ckpt, parse_options(**options))


# the one line `mmzoo convert` prints when it upcycles to a router that cannot start dense-equivalent
NOT_DENSE_AT_INIT = {
    "moepp": "MoE++ (--moe-router moepp) is not dense-equivalent at init: its zero and constant experts take part in "
             "every token's top-k; a token whose top-k are all FFN experts gets exactly the dense MLP's output, one that "
             "picks the zero or constant expert gets (its FFN weights' sum) x dense + w_const x (a x + b c) (docs/upcycle.md)",
}


def conversion_notes(ckpt: Checkpoint, tgt_fmt: str, *, upcycled: bool = False) -> list[str]:
    """Behavioural caveats of writing this (MoE) checkpoint as ``tgt_fmt`` (for ConversionResult.notes);
    ``upcycled``: it was made dense -> MoE by this conversion. The caveats of one layout (MoE-LLaVA's gating)
    are its format module's ``conversion_notes``."""
    from .remote import needs_remote_code

    notes = []
    router = (ckpt.spec.moe or {}).get("router")
    if upcycled and router in NOT_DENSE_AT_INIT:
        notes.append(NOT_DENSE_AT_INIT[router])
    if tgt_fmt == "hf" and needs_remote_code(ckpt.spec):
        why = (ckpt.spec.moe or {}).get("hf_unsupported")
        notes.append(
            "no built-in transformers class expresses this MoE layout" + (f" ({why})" if why else "") + "; the hf folder "
            "ships mmzoo's modeling code (configuration_mmzoo_moe.py, modeling_mmzoo_moe.py): load it with "
            "AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True) in transformers 5.x (4.x cannot load it)"
        )
    return notes
