"""`mmzoo plot`: the PNG is opened and looked at — size, drawn curves, axes — for one and several runs."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from tests.cli_helpers import cli_error, run_cli


def write_run(folder, steps=20, moe=False, kd=False, seed=0):
    """A run folder with metrics.jsonl records in the exact shape mmzoo.train.loop writes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    lines = []
    for step in range(1, steps + 1):
        record = {"step": step, "loss": 5.0 / step ** 0.3 + float(rng.normal(0, 0.02)), "lm_loss": 4.9 / step ** 0.3,
                  "aux_loss": 0.01 if moe else 0.0, "lr": 1e-3 * (1 - step / steps), "grad_norm": 1.0 + 0.1 * step,
                  "tokens": 512, "tokens_per_s": 1000.0 + step, "tflops": None, "seconds": 0.5}
        if kd:
            record["kd_loss"] = 2.0 / step
            record["teacher_entropy"] = 1.0  # a metric the plot does not know: drawn under its own name
        if moe:
            record["expert_load"] = {"text.0": [0.4, 0.3, 0.2, 0.1], "text.1": [0.25, 0.25, 0.25, 0.25]}
        lines.append(json.dumps(record))
    lines.append('{"step": 21, "loss": 1.')  # a line cut short by a crash is skipped
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def dark_lines(gray: np.ndarray, axis: int, length: int) -> int:
    """Rows (axis 1) or columns (axis 0) holding a run of ≥ length dark pixels: axis spines."""
    dark = gray < 100
    lines = dark if axis == 1 else dark.T
    count = 0
    for line in lines:
        run = best = 0
        for pixel in line:
            run = run + 1 if pixel else 0
            best = max(best, run)
        count += best >= length
    return count


def look_at(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        rgb = np.asarray(image.convert("RGB")).astype(int)
    gray = rgb.mean(axis=2)
    coloured = (np.abs(rgb[..., 0] - rgb[..., 2]) > 60).mean()  # curves are coloured; text and spines are grey
    return rgb.shape[1], rgb.shape[0], gray, coloured


def test_one_run_png(tmp_path):
    from mmzoo.plot import plot_runs

    run = write_run(tmp_path / "sft")
    result = plot_runs([run], tmp_path / "out.png")
    assert result["panels"] == ["loss", "language-model loss", "router aux loss", "learning rate", "grad norm", "tokens/s"]
    width, height, gray, coloured = look_at(tmp_path / "out.png")
    assert [width, height] == result["size"] == [1280, 1020]  # 2 columns × 3 rows at 100 dpi
    assert gray.std() > 10 and coloured > 0.002  # not blank: curves are drawn
    # axes: a top and a bottom spine per row of panels (a pixel row crosses both columns' panels), a left
    # and a right spine per column
    assert dark_lines(gray, axis=1, length=400) >= 2 * 3
    assert dark_lines(gray, axis=0, length=200) >= 2 * 2


def test_several_runs_with_moe_and_kd(tmp_path):
    from mmzoo.plot import plot_runs

    runs = [write_run(tmp_path / "a" / "run", moe=True), write_run(tmp_path / "b" / "run", kd=True, seed=1)]
    result = plot_runs(runs, tmp_path / "cmp.png")
    assert result["runs"] == ["a/run", "b/run"]  # same folder names: told apart by their parents
    assert "distillation (KD) loss" in result["panels"] and "expert load (a/run)" in result["panels"]
    assert "teacher_entropy" in result["panels"] and "tokens" not in result["panels"]
    width, height, gray, coloured = look_at(tmp_path / "cmp.png")
    assert [width, height] == result["size"] and height > 1020
    assert coloured > 0.002 and dark_lines(gray, axis=1, length=400) >= 2 * 4


def test_cli_and_errors(tmp_path, capsys):
    run = write_run(tmp_path / "sft")
    out = tmp_path / "deep" / "plot.png"
    code, stdout, stderr = run_cli("plot", str(run), str(run / "metrics.jsonl"), "-o", str(out))
    assert code == 0, stderr
    assert out.is_file() and "wrote" in stdout
    assert not list(out.parent.glob(".*partial*"))
    assert "already exists" in cli_error(capsys, "plot", str(run), "-o", str(out))
    assert "no metrics.jsonl" in cli_error(capsys, "plot", str(tmp_path), "-o", str(tmp_path / "x.png"))
    assert "must end in .png" in cli_error(capsys, "plot", str(run), "-o", str(tmp_path / "x.jpg"))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text("")
    assert "no records" in cli_error(capsys, "plot", str(empty), "-o", str(tmp_path / "y.png"))
