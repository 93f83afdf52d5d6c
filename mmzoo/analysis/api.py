"""``mmzoo.analysis.analyze_routing``: run an MoE checkpoint over preprocessed samples, write routing statistics.

The model is whatever ``mmzoo.load_model`` builds (transformers' Mixtral / Qwen2-MoE Llava, or mmzoo's
``MoeBlock`` model for modality experts, vision/projector experts, MoE-LLaVA's residual MoE and LibMoE's
routers); the router tap of ``mmzoo train`` (``mmzoo.train.moe.RouterTap``) records every MoE layer's routing,
so the numbers are the ones training logs. Samples come from ``mmzoo preprocess`` output through the training
reader (``mmzoo.train.data.TrainData``), images through the checkpoint's own image processor, one sample per
forward (no padding token is ever routed).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from ..errors import MmzooError

SCHEMA = "mmzoo-routing/1"
REPORT = "routing.json"


def analyze_routing(checkpoint: str | Path, data: str | Path, out: str | Path, *, samples: int = 64,
                    images: str | Path | None = None, seed: int = 0, dtype: str | None = None,
                    device: str | None = None, overwrite: bool = False, plots: bool = True,
                    progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Route ``samples`` samples of the preprocessed folder ``data`` through ``checkpoint``; write
    ``routing.json`` (schema: docs/upcycle.md) and, with ``plots``, the PNGs of :mod:`mmzoo.analysis.plots`
    into the folder ``out``. The samples are the first ``samples`` of the seeded order training reads
    (``seed``), all of them when there are fewer. Returns the report."""
    import torch

    from ..io.atomic import check_output
    from ..io.claim import refuse_overlap
    from ..models.load import load_model
    from ..train.data import TrainData, check_data_fits_model
    from ..train.moe import RouterTap, short_name
    from .stats import LayerOverlap

    checkpoint, data, out = Path(checkpoint), Path(data), Path(out)
    if samples < 1:
        raise MmzooError(f"--samples must be at least 1 (got {samples})")
    if not checkpoint.exists():
        raise MmzooError("checkpoint not found", path=checkpoint)
    if not data.exists():
        raise MmzooError("does not exist (give the folder `mmzoo preprocess -o` wrote)", path=data)
    if not (data / "manifest.json").is_file():
        raise MmzooError("no manifest.json: give a folder written by `mmzoo preprocess`", path=data)
    image_folder = Path(images) if images else _image_folder(data)
    if not image_folder.is_dir():
        raise MmzooError("image folder not found (give the folder the data's images are in with --images)",
                         path=image_folder)
    check_output(out, checkpoint, overwrite)
    refuse_overlap(out, [("data folder", data), ("image folder", image_folder)])
    if plots:
        from ..errors import MissingDependency
        from ..plot import _pyplot

        try:
            _pyplot()  # refuse a missing matplotlib before the model runs, not after
        except MissingDependency as exc:
            raise MissingDependency("the routing plots need matplotlib, which is not installed (pip install 'mmzoo[plot]'); "
                                    "or pass --no-plots for routing.json alone") from exc

    model = load_model(checkpoint, dtype=dtype)
    image_token_id = getattr(model.config, "image_token_id", None)
    tap = RouterTap(model, image_token_id=image_token_id, text_coef=0.0, image_coef=0.0, keep_choices=True)
    if not tap:
        raise MmzooError("not a Mixture-of-Experts checkpoint: it has no MoE layer to analyse (upcycle it with "
                         "`mmzoo convert --moe-experts N`)", path=checkpoint)
    train_data = TrainData(data, image_folder, checkpoint, seed)
    # raises on data the model cannot read; the template advice it returns is for training, not for analysis
    check_data_fits_model(train_data.parameters, checkpoint, image_token_id, stage="moe")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    float_dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    indices = train_data.order.indices(0, min(samples, len(train_data)))
    totals, overlap = None, LayerOverlap()
    tokens = {"text": 0, "image": 0}
    with torch.no_grad():
        for done, index in enumerate(indices, start=1):
            batch = train_data.batch([index])
            input_ids = batch["input_ids"].to(device)
            inputs = {"input_ids": input_ids, "attention_mask": batch["attention_mask"].to(device)}
            if batch.get("pixel_values") is not None:
                inputs["pixel_values"] = batch["pixel_values"].to(device=device, dtype=float_dtype)
            tap.start(input_ids)
            model(**inputs)
            counts = tap.take_stats(collective=False)
            totals = counts if totals is None else totals + counts
            overlap.add(counts.layers, counts.experts, {short_name(n): c for n, c in tap.choices.items()})
            image = int((input_ids == image_token_id).sum()) if image_token_id is not None else 0
            tokens["image"] += image
            tokens["text"] += int(input_ids.numel()) - image
            if progress is not None:
                progress(done, len(indices))
    report = {
        "schema": SCHEMA, "checkpoint": str(checkpoint), "data": str(data), "samples": len(indices), "seed": seed,
        "tokens": tokens, "layers": totals.summary(), "layer_overlap": overlap.summary(),
    }
    from ..io.atomic import atomic_write

    atomic_write(out, checkpoint, overwrite, lambda tmp: write_report(report, tmp, plots=plots))
    return report


def write_report(report: dict[str, Any], folder: Path, *, plots: bool = True) -> list[Path]:
    """``routing.json`` and (``plots``) the PNGs into ``folder`` (created if missing); the report lists the plots."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    if plots:
        from .plots import write_plots

        written = write_plots(report["layers"], folder)
    report["plots"] = [p.name for p in written]
    path = folder / REPORT
    partial = folder / f".{REPORT}.partial-{os.getpid()}"
    partial.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(partial, path)
    return [path, *written]


def _image_folder(data: Path) -> Path:
    """The image folder ``mmzoo preprocess`` read, as its manifest records it."""
    from ..io.structured import load_json

    manifest = load_json(data / "manifest.json")
    folder = (manifest.get("parameters") or {}).get("images") if isinstance(manifest, dict) else None
    if not folder:
        raise MmzooError("the data's manifest names no image folder: give it with --images", path=data)
    return Path(folder)
