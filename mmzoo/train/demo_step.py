"""The training step of ``mmzoo demo``: pretrain -> sft -> distill -> upcycle -> moe -> export -> preference, on the
demo's tiny model.

Every stage is a real (single-process, CPU) DeepSpeed run of a few steps on `mmzoo preprocess` output; each
stage starts from the previous stage's export, as the seeds' recipes chain them.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

def _config(stage: str, model: Path, data: Path, images: Path, out: Path, zero: int, steps: int = 3) -> dict[str, Any]:
    return {
        "stage": stage, "model": str(model), "data": {"path": str(data), "images": str(images)},
        "train": {"max_steps": steps, "micro_batch_size": 2, "global_batch_size": 4, "lr": 2e-3, "precision": "fp32",
                  "warmup_ratio": 0.0, "save_every": steps},
        "deepspeed": {"zero_stage": zero}, "output_dir": str(out),
    }


def run_demo_step(hf_checkpoint: Path, workdir: Path, console) -> dict[str, Any]:
    from ..demo.tiny import make_caption_dataset
    from .config import load_config
    from .export import export
    from .loop import run_training

    started = time.perf_counter()
    workdir = Path(workdir)
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    images, data = make_caption_dataset(workdir, Path(hf_checkpoint))

    report: dict[str, Any] = {}
    model = Path(hf_checkpoint)
    plan = [("pretrain", 2, "internal"), ("sft", 2, "hf")]
    for stage, zero, fmt in plan:
        cfg = load_config(data=_config(stage, model, data, images, workdir / f"run-{stage}", zero))
        summary = run_training(cfg)
        model = workdir / f"{stage}-{fmt}"
        export(cfg.output_dir, model, tgt_fmt=fmt)
        last = summary["last"]
        report[f"{stage}_loss"] = round(last["loss"], 4)
        console.print(f"[green]✓[/] train {stage} (ZeRO-{zero}, {summary['trainable_parameters']:,} trainable): "
                      f"loss {last['loss']:.4f} after {summary['steps']} steps → export {fmt} {model.name}/")
    # LLaVA-MoD's mimic distillation, dense→dense: the pretrained student learns from the SFT model
    cfg = load_config(data={**_config("distill", workdir / "pretrain-internal", data, images, workdir / "run-distill", 2),
                            "teacher": str(model), "distill": {"loss": "kd_lm"}})
    last = run_training(cfg)["last"]
    report["distill_kd_loss"] = round(last["kd_loss"], 4)
    console.print(f"[green]✓[/] train distill (teacher {model.name}/, ZeRO-2): kd_loss {last['kd_loss']:.4f}, "
                  f"lm_loss {last['lm_loss']:.4f}")
    try:
        from ..converters.pipeline import convert
    except ImportError:  # pragma: no cover
        convert = None
    import importlib.util

    if convert is not None and importlib.util.find_spec("mmzoo.upcycle") is not None:
        moe_model = workdir / "sft-moe"
        convert(model, moe_model, tgt_fmt="internal", moe=dict(num_experts=4, top_k=2, style="modality", layers="all"))
        cfg = load_config(data=_config("moe", moe_model, data, images, workdir / "run-moe", 3))
        summary = run_training(cfg)
        final = workdir / "moe-llava"
        export(cfg.output_dir, final, tgt_fmt="moe-llava")
        last = summary["last"]
        report["moe_loss"] = round(last["loss"], 4)
        report["moe_aux_loss"] = round(last["aux_loss"], 5)
        console.print(f"[green]✓[/] train moe (upcycled 4 experts top-2, ZeRO-3): loss {last['loss']:.4f} "
                      f"(aux {last['aux_loss']:.4f}) → export moe-llava {final.name}/")
        # LLaVA-MoD's preference distillation: the sparse policy against the dense SFT model as the reference
        from ..demo.tiny import make_preference_dataset

        pairs = make_preference_dataset(workdir, Path(hf_checkpoint), pairs=8, images=images)
        cfg = load_config(data={**_config("preference", moe_model, pairs, images, workdir / "run-preference", 2, steps=2),
                                "reference": str(model), "preference": {"loss": "kto_pair"}})
        last = run_training(cfg)["last"]
        report["preference_margin"] = round(last["rewards/margins"], 4)
        console.print(f"[green]✓[/] train preference (kto_pair, reference {model.name}/, ZeRO-2): loss {last['loss']:.4f}, "
                      f"reward margin {last['rewards/margins']:.4f}")
        model = final
    report["final"] = str(model)
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report
