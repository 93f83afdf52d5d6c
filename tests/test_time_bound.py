"""The suite's own safety net (tests/time_bound.py, tests/process_tree.py): a hung test fails in its time bound and
takes the processes it started with it; set-up of cached environments does not count against it."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

TESTS = Path(__file__).parent
ROOT = TESTS.parent

HANGING = '''
import os, subprocess, sys, time
from pathlib import Path

import pytest

@pytest.mark.timeout(4)
def test_hangs(tmp_path):
    # a child that starts a grandchild in a session of its own, as `mmzoo train` starts torchrun
    child = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True); "
                              "print(p.pid, flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    grandchild = child.stdout.readline().strip()
    Path(os.environ["HANG_PIDS"]).write_text(f"{child.pid} {grandchild}")
    time.sleep(600)

@pytest.mark.timeout(3)
def test_set_up_pauses_the_clock():
    import time_bound

    with time_bound.paused():
        time.sleep(5)
'''


def _run_pytest(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_hang.py").write_text(HANGING)
    # tests/conftest.py as a plugin, the project's pytest settings (timeout_method = thread)
    command = [sys.executable, "-m", "pytest", "-p", "conftest", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path),
               "-p", "no:cacheprovider", "-q", *args]
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}", "HANG_PIDS": str(tmp_path / "pids")}
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)


def test_a_hung_test_fails_in_its_bound_and_its_processes_are_killed(tmp_path):
    started = time.monotonic()
    proc = _run_pytest(tmp_path, str(tmp_path / "test_hang.py::test_hangs"))
    assert time.monotonic() - started < 60
    assert proc.returncode != 0
    assert "Timeout" in proc.stdout + proc.stderr
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    psutil.wait_procs([psutil.Process(p) for p in pids if psutil.pid_exists(p)], timeout=10)
    left = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not left, f"still running after the test process timed out: {left}"


def test_building_a_side_environment_does_not_count_against_the_bound(tmp_path):
    proc = _run_pytest(tmp_path, str(tmp_path / "test_hang.py::test_set_up_pauses_the_clock"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
