"""The processes a test starts end with it: a timed-out or failed test leaves no `mmzoo train`, torchrun or
training worker running (they would train on for hours beside CI and keep its job busy).

`subprocess.run(timeout=…)` kills only the process it started; `mmzoo train` starts torchrun in a session of its
own, and torchrun starts the workers, so on a timeout they were left running. Here the whole tree goes.
"""
from __future__ import annotations

import subprocess

# multiprocessing's helper processes live as long as the test process and are restarted with a warning when killed
_LONG_LIVED_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def kill_tree(root) -> list:
    """SIGKILL ``root`` (a pid or psutil.Process) and every process below it; the descendants are listed before
    anything is killed (once their parent is gone they belong to init and cannot be found from here)."""
    import psutil

    try:
        root = root if isinstance(root, psutil.Process) else psutil.Process(root)
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return []
    return _kill(procs)


def kill_descendants(*, keep=()) -> list:
    """SIGKILL every process below this one but the pids in ``keep`` and multiprocessing's helpers."""
    return _kill([proc for proc in _descendants() if proc.pid not in keep])


def descendant_pids() -> set[int]:
    return {proc.pid for proc in _descendants()}


def stop_new_processes(before: set[int], grace: float = 5) -> list:
    """Kill the processes started since ``before`` (descendant_pids()) that do not end within ``grace`` seconds."""
    import psutil

    new = [proc for proc in _descendants() if proc.pid not in before]
    if not new:
        return []
    _, alive = psutil.wait_procs(new, timeout=grace)
    return _kill(alive)


def _descendants() -> list:
    import psutil

    procs = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if not any(helper in " ".join(proc.cmdline()) for helper in _LONG_LIVED_HELPERS):
                procs.append(proc)
        except psutil.Error:  # ended meanwhile
            continue
    return procs


def _kill(procs: list) -> list:
    import psutil

    alive = []
    for proc in procs:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                proc.kill()
                alive.append(proc)
        except psutil.Error:
            continue
    psutil.wait_procs(alive, timeout=10)
    return alive


def run_bounded(command: list[str], *, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(command, timeout=timeout, **kwargs)``, except that a timeout (or an interrupted test)
    kills the process and everything it started, not only the process."""
    if kwargs.pop("capture_output", False):
        kwargs.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with subprocess.Popen(command, **kwargs) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except BaseException:
            kill_tree(proc.pid)
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
