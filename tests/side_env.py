"""Cached side virtual environments for tests that run another system's code (the original LLaVA
code with transformers 4.37, transformers 4.46 as a reader of mmzoo's output).

A side environment pins its own packages (transformers, tokenizers, numpy, …) and borrows the rest —
torch above all — from the interpreter running pytest. ``venv --system-site-packages`` cannot do that
when pytest itself runs from a virtual environment: it exposes the *base* interpreter's site-packages,
which has no torch, so the probe fails and the environment is rebuilt on every run. Instead the side
environment is a plain venv with a ``.pth`` file listing the site-packages directories of the running
interpreter: they come after the venv's own site-packages, so the pins win and everything else is
shared, whether pytest runs from the system interpreter, a pyenv, or a venv inside the clone.

Environments live in ``~/.cache/mmzoo-tests/<name>`` (``MMZOO_TEST_CACHE`` moves the root), are built
once under a file lock (parallel pytest processes wait for one build) and are reused as long as their
probe passes.
"""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import time_bound

PTH_NAME = "_mmzoo_borrowed_site_packages.pth"


def cache_root() -> Path:
    return Path(os.environ.get("MMZOO_TEST_CACHE") or Path.home() / ".cache" / "mmzoo-tests")


def borrowed_site_packages() -> list[str]:
    """The running interpreter's site-packages directories, in import order (torch lives in one)."""
    seen: list[str] = []
    for entry in sys.path:
        if entry and Path(entry).name in ("site-packages", "dist-packages") and Path(entry).is_dir() and entry not in seen:
            seen.append(str(Path(entry).resolve()))
    return seen


def clean_env() -> dict[str, str]:
    """Environment for running a side interpreter: without PYTHONPATH (which points at mmzoo and its
    transformers 5 world) and without the parent's virtualenv markers."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "__PYVENV_LAUNCHER__")}


def _probe(python: Path, probe: str) -> bool:
    if not python.exists():
        return False
    proc = subprocess.run([str(python), "-c", probe], capture_output=True, env=clean_env(), timeout=300)
    return proc.returncode == 0


def _site_packages(python: Path) -> Path:
    out = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, env=clean_env(),
    )
    return Path(out.stdout.strip())


def side_python(name: str, packages: list[str], probe: str, *, no_deps: tuple[str, ...] = (), override_env: str | None = None,
                isolated: bool = False) -> str:
    """Path of a Python interpreter with ``packages`` (pip requirement strings) installed over the
    running interpreter's packages; ``no_deps`` are installed afterwards with ``--no-deps``.
    ``probe`` is Python code that must run without error in a ready environment (check versions
    and ``import torch`` there). ``override_env`` names an environment variable that, when set,
    gives an existing interpreter to use instead. ``isolated``: borrow nothing (a system that pins its
    own torch, or that the running interpreter's other packages would break); ``packages`` then lists all."""
    if override_env and os.environ.get(override_env):
        return os.environ[override_env]
    env = cache_root() / name
    python = env / "bin" / "python"
    if _probe(python, probe):
        return str(python)
    env.parent.mkdir(parents=True, exist_ok=True)
    # the test's clock stops while it waits for or builds the environment (minutes, once), bounded by itself
    with time_bound.paused(), open(env.parent / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another pytest process may be building it right now
        if _probe(python, probe):
            return str(python)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(env)], check=True, capture_output=True, env=clean_env())
        if not isolated:
            (_site_packages(python) / PTH_NAME).write_text("\n".join(borrowed_site_packages()) + "\n", encoding="utf-8")
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        for args in ([*packages], ["--no-deps", *no_deps] if no_deps else None):
            if args:
                proc = subprocess.run([*pip, *args], capture_output=True, text=True, env=clean_env(),
                                      timeout=time_bound.SET_UP_BOUND_S)
                if proc.returncode != 0:
                    raise RuntimeError(f"building the side environment {env} failed: pip install {' '.join(args)}\n{proc.stderr[-3000:]}")
        proc = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, env=clean_env())
        if proc.returncode != 0:
            raise RuntimeError(f"the side environment {env} was built but its probe fails:\n{proc.stderr[-3000:]}")
    return str(python)


def run_side_script(python: str, script: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run a helper script in a side environment; fails the calling test with the script's stderr."""
    proc = subprocess.run([python, str(script), *args], capture_output=True, text=True, env=clean_env(), timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{script.name} failed in {python}:\n{proc.stderr[-3000:]}")
    return proc


TRANSFORMERS4_READER = Path(__file__).parent / "transformers4" / "read_with_transformers4.py"


def read_with_transformers4(jobs: list[dict], workdir: Path) -> list[dict]:
    """Read hf folders in transformers 4.46 (one subprocess for all jobs; see the script for the job
    fields); returns what it saw, one dict per job."""
    import json

    import torch

    for number, job in enumerate(jobs):
        job.setdefault("out", str(workdir / f"transformers4-{number}.pt"))
    (workdir / "transformers4-jobs.json").write_text(json.dumps(jobs))
    run_side_script(transformers4_python(), TRANSFORMERS4_READER, str(workdir / "transformers4-jobs.json"))
    return [torch.load(job["out"], weights_only=False) for job in jobs]


# The two side environments the tests use. Their names are cache paths other checkouts share:
# change a pin together with the probe that checks it.
LLAVA_PACKAGES = ["transformers==4.37.2", "tokenizers<0.19", "numpy<2", "accelerate==0.26.1", "sentencepiece", "einops", "shortuuid", "protobuf"]
LLAVA_PROBE = "import torch, llava, transformers; assert transformers.__version__ == '4.37.2'"

TRANSFORMERS4_PACKAGES = ["transformers==4.46.3", "numpy<2", "pillow", "sentencepiece", "safetensors", "protobuf"]
TRANSFORMERS4_PROBE = "import torch, PIL, sentencepiece, transformers; assert transformers.__version__ == '4.46.3'"


def llava_python() -> str:
    """The original LLaVA code (llava-torch 1.2.2.post1) with transformers 4.37.2."""
    return side_python("llava-env", LLAVA_PACKAGES, LLAVA_PROBE, no_deps=("llava-torch==1.2.2.post1",), override_env="MMZOO_LLAVA_PYTHON")


def transformers4_python() -> str:
    """transformers 4.46.3, the last 4.x line, as a reader of mmzoo's hf output."""
    return side_python("transformers4-env", TRANSFORMERS4_PACKAGES, TRANSFORMERS4_PROBE, override_env="MMZOO_TRANSFORMERS4_PYTHON")


# LibMoE's pins (Fsoft-AIC/LibMoE pyproject.toml: transformers 4.43.0, tokenizers 0.19.1; its model code imports einops and loguru)
LIBMOE_PACKAGES = ["transformers==4.43.0", "tokenizers==0.19.1", "einops", "loguru", "numpy<2", "safetensors", "sentencepiece", "protobuf"]
LIBMOE_PROBE = "import torch, einops, loguru, transformers; assert transformers.__version__ == '4.43.0'"


def libmoe_python() -> str:
    """transformers 4.43.0 + einops: what LibMoE's vision_language_model code runs on."""
    return side_python("libmoe-env", LIBMOE_PACKAGES, LIBMOE_PROBE, override_env="MMZOO_LIBMOE_PYTHON")
