"""A training run's metrics.jsonl, as `mmzoo plot` reads it from a folder someone shared: records of another
shape are skipped, bytes that are not text are one line."""
from __future__ import annotations

import json

import pytest

from robust_helpers import assert_one_line, run_main


@pytest.mark.parametrize("expert_load", [[0.5, 0.5], {"text.0": "abcd"}, {"text.0": [0.5, None]}, {"text.0": [1e400, 1.0]}, 7],
                         ids=["list", "string-shares", "none-share", "inf-share", "number"])
def test_plot_skips_expert_loads_of_another_shape(tmp_path, capsys, expert_load):
    """Each was an AttributeError or TypeError traceback; the rest of the run still plots."""
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    run.mkdir()
    good = [{"step": s, "loss": 3.0 / s, "expert_load": {"text.0": [0.7, 0.3]}} for s in (1, 2)]
    bad = {"step": 3, "loss": 1.0, "expert_load": expert_load}
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in good)
                                       + json.dumps(bad).replace("Infinity", "1e400") + "\n")
    code, err = run_main(capsys, "plot", run, "-o", tmp_path / "plot.png")
    assert code == 0, err
    assert (tmp_path / "plot.png").stat().st_size > 1000


def test_plot_of_a_metrics_file_that_is_not_text_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_bytes(b'{"step": 1, "loss": 1.0}\n\xff\xfe\n')
    assert_one_line(*run_main(capsys, "plot", run, "-o", tmp_path / "plot.png"), "not UTF-8")
    assert not (tmp_path / "plot.png").exists()
