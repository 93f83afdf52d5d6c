"""Clear one-line errors for requests upcycling cannot honour, through the API and the CLI (exit 2)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from mmzoo import convert
from mmzoo.errors import MmzooError, UnknownArchitecture, UpcycleError


def _moe(**kw):
    options = dict(num_experts=4, top_k=2, style="mixtral", layers="all", targets=["text"])
    options.update(kw)
    return options


@pytest.mark.parametrize("options,message", [
    (dict(layers="0,7"), "layer 7 is out of range"),
    (dict(layers="fist"), "invalid --moe-layers"),
    (dict(top_k=5), "--moe-top-k must be between 1 and --moe-experts"),
    (dict(num_experts=0, top_k=0), "--moe-experts must be at least 1"),
    (dict(router_init="uniform"), "invalid --router-init"),
    (dict(style="switch"), "invalid upcycling option style"),
    (dict(targets=["audio"]), "invalid upcycling option targets"),
    (dict(style="modality", num_experts=3, top_k=3), "too large"),
])
def test_bad_options(dense, out, options, message):
    path = out()
    with pytest.raises(UpcycleError, match=message.replace("(", r"\(").replace("-", r"\-")):
        convert(dense("llama").path, path, tgt_fmt="internal", moe=_moe(**options))
    assert not path.exists()


def test_upcycling_an_moe_checkpoint_fails(dense, out):
    first = out()
    convert(dense("llama").path, first, tgt_fmt="hf", moe=_moe())
    with pytest.raises(UpcycleError, match="already MoE"):
        convert(first, out(), tgt_fmt="internal", moe=_moe())


def test_hf_refuses_a_linear_projector_with_a_clear_error(dense, out):
    """Every upcycled layout now has an hf form (built-in class or mmzoo's remote code); what the hf Llava
    layout cannot hold at all is still refused before anything is written."""
    from dataclasses import replace

    from mmzoo import read_checkpoint
    from mmzoo.converters.pipeline import write_checkpoint
    from mmzoo.upcycle import upcycle

    ckpt = upcycle(read_checkpoint(dense("llama").path), **_moe(style="modality"))
    linear = replace(ckpt, spec=ckpt.spec.model_copy(update={"projector_type": "linear"}))
    path = out()
    with pytest.raises(UnknownArchitecture, match="no 'linear' projector"):
        write_checkpoint(linear, path, "hf")
    assert not path.exists()


def test_moe_llava_refuses_shared_and_dense(dense, out):
    with pytest.raises(UnknownArchitecture, match="shared"):
        convert(dense("llama").path, out(), tgt_fmt="moe-llava", moe=_moe(style="shared"))
    with pytest.raises(UnknownArchitecture, match="dense"):
        convert(dense("llama").path, out(), tgt_fmt="moe-llava")
    with pytest.raises(MmzooError, match="vision/projector"):
        convert(dense("llama").path, out(), tgt_fmt="moe-llava", moe=_moe(targets=["vision"]))


def test_cli_errors_and_inspect(dense, out):
    src = str(dense("llama").path)
    bad = subprocess.run([sys.executable, "-m", "mmzoo.cli", "convert", src, "-o", str(out()), "--tgt-fmt", "hf",
                          "--moe-experts", "4", "--moe-top-k", "5"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert "--moe-top-k must be between" in bad.stderr and "Traceback" not in bad.stderr
    path = out()
    ok = subprocess.run([sys.executable, "-m", "mmzoo.cli", "convert", src, "-o", str(path), "--tgt-fmt", "hf",
                         "--moe-experts", "4", "--moe-top-k", "2", "--moe-layers", "even", "--seed", "5"],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    shown = subprocess.run([sys.executable, "-m", "mmzoo.cli", "inspect", str(path), "--json"], capture_output=True, text=True, timeout=300)
    import json

    moe = json.loads(shown.stdout)["moe"]
    assert moe["style"] == "mixtral" and moe["num_experts"] == 4 and moe["top_k"] == 2 and moe["layers"] == [0] and moe["seed"] == 5
