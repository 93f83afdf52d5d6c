"""A LibMoE checkpoint as LibMoE publishes it (an HF Hub folder, e.g. DavidNguyen/Phi3.5-Siglip-smoe_plus_plus-665K)
is pulled from the local test hub and converted in the same step, and pulled as-is then converted."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hub_helpers import WRITE_TOKEN

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "formats"))
from libmoe_layout import build_libmoe, folder_tensors, use_hub_cache_with_siglip  # noqa: E402

from mmzoo.hub import api as hub  # noqa: E402


@pytest.fixture
def libmoe_repo(server, tmp_path, monkeypatch):
    """The folder uploaded with huggingface_hub itself (no mmzoo involved), and the SigLIP tower LibMoE names
    in the local Hugging Face cache."""
    from huggingface_hub import HfApi

    use_hub_cache_with_siglip(tmp_path / "hub-cache", monkeypatch)
    folder = build_libmoe(tmp_path / "published", moe_name="smoe_plus_plus", scales=(1, 3))  # S², as LibMoE's published runs
    api = HfApi(endpoint=server.url, token=WRITE_TOKEN)
    api.create_repo("alice/Phi3.5-Siglip-smoe_plus_plus-tiny")
    api.upload_folder(repo_id="alice/Phi3.5-Siglip-smoe_plus_plus-tiny", folder_path=str(folder))
    return folder


def test_pull_libmoe_and_convert(server, libmoe_repo, tmp_path):
    from mmzoo import convert, read_checkpoint

    got = hub.pull("alice/Phi3.5-Siglip-smoe_plus_plus-tiny", tmp_path / "internal", tgt_fmt="internal")
    assert got["converted"] and got["source_format"] == "libmoe" and got["format"] == "internal"
    ckpt = read_checkpoint(tmp_path / "internal")
    assert ckpt.spec.moe["router"] == "moepp" and ckpt.spec.moe["vision_layers"] == [0, 1, 2] and ckpt.spec.vision_scales == [1, 3]
    plain = hub.pull("alice/Phi3.5-Siglip-smoe_plus_plus-tiny", tmp_path / "as-published")
    assert plain["format"] == "libmoe" and not plain["converted"]
    back = tmp_path / "back"
    convert(tmp_path / "internal", back, tgt_fmt="libmoe", verify=True)
    original, again = folder_tensors(libmoe_repo), folder_tensors(back)
    assert sorted(original) == sorted(again) and all(torch.equal(again[k], v) for k, v in original.items())
