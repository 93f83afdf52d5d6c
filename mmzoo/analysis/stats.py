"""Routing statistics from the counters of the router tap (``mmzoo.train.moe.RouterTap``).

Pure arithmetic on CPU tensors, shared by ``mmzoo analyze-routing`` and ``mmzoo train``'s metrics, so the two
report the same numbers. Definitions (docs/upcycle.md, "Analysing routing"):

- **load** of expert e in a layer: the share of the layer's top-k assignments that went to e
  (assignments, not tokens: a token counts k times; TC-MoE's null choices count for no expert);
- **entropy**: the mean over routed tokens of -Σ_e p_e ln p_e, p the router's probability distribution
  (after the modality mask of MoIIE's modality experts; TC-MoE: over its 2E + k choices), in nats;
- **modality overlap** of a layer: Σ_e min(load_image_e, load_text_e), the histogram intersection of the
  image tokens' and the text tokens' loads (1: both use the experts alike, 0: disjoint experts);
- **layer overlap** of two consecutive MoE layers of one tower: the mean over tokens of
  |top-k(L) ∩ top-k(L')| / k, experts matched by index (after upcycling, expert e of every layer started as
  a copy of the same dense MLP); ``chance`` = k / E is its value for independent uniform routing.
"""
from __future__ import annotations

import math
from typing import Any

import torch

MODALITIES = ("text", "image")


class RoutingCounts:
    """Per MoE layer and modality (row 0 text, row 1 image): top-k assignments per expert, then the summed
    routing entropy and the token count in the last two columns. ``table``: float64 ``[layers, 2, width]``."""

    def __init__(self, layers: list[str], experts: list[int], table: torch.Tensor):
        self.layers, self.experts, self.table = list(layers), list(experts), table.double()

    def __add__(self, other: "RoutingCounts") -> "RoutingCounts":
        if other.layers != self.layers:
            raise ValueError("routing counts of different layers")
        width = max(self.table.shape[2], other.table.shape[2])
        return RoutingCounts(self.layers, [max(a, b) for a, b in zip(self.experts, other.experts)],
                             _widen(self.table, width) + _widen(other.table, width))

    def counts(self, row: int) -> torch.Tensor:
        """[2, E] assignments of layer ``row``."""
        return self.table[row, :, : self.experts[row]]

    def tokens(self, row: int) -> torch.Tensor:
        return self.table[row, :, -1]

    def entropy_sum(self, row: int) -> torch.Tensor:
        return self.table[row, :, -2]

    def load(self, digits: int = 4) -> dict[str, list[float]]:
        """Per layer: each expert's share of the assignments of all tokens (zeros for a layer nothing reached)."""
        return {layer: _shares(self.counts(row).sum(0), digits) for row, layer in enumerate(self.layers)}

    def entropy(self, digits: int = 4) -> dict[str, float | None]:
        """Per layer: mean routing entropy per token in nats (None for a layer no token reached)."""
        return {layer: _mean(self.entropy_sum(row).sum(), self.tokens(row).sum(), digits)
                for row, layer in enumerate(self.layers)}

    def load_by_modality(self, digits: int = 4) -> dict[str, dict[str, list[float] | None]]:
        """Per layer and modality: the load among that modality's tokens only (None: no such token routed)."""
        return {layer: {m: _shares(self.counts(row)[i], digits) if self.tokens(row)[i] > 0 else None
                        for i, m in enumerate(MODALITIES)}
                for row, layer in enumerate(self.layers)}

    def summary(self, digits: int = 6) -> dict[str, dict[str, Any]]:
        """Per layer, the record ``routing.json`` holds (schema: docs/upcycle.md)."""
        out: dict[str, dict[str, Any]] = {}
        by_modality = self.load_by_modality(digits)
        for row, layer in enumerate(self.layers):
            tokens = self.tokens(row)
            split = by_modality[layer]
            overlap = None
            if split["text"] is not None and split["image"] is not None:
                overlap = round(sum(min(a, b) for a, b in zip(split["text"], split["image"])), digits)
            out[layer] = {
                "experts": self.experts[row],
                "tokens": {m: int(tokens[i]) for i, m in enumerate(MODALITIES)},
                "assignments": int(self.counts(row).sum()),
                "load": _shares(self.counts(row).sum(0), digits),
                "load_by_modality": split,
                "entropy": _mean(self.entropy_sum(row).sum(), tokens.sum(), digits),
                "entropy_by_modality": {m: _mean(self.entropy_sum(row)[i], tokens[i], digits)
                                        for i, m in enumerate(MODALITIES)},
                "max_entropy": round(math.log(self.experts[row]), digits) if self.experts[row] else None,
                "modality_overlap": overlap,
            }
        return out


class LayerOverlap:
    """Top-k overlap between consecutive MoE layers of one tower, accumulated over forwards."""

    def __init__(self):
        self.sums: dict[tuple[str, str], float] = {}
        self.tokens: dict[tuple[str, str], int] = {}
        self.chance: dict[tuple[str, str], float] = {}

    def add(self, layers: list[str], experts: list[int], choices: dict[str, torch.Tensor]) -> None:
        """``choices``: layer -> [tokens, k] expert indices of one forward (-1: no expert); ``layers`` in
        model order. Pairs are consecutive layers of the same tower (``text.*``, ``vision.*``) that routed
        the same tokens."""
        for (a, ea), (b, eb) in zip(zip(layers, experts), zip(layers[1:], experts[1:])):
            if a.split(".")[0] != b.split(".")[0] or a not in choices or b not in choices:
                continue
            left, right = choices[a].cpu(), choices[b].cpu()
            if left.shape != right.shape or left.numel() == 0:
                continue
            k = left.shape[1]
            shared = ((left[:, :, None] == right[:, None, :]) & (left[:, :, None] >= 0)).any(-1).sum(-1)
            key = (a, b)
            self.sums[key] = self.sums.get(key, 0.0) + float(shared.double().sum()) / k
            self.tokens[key] = self.tokens.get(key, 0) + left.shape[0]
            self.chance[key] = k / max(ea, eb)

    def summary(self, digits: int = 6) -> list[dict[str, Any]]:
        return [{"from": a, "to": b, "overlap": round(self.sums[(a, b)] / self.tokens[(a, b)], digits),
                 "chance": round(self.chance[(a, b)], digits), "tokens": self.tokens[(a, b)]}
                for (a, b) in self.sums]


def _widen(table: torch.Tensor, width: int) -> torch.Tensor:
    """Pad the expert columns so that the entropy and token columns stay last."""
    if table.shape[2] == width:
        return table
    out = table.new_zeros(table.shape[0], table.shape[1], width)
    out[:, :, : table.shape[2] - 2] = table[:, :, :-2]
    out[:, :, -2:] = table[:, :, -2:]
    return out


def _shares(counts: torch.Tensor, digits: int) -> list[float]:
    total = float(counts.sum())
    return [round(float(v) / total, digits) if total else 0.0 for v in counts]


def _mean(total, count, digits: int) -> float | None:
    return round(float(total) / float(count), digits) if float(count) > 0 else None
