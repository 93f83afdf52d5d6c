"""The routing step of ``mmzoo demo``: the upcycled MoIIE model over the demo's preprocessed samples."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any


def run_demo_step(moe: Path, data: Path, workdir: Path, console) -> dict[str, Any]:
    """``mmzoo analyze-routing`` of the upcycle step's modality-expert checkpoint on the preprocess step's data
    (the PNGs only where matplotlib, an optional extra, is installed)."""
    from .api import analyze_routing

    plots = importlib.util.find_spec("matplotlib") is not None
    report = analyze_routing(moe, data, workdir, samples=8, overwrite=True, plots=plots)
    text = report["layers"].get("text.0", next(iter(report["layers"].values())))
    summary = {"out": str(workdir), "samples": report["samples"], "moe_layers": len(report["layers"]),
               "plots": len(report["plots"]), "text.0_modality_overlap": text["modality_overlap"]}
    if console is not None:
        console.print(f"routing: {summary['samples']} samples through {summary['moe_layers']} MoE layers, "
                      f"image·text overlap of the first {text['modality_overlap']} → {workdir}/routing.json"
                      + (f" + {summary['plots']} PNGs" if plots else " (pip install 'mmzoo[plot]' for the PNGs)"), markup=False)
    return summary
