"""MoE-LLaVA's own code (PKU-YuanGroup/MoE-LLaVA) builds and runs mmzoo's `moe-llava` output, and mmzoo reads the
layouts MoE-LLaVA writes.

The first test loads the folder with MoE-LLaVA's `load_pretrained_model` and model classes (DeepSpeed 0.9.5, CPU)
and checks the text+image logits against the dense transformers model the MoE was upcycled from. MoE-LLaVA is not
on PyPI, so the test needs a checkout: set MMZOO_MOELLAVA_SRC to a folder holding its `moellava/` package (a
`git clone` of the repository); without it the test is skipped and says so. Its side environment (transformers
4.34.1 — MoE-LLaVA's Llama MoE code calls `_prepare_decoder_attention_mask`, gone from transformers 4.36 on, although
its pyproject pins 4.37.0 —, DeepSpeed 0.9.5 with pydantic 1) is built with pip once and cached in
~/.cache/mmzoo-tests/moellava-env (or set MMZOO_MOELLAVA_PYTHON to an interpreter that has them). It is isolated from
the global site-packages (whose transformers 5 / peft / pydantic 2 would be imported by transformers 4.34's optional
integrations): what it has in common with the main environment is only the torch release the test runs under,
installed into it with pip (on our machines the local CPU wheel). A cached environment that sees the global site-packages or lacks a package is rebuilt. The stubs the runner
needs (GPU-only or unrelated code) are listed in run_moellava.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import time_bound
import torch
from cli_helpers import run_cli
from safetensors.torch import load_file, save_file

import mmzoo
from mmzoo.converters.moe_llava import LOCAL_TOWER_NAME, tower_name
from mmzoo.io.tensors import materialize

HERE = Path(__file__).parent
ENV = Path.home() / ".cache" / "mmzoo-tests" / "moellava-env"
TORCH = "torch==" + torch.__version__.split("+")[0]  # the one thing shared: the torch release mmzoo's side runs
PACKAGES = [TORCH, "transformers==4.34.1", "tokenizers>=0.14,<0.15", "numpy<2", "accelerate==0.21.0", "sentencepiece",
            "einops==0.6.1", "shortuuid", "protobuf", "tiktoken", "pydantic>=1,<2", "py-cpuinfo", "hjson", "ninja", "psutil",
            "packaging", "Pillow", "safetensors", "requests", "pyyaml", "tqdm", "regex"]
PROBE = ("import sys, deepspeed, transformers, torch, PIL; "
         "assert deepspeed.__version__ == '0.9.5' and transformers.__version__ == '4.34.1'; "
         f"assert torch.__version__.split('+')[0] == {TORCH.split('==')[1]!r}; "
         # isolation: nothing is imported from outside the environment (a global peft or pydantic 2 broke it before)
         "assert all(sys.prefix in p or 'site-packages' not in p for p in sys.path), sys.path")
MOE = dict(num_experts=4, top_k=2, layers="even", capacity_factor=4.0)  # capacity = every token: DeepSpeed drops none


def _side_env(**extra: str) -> dict[str, str]:
    # DeepSpeed 0.9.5's "cpu" accelerator needs intel_extension_for_pytorch; left to itself it picks cuda and, for
    # these CPU tensors, calls nothing of it. mmzoo's PYTHONPATH stays out of the side environment.
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DS_ACCELERATOR")} | extra


def _moellava_python() -> str:
    if os.environ.get("MMZOO_MOELLAVA_PYTHON"):
        return os.environ["MMZOO_MOELLAVA_PYTHON"]
    python = ENV / "bin" / "python"
    if python.exists() and subprocess.run([str(python), "-c", PROBE], capture_output=True, env=_side_env()).returncode == 0:
        return str(python)
    with time_bound.paused():  # minutes, once: not the test's time (tests/time_bound.py)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(ENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, *PACKAGES], check=True, capture_output=True, timeout=time_bound.SET_UP_BOUND_S)
        # DeepSpeed 0.9.5's setup.py imports torch (hence no build isolation); DS_BUILD_OPS=0: no CUDA kernels
        subprocess.run([*pip, "--no-build-isolation", "--no-deps", "deepspeed==0.9.5"], check=True, capture_output=True,
                       env=_side_env(DS_BUILD_OPS="0"), timeout=time_bound.SET_UP_BOUND_S)
        subprocess.run([str(python), "-c", PROBE], check=True, env=_side_env())
    return str(python)


@pytest.fixture(scope="module")
def moellava_src() -> Path:
    src = os.environ.get("MMZOO_MOELLAVA_SRC")
    if not src:
        pytest.skip("MoE-LLaVA is not on PyPI: set MMZOO_MOELLAVA_SRC to a checkout of PKU-YuanGroup/MoE-LLaVA to run its code")
    if not (Path(src) / "moellava" / "model" / "builder.py").is_file():
        pytest.fail(f"MMZOO_MOELLAVA_SRC={src} holds no moellava/model/builder.py")
    return Path(src)


@pytest.fixture(scope="module")
def moe_llava(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("moe-llava") / "moe"
    result = mmzoo.convert(tiny.hf("llama", "clip"), out, tgt_fmt="moe-llava", moe=MOE)
    return out, result


def test_moe_llava_output_runs_in_moe_llava_code(tiny, moe_llava, moellava_src, tmp_path):
    from PIL import Image
    from transformers import LlavaForConditionalGeneration

    folder, _ = moe_llava
    python = _moellava_python()
    # MoE-LLaVA loads the tower by the name in mm_image_tower: link image_tower/ under that name where it runs
    (tmp_path / "run" / "openai").mkdir(parents=True)
    (tmp_path / "run" / LOCAL_TOWER_NAME).symlink_to(folder / "image_tower")
    image = tmp_path / "image.png"
    Image.new("RGB", (40, 30), (200, 10, 30)).save(image)
    prompt = "USER: <image>\nWhat is shown in the image? ASSISTANT:"
    env = _side_env(PYTHONPATH=str(moellava_src))
    saved = tmp_path / "saved-by-moe-llava"
    proc = subprocess.run([python, str(HERE / "run_moellava.py"), str(folder), str(image), prompt, str(tmp_path / "out.pt"), str(saved)],
                          capture_output=True, text=True, env=env, cwd=tmp_path / "run", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "were not used" not in log and "newly initialized" not in log, log[-3000:]  # every tensor loaded, none left out
    theirs = torch.load(tmp_path / "out.pt")
    assert theirs["moe_layers"] == [0] and theirs["tower"] == "CLIPVisionTower"

    # MoE-LLaVA's builder loads in float16 (the runner computes in float32): the dense reference gets the same rounding
    hf = tiny.hf("llama", "clip")
    model = LlavaForConditionalGeneration.from_pretrained(hf).half().float().eval()
    ours = mmzoo.load_processor(hf)(images=Image.open(image), text=prompt, return_tensors="pt")
    assert torch.equal(ours["pixel_values"], theirs["pixel_values"])
    expanded = []
    for token in theirs["input_ids"][0].tolist():  # MoE-LLaVA's -200 placeholder = image_seq_length image tokens
        expanded += [model.config.image_token_id] * model.config.image_seq_length if token == -200 else [token]
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([expanded]), pixel_values=theirs["pixel_values"]).logits
    assert theirs["logits"].shape == expected.shape
    assert torch.allclose(theirs["logits"], expected, atol=1e-5), (theirs["logits"] - expected).abs().max()

    # what MoE-LLaVA's save_pretrained writes (its config with the moe dict, pytorch_model.bin with the loaded tower
    # under model.image_tower.*) reads back in mmzoo: every LLM/projector tensor the fp16 rounding of the original
    import shutil

    shutil.copytree(folder / "image_tower", saved / "image_tower")  # as the reader's error message asks
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(folder / name, saved / name)
    config = json.loads((saved / "config.json").read_text())
    assert "mmzoo" in config and config["moe"]["num_experts"] == [4]  # transformers 4.34 keeps unknown keys
    config.pop("mmzoo")  # a genuine MoE-LLaVA config has no mmzoo notes
    (saved / "config.json").write_text(json.dumps(config))
    ckpt, original = mmzoo.read_checkpoint(saved), mmzoo.read_checkpoint(folder)
    assert ckpt.format == "moe-llava" and ckpt.spec.moe["layers"] == [0] and ckpt.spec.moe["num_experts"] == 4
    assert set(ckpt.tensors) == set(original.tensors)
    for name, planned in original.tensors.items():  # the tower comes from the copied image_tower/, unrounded
        expected = materialize(planned) if name.startswith("image_model.") else materialize(planned).half().float()
        assert torch.equal(materialize(ckpt.tensors[name]), expected), name


def test_moe_llava_folder_is_what_moe_llava_builds(moe_llava):
    folder, result = moe_llava
    config = json.loads((folder / "config.json").read_text())
    assert config["mm_image_tower"] == LOCAL_TOWER_NAME and config["mm_image_tower"].startswith("openai")
    assert "mm_video_tower" in config and config["mm_video_tower"] is None
    assert config["image_projector_type"] == "mlp2x_gelu"
    keys = set(load_file(folder / "model.safetensors"))
    assert {"model.mm_projector.image_spatial_proj.0.weight", "model.mm_projector.image_spatial_proj.2.bias"} <= keys
    assert not any(k.startswith("model.mm_projector.0.") for k in keys)
    assert any(LOCAL_TOWER_NAME in note and "image_tower/" in note for note in result.notes)


def test_published_tower_is_named_and_the_user_name_wins(tiny, tmp_path):
    assert tower_name(dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                           image_size=336, patch_size=14)) == "openai/clip-vit-large-patch14-336"
    mmzoo.convert(tiny.hf("llama", "clip"), tmp_path / "m", tgt_fmt="moe-llava", moe=MOE, llava_vision_tower="laion/my-clip")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["mm_image_tower"] == "laion/my-clip"


def _moe_llava_as_written_by_moe_llava(folder: Path, *, unwrap: bool = False) -> None:
    """Drop mmzoo's notes (a config as MoE-LLaVA saves it); optionally mmzoo's earlier unwrapped projector keys."""
    config = json.loads((folder / "config.json").read_text())
    config.pop("mmzoo")
    (folder / "config.json").write_text(json.dumps(config))
    if unwrap:
        tensors = load_file(folder / "model.safetensors")
        save_file({k.replace("mm_projector.image_spatial_proj.", "mm_projector."): v for k, v in tensors.items()},
                  folder / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("unwrap", [False, True], ids=["moe-llava-wrapped", "mmzoo-unwrapped"])
def test_reader_accepts_moe_llava_layouts(tiny, moe_llava, tmp_path, unwrap):
    import shutil

    folder = tmp_path / "moe"
    shutil.copytree(moe_llava[0], folder)
    _moe_llava_as_written_by_moe_llava(folder, unwrap=unwrap)
    ckpt = mmzoo.read_checkpoint(folder)
    reference = mmzoo.read_checkpoint(moe_llava[0])
    assert ckpt.spec.moe["layers"] == [0] and ckpt.spec.moe["num_experts"] == 4 and ckpt.spec.projector_type == "mlp2x_gelu"
    assert set(ckpt.tensors) == set(reference.tensors)
    for name in ("projector.linear_1.weight", "projector.linear_2.bias"):
        assert torch.equal(materialize(ckpt.tensors[name]), materialize(reference.tensors[name]))


@pytest.mark.parametrize("llm", ["phi", "qwen", "stablelm", "qwen1_5", "minicpm"])  # MoE-LLaVA's other model_types
def test_unsupported_moe_llava_llm_is_one_line(moe_llava, tmp_path, llm):
    import shutil

    folder = tmp_path / "moe"
    shutil.copytree(moe_llava[0], folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = f"moe_llava_{llm}"
    (folder / "config.json").write_text(json.dumps(config))
    code, _, stderr = run_cli("inspect", str(folder))
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("mmzoo: error:") and "not supported" in lines[0], stderr
