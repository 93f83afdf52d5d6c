"""Load DeepSpeed's pickled checkpoint files without letting them run code.

A ZeRO checkpoint (``*model_states.pt``, ``*optim_states.pt``, the universal format's ``*.pt``) is a
pickle, and a pickle can call any function while it loads. People share run folders, so mmzoo treats
them like any downloaded file: torch's ``weights_only`` unpickler, which builds only tensors, plain
containers and the classes listed here. The list is what real checkpoints hold (found by building
ZeRO-0/1/2/3 checkpoints, fp32 and bf16, dense and MoE, optimizer offload, and their universal
conversions, and listing their globals with
``torch.serialization.get_unsafe_globals_in_checkpoint``); anything else is refused in one line that
names the file and the type, before DeepSpeed sees the file.

DeepSpeed loads these files itself (``zero_to_fp32``, ``engine.load_checkpoint``, ``ds_to_universal``)
with ``weights_only=False``; :func:`weights_only_loads` makes every ``torch.load`` inside its block a
``weights_only`` load with this allowlist, and :func:`check_folder` inspects every pickle of a folder
without loading it (for DeepSpeed code that runs in a subprocess).
"""
from __future__ import annotations

import importlib
import pickle
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..errors import CorruptFile

# "module.qualname" of every non-torch type a DeepSpeed checkpoint written by mmzoo holds.
ALLOWED_TYPES = (
    "deepspeed.runtime.zero.config.ZeroStageEnum",  # optimizer states: the ZeRO stage
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",  # optimizer states: static loss scale (fp32/bf16)
    # fp16's dynamic loss scaling (GPU runs; not observed on CPU, where mmzoo trains in fp32 or bf16)
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.utils.tensor_fragment.fragment_address",  # ZeRO-1/2: where each parameter's slice lives
)


class UnsafeCheckpoint(CorruptFile):
    """A pickled checkpoint file holds a type outside the allowlist (or is not a torch zip file)."""


def _allowed() -> list[Any]:
    classes = []
    for dotted in ALLOWED_TYPES:
        module_name, _, name = dotted.rpartition(".")
        try:
            classes.append(getattr(importlib.import_module(module_name), name))
        except (ImportError, AttributeError):  # another DeepSpeed version: its files cannot hold the type either
            continue
    return classes


def _refusal(path: str | Path, detail: str) -> UnsafeCheckpoint:
    return UnsafeCheckpoint(
        f"refusing to load {Path(path).name}: it holds {detail}, which a DeepSpeed checkpoint does not need "
        "and which could run code while loading (mmzoo loads checkpoints with torch's weights_only unpickler)",
        path=path)


def check_file(path: str | Path) -> None:
    """Refuse ``path`` when its pickle names a global outside torch's safe set and ALLOWED_TYPES.

    Reads only the pickle's opcodes; nothing in the file is executed."""
    import torch

    from ..io.torch_zip import check_torch_zip

    check_torch_zip(path)  # a deflated storage would be inflated in memory by the load (a zip bomb)
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as exc:  # noqa: BLE001 - a legacy (non-zip) pickle or a damaged file: not loadable safely
        raise UnsafeCheckpoint(f"cannot inspect {Path(path).name} safely ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:160] if str(exc) else 'no detail'})", path=path) from None
    unexpected = sorted(set(unsafe) - set(ALLOWED_TYPES))
    if unexpected:
        raise _refusal(path, f"the type {unexpected[0]}" + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))


def check_folder(folder: str | Path) -> None:
    """:func:`check_file` for every ``*.pt`` below ``folder``."""
    for path in sorted(Path(folder).rglob("*.pt")):
        if path.is_file():
            check_file(path)


def load(path: str | Path, **kwargs: Any) -> Any:
    """``torch.load`` with ``weights_only=True`` and the allowlist; a refusal names the file."""
    import torch

    kwargs["weights_only"] = True
    kwargs.setdefault("map_location", "cpu")
    with torch.serialization.safe_globals(_allowed()):
        try:
            return _original_load()(path, **kwargs)
        except pickle.UnpicklingError as exc:
            raise _refusal(path, _what_was_refused(exc)) from None


def _what_was_refused(exc: Exception) -> str:
    # torch says "Unsupported global: GLOBAL posix.system ..." or "unsupported GLOBAL posix.system whose ..."
    import re

    match = re.search(r"GLOBAL ([\w.]+)", str(exc))
    if match:
        return f"the type {match.group(1)}"
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"something the weights_only unpickler refuses ({(lines[-1] if lines else type(exc).__name__)[:160]})"


_ORIGINAL: list[Any] = []


def _original_load():
    import torch

    return _ORIGINAL[0] if _ORIGINAL else torch.load


@contextmanager
def weights_only_loads() -> Iterator[None]:
    """Inside this block every ``torch.load`` (DeepSpeed's included) is :func:`load`."""
    import torch

    if _ORIGINAL:  # already inside one
        yield
        return
    _ORIGINAL.append(torch.load)

    def guarded(f, *args: Any, **kwargs: Any) -> Any:
        if args:  # torch.load(f, map_location, pickle_module, ...): only map_location is ever passed this way
            kwargs.setdefault("map_location", args[0])
        kwargs.pop("pickle_module", None)
        kwargs.pop("weights_only", None)
        return load(f, **kwargs)

    torch.load = guarded
    try:
        yield
    finally:
        torch.load = _ORIGINAL.pop()


def run_module_weights_only(module: str) -> None:
    """Run ``python -m module`` (with this process's ``sys.argv``) inside :func:`weights_only_loads`; for
    DeepSpeed tools mmzoo starts as a subprocess (``ds_to_universal``). Its worker processes are forked,
    so they inherit the guarded ``torch.load``."""
    import runpy

    with weights_only_loads():
        runpy.run_module(module, run_name="__main__", alter_sys=True)
