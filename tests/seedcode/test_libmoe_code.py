"""LibMoE's own code reads the libmoe layout: its LlavaPhiForCausalLM (Fsoft-AIC/LibMoE ``vision_language_model``,
transformers 4.43 in ~/.cache/mmzoo-tests/libmoe-env) built from the shrunk checkpoint's config has exactly the
checkpoint's tensor names and shapes (strict load: nothing missing, nothing unexpected), and its logits equal
those of mmzoo's hf conversion of the same folder; in training mode LibMoE's aux loss (the mean of its vision
layers' losses plus the projector's) equals mmzoo's ``aux_loss``. With S² multi-scale features (``scales: [1, 3]``,
its published runs' setting) LibMoE's tower output, logits and aux loss equal mmzoo's engine's on the folder
converted to internal, and LibMoE's own training-image processing (run_libmoe_images.py) equals mmzoo's pixel values.

LibMoE is not on PyPI: set MMZOO_LIBMOE_SRC to a checkout of Fsoft-AIC/LibMoE (the folder holding
``vision_language_model/moe_model``); without it the test is skipped and says so."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "formats"))
from libmoe_layout import TOWER, build_libmoe, use_hub_cache_with_siglip  # noqa: E402

RUNNER = Path(__file__).parent / "run_libmoe.py"


@pytest.fixture(scope="module")
def libmoe_src() -> Path:
    src = os.environ.get("MMZOO_LIBMOE_SRC")
    if not src:
        pytest.skip("LibMoE is not on PyPI: set MMZOO_LIBMOE_SRC to a checkout of Fsoft-AIC/LibMoE to run its code")
    folder = Path(src) / "vision_language_model"
    if not (folder / "moe_model" / "model" / "moe" / "moe_plus_plus.py").is_file():
        pytest.fail(f"MMZOO_LIBMOE_SRC={src} holds no vision_language_model/moe_model/model/moe/moe_plus_plus.py")
    return folder


def _run_libmoe(libmoe_src: Path, checkpoint: Path, ids, images, tmp_path: Path, cache: Path) -> dict:
    import subprocess

    from side_env import clean_env, libmoe_python

    torch.save({"input_ids": ids, "images": images}, tmp_path / "inputs.pt")
    env = {**clean_env(), "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([libmoe_python(), str(RUNNER), str(libmoe_src), str(checkpoint), str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(tmp_path / "out.pt", weights_only=False)


IDS = torch.tensor([[5, 6, 7, -200, 8, 9, 10, 11], [12, 13, -200, 14, 15, 16, 17, 18]])  # -200: LibMoE's IMAGE_TOKEN_INDEX


def _expand(ids: torch.Tensor, image_token: int, count: int) -> torch.Tensor:
    return torch.tensor([[u for t in row for u in ([image_token] * count if t == -200 else [t])] for row in ids.tolist()])


@pytest.mark.parametrize("moe_name,clip_smoe,mlp_smoe", [
    ("smoe_plus_plus", True, True), ("smoe", True, True), ("xmoe", True, True), ("smoe_sigmoidgating", True, True), ("smoe_tcmoe", True, True),
    ("smoe_share", True, True),
    ("smoe_sharev3", True, True), ("smoe", False, False),
])
def test_libmoe_code_loads_the_layout_and_gives_mmzoos_logits(libmoe_src, tmp_path, monkeypatch, moe_name, clip_smoe, mlp_smoe):
    from safetensors import safe_open

    from mmzoo import convert, load_model

    cache = use_hub_cache_with_siglip(tmp_path / "hub-cache", monkeypatch)
    src = build_libmoe(tmp_path / "libmoe", moe_name=moe_name, clip_smoe=clip_smoe, mlp_smoe=mlp_smoe, dtype="float32")
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    theirs = _run_libmoe(libmoe_src, src, IDS, images, tmp_path, cache)
    assert theirs["missing"] == [] and theirs["unexpected"] == []
    with safe_open(src / "model.safetensors", "pt") as f:
        assert {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()} == theirs["names"]

    hf = tmp_path / "hf"
    convert(src, hf, tgt_fmt="hf")
    model = load_model(hf).eval()
    expanded = _expand(IDS, model.config.image_token_id, model.config.image_seq_length)
    with torch.no_grad():
        logits = model(input_ids=expanded, pixel_values=images).logits[..., : theirs["logits"].shape[-1]]  # + the <image> row
    assert torch.allclose(logits, theirs["logits"], atol=1e-5, rtol=0), float((logits - theirs["logits"]).abs().max())
    # training-mode aux loss: LibMoE's mean over its tower's layers + the projector's, mmzoo's aux_loss
    train = model.train()(input_ids=expanded, pixel_values=images)
    if clip_smoe or mlp_smoe:
        want = theirs["aux"]["auxiliary_loss_clip"] * clip_smoe + theirs["aux"]["auxiliary_loss_mlp"] * mlp_smoe
        got = float(train["aux_loss"].detach())
        assert abs(got - want) <= 1e-5 * want, (got, theirs["aux"])
    else:
        assert train.get("aux_loss") is None and theirs["aux"] == {}


@pytest.mark.parametrize("moe_name,clip_smoe,mlp_smoe", [("smoe", True, True), ("smoe_plus_plus", True, True), ("xmoe", True, True),
                                                     ("smoe", False, False)], ids=["sft-smoe", "sft-moepp", "sft-xmoe", "pft-dense"])
def test_libmoe_code_and_mmzoo_agree_on_s2_multiscale_checkpoints(libmoe_src, tmp_path, monkeypatch, moe_name, clip_smoe, mlp_smoe):
    """LibMoE's published runs' setting, ``--scales 1,3`` (sft.sh: clip_smoe + mlp_smoe; pft.sh: dense): LibMoE's
    LlavaPhiForCausalLM and mmzoo's engine (the folder converted to internal, with an <image> token) give the same
    S² features (its tower's output: the 1x and the pooled 3x levels side by side), logits and training aux loss."""
    from mmzoo import convert, load_model

    cache = use_hub_cache_with_siglip(tmp_path / "hub-cache", monkeypatch)
    src = build_libmoe(tmp_path / "libmoe", moe_name=moe_name, clip_smoe=clip_smoe, mlp_smoe=mlp_smoe, dtype="float32", scales=(1, 3))
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    theirs = _run_libmoe(libmoe_src, src, IDS, images, tmp_path, cache)
    assert theirs["missing"] == [] and theirs["unexpected"] == []
    assert theirs["features"].shape == (2, 16, 2 * 32)  # 4 x 4 patches, 2 scales x the tower's width

    internal = tmp_path / "internal"
    convert(src, internal, tgt_fmt="internal", add_image_token=True)
    model = load_model(internal).eval()
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values=images).last_hidden_state
    assert torch.allclose(features, theirs["features"], atol=1e-5, rtol=0), float((features - theirs["features"]).abs().max())
    expanded = _expand(IDS, model.config.image_token_id, model.config.image_seq_length)
    with torch.no_grad():
        logits = model(input_ids=expanded, pixel_values=images).logits[..., : theirs["logits"].shape[-1]]  # + the <image> row
    assert torch.allclose(logits, theirs["logits"], atol=1e-5, rtol=0), float((logits - theirs["logits"]).abs().max())
    train = model.train()(input_ids=expanded, pixel_values=images)
    if clip_smoe:  # LibMoE: the mean over the two levels of its tower's loss, + the projector's
        want = theirs["aux"]["auxiliary_loss_clip"] + theirs["aux"]["auxiliary_loss_mlp"]
        got = float(train["aux_loss"].detach())
        assert abs(got - want) <= 1e-5 * want, (got, theirs["aux"])
    else:
        assert train.get("aux_loss") is None and theirs["aux"] == {}


def test_libmoe_image_processing_equals_mmzoos_pixel_values(libmoe_src, tmp_path, monkeypatch):
    """LibMoE's training images (its process_image, ``--image_aspect_ratio pad`` as in all its scripts: padded to a
    square of the mean colour, then the tower's processor at its base size; S² upscales inside the model) equal the
    pixel values mmzoo's training data gives the S² checkpoint (preprocessed samples through mmzoo's processor of
    the converted folder), for wide, tall and square images."""
    import subprocess

    import numpy as np
    from PIL import Image
    from side_env import clean_env, libmoe_python

    from mmzoo import convert, load_processor
    from mmzoo.preprocess import H5Dataset, preprocess

    cache = use_hub_cache_with_siglip(tmp_path / "hub-cache", monkeypatch)
    src = build_libmoe(tmp_path / "libmoe", dtype="float32", scales=(1, 3))
    internal = tmp_path / "internal"
    convert(src, internal, tgt_fmt="internal", add_image_token=True)
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = []
    for i, (w, h) in enumerate([(60, 36), (30, 52), (45, 45)]):
        names.append(f"img_{i}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / names[-1])
    rows = [{"id": f"s{i}", "image": name, "conversations": [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "A picture."}]}
            for i, name in enumerate(names)]
    (tmp_path / "data.json").write_text(json.dumps(rows))
    preprocess([tmp_path / "data.json"], folder, internal, tmp_path / "data", template="plain", model=internal, max_seq_len=128)
    dataset = H5Dataset(tmp_path / "data", folder, load_processor(internal).image_processor)
    ours = torch.cat([dataset[i]["pixel_values"] for i in range(len(names))])

    env = {**clean_env(), "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([libmoe_python(), str(Path(__file__).parent / "run_libmoe_images.py"), str(libmoe_src), TOWER, "pad",
                           str(tmp_path / "pixels.pt"), *[str(folder / n) for n in names]], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = torch.load(tmp_path / "pixels.pt")
    assert theirs.shape == ours.shape == (3, 3, 32, 32)  # the base size: the processor's, not 3x
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=0), float((ours - theirs).abs().max())
