"""tests/side_env.py builds side environments that see the packages of the interpreter running pytest,
also when that interpreter is a virtual environment (``venv --system-site-packages`` would expose only
the base interpreter's packages there, so torch was missing and the environment was rebuilt each run)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent
BUILD = """
import sys
sys.path.insert(0, {tests!r})
import side_env
print(side_env.side_python("probe-env", [], "import only_in_the_dev_venv, torch"))
"""


def _dev_venv(clone: Path) -> Path:
    """A developer's venv inside a clone folder named mmzoo, with a package only it has."""
    venv = clone / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True)
    site = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "only_in_the_dev_venv.py").write_text("MARK = 1\n")
    return venv / "bin" / "python"


def test_side_env_from_a_venv_inside_a_clone_sees_the_venv_packages_and_is_reused(tmp_path):
    clone = tmp_path / "mmzoo"
    clone.mkdir()
    python = _dev_venv(clone)
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "MMZOO_TEST_CACHE": str(tmp_path / "cache")}
    script = BUILD.format(tests=str(TESTS))
    first = subprocess.run([str(python), "-c", script], capture_output=True, text=True, cwd=clone, env=env, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    side = Path(first.stdout.strip().splitlines()[-1])
    assert side == tmp_path / "cache" / "probe-env" / "bin" / "python"
    stamp = (side.parent.parent / "pyvenv.cfg").stat().st_mtime_ns
    again = subprocess.run([str(python), "-c", script], capture_output=True, text=True, cwd=clone, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (side.parent.parent / "pyvenv.cfg").stat().st_mtime_ns == stamp  # reused, not rebuilt

    # what the old builder did fails this probe: a --system-site-packages venv made from the dev venv
    old = tmp_path / "old-style"
    subprocess.run([str(python), "-m", "venv", "--without-pip", "--system-site-packages", str(old)], check=True)
    probe = subprocess.run([str(old / "bin" / "python"), "-c", "import only_in_the_dev_venv"], capture_output=True, env=env)
    assert probe.returncode != 0
