"""The plot step of ``mmzoo demo``: the demo's training runs in one image, as `mmzoo plot` draws them."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import MissingDependency


def run_demo_step(train_dir: Path, workdir: Path, console) -> dict[str, Any]:
    from . import plot_runs

    runs = sorted(p for p in Path(train_dir).glob("run-*") if (p / "metrics.jsonl").is_file())
    if not runs:
        return {"runs": 0, "note": "no training runs to draw (the train step did not run)"}
    output = Path(workdir) / "training.png"
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        drawn = plot_runs(runs, output, overwrite=True)
    except MissingDependency as exc:  # matplotlib is an optional extra: the demo goes on without the picture
        console.print(f"  mmzoo plot: skipped ({exc})", markup=False)
        return {"runs": len(runs), "image": "skipped: matplotlib is not installed (pip install 'mmzoo[plot]')"}
    console.print(f"  mmzoo plot {' '.join(p.name for p in runs)} -o {output}")
    return {"runs": len(runs), "image": str(output), "panels": len(drawn.get("panels", []))}
