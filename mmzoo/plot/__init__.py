"""``mmzoo plot``: training curves of one or several runs in one image (matplotlib, an optional extra).

Reads each run's ``metrics.jsonl`` (the file ``mmzoo train`` writes) and draws one panel per metric that
any run logged — loss, aux / kd losses, reward, learning rate, grad norm, tokens/s, TFLOP/s, and any other
number a run logs, under its own name — with one colour per run, plus, for MoE runs, the expert load over steps: per layer, the busiest expert's share divided by the
fair share 1/E (1 = balanced, E = one expert takes everything).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ..errors import MmzooError, OutputExists, missing_package

# (metric key, panel title), in drawing order; a panel is drawn when any run logged the metric
PANELS = (
    ("loss", "loss"), ("lm_loss", "language-model loss"), ("aux_loss", "router aux loss"), ("kd_loss", "distillation (KD) loss"),
    ("reward", "reward"), ("lr", "learning rate"), ("grad_norm", "grad norm"), ("tokens_per_s", "tokens/s"),
    ("tflops", "model TFLOP/s"),
)
# bookkeeping, not curves; any other number a run logs (a new loss term) gets a panel under its own name
NOT_PLOTTED = {"step", "tokens", "seconds", "expert_load"}
FORMATS = (".png", ".svg", ".pdf")


def read_metrics(run: str | Path) -> list[dict[str, Any]]:
    """The records of a run folder (or of a metrics.jsonl file itself), in step order. A line cut short by a
    crash is skipped; a later record for the same step (a resumed run) replaces the earlier one."""
    path = Path(run)
    if not path.exists():
        raise MmzooError("does not exist (give a training run folder or a metrics.jsonl file)", path=run)
    path = path / "metrics.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise MmzooError("no metrics.jsonl here (give a training run folder or a metrics.jsonl file)", path=run)
    by_step: dict[int, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                by_step[record["step"]] = record
    if not by_step:
        raise MmzooError("metrics.jsonl holds no records yet", path=path)
    return [by_step[s] for s in sorted(by_step)]


def run_labels(runs: list[Path]) -> list[str]:
    """Folder names, with their parents where two runs share a name."""
    names = [Path(r).resolve().name if Path(r).is_dir() else Path(r).resolve().parent.name for r in runs]
    return [str(Path(r).resolve().relative_to(Path(r).resolve().parents[1])) if names.count(n) > 1 else n
            for r, n in zip(runs, names)]


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for record in records:
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            steps.append(record["step"])
            values.append(float(value))
    return steps, values


def expert_imbalance(records: list[dict[str, Any]]) -> dict[str, tuple[list[int], list[float]]]:
    """Per MoE layer: (steps, busiest expert's share × number of experts)."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    for record in records:
        loads = record.get("expert_load")
        for layer, shares in (loads.items() if isinstance(loads, dict) else ()):
            # a hand-edited or foreign metrics.jsonl may hold anything here: only lists of finite numbers count
            if not isinstance(shares, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                       and math.isfinite(v) for v in shares):
                continue
            if shares and sum(shares) > 0:
                steps, values = out.setdefault(layer, ([], []))
                steps.append(record["step"])
                values.append(max(shares) * len(shares) / sum(shares))
    return out


def plot_runs(runs: list[str | Path], output: str | Path, *, overwrite: bool = False, dpi: int = 100,
              log_loss: bool = False) -> dict[str, Any]:
    """Draw the runs' curves into ``output`` (.png, .svg or .pdf); returns the panels drawn and the image size."""
    if not runs:
        raise MmzooError("give at least one run")
    output = Path(output)
    if output.suffix.lower() not in FORMATS:
        raise MmzooError(f"the output must end in {', '.join(FORMATS)}", path=output)
    if output.exists() and not overwrite:
        raise OutputExists("already exists (add --overwrite to replace it)", path=output)
    data = [read_metrics(r) for r in runs]
    labels = run_labels([Path(r) for r in runs])
    plt = _pyplot()

    known = dict(PANELS)
    others = sorted({key for records in data for record in records for key in record} - set(known) - NOT_PLOTTED)
    panels = [(key, title) for key, title in [*PANELS, *((key, key) for key in others)]
              if any(_series(records, key)[0] for records in data)
              and not (key == "lm_loss" and all(_same(records, "lm_loss", "loss") for records in data))]
    moe = [(label, expert_imbalance(records)) for label, records in zip(labels, data) if expert_imbalance(records)]
    count = len(panels) + len(moe)
    columns = 2 if count > 1 else 1
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(6.4 * columns, 3.4 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    flat = list(axes.flat)
    titles = []
    for ax, (key, title) in zip(flat, panels):
        for i, records in enumerate(data):
            steps, values = _series(records, key)
            if steps:
                ax.plot(steps, values, color=colours[i % len(colours)], label=labels[i], marker="." if len(steps) < 30 else None)
        if key in ("loss", "lm_loss", "kd_loss") and log_loss:
            ax.set_yscale("log")
        _decorate(ax, title, len(data) > 1)
        titles.append(title)
    for ax, (label, layers) in zip(flat[len(panels):], moe):
        for layer, (steps, values) in layers.items():
            ax.plot(steps, values, label=layer, marker="." if len(steps) < 30 else None)
        ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
        _decorate(ax, f"expert load: busiest / fair share ({label})", True)
        titles.append(f"expert load ({label})")
    for ax in flat[count:]:
        ax.set_visible(False)
    figure.tight_layout()
    # a temporary sibling renamed into place: a crash or Ctrl-C never leaves half an image at OUT
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial-{os.getpid()}")
    try:
        figure.savefig(partial, dpi=dpi, format=output.suffix[1:].lower())
        os.replace(partial, output)
    finally:
        plt.close(figure)
        partial.unlink(missing_ok=True)
    return {"output": str(output), "runs": labels, "panels": titles,
            "size": [round(6.4 * columns * dpi), round(3.4 * rows * dpi)]}


def _same(records: list[dict[str, Any]], a: str, b: str) -> bool:
    return all(r.get(a) == r.get(b) for r in records)


def _decorate(ax, title: str, legend: bool) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    if legend:
        ax.legend(fontsize=8)


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:
        raise missing_package("matplotlib", "mmzoo plot") from exc
    matplotlib.use("Agg")  # files only: no display needed, none opened
    import matplotlib.pyplot as plt

    return plt
