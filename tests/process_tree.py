"""The processes a test starts end with it: a timed-out or failed test leaves no `mmzoo train`, torchrun or
training worker running (they would train on for hours beside CI and keep its job busy).

`subprocess.run(timeout=…)` kills only the process it started; `mmzoo train` starts torchrun in a session of its
own, and torchrun starts the workers, so on a timeout they were left running. Here the whole tree goes.
"""
from __future__ import annotations

import subprocess


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


def kill_descendants() -> list:
    """SIGKILL every process below this one (the test process is about to end)."""
    import psutil

    return _kill(psutil.Process().children(recursive=True))


def mmzoo_pids() -> set[int]:
    return {proc.pid for proc in _running_mmzoo()}


def stop_new_mmzoo(before: set[int], grace: float = 5) -> list:
    """Kill the processes running mmzoo (`mmzoo train`, torchrun, training workers) started since ``before``
    (mmzoo_pids()) that do not end within ``grace`` seconds. Only those: the libraries the tests use keep helper
    processes on purpose for the test process's lifetime (wandb's service, inductor's compile workers,
    multiprocessing's resource tracker), and killing one breaks the next test that needs it."""
    import psutil

    new = [proc for proc in _running_mmzoo() if proc.pid not in before]
    if not new:
        return []
    _, alive = psutil.wait_procs(new, timeout=grace)
    return _kill(alive)


def _running_mmzoo() -> list:
    """Descendants whose command line runs an mmzoo module (`-m mmzoo.cli`, `mmzoo.train.worker`, …; the data
    workers of such a process share its command line)."""
    import psutil

    procs = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if any(arg.startswith("mmzoo.") for arg in proc.cmdline()):
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
