"""Typed errors. The library raises only these; the CLI turns them into one line on stderr, exit 2."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class MmzooError(Exception):
    """Base class: a problem with the user's input that deserves one clear line, not a traceback."""

    def __init__(self, message: str, *, path: str | Path | None = None, hint: str | None = None):
        self.path = str(path) if path is not None else None
        self.hint = hint
        super().__init__(message)

    def one_line(self) -> str:
        text = str(self)
        if self.path and self.path not in text:
            text = f"{self.path}: {text}"
        if self.hint:
            text = f"{text} ({self.hint})"
        return " ".join(text.split())


class UnknownFormat(MmzooError):
    pass


class UnknownArchitecture(MmzooError):
    pass


class MissingTensor(MmzooError):
    pass


class UnexpectedTensor(MmzooError):
    pass


class ShapeMismatch(MmzooError):
    pass


class CorruptFile(MmzooError):
    pass


class ConfigError(MmzooError):
    pass


class OutputExists(MmzooError):
    pass


class MissingDependency(MmzooError):
    pass


# Optional packages and the pyproject extra that installs each (import name -> extra).
OPTIONAL_PACKAGES = {"deepspeed": "train", "accelerate": "train", "matplotlib": "plot", "tensorboard": "tensorboard",
                     "wandb": "wandb", "mlflow": "mlflow", "flash_attn": "flash", "liger_kernel": "liger"}


def missing_package(module: str, purpose: str) -> MissingDependency | None:
    """The one-line error for an optional package that is not installed, or None when ``module`` is not one of
    them. DeepSpeed's installer imports torch, hence --no-build-isolation for the train extra."""
    top = module.split(".")[0]
    extra = OPTIONAL_PACKAGES.get(top)
    if extra is None:
        return None
    flag = " --no-build-isolation" if extra == "train" else ""
    return MissingDependency(f"{purpose} needs {top}, which is not installed (pip install{flag} 'mmzoo[{extra}]')")


def require_package(module: str, purpose: str) -> None:
    """Fail in one line before any work starts when an optional package ``purpose`` needs is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise missing_package(module, purpose) or MissingDependency(f"{purpose} needs {module}, which is not installed")


class HubError(MmzooError):
    """A push/pull to the Hugging Face Hub (or a mirror) failed: not found, unauthorized, network, refused."""
    pass


class UpcycleError(MmzooError):
    """A dense -> MoE upcycling request that cannot be honoured (bad layer spec, top-k, MoE source...)."""


def pydantic_line(exc) -> str:
    """One line for a pydantic ValidationError: the first problem's location and message."""
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "value"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"invalid {where}: {first.get('msg')}{more}"


@contextmanager
def naming(path: str | Path) -> Iterator[None]:
    """Errors raised inside carry ``path`` when they name no file themselves; pydantic validation
    errors become a ConfigError naming it (a bare pydantic line does not say which file was wrong)."""
    try:
        yield
    except MmzooError as exc:
        if exc.path is None:
            exc.path = str(path)
        raise
    except Exception as exc:
        if type(exc).__name__ == "ValidationError" and type(exc).__module__.startswith("pydantic"):
            raise ConfigError(pydantic_line(exc), path=path) from None
        raise


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """An OSError raised inside without a file name (a failed ``write()`` or ``copy_file_range``:
    "No space left on device") is re-raised naming ``path``, the output being written."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise


@contextmanager
def third_party_load(path: str | Path | None, what: str, library: str = "transformers") -> Iterator[None]:
    """transformers reading a checkpoint's files (tokenizer.json, tokenizer_config.json, processor and rope
    settings) raises whatever its parsing meets: a KeyError for an unknown rope type, a TypeError for an
    ``added_tokens_decoder`` of the wrong shape; DeepSpeed's ``zero_to_fp32`` likewise for a crafted ZeRO folder.
    For a downloaded file that is bad input, not a bug: one line."""
    try:
        yield
    except (MmzooError, MemoryError, RecursionError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - transformers and tokenizers raise every builtin type
        detail = " ".join(str(exc).split())[:200] or "no message"
        raise CorruptFile(f"{library} cannot load {what} ({type(exc).__name__}: {detail})", path=path) from exc
