"""Training params files and --set values: bombs, depth and bad bytes are one line before anything runs."""
from __future__ import annotations

from pathlib import Path

import pytest

from mmzoo.errors import ConfigError
from mmzoo.train.config import load_config, parse_overrides
from robust_helpers import assert_one_line, run_main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
YAML_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi")
)


@pytest.fixture
def params(tmp_path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text((CONFIGS / "tiny-sft.yaml").read_text())
    return path


@pytest.mark.parametrize("extra,needle", [
    (YAML_BOMB.encode(), "expands to more than"),
    (b"x: " + b"[" * 100_000 + b"]" * 100_000 + b"\n", "nested more than"),
    (b"x: caf\xe9\n", "not UTF-8"),
], ids=["yaml-bomb", "deep", "not-utf8"])
def test_params_file_bomb_depth_utf8(params, capsys, extra, needle):
    params.write_bytes(params.read_bytes() + b"\n" + extra)
    assert_one_line(*run_main(capsys, "train", "--params", params), str(params), needle)


def test_deepspeed_overrides_bomb_in_params(params, capsys):
    nested = "deepspeed:\n  overrides:\n" + "".join("    " + line + "\n" for line in YAML_BOMB.splitlines())
    params.write_text(params.read_text() + "\n" + nested)
    assert_one_line(*run_main(capsys, "train", "--params", params), "expands to more than")


def test_set_override_bomb_is_refused(capsys, params):
    bomb = "{" + YAML_BOMB.strip().replace("\n", ", ") + "}"
    with pytest.raises(ConfigError, match="expands to more than"):
        parse_overrides([f"deepspeed.overrides={bomb}"])
    assert_one_line(*run_main(capsys, "train", "--params", params, "--set", f"deepspeed.overrides={bomb}"), "--set deepspeed.overrides")
    # plain strings that are not YAML still pass as strings
    assert parse_overrides(["train.name=a: b: c"]) == {"train": {"name": "a: b: c"}}


def test_params_that_is_a_named_pipe_or_folder(tmp_path, capsys):
    import os

    fifo = tmp_path / "params.yaml"
    os.mkfifo(fifo)
    assert_one_line(*run_main(capsys, "train", "--params", fifo), "named pipe")
    assert_one_line(*run_main(capsys, "train", "--params", tmp_path), "folder")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("tag", ["!!python/object/apply:os.system ['touch {marker}']",
                                 "!!python/object/new:subprocess.Popen [['touch', '{marker}']]",
                                 "!!python/name:os.system"])
def test_python_tags_in_a_params_file_never_run(params, tmp_path, capsys, tag):
    """yaml's unsafe loaders build Python objects from these tags; mmzoo's YAML is safe_load only."""
    marker = tmp_path / "pwned"
    params.write_text(params.read_text() + "\nextra: " + tag.format(marker=marker) + "\n")
    assert_one_line(*run_main(capsys, "train", "--params", params), str(params), "not valid YAML", "python/")
    assert not marker.exists()
