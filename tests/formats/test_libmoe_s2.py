"""S² multi-scale image features (LibMoE's ``scales: [1, 3]``, the setting of all its published checkpoints) in
mmzoo's engine, without LibMoE's code (tests/seedcode/test_libmoe_code.py runs LibMoE's own model on the same
folders; test_libmoe_format.py round-trips S² folders bit for bit): the features equal a hand computation crop by
crop, formats that cannot express S² are refused in one line, and such a checkpoint trains, exports and
generates with mmzoo."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from libmoe_layout import build_libmoe, folder_tensors

from mmzoo import convert, load_model, read_checkpoint
from mmzoo.errors import ConfigError, UnknownArchitecture

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def test_s2_features_equal_a_crop_by_crop_hand_computation(tmp_path, hub_cache):
    """The tower's layer -2 tokens of the 32 px image, next to those of its 96 px bicubic resize cut into 3 x 3
    crops of 32 px, each crop through the tower on its own, its 4 x 4 map placed at (row, column) of a 12 x 12 map,
    that map averaged over 3 x 3 blocks back to 4 x 4 (area pooling)."""
    src = build_libmoe(tmp_path / "s2", clip_smoe=False, mlp_smoe=False, dtype="float32", scales=(1, 3))
    internal = tmp_path / "internal"
    convert(src, internal, tgt_fmt="internal", add_image_token=True)
    model = load_model(internal)
    tower = model.model.vision_tower
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def layer_minus_2(pixels):
        with torch.no_grad():
            return tower(pixels, output_hidden_states=True).hidden_states[-2]  # SigLIP: no class token to drop

    base = layer_minus_2(images)  # [2, 16, C]
    width = base.shape[-1]
    big = F.interpolate(images, size=96, mode="bicubic")
    stitched = torch.zeros(2, 12, 12, width)
    for row in range(3):
        for col in range(3):
            crop = big[:, :, row * 32:(row + 1) * 32, col * 32:(col + 1) * 32]
            stitched[:, row * 4:(row + 1) * 4, col * 4:(col + 1) * 4] = layer_minus_2(crop).reshape(2, 4, 4, width)
    pooled = stitched.reshape(2, 4, 3, 4, 3, width).mean(dim=(2, 4)).reshape(2, 16, width)
    by_hand = torch.cat([base, pooled], dim=-1)

    with torch.no_grad():
        features = model.model.get_image_features(pixel_values=images).last_hidden_state
    assert features.shape == (2, 16, 2 * width)
    assert torch.allclose(features, by_hand, atol=1e-6, rtol=0), float((features - by_hand).abs().max())
    assert not torch.allclose(pooled, base, atol=1e-3)  # the 3x level is not a copy of the 1x one


def test_formats_without_s2_are_refused_in_one_line(tmp_path, hub_cache):
    src = build_libmoe(tmp_path / "src", clip_smoe=False, mlp_smoe=False, scales=(1, 3))
    env = {**os.environ, "COLUMNS": "200"}
    out = tmp_path / "hf"
    refused = subprocess.run([sys.executable, "-m", "mmzoo.cli", "convert", str(src), "-o", str(out), "--tgt-fmt", "hf"],
                             capture_output=True, text=True, timeout=300, env=env)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith("mmzoo: error: the hf layout cannot express S² multi-scale image features (vision_scales [1, 3]")
    assert not out.exists()
    shown = subprocess.run([sys.executable, "-m", "mmzoo.cli", "inspect", str(src)], capture_output=True, text=True, timeout=300, env=env)
    assert shown.returncode == 0 and "S² multi-scale, scales [1, 3]" in shown.stdout, shown.stdout + shown.stderr
    internal = tmp_path / "internal"
    made = subprocess.run([sys.executable, "-m", "mmzoo.cli", "convert", str(src), "-o", str(internal), "--tgt-fmt", "internal", "--add-image-token"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert made.returncode == 0 and "added the <image> token" in made.stdout, made.stdout + made.stderr
    assert read_checkpoint(internal).spec.image_token_id is not None and read_checkpoint(src).spec.image_token_id is None
    for fmt in ("llava", "moe-llava", "cerebras"):
        with pytest.raises(UnknownArchitecture, match=f"the {fmt} layout cannot express S²"):
            convert(src, tmp_path / fmt, tgt_fmt=fmt)
        assert not (tmp_path / fmt).exists()
    config = json.loads((src / "config.json").read_text())
    for bad, why in (([3, 1], "must start with 1"), ([1, 0], "whole numbers from 1"), ("1,x", "not whole numbers"), ([1] * 9, "9 scales; at most 8")):
        (src / "config.json").write_text(json.dumps({**config, "scales": bad}))
        with pytest.raises((ConfigError, UnknownArchitecture), match=why):
            read_checkpoint(src)


def test_libmoe_s2_checkpoint_trains_exports_and_generates(tmp_path, hub_cache):
    """An S² LibMoE checkpoint (scales 1,3, SMoE experts in the projector) converted to internal with an <image> token, it trains under mmzoo (loss falls, both aux losses), exports to libmoe with the engine's
    logits, and `mmzoo generate` answers about an image with it."""
    from moe_training import train_moe_briefly

    from mmzoo.demo.tiny import make_caption_dataset
    from mmzoo.generate import generate
    from mmzoo.train.export import export

    # SMoE in the projector only (the tower's S² x MoE losses are checked against LibMoE's code in tests/seedcode): a
    # dense tower keeps the 8 steps of 10 tower passes per image short
    src = build_libmoe(tmp_path / "libmoe", moe_name="smoe", dtype="float32", scales=(1, 3), clip_smoe=False)
    internal = tmp_path / "internal"
    result = convert(src, internal, tgt_fmt="internal", add_image_token=True)
    assert any("added the <image> token" in n for n in result.notes)
    images, data = make_caption_dataset(tmp_path, internal)
    run = train_moe_briefly(internal, internal, images, data, tmp_path)
    rows = run["rows"]
    assert [r["step"] for r in rows] == list(range(1, 9))
    for r in rows:
        assert r["aux_loss"] > 0 and abs(r["loss"] - r["lm_loss"] - r["aux_loss"]) < 1e-5
    losses = [r["loss"] for r in rows]
    assert min(losses[4:]) < losses[0] - 0.5, losses

    exported = tmp_path / "exported"
    export(run["cfg"].output_dir, exported, tgt_fmt="libmoe")
    back = read_checkpoint(exported)
    assert back.format == "libmoe" and back.spec.vision_scales == [1, 3]
    with torch.no_grad():
        logits = load_model(exported).eval()(**run["probe"]).logits
    assert torch.allclose(logits, run["engine_logits"], atol=1e-5, rtol=0), float((logits - run["engine_logits"]).abs().max())
    with pytest.raises(UnknownArchitecture, match="the hf layout cannot express S²"):
        export(run["cfg"].output_dir, tmp_path / "exported-hf", tgt_fmt="hf")

    picture = images / "img_000.png"
    answer = generate(exported, "Describe the picture.", images=[picture], max_new_tokens=3, template="plain")
    assert answer["new_tokens"] >= 1
    from PIL import Image

    from mmzoo import load_processor

    processor = load_processor(exported)  # greedy: the first token is the argmax of the engine's S² forward
    inputs = processor(images=[Image.open(picture).convert("RGB")], text=answer["prompt"], return_tensors="pt", add_special_tokens=False)
    assert inputs["pixel_values"].shape[-1] == 32  # the processor's base size; S² upscales inside the model
    with torch.no_grad():
        first = int(load_model(exported)(**inputs).logits[0, -1].argmax())
    assert answer["tokens"][0] == first


def test_s2_training_flops_count_every_crop(tmp_path, hub_cache):
    """mmzoo train's FLOPs (tokens/s and MFU logs): with scales [1, 3] the tower runs on 1 + 9 crops per image, the
    projector reads the wider features, the LLM is unchanged."""
    from mmzoo.train.flops import training_step_flops

    flops = {}
    for scales in ((1,), (1, 3)):
        src = build_libmoe(tmp_path / f"src{len(scales)}", clip_smoe=False, mlp_smoe=False, dtype="float32", scales=scales)
        convert(src, tmp_path / f"internal{len(scales)}", tgt_fmt="internal", add_image_token=True)
        flops[scales] = training_step_flops(load_model(tmp_path / f"internal{len(scales)}"), sequences=2, seq_len=40, images=2)
    single, multi = flops[(1,)], flops[(1, 3)]
    assert multi.vision == 10 * single.vision and multi.text == single.text
    assert multi.projector > single.projector


def test_upcycling_a_dense_s2_checkpoint_sizes_the_projector_router_to_the_s2_width(tmp_path, hub_cache):
    """LibMoE's pft -> sft step (sparse upcycling of the dense S² model: SMoE in every tower layer and the projector),
    done by mmzoo while converting: the projector's router reads 2 x the tower's width, and the upcycled model
    gives the dense model's logits (SMoE experts are copies; the top-k weights sum to 1)."""
    from mmzoo.demo.tiny import sample_inputs

    src = build_libmoe(tmp_path / "pft", clip_smoe=False, mlp_smoe=False, dtype="float32", scales=(1, 3))
    dense = tmp_path / "dense"
    convert(src, dense, tgt_fmt="internal", add_image_token=True)
    sft = tmp_path / "sft"
    convert(dense, sft, tgt_fmt="libmoe", moe=dict(num_experts=4, top_k=2, router="smoe", targets=["vision", "projector"]), verify=True)
    config = json.loads((sft / "config.json").read_text())
    assert config["scales"] == [1, 3] and config["mm_projector_type"] == "moe" and config["clip_smoe"]
    width = read_checkpoint(sft).spec.vision_config["hidden_size"]
    assert tuple(folder_tensors(sft)["model.mm_projector.moelayer.gate.weight"].shape) == (4, 2 * width)
    dense_model, moe_model = load_model(dense), load_model(sft)
    inputs = sample_inputs(dense_model.config, n_images=2)
    with torch.no_grad():
        want, got = dense_model(**inputs).logits, moe_model(**inputs).logits
    assert torch.allclose(got, want, atol=1e-5, rtol=0), float((got - want).abs().max())


def test_s2_tower_router_losses_are_averaged_over_the_levels(tmp_path, hub_cache):
    """With SMoE in the tower, every level's pass (the 1x image, then its nine 3x crops) computes each block's router
    loss; as LibMoE's tower (``torch.stack(auxilarity_losses).mean()``), the model's aux loss takes their mean per
    block, plus the projector's (the same against LibMoE's own code: tests/seedcode/test_libmoe_code.py)."""
    from mmzoo.demo.tiny import sample_inputs
    from mmzoo.upcycle.moe_modeling import moe_blocks

    src = build_libmoe(tmp_path / "sft", dtype="float32", scales=(1, 3))
    internal = tmp_path / "internal"
    convert(src, internal, tgt_fmt="internal", add_image_token=True)
    model = load_model(internal).train()
    projector = model.model.multi_modal_projector
    calls: dict[int, list[tuple[int, float]]] = {}

    def record(module, args, _output):
        calls.setdefault(id(module), []).append((args[0].shape[0], float(module.last_aux_loss.detach())))

    hooks = [b.register_forward_hook(record) for b in moe_blocks(model)]
    inputs = sample_inputs(model.config, n_images=2)
    aux = float(model(**inputs)["aux_loss"].detach())
    for h in hooks:
        h.remove()
    tower = [calls[id(b)] for b in moe_blocks(model) if b is not projector]
    assert len(tower) == 3 and all([n for n, _ in c] == [2, 18] for c in tower)  # 2 images, then 2 x 9 crops
    expected = sum(sum(loss for _, loss in c) / 2 for c in tower) + calls[id(projector)][0][1]
    assert abs(aux - expected) <= 1e-6 * expected, (aux, expected)
