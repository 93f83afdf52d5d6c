"""`mmzoo analyze-routing` on every MoE layout mmzoo writes, its PNGs looked at, and its error cases."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from routing_helpers import LAYOUTS

from tests.cli_helpers import cli_error, run_cli

# MoE layers of the tiny model (2 text layers, 2 vision layers) for each layout
EXPECTED_LAYERS = {
    "mixtral-hf": ["text.0", "text.1"], "qwen2moe-hf": ["text.1"], "moe-llava": ["text.0"],
    "moiie": ["text.0", "text.1"], "moiie-hf": ["text.0", "text.1"],
    "towers": ["vision.0", "vision.1", "projector", "text.0", "text.1"],
    "xmoe": ["text.0", "text.1"], "tcmoe": ["text.0", "text.1"],
}


def run_in_process(capsys, *args: str) -> str:
    from mmzoo.cli import main

    main(list(args))
    return capsys.readouterr().out


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout(ws, capsys, layout):
    out = ws.root / f"cli-{layout}"
    printed = run_in_process(capsys, "analyze-routing", str(ws.moe(layout)), "--data", str(ws.data), "--samples", "3",
                             "-o", str(out))
    report = json.loads((out / "routing.json").read_text())
    assert report["schema"] == "mmzoo-routing/1" and report["samples"] == 3
    assert list(report["layers"]) == EXPECTED_LAYERS[layout]
    top_k = LAYOUTS[layout][1]["top_k"]
    for layer, stats in report["layers"].items():
        assert stats["experts"] == LAYOUTS[layout][1]["num_experts"]
        routed = stats["tokens"]["text"] + stats["tokens"]["image"]
        assert routed > 0
        if layout == "tcmoe":  # a null expert takes a slot without an expert
            assert 0 < stats["assignments"] <= top_k * routed
        else:
            assert stats["assignments"] == top_k * routed
        assert sum(stats["load"]) == pytest.approx(1.0, abs=1e-5)
        assert layer in printed  # the table has a row per layer
    assert sorted(report["plots"]) == sorted(["expert_load.png", "modality_load.png", "entropy.png"])
    assert "routing of 3 samples" in printed and f"wrote {out}" in printed


def test_table_and_json_in_a_subprocess(ws):
    """The real command line, as a user runs it: --json prints the report routing.json holds."""
    out = ws.root / "cli-subprocess"
    code, stdout, stderr = run_cli("analyze-routing", str(ws.moe("moiie")), "--data", str(ws.data), "--samples", "2",
                                   "-o", str(out), "--json", "--no-plots")
    assert code == 0, stderr
    assert json.loads(stdout) == json.loads((out / "routing.json").read_text())
    assert json.loads(stdout)["plots"] == [] and sorted(p.name for p in out.iterdir()) == ["routing.json"]


def test_the_pngs(ws):
    """Each PNG opens, has the size its figure asks for, and is drawn (many colours, not one flat background)."""
    from mmzoo.analysis import analyze_routing

    out = ws.root / "pngs"
    report = analyze_routing(ws.moe("towers"), ws.data, out, samples=4)
    layers, experts = len(report["layers"]), 4
    expected = {  # figsize × dpi 100 of mmzoo/analysis/plots.py for 5 layers × 4 experts
        "expert_load.png": (round(100 * max(4.8, 1.0 + 0.55 * experts)), round(100 * max(3.0, 1.2 + 0.32 * layers))),
        "modality_load.png": (round(100 * 3.4 * 4), round(100 * 2.6 * 2)),
        "entropy.png": (round(100 * max(4.8, 1.5 + 0.45 * layers)), 340),
    }
    for name, size in expected.items():
        with Image.open(out / name) as image:
            assert image.format == "PNG"
            assert image.size == size, name
            pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
        colours = np.unique(pixels, axis=0)
        assert len(colours) > 50, name  # text, bars, a colour map: not a blank canvas
        assert (pixels != 255).any(axis=1).mean() > 0.03, name  # more than a frame is drawn


def test_heatmap_shows_the_load(ws):
    """The heatmap's cells differ where the loads differ: an unbalanced layer is not drawn as a flat colour."""
    from mmzoo.analysis import analyze_routing

    out = ws.root / "heatmap"
    report = analyze_routing(ws.moe("mixtral-hf"), ws.data, out, samples=8)
    load = report["layers"]["text.0"]["load"]
    assert max(load) - min(load) > 0.05
    with Image.open(out / "expert_load.png") as image:
        row = np.asarray(image.convert("RGB"))
    # the plot area's middle row of pixels crosses every cell of layer text.0 (the top half)
    middle = row[row.shape[0] // 3, :, :].astype(int)
    assert len(np.unique(middle, axis=0)) > 4


def test_dense_checkpoint_is_refused(ws, capsys):
    out = ws.root / "dense-routing"
    line = cli_error(capsys, "analyze-routing", str(ws.dense), "--data", str(ws.data), "-o", str(out))
    assert line.startswith("mmzoo: error:") and "not a Mixture-of-Experts checkpoint" in line
    assert not out.exists()


def test_errors_are_one_line(ws, capsys, tmp_path):
    moe = str(ws.moe("moiie"))
    data = str(ws.data)
    assert "no manifest.json" in cli_error(capsys, "analyze-routing", moe, "--data", str(tmp_path), "-o", str(tmp_path / "o"))
    assert "checkpoint not found" in cli_error(capsys, "analyze-routing", str(tmp_path / "nope"), "--data", data,
                                               "-o", str(tmp_path / "o"))
    assert "--samples must be at least 1" in cli_error(capsys, "analyze-routing", moe, "--data", data, "--samples", "0",
                                                       "-o", str(tmp_path / "o"))
    assert "image folder not found" in cli_error(capsys, "analyze-routing", moe, "--data", data, "--images",
                                                 str(tmp_path / "no-images"), "-o", str(tmp_path / "o"))
    assert "invalid --dtype" in cli_error(capsys, "analyze-routing", moe, "--data", data, "--dtype", "int3",
                                          "-o", str(tmp_path / "o"))
    # the output may not be (inside) the checkpoint or the data, which --overwrite would destroy
    assert "must not be the source" in cli_error(capsys, "analyze-routing", moe, "--data", data, "-o", f"{moe}/routing")
    assert "inside the data folder" in cli_error(capsys, "analyze-routing", moe, "--data", data, "-o", f"{data}/routing")
    assert "inside the image folder" in cli_error(capsys, "analyze-routing", moe, "--data", data, "-o",
                                                  f"{ws.images}/routing")
    assert "--data" in cli_error(capsys, "analyze-routing", moe, "-o", str(tmp_path / "o"))  # a missing option
    assert not (tmp_path / "o").exists()


def test_runs_in_bf16(ws, capsys, tmp_path):
    """--dtype bf16: the model runs in bf16 (routers read in float32 by the tap), the report is complete."""
    out = tmp_path / "bf16"
    run_in_process(capsys, "analyze-routing", str(ws.moe("moiie")), "--data", str(ws.data), "--samples", "2",
                   "--dtype", "bf16", "--no-plots", "-o", str(out))
    report = json.loads((out / "routing.json").read_text())
    assert list(report["layers"]) == ["text.0", "text.1"]
    assert all(sum(s["load"]) == pytest.approx(1, abs=1e-5) and s["entropy"] > 0 for s in report["layers"].values())


def test_existing_output_is_kept_without_overwrite(ws, capsys, tmp_path):
    out = tmp_path / "kept"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    line = cli_error(capsys, "analyze-routing", str(ws.moe("moiie")), "--data", str(ws.data), "-o", str(out))
    assert "already exists" in line and "--overwrite" in line
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    run_in_process(capsys, "analyze-routing", str(ws.moe("moiie")), "--data", str(ws.data), "--samples", "1",
                   "-o", str(out), "--overwrite", "--no-plots")
    assert sorted(p.name for p in out.iterdir()) == ["routing.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial or lock left behind


def test_data_of_another_model_is_refused(ws, capsys, tmp_path):
    """Preprocessed data whose image token is not the model's: one line, before any forward."""
    data = tmp_path / "data"
    shutil.copytree(ws.data, data)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["parameters"]["image_token_id"] += 1
    (data / "manifest.json").write_text(json.dumps(manifest))
    line = cli_error(capsys, "analyze-routing", str(ws.moe("moiie")), "--data", str(data), "-o", str(tmp_path / "o"))
    assert "preprocess again" in line


def test_help_teaches():
    code, stdout, _ = run_cli("analyze-routing", "--help")
    assert code == 0
    for text in ("--data", "--samples", "routing.json", "expert_load.png", "entropy", "Examples", "docs/upcycle.md"):
        assert text in stdout, text
