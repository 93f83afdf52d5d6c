"""Shared fixtures: tiny real checkpoints built with transformers, cached per test session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
# One intra-op thread per process, in the tests and in every process they start (side environments, CLI
# subprocesses, training workers): the models are tiny, so a second thread only adds synchronisation, and
# `-n 2` already runs two workers on 2 cores (a LLaVA eval script generating 1024 tokens took 49.6 s of CPU with
# torch's default threads and 19.7 s with one). Set before anything imports torch, which reads it once.
os.environ.setdefault("OMP_NUM_THREADS", "1")


# How `python -m pytest -n 2` (pytest-xdist) splits the suite between its workers. xdist's default hands out
# single tests, so a session or module fixture (tiny models, preprocessed data, DeepSpeed runs) is built on both
# workers whenever a file's tests land on both; here whole files go to one worker (--dist loadfile, unless another
# --dist is given), the files that read one expensive session fixture go to the same worker, and the longest
# files start first, so the workers finish together (a long file handed out last leaves the other worker idle).
SAME_WORKER = {  # file -> the file whose worker runs it: both read tests/train's shared 2-process runs
    "tests/train/test_train_launchers.py": "tests/train/test_train_multi.py",
    "tests/train/test_tracking.py": "tests/train/test_train_multi.py",
}
LONGEST_FIRST = (  # seconds of test time per file in a `-n 2` run on 2 cores (2026-11-27); the rest follow in order
    "tests/train/test_train_multi.py",  # 300 s with the two files above: the 2-process runs
    "tests/test_demo.py",  # 85-115 s: `mmzoo demo`, a 2-process training run, then every README example
    "tests/train/test_kernels.py",  # 85 s: torch.compile (dynamo, inductor)
    "tests/train/test_distill.py",  # 65 s
    "tests/train/test_preflight_and_progress.py",  # 60 s: 1-process runs, four 2-process/1-process runs stopped by a signal
    "tests/train/test_data_workers.py",  # 40 s: in-process runs, stuck and killed data workers, a 2-process run
    "tests/test_tokenizer_files.py",  # 40 s: real tokenizers of 32k-152k tokens
    "tests/test_core_cli.py",  # 40 s: ~40 CLI subprocesses
    "tests/train/test_preference_stage.py",  # 40 s
    "tests/eval/test_llava_eval_scripts.py",  # 35 s: LLaVA's eval scripts in their side environment
)


def _file_of(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    return SAME_WORKER.get(path, path)


def _start_rank(nodeid: str) -> int:
    file = _file_of(nodeid)
    return LONGEST_FIRST.index(file) if file in LONGEST_FIRST else len(LONGEST_FIRST)


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    if getattr(config.option, "numprocesses", None) and config.option.dist == "no":
        config.option.dist = "loadfile"


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: _start_rank(item.nodeid))  # stable: the order within a file stays


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.option.dist != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FileScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _file_of(nodeid)

    config.option.loadscopereorder = False  # keep LONGEST_FIRST, not xdist's most-tests-first
    return FileScheduling(config, log)


# -- no test runs forever, none leaves processes behind (tests/time_bound.py, tests/process_tree.py) -------------
@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_timeout_set_timer(item, settings):
    """pytest-timeout's `thread` method with a clock that set-up of side environments can pause, and that kills the
    test's processes before pytest-timeout ends this one (its other methods are left to it)."""
    if settings.method != "thread":
        return None
    import pytest_timeout

    import time_bound
    from process_tree import kill_descendants

    def expire():
        kill_descendants()  # once this process is gone they would be init's, training on
        pytest_timeout.timeout_timer(item, settings)  # the stacks of every thread, then os._exit(1)

    deadline = time_bound.Deadline(settings.timeout, expire, item.nodeid)
    time_bound.current = deadline

    def cancel():
        deadline.cancel()
        time_bound.current = None

    item.cancel_timeout = cancel  # what pytest-timeout's own pytest_timeout_cancel_timer calls
    deadline.start()
    return True


@pytest.fixture(autouse=True)
def _no_processes_left_behind():
    """A test that failed half-way may leave `mmzoo train`, torchrun or workers running: those it started that are
    still running 5 s after it ended are killed."""
    from process_tree import mmzoo_pids, stop_new_mmzoo

    before = mmzoo_pids()
    yield
    stop_new_mmzoo(before)


def pytest_sessionfinish(session):
    if getattr(session.config.option, "numprocesses", None) and not hasattr(session.config, "workerinput"):
        return  # xdist's controller: its children are the workers, which do this themselves
    from process_tree import stop_new_mmzoo

    stop_new_mmzoo(set(), grace=0)  # no training the suite started may outlive it and keep CI's job alive


class TinyCheckpoints:
    """Builds ``hf`` LLaVA folders on demand (one per text × vision arch × dtype) and keeps them."""

    def __init__(self, root: Path):
        self.root = root
        self._built: dict[tuple, Path] = {}

    def hf(self, text: str = "llama", vision: str = "clip", dtype: str = "float32") -> Path:
        key = (text, vision, dtype)
        if key not in self._built:
            from mmzoo.demo.tiny import build_llava

            path = self.root / f"hf-{text}-{vision}-{dtype}"
            build_llava(path, text, vision, dtype=dtype)
            self._built[key] = path
        return self._built[key]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> TinyCheckpoints:
    return TinyCheckpoints(tmp_path_factory.mktemp("tiny"))
