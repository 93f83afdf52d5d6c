"""`mmzoo preprocess` never deletes user data: -o may not be (or contain, or lie inside) an input, and
--resume only continues a folder that mmzoo's own progress file says it wrote."""
from __future__ import annotations

import json

import pytest

from mmzoo.cli import main


@pytest.fixture
def inputs(tiny, tmp_path):
    from mmzoo.demo.tiny import make_images

    work = tmp_path / "work"
    images = work / "images"
    make_images(images, 2)
    rows = [{"id": f"s{i}", "image": f"img_{i % 2:03d}.png", "conversations": [
        {"from": "human", "value": "<image>\nDescribe the picture."}, {"from": "gpt", "value": f"A picture number {i}."}]}
        for i in range(4)]
    data = work / "data.json"
    data.write_text(json.dumps(rows))
    return data, images, tiny.hf()


def _run(capsys, data, images, tokenizer, out, *extra) -> tuple[int, str]:
    args = ["preprocess", "--data", str(data), "--images", str(images), "--tokenizer", str(tokenizer), "-o", str(out),
            "--template", "plain", "--quiet", *extra]
    with pytest.raises(SystemExit) as exc:
        main(args)
        raise SystemExit(0)
    return exc.value.code or 0, capsys.readouterr().err


def _tree(folder):
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def test_a_normal_run_and_its_resume_still_work(inputs, tmp_path, capsys):
    data, images, tok = inputs
    out = tmp_path / "shards"
    assert _run(capsys, data, images, tok, out) == (0, "")
    assert (out / "manifest.json").is_file()
    assert _run(capsys, data, images, tok, out, "--resume")[0] == 0  # complete: nothing to do


@pytest.mark.parametrize("which", ["images", "work", "images/shards"])
def test_output_over_an_input_is_refused_even_with_overwrite(inputs, capsys, which):
    data, images, tok = inputs
    work = data.parent
    before = _tree(work)
    code, err = _run(capsys, data, images, tok, work / which if which != "work" else work, "--overwrite")
    assert code == 2 and err.startswith("mmzoo: error: ") and err.count("\n") == 1, err
    assert "refusing to write over an input" in err or "output lies inside the image folder" in err, err
    assert _tree(work) == before


def test_resume_into_a_folder_mmzoo_did_not_write_is_refused(inputs, tmp_path, capsys):
    data, images, tok = inputs
    mine = tmp_path / "my-project"
    mine.mkdir()
    (mine / "results.h5").write_bytes(b"precious")
    (mine / "notes.tmp").write_text("draft")
    (mine / "rejected.jsonl").write_text('{"my": "own log"}\n')
    before = _tree(mine)
    code, err = _run(capsys, data, images, tok, mine, "--resume")
    assert code == 2 and "not an unfinished mmzoo preprocess output" in err and err.count("\n") == 1, err
    assert _tree(mine) == before


def test_an_interrupted_run_marks_its_folder_from_the_start(inputs, tmp_path, capsys, monkeypatch):
    """Killed before its first shard, a run's folder still carries the progress file, so --resume continues it."""
    from mmzoo.preprocess import pipeline

    data, images, tok = inputs
    out = tmp_path / "shards"

    def killed(self, workers, console):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline._Run, "execute", killed)
    code, err = _run(capsys, data, images, tok, out)
    assert code == 130 and err == "mmzoo: interrupted, finished shards are kept, --resume continues\n"
    assert json.loads((out / ".progress.json").read_text())["rows_consumed"] == 0
    monkeypatch.undo()
    assert _run(capsys, data, images, tok, out, "--resume")[0] == 0
    assert json.loads((out / "manifest.json").read_text())["statistics"]["samples_written"] == 4


_SLOW_PREPROCESS = """
import sys, time
from mmzoo.preprocess import pipeline
def slow(self, workers, console):
    (self.out / "STARTED").write_text("")
    time.sleep(60)
pipeline._Run.execute = slow
from mmzoo.cli import main
main(sys.argv[1:])
"""


def test_sigterm_keeps_the_resumable_folder_and_says_so(inputs, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    data, images, tok = inputs
    out = tmp_path / "shards"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_PREPROCESS, "preprocess", "--data", str(data), "--images",
                             str(images), "--tokenizer", str(tok), "-o", str(out), "--template", "plain", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "STARTED").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143 and stderr == "mmzoo: terminated, finished shards are kept, --resume continues\n"
    assert (out / ".progress.json").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["shards", "work"]
