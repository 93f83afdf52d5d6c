"""Run folder layout and checkpoint bookkeeping.

``output_dir/``
  ``params.yaml``           the resolved config
  ``metrics.jsonl``         one JSON line per step
  ``meta/``                 the source checkpoint's spec, tensor list, tokenizer and image processor
                            (what ``mmzoo export`` needs besides the weights)
  ``checkpoints/step_0000100/``  DeepSpeed checkpoints (any ZeRO stage); ``COMPLETE`` marks a finished one
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from ..errors import MmzooError, naming

TAG = re.compile(r"step_(\d+)\Z")
COMPLETE = "COMPLETE"


def tag_for(step: int) -> str:
    return f"step_{step:07d}"


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> dict[int, Path]:
    """Finished checkpoints by step (a folder without ``COMPLETE`` was interrupted while saving)."""
    root = checkpoints_dir(run_dir)
    out: dict[int, Path] = {}
    if root.is_dir():
        for child in root.iterdir():
            match = TAG.match(child.name)
            if match and child.is_dir() and (child / COMPLETE).is_file():
                out[int(match.group(1))] = child
    return dict(sorted(out.items()))


def latest(run_dir: Path) -> tuple[int, Path] | None:
    found = list_checkpoints(run_dir)
    if not found:
        return None
    step = max(found)
    return step, found[step]


def mark_complete(path: Path, info: dict[str, Any]) -> None:
    (path / COMPLETE).write_text(json.dumps(info, indent=2) + "\n")


def read_marker(path: Path) -> dict[str, Any]:
    """What ``COMPLETE`` records about the run that wrote the checkpoint at ``path`` ({} if unreadable)."""
    from ..errors import MmzooError
    from ..io.structured import load_json

    try:
        saved = load_json(path / COMPLETE)  # bounded: a shared run folder's marker may be anything
    except (MmzooError, OSError):
        return {}
    return saved if isinstance(saved, dict) else {}


def needs_universal(path: Path, step: int, *, world_size: int, zero_stage: int) -> bool:
    """Whether resuming from ``path`` needs DeepSpeed's universal checkpoint format.

    ZeRO-1/2/3 partition the optimizer states by process, so a resume with another world size goes through
    a universal checkpoint (``universal_checkpoint``), which DeepSpeed re-partitions on load. A change of ZeRO
    stage is refused in one line."""
    saved = read_marker(path)
    was_world, was_stage = saved.get("world_size"), saved.get("zero_stage")
    if was_world is None or was_stage is None:
        return False  # a marker from an older mmzoo: let DeepSpeed judge
    if was_stage != zero_stage:
        raise MmzooError(
            f"the checkpoint of step {step} was written with ZeRO-{was_stage} and this run uses ZeRO-{zero_stage}: "
            f"resume with deepspeed.zero_stage {was_stage}, or export it (`mmzoo export`) and start a new run from "
            "the export", path=path)
    return was_stage > 0 and was_world != world_size


UNIVERSAL_SUFFIX = "_universal"


def universal_path(path: Path) -> Path:
    """Where the universal form of the checkpoint at ``path`` lives (finished when it holds ``COMPLETE``)."""
    return path.with_name(path.name + UNIVERSAL_SUFFIX)


def universal_checkpoint(path: Path) -> Path:
    """The universal form of the DeepSpeed checkpoint at ``path`` (converted once, next to it, atomically)."""
    import os
    import subprocess
    import sys

    from . import pickles

    target = universal_path(path)
    if (target / COMPLETE).is_file():
        pickles.check_folder(target)  # it may have come with a shared run folder, not from this mmzoo
        return target
    pickles.check_folder(path)
    work = path.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    # DeepSpeed's converter unpickles with weights_only=False: run it with mmzoo's weights_only torch.load.
    command = [sys.executable, "-c", "import sys; from mmzoo.train.pickles import run_module_weights_only; "
               "run_module_weights_only('deepspeed.checkpoint.ds_to_universal')", "--input_folder", str(path),
               "--output_folder", str(work), "--num_extract_workers", "1", "--num_merge_workers", "1",
               "--inject_missing_state"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        shutil.rmtree(work, ignore_errors=True)
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise MmzooError(f"could not convert the checkpoint to DeepSpeed's universal format for a resume with another "
                         f"world size ({last})", path=path)
    shutil.copy2(path / COMPLETE, work / COMPLETE)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(work, target)
    return target


# Settings a resumed run may change without it being news: where it writes, how long it runs, how it logs.
_FREE_TO_CHANGE = {"output_dir", "train.max_steps", "train.epochs", "train.save_every", "train.keep_checkpoints",
                   "train.log_every", "data.num_workers", "data.verify_shards", "data.worker_timeout",
                   "train.async_checkpoint"}


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def changed_settings(path: Path, params: dict[str, Any]) -> list[str]:
    """``key old → new`` for every setting that differs from the run that wrote the checkpoint at ``path``."""
    saved = read_marker(path).get("params")
    if not isinstance(saved, dict):
        return []
    before, after = _flat(saved), _flat(params)
    return [f"{key} {before.get(key)!r} → {after.get(key)!r}" for key in sorted(set(before) | set(after))
            if key not in _FREE_TO_CHANGE and before.get(key) != after.get(key)]


def prune(run_dir: Path, keep: int | None) -> None:
    if not keep:
        return
    found = list_checkpoints(run_dir)
    for step in list(found)[:-keep]:
        shutil.rmtree(found[step], ignore_errors=True)
        shutil.rmtree(universal_path(found[step]), ignore_errors=True)


def save_meta(ckpt, run_dir: Path) -> None:
    """Everything but the weights that an export needs, so the run folder stands on its own."""
    from ..converters.common import copy_files, write_json

    meta = Path(run_dir) / "meta"
    if meta.exists():
        shutil.rmtree(meta)
    (meta / "tokenizer").mkdir(parents=True)
    write_json(meta / "spec.json", ckpt.spec.model_dump(mode="json"))
    write_json(meta / "tensors.json", {n: {"dtype": p.dtype, "shape": list(p.shape)} for n, p in ckpt.tensors.items()})
    copy_files(ckpt.tokenizer_files, meta / "tokenizer")
    if ckpt.extra_files:
        copy_files(ckpt.extra_files, meta / "extra")
    if ckpt.image_processor is not None:
        write_json(meta / "preprocessor_config.json", ckpt.image_processor)
    write_json(meta / "source.json", {"path": str(ckpt.path), "format": ckpt.format})


def load_meta(run_dir: Path):
    """(spec, {name: (dtype, shape)}, tokenizer files, image processor, extra files, source info)."""
    from ..checkpoint.locate import read_json
    from ..checkpoint.spec import ModelSpec

    from ..io.confine import confine_checkpoint

    meta = Path(run_dir) / "meta"
    if not (meta / "spec.json").is_file():
        raise MmzooError("not an mmzoo training run (no meta/spec.json)", path=run_dir)
    confine_checkpoint(run_dir)  # export copies these files: none may be a symlink out of the run folder
    with naming(meta / "spec.json"):
        spec = ModelSpec.model_validate(read_json(meta / "spec.json"))
    try:
        tensors = {n: (v["dtype"], tuple(v["shape"])) for n, v in read_json(meta / "tensors.json").items()}
    except (KeyError, TypeError) as exc:
        raise MmzooError(f"corrupt: an entry lacks dtype/shape ({exc})", path=meta / "tensors.json") from None
    tokenizer = {p.name: p for p in sorted((meta / "tokenizer").iterdir()) if p.is_file()}
    extra = {p.name: p for p in sorted((meta / "extra").iterdir())} if (meta / "extra").is_dir() else {}
    processor = read_json(meta / "preprocessor_config.json") if (meta / "preprocessor_config.json").is_file() else None
    return spec, tensors, tokenizer, processor, extra, read_json(meta / "source.json")
