"""``mmzoo export RUN_DIR``: a DeepSpeed checkpoint (any ZeRO stage, any world size) -> a normal checkpoint.

The weights are consolidated (ZeRO-1/2/3: DeepSpeed's ``zero_to_fp32``, i.e. the fp32 master weights,
frozen parameters included; ZeRO-0: the module state), split back from in-memory names into mmzoo's
canonical names (:mod:`mmzoo.train.names`), and written by ``mmzoo.converters.pipeline.write_checkpoint`` in any
format, with the tokenizer, image processor and spec saved in ``RUN_DIR/meta`` at training start.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import MmzooError
from .checkpoint import read_marker

EXPORT_DTYPES = ("keep", "bf16", "fp16", "fp32")


def consolidated_state(tag_dir: Path) -> dict[str, Any]:
    """The full in-memory state dict of a saved engine (names as the model holds them)."""
    from . import pickles

    info = read_marker(tag_dir)  # {} when missing or unreadable
    stage = info.get("zero_stage")
    model_states = tag_dir / "mp_rank_00_model_states.pt"  # ZeRO-0/1/2 (ZeRO-3: zero_pp_rank_R_mp_rank_00_model_states.pt)
    if not any(tag_dir.glob("*model_states.pt")):
        raise MmzooError("no *model_states.pt: not a DeepSpeed checkpoint", path=tag_dir)
    pickles.check_folder(tag_dir)  # a shared run folder is untrusted: no pickle runs code (see train/pickles.py)
    if stage == 0 or (stage is None and not any(tag_dir.glob("*optim_states.pt"))):
        states = pickles.load(model_states)
        if not isinstance(states, dict) or not isinstance(states.get("module"), dict):
            raise MmzooError("not a DeepSpeed model-states file (no 'module' state dict)", path=model_states)
        return dict(states["module"])
    import contextlib
    import io

    from .loop import pick_accelerator

    pick_accelerator()  # name DeepSpeed's accelerator ourselves: no "unable to detect" warning on CPU machines
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from ..errors import third_party_load

    # its progress prints would interleave with mmzoo's output; its torch.load calls become weights_only loads;
    # what it raises on a file of another shape (ValueError, AttributeError, KeyError) is one line naming the folder
    with contextlib.redirect_stdout(io.StringIO()), pickles.weights_only_loads(), \
            third_party_load(tag_dir, "this ZeRO checkpoint", library="DeepSpeed's zero_to_fp32"):
        state = get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    if stage != 3 and model_states.is_file():
        # ZeRO-1 keeps no frozen-parameter record zero_to_fp32 could read (DeepSpeed writes one only when
        # gradients are partitioned, ZeRO-2): frozen tensors are unchanged, so the module state holds them.
        module = pickles.load(model_states).get("module") or {}
        state = {**{k: v for k, v in module.items() if k not in state}, **state}
    empty = [k for k, v in state.items() if v.numel() == 0]
    if empty:
        raise MmzooError(f"the consolidated checkpoint has empty tensors ({', '.join(empty[:3])})", path=tag_dir)
    return dict(state)


def pick_checkpoint(run_dir: Path, step: int | None) -> tuple[int, Path]:
    from . import checkpoint as ck

    found = ck.list_checkpoints(run_dir)
    if not found:
        raise MmzooError("has no finished checkpoint (checkpoints/step_*/COMPLETE)", path=run_dir)
    if step is None:
        step = max(found)
    if step not in found:
        raise MmzooError(f"has no checkpoint for step {step} (available: {', '.join(map(str, found))})", path=run_dir)
    return step, found[step]


def trained_checkpoint(run_dir: str | Path, step: int | None = None, dtype: str = "keep"):
    """A lazy ``Checkpoint`` (canonical names) of the trained weights at ``step`` (default: the latest)."""
    from ..io.dtypes import CLI_DTYPES, CONFIG_DTYPE_NAMES, from_torch, is_float, to_torch
    from ..io.tensors import Planned, Source
    from ..checkpoint.spec import Checkpoint
    from .checkpoint import load_meta
    from .names import memory_layout, to_canonical

    if dtype not in EXPORT_DTYPES:
        raise MmzooError(f"invalid --dtype {dtype!r} (allowed: {', '.join(EXPORT_DTYPES)})")
    run_dir = Path(run_dir)
    spec, shapes, tokenizer, processor, extra, _source = load_meta(run_dir)
    step, tag_dir = pick_checkpoint(run_dir, step)
    markers = {n: Planned.of(Source(n, d, s)) for n, (d, s) in shapes.items()}
    layout = memory_layout(Checkpoint(spec, markers, tag_dir, "internal"))
    state = consolidated_state(tag_dir)
    canonical = to_canonical(state, layout, {n: s for n, (_, s) in shapes.items()})
    tensors = {}
    for name, tensor in canonical.items():
        original = shapes[name][0]
        target = original if dtype == "keep" or not is_float(original) else CLI_DTYPES[dtype]
        value = tensor.detach().to(to_torch(target)).contiguous()
        tensors[name] = Planned.of(Source(name, from_torch(value.dtype), tuple(value.shape), load=lambda v=value: v, origin=str(tag_dir)))
    if dtype != "keep":
        spec = spec.model_copy(update={"dtype": CONFIG_DTYPE_NAMES[CLI_DTYPES[dtype]]})
    return step, Checkpoint(spec, tensors, tag_dir, "internal", tokenizer, processor, extra)


def export(run_dir: str | Path, out: str | Path, *, tgt_fmt: str = "hf", step: int | None = None, dtype: str = "keep",
           overwrite: bool = False, shard_size: str = "5GB") -> dict[str, Any]:
    from ..converters import registry as formats
    from ..converters.pipeline import write_checkpoint
    from ..io.atomic import check_output

    formats.get(tgt_fmt)  # an unknown format, an existing OUT or OUT inside the run fail before any work
    check_output(Path(out), Path(run_dir), overwrite)
    step, ckpt = trained_checkpoint(run_dir, step, dtype)
    write_checkpoint(ckpt, out, tgt_fmt, overwrite=overwrite, shard_size=shard_size)
    return {"run_dir": str(run_dir), "step": step, "output": str(out), "format": tgt_fmt, "tensors": len(ckpt.tensors),
            "bytes": sum(p.nbytes for p in ckpt.tensors.values())}
