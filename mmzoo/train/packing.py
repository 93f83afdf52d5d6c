"""Padding-free packing (``train.packing: true``): micro batches of up to ``train.max_tokens`` tokens in one row.

Samples are taken from the same seeded, endless sample stream as unpacked training (``data.SampleOrder``)
and packed greedily in stream order: a pack ends where the next sample would exceed ``max_tokens``. The
k-th pack of the whole run (all ranks) is a fixed slice of the stream, so a resumed run — with any number
of processes — reads exactly what the uninterrupted run read; micro batch (step, micro step, rank) is
pack ``(step · accumulation + micro) · world + rank``, as micro batches are without packing.

A pack is one row with no padding: per-sample position ids that restart at 0 and no attention mask.
Without a KV cache (the model is called with ``use_cache=False``) transformers turns such position ids into attention that cannot cross samples — a block-diagonal causal
mask for sdpa / eager / flex_attention, ``cu_seqlens`` (varlen kernels) for flash_attention_2. The first
token of every sample gets label −100: in an unpacked row nothing predicts it, while in a pack the last
token of the previous sample would. The loss is then the mean over exactly the tokens an unpacked batch of
the same samples averages over (tests/train/test_packing.py checks loss and gradients against it).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import ConfigError

IGNORE_INDEX = -100


def check_max_tokens(max_tokens: int, lengths: np.ndarray) -> None:
    longest = int(lengths.max()) if len(lengths) else 0
    if longest > max_tokens:
        raise ConfigError(f"train.max_tokens {max_tokens} is smaller than the longest sample ({longest} tokens); "
                          f"raise it to at least {longest}")


class PackPlan:
    """Stream positions ``[start, end)`` of every pack, computed in order from sample lengths alone."""

    def __init__(self, order, lengths: np.ndarray, max_tokens: int):
        check_max_tokens(max_tokens, lengths)
        self.order, self.lengths, self.max_tokens = order, lengths, max_tokens
        self.bounds: list[int] = [0]  # bounds[k]: stream position where pack k starts

    def _extend(self, packs: int) -> None:
        position = self.bounds[-1]
        while len(self.bounds) <= packs:
            used = 0
            while True:
                n = int(self.lengths[self.order.indices(position, 1)[0]])
                if used and used + n > self.max_tokens:
                    break
                used, position = used + n, position + 1
            self.bounds.append(position)

    def pack(self, k: int) -> list[int]:
        """Dataset indices of pack ``k`` (packs count from 0 over the whole run)."""
        self._extend(k + 1)
        start, end = self.bounds[k], self.bounds[k + 1]
        return self.order.indices(start, end - start)

    def packs_for_positions(self, positions: int) -> int:
        """How many packs cover the first ``positions`` samples of the stream (for ``train.epochs``)."""
        k = 0
        while True:
            self._extend(k + 1)
            if self.bounds[k + 1] >= positions:
                return k + 1
            k += 1


def collate_packed(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Samples (``H5Dataset`` items) → one padding-free row: input_ids, labels, position_ids [1, T],
    pixel_values of all images in sample order, and the sample lengths (for model FLOPs)."""
    ids, labels, positions, pixels, lengths = [], [], [], [], []
    for item in items:
        n = len(item["input_ids"])
        ids.append(item["input_ids"])
        sample_labels = item["labels"].clone()
        sample_labels[0] = IGNORE_INDEX  # would be predicted from the previous sample's last token
        labels.append(sample_labels)
        positions.append(torch.arange(n, dtype=torch.long))
        if item.get("pixel_values") is not None:
            pixels.append(item["pixel_values"])
        lengths.append(n)
    return {
        "input_ids": torch.cat(ids)[None], "labels": torch.cat(labels)[None], "position_ids": torch.cat(positions)[None],
        "pixel_values": torch.cat(pixels) if pixels else None,
        "sample_lengths": torch.tensor(lengths, dtype=torch.long),
        "ids": [item["id"] for item in items],
    }


# -- attention for packed rows on a GPU -----------------------------------------------------------------
VARLEN = "mmzoo_varlen"


def select_packed_attention(model, *, accelerator: str, precision: str) -> str:
    """The LLM's attention for packed rows; returns its name.

    sdpa builds a [T × T] block-diagonal mask from the position ids and computes (and masks) all of it, so a
    pack of 16 samples costs ~16× the attention of the samples alone. On a GPU in bf16/fp16, sdpa packs run
    instead through PyTorch's variable-length flash-attention kernel (``torch.nn.attention.varlen``), which
    attends within each sample only — what flash_attention_2 does from the same position ids. Elsewhere
    (CPU, fp32, eager, an older torch) the mask path stays: slower, equally exact.
    """
    text_config = model.model.language_model.config
    current = text_config._attn_implementation
    if accelerator != "cuda" or precision not in ("bf16", "fp16") or current != "sdpa" or _varlen_attn() is None:
        return current
    from transformers import AttentionInterface, AttentionMaskInterface

    # every forward of the LLM starts with fresh sample bounds (a new row may reuse the old one's memory)
    model.model.language_model.register_forward_pre_hook(lambda *_: _BOUNDS.clear())
    AttentionInterface.register(VARLEN, _varlen_attention)
    AttentionMaskInterface.register(VARLEN, lambda *args, **kwargs: None)  # packed rows have no padding to mask
    text_config._attn_implementation = VARLEN
    return VARLEN


def _varlen_attn():
    import inspect

    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    return varlen_attn if ("window_size" in params or "is_causal" in params) else None  # causal masking is a must


_BOUNDS: dict = {}


def _sequence_bounds(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(cu_seqlens int32, longest sample) of a packed row, computed once per forward of the LLM (every layer
    asks; the one host synchronisation of a packed forward)."""
    key = (position_ids.data_ptr(), position_ids.shape, position_ids.device)
    if key not in _BOUNDS:
        row = position_ids.reshape(-1)
        starts = torch.nonzero(row == 0).reshape(-1)
        ends = torch.cat([starts, starts.new_tensor([row.numel()])])
        _BOUNDS[key] = (ends.to(torch.int32), int((ends[1:] - ends[:-1]).max()))
    return _BOUNDS[key]


@torch.compiler.disable  # under `compile: true`: run eagerly between a block's compiled graphs (a host sync, data_ptr)
def _varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention interface: query/key/value [1, heads, T, head_dim] → output [1, T, heads, head_dim]."""
    import inspect

    varlen_attn = _varlen_attn()
    if query.shape[0] != 1 or kwargs.get("position_ids") is None:
        raise ValueError("mmzoo's varlen attention takes one packed row with its position_ids")
    cu, longest = _sequence_bounds(kwargs["position_ids"])
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # [T, heads, head_dim]
    dtype = q.dtype
    if dtype not in (torch.bfloat16, torch.float16) and torch.is_autocast_enabled(q.device.type):
        half = torch.get_autocast_dtype(q.device.type)  # under autocast RoPE hands back fp32; flash needs half
        q, k, v = q.to(half), k.to(half), v.to(half)
    params = inspect.signature(varlen_attn).parameters
    extra: dict[str, Any] = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    if k.shape[1] != q.shape[1]:  # grouped-query attention
        if "enable_gqa" in params:
            extra["enable_gqa"] = True
        else:
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    out = varlen_attn(q, k, v, cu, cu, longest, longest, scale=scaling, **extra)
    return out[None].to(dtype), None
