"""Keep third-party chatter off the terminal. mmzoo says what happened in its own lines; without this, torch,
DeepSpeed, transformers and tqdm add warnings and progress bars to every run that tell the user nothing they
can act on. ``--debug`` / ``MMZOO_DEBUG=1`` keeps all of it. Stdlib only: the CLI calls this before any import.

Only the CLI calls it. The Python API leaves the host process's logging, warning filters and environment as
they are: silencing other libraries is the application's decision (a notebook user may want transformers'
warnings); an application that wants the CLI's quiet calls :func:`quiet_libraries` itself."""
from __future__ import annotations

import logging
import os
import warnings

# Library messages that are noise for mmzoo's users (each is handled or irrelevant in mmzoo's own code paths).
NOISE = (
    "Setting accelerator to CPU",  # DeepSpeed on a machine without a GPU: mmzoo picks the CPU backend itself
    "MPU is not provided",  # a resume from the universal format: mmzoo has no tensor parallelism, tp size 1 is right
)
# torch.distributed deprecations raised inside DeepSpeed's ZeRO code (not calls mmzoo makes)
TORCH_DEPRECATIONS = "ignore::FutureWarning:torch.distributed.c10d_logger"


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(message.startswith(noise) for noise in NOISE)


def quiet_libraries(*, progress_bars: bool = False) -> None:
    """Silence the known noise, in this process and (through the environment) in the worker processes a
    launcher starts. ``progress_bars`` keeps tqdm bars (hub downloads show one)."""
    if os.environ.get("MMZOO_DEBUG"):
        return
    if not progress_bars:
        os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' and zero_to_fp32's shard bars
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")  # "No files have been modified…": hub push says `unchanged` itself
    if TORCH_DEPRECATIONS not in os.environ.get("PYTHONWARNINGS", ""):
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, (os.environ.get("PYTHONWARNINGS"), TORCH_DEPRECATIONS)))
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed.c10d_logger")
    logging.getLogger("DeepSpeed").addFilter(_DropNoise())  # the logger object DeepSpeed configures at import
