"""Routing analysis of MoE checkpoints (``mmzoo analyze-routing``): expert load, router entropy, top-k
overlap and the image/text split per MoE layer, as JSON, PNG plots and a terminal table."""
from __future__ import annotations

from .api import analyze_routing, write_report

__all__ = ["analyze_routing", "write_report"]
