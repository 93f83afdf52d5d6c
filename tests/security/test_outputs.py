"""One writer per OUT, and signals leave nothing behind: real subprocesses, real signals, real flock."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_helpers import mmzoo_command, run_cli
from mmzoo.io.claim import OutputBusy, clear_stale_partials, exclusive_output, lock_path


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_second_writer_fails_in_one_line_while_the_first_holds_out(tiny, tmp_path):
    out = tmp_path / "out"
    with exclusive_output(out):  # this process is "the first writer"
        code, _, stderr = run_cli("convert", str(tiny.hf()), "-o", str(out), "--tgt-fmt", "internal")
        assert code == 2 and stderr.count("\n") == 1, stderr
        assert f"another mmzoo process (pid {os.getpid()}) is writing this output" in stderr
        with pytest.raises(OutputBusy):
            with exclusive_output(out):
                pass
        assert not out.exists()
    assert _listing(tmp_path) == []  # the lock file goes with its holder


def test_two_concurrent_converts_one_wins_the_other_fails(tiny, tmp_path):
    out = tmp_path / "out"
    args = mmzoo_command("convert", str(tiny.hf()), "-o", str(out), "--tgt-fmt", "internal")
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert loser.count("\n") == 1 and ("already exists" in loser or "another mmzoo process" in loser), loser
    assert _listing(tmp_path) == ["out"] and (out / "mmzoo.yaml").is_file()


_SLOW_WRITE = """
import sys, time
import mmzoo.converters.internal as target
real = target.write
def slow(ckpt, out, **kw):
    real(ckpt, out, **kw)
    (out / "WRITTEN").write_text("")
    time.sleep(60)
target.write = slow
from mmzoo.cli import main
main(sys.argv[1:])
"""


def _start_slow_convert(src: Path, out: Path) -> subprocess.Popen:
    code = [sys.executable, "-c", _SLOW_WRITE, "convert", str(src), "-o", str(out), "--tgt-fmt", "internal"]
    proc = subprocess.Popen(code, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(out.parent.glob(f".{out.name}.partial-*/WRITTEN")):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.1)
    return proc


@pytest.mark.parametrize("sig, code, said", [(signal.SIGTERM, 143, "mmzoo: terminated, nothing written"),
                                             (signal.SIGINT, 130, "mmzoo: interrupted, nothing written")])
def test_a_signal_mid_write_removes_the_partial_folder(tiny, tmp_path, sig, code, said):
    out = tmp_path / "out"
    proc = _start_slow_convert(tiny.hf(), out)
    assert lock_path(out).exists()
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code and stderr == said + "\n", stderr
    assert _listing(tmp_path) == []


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_the_next_run_clears_partials_of_killed_processes(tiny, tmp_path):
    out = tmp_path / "out"
    proc = _start_slow_convert(tiny.hf(), out)
    proc.kill()  # SIGKILL: nothing can clean up
    proc.communicate()
    assert [p for p in _listing(tmp_path) if ".partial-" in p]
    code, _, stderr = run_cli("convert", str(tiny.hf()), "-o", str(out), "--tgt-fmt", "internal")
    assert code == 0, stderr
    assert _listing(tmp_path) == ["out"]


def test_stale_cleanup_keeps_live_writers_and_restores_a_set_aside_output(tmp_path):
    out = tmp_path / "out"
    live = tmp_path / f".out.partial-{os.getppid()}"  # our parent is alive
    dead = tmp_path / f".out.partial-{_dead_pid()}"
    set_aside = tmp_path / f".out.old-{_dead_pid()}"  # died between "OUT -> old" and "new -> OUT"
    other = tmp_path / f".other.partial-{_dead_pid()}"
    for folder in (live, dead, set_aside, other):
        folder.mkdir()
    (set_aside / "weights").write_text("previous output")
    assert clear_stale_partials(out) == [dead]
    assert (out / "weights").read_text() == "previous output"
    assert _listing(tmp_path) == sorted([live.name, other.name, "out"])


def test_an_out_that_is_a_symlink_is_replaced_as_a_link_and_its_target_is_untouched(tiny, tmp_path):
    """`-o LINK --overwrite` where LINK points to a folder of yours: the link is replaced by the output, the folder
    it pointed to is kept as it was. It used to end in "Cannot call rmtree on a symbolic link" (exit 2) after OUT
    had been written, leaving the link behind as `.LINK.old-PID`."""
    victim = tmp_path / "my-folder"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep")
    link = tmp_path / "out"
    link.symlink_to(victim)
    code, _, stderr = run_cli("convert", str(tiny.hf()), "-o", str(link), "--tgt-fmt", "internal")
    assert code == 2 and "already exists" in stderr and stderr.count("\n") == 1, stderr
    code, _, stderr = run_cli("convert", str(tiny.hf()), "-o", str(link), "--tgt-fmt", "internal", "--overwrite")
    assert code == 0, stderr
    assert not link.is_symlink() and (link / "mmzoo.yaml").is_file()
    assert _listing(victim) == ["precious.txt"] and (victim / "precious.txt").read_text() == "keep"
    assert _listing(tmp_path) == ["my-folder", "out"]
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    code, _, stderr = run_cli("convert", str(tiny.hf()), "-o", str(dangling), "--tgt-fmt", "internal")
    assert code == 2 and "already exists" in stderr, stderr
    code, _, stderr = run_cli("convert", str(tiny.hf()), "-o", str(dangling), "--tgt-fmt", "internal", "--overwrite")
    assert code == 0 and (dangling / "mmzoo.yaml").is_file() and not (tmp_path / "nowhere").exists(), stderr


def test_init_never_writes_over_either_input(tmp_path):
    """`mmzoo init --vision V --text T -o V --overwrite` replaced the vision folder with the new model: only the LLM
    folder was known to the write as its source."""
    from mmzoo.demo.tiny import build_llm, build_vision

    vision, text = tmp_path / "vision", tmp_path / "llm"
    build_vision(vision)
    build_llm(text)
    before = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    for out in (vision, vision / "sub", text, tmp_path):
        code, _, stderr = run_cli("init", "--vision", str(vision), "--text", str(text), "-o", str(out), "--overwrite")
        assert code == 2 and stderr.count("\n") == 1, stderr
        assert "output must not be the source folder, inside it, or contain it" in stderr, stderr
    assert {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()} == before


def test_convert_never_writes_over_a_vision_tower_the_checkpoint_names(tiny, tmp_path):
    """The original LLaVA layout names its vision tower by path (mm_vision_tower): `convert TEXT -o TOWER --overwrite`
    replaced that tower with the output, since only the checkpoint's own folder was protected."""
    import json
    import shutil

    from mmzoo.converters.pipeline import convert

    llava = tmp_path / "llava"
    convert(tiny.hf(), llava, tgt_fmt="llava")
    tower, text = tmp_path / "tower", tmp_path / "text"
    shutil.copytree(llava / "image_model", tower)
    shutil.copytree(llava / "text_model_llava", text)
    config = json.loads((text / "config.json").read_text())
    config["mm_vision_tower"] = str(tower)
    (text / "config.json").write_text(json.dumps(config))
    before = {p: p.read_bytes() for p in sorted(tower.rglob("*")) if p.is_file()}
    for out in (tower, tower / "sub", tmp_path):
        code, _, stderr = run_cli("convert", str(text), "-o", str(out), "--tgt-fmt", "internal", "--overwrite")
        assert code == 2 and "output must not be the source folder, inside it, or contain it" in stderr, stderr
    assert {p: p.read_bytes() for p in sorted(tower.rglob("*")) if p.is_file()} == before
    code, _, stderr = run_cli("convert", str(text), "-o", str(tmp_path / "ok"), "--tgt-fmt", "internal")
    assert code == 0, stderr
