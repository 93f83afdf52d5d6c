"""PNG plots of a routing summary (matplotlib, the optional ``plot`` extra, as ``mmzoo plot``).

- ``expert_load.png``: heatmap, one row per MoE layer, one column per expert, colour = load / fair share
  (1 = balanced; the share itself is written in each cell while the grid is small enough to read);
- ``modality_load.png``: per layer, each expert's load among image tokens and among text tokens, side by
  side (MoIIE's modality split); layers that routed one modality only show one bar per expert;
- ``entropy.png``: mean routing entropy per layer (all tokens, image, text) against its maximum ln E.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

DPI = 100
PLOTS = ("expert_load.png", "modality_load.png", "entropy.png")


def write_plots(layers: dict[str, dict[str, Any]], folder: Path) -> list[Path]:
    """Draw the three plots of ``layers`` (``routing.json``'s ``layers``) into ``folder``; returns their paths."""
    from ..plot import _pyplot

    plt = _pyplot()
    names = list(layers)
    drawn = []
    for file_name, draw in zip(PLOTS, (_load_heatmap, _modality_bars, _entropy_lines)):
        figure = draw(plt, names, layers)
        try:
            figure.savefig(folder / file_name, dpi=DPI)
        finally:
            plt.close(figure)
        drawn.append(folder / file_name)
    return drawn


def _load_heatmap(plt, names: list[str], layers: dict[str, dict[str, Any]]):
    import numpy as np

    width = max(layers[n]["experts"] for n in names)
    grid = np.full((len(names), width), np.nan)
    for row, name in enumerate(names):
        load = layers[name]["load"]
        grid[row, : len(load)] = [share * len(load) for share in load]  # ÷ the fair share 1/E
    figure, ax = plt.subplots(figsize=(max(4.8, 1.0 + 0.55 * width), max(3.0, 1.2 + 0.32 * len(names))))
    image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0.0, vmax=max(2.0, float(np.nanmax(grid))))
    ax.set_xticks(range(width), [str(e) for e in range(width)])
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("expert")
    ax.set_title("expert load ÷ fair share (1 = balanced)", fontsize=10)
    if len(names) * width <= 256:
        for row, name in enumerate(names):
            for e, share in enumerate(layers[name]["load"]):
                ax.text(e, row, f"{share:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if grid[row, e] < 1.2 else "black")
    figure.colorbar(image, ax=ax, fraction=0.05)
    figure.tight_layout()
    return figure


def _modality_bars(plt, names: list[str], layers: dict[str, dict[str, Any]]):
    import numpy as np

    columns = min(4, len(names))
    rows = math.ceil(len(names) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.6 * rows), squeeze=False)
    colours = {"image": "#d95f02", "text": "#1b9e77"}
    for ax, name in zip(axes.flat, names):
        split = layers[name]["load_by_modality"]
        shown = [m for m in ("image", "text") if split.get(m) is not None]
        experts = np.arange(layers[name]["experts"])
        bar = 0.8 / max(1, len(shown))
        for i, modality in enumerate(shown):
            ax.bar(experts + (i - (len(shown) - 1) / 2) * bar, split[modality], bar, label=modality,
                   color=colours[modality])
        ax.axhline(1.0 / max(1, len(experts)), color="grey", linewidth=0.8, linestyle=":")
        ax.set_xticks(experts, [str(e) for e in experts])
        ax.set_title(name, fontsize=9)
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=7)
        if shown:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    figure.suptitle("expert load by modality (share of each modality's assignments; dotted: 1/E)", fontsize=10)
    figure.tight_layout()
    return figure


def _entropy_lines(plt, names: list[str], layers: dict[str, dict[str, Any]]):
    figure, ax = plt.subplots(figsize=(max(4.8, 1.5 + 0.45 * len(names)), 3.4))
    x = list(range(len(names)))
    series = [("all tokens", lambda r: r["entropy"], "black"),
              ("image", lambda r: r["entropy_by_modality"]["image"], "#d95f02"),
              ("text", lambda r: r["entropy_by_modality"]["text"], "#1b9e77")]
    for label, value, colour in series:
        points = [(i, value(layers[n])) for i, n in enumerate(names) if value(layers[n]) is not None]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label, color=colour)
    ax.plot(x, [layers[n]["max_entropy"] for n in names], linestyle=":", color="grey", label="max (ln E)")
    ax.set_xticks(x, names, rotation=45 if len(names) > 6 else 0, fontsize=8)
    ax.set_ylabel("nats")
    ax.set_ylim(bottom=0)
    ax.set_title("mean router entropy per layer", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    return figure
