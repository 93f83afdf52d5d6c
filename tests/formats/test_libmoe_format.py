"""The ``libmoe`` format: LibMoE's published checkpoints (Fsoft-AIC/LibMoE's LlavaPhiForCausalLM folders).

Shrunk layouts with LibMoE's key names and config fields (tests/formats/libmoe_layout.py) round-trip bit for bit
through internal and hf, the hf output runs with mmzoo's MoE code, and what mmzoo cannot run or write (S² features
to hf, XMoE's extra gate, a tower not in the cache) is one clear line. S² checkpoints: test_libmoe_s2.py."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from libmoe_layout import TOWER, build_libmoe, folder_tensors

from mmzoo import convert, load_model, read_checkpoint
from mmzoo.errors import UnknownArchitecture, UnknownFormat

LIBMOE_NAMES = ("smoe", "xmoe", "smoe_sigmoidgating", "smoe_tcmoe", "smoe_plus_plus", "smoe_share", "smoe_sharev3")


def _same_config(a: dict, b: dict) -> list[str]:
    """Fields that differ, ignoring mmzoo's own note and who wrote the file."""
    skip = {"mmzoo", "transformers_version"}
    return sorted(k for k in set(a) | set(b) if k not in skip and a.get(k) != b.get(k))


@pytest.mark.parametrize("moe_name,clip_smoe,mlp_smoe,scales", [(n, True, True, (1,)) for n in LIBMOE_NAMES]
                         + [("smoe", False, True, (1,)), ("smoe", False, False, (1,))]
                         + [("smoe", True, True, (1, 3)), ("smoe", False, False, (1, 3))])  # S², LibMoE's published runs: sft, pft
def test_libmoe_round_trip_through_internal_is_bit_exact(tmp_path, hub_cache, moe_name, clip_smoe, mlp_smoe, scales):
    src = build_libmoe(tmp_path / "src", moe_name=moe_name, clip_smoe=clip_smoe, mlp_smoe=mlp_smoe, scales=scales)
    ckpt = read_checkpoint(src)
    assert ckpt.format == "libmoe"
    moe = ckpt.spec.moe
    if clip_smoe or mlp_smoe:
        router = {"smoe": "smoe", "xmoe": "xmoe", "smoe_sigmoidgating": "sigmoid", "smoe_tcmoe": "tcmoe", "smoe_plus_plus": "moepp", "smoe_share": "sharede_v2", "smoe_sharev3": "sharede_v3"}[moe_name]
        assert moe["router"] == router and moe["vision_layers"] == ([0, 1, 2] if clip_smoe else []) and moe["layers"] == []
        assert moe["num_experts"] == (3 if moe_name.startswith("smoe_share") else 4)
    else:
        assert moe is None
    assert ckpt.spec.vision_scales == list(scales) and ckpt.spec.projector_in_features == len(scales) * ckpt.spec.vision_config["hidden_size"]
    internal = tmp_path / "internal"
    convert(src, internal, tgt_fmt="internal", verify=True)
    assert read_checkpoint(internal).spec.vision_scales == list(scales)
    back = tmp_path / "back"
    convert(internal, back, tgt_fmt="libmoe", verify=True)
    original, again = folder_tensors(src), folder_tensors(back)
    assert sorted(original) == sorted(again)
    for name, tensor in original.items():
        assert again[name].dtype == tensor.dtype and torch.equal(again[name], tensor), name
    assert _same_config(json.loads((src / "config.json").read_text()), json.loads((back / "config.json").read_text())) == []
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (back / name).read_bytes() == (src / name).read_bytes()


def test_libmoe_through_hf_runs_mmzoos_moe_code_and_comes_back(tmp_path, hub_cache):
    """hf adds the <image> token LibMoE never had (one mean row in the embeddings and lm_head); every other tensor
    comes back bit for bit; the hf folder loads with trust_remote_code and gives mmzoo's engine's logits."""
    from transformers import AutoModelForImageTextToText

    from mmzoo.demo.tiny import sample_inputs

    src = build_libmoe(tmp_path / "src", moe_name="smoe_plus_plus", dtype="float32")
    hf = tmp_path / "hf"
    result = convert(src, hf, tgt_fmt="hf", verify=True)
    assert any("added the <image> token" in n for n in result.notes)
    config = json.loads((hf / "config.json").read_text())
    assert config["text_config"]["mmzoo_moe"]["router"] == "moepp" and config["text_config"]["base_model_type"] == "phi3"
    engine = load_model(hf)
    model = AutoModelForImageTextToText.from_pretrained(hf, trust_remote_code=True).eval()
    inputs = sample_inputs(model, n_images=1, seq_text=5)
    with torch.no_grad():
        theirs, mine = model(**inputs), engine(**inputs)
    assert torch.equal(theirs.logits, mine["logits"]) and mine["aux_loss"] > 0
    back = tmp_path / "back"
    convert(hf, back, tgt_fmt="libmoe", verify=True)
    original, again = folder_tensors(src), folder_tensors(back)
    assert sorted(original) == sorted(again)
    for name, tensor in original.items():
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            assert again[name].shape[0] == tensor.shape[0] + 1 and torch.equal(again[name][:-1], tensor), name
        else:
            assert torch.equal(again[name], tensor), name


def test_libmoe_cli_formats_inspect_and_refusals(tmp_path, hub_cache):
    src = build_libmoe(tmp_path / "src")
    import os

    env_run = dict(capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    formats = subprocess.run([sys.executable, "-m", "mmzoo.cli", "formats"], **env_run)
    assert formats.returncode == 0 and "libmoe" in formats.stdout
    shown = subprocess.run([sys.executable, "-m", "mmzoo.cli", "inspect", str(src)], **env_run)
    assert shown.returncode == 0, shown.stderr
    assert "libmoe" in shown.stdout and "LibMoE smoe router" in shown.stdout and "vision layers [0, 1, 2]" in shown.stdout
    s2 = build_libmoe(tmp_path / "s2", scales=(1, 3))  # what LibMoE's published runs use
    refused = subprocess.run([sys.executable, "-m", "mmzoo.cli", "convert", str(s2), "-o", str(tmp_path / "out"), "--tgt-fmt", "hf"], **env_run)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "the hf layout cannot express S² multi-scale image features (vision_scales [1, 3]" in refused.stderr
    assert not (tmp_path / "out").exists()
    config = json.loads((s2 / "config.json").read_text())
    (s2 / "config.json").write_text(json.dumps({**config, "scales": [1]}))  # a projector 2x the tower's width, one scale
    refused = subprocess.run([sys.executable, "-m", "mmzoo.cli", "convert", str(s2), "-o", str(tmp_path / "out"), "--tgt-fmt", "internal"], **env_run)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "tensor 'projector.gate.weight' has shape [4, 64], expected [4, 32]" in refused.stderr


def test_libmoe_unsupported_and_missing_pieces_are_one_clear_error(tmp_path, hub_cache, monkeypatch):
    from huggingface_hub import constants

    unknown = build_libmoe(tmp_path / "unknown")  # every moe_name LibMoE registers is read; a new one is one line
    (unknown / "config.json").write_text(json.dumps({**json.loads((unknown / "config.json").read_text()), "moe_name": "smoe_perturbed"}))
    with pytest.raises(UnknownArchitecture, match="moe_name 'smoe_perturbed' is not supported"):
        read_checkpoint(unknown)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(UnknownFormat, match=f"vision tower '{TOWER}' is neither a local folder nor in the Hugging Face cache"):
        read_checkpoint(build_libmoe(tmp_path / "plain"))


def test_writing_libmoe_from_another_layout(tmp_path, tiny, hub_cache):
    """A Phi-3 + SigLIP model upcycled by mmzoo with a LibMoE router in the tower and projector writes as LibMoE;
    its unused post-layernorm and pooling head are left out (said in a note); a Llama model is refused."""
    src = tiny.hf("phi3", "siglip")
    moe = dict(num_experts=4, top_k=2, router="smoe", targets=["vision", "projector"])
    with pytest.raises(UnknownArchitecture, match="google/... name"):
        convert(src, tmp_path / "x", tgt_fmt="libmoe", moe=moe)
    out = tmp_path / "libmoe"
    result = convert(src, out, tgt_fmt="libmoe", moe=moe, llava_vision_tower=TOWER, verify=True)
    assert any("no post-layernorm or pooling head" in n for n in result.notes)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llava_phi" and config["moe_name"] == "smoe" and config["clip_smoe"] and config["mlp_smoe"]
    names = set(folder_tensors(out))
    assert "model.vision_tower.vision_model.encoder.layers.0.moelayer.experts.3.fc2.weight" in names
    assert "model.mm_projector.moelayer.experts.0.0.weight" in names and "model.mm_projector.moelayer.gate.weight" in names
    assert "model.layers.0.self_attn.qkv_proj.weight" in names and not any("post_layernorm" in n or ".head." in n for n in names)
    with pytest.raises(UnknownArchitecture, match="holds a Phi-3 LLM with a SigLIP tower"):
        convert(tiny.hf("llama", "siglip"), tmp_path / "y", tgt_fmt="libmoe", llava_vision_tower=TOWER)


def test_xmoe_written_from_an_mmzoo_upcycle_gets_libmoes_unused_gate(tmp_path, tiny, hub_cache):
    """LibMoE's XMOE layer saves its base class's gate.weight without using it; an XMoE layout mmzoo upcycled has
    none, so the libmoe writer adds zeros (said in a note) and the folder reads back to the same model."""
    src = tiny.hf("phi3", "siglip")
    out = tmp_path / "xmoe"
    result = convert(src, out, tgt_fmt="libmoe", moe=dict(num_experts=4, top_k=2, router="xmoe", targets=["vision", "projector"]),
                     llava_vision_tower=TOWER)
    assert any("gate.weight of their base class" in n for n in result.notes)
    config = json.loads((out / "config.json").read_text())
    assert config["moe_name"] == "xmoe"
    tensors = folder_tensors(out)
    gate = tensors["model.mm_projector.moelayer.gate.weight"]
    assert gate.shape == (4, tensors["model.mm_projector.moelayer.inp_reduction.weight"].shape[1]) and not gate.any()
    assert "model.vision_tower.vision_model.encoder.layers.0.moelayer.expert_embeddings" in tensors
    back = read_checkpoint(out)
    assert back.spec.moe["router"] == "xmoe" and back.spec.moe["unused_gate"]
    again = tmp_path / "again"
    convert(out, again, tgt_fmt="libmoe", verify=True)
    assert all(torch.equal(t, folder_tensors(again)[n]) for n, t in tensors.items())


def test_pretraining_folder_with_only_the_projector_reads_like_llavas(tmp_path, hub_cache):
    """LibMoE's pretrain.sh (--tune_mm_mlp_adapter) saves config.json + mm_projector.bin only: alone it is one clear
    line asking for the base LLM's weights; with Phi-3.5's weights copied beside it, the projector comes from
    mm_projector.bin and the tower from the SigLIP checkpoint the config names (LibMoE's --vision_tower_dir,
    vision_model.*), giving exactly the tensors of the full folder they were split from."""
    from safetensors.torch import save_file

    full = build_libmoe(tmp_path / "full", clip_smoe=False, mlp_smoe=False, dtype="float32", scales=(1, 3))
    tensors = folder_tensors(full)
    pretrain = tmp_path / "pretrain"
    pretrain.mkdir()
    config = json.loads((full / "config.json").read_text())
    (pretrain / "config.json").write_text(json.dumps({**config, "tune_mm_mlp_adapter": True}))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (full / name).is_file():
            (pretrain / name).write_bytes((full / name).read_bytes())
    torch.save({k: v for k, v in tensors.items() if k.startswith("model.mm_projector.")}, pretrain / "mm_projector.bin")
    with pytest.raises(UnknownFormat, match=r"holds no model weights \(only mm_projector.bin: LibMoE's pre-training stage\); copy the base LLM's"):
        read_checkpoint(pretrain)
    llm = {k: v for k, v in tensors.items() if not k.startswith(("model.mm_projector.", "model.vision_tower."))}
    save_file(llm, pretrain / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UnknownFormat, match="holds no vision tower weights, and the tower.s folder .* has no vision_model"):
        read_checkpoint(pretrain)  # the cached tower has its config only
    siglip = {k[len("model.vision_tower."):]: v for k, v in tensors.items() if k.startswith("model.vision_tower.")}
    siglip["text_model.embeddings.token_embedding.weight"] = torch.zeros(4, 2)  # a SigLIP checkpoint's text half: not read
    snapshot = next((hub_cache / "models--google--siglip-so400m-patch14-224" / "snapshots").iterdir())
    save_file(siglip, snapshot / "model.safetensors", metadata={"format": "pt"})
    got, want = read_checkpoint(pretrain), read_checkpoint(full)
    assert got.spec.vision_scales == [1, 3] and sorted(got.tensors) == sorted(want.tensors)
    from mmzoo.io.tensors import materialize

    for name, planned in want.tensors.items():
        assert torch.equal(materialize(got.tensors[name]), materialize(planned)), name
